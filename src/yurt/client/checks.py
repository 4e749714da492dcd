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


def run_grpc(spec: CheckSpec) -> CheckResult:
    """gRPC health checking needs HTTP/2; without grpcio the check is a TCP connect."""
    result = run_tcp(spec)
    if result.status == PASSING:
        return CheckResult(PASSING, f"gRPC endpoint {spec.address}:{spec.port} accepts connections")
    return result


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
