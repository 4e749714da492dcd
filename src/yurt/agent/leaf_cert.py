"""The agent's leaf certificates: keys made here, signed by the server, renewed before expiry.

For each service asked for (GET /v1/agent/connect/ca/leaf/<service>) the agent generates an EC
P-256 key and a CSR for the service's SPIFFE ID, has the server sign it (in-process when the
agent is a server, else PUT /v1/internal/connect/ca/sign), and keeps the result. The private key
never leaves the agent except to the caller of the leaf endpoint.

A caller presenting a workload identity (a JWT signed by the server, `server/identity.py`)
gets a certificate only for one of the services that identity names (`LeafCerts.check_identity`);
a server agent verifies it with its own key, a client-only agent with its server's JWKS. An
identity whose allocation has stopped or is gone is revoked: refused, the message saying so.

Renewal: at a random 60-90 % of the certificate's lifetime, and at once (within a small jitter)
when the CA's active root changes. A blocking leaf query returns when a new certificate is issued.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Callable

from yurt.errors import InvalidInput, NotFound, PermissionDenied, YurtError
from yurt.server import ca_x509 as x
from yurt.server.identity import JWKSVerifier, WorkloadClaims, looks_like_jwt
from yurt.structs.connect import service_name_problem, service_uri, split_key

log = logging.getLogger("yurt.leaf")

ROOT_CHANGE_JITTER = 1.0     # seconds: spread re-issues after a root rotation
RETRY_AFTER_ERROR = 5.0


def check_service_name(service: str) -> None:
    """InvalidInput (400) naming the rule unless `service` can be the last segment of a SPIFFE ID."""
    problem = service_name_problem(service)
    if problem:
        raise InvalidInput(problem)


class CABackend(Protocol):
    def sign(self, csr_pem: str, service: str) -> dict[str, Any]: ...
    def roots(self, index: int, wait: float) -> tuple[dict[str, Any], int]: ...
    def verify_identity(self, token: str) -> WorkloadClaims | None: ...


class LocalCA:
    """The agent is a server: sign and read roots in-process."""

    def __init__(self, server) -> None:
        self.server = server

    def sign(self, csr_pem: str, service: str) -> dict[str, Any]:
        return self.server.ca.sign(csr_pem, service).to_json()

    def roots(self, index: int, wait: float) -> tuple[dict[str, Any], int]:
        store = self.server.store
        new = store.wait(index, wait, "ca") if index else store.table_index("ca")
        return self.server.ca.roots(), max(new, 1)

    def verify_identity(self, token: str) -> WorkloadClaims | None:
        return self.server.identity.verify(token)

    def revoked(self, claims: WorkloadClaims) -> str:
        """Why the identity's allocation no longer holds it ("" = it does): gone, or stopped."""
        alloc = self.server.store.alloc(claims.alloc_id)
        if alloc is None:
            return f"its allocation {claims.alloc_id[:8]} no longer exists"
        if alloc.client_terminal() or (alloc.server_terminal() and alloc.client_status != "running"):
            return f"its allocation {claims.alloc_id[:8]} has stopped ({alloc.client_status})"
        return ""


