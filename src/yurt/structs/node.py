"""Client nodes as the server knows them (Nomad's structs.Node, api/nodes.go)."""

from __future__ import annotations

from .base import Struct, field

NODE_INIT = "initializing"
NODE_READY = "ready"
NODE_DOWN = "down"
NODE_DISCONNECTED = "disconnected"

ELIGIBLE = "eligible"
INELIGIBLE = "ineligible"


class DriverInfo(Struct):
    attributes: dict[str, str] | None = None
    detected: bool = False
    healthy: bool = False
    health_description: str = ""
    update_time: str = ""


class NodeCpuResources(Struct):
    cpu_shares: int = 0
    total_cpu_cores: int = 0


class NodeMemoryResources(Struct):
    memory_mb: int = field(0, json="MemoryMB")


class NodeDiskResources(Struct):
    disk_mb: int = field(0, json="DiskMB")


class NodeNetworkAddress(Struct):
    """One address of a node network; ``alias`` is the host network's name ("default": the node address)."""

    family: str = "ipv4"
    alias: str = "default"
    address: str = ""
    reserved_ports: str = ""
    gateway: str = ""


class NodeNetworkResource(Struct):
    mode: str = "host"
    device: str = ""
    mac_address: str = ""
    speed: int = 0
    addresses: list[NodeNetworkAddress] = field(factory=list)


class NodeResources(Struct):
    cpu: NodeCpuResources = field(factory=NodeCpuResources)
    memory: NodeMemoryResources = field(factory=NodeMemoryResources)
    disk: NodeDiskResources = field(factory=NodeDiskResources)
    node_networks: list[NodeNetworkResource] = field(factory=list)
    min_dynamic_port: int = 20000
    max_dynamic_port: int = 32000

    def host_network_address(self, alias: str) -> str | None:
        """The node's address in host network ``alias``; None when the node has no such network."""
        for net in self.node_networks:
            for a in net.addresses:
                if a.alias == alias:
                    return a.address
        return None


class NodeReservedNetworkResources(Struct):
    reserved_host_ports: str = ""


class NodeReservedResources(Struct):
    cpu: NodeCpuResources = field(factory=NodeCpuResources)
    memory: NodeMemoryResources = field(factory=NodeMemoryResources)
    disk: NodeDiskResources = field(factory=NodeDiskResources)
    networks: NodeReservedNetworkResources = field(factory=NodeReservedNetworkResources)


class Node(Struct):
    id: str = field("", json="ID")
    secret_id: str = field("", json="SecretID")
    name: str = ""
    datacenter: str = "dc1"
    node_pool: str = "default"
    node_class: str = ""
    http_addr: str = field("", json="HTTPAddr")
    attributes: dict[str, str] = field(factory=dict)
    meta: dict[str, str] = field(factory=dict)
    drivers: dict[str, DriverInfo] = field(factory=dict)
    node_resources: NodeResources = field(factory=NodeResources)
    reserved_resources: NodeReservedResources = field(factory=NodeReservedResources)
    status: str = NODE_INIT
    status_description: str = ""
    status_updated_at: int = 0
    scheduling_eligibility: str = ELIGIBLE
    drain: bool = False
    computed_class: str = ""
    create_index: int = 0
    modify_index: int = 0

    def ready(self) -> bool:
        return self.status == NODE_READY and self.scheduling_eligibility == ELIGIBLE and not self.drain

    def stub(self) -> dict:
        """The row of `/v1/nodes` (Nomad's NodeListStub)."""
        return {
            "Address": self.attributes.get("unique.network.ip-address", ""),
            "ID": self.id, "Datacenter": self.datacenter, "Name": self.name,
            "NodeClass": self.node_class, "NodePool": self.node_pool,
            "Version": self.attributes.get("nomad.version", ""),
            "Drain": self.drain, "SchedulingEligibility": self.scheduling_eligibility,
            "Status": self.status, "StatusDescription": self.status_description,
            "Drivers": {k: v.to_json() for k, v in self.drivers.items()},
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }
