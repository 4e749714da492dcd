"""Reconciling a job with its allocations: scaling, stop, updates, lost, reschedule."""

from __future__ import annotations

from yurt.scheduler.reschedule import next_delay
from yurt.structs import (Allocation, DesiredTransition, RescheduleEvent, ReschedulePolicy, RescheduleTracker,
                          TaskState, UpdateStrategy)

from .memory_state import MemoryState
from .test_scheduler_helpers import NOW, S, live, make_job, make_node, placed, run, stopped


def _setup(count=3, n_nodes=3, **kw):
    st = MemoryState(nodes=[make_node(i) for i in range(n_nodes)])
    job = make_job(count=count, **kw)
    st.upsert_job(job)
    run(st, job)
    return st, job


def _bump(job, **changes):
    new = job.model_copy(deep=True)
    new.version = job.version + 1
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def _set_client(st, alloc, status, finished_at=None, **kw):
    ts = {"app": TaskState(state="dead", failed=status == "failed", finished_at=finished_at)}
    st.upsert_alloc(alloc.model_copy(update={"client_status": status, "task_states": ts, **kw}))


def test_scale_down_stops_highest_index_then_up_fills_gaps():
    st, job = _setup(count=5, n_nodes=2)
    job2 = _bump(job)
    job2.task_groups[0].count = 3
    st.upsert_job(job2)
    res = run(st, job2)
    assert sorted(a.name for a in stopped(res)) == ["web.g[3]", "web.g[4]"]
    assert all(a.desired_status == "stop" and a.desired_description == "alloc not needed due to job update"
               for a in stopped(res))
    assert res.desired_updates["g"].stop == 2
    job3 = _bump(job2)
    job3.task_groups[0].count = 6
    st.upsert_job(job3)
    before = {a.id for a in live(st, job2)}
    res = run(st, job3)
    assert sorted(a.name for a in placed(res) if a.id not in before) == ["web.g[3]", "web.g[4]", "web.g[5]"]
    assert [a.name for a in live(st, job3)] == [f"web.g[{i}]" for i in range(6)]
    assert res.desired_updates["g"].place == 3 and res.desired_updates["g"].in_place_update == 3


def test_count_zero_and_job_stop():
    st, job = _setup(count=2)
    job2 = _bump(job, stop=True)
    st.upsert_job(job2)
    res = run(st, job2)
    assert len(stopped(res)) == 2 and not placed(res)
    assert live(st, job) == []
    st2, job = _setup(count=2)
    job0 = _bump(job)
    job0.task_groups[0].count = 0
    st2.upsert_job(job0)
    assert len(stopped(run(st2, job0))) == 2 and live(st2, job0) == []


def test_deleted_job_stops_everything():
    st, job = _setup(count=2)
    st._jobs.clear()
    res = run(st, job)
    assert len(stopped(res)) == 2


def test_destructive_update_on_config_change():
    """With `max_parallel = 0` (no deployment), all at once; rolling updates are in
    test_scheduler_deployments.py."""
    st, job = _setup(count=2)
    before = {a.name: a for a in live(st, job)}
    job2 = _bump(job)
    job2.task_groups[0].tasks[0].config = {"image": "nginx:1.27"}
    job2.task_groups[0].update = UpdateStrategy(max_parallel=0)
    st.upsert_job(job2)
    res = run(st, job2)
    assert sorted(a.id for a in stopped(res)) == sorted(a.id for a in before.values())
    assert {a.desired_description for a in stopped(res)} == {"alloc is being updated due to job update"}
    new = placed(res)
    assert sorted(a.name for a in new) == ["web.g[0]", "web.g[1]"]
    for a in new:
        assert a.previous_allocation == before[a.name].id and a.id != before[a.name].id
        assert a.job.version == 1
    assert res.desired_updates["g"].destructive_update == 2


def test_in_place_update_on_count_change():
    st, job = _setup(count=2)
    before = {a.id for a in live(st, job)}
    job2 = _bump(job)
    job2.task_groups[0].count = 3
    st.upsert_job(job2)
    res = run(st, job2)
    assert not stopped(res)
    updated = [a for a in placed(res) if a.id in before]
    assert len(updated) == 2 and all(a.job is job2 for a in updated)
    assert len([a for a in placed(res) if a.id not in before]) == 1
    du = res.desired_updates["g"]
    assert (du.in_place_update, du.place, du.destructive_update) == (2, 1, 0)


def test_same_version_is_ignored():
    st, job = _setup(count=2)
    res = run(st, job)
    assert res.plan.is_noop() and res.desired_updates["g"].ignore == 2


