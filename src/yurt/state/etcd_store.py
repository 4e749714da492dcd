"""The store on etcd: the same read model and methods as the SQLite store, for several servers.

* The index is etcd's revision. Every server keeps the in-memory read model, filled from a
  consistent range of the prefix and then fed by one watch from the revision after it; a
  watch cancelled by compaction reloads. The model is exactly what etcd holds: the leader
  applies its own committed write at once, from the very rows it built (their pending indexes
  stamped with the revision; the same objects decoding the keys it wrote would give, see
  `etcd_codec`), and the watch skips that revision when it brings it back; everything else
  comes through the watch. After a write that failed without a definite answer (it may still
  commit, at a lower revision), the leader waits for the watch again until it has caught up.
* Writes are committed in groups: those that arrive while a transaction is in flight go
  together in the next one (`_write`).
* Only the leader writes, and every write is one etcd transaction that also compares the
  leader key's create_revision with the one this server won (`Leadership`): a server that lost
  its lease, however late it notices, commits nothing. Plans also compare the mod_revision of
  every node they place on and every allocation they change with the model the write was built
  against (a change that did not come through this server's watch refuses the write).
* Reads are local. `sync()` makes a follower's read consistent: it asks etcd for the revision
  of the last write and waits until the model has it.
* Without quorum a write is refused (503). A write etcd took but could not commit in time is
  refused too, but etcd may still commit it once quorum returns (as a Raft write that timed out
  may): so every transaction is preceded by a linearizable read, which fails without quorum
  and leaves nothing behind.
* Writes larger than etcd's transaction limit (128 operations by default) are split where each
  item stands alone (allocations of a plan, evaluations, garbage collection).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from functools import partial
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from yurt.errors import Unavailable
from yurt.structs import Allocation, Deployment, Evaluation

from . import etcd_client as ec
from .blocking import Waiters
from .errors import StateError
from .etcd_codec import OWN_ROWS, PENDING, Codec, restamp, stamp
from .etcd_leader import Leadership
from .memory import NODE_ALLOCS, TABLES, Tables
from .sqlite_backend import Changes
from .store import StateStore, apply_changes
from .view import StateView
from .writes import Txn

log = logging.getLogger("yurt.state.etcd")

T = TypeVar("T")
MAX_ITEMS = 100          # items per transaction where a write is split
MAX_COMPARES = 127       # compares per transaction: etcd's --max-txn-ops (128) less the leader guard
MAX_OPS = 128            # operations per transaction: etcd's --max-txn-ops
OWN_WAIT = 1.0           # seconds the watch waits for a write of this server on its way back (see _apply_events)
MAX_OUTCOME = 10         # evals written in a plan's last transaction (more: a transaction of their own)
APPLY_TIMEOUT = 30.0     # how long a write waits for its own watch to bring it back
HISTORY_KEPT = 10_000    # revisions of history kept when etcd is compacted
TRANSIENT_RETRY = 15.0   # how long a write is retried while etcd elects its own leader


class NotLeader(Unavailable):
    """A write reached a server that does not lead (or no longer does): nothing was written."""


class EtcdStateStore(StateStore):
    ha = True

    def __init__(self, endpoints: list[str], *, prefix: str = "/yurt/", ca_file: str = "", cert_file: str = "",
                 key_file: str = "", lease_ttl: int = 10, stop: threading.Event | None = None) -> None:
        self.path = ""
        self.kv = ec.EtcdClient(endpoints, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.codec = Codec(self.prefix)
        self._write_lock = threading.Lock()     # held by whoever commits the queued writes
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._decode_lock = threading.Lock()   # decoding and applying a revision: the watch or a local write
        self._mem_lock = threading.Lock()
        self._watch_rev = 0                     # the last revision the watch delivered (or the load read)
        self._uncertain = False                 # a write may have committed unseen: apply from the watch
        self._quorum_check = ThreadPoolExecutor(1, thread_name_prefix="yurt-etcd-quorum")
        self._own: set[int] = set()              # own writes applied here that the watch has not brought back
        self._decoded = threading.Condition(self._decode_lock)   # an own write applied, or none on the way
        self._committing = False                 # a transaction of this server's is on its way to etcd and back
        self._applied_cond = threading.Condition(self._mem_lock)
        self._t = Tables()
        self._view = StateView(self._t)
        self._snap = None
        self._tmpdir = None
        self._stop = stop or threading.Event()
        self.members: dict[str, dict[str, Any]] = {}   # servers alive now (their lease holds)
        self.servers: dict[str, dict[str, Any]] = {}   # every server that joined
        self.leader_value: bytes = b""
        self.leader_create_revision = 0
        self.leadership = Leadership(self, lease_ttl)
        self._compacted = 0
        self._waiters = Waiters(self._mem_lock, self._current, NODE_ALLOCS)
        self._load_retrying()
        self._watcher = threading.Thread(target=self._watch_loop, name="yurt-etcd-watch", daemon=True)
        self._watcher.start()

    # --- open ------------------------------------------------------------------------------------

    def _load_retrying(self) -> None:
        """etcd unreachable at start: say so, naming the endpoints, and try again."""
        delay = 1.0
        while True:
            try:
                self._load()
                return
            except ec.StoreUnavailable as e:
                if self._stop.is_set():
                    raise
                log.error("cannot load the state from etcd, retrying in %.0f s: %s", delay, e)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)

    def _load_tables(self) -> None:
        rev, kvs = self.kv.range_prefix(self.prefix.encode())
        with self._decode_lock:
            t, codec = self._fresh(rev, kvs)
            with self._mem_lock:
                self._t, self.codec = t, codec
                self._view = StateView(t)
                self._snap = None
                self._watch_rev = rev
                self._own = {r for r in self._own if r > rev}
                self._waiters.notify()
                self._applied_cond.notify_all()

    def _fresh(self, rev: int, kvs: list[ec.KV]) -> tuple[Tables, Codec]:
        """A read model from a snapshot of the prefix at `rev`."""
        codec = Codec(self.prefix)
        t = Tables()
        events = [ec.Event("PUT", kv) for kv in kvs]
        dec = codec.decode(events, rev, t)
        table_index = dict.fromkeys(TABLES, 0)
        index_prefix = codec.key("index", "")
        for kv in kvs:
            if kv.key.startswith(index_prefix):
                table_index[kv.key[len(index_prefix):].decode()] = kv.mod_revision
        apply_changes(t, dec.changes, table_index)
        t.index = rev
        t.node_allocs_base = table_index["allocs"]
        self.members = {k: v for k, v in dec.members.items() if v is not None}
        self.servers = {k: v for k, v in dec.servers.items() if v is not None}
        if dec.leader is not None:
            self.leader_value, self.leader_create_revision = dec.leader
        else:
            self.leader_value, self.leader_create_revision = b"", 0
        return t, codec

    def close(self) -> None:
        self._stop.set()
        self.leadership.stop()
        self._quorum_check.shutdown(wait=False)

    # --- the watch ---------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        prefix = self.prefix.encode()
        delay = 0.2
        while not self._stop.is_set():
            try:
                for resp in self.kv.watch(prefix, ec.prefix_end(prefix), self._watch_rev + 1, stop=self._stop):
                    delay = 0.2
                    if resp.canceled:
                        if resp.compact_revision:
                            log.warning("the state store's watch fell behind compaction (revision %d): "
                                        "reloading", resp.compact_revision)
                            self._load_tables()
                            break
                        raise ec.StoreUnavailable(f"the state store's watch was cancelled: {resp.reason}")
                    if resp.events:
                        self._apply_events(resp.events)
            except ec.StoreUnavailable as e:
                log.warning("state store watch: %s", e)
            except Exception:   # the watch must never die; say why and start over
                log.exception("state store watch failed; reloading")
                try:
                    self._load_tables()
                except ec.StoreUnavailable:
                    pass
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def _apply_events(self, events: list[ec.Event]) -> None:
        by_rev: dict[int, list[ec.Event]] = {}
        for e in events:
            by_rev.setdefault(e.kv.mod_revision, []).append(e)
        for rev in sorted(by_rev):
            with self._decoded:
                if rev <= self._watch_rev:
                    continue   # a reconnected watch may repeat what it sent
                if rev not in self._own and self._committing:
                    # most likely this server's own write, which the watch brought back before its
                    # committer had the answer: the committer applies it from the objects it
                    # wrote, so it is not decoded again here (bounded: a commit that hangs, or
                    # another writer's revision, waits at most OWN_WAIT)
                    self._decoded.wait_for(partial(self._back, rev), OWN_WAIT)
                    if rev <= self._watch_rev:
                        continue
                self._watch_rev = rev
                if rev in self._own:   # this server's own write, applied when it committed
                    self._own.discard(rev)
                    continue
                self._apply_revision(rev, by_rev[rev])

    def _back(self, rev: int) -> bool:
        """Whether the committer applied `rev` as its own write, or has none on the way."""
        return rev in self._own or not self._committing

    def _apply_revision(self, rev: int, events: list[ec.Event], own: Changes | None = None) -> None:
        """One revision into the model; the caller holds the decode lock (this is the only
        place the model changes after a load). `own`: the changes this server wrote at `rev`,
        whose rows of the busy tables are taken as they are, their pending indexes stamped
        (decoding them again would only rebuild equal objects, at a cost)."""
        if own is None:
            dec = self.codec.decode(events, rev, self._t)
        else:
            prefixes = tuple(self.codec.key(table, "") for table in OWN_ROWS)
            dec = self.codec.decode([e for e in events if not e.kv.key.startswith(prefixes)], rev, self._t)
            for name in OWN_ROWS:
                built = getattr(own, name)
                for obj in built.values():
                    stamp(obj, rev)
                setattr(dec.changes, name, built)
        with self._mem_lock:
            table_index = dict(self._t.table_index)
            for name in dec.tables:
                table_index[name] = rev
            top = max(rev, self._t.index)
            dec.changes.index = top   # a late lease key never moves the index back
            nodes = self._apply(dec.changes, table_index)
            for table, rows in ((self.members, dec.members), (self.servers, dec.servers)):
                for name, m in rows.items():
                    if m is None:
                        table.pop(name, None)
                    else:
                        table[name] = m
            if dec.leader is not None:
                self.leader_value, self.leader_create_revision = dec.leader
            self._snap = None
            self._waiters.notify(nodes)
            self._applied_cond.notify_all()
        if dec.leader_changed:
            self.leadership.leader_changed()

    def _apply_own(self, written: dict[bytes, bytes | None], rev: int, ch: Changes) -> None:
        """A write this server committed at `rev`, applied now from what it wrote, exactly as
        the watch would bring it back (a delete of a missing key only drops what is not there)."""
        with self._decode_lock:
            if rev <= self._watch_rev:
                return   # the watch was quicker
            events = [ec.Event("PUT", ec.KV(k, v, rev, rev, 0)) if v is not None
                      else ec.Event("DELETE", ec.KV(k, b"", 0, rev, 0)) for k, v in written.items()]
            self._apply_revision(rev, events, ch)
            self._own.add(rev)

    def wait_applied(self, revision: int, timeout: float = APPLY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._mem_lock:
            while self._t.index < revision:
                left = deadline - time.monotonic()
                if self._stop.is_set():
                    raise ec.StoreUnavailable("the state store is closing")
                if left <= 0:
                    raise ec.StoreUnavailable(f"revision {revision} was committed, but this server's watch has "
                                              f"not brought it back within {timeout:.0f} s")
                self._applied_cond.wait(min(left, 1.0))

    def sync(self, timeout: float = 10.0) -> int:
        """A consistent read from here: wait until the model holds the last write etcd has."""
        _, kvs, _ = self.kv.range(self.codec.key("index", ""), ec.prefix_end(self.codec.key("index", "")),
                                  keys_only=True)
        last = max((kv.mod_revision for kv in kvs), default=0)
        self.wait_applied(last, timeout)
        return last

    # --- writing -------------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.leadership.is_leader()

    def _write(self, build: Callable[[Txn], object],
               compares: Callable[[], Sequence[dict[str, Any]]] | None = None) -> int:
        """One write: `build` fills a Txn against the model, `compares` (taken under the same
        lock, so against the same model) adds revision checks to the leader's fence.

        Group commit: writes that arrive while one transaction is in flight wait in a queue,
        and whoever commits next takes them together, in order, into one transaction (one
        round trip and one fsync of etcd's log for all). Each write's `build` still runs
        exactly as it would alone, seeing the writes before it; one that fails is undone
        and fails alone."""
        w = _Queued(build, compares)
        with self._queue_lock:
            self._queue.append(w)
        with self._write_lock:
            while not w.done:
                self._commit_next()
        if w.error is not None:
            raise w.error
        return w.index

    def _commit_next(self) -> None:
        """Take the writes at the head of the queue that fit in one transaction and commit them."""
        with self._queue_lock:
            queued = list(self._queue)
        fence = self.leadership.fence_revision()
        if not fence:
            self._fail(queued, NotLeader("this server does not lead the cluster" + self._leader_hint() +
                                         "; nothing was written"))
            return
        # a linearizable read before the transaction: it fails without quorum and, unlike a
        # write that times out, leaves nothing in etcd's log that could still commit later. It
        # is asked while the transaction is built, and answered before it is sent.
        quorum = self._quorum_check.submit(
            self._transient, lambda: self.kv.range(self.codec.leader_key, count_only=True))
        try:
            batch, txn, guards = self._build_batch(queued)
        finally:
            try:
                quorum.result()
            except Exception as e:  # noqa: BLE001 - re-raised in every waiting writer's thread
                self._fail([w for w in queued if not w.done], e)
                return
        if not batch:
            return
        try:
            self._commit(txn, guards, fence, batch)
        except Exception as e:  # noqa: BLE001 - re-raised in each writer's thread
            self._fail(batch, e)

    def _build_batch(self, queued: list[_Queued]) -> tuple[list[_Queued], Txn, list[dict[str, Any]]]:
        """The writes at the head of the queue built, in order, into one transaction."""
        batch: list[_Queued] = []
        txn = Txn(self._t, PENDING, time.time_ns())
        guards: list[dict[str, Any]] = []
        for w in queued:
            if batch and (w.alone or batch[0].alone):
                break
            undo = _checkpoint(txn) if batch else None
            try:
                guard = list(w.compares()) if w.compares else []
                if batch and (len(guards) + len(guard) > MAX_COMPARES or
                              _keys_of(guard) & self._written_keys(txn)):
                    break   # it waits for the next transaction (its compares must see this one)
                w.build(txn)
            except Exception as e:  # noqa: BLE001 - re-raised in its writer's thread; the ones before it stand
                if undo is not None:
                    undo()
                else:
                    txn = Txn(self._t, PENDING, txn.ch.now)
                self._fail([w], e)
                continue
            if undo is not None and _op_count(txn) > MAX_OPS:
                undo()
                break
            batch.append(w)
            guards.extend(guard)
        return batch, txn, guards

    def _fail(self, writes: list[_Queued], error: BaseException) -> None:
        for w in writes:
            w.finish(error=error)
        self._dequeue(writes)

    def _commit(self, txn: Txn, guards: list[dict[str, Any]], fence: int, batch: list[_Queued]) -> None:
        ch = txn.finish()
        written = self.codec.encode(ch, self._t)
        ops = [ec.put(k, v) if v is not None else ec.delete(k) for k, v in written.items()]
        guard = [ec.compare(self.codec.leader_key, "CREATE", "EQUAL", fence)] + guards
        with self._decoded:
            self._committing = True
        try:
            try:
                res = self._transient(lambda: self.kv.txn(guard, ops), uncertain=True)
            except Exception:
                self._uncertain = True   # it may still commit: the model follows the watch until it has
                raise
            if res.succeeded and not self._uncertain:
                self._apply_own(written, res.revision, ch)
        finally:
            with self._decoded:
                self._committing = False
                self._decoded.notify_all()
        if not res.succeeded:
            _, held, _ = self.kv.range(self.codec.leader_key)
            if not (held and held[0].create_revision == fence):
                self.leadership.fenced_out()
                raise NotLeader("this server lost its leadership before the write committed"
                                f"{self._leader_hint()}; nothing was written")
            if len(batch) == 1:
                raise StateError("the nodes or allocations this write read changed before it committed; "
                                 "nothing was written (the scheduler plans again)")
            # one of them read something that changed: commit them one at a time, so only that one fails
            for w in batch:
                w.alone = True
            return
        if self._uncertain:
            # a write that failed without a definite answer may have committed since, at a lower
            # revision than this one: the watch brings both, in order
            self.wait_applied(res.revision)
            self._uncertain = False
        for w in batch:
            w.finish(index=res.revision)
        self._dequeue(batch)

    def _dequeue(self, done: list[_Queued]) -> None:
        with self._queue_lock:
            ids = {id(w) for w in done}
            self._queue = [w for w in self._queue if id(w) not in ids]

    def _written_keys(self, txn: Txn) -> set[bytes]:
        """The keys of the object rows a transaction being built writes (what compares name)."""
        ch = txn.ch
        keys = {self.codec.key("allocs", a) for a in ch.allocs}
        keys.update(self.codec.key("nodes", n) for n in ch.nodes)
        return keys

    def _transient(self, call: Callable[[], T], *, uncertain: bool = False) -> T:
        """While etcd elects a new leader of its own (a member died), it answers "leader
        changed", "possibly due to previous leader failure" or "request timed out" for a moment:
        that is retried for a few seconds (a write is the same puts, guarded by the same
        compares; `uncertain`: a write that timed out may still commit, so the model follows
        the watch again, in order, see `_commit`)."""
        deadline = time.monotonic() + TRANSIENT_RETRY
        while True:
            try:
                return call()
            except ec.StoreUnavailable as e:
                text = str(e)
                if not ("leader" in text or "timed out" in text) or time.monotonic() > deadline:
                    raise
                if uncertain and "timed out" in text:
                    self._uncertain = True
                log.info("etcd is electing a leader; retrying: %s", e)
                time.sleep(0.3)

    def _leader_hint(self) -> str:
        name = self.leader_name()
        return f" (the leader is {name})" if name else " (no server leads now)"

    def leader_name(self) -> str:
        if not self.leader_value:
            return ""
        try:
            return str(json.loads(self.leader_value).get("Name", ""))
        except ValueError:
            return ""

    def fixed(self, obj: T, index: int) -> T:
        """An object a write returned, with its pending indexes replaced by the write's index."""
        dump = getattr(obj, "model_dump", None)
        if dump is None:
            return obj
        return type(obj).model_validate(restamp(dump(by_alias=True), index))  # type: ignore[attr-defined]

    def compact_history(self, keep: int = HISTORY_KEPT) -> int:
        """Drop etcd's history older than the last `keep` revisions (etcd keeps every version of
        every key until told; without this its quota fills). Returns the revision compacted to."""
        target = self._t.index - keep
        if target <= self._compacted:
            return self._compacted
        try:
            self.kv.compact(target)
        except ec.StoreError as e:
            if "compacted" not in str(e):
                raise
        self._compacted = target
        log.info("etcd history compacted up to revision %d", target)
        return target

    def shared_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A value every server shares (the workload identity signing key): the first server
        to start stores `make()`, the others read it."""
        key = self.codec.key("secrets", name)
        res = self.kv.txn([ec.compare(key, "CREATE", "EQUAL", 0)], [ec.put(key, make())], [ec.get(key)])
        if res.succeeded:
            _, kvs, _ = self.kv.range(key)
            return kvs[0].value
        kvs = res.responses[0].get("response_range", {}).get("kvs", [])
        return ec.KV.from_json(kvs[0]).value

    # --- writes that may be split ---------------------------------------------------------------

    def _chunks(self, items: Iterable[T]) -> list[list[T]]:
        items = list(items)
        return [items[i:i + MAX_ITEMS] for i in range(0, len(items), MAX_ITEMS)] or [[]]

    def upsert_allocs(self, allocs: Iterable[Allocation], deployments: Iterable[Deployment] = (),
                      evals: Iterable[Evaluation] = ()) -> int:
        """As the SQLite store's, with the revisions the plan read compared: each existing
        allocation it changes and each node it places on must still be as the plan saw them. The `evals` go
        with the last piece (or alone, if there are many)."""
        index = self._t.index
        first = list(deployments)   # written with the first piece
        outcome = list(evals)
        chunks = _alloc_chunks(allocs)
        last = chunks[-1] if len(outcome) <= MAX_OUTCOME else None
        for chunk in chunks:
            def compares(chunk: list[Allocation] = chunk) -> list[dict[str, Any]]:
                out = []
                for a in chunk:
                    old = self._t.allocs.get(a.id)
                    if old is not None:   # a new allocation's ID is a fresh UUID: nobody else can write it
                        out.append(ec.compare(self.codec.key("allocs", a.id), "MOD", "EQUAL", old.modify_index))
                for node_id in sorted({a.node_id for a in chunk}):
                    node = self._t.nodes.get(node_id)
                    if node is not None:
                        out.append(ec.compare(self.codec.key("nodes", node_id), "MOD", "EQUAL", node.modify_index))
                return out

            def build(txn: Txn, chunk: list[Allocation] = chunk, deps: list[Deployment] = first) -> None:
                for d in deps:
                    txn.upsert_deployment(d)
                for a in chunk:
                    txn.upsert_alloc(a)
                if chunk is last:
                    for e in outcome:
                        txn.upsert_eval(e)
            index = self._write(build, compares)
            first = []
        if last is None and outcome:
            index = self.upsert_evals(outcome)
        return index

    def update_allocs_from_client(self, allocs: Iterable[Allocation]) -> int:
        index = self._t.index
        for chunk in self._chunks(allocs):
            index = super().update_allocs_from_client(chunk)
        return index

    def upsert_evals(self, evals: Iterable[Evaluation]) -> int:
        index = self._t.index
        for chunk in self._chunks(evals):
            index = super().upsert_evals(chunk)
        return index

    def delete_evals(self, eval_ids: Iterable[str], alloc_ids: Iterable[str] = ()) -> int:
        index = self._t.index
        for chunk in self._chunks(eval_ids):
            index = super().delete_evals(chunk, ())
        for achunk in self._chunks(alloc_ids):
            index = super().delete_evals((), achunk)
        return index


def _alloc_chunks(allocs: Iterable[Allocation]) -> list[list[Allocation]]:
    """A plan's allocations in transactions that etcd takes: each allocation is compared, and so
    is each node they are placed on, so a chunk holds at most MAX_ITEMS allocations and at most
    MAX_COMPARES allocations and distinct nodes together."""
    chunks: list[list[Allocation]] = []
    chunk: list[Allocation] = []
    nodes: set[str] = set()
    for a in allocs:
        more = 1 + (a.node_id not in nodes)
        if chunk and (len(chunk) >= MAX_ITEMS or len(chunk) + len(nodes) + more > MAX_COMPARES):
            chunks.append(chunk)
            chunk, nodes = [], set()
        chunk.append(a)
        nodes.add(a.node_id)
    return chunks + [chunk] if chunk or not chunks else chunks


class _Queued:
    """A write waiting for its transaction."""

    __slots__ = ("build", "compares", "done", "index", "error", "alone")

    def __init__(self, build: Callable[[Txn], object],
                 compares: Callable[[], Sequence[dict[str, Any]]] | None) -> None:
        self.build = build
        self.compares = compares
        self.done = False
        self.index = 0
        self.error: BaseException | None = None
        self.alone = False

    def finish(self, *, index: int = 0, error: BaseException | None = None) -> None:
        self.index, self.error, self.done = index, error, True


def _checkpoint(txn: Txn) -> Callable[[], None]:
    """What undoes the next build on `txn`: its rows and sets as they are now (the objects in
    them are never changed in place, only replaced, so shallow copies are enough)."""
    ch = txn.ch
    rows = {f.name: copy.copy(getattr(ch, f.name)) for f in dataclasses.fields(ch)}
    own = {k: copy.copy(v) for k, v in vars(txn).items() if k not in ("t", "ch")}

    def undo() -> None:
        for name, value in rows.items():
            setattr(ch, name, value)
        for name, value in own.items():
            setattr(txn, name, value)
    return undo


def _op_count(txn: Txn) -> int:
    """At least the operations the transaction being built will take (each row a key, each
    table its index key, a job whose status changes one more)."""
    ch = txn.ch
    n = 0
    for f in dataclasses.fields(ch):
        v = getattr(ch, f.name)
        if isinstance(v, (dict, list, set)):
            n += len(v)
        elif v is not None and f.name not in ("index", "now"):
            n += 1
    return n + len(ch.tables()) + len(txn.touched)


def _keys_of(guards: list[dict[str, Any]]) -> set[bytes]:
    return {ec.unb64(g["key"]) for g in guards}
