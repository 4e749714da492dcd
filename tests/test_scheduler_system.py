"""The system and sysbatch scheduler on MemoryState: one allocation per eligible node, nodes
joining and leaving, constraints, drain, updates, deployments, sysbatch running once per node."""

from __future__ import annotations

from yurt.structs import Constraint, DesiredTransition, DrainSpec, DrainStrategy, UpdateStrategy

from .memory_state import MemoryState
from .test_scheduler_helpers import NOW, live, make_job, make_node, placed, run, stopped


def _nodes_of(st: MemoryState, job) -> list[str]:
    return sorted(st.node(a.node_id).name for a in live(st, job))


def _system(**kw):
    return make_job("sys", type_="system", **kw)


def _new_version(job, **changes):
    v = (job.version or 0) + 1
    return job.model_copy(update={"version": v, "job_modify_index": job.job_modify_index + 10, **changes})


def _finish(st: MemoryState, job, status: str = "complete") -> None:
    for a in live(st, job):
        st.upsert_alloc(a.model_copy(update={"client_status": status}))


def test_one_alloc_per_ready_eligible_node():
    nodes = [make_node(i) for i in range(3)]
    nodes.append(make_node(3, scheduling_eligibility="ineligible"))
    nodes.append(make_node(4, status="down"))
    nodes.append(make_node(5, dc="dc2"))
    job = _system(datacenters=["dc1"])
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert res.status == "complete" and not res.failed_tg_allocs and res.blocked_eval is None
    assert _nodes_of(st, job) == ["node0", "node1", "node2"]
    assert {a.name for a in live(st, job)} == {"sys.g[0]"}
    assert res.desired_updates["g"].place == 3
    # nothing to do the second time
    res = run(st, job)
    assert not placed(res) and not stopped(res) and res.desired_updates["g"].ignore == 3


def test_node_joins_later_and_leaves():
    st = MemoryState(nodes=[make_node(0), make_node(1)])
    job = _system()
    st.upsert_job(job)
    run(st, job)
    st.upsert_node(make_node(2))
    res = run(st, job, triggered_by="node-update")
    assert [st.node(a.node_id).name for a in placed(res)] == ["node2"]
    assert _nodes_of(st, job) == ["node0", "node1", "node2"]
    # node1 goes down: its allocation is lost, not replaced elsewhere
    st.upsert_node(make_node(1, status="down"))
    res = run(st, job, triggered_by="node-update")
    assert not placed(res)
    assert [(a.client_status, a.desired_status) for a in stopped(res)] == [("lost", "stop")]
    assert _nodes_of(st, job) == ["node0", "node2"]
    # it comes back: placed again
    st.upsert_node(make_node(1))
    run(st, job, triggered_by="node-update")
    assert _nodes_of(st, job) == ["node0", "node1", "node2"]


def test_ineligible_node_keeps_its_alloc_until_the_job_changes():
    st = MemoryState(nodes=[make_node(0), make_node(1)])
    job = _system()
    st.upsert_job(job)
    run(st, job)
    st.upsert_node(make_node(1, scheduling_eligibility="ineligible"))
    res = run(st, job)
    assert not placed(res) and not stopped(res)
    v1 = _new_version(job, meta={"x": "1"})
    st.upsert_job(v1)
    res = run(st, v1)
    assert [st.node(a.node_id).name for a in stopped(res)] == ["node1"]
    assert _nodes_of(st, v1) == ["node0"]


def test_constraints_filter_nodes_without_failure():
    nodes = [make_node(0), make_node(1, attrs={"kernel.name": "darwin"}), make_node(2, drivers=("raw_exec",))]
    job = _system(constraints=[Constraint(l_target="${attr.kernel.name}", r_target="linux", operand="=")])
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert _nodes_of(st, job) == ["node0"]
    assert not res.failed_tg_allocs and res.blocked_eval is None and not res.queued


def test_node_without_room_is_a_placement_failure_and_blocks():
    nodes = [make_node(0), make_node(1, cpu=50)]
    job = _system(cpu=100)
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert _nodes_of(st, job) == ["node0"]
    assert res.queued == {"g": 1}
    metric = res.failed_tg_allocs["g"]
    assert metric.nodes_exhausted == 1 and metric.dimension_exhausted == {"cpu": 1}
    assert res.blocked_eval is not None and res.blocked_eval.status == "blocked"
    assert res.blocked_eval.type == "system"


