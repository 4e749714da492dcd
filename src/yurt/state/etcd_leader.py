"""Leadership on etcd: one lease per server, a member key and the leader key on it.

A server grants itself a lease (`ttl` seconds, kept alive every ttl/3) and puts
`<prefix>members/<name>` on it: that key is how the others know it is alive. It campaigns with a
transaction: if `<prefix>leader` does not exist, put it (on its lease); the revision of that
transaction, the key's create_revision, is its fence. Every write it makes compares the leader
key's create_revision with the fence in the same transaction, so nothing it writes after the
key is gone (lease expired, revoked) or taken by another server can commit. Time is used only
to stop early: a leader that has not renewed its lease within the TTL (by its own clock) steps
down at once, and one whose watch shows the leader key gone or replaced does too. The leader
also compacts etcd's history every few minutes (`EtcdStateStore.compact_history`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import etcd_client as ec

if TYPE_CHECKING:
    from .etcd_store import EtcdStateStore

log = logging.getLogger("yurt.state.leader")


class Leadership:
    def __init__(self, store: EtcdStateStore, ttl: int = 10) -> None:
        self.store = store
        self.ttl = ttl
        self.granted_ttl = ttl
        self.member: dict[str, Any] = {}
        self.on_elected: Callable[[], None] = lambda: None
        self.on_lost: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._lease = 0
        self._fence = 0
        self._last_ok = 0.0            # monotonic time of the last keep-alive etcd answered
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.elections = 0             # how many times this server won
        self.compact_every = 300.0     # the leader compacts etcd's history this often,
        self.compact_keep = 10_000     # keeping this many revisions
        self._last_compaction = time.monotonic()

    # --- what the store and the server ask ----------------------------------------------------

    def join(self, member: dict[str, Any], on_elected: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Become a member and campaign from now on (a thread); `on_elected` runs when this server
        wins (its model holds everything before that), `on_lost` the moment it stops leading."""
        self.member = dict(member)
        self.on_elected, self.on_lost = on_elected, on_lost
        for target, name in ((self._run, "yurt-leadership"), (self._watchdog, "yurt-lease-watchdog")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)

    def is_leader(self) -> bool:
        return self.fence_revision() != 0

    def fence_revision(self) -> int:
        with self._lock:
            if self._fence and time.monotonic() - self._last_ok < self.granted_ttl - 1.0:
                return self._fence
            return 0

    def leader_changed(self) -> None:
        """The watch saw the leader key change."""
        self._changed.set()
        with self._lock:
            fence = self._fence
        if fence and self.store.leader_create_revision != fence:
            self._lose("the leader key is gone or belongs to another server")

    def fenced_out(self) -> None:
        self._lose("a write's leader check failed in etcd")

    def stop(self) -> None:
        """Leave: step down and revoke the lease (the leader and member keys go at once, so
        another server takes over without waiting for the TTL)."""
        self._stop.set()
        self._changed.set()
        self._lose("this server is stopping")
        if self._lease:
            self.store.kv.lease_revoke(self._lease)
            self._lease = 0

    # --- the loop ----------------------------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        with self._lock:
            if not self._fence:
                return
            self._fence = 0
        log.warning("this server no longer leads: %s", reason)
        try:
            self.on_lost()
        except Exception:   # stepping down must finish
            log.exception("stepping down failed")

    def _watchdog(self) -> None:
        """Step down the moment the lease may have expired, whatever the other thread is doing."""
        while not self._stop.wait(0.25):
            with self._lock:
                late = self._fence and time.monotonic() - self._last_ok >= self.granted_ttl - 1.0
            if late:
                self._lose(f"its lease was not renewed for {self.granted_ttl - 1} s (etcd unreachable "
                           "or without quorum)")

    def _run(self) -> None:
        kv = self.store.kv
        while not self._stop.is_set():
            try:
                if not self._lease:
                    self._lease, self.granted_ttl = kv.lease_grant(self.ttl)
                    self._last_ok = time.monotonic()
                    value = json.dumps(self.member).encode()
                    kv.txn([], [ec.put(self.store.codec.member_key(self.member["Name"]), value, self._lease),
                                ec.put(self.store.codec.server_key(self.member["Name"]), value)])
                else:
                    left = kv.lease_keepalive(self._lease, timeout=max(1.0, self.ttl / 6))
                    if left <= 0:
                        self._lose("its lease expired")
                        self._lease = 0
                        continue
                    with self._lock:
                        self._last_ok = time.monotonic()
                if not self.is_leader():
                    self._campaign()
                elif time.monotonic() - self._last_compaction > self.compact_every:
                    self._last_compaction = time.monotonic()
                    self.store.compact_history(self.compact_keep)
            except ec.StoreUnavailable as e:
                log.warning("leadership: %s", e)
                self._stop.wait(0.5)
                continue
            except Exception:   # keep campaigning; say why
                log.exception("leadership loop failed")
                self._stop.wait(1.0)
                continue
            self._changed.wait(self.ttl / 3)
            self._changed.clear()

    def _campaign(self) -> None:
        kv = self.store.kv
        key = self.store.codec.leader_key
        value = json.dumps({"Name": self.member["Name"], "HTTPAddr": self.member.get("HTTPAddr", "")}).encode()
        res = kv.txn([ec.compare(key, "CREATE", "EQUAL", 0)], [ec.put(key, value, self._lease)], [ec.get(key)])
        if res.succeeded:
            fence = res.revision
        else:
            kvs = res.responses[0].get("response_range", {}).get("kvs", []) if res.responses else []
            if not kvs:
                return
            held = ec.KV.from_json(kvs[0])
            if _name(held.value) != self.member["Name"]:
                return   # another server leads
            if held.lease != self._lease:
                # our own key from before a restart: remove it (only that incarnation of it)
                kv.txn([ec.compare(key, "CREATE", "EQUAL", held.create_revision)], [ec.delete(key)])
                self._changed.set()
                return
            # still ours, on our live lease (we stepped down while etcd had no quorum, and the
            # lease outlived it): the key was never deleted, so nobody else led since
            fence = held.create_revision
        self.store.wait_applied(fence)
        with self._lock:
            self._fence = fence
            self._last_ok = time.monotonic()
        self.elections += 1
        log.info("this server leads the cluster (fence revision %d)", fence)
        try:
            self.on_elected()
        except Exception:   # a leader that cannot start its duties steps down
            log.exception("taking up leadership failed")
            self._lose("taking up leadership failed")
            if self._lease:
                kv.lease_revoke(self._lease)
                self._lease = 0


def _name(value: bytes) -> str:
    try:
        return str(json.loads(value).get("Name", ""))
    except ValueError:
        return ""
