"""``python -m yurt.lab.sweep DATA_DIR``: run inside a lab host's network namespace once its
processes are gone, it removes what that host's agent set up, with the client's own clean-up
code: its containers, its allocations' networks (CNI DEL, namespaces, leases, iptables rules)
and their cgroups. Nothing of another agent is touched: networks are owned by data dir."""

from __future__ import annotations

import sys
from pathlib import Path


def sweep(agent_data_dir: Path) -> list[str]:
    from yurt.client import alloc_state, cgroups
    from yurt.client.drivers.docker import DockerDriver
    from yurt.client.network import reconcile_networks
    from yurt.client.network import state as netstate

    client_dir = agent_data_dir / "client"
    done: list[str] = []
    alloc_ids = set(alloc_state.persisted_alloc_ids(client_dir)) | set(netstate.persisted_ids(client_dir))
    done += DockerDriver(owner=str(client_dir)).remove_orphans(set())
    done += reconcile_networks(client_dir, set())
    root = cgroups.ROOT
    parents = [root / cgroups.V2_PARENT] + [root / c / cgroups.V1_PARENT for c in cgroups.V1_CONTROLLERS]
    for parent in parents:
        for alloc_id in alloc_ids:
            for cg in parent.glob(f"{alloc_id}.*") if parent.is_dir() else []:
                try:
                    cg.rmdir()
                    done.append(f"cgroup {cg} removed")
                except OSError:
                    pass
    return done


if __name__ == "__main__":
    for line in sweep(Path(sys.argv[1])):
        print(line)
