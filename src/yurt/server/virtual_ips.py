"""Virtual IPs of Connect services (Consul's `consul-virtual` tagged address).

Every service with a mesh endpoint (a sidecar's destination, or a Connect Native service) gets
one stable IPv4 address from `connect { virtual_ip_cidr }` (default Consul's 240.0.0.0/4),
assigned the first time one of its sidecars or native instances registers, and stored in the
keyed table "virtual_ips" by service name, so it survives restarts and is shared by every
server. Offsets are counted up from the range's first address, the first one given being
`<network>+1` (240.0.0.1), as Consul's. An address is never reused for another service while
the row exists. `<service>.virtual.yurt` answers it; a transparent proxy maps a connection to it
back to the service (`GET /v1/agent/connect/virtual-ips`).
"""

from __future__ import annotations

import ipaddress

from yurt.errors import ConfigError, Conflict
from yurt.state import StateStore
from yurt.state.writes import Txn
from yurt.structs import VirtualIP

TABLE = "virtual_ips"
DEFAULT_CIDR = "240.0.0.0/4"
TAG = "consul-virtual"   # the tagged address Consul stores the VIP under


def parse_cidr(cidr: str, where: str = "connect { virtual_ip_cidr }") -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f'{where} = "{cidr}" is not an IPv4 CIDR: write e.g. "{DEFAULT_CIDR}"') from None
    if not isinstance(net, ipaddress.IPv4Network) or net.num_addresses < 4:
        raise ConfigError(f'{where} = "{cidr}" must be an IPv4 range of at least 4 addresses, '
                          f'e.g. "{DEFAULT_CIDR}"')
    return net


class VirtualIPs:
    def __init__(self, store: StateStore, cidr: str = DEFAULT_CIDR) -> None:
        self.store = store
        self.network = parse_cidr(cidr)

    def get(self, service: str) -> str:
        row = self.store.keyed_get(TABLE, service)
        return row.ip if isinstance(row, VirtualIP) else ""

    def table(self) -> dict[str, str]:
        """Service name -> virtual IP, every assigned one."""
        return {k: r.ip for k, r in self.store.keyed_list(TABLE) if isinstance(r, VirtualIP)}

    def by_ip(self, ip: str) -> str:
        for name, addr in self.table().items():
            if addr == ip:
                return name
        return ""

    def assign(self, service: str) -> str:
        """The service's virtual IP, assigned now (one store write) if it has none yet."""
        known = self.get(service)
        if known:
            return known

        def build(txn: Txn) -> str:
            row = txn.keyed(TABLE, service)
            if isinstance(row, VirtualIP):
                return row.ip
            used = {r.ip for _, r in txn.keyed_items(TABLE) if isinstance(r, VirtualIP)}
            net = self.network
            base = int(net.network_address)
            for offset in range(1, net.num_addresses - 1):
                ip = str(ipaddress.IPv4Address(base + offset))
                if ip not in used:
                    txn.put_keyed(TABLE, service, VirtualIP(service=service, ip=ip, create_index=txn.index,
                                                            modify_index=txn.index))
                    return ip
            raise Conflict(f"cannot allocate any more unique service virtual IPs in {net}: widen "
                           "connect { virtual_ip_cidr }")
        _, ip = self.store.keyed_write(build)
        return ip
