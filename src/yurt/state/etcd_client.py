"""A typed client for etcd's v3 API over its HTTP gateway, on `etcd3gw`.

`etcd3gw` (OpenStack's gateway client) gives the HTTP session, TLS (CA, client certificate) and
the API path; this module adds what the store needs and etcd3gw leaves out: every answer's
header revision, the revisions of every key, compares on any target, one client for several
endpoints that moves on when one stops answering, and a watch reader that reports what
etcd3gw's drops (progress notifications, cancellation, the compaction revision).

Why the gateway rather than gRPC (`aetcd`): aetcd connects without TLS only and to one
endpoint, and it is asyncio while the store is threads; measured side by side
(`bench/etcd_clients.py`) aetcd is faster per call, and the gateway is fast enough for the
store (a 100-put transaction in ~10 ms on this machine).

Failures a caller can act on are `yurt.errors`: `StoreUnavailable` (503) when no endpoint
answers or etcd has no quorum (its message says which, and names the endpoints).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from etcd3gw.client import Etcd3Client

from yurt.errors import InvalidInput, Unavailable, YurtError

log = logging.getLogger("yurt.state.etcd")

REQUEST_TIMEOUT = 8.0     # etcd answers "request timed out" after ~7 s without quorum


class StoreUnavailable(Unavailable):
    """etcd cannot be reached, or has no quorum: nothing was written."""


class StoreError(YurtError):
    """etcd refused a request for a reason of its own (the message is etcd's)."""


_JSON = {"Content-Type": "application/json"}


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(key: bytes) -> bytes:
    """The range_end that makes [key, end) every key starting with `key`."""
    b = bytearray(key)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


@dataclass
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KV:
        return cls(unb64(d.get("key")), unb64(d.get("value")), int(d.get("create_revision", 0)),
                   int(d.get("mod_revision", 0)), int(d.get("version", 0)), int(d.get("lease", 0)))


class WatchedKV(KV):
    """A key as the watch brings it: its value decoded from base64 when first read. The leader
    reads few of them (it skips its own writes, most of what it watches)."""

    def __init__(self, d: dict[str, Any]) -> None:   # the dataclass's fields, from etcd's JSON
        self.key = unb64(d.get("key"))
        self._raw: str | None = d.get("value")
        self._value: bytes | None = None
        self.create_revision = int(d.get("create_revision", 0))
        self.mod_revision = int(d.get("mod_revision", 0))
        self.version = int(d.get("version", 0))
        self.lease = int(d.get("lease", 0))

    @property
    def value(self) -> bytes:
        if self._value is None:
            self._value = unb64(self._raw)
        return self._value

    @value.setter
    def value(self, data: bytes) -> None:
        self._value = data


@dataclass
class Event:
    kind: str          # "PUT" or "DELETE"
    kv: KV


@dataclass
class WatchResponse:
    revision: int                       # the header's: the store's revision when it was sent
    events: list[Event] = field(default_factory=list)
    canceled: bool = False
    compact_revision: int = 0
    reason: str = ""


@dataclass
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]


# --- building transactions -------------------------------------------------------------------