class RemoteCA:
    """A client-only agent: ask the server over HTTP."""

    JWKS_REFRESH = 5.0   # seconds: an unknown key ID refetches the server's keys at most this often
    REVOKED_TTL = 5.0    # seconds an allocation's state is kept for `revoked`

    def __init__(self, client) -> None:
        self.client = client
        self._revoked: dict[str, tuple[float, str]] = {}
        self._jwks: JWKSVerifier | None = None
        self._jwks_at = 0.0

    def sign(self, csr_pem: str, service: str) -> dict[str, Any]:
        return self.client.ca_sign(csr_pem, service)

    def roots(self, index: int, wait: float) -> tuple[dict[str, Any], int]:
        return self.client.ca_roots(index=index, wait=f"{int(wait)}s")

    def revoked(self, claims: WorkloadClaims) -> str:
        """As LocalCA.revoked, asking the server (kept REVOKED_TTL seconds per allocation); ""
        when the server cannot say (unreachable, or this agent may not read the allocation)."""
        now = time.monotonic()
        hit = self._revoked.get(claims.alloc_id)
        if hit is not None and now - hit[0] < self.REVOKED_TTL:
            return hit[1]
        try:
            alloc = self.client.get(f"/v1/allocation/{claims.alloc_id}")[0] or {}
            status, desired = alloc.get("ClientStatus", ""), alloc.get("DesiredStatus", "")
            why = (f"its allocation {claims.alloc_id[:8]} has stopped ({status})"
                   if status in ("complete", "failed", "lost") or (desired in ("stop", "evict") and status != "running")
                   else "")
        except NotFound:
            why = f"its allocation {claims.alloc_id[:8]} no longer exists"
        except YurtError:
            return ""
        if len(self._revoked) > 4096:
            self._revoked.clear()
        self._revoked[claims.alloc_id] = (now, why)
        return why

    def verify_identity(self, token: str) -> WorkloadClaims | None:
        """Against the server's JWKS (kept; fetched again for a key ID it does not know)."""
        jwks = self._jwks
        if jwks is None or (not jwks.knows(token) and time.monotonic() - self._jwks_at > self.JWKS_REFRESH):
            self._jwks_at = time.monotonic()
            jwks = self._jwks = JWKSVerifier(self.client.get("/.well-known/jwks.json")[0])
        return jwks.verify(token)


def renew_at(valid_after: float, valid_before: float, rand: Callable[[], float] = random.random) -> float:
    """When to renew: a random point between 60 % and 90 % of the lifetime (Consul's)."""
    life = valid_before - valid_after
    return valid_after + life * (0.6 + 0.3 * rand())


def _epoch(rfc3339: str) -> float:
    return dt.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


@dataclass
class _Entry:
    cert: dict[str, Any]
    index: int
    root_id: str
    renew_at: float
    expires: float


