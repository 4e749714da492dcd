"""The state store on a real 3-member etcd (loopback): indexes are etcd's revisions, followers
follow through their watch, writes are fenced by the leader key (by revision, never by time),
quorum loss refuses writes with a clear error and keeps stale reads, a watch behind compaction
reloads, and a store started before etcd waits for it."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tests import mock
from yurt.structs import Node
from tests.agent_util import wait_for
from tests.etcd_cluster import EtcdCluster
from yurt.errors import InvalidInput, Unavailable
from yurt.state import etcd_client as ec
from yurt.state.etcd_store import EtcdStateStore, NotLeader
from yurt.structs.alloc import head_json
from yurt.api.common import ALLOC_JSON


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EtcdCluster(tmp_path_factory.mktemp("etcd"), members=3)
    try:
        c.wait_healthy(30)
        yield c
    finally:
        c.stop()


_n = 0


def _prefix() -> str:
    global _n
    _n += 1
    return f"/t{_n}-{time.monotonic_ns()}/"


def _lead(store: EtcdStateStore, name: str) -> threading.Event:
    won = threading.Event()
    store.leadership.join({"Name": name, "HTTPAddr": f"http://{name}:4646"}, won.set, lambda: None)
    return won


@pytest.fixture
def pair(cluster):
    """A leader and a follower on one prefix."""
    prefix = _prefix()
    a = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
    assert _lead(a, "a").wait(15), "the first store did not win the election"
    b = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
    _lead(b, "b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _node(name: str) -> Node:
    return mock.node().model_copy(update={"name": name})


def _register(store: EtcdStateStore, job_id: str):
    job = mock.job(job_id)
    return store.register_job(job, mock.evaluation(job))


def test_indexes_are_the_etcd_revisions_of_the_keys(pair, cluster):
    a, _ = pair
    node = mock.node()
    index = a.upsert_node(node)
    stored = a.node(node.id)
    assert stored.modify_index == stored.create_index == index
    index2, ev = _register(a, "web")
    job = a.job("default", "web")
    assert (job.create_index, job.modify_index, job.job_modify_index) == (index2, index2, index2)
    assert ev.create_index == ev.modify_index == index2, "the returned eval carries the commit's index"
    _, kvs, _ = a.kv.range(a.codec.key("jobs", "default", "web"))
    assert (kvs[0].create_revision, kvs[0].mod_revision) == (job.create_index, job.modify_index)
    a.upsert_node(node.model_copy(update={"name": "renamed"}))
    _, kvs, _ = a.kv.range(a.codec.key("nodes", node.id))
    again = a.node(node.id)
    assert (again.create_index, again.modify_index) == (kvs[0].create_revision, kvs[0].mod_revision)
    assert again.modify_index > again.create_index
    assert a.table_index("nodes") == again.modify_index
    assert a.table_index("jobs") == index2


def test_a_follower_sees_every_write_and_its_blocking_queries_wake(pair):
    a, b = pair
    job = mock.job("api")
    index, _ = a.register_job(job, mock.evaluation(job))
    b.wait_applied(index)
    assert b.job("default", "api").job_modify_index == index
    node = mock.node()
    a.upsert_node(node)
    stored_job = a.job("default", "api")
    allocs = [mock.alloc(stored_job, node.id, index=i) for i in range(3)]
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(b.wait(b.table_index("allocs"), 20, "allocs")))
    waiter.start()
    index = a.upsert_allocs(allocs)
    waiter.join(25)
    assert woke == [index], "the follower's blocking query woke at the write's index"
    got = {x.id: x for x in b.allocs_by_job("default", "api")}
    assert set(got) == {x.id for x in allocs}
    assert all(x.job is not None and x.job.version == stored_job.version for x in got.values())
    # the leader's own objects were stamped in place at the commit: the API's documents of them
    # carry the revision, never the PENDING placeholder (the node watch compares these)
    for x in allocs:
        mine = a.alloc(x.id)
        assert mine.alloc_modify_index == mine.modify_index == index
        for doc in (json.loads(head_json(mine)), json.loads(ALLOC_JSON.alloc(mine))):
            assert (doc["AllocModifyIndex"], doc["ModifyIndex"], doc["CreateIndex"]) == (index, index, index)
    # a purge: the job goes on both, the version an allocation still names is kept
    a.purge_job("default", "api", mock.evaluation(stored_job))
    b.wait_applied(a.index())
    assert b.job("default", "api") is None
    assert all(x.job is not None for x in b.allocs_by_job("default", "api"))
    assert b.sync() == a.index()


def test_the_leader_never_decodes_its_own_writes_from_the_watch(pair):
    """The watch brings each of the leader's writes back, often before the committer has read
    etcd's answer: it waits for the committer, which applies the write from the objects it
    wrote, instead of decoding the same rows again. The follower decodes them all."""
    a, b = pair
    decoded: dict[str, list[bytes]] = {"a": [], "b": []}
    for name, store in (("a", a), ("b", b)):
        def spy(events, rev, t, _orig=store.codec.decode, _seen=decoded[name]):
            _seen.extend(e.kv.key for e in events)
            return _orig(events, rev, t)
        store.codec.decode = spy
    job = mock.job("own")
    a.register_job(job, mock.evaluation(job))
    node = mock.node()
    a.upsert_node(node)
    stored_job = a.job("default", "own")
    index = 0
    for i in range(30):
        index = a.upsert_allocs([mock.alloc(stored_job, node.id, index=i)])
    wait_for(lambda: a._watch_rev >= index, 20, what="the leader's watch brought its writes back")
    b.wait_applied(index)
    prefix = a.codec.key("allocs", "")
    assert [k for k in decoded["a"] if k.startswith(prefix)] == [], \
        "the leader decoded rows of its own allocations from the watch"
    assert len([k for k in decoded["b"] if k.startswith(prefix)]) == 30
    assert {x.id for x in a.allocs_by_job("default", "own")} == {x.id for x in b.allocs_by_job("default", "own")}


def test_a_follower_cannot_write(pair):
    _, b = pair
    with pytest.raises(NotLeader, match=r"does not lead.*the leader is a"):
        b.upsert_node(mock.node())


def test_fencing_is_by_revision_not_by_time(pair):
    """A leader whose clock says its lease is fine (a paused or skewed server) but whose lease
    etcd expired commits nothing: the leader key's create_revision is compared in the write."""
    a, b = pair
    before = a.index()
    fence = a.leadership.fence_revision()
    assert fence
    a.leadership._stop.set()                        # a's own lease loop and watchdog stop (a pause)
    a.kv.lease_revoke(a.leadership._lease)          # what etcd does when the TTL runs out
    wait_for(lambda: b.is_leader(), 20, what="the follower to take over")
    with a.leadership._lock:                        # a believes it still leads, by its clock
        a.leadership._fence = fence
        a.leadership._last_ok = time.monotonic() + 3600
    assert a.is_leader()
    with pytest.raises(NotLeader, match="lost its leadership"):
        a.upsert_node(_node("from-the-old-leader"))
    assert not a.is_leader()
    b.sync()
    assert all(n.name != "from-the-old-leader" for n in b.nodes()), "the deposed leader wrote nothing"
    assert b.upsert_node(_node("from-the-new-leader")) > before


