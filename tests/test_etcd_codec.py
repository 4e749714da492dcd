"""The etcd store's codec on its own (no etcd needed): what a write encodes is what the watch
decodes, with every PENDING index read back as the revision the write got; the text restamp does
what the dict walk does, and so does `stamp` on the objects a server applies from its own write.
And how a plan's allocations are split into transactions etcd accepts (--max-txn-ops 128)."""

from __future__ import annotations

import json
from typing import Any

from yurt.state import etcd_client as ec
from yurt.state.etcd_codec import OWN_ROWS, PENDING, Codec, _loads, restamp, stamp
from yurt.state.etcd_store import MAX_COMPARES, MAX_ITEMS, _alloc_chunks
from yurt.state.memory import Tables
from yurt.state.store import apply_changes
from yurt.state.writes import Txn
from yurt.structs import AllocDeploymentStatus, AllocMetric, Deployment, TaskState

from . import mock

REV = 4242


def _events(ops: dict[bytes, bytes | None], rev: int) -> list[ec.Event]:
    """The watch events etcd sends for a write's keys and values, committed at `rev`."""
    return [ec.Event("PUT", ec.KV(k, v, rev, rev, 1)) if v is not None else ec.Event("DELETE", ec.KV(k, b"", 0, rev, 0))
            for k, v in ops.items()]


def _as_stored(obj: Any, rev: int) -> dict[str, Any]:
    return restamp(obj.model_dump(by_alias=True, exclude={"job"} if hasattr(obj, "task_group") else None), rev)


def test_a_write_reads_back_as_written_with_its_revision() -> None:
    t, codec = Tables(), Codec("/yurt/")
    node = mock.node()
    job = mock.job("web", groups={"api": 2})
    ev = mock.evaluation(job)
    alloc = mock.alloc(job, node.id).model_copy(update={
        "metrics": AllocMetric(nodes_evaluated=3, score_meta_data=[
            {"NodeID": node.id, "Scores": {"binpack": 0.5}, "NormScore": 0.5}]),
        "task_states": {"web": TaskState(state="running")}})
    txn = Txn(t, PENDING, 1)
    txn.upsert_node(node)
    txn.upsert_job(job)
    txn.upsert_eval(ev)
    txn.upsert_alloc(alloc)
    ch = txn.finish()
    ops = codec.encode(ch, t)
    dec = codec.decode(_events(ops, REV), REV, t).changes

    for table in ("jobs", "evals", "allocs", "nodes"):
        written, read = getattr(ch, table), getattr(dec, table)
        assert read.keys() == written.keys(), table
        for key, obj in written.items():
            assert _as_stored(read[key], REV) == _as_stored(obj, REV), (table, key)
            assert PENDING not in json.loads(read[key].model_dump_json()).values()
    [(_, stored_alloc)] = dec.allocs.items()
    assert stored_alloc.create_index == stored_alloc.modify_index == REV
    assert stored_alloc.job is not None and stored_alloc.job.id == "web"
    assert [v.id for v in dec.versions] == ["web"]


