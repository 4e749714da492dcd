"""A real `yurt agent` in a subprocess, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """Poll until condition() is truthy; return its value. Raises AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (httpx.HTTPError, OSError, KeyError, IndexError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last value: {last!r})")


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(send queue, receive queue) in bytes of this host's IPv4 TCP connection from local_port to
    remote_port, as /proc/net/tcp shows them; None when there is no such connection. The send
    queue counts bytes the peer's kernel has not acknowledged yet, the receive queue bytes that
    arrived and the process has not read yet."""
    with open("/proc/net/tcp") as f:
        rows = f.read().splitlines()[1:]
    for row in rows:
        fields = row.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (local_port, remote_port):
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            return tx, rx
    return None


def wait_request_read(client_port: int, server_port: int, timeout: float = 30.0) -> None:
    """Wait until a server on this host has read everything a client sent it on one connection:
    first every byte acknowledged by the server's kernel (the client's send queue empty), then
    nothing left unread in the server's receive queue, i.e. the server process has the request."""
    def delivered() -> bool:
        q = tcp_queues(client_port, server_port)
        return q is not None and q[0] == 0

    def read() -> bool:
        q = tcp_queues(server_port, client_port)
        return q is not None and q[1] == 0

    wait_for(delivered, timeout, interval=0.01, what=f"the request {client_port} -> {server_port} delivered")
    wait_for(read, timeout, interval=0.01, what=f"the request {client_port} -> {server_port} read by the server")


def env_processes(name: str, value: str) -> list[int]:
    """Live processes whose environment has ``name=value`` (zombies have no environment left,
    so they do not count)."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env:
            pids.append(int(entry.name))
    return sorted(pids)


def alloc_processes(alloc_id: str) -> list[int]:
    """Live processes of an allocation (its NOMAD_ALLOC_ID is in their environment)."""
    return env_processes("NOMAD_ALLOC_ID", alloc_id)


class AgentProcess:
    """`yurt agent -dev` (or with -data-dir) on a free port; logs go to a file for post-mortems."""

    def __init__(self, data_dir: str | None = None, port: int | None = None, extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.extra = extra or []
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="yurt-agent-", suffix=".log")[1])

    def start(self) -> AgentProcess:
        args = [sys.executable, "-m", "yurt.cli.main", "agent", "-dev", "-http-port", str(self.port)]
        if self.data_dir:
            args += ["-data-dir", self.data_dir]
        args += self.extra
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 60, what=f"agent on port {self.port} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        r = httpx.get(self.url + "/v1/agent/health", timeout=2)
        return r.status_code == 200

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def purge_jobs(api: httpx.Client) -> None:
    """Every job of the agent behind `api` stopped and purged (a fixture's teardown)."""
    for job in api.get("/v1/jobs").json():
        api.delete(f"/v1/job/{job['ID']}", params={"purge": "true"})


@contextmanager
def dev_agent() -> Iterator[AgentProcess]:
    """A `yurt agent -dev` on a free port for a module's tests; every job purged and the agent
    stopped at the end."""
    proc = AgentProcess().start()
    try:
        yield proc
    finally:
        try:
            for job in httpx.get(f"{proc.url}/v1/jobs", timeout=5).json():
                httpx.delete(f"{proc.url}/v1/job/{job['ID']}", params={"purge": "true"}, timeout=5)
        except (httpx.HTTPError, ValueError):
            pass
        proc.stop()


def register(client: httpx.Client, hcl: str, name: str = "job.nomad") -> dict:
    """Parse a job file the way the CLI does and register it; returns the register response."""
    from yurt.jobspec import load
    doc = load(hcl, name).job.to_document()
    r = client.put("/v1/jobs", json=doc)
    assert r.status_code == 200, r.text
    return r.json()


def allocs(client: httpx.Client, job_id: str) -> list[dict]:
    return client.get(f"/v1/job/{job_id}/allocations").json()


def task_events(client: httpx.Client, alloc_id: str, task: str) -> list[dict]:
    alloc = client.get(f"/v1/allocation/{alloc_id}").json()
    return alloc["TaskStates"].get(task, {}).get("Events", [])


def task_state(client: httpx.Client, alloc_id: str, task: str) -> dict:
    return client.get(f"/v1/allocation/{alloc_id}").json()["TaskStates"].get(task) or {}
