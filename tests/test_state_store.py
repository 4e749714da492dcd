"""yurt.state: indexes, job versions and status, summaries, lookups, snapshots, persistence."""

from __future__ import annotations

import pytest

from yurt.state import NotFound, StateError, StateStore
from yurt.structs import Allocation, TaskState

from . import mock


@pytest.fixture
def store():
    s = StateStore.temporary()
    yield s
    s.close()


def register(store: StateStore, job_id: str = "web", **kw):
    store.upsert_job(mock.job(job_id, **kw))
    return store.job("default", job_id)


def place(store: StateStore, job, node_ids, eval_id=None) -> list[Allocation]:
    allocs = [mock.alloc(job, n, index=i, eval_id=eval_id or "") for i, n in enumerate(node_ids)]
    store.upsert_allocs(allocs)
    return [store.alloc(a.id) for a in allocs]


# --- the index -----------------------------------------------------------------------------------

def test_every_write_bumps_the_index_by_one_and_reads_do_not(store):
    assert store.index() == 0
    node = mock.node()
    assert store.upsert_node(node) == 1
    job = register(store)
    assert store.index() == 2
    ev = mock.evaluation(job)
    assert store.upsert_evals([ev]) == 3
    [a] = place(store, job, [node.id], ev.id)
    assert store.index() == 4
    assert store.update_allocs_from_client([a.model_copy(update={"client_status": "running"})]) == 5
    assert store.update_node_status(node.id, "down", "missed heartbeats") == 6
    assert store.apply_plan_result([], [ev.model_copy(update={"status": "complete"})]) == 7
    assert store.upsert_allocs([]) == 8  # an empty write is still a write
    for _ in range(3):
        store.job("default", "web"), store.allocs(), store.snapshot(), store.job_summary("default", "web")
    assert store.index() == 8


def test_objects_are_stamped_with_the_index_of_their_write(store):
    node = mock.node()
    store.upsert_node(node)
    assert (store.node(node.id).create_index, store.node(node.id).modify_index) == (1, 1)
    job = register(store)
    assert (job.create_index, job.modify_index, job.job_modify_index, job.version) == (2, 2, 2, 0)
    assert job.submit_time > 0
    [a] = place(store, job, [node.id])
    assert (a.create_index, a.modify_index, a.alloc_modify_index) == (3, 3, 3)
    assert a.create_time > 0 and a.modify_time >= a.create_time
    store.update_allocs_from_client([a.model_copy(update={"client_status": "running"})])
    b = store.alloc(a.id)
    assert (b.create_index, b.modify_index, b.alloc_modify_index) == (3, 4, 3)
    store.upsert_allocs([b.model_copy(update={"desired_status": "stop"})])
    c = store.alloc(a.id)
    assert (c.create_index, c.modify_index, c.alloc_modify_index) == (3, 5, 5)
    assert store.update_node_status(node.id, "down") == 6
    assert (store.node(node.id).create_index, store.node(node.id).modify_index) == (1, 6)


def test_a_refused_write_changes_nothing(store):
    job = register(store)
    a = mock.alloc(job, "n1").model_copy(update={"job": None})
    with pytest.raises(StateError):
        store.upsert_allocs([mock.alloc(job, "n1"), a])
    assert store.index() == 1 and store.allocs() == []
    with pytest.raises(NotFound):
        store.update_node_status("nope", "down")
    with pytest.raises(NotFound):
        store.delete_job("default", "nope")
    with pytest.raises(NotFound):
        store.delete_node("nope")
    assert store.index() == 1


def test_caller_objects_are_not_mutated(store):
    job = mock.job("web")
    store.upsert_job(job)
    assert job.create_index == 0 and job.version == 0 and job.status == ""
    a = mock.alloc(store.job("default", "web"), "n1")
    store.upsert_allocs([a])
    assert a.create_index == 0 and store.alloc(a.id) is not a


# --- jobs and versions ---------------------------------------------------------------------------

def test_versions_change_only_when_the_spec_does(store):
    store.upsert_job(mock.job("web"))
    store.upsert_job(mock.job("web"))  # identical: same version, new ModifyIndex
    j = store.job("default", "web")
    assert (j.version, j.create_index, j.job_modify_index, j.modify_index) == (0, 1, 1, 2)
    store.upsert_job(mock.job("web", groups={"web": 3}))
    j = store.job("default", "web")
    assert (j.version, j.create_index, j.job_modify_index, j.modify_index) == (1, 1, 3, 3)
    # server-set fields in the submitted job do not make a new version
    store.upsert_job(mock.job("web", groups={"web": 3}).model_copy(
        update={"version": 7, "status": "dead", "submit_time": 5, "modify_index": 99}))
    assert store.job("default", "web").version == 1
    assert [v.version for v in store.job_versions("default", "web")] == [1, 0]
    assert store.job_version("default", "web", 0).task_groups[0].count == 1
    assert store.job_version("default", "web", 1).task_groups[0].count == 3
    assert store.job_version("default", "web", 2) is None


