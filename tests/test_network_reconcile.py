"""Reconciliation at client start: the network leftovers of allocations the agent no longer has
(after a crash) go away; everything else — kept allocations, other agents' allocations, an
administrator's rules — stays."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from yurt.client import AllocRunner
from yurt.client.network import netns, reconcile_networks
from yurt.client.network import state as netstate
from yurt.client.network.network_hook import NetworkHook

from .test_client_util import DRIVERS
from .test_network_util import network_lock  # noqa: F401 - a fixture
from .test_network_util import (bridge_alloc, bridge_veths, free_port, host_veth, iptables_lines, leases,
                                mentions, needs_netns, other_allocs, sh)

pytestmark = [needs_netns, pytest.mark.usefixtures("network_lock")]
FOREIGN_CHAIN = "YURT-TEST-FOREIGN"
FOREIGN_RULE = ["-s", "10.99.0.0/16", "-m", "comment", "--comment", "admin rule: keep me", "-j", "ACCEPT"]


@pytest.fixture
def foreign_rule():
    subprocess.run(["iptables", "-w", "-N", FOREIGN_CHAIN], capture_output=True)
    subprocess.run(["iptables", "-w", "-A", FOREIGN_CHAIN, *FOREIGN_RULE], check=True)
    yield
    subprocess.run(["iptables", "-w", "-F", FOREIGN_CHAIN], capture_output=True)
    subprocess.run(["iptables", "-w", "-X", FOREIGN_CHAIN], capture_output=True)


def _network(data_dir) -> tuple[str, netstate.NetworkState, NetworkHook, AllocRunner]:
    """An allocation whose network is set up and whose runner then 'crashes' (no teardown)."""
    alloc = bridge_alloc([sh("t", "sleep 600")], [("http", free_port(), 8080)])
    runner = AllocRunner(alloc, data_dir=data_dir, drivers=DRIVERS)
    hook = NetworkHook()
    hook.prerun(runner.context)
    st = netstate.load(data_dir, alloc.id)
    assert st is not None and netns.exists(alloc.id)
    return alloc.id, st, hook, runner


def _gone(alloc_id: str, st: netstate.NetworkState) -> None:
    assert not netns.exists(alloc_id)
    veth = host_veth(st.result)
    assert veth and not Path(f"/sys/class/net/{veth}").exists() and veth not in bridge_veths()
    assert mentions(iptables_lines(), alloc_id, f"{st.address}/32") == []
    assert st.address not in leases()


def _there(alloc_id: str, st: netstate.NetworkState) -> None:
    assert netns.exists(alloc_id)
    assert host_veth(st.result) in bridge_veths()
    assert mentions(iptables_lines(), alloc_id) and mentions(iptables_lines(), f"{st.address}/32")
    assert leases().get(st.address) == alloc_id


def _of(line: str, alloc_id: str, address: str, lines: set[str]) -> bool:
    """Does this iptables-save line belong to the allocation (its id, its address, its chains)?"""
    chains = {ln.split(" -j ")[-1].split()[0] for ln in lines if alloc_id in ln and " -j " in ln}
    chains = {c for c in chains if c.startswith("CNI-") and not c.startswith("CNI-HOSTPORT")}
    return (alloc_id in line or f"{address}/32" in line or f"{address}:" in line
            or any(line.startswith((f"-A {c} ", f":{c} ")) for c in chains))


def _others(keep: set[str]) -> set[str]:
    """Namespaces of other agents' allocations that exist right now (tests running beside us)."""
    return keep | {n for n in netns.uuid_names() if netstate.owner(n)}


def test_crashed_allocation_is_cleaned_and_the_rest_kept(tmp_path, foreign_rule):
    crashed, st, _, _ = _network(tmp_path)
    kept, kept_st, kept_hook, kept_runner = _network(tmp_path)
    try:
        before = iptables_lines()
        assert mentions(before, crashed)
        done = reconcile_networks(tmp_path, {kept})
        assert any(crashed in line for line in done)
        _gone(crashed, st)
        assert netstate.load(tmp_path, crashed) is None
        assert not (netstate.OWNERS_DIR / crashed).exists()
        _there(kept, kept_st)                                   # a kept allocation is untouched
        after = iptables_lines()
        assert after <= before                                  # only removals...
        assert {line for line in before - after if not _of(line, crashed, st.address, before)
                and not other_allocs(line, {crashed, kept})} == set()
        assert any("admin rule: keep me" in line for line in after)
    finally:
        kept_hook.destroy(kept_runner.context)
    _gone(kept, kept_st)


def test_without_its_state_file_the_leftovers_are_found_and_removed(tmp_path, foreign_rule):
    alloc_id, st, _, _ = _network(tmp_path / "old")
    netstate.state_path(tmp_path / "old", alloc_id).unlink()      # the data dir was wiped
    reconcile_networks(tmp_path / "new", _others(set()) - {alloc_id})
    _gone(alloc_id, st)
    assert not (netstate.OWNERS_DIR / alloc_id).exists()
    assert any("admin rule: keep me" in line for line in iptables_lines())


def test_another_agents_allocations_are_left_alone(tmp_path):
    theirs, st, hook, runner = _network(tmp_path / "agent-b")
    try:
        reconcile_networks(tmp_path / "agent-a", set())
        _there(theirs, st)
    finally:
        hook.destroy(runner.context)
    _gone(theirs, st)


def test_reconcile_with_nothing_to_do_changes_nothing(tmp_path, foreign_rule):
    before = iptables_lines()
    assert reconcile_networks(tmp_path, _others(set())) == []
    assert iptables_lines() == before
