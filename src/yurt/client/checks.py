"""Health checks run by the client from inside the allocation's network namespace.

Nomad hands checks to Consul, which runs them from the host, so a check cannot reach an app
that listens only on 127.0.0.1 inside a bridge namespace (hence `expose`, and no checks at all
on Connect services). Yurt runs every check on a thread that has joined the allocation's
namespace (setns(2) is per thread on Linux): `127.0.0.1:<port>` is the app itself, nothing has
to be exposed, and checks on Connect services just work.

Each check reports Consul's statuses: passing, warning, critical.
"""

from __future__ import annotations

import http.client
import logging
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable

from .procs import join_netns

log = logging.getLogger("yurt.client.checks")

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"


@dataclass
class CheckSpec:
    """One check to run: what, where and how often."""

    check_id: str
    name: str
    type: str                       # http | tcp | script | grpc
    address: str = "127.0.0.1"
    port: int = 0
    path: str = "/"
    method: str = "GET"
    protocol: str = "http"
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    grpc_service: str = ""
    grpc_use_tls: bool = False
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    interval: float = 10.0
    timeout: float = 2.0
    initial_status: str = CRITICAL
    success_before_passing: int = 0
    failures_before_critical: int = 0


@dataclass
class CheckResult:
    status: str
    output: str


def run_tcp(spec: CheckSpec) -> CheckResult:
    try:
        with socket.create_connection((spec.address, spec.port), timeout=spec.timeout):
            return CheckResult(PASSING, f"TCP connect {spec.address}:{spec.port}: Success")
    except OSError as e:
        return CheckResult(CRITICAL, f"dial tcp {spec.address}:{spec.port}: {e.strerror or e}")


def run_http(spec: CheckSpec) -> CheckResult:
    cls = http.client.HTTPSConnection if spec.protocol == "https" else http.client.HTTPConnection
    kwargs = {}
    if spec.protocol == "https" and spec.tls_skip_verify:
        import ssl
        kwargs["context"] = ssl._create_unverified_context()
    conn = cls(spec.address, spec.port, timeout=spec.timeout, **kwargs)
    url = f"{spec.protocol}://{spec.address}:{spec.port}{spec.path}"
    try:
        headers = {k: ", ".join(v) for k, v in spec.headers.items()}
        conn.request(spec.method or "GET", spec.path or "/", body=spec.body or None, headers=headers)
        resp = conn.getresponse()
        text = resp.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        return CheckResult(CRITICAL, f"Get {url}: {e}")
    finally:
        conn.close()
    output = f"HTTP {spec.method or 'GET'} {url}: {resp.status} {resp.reason} Output: {text[:512]}"
    if 200 <= resp.status < 300:
        return CheckResult(PASSING, output)
    if resp.status == 429:
        return CheckResult(WARNING, output)
    return CheckResult(CRITICAL, output)


def run_script(spec: CheckSpec) -> CheckResult:
    try:
        proc = subprocess.run([spec.command, *spec.args], env=spec.env or None, cwd=spec.cwd,
                              capture_output=True, timeout=spec.timeout)
    except FileNotFoundError:
        return CheckResult(CRITICAL, f'exec: "{spec.command}": executable file not found')
    except subprocess.TimeoutExpired:
        return CheckResult(CRITICAL, f"script check timed out after {spec.timeout:g}s")
    except OSError as e:
        return CheckResult(CRITICAL, str(e))
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")[:4096]
    status = {0: PASSING, 1: WARNING}.get(proc.returncode, CRITICAL)
    return CheckResult(status, out)


GRPC_SERVING = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _grpc_request(service: str) -> bytes:
    """A grpc.health.v1.HealthCheckRequest{service} as one gRPC message: a 5-byte prefix
    (uncompressed, length) and the protobuf (field 1, length-delimited)."""
    raw = service.encode()
    msg = (b"\x0a" + _varint(len(raw)) + raw) if raw else b""
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _grpc_status(data: bytes) -> int | None:
    """HealthCheckResponse.status (field 1, varint) from one gRPC message; None if malformed."""
    if len(data) < 5:
        return None
    msg = data[5:5 + int.from_bytes(data[1:5], "big")]
    i = 0
    while i < len(msg):
        key, i = _read_varint(msg, i)
        if key is None:
            return None
        if key == 0x08:
            value, i = _read_varint(msg, i)
            return value
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(msg, i)
        elif wire == 2:
            n, i = _read_varint(msg, i)
            i += n or 0
        else:
            return None
    return 0   # status left out: its default, UNKNOWN


def _read_varint(buf: bytes, i: int) -> tuple[int | None, int]:
    shift = value = 0
    while i < len(buf):
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    return None, i


