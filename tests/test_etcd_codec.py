"""The etcd store's codec on its own (no etcd needed): what a write encodes is what the watch
decodes, with every PENDING index read back as the revision the write got; the text restamp does
what the dict walk does.
And how a plan's allocations are split into transactions etcd accepts (--max-txn-ops 128)."""

from __future__ import annotations

import base64
import json
from typing import Any

from yurt.state import etcd_client as ec
from yurt.state.etcd_codec import PENDING, Codec, _loads, restamp
from yurt.state.etcd_store import MAX_COMPARES, MAX_ITEMS, _alloc_chunks
from yurt.state.memory import Tables
from yurt.state.writes import Txn
from yurt.structs import AllocMetric, TaskState

from . import mock

REV = 4242


def _events(ops: list[dict[str, Any]], rev: int) -> list[ec.Event]:
    """The watch events etcd sends for a transaction's operations, committed at `rev`."""
    out = []
    for op in ops:
        if "request_put" in op:
            r = op["request_put"]
            kv = ec.KV(base64.b64decode(r["key"]), base64.b64decode(r["value"]), rev, rev, 1)
            out.append(ec.Event("PUT", kv))
        else:
            out.append(ec.Event("DELETE", ec.KV(base64.b64decode(op["request_delete_range"]["key"]), b"", 0, rev, 0)))
    return out


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
