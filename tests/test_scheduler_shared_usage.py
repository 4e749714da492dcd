"""A node no placement of the plan has touched is read from a shared usage (scheduler/stack.py
`base_usage`): made once per node object and NodeUsed object, never changed by a plan, and
not used once either is replaced. And the objects the scheduler builds per placement without
pydantic's walk (`structs.built`, `structs.copied`) are what `model_construct` / `model_copy`
make."""

from __future__ import annotations

import copy
import pickle

import pytest

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


def test_complete_models_share_one_fields_set_that_nothing_can_empty():
    """A model with every field set (`built`, `copied`) shares its class's fields-set: one object
    fewer per model for a server holding thousands of allocations. It reads as pydantic's,
    an assignment still works, a copy gets a set of its own, and no one can take a field out of
    the shared one (which would change every instance's)."""
    from yurt.structs.base import AllFields

    def port(value: int) -> AllocatedPortMapping:
        return built(AllocatedPortMapping, {"label": "http", "value": value, "to": 8080, "host_ip": "10.0.0.1"})
    p1, p2 = port(20001), port(20002)
    assert p1.model_fields_set is p2.model_fields_set
    assert p1.model_fields_set == AllocatedPortMapping(label="x", value=1, to=2, host_ip="y").model_fields_set
    p3 = copied(p1, {"value": 20003})
    assert p3.model_fields_set is p1.model_fields_set and (p1.value, p3.value) == (20001, 20003)
    p1.value = 20005                                    # pydantic adds the name: it is there already
    assert (p1.value, p2.value) == (20005, 20002)
    assert p1.model_dump(by_alias=True) == {"Label": "http", "Value": 20005, "To": 8080, "HostIP": "10.0.0.1"}
    for change in (lambda s: s.discard("value"), lambda s: s.remove("value"), lambda s: s.clear(),
                   lambda s: s.add("bogus"), lambda s: s.difference_update({"to"})):
        with pytest.raises(TypeError, match=r"shared|no field"):
            change(p1.model_fields_set)
    assert p2.model_fields_set == {"label", "value", "to", "host_ip"}
    own = p1.model_copy(update={"to": 9090})            # pydantic's copy: a plain set of its own
    assert type(own.model_fields_set) is set and own.model_fields_set == p2.model_fields_set
    own.model_fields_set.discard("to")
    assert "to" in p2.model_fields_set
    assert type(copy.deepcopy(p1).model_fields_set) is set
    assert type(pickle.loads(pickle.dumps(p1)).model_fields_set) is set
    # a model missing a field keeps a set of its own
    partial = built(AllocatedPortMapping, {"label": "http", "value": 1})
    assert type(partial.model_fields_set) is set and partial.model_fields_set == {"label", "value"}
    assert type(p1.model_fields_set) is AllFields


def test_placed_allocations_share_what_never_changes_per_placement():
    """Allocations of one group placed in one evaluation share their template's desired
    transition, task resources and complete fields-sets; each has its own ports and metric."""
    state = MemoryState(nodes=[make_node(i) for i in range(1, 4)])
    res = run(state, make_job(count=3, networks=ports(dynamic=[("http", 8080)])))
    a, b, c = [x for v in res.plan.node_allocation.values() for x in v]
    assert a.desired_transition is b.desired_transition is c.desired_transition
    assert a.allocated_resources.tasks is b.allocated_resources.tasks
    assert a.model_fields_set is b.model_fields_set
    assert a.allocated_resources.shared is not b.allocated_resources.shared
    assert a.allocated_resources.shared.ports[0] is not b.allocated_resources.shared.ports[0]
    assert a.metrics is not b.metrics
    assert len({x.id for x in (a, b, c)}) == 3
