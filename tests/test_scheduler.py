"""The service/batch scheduler end to end on MemoryState: placement, failures, ports."""

from __future__ import annotations

from yurt.scheduler import allocs_fit, port_collisions, schedule
from yurt.scheduler.rank import binpack_score
from yurt.structs import (Affinity, Allocation, Constraint, NodeReservedResources, Spread,
                         SpreadTarget)
from yurt.structs.node import NodeReservedNetworkResources

from .memory_state import MemoryState
from .test_scheduler_helpers import (NOW, live, make_eval, make_job, make_node, placed, ports,
                                     run)


def _by_node(res, st) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in sorted(placed(res), key=lambda a: a.name):
        out.setdefault(st.node(a.node_id).name, []).append(a.name)
    return out


def test_places_count_with_names_and_fields():
    nodes = [make_node(i) for i in range(3)]
    job = make_job(count=3, cpu=500, mem=512)
    st = MemoryState(nodes=nodes, jobs=[job])
    ev = make_eval(job)
    res = schedule(ev, st, seed=42, now_ns=NOW)
    allocs = sorted(placed(res), key=lambda a: a.name)
    assert [a.name for a in allocs] == ["web.g[0]", "web.g[1]", "web.g[2]"]
    a = allocs[0]
    assert a.eval_id == ev.id and a.job is job and a.job_id == "web" and a.task_group == "g"
    assert a.desired_status == "run" and a.client_status == "pending"
    assert a.create_time == a.modify_time == NOW
    assert a.node_name == st.node(a.node_id).name
    assert len(a.id) == 36 and a.id[14] == "4"
    t = a.allocated_resources.tasks["app"]
    assert (t.cpu.cpu_shares, t.memory.memory_mb) == (500, 512)
    assert a.allocated_resources.shared.disk_mb == 300
    assert a.metrics.nodes_evaluated >= 1 and a.metrics.nodes_available == {"dc1": 3}
    assert res.status == "complete" and not res.failed_tg_allocs and res.blocked_eval is None
    assert res.desired_updates["g"].place == 3
    # anti-affinity spreads a fresh group over empty nodes, one each
    assert sorted(len(v) for v in _by_node(res, st).values()) == [1, 1, 1]
    Allocation.model_validate(a.to_json())     # a valid struct, JSON round trip


def test_deterministic_node_choice_and_identical_plans():
    nodes = [make_node(i) for i in range(10)]
    job = make_job(count=6, networks=ports(dynamic=[("http", 0)]))
    plans = []
    for _ in range(2):
        st = MemoryState(nodes=nodes, jobs=[job])
        res = schedule(make_eval(job).model_copy(update={"id": "e1"}), st, seed=7, now_ns=NOW)
        plans.append(res.plan.to_json())
    assert plans[0] == plans[1]
    st = MemoryState(nodes=nodes, jobs=[job])
    res = schedule(make_eval(job).model_copy(update={"id": "e1"}), st, seed=7, now_ns=NOW)
    # 10 nodes: limit ceil(log2 10) = 4 candidates per placement, read on from the last one
    assert _by_node(res, st) == {"node7": ["web.g[0]"], "node1": ["web.g[1]"], "node4": ["web.g[2]"],
                                 "node3": ["web.g[3]"], "node6": ["web.g[4]"], "node9": ["web.g[5]"]}
    other = MemoryState(nodes=nodes, jobs=[job])
    res8 = schedule(make_eval(job).model_copy(update={"id": "e1"}), other, seed=8, now_ns=NOW)
    assert _by_node(res8, other) != _by_node(res, st)


def test_binpack_prefers_the_fuller_node():
    nodes = [make_node(0), make_node(1)]
    st = MemoryState(nodes=nodes)
    big = make_job("big", cpu=2000, mem=4096)
    st.upsert_job(big)
    first = placed(run(st, big))[0]
    job = make_job(cpu=500, mem=512)
    st.upsert_job(job)
    for seed in range(5):
        res = run(st, job, seed=seed, apply=False)
        assert placed(res)[0].node_id == first.node_id
    assert binpack_score(4000, 8192, 4000, 8192) == 1.0
    assert binpack_score(0, 0, 4000, 8192) == 0.0


