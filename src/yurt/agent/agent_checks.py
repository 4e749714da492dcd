"""The checks of services registered on this agent through Consul's API
(`PUT /v1/agent/service/register`), run as a Consul agent runs them -- e.g. the "Connect Sidecar
Listening" TCP check of a nested SidecarService.

They run on the client's check runner (`client.checks.CheckRunner`), the one that runs
allocations' checks: this module only turns the registered TCP and HTTP check definitions into
`CheckSpec`s and restarts the runner when they change. Services an allocation registered (they
carry an AllocID) are skipped: the client runs those from inside the allocation's namespace and
reports them itself. Results go through this agent's own API (`/v1/agent/check/update`).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from yurt.api.client import YurtClient
from yurt.client.checks import CheckRunner, CheckSpec
from yurt.structs import parse_duration

log = logging.getLogger("yurt.checks")

DEFAULT_INTERVAL = 10.0
POLL_INTERVAL = 1.0   # how often the registered checks are read for changes


def _seconds(value: str, default: float) -> float:
    try:
        return parse_duration(value) / 1e9 if value else default
    except ValueError:
        return default


def spec_for(check_id: str, check: dict) -> CheckSpec | None:
    """The CheckSpec of a registered TCP or HTTP check; None for any other kind."""
    d = check.get("Definition") or {}
    interval = _seconds(check.get("Interval", ""), DEFAULT_INTERVAL)
    timeout = _seconds(check.get("Timeout", ""), min(interval, 10.0))
    common = {"check_id": check_id, "name": check.get("Name") or check_id, "interval": interval,
              "timeout": timeout}
    if d.get("TCP"):
        host, _, port = str(d["TCP"]).rpartition(":")
        return CheckSpec(type="tcp", address=host or "127.0.0.1", port=int(port) if port.isdigit() else 0,
                         **common)
    if d.get("HTTP"):
        url = urlsplit(str(d["HTTP"]))
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return CheckSpec(type="http", protocol=url.scheme or "http", address=url.hostname or "127.0.0.1",
                         port=url.port or (443 if url.scheme == "https" else 80), path=path,
                         method=d.get("Method") or "GET", **common)
    return None


class AgentChecks(threading.Thread):
    def __init__(self, client: YurtClient) -> None:
        super().__init__(name="yurt-agent-checks", daemon=True)
        self.client = client
        self._runner: CheckRunner | None = None
        self._specs: list[CheckSpec] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        if self._runner is not None:
            self._runner.stop()

    def run(self) -> None:
        while not self._stop_event.wait(POLL_INTERVAL):
            try:
                self.sync()
            except Exception as e:  # noqa: BLE001 - the API may be starting or stopping
                log.debug("agent checks: %s", e)

    def sync(self) -> None:
        """Read the registered checks; when their definitions changed, run the new set."""
        services = self.client.get("/v1/agent/services")[0]
        checks = self.client.get("/v1/agent/checks")[0]
        specs = []
        for check_id, check in sorted(checks.items()):
            if services.get(check.get("ServiceID"), {}).get("AllocID"):
                continue
            spec = spec_for(check_id, check)
            if spec is not None:
                specs.append(spec)
        if specs == self._specs:
            return
        if self._runner is not None:
            self._runner.stop()
        self._specs = specs
        self._runner = None
        if specs:
            self._runner = CheckRunner(specs, report=self._report, name="agent-checks")
            self._runner.start()

    def _report(self, check_id: str, status: str, output: str) -> None:
        try:
            self.client.update_check(check_id, status, output)
        except Exception as e:  # noqa: BLE001 - a check deregistered meanwhile; the next sync drops it
            log.debug("reporting check %s: %s", check_id, e)