def test_stop_is_a_new_version_and_makes_the_job_dead(store):
    register(store)
    store.stop_job("default", "web")
    j = store.job("default", "web")
    assert j.stop and j.version == 1 and j.status == "dead"
    store.stop_job("default", "web")  # already stopped: no new version
    assert store.job("default", "web").version == 1
    store.upsert_job(mock.job("web"))  # run again: Stop=false is a spec change
    j = store.job("default", "web")
    assert not j.stop and j.version == 2 and j.status == "pending"


def test_purge_removes_job_versions_and_summary_but_not_allocs(store):
    job = register(store)
    [a] = place(store, job, ["n1"])
    store.upsert_job(mock.job("web", groups={"web": 2}))
    store.delete_job("default", "web")
    assert store.job("default", "web") is None
    assert store.job_versions("default", "web") == []
    assert store.job_summary("default", "web") is None
    kept = store.alloc(a.id)
    assert kept is not None and kept.job is not None and kept.job.version == 0
    # registered again: a new job (version 0, new CreateIndex); the old alloc is not its
    store.upsert_job(mock.job("web"))
    j = store.job("default", "web")
    assert j.version == 0 and j.create_index > job.create_index and j.status == "pending"
    assert store.allocs_by_job("default", "web", all_versions=False) == []
    assert [x.id for x in store.allocs_by_job("default", "web")] == [a.id]


def test_jobs_listing_and_prefix(store):
    for name in ("web", "web-api", "db"):
        register(store, name)
    store.upsert_job(mock.job("web", namespace="other"))
    assert [j.id for j in store.jobs("default")] == ["db", "web", "web-api"]
    assert [(j.namespace, j.id) for j in store.jobs(prefix="web")] == [
        ("default", "web"), ("default", "web-api"), ("other", "web")]
    assert store.job("other", "web").namespace == "other"


# --- status and summary --------------------------------------------------------------------------

def test_job_status_follows_evals_and_allocs(store):
    job = register(store)
    assert job.status == "pending"
    ev = mock.evaluation(job)
    store.upsert_evals([ev])
    assert store.job("default", "web").status == "pending"
    [a] = place(store, job, ["n1"], ev.id)
    assert store.job("default", "web").status == "running"
    store.upsert_evals([ev.model_copy(update={"status": "complete"})])
    assert store.job("default", "web").status == "running"
    before = store.job("default", "web").modify_index
    store.update_allocs_from_client([a.model_copy(update={"client_status": "complete"})])
    j = store.job("default", "web")
    assert j.status == "dead" and j.modify_index == store.index() > before


def test_status_of_system_and_batch_jobs(store):
    register(store, "sys", type="system")
    assert store.job("default", "sys").status == "running"
    job = register(store, "b", type="batch")
    [a] = place(store, job, ["n1"])
    store.update_allocs_from_client([a.model_copy(update={"client_status": "failed"})])
    assert store.job("default", "b").status == "dead"
    store.delete_evals([], [a.id])
    assert store.job("default", "b").status == "dead"


def test_job_summary_counts_client_statuses_and_queued(store):
    job = register(store, groups={"web": 4, "db": 2})
    allocs = place(store, job, ["n1", "n2", "n3"])
    store.update_allocs_from_client([
        allocs[0].model_copy(update={"client_status": "running"}),
        allocs[1].model_copy(update={"client_status": "failed"})])
    store.upsert_evals([mock.evaluation(job, status="complete", queued_allocations={"web": 1, "db": 2})])
    s = store.job_summary("default", "web")
    assert s.job_id == "web" and s.create_index == job.create_index
    assert s.summary["web"].model_dump() == dict(queued=1, complete=0, failed=1, running=1,
                                                 starting=1, lost=0, unknown=0)
    assert s.summary["db"].queued == 2 and s.summary["db"].running == 0
    assert s.modify_index == store.index()
    # a later eval's queued counts replace the earlier ones
    store.upsert_evals([mock.evaluation(job, status="complete", queued_allocations={"web": 0, "db": 0})])
    assert store.job_summary("default", "web").summary["web"].queued == 0


