"""A real etcd cluster on loopback for tests (and `bench/etcd_clients.py`): `members` etcd
processes (Debian's etcd-server, /usr/bin/etcd) on free 127.0.0.1 ports, each with its own data
dir and log under `dir`. Members can be SIGKILLed and restarted on their data dir (a restarted
member rejoins). fsync stays on (real durability) unless YURT_TEST_ETCD_NOFSYNC=1.

    cluster = EtcdCluster(tmp_path, members=3)
    try:
        cluster.wait_healthy(30)
        ... cluster.endpoints ...
    finally:
        cluster.stop()

Stdlib only, so the benchmarks can use it without the test dependencies.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together while they are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    """`members` etcd members on loopback, started at once (initial cluster state "new")."""

    def __init__(self, dir: Path | str, members: int = 3, *, token: str | None = None) -> None:
        if not Path(ETCD).exists():
            raise RuntimeError(f"{ETCD} is not installed: apt-get install etcd-server etcd-client")
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.names = [f"m{i}" for i in range(members)]
        ports = _free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.token = token or f"yurt-test-{os.getpid()}-{ports[0]}"
        self.procs: list[subprocess.Popen | None] = [None] * members
        atexit.register(self.stop)   # no member outlives the test run, whatever happens
        for i in range(members):
            self.start(i)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    def data_dir(self, i: int) -> Path:
        return self.dir / f"{self.names[i]}.etcd"

    def log_file(self, i: int) -> Path:
        return self.dir / f"{self.names[i]}.log"

    def args(self, i: int) -> list[str]:
        client = self.endpoints[i]
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        args = [ETCD, "--name", self.names[i], "--data-dir", str(self.data_dir(i)),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", str(self.log_file(i))]
        if os.environ.get("YURT_TEST_ETCD_NOFSYNC") == "1":
            args.append("--unsafe-no-fsync")
        return args

    def start(self, i: int) -> None:
        """Start member i (again, on its data dir: it rejoins the cluster)."""
        if self.running(i):
            raise RuntimeError(f"etcd member {self.names[i]} is running already")
        self.procs[i] = subprocess.Popen(self.args(i), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)

    def running(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int | None:
        proc = self.procs[i]
        return proc.pid if proc is not None else None

    def kill(self, i: int) -> None:
        """SIGKILL member i (a crash: no goodbye to its peers)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    def stop(self) -> None:
        """Every member gone (SIGKILL), waited for. Safe to call twice."""
        for i in range(len(self.procs)):
            self.kill(i)

    def health(self, i: int, timeout: float = 3.0) -> bool | None:
        """What member i's /health says: True, False, or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.endpoints[i]}/health", timeout=timeout) as r:
                return json.loads(r.read()).get("health") == "true"
        except urllib.error.HTTPError as e:   # 503 with {"health":"false"} on quorum loss
            try:
                return json.loads(e.read()).get("health") == "true"
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every member is running and says it is healthy; RuntimeError naming the member and
        its log otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(len(self.procs)):
                if not self.running(i):
                    raise RuntimeError(f"etcd member {self.names[i]} is not running; the end of "
                                       f"{self.log_file(i)}:\n{self.tail(i)}")
            sick = [i for i in range(len(self.procs)) if not self.health(i)]
            if not sick:
                return
            if time.monotonic() > deadline:
                i = sick[0]
                raise RuntimeError(f"etcd member {self.names[i]} not healthy within {timeout:.0f}s; the end of "
                                   f"{self.log_file(i)}:\n{self.tail(i)}")
            time.sleep(0.1)

    def tail(self, i: int, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_file(i).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def etcdctl(self, *args: str, endpoints: list[str] | None = None,
                timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """etcdctl (API v3) against the given endpoints (default: all of them)."""
        return subprocess.run([ETCDCTL, "--endpoints", ",".join(endpoints or self.endpoints), *args],
                              capture_output=True, text=True, timeout=timeout, env=dict(os.environ, ETCDCTL_API="3"))

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