def test_lost_allocs_on_down_node_are_replaced():
    st, job = _setup(count=2, n_nodes=2)
    victim = live(st, job)[0]
    node = st.node(victim.node_id).model_copy(update={"status": "down"})
    st.upsert_node(node)
    res = run(st, job)
    (stop,) = stopped(res)
    assert stop.id == victim.id and stop.client_status == "lost"
    assert stop.desired_description == "alloc is lost since its node is down"
    (new,) = placed(res)
    assert new.name == victim.name and new.previous_allocation == victim.id
    assert new.node_id != victim.node_id


def test_lost_allocs_with_stop_on_client_after_are_replaced_once_their_client_has_stopped_them():
    """`disconnect { stop_on_client_after = "1m" }`: the alloc of a down node is marked lost at
    once, but its replacement waits until its client has surely stopped it (a minute plus the
    kill timeout, Nomad's WaitClientStop): no placement before, a follow-up evaluation then, and
    an evaluation in between (a node update, say) keeps the name taken."""
    from yurt.structs import DisconnectStrategy
    st, job = _setup(count=2, n_nodes=2, group_kw={"disconnect": DisconnectStrategy(stop_on_client_after=60 * S)},
                     task_kw={"kill_timeout": 10 * S})
    victim = live(st, job)[0]
    st.upsert_node(st.node(victim.node_id).model_copy(update={"status": "down"}))
    res = run(st, job, now=NOW + 1 * S)
    (stop,) = stopped(res)
    assert stop.id == victim.id and stop.client_status == "lost"
    assert placed(res) == []
    (wake,) = res.followup_evals
    assert wake.wait_until >= NOW + 1 * S + 70 * S and wake.triggered_by == "alloc-lost"
    res = run(st, job, now=NOW + 30 * S)               # an evaluation in between: nothing yet
    assert placed(res) == [] and stopped(res) == [] and not res.followup_evals
    res = run(st, job, now=wake.wait_until)            # the follow-up: the replacement, same name
    (new,) = placed(res)
    assert new.name == victim.name and new.node_id != victim.node_id
    # without the block, the replacement is placed at once (as before)
    st2, job2 = _setup(count=2, n_nodes=2)
    v2 = live(st2, job2)[0]
    st2.upsert_node(st2.node(v2.node_id).model_copy(update={"status": "down"}))
    assert len(placed(run(st2, job2))) == 1


def test_drained_node_allocs_migrate_once_the_drainer_marks_them():
    """As in Nomad, a draining node's allocations stay until the drainer marks them
    (DesiredTransition.Migrate, max_parallel at a time); a marked one is stopped and replaced
    on another node under the same name."""
    st, job = _setup(count=1, n_nodes=2)
    a = live(st, job)[0]
    st.upsert_node(st.node(a.node_id).model_copy(update={"drain": True, "scheduling_eligibility": "ineligible"}))
    res = run(st, job)
    assert res.plan.is_noop() and res.desired_updates["g"].ignore == 1
    st.upsert_alloc(a.model_copy(update={"desired_transition": DesiredTransition(migrate=True)}))
    res = run(st, job)
    assert [s.desired_description for s in stopped(res)] == ["alloc is being migrated"]
    (new,) = placed(res)
    assert new.node_id != a.node_id and new.name == a.name and new.previous_allocation == a.id
    assert res.desired_updates["g"].migrate == 1


def test_batch_complete_not_replaced_failed_rescheduled_once():
    st, job = _setup(count=2, type_="batch")
    a, b = live(st, job)
    _set_client(st, a, "complete")
    res = run(st, job)
    assert res.plan.is_noop()
    # b fails: batch policy = 1 attempt in 24h, constant 5s delay
    _set_client(st, st.alloc(b.id), "failed", finished_at="2023-11-14T22:13:20Z")  # == NOW
    res = run(st, job, now=NOW + 6 * S)
    (new,) = placed(res)
    assert new.name == b.name and new.previous_allocation == b.id
    assert new.reschedule_tracker.events[0].delay == 5 * S
    assert [s.desired_description for s in stopped(res)] == ["alloc was rescheduled because it failed"]
    # it fails too: no attempts left
    _set_client(st, st.alloc(new.id), "failed", finished_at="2023-11-14T22:13:30Z")
    res = run(st, job, now=NOW + 60 * S)
    assert res.plan.is_noop() and not res.followup_evals
    # `job eval -force-reschedule` marks it: rescheduled now, past the policy
    st.upsert_alloc(st.alloc(new.id).model_copy(update={"desired_transition": DesiredTransition(force_reschedule=True)}))
    res = run(st, job, now=NOW + 61 * S)
    (forced,) = placed(res)
    assert forced.name == new.name and forced.previous_allocation == new.id


