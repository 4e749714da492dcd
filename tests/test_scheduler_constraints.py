"""Every constraint operator of Nomad (§1.12), with target interpolation."""

from __future__ import annotations

import pytest

from yurt.scheduler import OPERANDS, resolve_target, satisfies
from yurt.scheduler.constraints import compile_constraint, version_match
from yurt.structs import Constraint

from .memory_state import MemoryState
from .test_scheduler_helpers import make_job, make_node, placed, run

NODE = make_node(7, dc="us-east-1", attrs={
    "cpu.numcores": "8", "kernel.version": "5.15.0", "consul.version": "1.16.2",
    "nomad.version": "1.8.0-dev", "os.name": "ubuntu", "cpu.arch": "amd64",
    "driver.java": "1", "platform.flags": "sse4,avx,avx2"}, meta={"rack": "r12", "tier": "gold"},
    node_class="large", node_pool="default")

CASES = [
    # (attribute, operator, value, expected)
    ("${attr.kernel.name}", "=", "linux", True),
    ("${attr.kernel.name}", "==", "linux", True),
    ("${attr.kernel.name}", "is", "windows", False),
    ("${attr.missing}", "=", "linux", False),
    ("${attr.kernel.name}", "!=", "windows", True),
    ("${attr.kernel.name}", "not", "linux", False),
    ("${attr.missing}", "!=", "linux", True),
    ("${attr.cpu.numcores}", "<", "16", True),         # numeric, not lexical ("8" > "16")
    ("${attr.cpu.numcores}", "<=", "8", True),
    ("${attr.cpu.numcores}", ">", "8", False),
    ("${attr.cpu.numcores}", ">=", "4", True),
    ("${meta.rack}", "<", "r2", True),                  # lexical: "r12" < "r2"
    ("${meta.rack}", ">", "r2", False),
    ("${attr.os.name}", "regexp", "^ubu", True),
    ("${attr.os.name}", "regexp", "deb", False),
    ("${attr.os.name}", "regexp", "[", False),          # a bad pattern matches nothing
    ("${attr.consul.version}", "version", ">= 1.8.0", True),
    ("${attr.consul.version}", "version", ">= 1.2, < 2", True),
    ("${attr.consul.version}", "version", "~> 1.16", True),
    ("${attr.consul.version}", "version", "~> 1.15.0", False),
    ("${attr.consul.version}", "version", "< 1.16", False),
    ("${attr.nomad.version}", "version", ">= 1.7.0", False),   # go-version: pre-release needs a pre-release constraint
    ("${attr.nomad.version}", "semver", ">= 1.8.0-a", True),
    ("${attr.nomad.version}", "semver", ">= 1.8.0", False),    # 1.8.0-dev sorts before 1.8.0
    ("${attr.nomad.version}", "semver", ">= 1.7.0", True),
    ("${attr.kernel.version}", "semver", "> 5.4", True),
    ("${attr.kernel.version}", "semver", "not-a-version", False),
    ("${attr.platform.flags}", "set_contains", "avx,sse4", True),
    ("${attr.platform.flags}", "set_contains", "avx,neon", False),
    ("${attr.platform.flags}", "set_contains_all", "avx2, avx", True),
    ("${attr.platform.flags}", "set_contains_any", "neon,avx2", True),
    ("${attr.platform.flags}", "set_contains_any", "neon,sve", False),
    ("${attr.cpu.arch}", "is_set", "", True),
    ("${attr.gpu.model}", "is_set", "", False),
    ("${attr.gpu.model}", "is_not_set", "", True),
    ("${attr.cpu.arch}", "is_not_set", "", False),
    ("${node.unique.id}", "=", NODE.id, True),
    ("${node.unique.name}", "=", "node7", True),
    ("${node.datacenter}", "regexp", "^us-", True),
    ("${node.class}", "=", "large", True),
    ("${node.pool}", "=", "default", True),
    ("${node.region}", "=", "global", True),
    ("${meta.tier}", "set_contains_any", "gold,silver", True),
    ("${meta.nope}", "regexp", ".*", False),
    ("${attr.kernel.name}", "=", "${attr.kernel.name}", True),   # both sides interpolated
    ("${attr.kernel.name}", "bogus-operator", "linux", False),
]


@pytest.mark.parametrize("attribute,operator,value,expected", CASES)
def test_operator(attribute, operator, value, expected):
    assert satisfies(NODE, attribute, operator, value) is expected


@pytest.mark.parametrize("attribute,operator,value,expected", CASES)
def test_compiled_form_agrees(attribute, operator, value, expected):
    assert compile_constraint(attribute, operator, value)(NODE) is expected


def test_every_plain_operator_is_covered():
    covered = {op for _, op, _, _ in CASES}
    assert set(OPERANDS) - covered == {"distinct_hosts", "distinct_property"}   # tested below


def test_resolve_target():
    assert resolve_target("${attr.kernel.name}", NODE) == ("linux", True)
    assert resolve_target("${meta.rack}", NODE) == ("r12", True)
    assert resolve_target("${meta.none}", NODE) == (None, False)
    assert resolve_target("${unknown.thing}", NODE) == (None, False)
    assert resolve_target("plain", NODE) == ("plain", True)