def test_deployment_total_counts_the_nodes_that_can_run_the_group():
    nodes = [make_node(0), make_node(1), make_node(2, cpu=50), make_node(3, drivers=("raw_exec",))]
    job = _system(cpu=100, update=UpdateStrategy(max_parallel=1))
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert res.plan.deployment.task_groups["g"].desired_total == 2    # node2 too small, node3 no docker
    again = run(st, job)                                              # blocked eval: no change to write
    assert again.plan.deployment is None and again.queued == {"g": 1}
    st.upsert_node(make_node(4))
    res = run(st, job, triggered_by="node-update")
    assert res.plan.deployment.task_groups["g"].desired_total == 3


def test_drain_stops_marked_allocs_and_ignore_system_keeps_them():
    st = MemoryState(nodes=[make_node(0), make_node(1)])
    job = _system()
    st.upsert_job(job)
    run(st, job)
    draining = make_node(1, scheduling_eligibility="ineligible", drain=True,
                         drain_strategy=DrainStrategy(drain_spec=DrainSpec(ignore_system_jobs=True)))
    st.upsert_node(draining)
    # not marked by the drainer (-ignore-system): it stays, nothing new is placed there
    res = run(st, job, triggered_by="node-drain")
    assert not placed(res) and not stopped(res)
    # marked for migration: stopped, not replaced anywhere
    a = next(a for a in live(st, job) if a.node_id == draining.id)
    st.upsert_alloc(a.model_copy(update={"desired_transition": DesiredTransition(migrate=True)}))
    res = run(st, job, triggered_by="node-drain")
    assert not placed(res)
    assert [s.id for s in stopped(res)] == [a.id]
    assert _nodes_of(st, job) == ["node0"]


def test_group_removed_and_job_stopped():
    st = MemoryState(nodes=[make_node(0), make_node(1)])
    job = _system()
    st.upsert_job(job)
    run(st, job)
    stopped_job = _new_version(job, stop=True)
    st.upsert_job(stopped_job)
    res = run(st, stopped_job)
    assert len(stopped(res)) == 2 and not live(st, job)


def test_update_in_place_and_destructive():
    st = MemoryState(nodes=[make_node(i) for i in range(3)])
    job = _system()
    st.upsert_job(job)
    run(st, job)
    ids = {a.id for a in live(st, job)}
    v1 = _new_version(job, meta={"owner": "ops"})       # not destructive
    st.upsert_job(v1)
    res = run(st, v1)
    assert res.desired_updates["g"].in_place_update == 3 and not stopped(res)
    assert {a.id for a in live(st, v1)} == ids and all(a.job.version == 1 for a in live(st, v1))
    tg = v1.task_groups[0].model_copy(deep=True)
    tg.tasks[0].config = {"image": "nginx:2"}
    v2 = _new_version(v1, task_groups=[tg])
    st.upsert_job(v2)
    res = run(st, v2)
    assert res.desired_updates["g"].destructive_update == 3
    assert len(stopped(res)) == 3 and len(placed(res)) == 3
    for a in placed(res):   # replaced on the same node, chained
        prev = st.alloc(a.previous_allocation)
        assert prev is not None and prev.node_id == a.node_id
    assert not ids & {a.id for a in live(st, v2)} and _nodes_of(st, v2) == ["node0", "node1", "node2"]