def test_own_rows_stamped_in_place_are_what_the_watch_decodes() -> None:
    """A leader applies the rows of its own write as it built them, PENDING stamped in place
    (`stamp`, found by the models' types): exactly what decoding the keys it wrote gives."""
    t, codec = Tables(), Codec("/yurt/")
    node = mock.node()
    job = mock.job("web", groups={"api": 2})
    ev = mock.evaluation(job)
    first = Txn(t, PENDING, 1)
    first.upsert_node(node)
    first.upsert_job(job)
    ch0 = first.finish()
    apply_changes(t, codec.decode(_events(codec.encode(ch0, t), 7), 7, t).changes, {})
    stored_job = t.jobs[("default", "web")]
    txn = Txn(t, PENDING, 2)
    txn.upsert_eval(ev.model_copy(update={"job_modify_index": PENDING}))
    alloc = mock.alloc(stored_job, node.id).model_copy(update={
        "metrics": AllocMetric(nodes_evaluated=3), "task_states": {"web": TaskState(state="running")}})
    txn.upsert_alloc(alloc)
    txn.upsert_deployment(Deployment(id="d1", namespace="default", job_id="web"))
    txn.set_alloc_health(alloc.id, AllocDeploymentStatus(healthy=True))
    ch = txn.finish()
    dec = codec.decode(_events(codec.encode(ch, t), REV), REV, t).changes
    for table in OWN_ROWS:
        for obj in getattr(ch, table).values():
            stamp(obj, REV)
    for table in OWN_ROWS:
        written, read = getattr(ch, table), getattr(dec, table)
        assert written.keys() == read.keys(), table
        for key, obj in written.items():
            assert _as_stored(obj, 0) == _as_stored(read[key], 0), (table, key)
            assert str(PENDING) not in obj.model_dump_json(), (table, key)
    assert any(a.modify_index == REV for a in ch.allocs.values())
    assert ch.evals[ev.id].job_modify_index == REV
    assert t.jobs[("default", "web")].modify_index == 7, "what the store already held is never touched"


def test_the_text_restamp_is_the_dict_restamp() -> None:
    doc = {"CreateIndex": PENDING, "ModifyIndex": 3, "Index": PENDING, "Nested": [{"JobModifyIndex": PENDING}],
           "IndexNot": PENDING, "Name": f'x"Index": {PENDING}', "FloatIndex": float(PENDING),
           "Meta": {"someIndex": str(PENDING)}, "Last": {"AllocModifyIndex": PENDING}}
    for text in (json.dumps(doc), json.dumps(doc, separators=(",", ":")), json.dumps(doc, indent=2)):
        assert _loads(text.encode(), 77) == restamp(json.loads(text), 77)
    stamped = _loads(json.dumps(doc).encode(), 77)
    assert stamped["Name"] == f'x"Index": {PENDING}' and stamped["IndexNot"] == PENDING and stamped["CreateIndex"] == 77


def test_a_plan_is_split_so_that_every_transaction_fits_etcds_limit() -> None:
    job = mock.job("web")
    spread = [mock.alloc(job, f"node-{i}", index=i) for i in range(300)]      # a node each
    packed = [mock.alloc(job, f"node-{i % 3}", index=i) for i in range(250)]  # three nodes
    for allocs in (spread, packed):
        chunks = _alloc_chunks(allocs)
        assert [a.id for c in chunks for a in c] == [a.id for a in allocs]
        for c in chunks:
            assert len(c) <= MAX_ITEMS
            assert len(c) + len({a.node_id for a in c}) <= MAX_COMPARES   # + the leader guard <= 128
    assert len(_alloc_chunks(spread)[0]) == 63
    assert [len(c) for c in _alloc_chunks(packed)] == [100, 100, 50]
    assert _alloc_chunks([]) == [[]]


def test_a_watched_key_reads_as_the_key_etcd_sent():
    """The watch's keys decode their value only when it is read; what they read is the same as
    a range's key, and a deleted key (no value in etcd's JSON) reads empty."""
    sent = {"key": ec.b64(b"/p/allocs/a1"), "value": ec.b64(b'{"Alloc":{}}'), "create_revision": "3",
            "mod_revision": "5", "version": "2", "lease": "7"}
    watched, ranged = ec.WatchedKV(sent), ec.KV.from_json(sent)
    assert (watched.key, watched.value, watched.create_revision, watched.mod_revision, watched.version,
            watched.lease) == (ranged.key, ranged.value, 3, 5, 2, 7)
    assert watched.value == b'{"Alloc":{}}'
    gone = ec.WatchedKV({"key": ec.b64(b"/p/allocs/a1"), "mod_revision": "6"})
    assert (gone.value, gone.mod_revision, gone.create_revision) == (b"", 6, 0)
