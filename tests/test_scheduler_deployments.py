"""The reconciler with deployments: a first placement and each changed version get a deployment;
destructive updates roll `max_parallel` at a time, counting the deployment's allocations not yet
healthy; canaries go beside the old allocations until promotion; a paused or failed deployment
changes nothing more; a newer version or a stop cancels the active one."""

from __future__ import annotations

from yurt.structs import AllocDeploymentStatus, UpdateStrategy
from yurt.structs import deployment_status as ds

from .memory_state import MemoryState
from .test_scheduler_helpers import live, make_job, make_node, placed, run, stopped

S = 1_000_000_000


def _job(count=3, **update):
    job = make_job(count=count)
    job.task_groups[0].update = UpdateStrategy(**update) if update else None
    return job


def _bump(job, image):
    new = job.model_copy(deep=True)
    new.version = job.version + 1
    new.job_modify_index = job.job_modify_index + 10
    new.task_groups[0].tasks[0].config = {"image": image}
    return new


def _setup(count=3, **update):
    st = MemoryState(nodes=[make_node(i) for i in range(4)])
    job = _job(count, **update)
    st.upsert_job(job)
    run(st, job)
    return st, job


def _healthy(st, allocs, healthy=True):
    for a in allocs:
        cur = st.alloc(a.id)
        canary = cur.deployment_status.canary if cur.deployment_status else False
        st.upsert_alloc(cur.model_copy(update={"deployment_status": AllocDeploymentStatus(healthy=healthy,
                                                                                          canary=canary)}))


def test_a_first_placement_makes_a_deployment_and_its_allocations_join_it():
    st, job = _setup()
    d = st.latest_deployment("default", "web")
    assert d is not None and d.status == ds.DEPLOYMENT_RUNNING and d.job_version == job.version
    assert d.task_groups["g"].desired_total == 3 and d.task_groups["g"].desired_canaries == 0
    assert {a.deployment_id for a in live(st, job)} == {d.id}


def test_destructive_updates_roll_max_parallel_at_a_time():
    st, job = _setup(count=3, max_parallel=1)
    first = st.latest_deployment("default", "web")
    v2 = _bump(job, "nginx:2")
    st.upsert_job(v2)
    res = run(st, v2)
    assert len(stopped(res)) == 1 and len(placed(res)) == 1
    d = st.latest_deployment("default", "web")
    assert d.id != first.id and d.job_version == v2.version
    new = placed(res)[0]
    assert new.deployment_id == d.id and new.job.version == v2.version
    assert res.desired_updates["g"].destructive_update == 1 and res.desired_updates["g"].ignore == 2
    # nothing more while the new one is not healthy
    res = run(st, v2)
    assert not stopped(res) and not placed(res)
    _healthy(st, [new])
    res = run(st, v2)
    assert len(stopped(res)) == 1 and len(placed(res)) == 1


def test_max_parallel_two_and_an_unhealthy_one_holds_its_slot():
    st, job = _setup(count=4, max_parallel=2)
    v2 = _bump(job, "nginx:2")
    st.upsert_job(v2)
    res = run(st, v2)
    assert len(placed(res)) == 2
    a, b = placed(res)
    _healthy(st, [a])
    _healthy(st, [b], healthy=False)
    res = run(st, v2)
    assert len(placed(res)) == 1, "one slot freed by the healthy one; the unhealthy one still holds its slot"


def test_max_parallel_zero_updates_all_at_once_without_a_deployment():
    st, job = _setup(count=3, max_parallel=0)
    assert st.latest_deployment("default", "web") is None
    v2 = _bump(job, "nginx:2")
    st.upsert_job(v2)
    res = run(st, v2)
    assert len(stopped(res)) == 3 and len(placed(res)) == 3
    assert all(a.deployment_id == "" for a in placed(res))


def test_canaries_go_beside_the_old_allocations_until_promoted():
    st, job = _setup(count=3, max_parallel=1, canary=1)
    old = {a.id for a in live(st, job)}
    v2 = _bump(job, "nginx:2")
    st.upsert_job(v2)
    res = run(st, v2)
    assert not stopped(res), "the old allocations keep running beside the canary"
    (canary,) = placed(res)
    assert canary.deployment_status.canary and canary.job.version == v2.version
    assert res.desired_updates["g"].canary == 1
    d = st.latest_deployment("default", "web")
    assert d.task_groups["g"].desired_canaries == 1 and not d.task_groups["g"].promoted
    assert d.status_description == ds.DESC_NEEDS_PROMOTION
    _healthy(st, [canary])
    res = run(st, v2)
    assert not stopped(res) and not placed(res), "nothing more until the promotion"
    # promotion (what the server's promote writes): promoted, the canary flag cleared
    st_g = d.task_groups["g"].model_copy(update={"promoted": True, "placed_canaries": [canary.id]})
    st.upsert_deployment(d.model_copy(update={"task_groups": {"g": st_g}}))
    cur = st.alloc(canary.id)
    st.upsert_alloc(cur.model_copy(update={"deployment_status": AllocDeploymentStatus(healthy=True)}))
    old_by_name = {a.name: a.id for a in live(st, job) if a.id in old}
    res = run(st, v2)
    assert canary.name == "web.g[0]"
    assert sorted(a.id for a in stopped(res)) == sorted([old_by_name["web.g[0]"], old_by_name["web.g[1]"]]), \
        "the canary's old namesake stops, and the rolling update goes on, max_parallel at a time"
    assert [a.name for a in placed(res)] == ["web.g[1]"]
    names = sorted(a.name for a in live(st, v2))
    assert names == ["web.g[0]", "web.g[1]", "web.g[2]"], f"one allocation per name: {names}"


def test_a_paused_or_failed_deployment_changes_nothing_more():
    for status in (ds.DEPLOYMENT_PAUSED, ds.DEPLOYMENT_FAILED):
        st, job = _setup(count=3, max_parallel=1)
        v2 = _bump(job, "nginx:2")
        st.upsert_job(v2)
        res = run(st, v2)
        _healthy(st, placed(res))
        d = st.latest_deployment("default", "web")
        st.upsert_deployment(d.model_copy(update={"status": status}))
        res = run(st, v2)
        assert not stopped(res) and not placed(res), status


def test_a_newer_version_cancels_the_active_deployment_and_a_stop_too():
    st, job = _setup(count=2, max_parallel=1)
    v2 = _bump(job, "nginx:2")
    st.upsert_job(v2)
    run(st, v2)
    d2 = st.latest_deployment("default", "web")
    v3 = _bump(v2, "nginx:3")
    st.upsert_job(v3)
    res = run(st, v3)
    assert [(d.id, d.status, d.status_description) for d in res.plan.deployment_updates] == \
        [(d2.id, ds.DEPLOYMENT_CANCELLED, ds.DESC_NEWER_JOB)]
    d3 = st.latest_deployment("default", "web")
    assert d3.job_version == v3.version and d3.id != d2.id
    stop = v3.model_copy(update={"stop": True})
    st.upsert_job(stop)
    res = run(st, stop)
    assert [(d.id, d.status_description) for d in res.plan.deployment_updates] == [(d3.id, ds.DESC_STOPPED)]


def test_batch_jobs_never_deploy():
    st = MemoryState(nodes=[make_node(0)])
    job = make_job(type_="batch", count=2)
    st.upsert_job(job)
    res = run(st, job)
    assert res.plan.deployment is None and all(a.deployment_id == "" for a in placed(res))
