"""Where the proxy's identity, trust and routing come from: the `MeshSource` protocol, the
watch threads that follow it, and the product implementation over the agent's HTTP API.

Every watched item is a blocking query: `fn(index, wait) -> (value, new_index)` returns when
the item's index moves past `index` or after `wait` seconds (same index = nothing new).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

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
            except Exception as e:
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
# The product source: the local agent's HTTP API (normally a unix socket) through api.client.

def _wait_str(wait: float) -> str:
    return f"{int(wait)}s"


def _split(result: Any) -> tuple[Any, int]:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
        return result
    idx = result.get("ModifyIndex", 0) if isinstance(result, dict) else 0
    return result, int(idx or 0)


class AgentSource:
    """MeshSource over `yurt.api.client.YurtClient` (Consul-shaped agent endpoints)."""

    def __init__(self, address: str | None = None, client: Any = None) -> None:
        if client is None:
            from yurt.api.client import YurtClient
            client = YurtClient(address, timeout=WAIT_SECONDS + 30)
        self.client = client

    def _call(self, method: str, path: str, index: int, wait: float, *args: Any, **params: Any) -> tuple[Any, int]:
        fn = getattr(self.client, method, None)
        if fn is not None:
            return _split(fn(*args, index=index, wait=_wait_str(wait)))
        return self.client.get(path, index=index, wait=_wait_str(wait), **params)

    def roots(self, index: int, wait: float) -> tuple[dict, int]:
        return self._call("ca_roots", "/v1/agent/connect/ca/roots", index, wait)

    def leaf(self, service: str, index: int, wait: float) -> tuple[dict, int]:
        return self._call("leaf", f"/v1/agent/connect/ca/leaf/{service}", index, wait, service)

    def intentions(self, service: str, index: int, wait: float) -> tuple[Any, int]:
        return self.client.get("/v1/connect/intentions/match", index=index, wait=_wait_str(wait),
                               by="destination", name=service)

    def authorize(self, service: str, client_uri: str, serial: str) -> tuple[bool, str]:
        fn = getattr(self.client, "authorize", None)
        if fn is not None:
            r = fn(service, client_uri, serial)
        else:
            r = self.client.request("POST", "/v1/agent/connect/authorize",
                                    json={"Target": service, "ClientCertURI": client_uri,
                                          "ClientCertSerial": serial}).json()
        return bool(r.get("Authorized")), str(r.get("Reason", ""))

    def endpoints(self, destination: str, datacenter: str, index: int, wait: float) -> tuple[list[dict], int]:
        fn = getattr(self.client, "health_connect", None)
        if fn is not None:
            return _split(fn(destination, passing=True, index=index, wait=_wait_str(wait)))
        return self.client.get(f"/v1/health/connect/{destination}", index=index, wait=_wait_str(wait),
                               passing="true", dc=datacenter or None)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
