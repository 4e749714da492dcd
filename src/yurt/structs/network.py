"""Networks and ports of a task group (Nomad's NetworkResource and Port)."""

from __future__ import annotations

from .base import Struct, field


class Port(Struct):
    label: str = field("", hcl="label")
    value: int = field(0, hcl="static")
    to: int = 0
    host_network: str = field("", hcl="host_network")
    ignore_collision: bool = False


class DNSConfig(Struct):
    servers: list[str] | None = None
    searches: list[str] | None = None
    options: list[str] | None = None


class CNIConfig(Struct):
    args: dict[str, str] | None = None


class NetworkResource(Struct):
    mode: str = ""
    device: str = ""
    cidr: str = field("", json="CIDR")
    ip: str = field("", json="IP")
    hostname: str = ""
    mbits: int = field(0, json="MBits")
    dns: DNSConfig | None = field(None, json="DNS")
    reserved_ports: list[Port] | None = field(None, hcl="port")
    dynamic_ports: list[Port] | None = field(None, hcl="port")
    cni: CNIConfig | None = field(None, json="CNI")

    def ports(self) -> list[Port]:
        """Every port of the network, static ones first, in the order they were written."""
        return list(self.reserved_ports or []) + list(self.dynamic_ports or [])

    @property
    def effective_mode(self) -> str:
        return self.mode or "host"