# --- allocations ---------------------------------------------------------------------------------

def test_server_writes_keep_client_fields(store):
    job = register(store)
    [a] = place(store, job, ["n1"])
    states = {"app": TaskState(state="running")}
    store.update_allocs_from_client([a.model_copy(update={
        "client_status": "running", "task_states": states,
        "desired_status": "stop", "node_id": "elsewhere"})])  # not the client's to change
    b = store.alloc(a.id)
    assert b.client_status == "running" and b.task_states["app"].state == "running"
    assert b.desired_status == "run" and b.node_id == "n1"
    # the scheduler's copy (stale client fields, no job) updates desired status only
    store.upsert_allocs([a.model_copy(update={"desired_status": "stop", "job": None})])
    c = store.alloc(a.id)
    assert c.desired_status == "stop" and c.client_status == "running"
    assert c.task_states["app"].state == "running" and c.job is job
    # ... unless the server declares it lost
    store.upsert_allocs([c.model_copy(update={"client_status": "lost"})])
    assert store.alloc(a.id).client_status == "lost"
    # unknown allocations from a client are ignored
    store.update_allocs_from_client([mock.alloc(job, "n1")])
    assert len(store.allocs()) == 1


def test_allocs_share_the_stored_job_version(store):
    job = register(store)
    copy = job.model_copy(deep=True)
    allocs = place(store, copy, ["n1", "n2"])
    assert all(a.job is job for a in allocs)


def test_alloc_lookups(store):
    job = register(store)
    other = register(store, "db")
    ev = mock.new_id()
    a1, a2 = place(store, job, ["n1", "n2"], ev)
    [a3] = place(store, other, ["n1"])
    store.upsert_allocs([a2.model_copy(update={"desired_status": "stop"})])
    assert {a.id for a in store.allocs_by_job("default", "web")} == {a1.id, a2.id}
    assert {a.id for a in store.allocs_by_node("n1")} == {a1.id, a3.id}
    assert {a.id for a in store.allocs_by_node("n2")} == {a2.id}
    assert store.allocs_by_node("n2", terminal=False) == []
    assert [a.id for a in store.allocs_by_node("n2", terminal=True)] == [a2.id]
    assert {a.id for a in store.allocs_by_eval(ev)} == {a1.id, a2.id}
    assert store.allocs_by_node("nope") == []


def test_prefix_lookups(store):
    job = register(store)
    ids = ["1a2b0000-0000", "1a2c0000-0000", "ffff0000-0000"]
    store.upsert_allocs([mock.alloc(job, "n1", alloc_id=i) for i in ids])
    assert [a.id for a in store.allocs(prefix="1a2b")] == ["1a2b0000-0000"]
    assert [a.id for a in store.allocs(prefix="1a")] == ids[:2]
    assert [a.id for a in store.allocs()] == ids
    assert store.allocs(prefix="0") == []
    store.upsert_evals([mock.evaluation(job, eval_id=i) for i in ids])
    assert [e.id for e in store.evals(prefix="ff")] == ["ffff0000-0000"]
    for i in ids:
        store.upsert_node(mock.node(i))
    assert [n.id for n in store.nodes(prefix="1a2")] == ids[:2]


def test_eval_lookups_and_delete(store):
    job = register(store)
    other = register(store, "db")
    e1, e2, e3 = mock.evaluation(job), mock.evaluation(job), mock.evaluation(other)
    store.upsert_evals([e1, e2, e3])
    assert {e.id for e in store.evals_by_job("default", "web")} == {e1.id, e2.id}
    assert {e.id for e in store.evals(job_id="db")} == {e3.id}
    assert len(store.evals()) == 3
    store.upsert_evals([e1.model_copy(update={"status": "complete"})])
    e = store.eval(e1.id)
    assert e.status == "complete" and e.create_index < e.modify_index
    store.delete_evals([e1.id, "unknown"])
    assert store.eval(e1.id) is None and len(store.evals()) == 2


# --- nodes ---------------------------------------------------------------------------------------

def test_nodes(store):
    n = mock.node()
    store.upsert_node(n)
    store.update_node_eligibility(n.id, "ineligible")
    store.upsert_node(n.model_copy(update={"name": "renamed"}))  # re-registration keeps eligibility
    got = store.node(n.id)
    assert got.name == "renamed" and got.scheduling_eligibility == "ineligible"
    assert (got.create_index, got.modify_index) == (1, 3)
    store.update_node_status(n.id, "down", "missed heartbeats")
    assert (store.node(n.id).status, store.node(n.id).status_description) == ("down", "missed heartbeats")
    store.delete_node(n.id)
    assert store.node(n.id) is None and store.nodes() == []


# --- plans ---------------------------------------------------------------------------------------

def test_apply_plan_result_writes_stops_placements_and_evals_at_one_index(store):
    job = register(store)
    ev = mock.evaluation(job)
    store.upsert_evals([ev])
    [old] = place(store, job, ["n1"])
    store.update_allocs_from_client([old.model_copy(update={"client_status": "running"})])
    new = [mock.alloc(job, f"n{i}", index=i, eval_id=ev.id) for i in range(3)]
    stop = Allocation(id=old.id, desired_status="stop", desired_description="alloc not needed",
                      followup_eval_id="f1")
    idx = store.apply_plan_result(new, [ev.model_copy(update={"status": "complete"})], stopped=[stop])
    s = store.alloc(old.id)
    assert (s.desired_status, s.desired_description, s.followup_eval_id) == ("stop", "alloc not needed", "f1")
    assert s.client_status == "running" and s.job is job and s.node_id == "n1"
    assert all(store.alloc(a.id).create_index == idx for a in new)
    assert store.eval(ev.id).status == "complete" and store.eval(ev.id).modify_index == idx
    assert store.table_index("allocs") == store.table_index("evals") == idx


# --- snapshots -----------------------------------------------------------------------------------

def test_snapshot_does_not_see_later_writes(store):
    job = register(store)
    [a] = place(store, job, ["n1"])
    store.upsert_node(mock.node("n1"))
    snap = store.snapshot()
    assert snap.index == store.index()
    store.update_allocs_from_client([a.model_copy(update={"client_status": "running"})])
    place(store, job, ["n1", "n2"])
    store.upsert_job(mock.job("web", groups={"web": 5}))
    store.update_node_status("n1", "down")
    store.upsert_node(mock.node("n2"))
    store.delete_job("default", "web")
    # the snapshot is unchanged
    assert snap.alloc(a.id).client_status == "pending"
    assert [x.id for x in snap.allocs_by_node("n1")] == [a.id]
    assert [x.id for x in snap.allocs_by_node("n1", terminal=None)] == [a.id]
    assert len(snap.allocs_by_job("default", "web")) == 1
    assert snap.job("default", "web").version == 0
    assert snap.node("n1").status == "ready" and [n.id for n in snap.nodes()] == ["n1"]
    assert snap.job_summary("default", "web").summary["web"].starting == 1
    # ... and the store moved on
    assert store.alloc(a.id).client_status == "running"
    assert len(store.allocs_by_node("n1")) == 2 and store.job("default", "web") is None
    assert store.snapshot().index == store.index() > snap.index


def test_snapshot_is_a_scheduler_state(store):
    job = register(store)
    a1, a2 = place(store, job, ["n1", "n1"])
    store.upsert_allocs([a2.model_copy(update={"desired_status": "stop"})])
    snap = store.snapshot()
    assert [a.id for a in snap.allocs_by_node("n1")] == [a1.id]  # what holds resources
    assert len(snap.allocs_by_node("n1", terminal=None)) == 2
    assert len(store.allocs_by_node("n1")) == 2  # the store's default: all (the client's view)
    assert len(snap.allocs_by_job("default", "web")) == 2
    assert snap.index == store.index() and snap.nodes() is snap.nodes()


def test_snapshots_are_shared_until_a_write(store):
    register(store)
    s1, s2 = store.snapshot(), store.snapshot()
    assert s1 is s2
    register(store, "db")
    assert store.snapshot() is not s1 and s1.job("default", "db") is None


# --- persistence ---------------------------------------------------------------------------------

