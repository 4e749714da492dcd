"""The plan applier's re-check (server/plan_apply.py): each node of a plan is checked against the
latest state -- what the node's live allocations hold, less what the plan stops or replaces,
plus the plans checked before and not yet written -- and a node that no longer fits is rejected.
On a real SQLite store; each case is also checked against `allocs_fit` adding up every allocation
(Nomad's AllocsFit), the answer the applier must keep."""

from __future__ import annotations

import pytest

from yurt.scheduler import allocs_fit
from yurt.server.plan_apply import PlanApplier
from yurt.state import StateStore
from yurt.structs import AllocatedPortMapping, Allocation, Plan
from yurt.structs.node import NodeReservedNetworkResources, NodeReservedResources

from . import mock

NODE = "node-1"


@pytest.fixture
def store():
    s = StateStore.temporary()
    s.upsert_node(mock.node(NODE))
    yield s
    s.close()


def _job(store: StateStore, job_id: str, cpu: int = 100):
    job = mock.job(job_id)
    job.task_groups[0].tasks[0].resources.cpu = cpu
    store.upsert_job(job)
    return store.job("default", job_id)


def _alloc(job, index: int, port: int | None = None, cpu: int = 100) -> Allocation:
    a = mock.alloc(job, NODE, index=index)
    a.allocated_resources.tasks["app"].cpu.cpu_shares = cpu
    a.allocated_resources.shared.ports = (
        [AllocatedPortMapping(label="http", value=port, to=8080)] if port is not None else [])
    return a


def _plan(new: list[Allocation], stops: list[Allocation] = ()) -> Plan:
    p = Plan(eval_id="e", node_allocation={NODE: list(new)} if new else {})
    if stops:
        p.node_update = {NODE: [s.model_copy(update={"desired_status": "stop"}) for s in stops]}
    return p


def _reference(store: StateStore, plan: Plan) -> bool:
    """AllocsFit over every allocation: the node's live ones not stopped or replaced, plus the plan's."""
    snap = store.snapshot()
    leaving = {a.id for a in plan.node_update.get(NODE, [])} | {a.id for a in plan.node_allocation.get(NODE, [])}
    live = [a for a in snap.allocs_by_node(NODE) if a.id not in leaving]
    ok, _ = allocs_fit(snap.node(NODE), live + plan.node_allocation.get(NODE, []))
    return ok


def _apply(store: StateStore, plan: Plan) -> bool:
    expected = _reference(store, plan)
    result = PlanApplier(store).apply(plan)
    taken = NODE not in result.rejected_nodes
    assert taken == expected, f"the applier says {taken}, AllocsFit {expected}"
    return taken


def test_a_plan_that_fits_is_written_and_one_past_the_capacity_is_rejected(store):
    job = _job(store, "big", cpu=1500)
    assert _apply(store, _plan([_alloc(job, 0, cpu=1500), _alloc(job, 1, cpu=1500)]))   # 3000 of 4000 MHz
    assert len(store.allocs_by_node(NODE)) == 2
    assert not _apply(store, _plan([_alloc(job, 2, cpu=1500)]))                           # 4500: no
    assert len(store.allocs_by_node(NODE)) == 2
    assert _apply(store, _plan([_alloc(job, 2, cpu=1000)]))                               # 4000: yes


def test_what_the_plan_stops_makes_room_and_an_update_in_place_is_counted_once(store):
    job = _job(store, "web", cpu=2000)
    assert _apply(store, _plan([_alloc(job, 0, cpu=2000), _alloc(job, 1, cpu=2000)]))
    live = store.allocs_by_node(NODE)
    assert not _apply(store, _plan([_alloc(job, 2, cpu=2000)]))
    assert _apply(store, _plan([_alloc(job, 2, cpu=2000)], stops=[live[0]]))   # one stops: room for one
    kept = next(a for a in store.allocs_by_node(NODE) if a.desired_status == "run" and a.id == live[1].id)
    bigger = kept.model_copy(update={"eval_id": "e2"})                             # replaced by itself
    assert _apply(store, _plan([bigger]))


def test_ports_collide_with_live_allocations_and_reserved_ports_but_not_with_stopped_ones(store):
    node = store.node(NODE).model_copy(update={"reserved_resources": NodeReservedResources(
        networks=NodeReservedNetworkResources(reserved_host_ports="22,8500"))})
    store.upsert_node(node)
    job = _job(store, "ports")
    assert _apply(store, _plan([_alloc(job, 0, port=9000)]))
    assert not _apply(store, _plan([_alloc(job, 1, port=9000)]))        # a live allocation holds it
    assert not _apply(store, _plan([_alloc(job, 1, port=8500)]))        # reserved on the node
    assert not _apply(store, _plan([_alloc(job, 1, port=9100), _alloc(job, 2, port=9100)]))   # twice in one plan
    first = store.allocs_by_node(NODE)[0]
    assert _apply(store, _plan([_alloc(job, 1, port=9000)], stops=[first]))   # freed by the plan's stop


def test_a_plan_checked_before_and_still_being_written_counts(store):
    """Two plans, the first checked but not yet written: the second is checked against both."""
    job = _job(store, "race", cpu=3000)
    applier = PlanApplier(store)
    first = _plan([_alloc(job, 0, cpu=3000)])
    second = _plan([_alloc(job, 1, cpu=3000)])
    in_flight: dict[int, dict[str, list[Allocation]]] = {}
    # the first plan checked and in flight (what apply() records before it writes)
    in_flight[1] = {NODE: first.node_allocation[NODE]}
    applier._inflight = in_flight
    snap = store.snapshot()
    assert not applier._fits(snap, NODE, second, second.node_allocation[NODE])
    applier._inflight = {}
    assert applier._fits(snap, NODE, second, second.node_allocation[NODE])


def test_a_node_that_is_not_ready_takes_nothing(store):
    job = _job(store, "down")
    store.update_node_status(NODE, "down", "test")
    result = PlanApplier(store).apply(_plan([_alloc(job, 0)]))
    assert result.rejected_nodes == [NODE]
    assert store.allocs_by_node(NODE) == []

