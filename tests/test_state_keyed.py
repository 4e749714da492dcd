"""The keyed tables (KV, sessions, variables, namespaces) on both backends: a write is durable
across a reopen (SQLite), reaches a follower through its watch (etcd) with the indexes the
commit gave it, wakes blocking queries on its table only, and a build that raises writes nothing."""

from __future__ import annotations

import threading
import time

import pytest

from tests.agent_util import wait_for
from tests.etcd_cluster import EtcdCluster
from yurt.state import StateStore
from yurt.state.etcd_store import EtcdStateStore
from yurt.state.keyed import var_key
from yurt.structs import KVEntry, Namespace


def _put(txn, key: str, value: str) -> KVEntry:
    old = txn.keyed("kv", key)
    row = KVEntry(key=key, value=value, create_index=old.create_index if old else txn.index,
                  modify_index=txn.index)
    txn.put_keyed("kv", key, row)
    return row


def _exercise(store, reader):
    idx, row = store.keyed_write(lambda txn: _put(txn, "app/a", "YQ=="))
    assert row.create_index == row.modify_index == idx
    store.keyed_write(lambda txn: _put(txn, "app/b/c", "Yg=="))
    store.keyed_write(lambda txn: _put(txn, "other", "Yw=="))
    wait_for(lambda: reader.keyed_get("kv", "other") is not None, 10, what="the follower to see the writes")
    assert [k for k, _ in reader.keyed_list("kv", "app/")] == ["app/a", "app/b/c"]
    got = reader.keyed_get("kv", "app/a")
    assert (got.value, got.create_index, got.modify_index) == ("YQ==", idx, idx)
    # a build that raises writes nothing
    before = store.keyed_list("kv")

    def bad(txn):
        _put(txn, "app/never", "eA==")
        raise ValueError("no")
    with pytest.raises(ValueError):
        store.keyed_write(bad)
    assert store.keyed_list("kv") == before
    # keys with slashes, NUL and non-ASCII survive both encodings
    weird = var_key("prod", "nomad/jobs/wëb")
    store.keyed_write(lambda txn: txn.put_keyed("namespaces", weird, Namespace(name="x", modify_index=txn.index)))
    wait_for(lambda: reader.keyed_get("namespaces", weird) is not None, 10, what="the odd key")
    # a blocking query on "kv" wakes for a kv write, not for a namespaces write
    start = reader.table_index("kv")
    woke: list[int] = []
    t = threading.Thread(target=lambda: woke.append(reader.wait(start, 10, "kv")))
    t.start()
    store.keyed_write(lambda txn: txn.put_keyed("namespaces", "n2", Namespace(name="n2")))
    time.sleep(0.3)   # give a wrong wake-up the chance to happen
    assert not woke
    store.keyed_write(lambda txn: txn.drop_keyed("kv", "other"))
    t.join(10)
    assert woke and woke[0] > start
    wait_for(lambda: reader.keyed_get("kv", "other") is None, 10, what="the delete")


def test_keyed_tables_on_sqlite(tmp_path):
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    _exercise(store, store)
    store.close()
    again = StateStore(path)
    try:
        assert [k for k, _ in again.keyed_list("kv")] == ["app/a", "app/b/c"]
        assert again.keyed_get("namespaces", var_key("prod", "nomad/jobs/wëb")) is not None
        with pytest.raises(ValueError, match="unknown keyed table 'nope'"):
            again.keyed_list("nope")
    finally:
        again.close()


def test_keyed_tables_on_etcd(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd", members=1)
    try:
        cluster.wait_healthy(30)
        prefix = f"/keyed-{time.monotonic_ns()}/"
        a = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
        won = threading.Event()
        a.leadership.join({"Name": "a", "HTTPAddr": "http://a:4646"}, won.set, lambda: None)
        assert won.wait(15)
        b = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
        try:
            _exercise(a, b)
            c = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)   # a fresh load
            try:
                assert [k for k, _ in c.keyed_list("kv")] == ["app/a", "app/b/c"]
            finally:
                c.close()
        finally:
            a.close()
            b.close()
    finally:
        cluster.stop()