def run_grpc(spec: CheckSpec) -> CheckResult:
    """The gRPC health checking protocol (grpc.health.v1.Health/Check) over HTTP/2 (`h2`), on a
    socket this thread opens, so inside the allocation's network namespace. SERVING is passing,
    anything else critical, as Consul's. `grpc_service` names the service to ask about
    ("" is the server as a whole); `grpc_use_tls` speaks TLS (ALPN h2), `tls_skip_verify` too."""
    import ssl

    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    target = f"{spec.address}:{spec.port}"
    svc = spec.grpc_service
    where = f"gRPC {target}" + (f"/{svc}" if svc else "")
    deadline = time.monotonic() + spec.timeout
    try:
        sock: socket.socket = socket.create_connection((spec.address, spec.port), timeout=spec.timeout)
    except OSError as e:
        return CheckResult(CRITICAL, f"{where}: dial tcp {target}: {e.strerror or e}")
    try:
        if spec.grpc_use_tls:
            ctx = ssl.create_default_context()
            if spec.tls_skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname=spec.address)
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "https" if spec.grpc_use_tls else "http"),
                                (":path", "/grpc.health.v1.Health/Check"), (":authority", target),
                                ("content-type", "application/grpc"), ("te", "trailers"),
                                ("grpc-timeout", f"{max(1, int(spec.timeout * 1000))}m")])
        conn.send_data(sid, _grpc_request(svc), end_stream=True)
        sock.sendall(conn.data_to_send())
        body, grpc_status, grpc_message, done = b"", None, "", False
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                return CheckResult(CRITICAL, f"{where}: timed out after {spec.timeout:g}s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return CheckResult(CRITICAL, f"{where}: the server closed the connection")
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        k = k.decode() if isinstance(k, bytes) else k
                        v = v.decode() if isinstance(v, bytes) else v
                        if k == "grpc-status":
                            grpc_status = int(v)
                        elif k == "grpc-message":
                            grpc_message = v
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    return CheckResult(CRITICAL, f"{where}: the server reset the stream")
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (OSError, ssl.SSLError) as e:
        return CheckResult(CRITICAL, f"{where}: {e}")
    except (h2.exceptions.ProtocolError, ValueError) as e:   # a peer that does not speak HTTP/2
        return CheckResult(CRITICAL, f"{where}: not a gRPC server: {type(e).__name__}: {e}")
    finally:
        sock.close()
    if grpc_status not in (None, 0):
        what = {5: "NOT_FOUND", 12: "UNIMPLEMENTED (no health service)"}.get(grpc_status, str(grpc_status))
        return CheckResult(CRITICAL, f"{where}: rpc error: code = {what} desc = {grpc_message}")
    status = _grpc_status(body)
    if status is None:
        return CheckResult(CRITICAL, f"{where}: a malformed health response")
    name = GRPC_SERVING.get(status, str(status))
    return CheckResult(PASSING if status == 1 else CRITICAL, f"{where}: status = {name}")


RUNNERS: dict[str, Callable[[CheckSpec], CheckResult]] = {
    "tcp": run_tcp, "http": run_http, "script": run_script, "grpc": run_grpc}


class CheckRunner(threading.Thread):
    """Runs one allocation's checks on one thread, inside its network namespace when it has one.

    `report(check_id, status, output)` is called when a check's status or output changes;
    `on_status(check_id, status)` after every run (check_restart counts consecutive failures).
    """

    def __init__(self, specs: list[CheckSpec], netns: str = "", *,
                 report: Callable[[str, str, str], None],
                 on_status: Callable[[str, str], None] | None = None, name: str = "checks") -> None:
        super().__init__(name=f"yurt-{name}", daemon=True)
        self.specs = specs
        self.netns = netns
        self.report = report
        self.on_status = on_status
        self._stop_event = threading.Event()
        self.statuses: dict[str, str] = {s.check_id: s.initial_status or CRITICAL for s in specs}
        self._streak: dict[str, tuple[str, int]] = {}

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        if self.netns:
            try:
                join_netns(self.netns)  # this thread only: the agent's other threads stay put
            except OSError as e:
                for s in self.specs:
                    self.report(s.check_id, CRITICAL, f"cannot enter the allocation's network namespace: {e}")
                return
        due = {s.check_id: time.monotonic() for s in self.specs}
        last: dict[str, tuple[str, str]] = {}
        while not self._stop_event.is_set():
            now = time.monotonic()
            for spec in self.specs:
                if due[spec.check_id] > now:
                    continue
                due[spec.check_id] = now + max(spec.interval, 0.1)
                result = self.run_once(spec)
                status = self._debounce(spec, result.status)
                self.statuses[spec.check_id] = status
                if last.get(spec.check_id) != (status, result.output):
                    last[spec.check_id] = (status, result.output)
                    self.report(spec.check_id, status, result.output)
                if self.on_status:
                    self.on_status(spec.check_id, status)
            wait = min(due.values()) - time.monotonic() if due else 1.0
            self._stop_event.wait(max(0.05, wait))

    @staticmethod
    def run_once(spec: CheckSpec) -> CheckResult:
        runner = RUNNERS.get(spec.type)
        if runner is None:
            return CheckResult(CRITICAL, f'unknown check type "{spec.type}"')
        try:
            return runner(spec)
        except Exception as e:
            log.exception("check %s failed to run", spec.name)
            return CheckResult(CRITICAL, f"check failed to run: {e}")

    def _debounce(self, spec: CheckSpec, status: str) -> str:
        """success_before_passing / failures_before_critical, as Consul counts them."""
        prev, count = self._streak.get(spec.check_id, ("", 0))
        count = count + 1 if prev == status else 1
        self._streak[spec.check_id] = (status, count)
        current = self.statuses.get(spec.check_id, CRITICAL)
        if status == PASSING and current != PASSING and count <= spec.success_before_passing:
            return current
        if status == CRITICAL and current != CRITICAL and count <= spec.failures_before_critical:
            return current
        return status
