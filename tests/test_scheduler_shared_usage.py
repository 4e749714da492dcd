"""A node no placement of the plan has touched is read from a shared usage (scheduler/stack.py
`base_usage`): made once per node object and NodeUsed object, never changed by a plan, and
not used once either is replaced. And the objects the scheduler builds per placement without
pydantic's walk (`structs.built`, `structs.copied`) are what `model_construct` / `model_copy`
make."""

from __future__ import annotations

from yurt.scheduler.stack import base_usage
from yurt.structs import AllocatedPortMapping, Allocation, AllocMetric, UpdateStrategy, built, copied

from .memory_state import MemoryState
from .test_scheduler_helpers import make_job, make_node, ports
from .test_scheduler_helpers import run as _run


def run(state: MemoryState, job, **kw):
    state.upsert_job(job)
    return _run(state, job, **kw)


def _placed(res) -> dict[str, int]:
    return {node: len(allocs) for node, allocs in res.plan.node_allocation.items()}


def test_the_shared_usage_is_made_once_and_again_when_the_node_or_its_allocations_change():
    node = make_node(1)
    state = MemoryState(nodes=[node])
    first = base_usage(node, state.node_used(node.id))
    assert base_usage(node, state.node_used(node.id)) is first
    run(state, make_job("a", count=2, cpu=1000))
    after = base_usage(node, state.node_used(node.id))
    assert after is not first and after.cpu == 2000 and first.cpu == 0
    changed = node.model_copy(update={"name": "renamed"})
    assert base_usage(changed, state.node_used(node.id)) is not after


def test_a_plan_never_changes_the_shared_usage():
    node = make_node(1)
    state = MemoryState(nodes=[node])
    run(state, make_job("a", count=1, cpu=1000, networks=ports(dynamic=[("http", 8080)])))
    shared = base_usage(node, state.node_used(node.id))
    before = (shared.cpu, shared.mem, shared.disk, set(shared.ports))
    res = run(state, make_job("b", count=2, cpu=1000, networks=ports(dynamic=[("http", 8080)])),
              apply=False)
    assert _placed(res) == {node.id: 2}
    assert (shared.cpu, shared.mem, shared.disk, set(shared.ports)) == before


def test_the_next_evaluation_sees_what_the_last_one_placed():
    """4,000 MHz: three 1,000 MHz allocations of one job, then a job of two gets one, the
    other is queued (the node's shared usage was made again from its new NodeUsed)."""
    node = make_node(1, cpu=4000)
    state = MemoryState(nodes=[node])
    assert _placed(run(state, make_job("a", count=3, cpu=1000))) == {node.id: 3}
    res = run(state, make_job("b", count=2, cpu=1000))
    assert _placed(res) == {node.id: 1}
    assert res.queued == {"g": 1}
    assert res.failed_tg_allocs["g"].dimension_exhausted == {"cpu": 1}


def test_a_node_the_plan_stops_on_is_counted_with_the_stop():
    """A job updated destructively on a full node: the plan stops the old allocation there and
    places its replacement in the room it frees (the plan's own usage of that node, not the
    shared one)."""
    node = make_node(1, cpu=1000)
    state = MemoryState(nodes=[node])
    job = make_job("a", count=1, cpu=1000)
    assert _placed(run(state, job)) == {node.id: 1}
    new = job.model_copy(deep=True)
    new.version = job.version + 1
    new.task_groups[0].tasks[0].config = {"image": "nginx:2"}
    new.task_groups[0].update = UpdateStrategy(max_parallel=0)   # all at once, no deployment
    res = run(state, new)
    assert [a.desired_status for a in res.plan.node_update.get(node.id, [])] == ["stop"]
    assert _placed(res) == {node.id: 1}


def test_built_and_copied_are_what_pydantic_makes():
    values = dict(nodes_evaluated=3, nodes_filtered=1, nodes_in_pool=5, nodes_available={"dc1": 5},
                  class_filtered={}, constraint_filtered={"x": 1}, nodes_exhausted=0, class_exhausted={},
                  dimension_exhausted={}, quota_exhausted=[], resources_exhausted=None, scores=None,
                  score_meta_data=None, allocation_time=0, coalesced_failures=0)
    ours, theirs = built(AllocMetric, dict(values)), AllocMetric.model_construct(**values)
    assert ours.model_dump_json(by_alias=True) == theirs.model_dump_json(by_alias=True)
    assert ours.model_fields_set == theirs.model_fields_set
    a = Allocation(id="a1", name="web.g[0]", task_group="g")
    update = {"node_id": "n1", "client_status": "running"}
    mine, pydantics = copied(a, update), a.model_copy(update=update)
    assert mine.model_dump_json(by_alias=True) == pydantics.model_dump_json(by_alias=True)
    assert mine.model_fields_set == pydantics.model_fields_set
    assert a.node_id == "" and mine is not a and mine.__dict__ is not a.__dict__
    port = built(AllocatedPortMapping, {"label": "http", "value": 20001, "to": 8080, "host_ip": "10.0.0.1"})
    assert port == AllocatedPortMapping(label="http", value=20001, to=8080, host_ip="10.0.0.1")
