"""Group networking: network namespaces set up through the real CNI plugins.

Modules: `netns` (named namespaces), `cni` (running plugins per the CNI spec), `bridge` (the
"bridge" conflist and its admin chain), `portmap` (host port mappings and the in-use check),
`iptables` and `rules` (reading and removing the plugins' rules), `state` (what was set up, on
disk), `alloc_network` (setup/teardown of one allocation), `network_hook` (the alloc hook),
`reconcile` (cleanup at client start).
"""

from .alloc_network import NetworkError, NetworkSpec, setup, teardown, teardown_alloc
from .network_hook import NetworkHook, network_status
from .reconcile import reconcile_networks

__all__ = ["NetworkError", "NetworkHook", "NetworkSpec", "network_status", "reconcile_networks", "setup",
           "teardown", "teardown_alloc"]