def test_missing_driver_reason_and_blocked_eval():
    nodes = [make_node(i, drivers=("raw_exec",)) for i in range(2)]
    job = make_job(count=3)
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert not placed(res)
    m = res.failed_tg_allocs["g"]
    assert "2 nodes excluded by filter: missing driver docker" in m.reasons()
    assert m.coalesced_failures == 2 and res.queued == {"g": 3}
    assert res.blocked_eval.status == "blocked" and res.blocked_eval.job_id == "web"
    assert res.status == "complete"


def test_driver_from_attribute():
    node = make_node(0, drivers=(), attrs={"driver.exec": "1"})
    job = make_job(driver="exec")
    st = MemoryState(nodes=[node], jobs=[job])
    assert placed(run(st, job))[0].node_id == node.id


def test_memory_exhausted():
    nodes = [make_node(i, mem=2048) for i in range(2)]
    job = make_job(mem=4096)
    st = MemoryState(nodes=nodes, jobs=[job])
    reasons = run(st, job).failed_tg_allocs["g"].reasons()
    assert 'Dimension "memory" exhausted on 2 nodes' in reasons
    assert "Resources exhausted on 2 nodes" in reasons


def test_capacity_counts_reserved_and_existing_allocs():
    node = make_node(0, cpu=1000, mem=4096)
    node.reserved_resources.cpu.cpu_shares = 200
    job = make_job(count=3, cpu=300, mem=256)
    st = MemoryState(nodes=[node], jobs=[job])
    res = run(st, job)
    assert len(placed(res)) == 2        # (1000 - 200) / 300
    assert 'Dimension "cpu" exhausted on 1 node' in res.failed_tg_allocs["g"].reasons()


def test_no_nodes_in_datacenter_and_dc_globs():
    nodes = [make_node(0, dc="us-east"), make_node(1, dc="us-west"), make_node(2, dc="eu-1")]
    job = make_job(count=2, datacenters=["us-*"])
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert {st.node(a.node_id).datacenter for a in placed(res)} == {"us-east", "us-west"}
    job2 = make_job("x", datacenters=["ap-1"])
    st.upsert_job(job2)
    reasons = run(st, job2).failed_tg_allocs["g"].reasons()
    assert 'No nodes are available in datacenter "ap-1"' in reasons


def test_not_ready_nodes_are_skipped():
    nodes = [make_node(0, status="down"), make_node(1, scheduling_eligibility="ineligible"),
             make_node(2, drain=True), make_node(3), make_node(4, node_pool="gpu")]
    job = make_job(count=2)
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert [a.node_id for a in placed(res)] == [nodes[3].id] * 2


def test_bridge_needs_cni_plugins():
    node = make_node(0)
    del node.attributes["plugins.cni.version.portmap"]
    job = make_job(networks=ports(("http", 8080), mode="bridge"))
    st = MemoryState(nodes=[node], jobs=[job])
    reasons = run(st, job).failed_tg_allocs["g"].reasons()
    (line,) = [r for r in reasons if "CNI" in r]
    assert line.startswith('1 node excluded by filter: missing CNI plugin "portmap" (install containernetworking-plugins')


def test_static_port_collisions():
    nodes = [make_node(0), make_node(1)]
    nodes[1].reserved_resources = NodeReservedResources(
        networks=NodeReservedNetworkResources(reserved_host_ports="22,9000-9005"))
    job = make_job(count=1, networks=ports(("http", 9002)))
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    a = placed(res)[0]
    assert a.node_id == nodes[0].id
    assert [(p.label, p.value, p.to, p.host_ip) for p in a.allocated_resources.shared.ports] == [
        ("http", 9002, 0, "10.0.0.0")]
    job2 = make_job("other", networks=ports(("http", 9002)))
    st.upsert_job(job2)
    res = run(st, job2)
    assert 'Dimension "network: reserved port collision http=9002" exhausted on 2 nodes' in \
        res.failed_tg_allocs["g"].reasons()