def test_update_max_parallel_with_a_deployment():
    st = MemoryState(nodes=[make_node(i) for i in range(3)])
    job = _system(update=UpdateStrategy(max_parallel=1))
    st.upsert_job(job)
    res = run(st, job)
    dep = res.plan.deployment
    assert dep is not None and dep.task_groups["g"].desired_total == 3
    assert {a.deployment_id for a in placed(res)} == {dep.id}
    for a in live(st, job):    # the first deployment is done
        st.upsert_alloc(a.model_copy(update={"client_status": "running", "deployment_status":
                                              a.deployment_status.model_copy(update={"healthy": True})
                                              if a.deployment_status else None}))
    st.upsert_deployment(dep.model_copy(update={"status": "successful"}))
    tg = job.task_groups[0].model_copy(deep=True)
    tg.tasks[0].config = {"image": "nginx:2"}
    v1 = _new_version(job, task_groups=[tg])
    st.upsert_job(v1)
    res = run(st, v1)
    dep1 = res.plan.deployment
    assert dep1 is not None and dep1.id != dep.id and dep1.job_version == 1
    assert res.desired_updates["g"].destructive_update == 1 and res.desired_updates["g"].ignore == 2
    assert len(placed(res)) == 1 and placed(res)[0].deployment_id == dep1.id
    # the new one not healthy yet: nothing more
    res = run(st, v1)
    assert not placed(res) and not stopped(res)
    new = next(a for a in live(st, v1) if a.job.version == 1)
    from yurt.structs import AllocDeploymentStatus
    st.upsert_alloc(new.model_copy(update={"deployment_status": AllocDeploymentStatus(healthy=True)}))
    res = run(st, v1, triggered_by="deployment-watcher")
    assert len(placed(res)) == 1 and res.plan.deployment is None


def test_failed_system_alloc_is_replaced_on_its_node():
    st = MemoryState(nodes=[make_node(0)])
    job = _system()
    st.upsert_job(job)
    run(st, job)
    _finish(st, job, "failed")
    old = st.allocs_by_job("default", "sys")[0]
    res = run(st, job, triggered_by="alloc-failure")
    (a,) = placed(res)
    assert a.node_id == old.node_id and a.previous_allocation == old.id


def test_sysbatch_runs_once_per_node():
    st = MemoryState(nodes=[make_node(0), make_node(1)])
    job = make_job("once", type_="sysbatch")
    st.upsert_job(job)
    run(st, job)
    assert len(live(st, job)) == 2
    _finish(st, job)
    res = run(st, job)
    assert not placed(res) and not stopped(res)
    # a node that joins later gets one; the others do not run again
    st.upsert_node(make_node(2))
    res = run(st, job, triggered_by="node-update")
    assert [st.node(a.node_id).name for a in placed(res)] == ["node2"]
    # a failed one is not run again either (sysbatch: once per node), a new version runs everywhere
    _finish(st, job, "failed")
    assert not placed(run(st, job))
    v1 = _new_version(job, meta={"run": "2"})
    st.upsert_job(v1)
    res = run(st, v1)
    assert sorted(st.node(a.node_id).name for a in placed(res)) == ["node0", "node1", "node2"]


def test_sysbatch_count_runs_that_many_on_each_node():
    st = MemoryState(nodes=[make_node(0), make_node(1)])
    job = make_job("multi", type_="sysbatch", count=2)
    st.upsert_job(job)
    run(st, job)
    assert sorted((st.node(a.node_id).name, a.name) for a in live(st, job)) == [
        ("node0", "multi.g[0]"), ("node0", "multi.g[1]"), ("node1", "multi.g[0]"), ("node1", "multi.g[1]")]


def test_deterministic():
    plans = []
    for _ in range(2):
        st = MemoryState(nodes=[make_node(i) for i in range(4)])
        job = _system()
        st.upsert_job(job)
        from .test_scheduler_helpers import make_eval
        from yurt.scheduler import schedule
        ev = make_eval(job).model_copy(update={"id": "e1"})
        plans.append(schedule(ev, st, seed=3, now_ns=NOW).plan.to_json())
    assert plans[0] == plans[1]


