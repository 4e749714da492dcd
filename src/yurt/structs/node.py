"""Client nodes as the server knows them (Nomad's structs.Node, api/nodes.go)."""

from __future__ import annotations

import hashlib
import json

from typing import Any

from pydantic import ConfigDict, computed_field

from .base import Struct, field
from .duration import Duration
from .times import parse_rfc3339

NODE_INIT = "initializing"
NODE_READY = "ready"
NODE_DOWN = "down"
NODE_DISCONNECTED = "disconnected"

ELIGIBLE = "eligible"
INELIGIBLE = "ineligible"

DRAIN_DRAINING = "draining"
DRAIN_COMPLETE = "complete"
DRAIN_CANCELED = "canceled"

ZERO_TIME = "0001-01-01T00:00:00Z"   # Go's zero time.Time, as Nomad's JSON shows "never"
MAX_NODE_EVENTS = 10                 # Nomad keeps the latest ten events of a node




class DrainSpec(Struct):
    """What an operator asks of a drain (Nomad's DrainSpec)."""

    deadline: Duration = 0             # ns; <0 force now, 0 no deadline, >0 stop what is left then
    ignore_system_jobs: bool = False


class DrainStrategy(Struct):
    """A drain in progress (Nomad's DrainStrategy). Nomad's JSON flattens the DrainSpec fields
    (Deadline, IgnoreSystemJobs) beside ForceDeadline and StartedAt; both spellings are shown."""

    model_config = ConfigDict(**{**Struct.model_config, "extra": "ignore"})

    drain_spec: DrainSpec = field(factory=DrainSpec)
    force_deadline: str = ZERO_TIME    # when what is left is stopped at once; zero: no deadline
    started_at: str = ZERO_TIME

    @computed_field(alias="Deadline")  # type: ignore[prop-decorator]
    @property
    def deadline(self) -> int:
        return self.drain_spec.deadline

    @computed_field(alias="IgnoreSystemJobs")  # type: ignore[prop-decorator]
    @property
    def ignore_system_jobs(self) -> bool:
        return self.drain_spec.ignore_system_jobs

    def force_deadline_ns(self) -> int | None:
        return parse_rfc3339(self.force_deadline)


class DrainMetadata(Struct):
    """The node's latest drain (Nomad's DrainMetadata): status draining, complete or canceled."""

    started_at: str = ZERO_TIME
    updated_at: str = ZERO_TIME
    status: str = ""
    accessor_id: str = field("", json="AccessorID")
    meta: dict[str, str] | None = None


class NodeEvent(Struct):
    """Something that happened to the node (Nomad's NodeEvent), newest last."""

    message: str = ""
    subsystem: str = ""
    details: dict[str, str] | None = None
    timestamp: str = ZERO_TIME
    create_index: int = 0


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


class ClientHostVolumeConfig(Struct):
    """A host volume the client offers (Nomad's Node.HostVolumes value): a host path, maybe read-only."""
    name: str = ""
    path: str = ""
    read_only: bool = False


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
    host_volumes: dict[str, ClientHostVolumeConfig] = field(factory=dict)
    node_resources: NodeResources = field(factory=NodeResources)
    reserved_resources: NodeReservedResources = field(factory=NodeReservedResources)
    status: str = NODE_INIT
    status_description: str = ""
    status_updated_at: int = 0
    scheduling_eligibility: str = ELIGIBLE
    drain: bool = False                # true while drain_strategy is set (Nomad's deprecated Drain)
    drain_strategy: DrainStrategy | None = None
    last_drain: DrainMetadata | None = None
    events: list[NodeEvent] = field(factory=list)
    computed_class: str = ""
    create_index: int = 0
    modify_index: int = 0

    def ready(self) -> bool:
        return self.status == NODE_READY and self.scheduling_eligibility == ELIGIBLE and not self.drain

    def compute_class(self) -> str:
        """Nomad's computed node class: a hash of what feasibility reads that is not unique to
        the node (datacenter, pool, class, attributes and meta but their `unique.` keys, drivers,
        host volumes). Nodes of one class pass or fail a job's checks alike, so the scheduler
        checks a class once (constraints on `unique.` targets are checked per node)."""
        doc = {"dc": self.datacenter, "pool": self.node_pool, "class": self.node_class,
               "attr": {k: v for k, v in self.attributes.items() if not k.startswith("unique.")},
               "meta": {k: v for k, v in self.meta.items() if not k.startswith("unique.")},
               "drivers": {k: (d.detected, d.healthy) for k, d in self.drivers.items()},
               "volumes": {k: v.read_only for k, v in self.host_volumes.items()}}
        digest = hashlib.blake2b(json.dumps(doc, sort_keys=True).encode(), digest_size=8).hexdigest()
        return "v1:" + digest

    def stub(self, resources: bool = False, os: bool = False) -> dict:
        """The row of `/v1/nodes` (Nomad's NodeListStub); `?resources=true` adds NodeResources
        and ReservedResources, `?os=true` the os.name attribute, as Nomad's do."""
        extra: dict[str, Any] = {}
        if resources:
            extra["NodeResources"] = self.node_resources.to_json()
            extra["ReservedResources"] = self.reserved_resources.to_json()
        if os:
            extra["Attributes"] = {"os.name": self.attributes.get("os.name", "")}
        return {**extra,
            "Address": self.attributes.get("unique.network.ip-address", ""),
            "ID": self.id, "Datacenter": self.datacenter, "Name": self.name,
            "NodeClass": self.node_class, "NodePool": self.node_pool,
            "Version": self.attributes.get("nomad.version", ""),
            "Drain": self.drain, "SchedulingEligibility": self.scheduling_eligibility,
            "LastDrain": self.last_drain.to_json() if self.last_drain else None,
            "Status": self.status, "StatusDescription": self.status_description,
            "Drivers": {k: v.to_json() for k, v in self.drivers.items()},
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }
