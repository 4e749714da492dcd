"""Consul's KV store and sessions, on the store's keyed tables "kv" and "sessions".

Semantics are Consul's (agent/consul/state/kvs.go, session.go): a put keeps the entry's
CreateIndex, LockIndex and Session; `cas` 0 creates only, `cas` N writes only while ModifyIndex
is N; `acquire` takes the lock for a session (LockIndex + 1, unless that session holds it
already), `release` gives it back (Session cleared, LockIndex kept). Every check runs inside the
write (`keyed_write`'s build), so two writers never both win.

A session is invalidated when it is destroyed, when its TTL runs out (Consul waits 2 x TTL), when
its node goes down or away, or when one of its checks is critical: its locks are released
(behavior "release") or its keys deleted ("delete"), and those keys cannot be acquired again for
the session's lock-delay. The TTL timers and the health sweep are the leader's duties (`lead`,
`step_down`), restored from the store when a server takes the lead.

Errors Consul answers with 500 (its RPC errors: an unknown session on acquire, a bad TTL or
behavior, a node that is not registered) carry Consul's message here, with 400: the request is
at fault, and a 5xx from Yurt means a bug in Yurt (the API fuzzer holds every route to that).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from yurt.errors import InvalidInput, YurtError
from yurt.structs import KVEntry, Node, Session, parse_duration
from yurt.structs.catalog import CHECK_CRITICAL, CHECK_PASSING
from yurt.structs.node import NODE_DOWN
from yurt.state import StateStore

from .catalog import Catalog, canon
from .heartbeat import Heartbeats

log = logging.getLogger("yurt.server.kv")

MAX_VALUE_SIZE = 512 * 1024          # Consul's kv_max_value_size
SESSION_TTL_MIN = 10.0               # seconds (Consul's session_ttl_min)
SESSION_TTL_MAX = 86400.0            # seconds (structs.SessionTTLMax)
TTL_MULTIPLIER = 2                   # Consul invalidates a TTL session after 2 x its TTL
MAX_LOCK_DELAY = 60_000_000_000      # ns (structs.MaxLockDelay)
LOCK_DELAY_MIN_THRESHOLD = 1000      # a lock delay below this is in seconds (Consul's fixup)
SERF_HEALTH = "serfHealth"
BEHAVIORS = ("release", "delete")
SWEEP_EVERY = 1.0                    # seconds between health sweeps when nothing changes

_SESSION_KEYS = ("ID", "Name", "Node", "LockDelay", "Behavior", "TTL", "Checks", "NodeChecks",
                 "ServiceChecks", "Namespace", "Partition")


class ConsulError(YurtError):
    """What Consul answers with 500 (an RPC error), with Consul's message; 400 here."""

    status = 400


class _Refused(Exception):
    """A precondition (CAS, lock) did not hold: the write stores nothing and answers false."""


def entry_json(e: KVEntry) -> dict[str, Any]:
    """A KV entry as Consul's GET answers it (Session only when held)."""
    out: dict[str, Any] = {"LockIndex": e.lock_index, "Key": e.key, "Flags": e.flags, "Value": e.value}
    if e.session:
        out["Session"] = e.session
    out["CreateIndex"] = e.create_index
    out["ModifyIndex"] = e.modify_index
    return out


def session_json(s: Session) -> dict[str, Any]:
    return {"ID": s.id, "Name": s.name, "Node": s.node, "LockDelay": s.lock_delay, "Behavior": s.behavior,
            "TTL": s.ttl, "NodeChecks": list(s.node_checks),
            "ServiceChecks": [dict(c) for c in s.service_checks] or None,
            "CreateIndex": s.create_index, "ModifyIndex": s.modify_index}


def key_list(keys: list[str], prefix: str = "", separator: str = "") -> list[str]:
    """`keys` (sorted, all under `prefix`), each with a separator only up to (and with) the
    first separator after the prefix, once: Consul's `?keys&separator=`."""
    out: list[str] = []
    for k in keys:
        if separator:
            i = k.find(separator, len(prefix))
            if i >= 0:
                k = k[:i + len(separator)]
        if not out or out[-1] != k:
            out.append(k)
    return out


def value_bytes(e: KVEntry) -> bytes:
    return base64.b64decode(e.value) if e.value else b""


def _ttl_seconds(ttl: str) -> float:
    return parse_duration(ttl) / 1e9 if ttl else 0.0


class ConsulKV:
    """The KV store and sessions (`Server.kv`)."""

    def __init__(self, store: StateStore, catalog: Catalog, is_leading: Callable[[], bool]) -> None:
        self.store = store
        self.catalog = catalog
        self._is_leading = is_leading
        self._delays: dict[str, float] = {}    # key -> monotonic time its lock-delay ends
        self._delay_lock = threading.Lock()
        self.ttls = Heartbeats(self._ttl_expired, every=0.2, name="yurt-session-ttls")
        self._stop = threading.Event()

    # -- the leader's duties ------------------------------------------------------------------
    def lead(self) -> None:
        """Arm every TTL session's timer afresh (2 x TTL from now) and start the health sweep."""
        self.ttls = Heartbeats(self._ttl_expired, every=0.2, name="yurt-session-ttls")
        self._stop = threading.Event()
        for _, s in self.store.keyed_list("sessions"):
            assert isinstance(s, Session)
            self._arm(s)
        self.ttls.start()
        threading.Thread(target=self._sweep_loop, args=(self._stop,), name="yurt-session-health",
                         daemon=True).start()

    def step_down(self) -> None:
        self.ttls.stop()
        self._stop.set()

    def _arm(self, s: Session) -> None:
        ttl = _ttl_seconds(s.ttl)
        if ttl > 0:
            self.ttls.reset(s.id, ttl=ttl * TTL_MULTIPLIER)

    def _ttl_expired(self, session_id: str) -> None:
        try:
            if self.invalidate(session_id):
                log.info("session %s invalidated: its TTL ran out", session_id)
        except Exception:
            log.exception("invalidating session %s (TTL) failed", session_id)

    def _sweep_loop(self, stop: threading.Event) -> None:
        last = 0
        while not stop.is_set():
            try:
                last = self.store.wait(last, SWEEP_EVERY, ("nodes", "services", "sessions"))
                if stop.is_set():
                    return
                self.sweep()
            except Exception:
                log.exception("the session health sweep failed")
                stop.wait(SWEEP_EVERY)

    def sweep(self) -> list[str]:
        """Invalidate every session whose node is gone or down, or one of whose checks is
        critical or gone (Consul does this as the check or node changes). The IDs invalidated."""
        sessions = [s for _, s in self.store.keyed_list("sessions") if isinstance(s, Session)]
        if not sessions:
            return []
        nodes = self._nodes()
        gone = []
        for s in sessions:
            why = self._unhealthy(s, nodes)
            if why and self.invalidate(s.id):
                log.info("session %s invalidated: %s", s.id, why)
                gone.append(s.id)
        return gone

    def _unhealthy(self, s: Session, nodes: dict[str, Node | None]) -> str:
        if not self._node_known(s.node, nodes):
            return f'its node "{s.node}" is gone'
        for check_id in [*s.node_checks, *(str(c.get("ID", "")) for c in s.service_checks)]:
            status = self._check_status(s.node, check_id, nodes)
            if status is None:
                return f'its check "{check_id}" is gone'
            if status == CHECK_CRITICAL:
                return f'its check "{check_id}" is critical'
        return ""

    # -- nodes and checks, as sessions see them -----------------------------------------------
    def _nodes(self) -> dict[str, Node | None]:
        """Yurt's nodes by name and by ID, and the live servers by name (None: a server agent
        that is no client node, which Consul counts as a node too)."""
        out: dict[str, Node | None] = {}
        try:
            servers = self.catalog.servers()
        except Exception:   # the agent cannot tell now: the servers are not counted this time
            log.exception("listing the servers for the sessions' nodes failed")
            servers = []
        for n in self.store.nodes():
            out.setdefault(n.name, n)
            out[n.id] = n
        for name, _ in servers:
            out.setdefault(name, None)   # a client node of that name speaks for itself
        return out

    def _node_services(self, name: str, nodes: dict[str, Node | None]) -> list:
        node = nodes.get(name)
        keys = {name} | ({node.id, node.name} if node is not None else set())
        return [svc for k in sorted(keys) for svc in self.store.services_by_node(k)]

    def _node_known(self, name: str, nodes: dict[str, Node | None]) -> bool:
        return (name in nodes or bool(self._node_services(name, nodes))
                or any(n["Node"] == name for n in self.catalog.nodes()))

    def _node_keys(self, name: str, nodes: dict[str, Node | None]) -> list[str]:
        node = nodes.get(name)
        return sorted({name} | ({node.id, node.name} if node is not None else set()))

    def _check_status(self, node_name: str, check_id: str, nodes: dict[str, Node | None]) -> str | None:
        """A check's status on the node (None: no such check). serfHealth: whether the node is up."""
        if check_id == SERF_HEALTH:
            if node_name in nodes:
                node = nodes[node_name]
                return CHECK_CRITICAL if node is not None and node.status == NODE_DOWN else CHECK_PASSING
            return CHECK_PASSING if self._node_services(node_name, nodes) else None
        for key in self._node_keys(node_name, nodes):   # the node's own checks (no ServiceID)
            for c in self.catalog.node_level_checks(key):
                if c.check_id == check_id:
                    return c.status
        for svc in self._node_services(node_name, nodes):
            for c in self.catalog.checks_of(svc):
                if c.check_id == check_id:
                    return c.status
        return None

    # -- lock-delay ---------------------------------------------------------------------------
    def _delayed(self, key: str) -> bool:
        with self._delay_lock:
            until = self._delays.get(key)
            if until is None:
                return False
            if until <= time.monotonic():
                del self._delays[key]
                return False
            return True

    def _delay(self, keys: list[str], lock_delay_ns: int) -> None:
        if lock_delay_ns <= 0 or not keys:
            return
        until = time.monotonic() + lock_delay_ns / 1e9
        with self._delay_lock:
            for k in keys:
                self._delays[k] = max(until, self._delays.get(k, 0.0))

    # -- KV -----------------------------------------------------------------------------------
    def put(self, key: str, value: bytes | None, *, flags: int = 0, cas: int | None = None,
            acquire: str | None = None, release: str | None = None) -> bool:
        if not key:
            raise InvalidInput("Missing key name")
        if value is not None and len(value) > MAX_VALUE_SIZE:
            raise too_large(len(value))
        if acquire is not None and not acquire:
            raise ConsulError("missing session")
        if release is not None and not release:
            raise ConsulError("missing session")
        if acquire and self._delayed(key):
            log.info("refusing to lock key %r: its lock-delay has not passed", key)
            return False
        b64 = base64.b64encode(value).decode() if value else None

        def build(txn: Any) -> KVEntry:
            old = txn.keyed("kv", key)
            if cas is not None and (old is None if cas else old is not None):
                raise _Refused
            if cas and old.modify_index != cas:
                raise _Refused
            session, lock_index = (old.session, old.lock_index) if old is not None else ("", 0)
            if acquire:
                if txn.keyed("sessions", acquire) is None:
                    raise ConsulError(f'invalid session "{acquire}": no session has that ID (create one with '
                                      'PUT /v1/session/create)')
                if session and session != acquire:
                    raise _Refused
                if session != acquire:
                    lock_index += 1
                session = acquire
            elif release:
                if old is None or old.session != release:
                    raise _Refused
                session = ""
            row = KVEntry(key=key, flags=flags, value=b64, session=session, lock_index=lock_index,
                          create_index=old.create_index if old is not None else txn.index, modify_index=txn.index)
            txn.put_keyed("kv", key, row)
            return row
        try:
            self.store.keyed_write(build)
        except _Refused:
            return False
        return True

    def delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
        """Delete one key, or every key under the prefix with `recurse`; with `cas`, only while
        its ModifyIndex is that (a missing key: true, as Consul's)."""
        if not recurse and not key:
            raise InvalidInput("Missing key name")

        def build(txn: Any) -> None:
            if recurse:
                rows = txn.keyed_items("kv", key)
                if not rows:
                    raise _Refused
                for k, _ in rows:
                    txn.drop_keyed("kv", k)
                return
            old = txn.keyed("kv", key)
            if old is None:
                raise _Refused
            if cas is not None and old.modify_index != cas:
                raise _NoMatch
            txn.drop_keyed("kv", key)
        try:
            self.store.keyed_write(build)
        except _NoMatch:
            return False
        except _Refused:   # nothing to delete
            return True
        return True

    # -- sessions -----------------------------------------------------------------------------
    def session(self, session_id: str) -> Session | None:
        row = self.store.keyed_get("sessions", session_id)
        assert row is None or isinstance(row, Session)
        return row

    def create_session(self, body: Any, default_node: str) -> Session:
        s = parse_session(body, default_node)
        nodes = self._nodes()
        if not self._node_known(s.node, nodes):
            raise ConsulError(f'Missing node registration: no node "{s.node}" is known (Node names a node '
                              'registered in the catalog)')
        for check_id in [*s.node_checks, *(str(c.get("ID", "")) for c in s.service_checks)]:
            status = self._check_status(s.node, check_id, nodes)
            if status is None:
                raise ConsulError(f"Missing check '{check_id}' registration on node \"{s.node}\"")
            if status == CHECK_CRITICAL:
                raise ConsulError(f"Check '{check_id}' is in critical state")

        def build(txn: Any) -> Session:
            row = s.model_copy(update={"id": str(uuid.uuid4()), "create_index": txn.index, "modify_index": txn.index})
            txn.put_keyed("sessions", row.id, row)
            return row
        _, stored = self.store.keyed_write(build)
        if self._is_leading():
            self._arm(stored)
        return stored

    def renew(self, session_id: str) -> Session | None:
        s = self.session(session_id)
        if s is not None and self._is_leading():
            self._arm(s)
        return s

    def invalidate(self, session_id: str) -> bool:
        """Destroy a session: its locks released or its keys deleted (by its behavior), and
        those keys under its lock-delay. False when there was no such session."""
        held: list[str] = []

        def build(txn: Any) -> Session:
            s = txn.keyed("sessions", session_id)
            if s is None:
                raise _Refused
            held.clear()
            txn.drop_keyed("sessions", session_id)
            for k, e in txn.keyed_items("kv"):
                if e.session != session_id:
                    continue
                held.append(k)
                if s.behavior == "delete":
                    txn.drop_keyed("kv", k)
                else:
                    txn.put_keyed("kv", k, e.model_copy(update={"session": "", "modify_index": txn.index}))
            return s
        try:
            _, s = self.store.keyed_write(build)
        except _Refused:
            return False
        self.ttls.forget(session_id)
        self._delay(held, s.lock_delay)
        return True


class _NoMatch(_Refused):
    """A delete's CAS did not match."""


def too_large(size: int) -> InvalidInput:
    return InvalidInput(f"Request body({size} bytes) too large, max size: {MAX_VALUE_SIZE} bytes "
                        "(Consul's kv_max_value_size, 512 KiB): store a smaller value", status=413)


def _lock_delay(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise InvalidInput(f"Request decode failed: LockDelay {raw!r} is not a duration (\"15s\") or a number")
    if isinstance(raw, str):
        try:
            ns = parse_duration(raw)
        except ValueError:
            raise InvalidInput(f'Request decode failed: LockDelay "{raw}" is not a duration like "15s"') from None
    else:
        ns = int(raw)
    if ns < LOCK_DELAY_MIN_THRESHOLD:
        ns *= 1_000_000_000
    return max(0, min(ns, MAX_LOCK_DELAY))


def _str_list(raw: Any, what: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InvalidInput(f"Request decode failed: {what} must be a list of check IDs")
    return list(raw)


def parse_session(body: Any, default_node: str) -> Session:
    """A session from `PUT /v1/session/create`'s body, any case of Consul's keys, with
    Consul's defaults (this agent's node, serfHealth, lock-delay 15s, behavior release)."""
    if body in (None, ""):
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput(f"Request decode failed: expected a JSON object, got {type(body).__name__}")
    c = canon(body, _SESSION_KEYS)
    unknown = sorted(set(c) - set(_SESSION_KEYS))
    if unknown:
        raise InvalidInput(f"Request decode failed: unknown field {unknown[0]!r} (a session takes "
                           f"{', '.join(k for k in _SESSION_KEYS if k not in ('ID', 'Partition'))})")
    behavior = c.get("Behavior") or "release"
    if behavior not in BEHAVIORS:
        raise ConsulError(f"Invalid Behavior setting '{behavior}': use release or delete")
    ttl = c.get("TTL") or ""
    if not isinstance(ttl, str):
        raise InvalidInput(f'Request decode failed: TTL {ttl!r} must be a duration string like "30s"')
    if ttl:
        try:
            seconds = parse_duration(ttl) / 1e9
        except ValueError as e:
            raise ConsulError(f"Session TTL '{ttl}' invalid: {e}") from None
        if seconds != 0 and not (SESSION_TTL_MIN <= seconds <= SESSION_TTL_MAX):
            raise ConsulError(f"Invalid Session TTL '{ttl}', must be between [{SESSION_TTL_MIN:g}s=24h0m0s]")
        if seconds == 0:
            ttl = ""
    checks = _str_list(c["Checks"], "Checks") if "Checks" in c else [SERF_HEALTH]
    node_checks: list[str] = []
    for cid in [*_str_list(c.get("NodeChecks"), "NodeChecks"), *checks]:
        if cid not in node_checks:
            node_checks.append(cid)
    service_checks = []
    raw_service_checks = c.get("ServiceChecks") or []
    if not isinstance(raw_service_checks, list) or not all(isinstance(r, dict) for r in raw_service_checks):
        raise InvalidInput('Request decode failed: ServiceChecks must be a list of objects like '
                           f'{{"ID": "<check id>", "Namespace": ""}}, not {raw_service_checks!r}')
    for raw in raw_service_checks:
        sc = canon(raw, ("ID", "Namespace"))
        if not sc.get("ID"):
            raise InvalidInput("Request decode failed: each of ServiceChecks needs an ID (the check's ID)")
        service_checks.append({"ID": str(sc["ID"]), "Namespace": str(sc.get("Namespace") or "")})
    name = c.get("Name") or ""
    node = c.get("Node") or default_node
    if not node:
        raise ConsulError("Must provide Node")
    return Session(name=str(name), node=str(node),
                   lock_delay=_lock_delay(c["LockDelay"]) if c.get("LockDelay") is not None else 15_000_000_000,
                   behavior=behavior, ttl=ttl, node_checks=node_checks, service_checks=service_checks)
