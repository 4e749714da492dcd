"""The agent runs the TCP and HTTP checks of services registered on it through Consul's API
(`PUT /v1/agent/service/register`), as a Consul agent does -- e.g. the "Connect Sidecar
Listening" check of a nested SidecarService. Services an allocation registered (they carry an
AllocID) are skipped: Yurt's client runs those checks from inside the allocation's namespace and
reports them itself. Results go through this agent's own API (`/v1/agent/check/update`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx

from yurt.structs import parse_duration

log = logging.getLogger("yurt.checks")

DEFAULT_INTERVAL = 10.0


def run_check(check: dict, timeout: float) -> tuple[str, str]:
    """(status, output) of one TCP or HTTP check."""
    d = check.get("Definition") or {}
    if d.get("TCP"):
        host, _, port = d["TCP"].rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
                return "passing", f"TCP connect {d['TCP']}: Success"
        except (OSError, ValueError) as e:
            return "critical", f"TCP connect {d['TCP']}: {e}"
    try:
        r = httpx.get(d["HTTP"], timeout=timeout)
    except httpx.HTTPError as e:
        return "critical", f"HTTP GET {d['HTTP']}: {e}"
    status = "passing" if r.status_code < 300 else "warning" if r.status_code == 429 else "critical"
    return status, f"HTTP GET {d['HTTP']}: {r.status_code} Output: {r.text[:200]}"


def _seconds(value: str, default: float) -> float:
    try:
        return parse_duration(value) / 1e9 if value else default
    except ValueError:
        return default


class CheckRunner(threading.Thread):
    def __init__(self, client) -> None:
        super().__init__(name="yurt-checks", daemon=True)
        self.client = client
        self._next: dict[str, float] = {}
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            try:
                self.tick(time.monotonic())
            except Exception as e:  # noqa: BLE001 - the API may be starting or stopping
                log.debug("check runner: %s", e)

    def tick(self, now: float) -> None:
        services = self.client.get("/v1/agent/services")[0]
        checks = self.client.get("/v1/agent/checks")[0]
        for check_id, check in checks.items():
            svc = services.get(check.get("ServiceID"), {})
            d = check.get("Definition") or {}
            if svc.get("AllocID") or not (d.get("TCP") or d.get("HTTP")):
                continue
            if now < self._next.get(check_id, 0):
                continue
            interval = _seconds(check.get("Interval", ""), DEFAULT_INTERVAL)
            self._next[check_id] = now + interval
            status, output = run_check(check, _seconds(check.get("Timeout", ""), min(interval, 10.0)))
            if status != check.get("Status") or output != check.get("Output"):
                self.client.update_check(check_id, status, output)