class LeafCerts:
    def __init__(self, backend: CABackend, datacenter: str, *, clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.backend = backend
        self.datacenter = datacenter
        self.clock = clock
        self.rand = rand
        self._lock = threading.Condition()
        self._certs: dict[str, _Entry] = {}
        self._issuing: dict[str, threading.Lock] = {}
        self._waiters: list[tuple[str, int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._roots: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def check_identity(self, service: str, token: str) -> None:
        """With a workload identity (JWT) the leaf is only for one of its services; PermissionDenied
        otherwise. A token that is no JWT (or none) is the ACL layer's to judge, not this."""
        if not token or not looks_like_jwt(token):
            return
        try:
            claims = self.backend.verify_identity(token)
        except YurtError as e:
            raise PermissionDenied("cannot check the workload identity: the server's keys are "
                                   f"unavailable ({e})") from None
        if claims is None:
            raise PermissionDenied("the workload identity is not valid: not signed by this cluster's "
                                   "server, or for another audience")
        if service not in claims.services:
            raise PermissionDenied(f"this workload identity is for services {', '.join(claims.services) or '(none)'}; "
                                   f"not {service}")
        revoked = getattr(self.backend, "revoked", None)   # a server agent knows its allocations
        why = revoked(claims) if revoked is not None else ""
        if why:
            raise PermissionDenied(f"the workload identity of task {claims.task!r} (job {claims.job_id!r}) is "
                                   f"revoked: {why}. A leaf is issued only to a running allocation's identity: "
                                   f"run the app as a task of a running allocation, or give it the token "
                                   f"(secrets/nomad_token) of one")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._renew_loop, "yurt-leaf-renew"), (self._watch_roots, "yurt-leaf-roots")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    # -- reading ----------------------------------------------------------------------------
    def roots(self) -> dict[str, Any]:
        if self._roots is None:
            self._roots, _ = self.backend.roots(0, 0)
        return self._roots

    def expiries(self) -> dict[str, float]:
        """service -> when (epoch seconds) the certificate held for it expires (metrics)."""
        with self._lock:
            return {service: e.expires for service, e in self._certs.items()}

    def get(self, service: str) -> dict[str, Any]:
        """The current certificate for `service`, issued now if there is none, it has expired,
        or it was signed by a root that is no longer active."""
        check_service_name(split_key(service)[0])
        with self._lock:
            e = self._certs.get(service)
        if e is not None and self.clock() < e.expires and e.root_id == self.roots().get("ActiveRootID"):
            return e.cert
        return self._issue(service, e.index if e else 0).cert

    async def wait(self, service: str, min_index: int, timeout: float) -> dict[str, Any]:
        """Return once the certificate's index is above `min_index`, or after `timeout`."""
        cert = await asyncio.to_thread(self.get, service)
        if cert["ModifyIndex"] > min_index or timeout <= 0:
            return cert
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        entry = (service, min_index, loop, fut)
        with self._lock:
            current = self._certs[service]
            if current.index > min_index:
                return current.cert
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        with self._lock:
            return self._certs[service].cert

    # -- issuing ----------------------------------------------------------------------------
    def _issue(self, service: str, seen_index: int) -> _Entry:
        with self._lock:
            lock = self._issuing.setdefault(service, threading.Lock())
        with lock:
            with self._lock:
                e = self._certs.get(service)
            if e is not None and e.index > seen_index and self.clock() < e.expires \
                    and e.root_id == self.roots().get("ActiveRootID"):
                return e  # another caller issued it meanwhile
            roots = self.roots()
            key = x.new_key()
            name, dns = split_key(service)
            uri = service_uri(roots["TrustDomain"], self.datacenter, name)
            signed = self.backend.sign(x.make_csr(key, uri, dns), name)
            cert = {**signed, "PrivateKeyPEM": x.key_pem(key)}
            after, before = _epoch(cert["ValidAfter"]), _epoch(cert["ValidBefore"])
            new = _Entry(cert, cert["ModifyIndex"], roots.get("ActiveRootID", ""),
                         renew_at(after, before, self.rand), before)
            with self._lock:
                self._certs[service] = new
                self._wake(service, new.index)
                self._lock.notify_all()
            log.debug("leaf certificate for %s issued, serial %s", service, cert["SerialNumber"])
            return new

    def _wake(self, service: str, index: int) -> None:
        keep = []
        for w in self._waiters:
            svc, min_index, loop, fut = w
            if svc == service and index > min_index:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:
                    pass
            else:
                keep.append(w)
        self._waiters = keep

    def _renew_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = self.clock()
                due = [s for s, e in self._certs.items() if e.renew_at <= now]
                if not due:
                    nxt = min((e.renew_at for e in self._certs.values()), default=now + 60)
                    self._lock.wait(max(0.05, min(nxt - now, 60)))
                    continue
            for service in due:
                try:
                    self._issue(service, self._certs[service].index)
                except Exception as e:  # noqa: BLE001 - the server may be away; try again soon
                    log.warning("renewing the certificate of %s failed: %s", service, e)
                    with self._lock:
                        self._certs[service].renew_at = self.clock() + RETRY_AFTER_ERROR

    def _watch_roots(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                roots, index = self.backend.roots(index, 300)
            except Exception as e:  # noqa: BLE001
                log.debug("watching CA roots failed: %s", e)
                self._stop.wait(RETRY_AFTER_ERROR)
                continue
            old = self._roots
            self._roots = roots
            if old is not None and old.get("ActiveRootID") != roots.get("ActiveRootID"):
                log.info("CA root changed to %s: re-issuing leaf certificates", roots.get("ActiveRootID"))
                self._stop.wait(ROOT_CHANGE_JITTER * self.rand())  # spread the agents' requests
                with self._lock:
                    for e in self._certs.values():
                        e.renew_at = float("-inf")  # due now
                    self._lock.notify_all()


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