def test_reopen_restores_everything(tmp_path):
    path = str(tmp_path / "state.db")
    with StateStore(path) as s:
        node = mock.node()
        s.upsert_node(node)
        s.upsert_job(mock.job("web"))
        s.upsert_job(mock.job("web", groups={"web": 2}))
        job = s.job("default", "web")
        ev = mock.evaluation(job, queued_allocations={"web": 0})
        s.upsert_evals([ev])
        allocs = place(s, job, [node.id, node.id], ev.id)
        s.update_allocs_from_client([allocs[0].model_copy(update={
            "client_status": "running", "task_states": {"app": TaskState(state="running")}})])
        foreign = mock.alloc(mock.job("ghost").model_copy(update={"job_modify_index": 77}), node.id)
        s.upsert_allocs([foreign])  # a job the store never saw: kept inline
        s.update_allocs_from_client([foreign.model_copy(update={"client_status": "running"})])
        s.upsert_job(mock.job("gone"))
        g = place(s, s.job("default", "gone"), [node.id])
        s.delete_job("default", "gone")
        s.update_node_eligibility(node.id, "ineligible")
        before = {
            "index": s.index(), "tables": {t: s.table_index(t) for t in ("jobs", "evals", "allocs", "nodes")},
            "job": s.job("default", "web").to_json(),
            "versions": [v.to_json() for v in s.job_versions("default", "web")],
            "allocs": [a.to_json() for a in s.allocs()], "evals": [e.to_json() for e in s.evals()],
            "nodes": [n.to_json() for n in s.nodes()],
            "summary": s.job_summary("default", "web").to_json(),
        }
    with StateStore(path) as s:
        after = {
            "index": s.index(), "tables": {t: s.table_index(t) for t in ("jobs", "evals", "allocs", "nodes")},
            "job": s.job("default", "web").to_json(),
            "versions": [v.to_json() for v in s.job_versions("default", "web")],
            "allocs": [a.to_json() for a in s.allocs()], "evals": [e.to_json() for e in s.evals()],
            "nodes": [n.to_json() for n in s.nodes()],
            "summary": s.job_summary("default", "web").to_json(),
        }
        assert after == before
        assert s.alloc(allocs[0].id).job is s.job_version("default", "web", 1)
        assert s.alloc(g[0].id).job.id == "gone" and s.job("default", "gone") is None
        assert s.alloc(foreign.id).job.id == "ghost"
        assert s.upsert_node(mock.node()) == before["index"] + 1


def test_temporary_store_is_removed_on_close():
    import os
    s = StateStore.temporary()
    path = s.path
    assert os.path.exists(path)
    s.close()
    assert not os.path.exists(os.path.dirname(path))


def test_wal_mode(store):
    assert store._backend.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_job_without_namespace_goes_to_default(store):
    from yurt.structs import Job
    store.upsert_job(Job(id="bare"))
    j = store.job("default", "bare")
    assert j is not None and j.namespace == "default" and j.status == "pending"


def test_a_job_and_the_eval_that_schedules_it_are_one_write(store):
    """register_job stores both at one index (a crash keeps both or neither); the eval carries
    the stored job's JobModifyIndex, also when an identical spec keeps the old one."""
    job = mock.job("atomic")
    index, ev = store.register_job(job, mock.evaluation(job))
    stored = store.job("default", "atomic")
    assert stored.modify_index == ev.create_index == index == store.index()
    assert ev.job_modify_index == stored.job_modify_index == index and store.eval(ev.id) == ev
    again, ev2 = store.register_job(job, mock.evaluation(job))
    assert again == index + 1 and ev2.job_modify_index == index   # same spec: same JobModifyIndex
    before = store.index()
    with pytest.raises(NotFound):
        store.purge_job("default", "nope", mock.evaluation(mock.job("nope")))
    assert store.index() == before and not store.evals(job_id="nope")   # refused whole: no eval
    purged = store.purge_job("default", "atomic", mock.evaluation(job, eval_id="purge-eval"))
    assert store.job("default", "atomic") is None and store.eval("purge-eval").create_index == purged


def test_enforce_index_is_checked_inside_the_write(store):
    """EnforceIndex: the expected JobModifyIndex is compared in the same transaction as the
    write, so two registrations expecting the same index cannot both win."""
    from yurt.errors import InvalidInput

    job = mock.job("guarded")
    index, _ = store.register_job(job, mock.evaluation(job), expect_modify_index=0)
    with pytest.raises(InvalidInput, match="Enforcing job modify index 0: job guarded already exists"):
        store.register_job(job, mock.evaluation(job), expect_modify_index=0)
    changed = job.model_copy(update={"priority": 70})
    store.register_job(changed, mock.evaluation(changed), expect_modify_index=index)   # the first wins
    before = store.index()
    with pytest.raises(InvalidInput, match=f"job exists with conflicting job modify index: {index + 1}"):
        store.register_job(changed.model_copy(update={"priority": 80}), mock.evaluation(changed),
                           expect_modify_index=index)                                   # the second loses
    assert store.index() == before and store.job("default", "guarded").priority == 70


