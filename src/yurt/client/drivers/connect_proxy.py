"""The `connect-proxy` driver: runs Yurt's own sidecar proxy for a Connect service.

The server injects the task `connect-proxy-<service>` with this driver. The proxy is part of
Yurt, so no image or binary has to be fetched: it runs as `python -m yurt.mesh` under the same
detached executor as raw_exec (it outlives an agent restart and joins the group's network
namespace), and reaches its agent through the agent's unix socket, which works from inside any
network namespace. `start` returns only when the proxy is READY (listeners bound, certificate
loaded), so the group's application tasks start after their sidecar (the originals race here).

Stopping (`drain`, then the kill signal): SIGUSR1 makes the proxy refuse new inbound connections
and finish the open ones; it writes the drained file when none is left, and the allocation
runner stops the application only then. The kill signal (SIGTERM, SIGINT) then closes the
upstream listeners and lets the last connections finish within the task's kill timeout.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..procs import kill_group
from ..supervise import Supervisor
from .base import Capabilities, DriverError, DriverFingerprint, TaskConfig, TaskHandle
from .raw_exec import PID_FILE, STATUS_FILE, RawExecDriver

NAME = "connect-proxy"
CONFIG_FILE = "proxy.json"     # in the task's secrets dir
READY_FILE = "proxy.ready"
DRAINED_FILE = "proxy.drained"
DRAIN_MARGIN = 0.5             # seconds: the proxy ends its own drain before the SIGKILL
READY_TIMEOUT = 60.0           # seconds to get a certificate and bind the listeners


class ConnectProxyDriver(RawExecDriver):
    stale_files = (PID_FILE, STATUS_FILE, READY_FILE, DRAINED_FILE)
    name = NAME
    capabilities = Capabilities(drains=True, interruptible_wait=True)

    def __init__(self, agent_address: str = "", supervisor: Supervisor | None = None) -> None:
        super().__init__(enabled=True, supervisor=supervisor)
        self.agent_address = agent_address

    def fingerprint(self) -> DriverFingerprint:
        if not self.agent_address:
            return DriverFingerprint(detected=False, healthy=False,
                                     description="the agent serves no API socket for proxies to use")
        return DriverFingerprint(detected=True, healthy=True, description="Healthy",
                                 attributes={"driver.connect-proxy": "1"})

    def start(self, cfg: TaskConfig) -> TaskHandle:
        given = dict(cfg.config or {})
        if not given.get("service"):
            raise DriverError('failed to start: the connect-proxy task needs config { service = "..." }',
                              recoverable=False)
        secrets = Path(cfg.task_dir) / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        ready = Path(cfg.task_dir) / READY_FILE   # removed with the other stale files on a fresh start
        token = secrets / "nomad_token"   # the workload identity (identity hook): its leaf needs it
        conf = {**given, "address": self.agent_address, "ready_file": str(ready),
                "drained_file": str(Path(cfg.task_dir) / DRAINED_FILE),
                "drain_timeout_ms": int(max(cfg.kill_timeout - DRAIN_MARGIN, cfg.kill_timeout / 2) * 1000),
                **({"token_file": str(token)} if token.exists() else {}),
                "datacenter": given.get("datacenter") or cfg.env.get("NOMAD_DC", "dc1")}
        if isinstance(conf.get("transparent_proxy"), dict):   # the mark the namespace's rules let out
            from ..network.tproxy import MARK
            conf["transparent_proxy"] = {**conf["transparent_proxy"], "mark": MARK}
        path = secrets / CONFIG_FILE
        path.write_text(json.dumps(conf, indent=2))
        path.chmod(0o600)
        handle = super().start(replace(cfg, config={
            "command": sys.executable, "args": ["-m", "yurt.mesh", "-config", str(path)]}))
        self._wait_ready(handle, ready, cfg)
        return handle

    def _wait_ready(self, handle: TaskHandle, ready: Path, cfg: TaskConfig) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            result = self.wait(handle, 0.1)
            if result is not None:
                raise DriverError(f"failed to start: the proxy exited with code {result.exit_code} before it was "
                                  f"ready: {_tail(cfg)}")
            if time.monotonic() > deadline:
                self.stop(handle, "SIGTERM", 5)
                raise DriverError(f"failed to start: the proxy was not ready after {READY_TIMEOUT:g}s "
                                  f"(no certificate from the agent, or a port it cannot bind): {_tail(cfg)}")


    def drain(self, handle: TaskHandle) -> bool:
        if self._status(handle) is not None or not self._task_alive(handle):
            return False
        return kill_group(handle.pid, signal.SIGUSR1)

    def drained(self, handle: TaskHandle) -> bool:
        return ((Path(handle.task_dir) / DRAINED_FILE).exists() or self._status(handle) is not None
                or not self._task_alive(handle))


def _tail(cfg: TaskConfig) -> str:
    path = Path(cfg.logs_dir) / f"{cfg.name}.stderr.0"
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][-300:] if lines else "no output"