def test_reschedule_exponential_delay_followup_then_replacement():
    st, job = _setup(count=1, n_nodes=2)
    (a,) = live(st, job)
    fail = NOW + 100 * S
    # already rescheduled twice: 30s, then 60s; next is 120s
    tracker = RescheduleTracker(events=[
        RescheduleEvent(reschedule_time=NOW - 500 * S, prev_alloc_id="x", prev_node_id="n1", delay=30 * S),
        RescheduleEvent(reschedule_time=NOW - 200 * S, prev_alloc_id="y", prev_node_id="n2", delay=60 * S)])
    _set_client(st, a, "failed", reschedule_tracker=tracker, modify_time=fail)
    res = run(st, job, now=fail + 10 * S)
    assert not stopped(res)
    (fe,) = res.followup_evals
    assert fe.wait_until == fail + 120 * S and fe.triggered_by == "alloc-failure"
    assert fe.status == "pending" and fe.job_id == "web"
    (annotated,) = placed(res)
    assert annotated.id == a.id and annotated.followup_eval_id == fe.id
    assert res.desired_updates["g"].reschedule_later == 1
    # another eval before the time: nothing new (the alloc already has its follow-up)
    res = run(st, job, now=fail + 20 * S)
    assert res.plan.is_noop() and not res.followup_evals
    # the follow-up eval itself runs at its time
    res = run(st, job, now=fe.wait_until, id=fe.id)
    (new,) = placed(res)
    assert new.previous_allocation == a.id and new.name == a.name
    assert [e.delay for e in new.reschedule_tracker.events] == [30 * S, 60 * S, 120 * S]
    assert new.node_id != a.node_id       # penalty on the node where it failed
    assert res.desired_updates["g"].reschedule_now == 1
    assert st.alloc(a.id).next_allocation == new.id and st.alloc(a.id).desired_status == "stop"


def test_next_delay_functions():
    def alloc(delays, last=0):
        return Allocation(modify_time=last, reschedule_tracker=RescheduleTracker(events=[
            RescheduleEvent(reschedule_time=last, delay=d) for d in delays]) if delays else None)
    exp = ReschedulePolicy(delay=30 * S, delay_function="exponential", max_delay=300 * S, unlimited=True)
    assert next_delay(alloc([]), exp) == 30 * S
    assert next_delay(alloc([30 * S, 60 * S]), exp) == 120 * S
    assert next_delay(alloc([240 * S]), exp) == 300 * S          # capped
    fib = ReschedulePolicy(delay=5 * S, delay_function="fibonacci", max_delay=60 * S, unlimited=True)
    assert next_delay(alloc([5 * S]), fib) == 5 * S
    assert next_delay(alloc([5 * S, 5 * S, 10 * S]), fib) == 15 * S
    const = ReschedulePolicy(delay=5 * S, delay_function="constant")
    assert next_delay(alloc([5 * S, 5 * S]), const) == 5 * S


def test_placements_capped_at_count_with_failed_and_lost():
    st, job = _setup(count=2, n_nodes=3)
    a, b = live(st, job)
    _set_client(st, a, "failed", finished_at="2023-11-14T22:13:20Z")
    st.upsert_node(st.node(b.node_id).model_copy(update={"status": "down"}))
    job2 = _bump(job)
    job2.task_groups[0].count = 1
    st.upsert_job(job2)
    run(st, job2, now=NOW + 3600 * S)
    assert len(live(st, job2)) == 1


def test_a_sticky_disk_reschedule_prefers_the_node_it_failed_on():
    """Nomad's findPreferredNode: with ephemeral_disk { sticky = true } a rescheduled allocation
    is tried on its previous node first (where its data is), the failure penalty notwithstanding;
    without sticky the penalty sends it elsewhere."""
    from yurt.structs import EphemeralDisk
    for sticky in (True, False):
        st = MemoryState(nodes=[make_node(i) for i in range(3)])
        job = make_job(count=1, type_="batch")
        job.task_groups[0].ephemeral_disk = EphemeralDisk(size_mb=300, sticky=sticky)
        st.upsert_job(job)
        run(st, job)
        (b,) = live(st, job)
        _set_client(st, b, "failed", finished_at="2023-11-14T22:13:20Z")
        res = run(st, job, now=NOW + 6 * S)
        (new,) = placed(res)
        assert new.previous_allocation == b.id
        assert (new.node_id == b.node_id) is sticky, (sticky, new.node_id, b.node_id)
        penalized = [m for m in new.metrics.score_meta_data if m["NodeID"] == b.node_id]
        if sticky:
            assert penalized and penalized[0]["Scores"].get("node-reschedule-penalty") == -1.0