# -- the server: node changes evaluate system jobs (Nomad's createNodeEvals) -----------------------
def test_server_places_a_system_job_on_nodes_that_register_later(tmp_path):
    from yurt.server.server import Server
    from yurt.state import StateStore

    from .agent_util import wait_for

    store = StateStore(str(tmp_path / "state.db"))
    srv = Server(store, num_workers=1)
    srv.start()
    try:
        srv.register_node(make_node(1))
        job = make_job("sys", type_="system", driver="raw_exec", config={"command": "/bin/sleep"})
        srv.register_job(job)

        def nodes() -> list[str]:
            return sorted(store.node(a.node_id).name for a in store.allocs_by_job("default", "sys")
                          if not a.terminal())

        wait_for(lambda: nodes() == ["node1"], what="the system job on node1")
        srv.register_node(make_node(2))            # a node joins: an eval for the system job
        wait_for(lambda: nodes() == ["node1", "node2"], what="the system job on node2")
        evs = [e for e in store.evals_by_job("default", "sys") if e.triggered_by == "node-update"]
        assert [e.node_id for e in evs] == [make_node(2).id]
        # ineligible, then eligible again: evaluated again, nothing changes
        srv.drainer.update_eligibility(make_node(2).id, "ineligible")
        out = srv.drainer.update_eligibility(make_node(2).id, "eligible")
        assert len(out["EvalIDs"]) == 1
        wait_for(lambda: store.eval(out["EvalIDs"][0]).status == "complete", what="the eval done")
        assert nodes() == ["node1", "node2"]
        # a stopped system job is not evaluated when a node joins
        srv.deregister_job("default", "sys")
        wait_for(lambda: nodes() == [], what="the job stopped")
        srv.register_node(make_node(3))
        assert ("default", "sys") not in srv.node_jobs(make_node(3).id)
    finally:
        srv.stop()
        store.close()


def test_server_drain_stops_system_allocs_last_unless_ignored(tmp_path):
    from yurt.server.server import Server
    from yurt.state import StateStore

    from .agent_util import wait_for

    store = StateStore(str(tmp_path / "state.db"))
    srv = Server(store, num_workers=1)
    srv.start()
    try:
        n1, n2 = make_node(1), make_node(2)
        srv.register_node(n1)
        srv.register_node(n2)
        srv.register_job(make_job("sys", type_="system", driver="raw_exec", config={"command": "/bin/sleep"}))

        def on(node) -> list:
            return [a for a in store.allocs_by_job("default", "sys") if a.node_id == node.id and not a.terminal()]

        wait_for(lambda: on(n1) and on(n2), what="the system job on both nodes")
        # -ignore-system: the drain completes at once, the system allocation keeps running
        srv.drainer.update_drain(n2.id, DrainSpec(deadline=0, ignore_system_jobs=True))
        wait_for(lambda: store.node(n2.id).drain_strategy is None, what="the drain of node2 complete")
        assert len(on(n2)) == 1 and on(n2)[0].desired_status == "run"
        # a plain drain: the system allocation is stopped (not moved), then the drain completes
        (a1,) = on(n1)
        srv.drainer.update_drain(n1.id, DrainSpec(deadline=0))
        wait_for(lambda: store.alloc(a1.id).desired_status == "stop", what="the system alloc of node1 stopped")
        assert store.alloc(a1.id).desired_description == "alloc not needed as node is tainted"
        srv.client_update_allocs(n1.id, [store.alloc(a1.id).model_copy(update={"client_status": "complete"})])
        wait_for(lambda: store.node(n1.id).drain_strategy is None, what="the drain of node1 complete")
        assert not on(n1) and len(on(n2)) == 1
    finally:
        srv.stop()
        store.close()


# -- job files ------------------------------------------------------------------------------------
_JOBFILE = '''job "s" {
  type = "%s"
  %s
  group "g" {
    %s
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
'''


def test_system_and_sysbatch_job_files_load_without_warnings():
    from yurt.jobspec import load

    for type_ in ("system", "sysbatch"):
        assert load(_JOBFILE % (type_, "", ""), "s.nomad").warnings == []
    rolled = load(_JOBFILE % ("system", 'update {\n    max_parallel = 2\n  }', ""), "s.nomad")
    assert rolled.warnings == [] and rolled.job.task_groups[0].update.max_parallel == 2
    # Nomad allows a sysbatch group more than one: each node runs that many
    assert load(_JOBFILE % ("sysbatch", "", "count = 3"), "s.nomad").job.task_groups[0].count == 3


def test_system_job_count_above_one_is_refused_and_canary_warned():
    import pytest

    from yurt.jobspec import JobspecError, load

    with pytest.raises(JobspecError) as info:
        load(_JOBFILE % ("system", "", "count = 2"), "s.nomad")
    assert "a system job runs one allocation per node" in str(info.value)
    loaded = load(_JOBFILE % ("system", 'update {\n    canary = 1\n  }', ""), "s.nomad")
    (warning,) = loaded.warnings
    assert str(warning.pos) == "s.nomad:4:5" and "without canaries" in warning.message
