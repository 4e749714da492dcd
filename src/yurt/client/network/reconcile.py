"""Cleaning up the networks of allocations this node no longer runs (after a crash, a reboot,
or an agent that was killed before it could tear down).

`reconcile_networks(data_dir, keep_ids)` is called once at client start with the IDs of the
allocations the agent still has. For every other allocation it removes, in this order:
1. networks with a state file here: CNI DEL with the stored config and result, namespace, state;
2. addresses the host-local IPAM still holds for network "yurt" (``/var/run/cni/yurt/<ip>``, or
   the agent's namespace's own directory, see ``bridge.ipam_data_dir``):
   CNI DEL with the bridge conflist, which also drops portmap's chains, then the lease files;
3. namespaces named like an allocation ID with no state here (their veth goes with them);
4. iptables rules whose comment names the allocation, CNI-FORWARD rules for its address, and the
   CNI chains only they jumped to.
Allocations whose live state belongs to another agent on this machine are left alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from . import bridge, cni, netns, rules
from . import state as netstate
from .alloc_network import teardown

log = logging.getLogger(__name__)


def ipam_leases(network: str = bridge.NETWORK_NAME, data_dir: str | None = None) -> dict[str, str]:
    """address -> container ID, from host-local's lease files (this namespace's by default)."""
    out: dict[str, str] = {}
    directory = Path(data_dir or bridge.ipam_data_dir()) / network  # host-local keeps <dataDir>/<network>/<ip>
    if not directory.is_dir():
        return out
    for f in directory.iterdir():
        if f.name.startswith(("last_reserved_ip", "lock")) or f.name.startswith("."):
            continue
        try:
            first = f.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            continue
        out[f.name] = first
    return out


def reconcile_networks(data_dir: str | os.PathLike, keep_ids: Iterable[str], *,
                       cni_paths: tuple[str, ...] = cni.DEFAULT_CNI_PATHS) -> list[str]:
    """Remove the network leftovers of every allocation not in ``keep_ids``; what was removed."""
    keep = set(keep_ids)
    done: list[str] = []

    def foreign(alloc_id: str) -> bool:
        return alloc_id in keep or netstate.owned_elsewhere(data_dir, alloc_id)

    stale_ips: set[str] = set()
    stale_ids: set[str] = set()
    for alloc_id in netstate.persisted_ids(data_dir):
        if alloc_id in keep:
            continue
        st = netstate.load(data_dir, alloc_id)
        if st is None:
            netstate.delete(data_dir, alloc_id)
            continue
        errors = teardown(data_dir, st)
        stale_ids.add(alloc_id)
        if st.address:
            stale_ips.add(st.address)
        done.append(f"network of allocation {alloc_id} torn down" + (f" ({'; '.join(errors)})" if errors else ""))

    leases = ipam_leases()
    for address, alloc_id in leases.items():
        if not netns.UUID_RE.match(alloc_id) or foreign(alloc_id):
            continue
        stale_ids.add(alloc_id)
        stale_ips.add(address)
        runtime = cni.Runtime(container_id=alloc_id, netns=netns.path(alloc_id), paths=cni_paths)
        cni.del_list(bridge.conflist(), runtime, None)  # frees the lease, portmap and masquerade rules
        lease = Path(bridge.ipam_data_dir()) / bridge.NETWORK_NAME / address
        try:
            lease.unlink()
        except FileNotFoundError:
            pass
        done.append(f"address {address} of allocation {alloc_id} released")

    for name in netns.uuid_names():
        if foreign(name) or netstate.load(data_dir, name) is not None:
            continue
        try:
            netns.delete(name)
            stale_ids.add(name)
            done.append(f"network namespace {name} deleted")
        except netns.NetnsError as e:
            done.append(f"network namespace {name}: {e}")

    stale_ips -= {address for address, alloc_id in ipam_leases().items() if foreign(alloc_id)}
    # rules naming an allocation we do not keep (and that no other agent here owns)
    try:
        ruleset = rules.iptables.load()
    except rules.iptables.IptablesError:
        ruleset = None
    if ruleset is not None:
        for rule in ruleset.rules:
            stale_ids.update(i for i in rules.comment_ids(rule) if not foreign(i))
        stale_ids = {i for i in stale_ids if not foreign(i)}
        done += rules.purge(stale_ids, stale_ips, ruleset)
    for alloc_id in netstate.owned_ids():  # markers of networks that are gone
        if not foreign(alloc_id) and netstate.load(data_dir, alloc_id) is None:
            netstate.forget_owner(alloc_id)
    for line in done:
        log.info("network reconcile: %s", line)
    return done
