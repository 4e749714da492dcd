"""The "bridge" network: Nomad's generated CNI conflist, adapted, and its iptables admin chain."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from . import iptables

BRIDGE_NAME = "yurt"
NETWORK_NAME = "yurt"
SUBNET = "172.26.64.0/20"
ADMIN_CHAIN = "YURT-ADMIN"
IPAM_DATA_DIR = "/var/run/cni"
PLUGINS = ("loopback", "bridge", "firewall", "portmap")

_admin_lock = threading.Lock()


def conflist(*, bridge: str = BRIDGE_NAME, subnet: str = SUBNET, name: str = NETWORK_NAME,
             admin_chain: str = ADMIN_CHAIN, hairpin: bool = True) -> dict[str, Any]:
    """The network list for bridge mode.

    hairpinMode is on (Nomad's default is off) so a group reaches its own host ports.
    """
    return {
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {"type": "loopback"},
            {"type": "bridge", "bridge": bridge, "ipMasq": True, "isGateway": True, "forceAddress": True,
             "hairpinMode": hairpin,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": IPAM_DATA_DIR}},
            {"type": "firewall", "backend": "iptables", "iptablesAdminChainName": admin_chain},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def gateway(subnet: str = SUBNET) -> str:
    """The bridge's own address: host-local gives the gateway the subnet's first address."""
    return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))


def ensure_admin_chain(*, bridge: str = BRIDGE_NAME, subnet: str = SUBNET, chain: str = ADMIN_CHAIN) -> None:
    """The filter chain the firewall plugin jumps to, accepting traffic into the bridge's subnet.

    Idempotent: the chain is created once and the rule appended only when it is not there, so
    rules an administrator added to the chain keep their place.
    """
    with _admin_lock:
        iptables.ensure_chain("filter", chain)
        iptables.ensure_rule("filter", chain, ["-o", bridge, "-d", subnet, "-j", "ACCEPT"])