def put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def delete(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def get(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def compare(key: bytes, target: str, result: str, value: int | bytes) -> dict[str, Any]:
    """`target` is CREATE, MOD, VERSION or VALUE; `result` EQUAL, GREATER, LESS or NOT_EQUAL."""
    c: dict[str, Any] = {"key": b64(key), "target": target, "result": result}
    if target == "VALUE":
        c["value"] = b64(value if isinstance(value, bytes) else str(value).encode())
    else:
        c[{"CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version"}[target]] = str(value)
    return c


# --- the client --------------------------------------------------------------------------------

class EtcdClient:
    """etcd at one of `endpoints` ("http://host:port" or "https://..."), moving to the next one
    when the current one does not answer."""

    def __init__(self, endpoints: list[str], *, ca_file: str = "", cert_file: str = "", key_file: str = "",
                 timeout: float = REQUEST_TIMEOUT) -> None:
        if not endpoints:
            raise InvalidInput("store { etcd { endpoints } } is empty: list the etcd client URLs, "
                               'e.g. endpoints = ["http://127.0.0.1:2379"]')
        self.endpoints = list(endpoints)
        self._clients = [self._make(e, ca_file, cert_file, key_file, timeout) for e in endpoints]
        self._current = 0
        self.quorum_seen = 0.0      # monotonic time of the last answer that needed etcd's quorum
        self._lock = threading.Lock()
        self.timeout = timeout
        self._tls = (ca_file, cert_file, key_file)

    @staticmethod
    def _make(endpoint: str, ca_file: str, cert_file: str, key_file: str, timeout: float) -> Etcd3Client:
        u = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InvalidInput(f'store {{ etcd {{ endpoints }} }}: "{endpoint}" is not an etcd client URL; '
                               'write "http://HOST:2379" (or https:// with ca_file)')
        if (cert_file or key_file) and not (cert_file and key_file):
            raise InvalidInput("store { etcd }: cert_file and key_file go together (the client certificate "
                               "and its key)")
        client = Etcd3Client(host=u.hostname, port=u.port or 2379, protocol=u.scheme,
                             ca_cert=ca_file or None, cert_cert=cert_file or None, cert_key=key_file or None,
                             timeout=timeout, api_path="/v3/")
        # etcd is dialled directly with the TLS files given: no ~/.netrc and proxy lookups from the
        # environment on every request (they cost ~0.15 ms of CPU per call)
        client.session.trust_env = False
        return client

    def _unavailable(self, cause: str) -> StoreUnavailable:
        return StoreUnavailable(f"no quorum in the state store: {cause} (etcd endpoints: "
                                f"{', '.join(self.endpoints)})")

    def call(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """POST /v3/<path>; tries each endpoint once, starting with the one that last answered."""
        errors = []
        n = len(self._clients)
        start = self._current
        for i in range(n):
            k = (start + i) % n
            c = self._clients[k]
            try:
                # orjson both ways: a plan's transaction is hundreds of puts (~5 x less CPU than
                # requests' json module, the same JSON)
                resp = c.session.post(c.get_url(path), data=orjson.dumps(body), headers=_JSON,
                                      timeout=timeout or self.timeout)
            except requests.exceptions.SSLError as e:
                errors.append(f"{self.endpoints[k]}: TLS failed ({e}); check store {{ etcd {{ ca_file "
                              "cert_file key_file }}")
                continue
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                errors.append(f"{self.endpoints[k]}: {_short(e)}")
                continue
            if resp.status_code == 200:
                self._current = k
                out: dict[str, Any] = orjson.loads(resp.content)
                if path in ("kv/txn", "kv/put") or (path == "kv/range" and not body.get("serializable")):
                    self.quorum_seen = time.monotonic()   # these go through the cluster's quorum
                return out
            text = _error_text(resp)
            if "timed out" in text or "no leader" in text or "leader changed" in text:
                # etcd answered: the cluster has no quorum (asking another member waits as long)
                raise self._unavailable(f"{self.endpoints[k]}: {text}")
            if resp.status_code in (503, 504, 408):
                errors.append(f"{self.endpoints[k]}: {text}")
                continue
            raise _request_error(path, resp.status_code, text)
        raise self._unavailable("; ".join(errors))

    # -- KV -----------------------------------------------------------------------------------
    def range(self, key: bytes, end: bytes | None = None, *, revision: int = 0, limit: int = 0,
              serializable: bool = False, keys_only: bool = False,
              count_only: bool = False) -> tuple[int, list[KV], bool]:
        """(header revision, kvs, more)."""
        body: dict[str, Any] = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if serializable:
            body["serializable"] = True
        if keys_only:
            body["keys_only"] = True
        if count_only:
            body["count_only"] = True
        r = self.call("kv/range", body)
        return (int(r["header"]["revision"]), [KV.from_json(kv) for kv in r.get("kvs", [])],
                bool(r.get("more", False)))

    def range_prefix(self, prefix: bytes, *, page: int = 1000) -> tuple[int, list[KV]]:
        """Every key under `prefix` at one revision (paged, each page pinned to the first's)."""
        end = prefix_end(prefix)
        rev, kvs, more = self.range(prefix, end, limit=page)
        out = list(kvs)
        while more and kvs:
            _, kvs, more = self.range(kvs[-1].key + b"\0", end, revision=rev, limit=page)
            out.extend(kvs)
        return rev, out

    def txn(self, compares: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> TxnResult:
        r = self.call("kv/txn", {"compare": compares, "success": success, "failure": failure or []})
        return TxnResult(bool(r.get("succeeded", False)), int(r["header"]["revision"]), r.get("responses", []))

    def compact(self, revision: int) -> None:
        self.call("kv/compaction", {"revision": str(revision)})

    # -- leases ---------------------------------------------------------------------------------
    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """(lease ID, granted TTL in seconds)."""
        r = self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        if r.get("error"):
            raise self._unavailable(str(r["error"]))
        return int(r["ID"]), int(r["TTL"])

    def lease_keepalive(self, lease: int, *, timeout: float | None = None) -> int:
        """One keep-alive; the TTL left (0: the lease is gone, expired or revoked)."""
        r = self.call("lease/keepalive", {"ID": str(lease)}, timeout=timeout)
        result = r.get("result", r)
        return int(result.get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        try:
            self.call("lease/revoke", {"ID": str(lease)}, timeout=2.0)
        except (StoreUnavailable, StoreError, InvalidInput):
            pass   # gone already, or etcd unreachable: it expires by itself

    def check_quorum(self) -> None:
        """Raise StoreUnavailable, naming each member's answer, unless one says it is healthy."""
        health = self.health()
        if not any(v == "true" for v in health.values()):
            raise StoreUnavailable("no quorum in the state store: etcd /health says " +
                                   ", ".join(f"{ep}: {v}" for ep, v in health.items()))

    def health(self) -> dict[str, str]:
        """Each endpoint's own /health answer ("true", "false" or why it did not answer)."""
        out = {}
        for ep, c in zip(self.endpoints, self._clients, strict=True):
            try:
                out[ep] = str(c.session.get(c.base_url + "/health", timeout=2.0).json().get("health"))
            except (requests.RequestException, ValueError) as e:
                out[ep] = _short(e)
        return out

    # -- watch ----------------------------------------------------------------------------------
    def watch(self, key: bytes, end: bytes, start_revision: int, *,
              stop: threading.Event) -> Iterator[WatchResponse]:
        """The changes under [key, end) from `start_revision` on, as etcd sends them (a revision
        is never split across responses), with progress notifications. Ends when the stream
        ends or `stop` is set; raises StoreUnavailable when no endpoint accepts the watch."""
        body: dict[str, Any] = {"create_request": {"key": b64(key), "range_end": b64(end),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        errors = []
        n = len(self._clients)
        for i in range(n):
            k = (self._current + i) % n
            c = self._clients[k]
            try:
                resp = c.session.post(c.get_url("watch"), json=body, stream=True, timeout=(self.timeout, 30.0))
            except requests.RequestException as e:
                errors.append(f"{self.endpoints[k]}: {_short(e)}")
                continue
            if resp.status_code != 200:
                errors.append(f"{self.endpoints[k]}: {_error_text(resp)}")
                resp.close()
                continue
            try:
                yield from self._read_watch(resp, stop)
            finally:
                resp.close()
            return
        raise self._unavailable("; ".join(errors))

    @staticmethod
    def _read_watch(resp: requests.Response, stop: threading.Event) -> Iterator[WatchResponse]:
        try:
            # chunk_size=None: each line as soon as its HTTP chunk arrives (etcd sends one per response)
            for line in resp.iter_lines(chunk_size=None):  # type: ignore[call-overload]
                if stop.is_set():
                    return
                if not line:
                    continue
                msg = orjson.loads(line)
                if "error" in msg:
                    raise StoreUnavailable(f"the state store's watch failed: {msg['error'].get('message', msg)}")
                r = msg.get("result", {})
                rev = int(r.get("header", {}).get("revision", 0))
                out = WatchResponse(rev, canceled=bool(r.get("canceled", False)),
                                    compact_revision=int(r.get("compact_revision", 0)),
                                    reason=str(r.get("cancel_reason", "")))
                for e in r.get("events", []):
                    out.events.append(Event(e.get("type", "PUT"), WatchedKV(e["kv"])))
                yield out
        except (requests.RequestException, ValueError) as e:
            if not stop.is_set():
                log.info("the state store's watch stream ended: %s", _short(e))


def _short(e: BaseException) -> str:
    text = str(e)
    for marker in ("Connection refused", "timed out", "No route to host", "Name or service not known",
                   "Network is unreachable", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text[:200]


def _error_text(resp: requests.Response) -> str:
    try:
        d = resp.json()
        return str(d.get("error") or d.get("message") or d)
    except ValueError:
        return resp.text[:200] or f"HTTP {resp.status_code}"


def _request_error(path: str, status: int, text: str) -> Exception:
    if "too large" in text or "too many operations" in text:
        return InvalidInput(f"the state store refused a write of this size ({text}); etcd's limits are "
                            "--max-request-bytes and --max-txn-ops")
    return StoreError(f"etcd {path}: HTTP {status}: {text}")
