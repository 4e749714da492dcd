"""A lean client for the few agent endpoints the sidecar proxy needs, on the standard library only.

Why not `yurt.api.client.YurtClient`: it is built on httpx (httpx + httpcore + anyio + h11 ...),
which alone costs a sidecar ~10 MB of RSS, a third of its budget. The proxy needs six GETs/POSTs
with Consul-style blocking queries; `http.client` over a UNIX socket (`unix:///path/yurt.sock`,
what a sidecar inside an allocation uses) or TCP (`http://host:port`, `host:port`) does that.

Threads: every watch thread and authorization worker calls in concurrently, so each thread keeps
its own keep-alive connection (`http.client` connections are not thread-safe). A request on a
reused connection that the agent has meanwhile closed is retried once on a fresh one.
Blocking queries: `?index=N&wait=60s`; the new index is read from X-Consul-Index (or
X-Nomad-Index). The socket timeout of a blocking query is its wait plus a margin.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from typing import Any
from urllib.parse import quote, urlencode

from yurt.errors import Unreachable, YurtError, error_for_status

DEFAULT_ADDRESS = "http://127.0.0.1:4646"
DEFAULT_TIMEOUT = 30.0
BLOCK_MARGIN = 15.0  # seconds added to ?wait= for the socket timeout of a blocking query


def default_address() -> str:
    return os.environ.get("YURT_ADDR") or os.environ.get("NOMAD_ADDR") or DEFAULT_ADDRESS


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self.unix_path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _seconds(wait: Any) -> float:
    """A wait given as seconds or as a Go-style duration string ("60s", "5m", "250ms")."""
    if isinstance(wait, (int, float)):
        return float(wait)
    w = str(wait).strip()
    for unit, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if w.endswith(unit):
            try:
                return float(w[: -len(unit)]) * mult
            except ValueError:
                break
    try:
        return float(w)
    except ValueError:
        return 300.0


def _wait_param(wait: Any) -> str:
    if isinstance(wait, (int, float)):
        return f"{max(1, int(wait))}s"
    return str(wait)


# Errors meaning "the kept-alive connection was closed under us": retry once on a new one.
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError,
          ConnectionResetError, ConnectionAbortedError)


class AgentClient:
    """`address`: unix:///path/to/yurt.sock, http://host:port, https://host:port or host:port
    (default $YURT_ADDR, then $NOMAD_ADDR, then http://127.0.0.1:4646). `token_file`: a file
    holding the caller's token (the sidecar's workload identity, `secrets/nomad_token`), read
    on every request and sent as X-Consul-Token and X-Nomad-Token."""

    def __init__(self, address: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 token_file: str = "") -> None:
        self.address = (address or default_address()).rstrip("/")
        self.timeout = timeout
        self.token_file = token_file
        self._unix = ""
        self._https = False
        self._host = ""
        self._port = 0
        if self.address.startswith("unix://"):
            self._unix = self.address[len("unix://"):]
        else:
            addr = self.address
            if "://" not in addr:
                addr = "http://" + addr
            scheme, _, rest = addr.partition("://")
            self._https = scheme == "https"
            hostport = rest.split("/", 1)[0]
            if hostport.startswith("["):  # [v6]:port
                host, _, port = hostport[1:].partition("]")
                port = port.lstrip(":")
            elif hostport.count(":") == 1:
                host, _, port = hostport.partition(":")
            else:  # name, v4 or bare v6 without a port
                host, port = hostport, ""
            self._host = host or "127.0.0.1"
            self._port = int(port) if port else (443 if self._https else 80)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------------
    def _new_conn(self) -> http.client.HTTPConnection:
        if self._unix:
            c: http.client.HTTPConnection = _UnixConnection(self._unix, self.timeout)
        elif self._https:
            c = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        else:
            c = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        with self._lock:
            self._conns.add(c)
        return c

    def _drop(self, c: http.client.HTTPConnection) -> None:
        c.close()
        with self._lock:
            self._conns.discard(c)
        if getattr(self._local, "conn", None) is c:
            self._local.conn = None

    def request(self, method: str, path: str, params: dict | None = None, body: Any = None,
                timeout: float | None = None) -> tuple[Any, dict]:
        """One request; returns (decoded JSON body or None, {lower-case header: value})."""
        if self._closed:
            raise Unreachable(self.address, "client closed")
        q = {k: v for k, v in (params or {}).items() if v is not None}
        url = path + ("?" + urlencode(q) if q else "")
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["X-Consul-Token"] = headers["X-Nomad-Token"] = token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self._local.conn = self._new_conn()
            conn.timeout = timeout or self.timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE as e:
                self._drop(conn)
                if reused and attempt == 0:
                    continue
                raise Unreachable(self.address, str(e) or type(e).__name__) from None
            except TimeoutError:
                self._drop(conn)
                raise Unreachable(self.address, "the request timed out") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                reason = "connection refused; is `yurt agent` running?" \
                    if isinstance(e, ConnectionRefusedError) else (str(e) or type(e).__name__)
                raise Unreachable(self.address, reason) from None
            if resp.will_close:
                self._drop(conn)
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.status >= 400:
                raise error_for_status(resp.status, raw.decode("utf-8", "replace").strip())
            if not raw:
                return None, hdrs
            try:
                return json.loads(raw), hdrs
            except ValueError as e:
                raise YurtError(f"invalid JSON from the agent: {e}", status=resp.status) from None
        raise AssertionError("unreachable")

    def _token(self) -> str:
        if not self.token_file:
            return ""
        try:
            with open(self.token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise YurtError(f"cannot read the token file {self.token_file}: {e.strerror}") from None

    def get(self, path: str, *, index: int = 0, wait: Any = None, **params: Any) -> tuple[Any, int]:
        """GET with an optional blocking query; returns (body, X-Consul-Index | X-Nomad-Index)."""
        timeout = None
        if index:
            params["index"] = index
            params["wait"] = _wait_param(wait or "5m")
            timeout = _seconds(params["wait"]) + BLOCK_MARGIN
        body, hdrs = self.request("GET", path, params, timeout=timeout)
        idx = hdrs.get("x-consul-index") or hdrs.get("x-nomad-index") or "0"
        try:
            return body, int(idx)
        except ValueError:
            return body, 0

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the proxy needs -------------------------------------------------------------------
    def ca_roots(self, index: int = 0, wait: Any = None) -> tuple[dict, int]:
        """{ActiveRootID, TrustDomain, Roots: [...]}."""
        return self.get("/v1/agent/connect/ca/roots", index=index, wait=wait)

    def leaf(self, service: str, index: int = 0, wait: Any = None) -> tuple[dict, int]:
        """The leaf certificate for `service` (blocks until a newer one is issued)."""
        return self.get(f"/v1/agent/connect/ca/leaf/{quote(service, safe='')}", index=index, wait=wait)

    def health_connect(self, name: str, passing: bool = True, index: int = 0, wait: Any = None,
                       datacenter: str | None = None) -> tuple[list[dict], int]:
        """Mesh endpoints (sidecars) of `name`: [{Node, Service, Checks}]."""
        body, idx = self.get(f"/v1/health/connect/{quote(name, safe='')}", index=index, wait=wait,
                             passing="1" if passing else None, dc=datacenter or None)
        return body or [], idx

    def intention_match(self, destination: str, index: int = 0, wait: Any = None) -> tuple[list[dict], int]:
        """The intentions with `destination` as destination, in evaluation order."""
        body, idx = self.get("/v1/connect/intentions/match", index=index, wait=wait,
                             by="destination", name=destination)
        return (body or {}).get(destination, []) if isinstance(body, dict) else (body or []), idx

    def authorize(self, target: str, client_cert_uri: str, client_cert_serial: str = "") -> dict:
        """{Authorized, Reason}: may the holder of that SPIFFE ID connect to `target`?"""
        body, _ = self.request("POST", "/v1/agent/connect/authorize", body={
            "Target": target, "ClientCertURI": client_cert_uri, "ClientCertSerial": client_cert_serial})
        return body or {}