def test_dynamic_ports_unique_on_a_node():
    node = make_node(0, cpu=100_000, mem=100_000)
    node.reserved_resources.networks.reserved_host_ports = "20000-25000"
    job = make_job(count=30, cpu=10, mem=10,
                   networks=ports(("admin", 9000), dynamic=[("a", 0), ("b", -1), ("c", 8080)]))
    job.task_groups[0].networks[0].reserved_ports = None      # only dynamic ports here
    st = MemoryState(nodes=[node], jobs=[job])
    res = run(st, job)
    allocs = placed(res)
    assert len(allocs) == 30
    values = [p.value for a in allocs for p in a.allocated_resources.shared.ports]
    assert len(values) == len(set(values)) == 90
    assert all(25000 < v <= 32000 for v in values)
    for a in allocs:
        by_label = {p.label: p for p in a.allocated_resources.shared.ports}
        assert by_label["a"].to == 0 and by_label["b"].to == by_label["b"].value
        assert by_label["c"].to == 8080
    # a second job on the same node avoids all of them
    job2 = make_job("two", cpu=10, mem=10, networks=ports(dynamic=[("x", 0)]))
    st.upsert_job(job2)
    assert placed(run(st, job2))[0].allocated_resources.shared.ports[0].value not in values


def test_allocs_fit_and_port_collisions_for_the_plan_applier():
    node = make_node(0, cpu=1000, mem=1024)
    job = make_job(count=2, cpu=400, mem=400, networks=ports(("http", 80)))
    st = MemoryState(nodes=[node, make_node(1, cpu=1000, mem=1024)], jobs=[job])
    allocs = placed(run(st, job))
    assert allocs_fit(node, allocs[:1]) == (True, "")
    both = [allocs[0], allocs[1].model_copy(update={"node_id": node.id})]
    assert port_collisions(node, both) == ["http=80"]
    assert allocs_fit(node, both) == (False, "network: reserved port collision http=80")
    big = make_job("big", cpu=500, mem=100)
    st.upsert_job(big)
    b = placed(run(st, big))[0]
    assert allocs_fit(st.node(b.node_id), st.allocs_by_node(b.node_id) + [b.model_copy(update={"id": "x"})]) == (False, "cpu")


def test_spread_with_targets():
    nodes = [make_node(i, dc="dc1" if i < 10 else "dc2") for i in range(20)]
    job = make_job(count=8, datacenters=["dc1", "dc2"], spreads=[Spread(
        attribute="${node.datacenter}", weight=100,
        spread_target=[SpreadTarget(value="dc1", percent=75), SpreadTarget(value="dc2", percent=25)])])
    st = MemoryState(nodes=nodes, jobs=[job])
    dcs = sorted(st.node(a.node_id).datacenter for a in placed(run(st, job)))
    assert dcs == ["dc1"] * 6 + ["dc2"] * 2


def test_even_spread_over_racks():
    nodes = [make_node(i, meta={"rack": f"r{i % 3}"}) for i in range(12)]
    job = make_job(count=9, spreads=[Spread(attribute="${meta.rack}")])
    st = MemoryState(nodes=nodes, jobs=[job])
    racks = [st.node(a.node_id).meta["rack"] for a in placed(run(st, job))]
    assert sorted(racks.count(r) for r in ("r0", "r1", "r2")) == [3, 3, 3]


def test_affinity_prefers_matching_nodes():
    nodes = [make_node(i, meta={"ssd": "true" if i == 3 else "false"}) for i in range(6)]
    job = make_job(affinities=[Affinity(l_target="${meta.ssd}", operand="=", r_target="true", weight=100)])
    st = MemoryState(nodes=nodes, jobs=[job])
    for seed in range(4):
        assert placed(run(st, job, seed=seed, apply=False))[0].node_id == nodes[3].id
    anti = make_job("anti", count=1, affinities=[
        Affinity(l_target="${meta.ssd}", operand="=", r_target="true", weight=-100)])
    st.upsert_job(anti)
    for seed in range(4):
        assert placed(run(st, anti, seed=seed, apply=False))[0].node_id != nodes[3].id


def test_job_constraint_on_kernel():
    nodes = [make_node(0, attrs={"kernel.name": "darwin"}), make_node(1)]
    job = make_job(constraints=[Constraint(l_target="${attr.kernel.name}", r_target="linux", operand="=")])
    st = MemoryState(nodes=nodes, jobs=[job])
    assert placed(run(st, job))[0].node_id == nodes[1].id
    assert live(st, job)[0].node_id == nodes[1].id