def test_quorum_lost_refuses_writes_keeps_stale_reads_and_comes_back(cluster):
    prefix = _prefix()
    a = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
    try:
        assert _lead(a, "q").wait(15)
        node = _node("before")
        a.upsert_node(node)
        cluster.kill(1)
        cluster.kill(2)
        with pytest.raises(Unavailable, match="no quorum in the state store") as err:
            a.upsert_node(_node("during"))
        assert "timed out" in str(err.value) or "refused" in str(err.value), str(err.value)
        assert a.node(node.id).name == "before", "reads from the model still answer"
        cluster.start(1)
        cluster.start(2)
        cluster.wait_healthy(60)
        wait_for(lambda: a.is_leader(), 60, what="leadership again once etcd has quorum")
        a.upsert_node(_node("after"))
        a.sync()
        names = {n.name for n in a.nodes()}
        assert names == {"before", "after"}, f"nothing half-written: {names}"
    finally:
        a.close()
        for i in range(3):
            if not cluster.running(i):
                cluster.start(i)
        cluster.wait_healthy(60)


def test_a_watch_behind_compaction_reloads(cluster):
    prefix = _prefix()
    a = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
    b = EtcdStateStore([cluster.endpoints[2]], prefix=prefix, lease_ttl=5)   # watches through member 2 only
    try:
        assert _lead(a, "c").wait(15)
        a.upsert_node(_node("one"))
        b.wait_applied(a.index())
        cluster.kill(2)
        for name in ("two", "three"):
            a.upsert_node(_node(name))
        a.kv.compact(a.index())
        cluster.start(2)
        cluster.wait_healthy(60)
        wait_for(lambda: {n.name for n in b.nodes()} == {"one", "two", "three"}, 60,
                 what="the follower to reload after compaction")
        assert b.index() >= a.index()
    finally:
        a.close()
        b.close()


def test_a_store_started_before_etcd_names_the_endpoints_and_waits(tmp_path, caplog):
    c = EtcdCluster(tmp_path / "late", members=1)
    c.stop()
    got: list[EtcdStateStore] = []
    caplog.set_level(logging.ERROR, logger="yurt.state.etcd")
    th = threading.Thread(target=lambda: got.append(EtcdStateStore(c.endpoints, prefix="/late/")), daemon=True)
    th.start()
    try:
        wait_for(lambda: any(c.endpoints[0] in r.getMessage() and "retrying" in r.getMessage()
                             for r in caplog.records), 30, what="the error naming the endpoint")
        assert not got
        c.start(0)
        c.wait_healthy(30)
        th.join(60)
        assert got, "the store opened once etcd answered"
    finally:
        for s in got:
            s.close()
        c.stop()


def test_endpoints_are_checked():
    with pytest.raises(InvalidInput, match="not an etcd client URL"):
        ec.EtcdClient(["ftp://x:1"])
    with pytest.raises(InvalidInput, match=r"endpoints.*empty"):
        ec.EtcdClient([])


def test_the_leader_compacts_history_and_followers_keep_up(pair):
    a, b = pair
    node = mock.node()
    for i in range(5):
        a.upsert_node(node.model_copy(update={"name": f"v{i}"}))
    a.leadership.compact_keep = 2
    a.leadership.compact_every = 0.0            # the next lease renewal compacts
    wait_for(lambda: a._compacted > 0, 30, what="a compaction by the leader")
    with pytest.raises(ec.StoreError, match="compacted"):
        a.kv.range(a.codec.key("nodes", node.id), revision=a._compacted - 1)
    a.upsert_node(node.model_copy(update={"name": "after"}))
    b.wait_applied(a.index())
    assert b.node(node.id).name == "after"
