"""Where the proxy's identity, trust and routing come from: the `MeshSource` protocol, the
watch threads that follow it, and the product implementation over the agent's HTTP API.

Every watched item is a blocking query: `fn(index, wait) -> (value, new_index)` returns when
the item's index moves past `index` or after `wait` seconds (same index = nothing new).
"""

from __future__ import annotations

import threading
from urllib.parse import quote
from typing import Any, Protocol
from collections.abc import Callable

WAIT_SECONDS = 60.0


class MeshSource(Protocol):
    def roots(self, index: int, wait: float) -> tuple[dict, int]:
        """Consul CA roots JSON: {TrustDomain, ActiveRootID, Roots:[{RootCert, IntermediateCerts, Active}]}."""

    def leaf(self, service: str, index: int, wait: float) -> tuple[dict, int]:
        """Consul IssuedCert JSON for `service`: {SerialNumber, CertPEM, PrivateKeyPEM, ValidBefore, ...}."""

    def intentions(self, service: str, index: int, wait: float) -> tuple[Any, int]:
        """Intentions with `service` as destination; only the index matters to the proxy."""

    def authorize(self, service: str, client_uri: str, serial: str) -> tuple[bool, str]:
        """L4 decision for a client identity connecting to `service`: (allowed, reason)."""

    def endpoints(self, destination: str, datacenter: str, index: int, wait: float) -> tuple[list[dict], int]:
        """Passing mesh endpoints of `destination` (Consul /v1/health/connect entries)."""

    def virtual_ips(self, index: int, wait: float) -> tuple[dict, int]:
        """{"CIDR": range, "Services": {name: virtual IP}} (a transparent proxy's map)."""

    def close(self) -> None: ...


class Watch(threading.Thread):
    """Follows one blocking query and hands each new value to `deliver` (called on this thread;
    the proxy forwards it to its reactor). Errors are reported and retried with backoff."""

    def __init__(self, name: str, fn: Callable[[int, float], tuple[Any, int]],
                 deliver: Callable[[Any], None], on_error: Callable[[str, str], None],
                 wait: float = WAIT_SECONDS) -> None:
        super().__init__(name=f"yurt-watch-{name}", daemon=True)
        self.watch_name = name
        self.fn, self.deliver, self.on_error, self.wait = fn, deliver, on_error, wait
        self.stopped = threading.Event()

    def run(self) -> None:
        index = 0
        backoff = 0.25
        first = True
        while not self.stopped.is_set():
            try:
                value, new = self.fn(index, self.wait)
            except Exception as e:  # noqa: BLE001 - reported and retried with backoff
                if self.stopped.is_set():
                    return
                self.on_error(self.watch_name, f"{type(e).__name__}: {e}")
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.25
            if self.stopped.is_set():
                return
            new = int(new or 0)
            if first or new != index:
                first = False
                self.deliver(value)
            if new <= 0:
                self.stopped.wait(1.0)  # a source without indexes: poll
                new = 0
            elif new < index:
                new = 0  # index went backwards (state reset): start over, as Consul advises
            index = new

    def stop(self) -> None:
        self.stopped.set()


# ------------------------------------------------------------------------------------------
# The product source: the local agent's HTTP API (normally a unix socket) through the lean
# stdlib client in agent_client (never yurt.api.client: httpx would cost the sidecar ~10 MB).

def _wait_str(wait: float) -> str:
    return f"{max(1, int(wait))}s"


def _split(result: Any) -> tuple[Any, int]:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
        return result
    idx = result.get("ModifyIndex", 0) if isinstance(result, dict) else 0
    return result, int(idx or 0)


class AgentSource:
    """MeshSource over the agent's Consul-shaped endpoints. `client` defaults to
    `agent_client.AgentClient(address)`; anything with the same methods (ca_roots, leaf,
    health_connect, authorize, get) works, e.g. `yurt.api.client.YurtClient` in tests."""

    def __init__(self, address: str | None = None, client: Any = None, token_file: str = "") -> None:
        if client is None:
            from .agent_client import AgentClient
            client = AgentClient(address, timeout=WAIT_SECONDS + 30, token_file=token_file)
        self.client = client

    def roots(self, index: int, wait: float) -> tuple[dict, int]:
        return _split(self.client.ca_roots(index=index, wait=_wait_str(wait)))

    def leaf(self, service: str, index: int, wait: float) -> tuple[dict, int]:
        return _split(self.client.leaf(service, index=index, wait=_wait_str(wait)))

    def intentions(self, service: str, index: int, wait: float) -> tuple[Any, int]:
        return self.client.get("/v1/connect/intentions/match", index=index, wait=_wait_str(wait),
                               by="destination", name=service)

    def authorize(self, service: str, client_uri: str, serial: str) -> tuple[bool, str]:
        r = self.client.authorize(service, client_uri, serial) or {}
        return bool(r.get("Authorized")), str(r.get("Reason", ""))

    def endpoints(self, destination: str, datacenter: str, index: int, wait: float) -> tuple[list[dict], int]:
        return _split(self.client.health_connect(destination, passing=True, index=index,
                                                 wait=_wait_str(wait)))

    # HTTP-aware proxying (l7.py); a source without these methods keeps every listener on TCP
    def chain(self, service: str, index: int, wait: float) -> tuple[dict, int]:
        """`service`'s protocol, intentions and compiled routes (the server's config entries)."""
        body, idx = self.client.get(f"/v1/agent/connect/chain/{quote(service, safe='')}", index=index,
                                    wait=_wait_str(wait))
        return body or {}, idx

    def filtered_endpoints(self, service: str, filter_: str, index: int, wait: float) -> tuple[list[dict], int]:
        """Passing mesh endpoints of `service` that match a subset's filter (`?filter=`)."""
        body, idx = self.client.get(f"/v1/health/connect/{quote(service, safe='')}", index=index,
                                    wait=_wait_str(wait), passing="1", filter=filter_ or None)
        return body or [], idx
    def virtual_ips(self, index: int, wait: float) -> tuple[dict, int]:
        return self.client.get("/v1/agent/connect/virtual-ips", index=index, wait=_wait_str(wait))

    def close(self) -> None:
        try:
            self.client.close()
        except OSError:
            pass