@pytest.mark.parametrize("version,constraint,semver,expected", [
    ("1.2.3", "= 1.2.3", False, True),
    ("1.2.3", "!= 1.2.3", False, False),
    ("v1.2", ">= 1.2.0", False, True),
    ("1.2.3+build.1", "= 1.2.3", True, True),
    ("1.0.0-alpha", "< 1.0.0-beta", True, True),
    ("1.0.0-alpha.2", "> 1.0.0-alpha.10", True, False),
    ("1.0.0-rc.1", ">= 1.0.0-beta", False, True),
    ("2.0.0", "~> 1.2", False, False),
    ("1.9.9", "~> 1.2", False, True),
])
def test_versions(version, constraint, semver, expected):
    assert version_match(version, constraint, semver=semver) is expected


def test_constraint_filters_nodes_with_reason():
    nodes = [make_node(i, meta={"rack": f"r{i % 2}"}) for i in range(4)]
    job = make_job(count=2, constraints=[Constraint(l_target="${meta.rack}", operand="=", r_target="r1")])
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert {a.node_id for a in placed(res)} == {nodes[1].id, nodes[3].id}
    job2 = make_job("other", constraints=[Constraint(l_target="${meta.rack}", operand="=", r_target="r9")])
    st.upsert_job(job2)
    res = run(st, job2)
    assert "4 nodes excluded by filter: ${meta.rack} = r9" in res.failed_tg_allocs["g"].reasons()


def test_task_level_constraint():
    from yurt.structs import Constraint as C
    nodes = [make_node(0, attrs={"os.name": "debian"}), make_node(1, attrs={"os.name": "ubuntu"})]
    job = make_job(task_kw={"constraints": [C(l_target="${attr.os.name}", r_target="ubuntu")]})
    st = MemoryState(nodes=nodes, jobs=[job])
    assert [a.node_id for a in placed(run(st, job))] == [nodes[1].id]


def test_distinct_hosts():
    nodes = [make_node(i) for i in range(2)]
    job = make_job(count=3, group_kw={"constraints": [Constraint(operand="distinct_hosts", r_target="true")]})
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    assert len({a.node_id for a in placed(res)}) == 2
    assert res.queued == {"g": 1}
    assert "2 nodes excluded by filter: distinct_hosts" in res.failed_tg_allocs["g"].reasons()


def test_distinct_property():
    nodes = [make_node(i, meta={"rack": f"r{i % 3}"}) for i in range(9)]
    job = make_job(count=4, constraints=[Constraint(l_target="${meta.rack}", operand="distinct_property", r_target="1")])
    st = MemoryState(nodes=nodes, jobs=[job])
    res = run(st, job)
    racks = [st.node(a.node_id).meta["rack"] for a in placed(res)]
    assert sorted(racks) == ["r0", "r1", "r2"]
    assert res.queued == {"g": 1}
    # limit 2 per rack, in a second job
    job2 = make_job("two", count=6, constraints=[Constraint(l_target="${meta.rack}", operand="distinct_property", r_target="2")])
    st.upsert_job(job2)
    racks = sorted(st.node(a.node_id).meta["rack"] for a in placed(run(st, job2)))
    assert racks == ["r0", "r0", "r1", "r1", "r2", "r2"]


def _classed(node):
    node.computed_class = node.compute_class()   # as the store sets it when a node registers
    return node


def test_computed_class_groups_nodes_alike_but_for_their_unique_attributes():
    a, b = make_node(1), make_node(2)   # differ only in unique.network.ip-address, id and name
    assert a.compute_class() == b.compute_class()
    assert make_node(3, meta={"rack": "r1"}).compute_class() != a.compute_class()
    assert make_node(4, drivers=("docker",)).compute_class() != a.compute_class()
    assert make_node(5, dc="dc2").compute_class() != a.compute_class()
    assert make_node(6, attrs={"unique.hostname": "x"}).compute_class() == a.compute_class()


@pytest.mark.parametrize("target", ["${node.unique.name}", "${attr.unique.network.ip-address}"])
def test_a_constraint_on_a_unique_target_is_checked_node_by_node_in_one_class(target):
    nodes = [_classed(make_node(i)) for i in range(1, 5)]
    assert len({n.computed_class for n in nodes}) == 1
    wanted = nodes[2]
    value = wanted.name if "name" in target else wanted.attributes["unique.network.ip-address"]
    job = make_job(count=3, constraints=[Constraint(l_target=target, operand="=", r_target=value)])
    res = run(MemoryState(nodes=nodes, jobs=[job]), job)
    allocs = placed(res)
    assert len(allocs) == 3 and {a.node_id for a in allocs} == {wanted.id}


def test_class_wide_checks_are_answered_once_per_class_and_still_filter():
    ok = [_classed(make_node(i, meta={"tier": "web"})) for i in range(1, 4)]
    other = [_classed(make_node(i, meta={"tier": "db"})) for i in range(4, 7)]
    job = make_job(count=6, constraints=[Constraint(l_target="${meta.tier}", operand="=", r_target="web")])
    res = run(MemoryState(nodes=ok + other, jobs=[job]), job)
    assert {a.node_id for a in placed(res)} <= {n.id for n in ok}
    assert len(placed(res)) == 6