def _used_from_scratch(view, node_id):
    """What a node's usage is, added up from its allocations."""
    from yurt.structs import NodeUsed
    used = NodeUsed()
    for a in view.allocs_by_node(node_id, terminal=False):
        used.add(a, 1)
    return (used.count, used.cpu, used.mem, used.disk, used.ports, used.jobs, used.groups)


def _used_kept(view, node_id):
    u = view.node_used(node_id)
    return (0, 0, 0, 0, {}, {}, {}) if u is None else (u.count, u.cpu, u.mem, u.disk, u.ports, u.jobs, u.groups)


def test_the_usage_kept_per_node_is_what_its_allocations_add_up_to_in_every_snapshot(store):
    """The scheduler starts a node's usage from the model's running total: after placements,
    stops, client completions and collection, in the live model and in snapshots taken between
    (which later writes must not change), it equals the sum over the node's allocations."""
    nodes = [mock.node() for _ in range(3)]
    for n in nodes:
        store.upsert_node(n)
    web, api = register(store, "web"), register(store, "api")
    snaps = []
    placed = place(store, web, [n.id for n in nodes] * 2) + place(store, api, [nodes[0].id, nodes[1].id])
    snaps.append(store.snapshot())
    first = placed[0]
    store.upsert_allocs([first.model_copy(update={"desired_status": "stop"})])
    snaps.append(store.snapshot())
    done = store.alloc(placed[1].id).model_copy(update={"client_status": "complete"})
    store.update_allocs_from_client([done])
    snaps.append(store.snapshot())
    store.delete_evals((), [placed[2].id])
    snaps.append(store.snapshot())
    expected = [{n.id: _used_from_scratch(s, n.id) for n in nodes} for s in snaps]
    for s, want in zip(snaps, expected, strict=True):
        for n in nodes:
            assert _used_kept(s, n.id) == want[n.id], n.name
    assert expected[0] != expected[-1], "the writes changed what the nodes hold"
    assert expected[0][nodes[0].id][5] == {("default", "web"): 2, ("default", "api"): 1}


def test_the_api_serializes_a_stored_allocation_once_and_a_new_copy_again():
    """api/common.JSONCache: the document is pydantic's own (the job spliced in, serialized once
    per job object); a changed allocation is a new stored object and is serialized anew."""
    import json

    from yurt.api.common import JSONCache
    from yurt.structs import Allocation, Job

    cache = JSONCache(size=2)
    job = Job(id="web", name="web", type="service", datacenters=["dc1"])
    a = Allocation(id="a1", job_id="web", job=job, task_group="g", name="web.g[0]")
    assert json.loads(cache.alloc(a)) == json.loads(a.model_dump_json(by_alias=True))
    assert cache.alloc(a) is cache.alloc(a)
    b = a.model_copy(update={"client_status": "running"})
    assert json.loads(cache.alloc(b))["ClientStatus"] == "running"
    bare = Allocation(id="a2")
    assert json.loads(cache.alloc(bare)) == json.loads(bare.model_dump_json(by_alias=True))
    cache.alloc(Allocation(id="a3"))   # past the size: the oldest entry goes
    assert json.loads(cache.alloc(b))["ClientStatus"] == "running"


def test_an_allocation_row_is_serialized_once_for_the_store_and_the_api(store):
    """structs.alloc.head_json: SQLite's row of an allocation is the API's document without the
    job, made once per stored object; the list rows (JSONCache.stub) are what `reply` renders."""
    import json
    import sqlite3

    from starlette.responses import JSONResponse

    from yurt.api.common import ALLOC_JSON, reply_stubs
    from yurt.structs.alloc import head_json

    job = register(store, "web")
    (a,) = place(store, job, ["n1"])
    row = sqlite3.connect(store.path).execute("SELECT body FROM allocs WHERE id=?", (a.id,)).fetchone()[0]
    assert row.encode() == head_json(a)
    assert head_json(a) is head_json(a)
    assert json.loads(ALLOC_JSON.alloc(a)) == json.loads(a.model_dump_json(by_alias=True))
    assert reply_stubs([a], 7).body == JSONResponse([a.stub()]).body
    assert ALLOC_JSON.stub(a) is ALLOC_JSON.stub(a)
    store.update_allocs_from_client([a.model_copy(update={"client_status": "running"})])
    b = store.alloc(a.id)
    assert json.loads(ALLOC_JSON.stub(b))["ClientStatus"] == "running"
    assert json.loads(head_json(b))["ClientStatus"] == "running"
