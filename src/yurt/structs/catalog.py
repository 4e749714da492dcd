"""The service catalog in Consul's shapes: registered service instances and their health checks.

One `ServiceRegistration` is one service instance on one node (Consul's agent/catalog service);
its checks travel with it. `Kind` is "" for an application and "connect-proxy" for a sidecar,
whose `Proxy` names the service it fronts. `AllocID` ties an instance to the allocation that
registered it, so the server can remove it when the allocation stops or its node goes down.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from .base import Struct, field

CHECK_PASSING = "passing"
CHECK_WARNING = "warning"
CHECK_CRITICAL = "critical"
CHECK_STATES = (CHECK_PASSING, CHECK_WARNING, CHECK_CRITICAL)

KIND_CONNECT_PROXY = "connect-proxy"
KIND_INGRESS_GATEWAY = "ingress-gateway"
KIND_TERMINATING_GATEWAY = "terminating-gateway"
SIDECAR_SUFFIX = "-sidecar-proxy"


class Lenient(Struct):
    """Input from clients may carry fields Yurt does not model: they are ignored, not refused."""

    model_config = ConfigDict(**{**Struct.model_config, "extra": "ignore"})


class HealthCheck(Lenient):
    node: str = ""
    check_id: str = field("", json="CheckID")
    name: str = ""
    status: str = CHECK_CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = field("", json="ServiceID")
    service_name: str = ""
    service_tags: list[str] = field(factory=list)
    type: str = ""                      # tcp, http, grpc, script, ttl, alias, ""
    interval: str = ""
    timeout: str = ""
    tcp: str = field("", json="TCP")
    http: str = field("", json="HTTP")
    method: str = ""
    ttl: str = field("", json="TTL")
    alias_service: str = ""
    args: list[str] | None = None
    create_index: int = 0
    modify_index: int = 0

    def public(self) -> dict[str, Any]:
        """The check as Consul's health endpoints show it."""
        return {"Node": self.node, "CheckID": self.check_id, "Name": self.name, "Status": self.status,
                "Notes": self.notes, "Output": self.output, "ServiceID": self.service_id,
                "ServiceName": self.service_name, "ServiceTags": list(self.service_tags),
                "Type": self.type, "Interval": self.interval, "Timeout": self.timeout,
                "Definition": {k: v for k, v in (("TCP", self.tcp), ("HTTP", self.http),
                                                 ("TTL", self.ttl), ("AliasService", self.alias_service))
                               if v},
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


class CatalogNode(Lenient):
    """A node as Consul's catalog knows it beyond Yurt's own nodes: an external node registered
    through `/v1/catalog/register` (by name), or the node-level checks (no ServiceID) of an
    agent's node (by the node's ID). Stored in the keyed table "catalog_nodes"."""

    node: str = ""
    id: str = field("", json="ID")
    address: str = ""
    tagged_addresses: dict[str, str] = field(factory=dict)
    meta: dict[str, str] = field(factory=dict)
    checks: list[HealthCheck] = field(factory=list)
    external: bool = False              # registered through the catalog (no agent runs it)
    create_index: int = 0
    modify_index: int = 0


class UpstreamConfig(Lenient):
    destination_type: str = "service"
    destination_name: str = ""
    destination_namespace: str = ""
    datacenter: str = ""
    local_bind_address: str = "127.0.0.1"
    local_bind_port: int = 0
    config: dict[str, Any] = field(factory=dict)


class ConnectProxyConfig(Lenient):
    destination_service_name: str = ""
    destination_service_id: str = field("", json="DestinationServiceID")
    local_service_address: str = "127.0.0.1"
    local_service_port: int = 0
    mode: str = ""
    config: dict[str, Any] = field(factory=dict)
    upstreams: list[UpstreamConfig] = field(factory=list)
    expose: dict[str, Any] = field(factory=dict)
    transparent_proxy: dict[str, Any] = field(factory=dict)   # {"OutboundListenerPort": 15001} (Mode "transparent")


class ServiceRegistration(Lenient):
    id: str = field("", json="ID")
    service: str = ""                   # the service name ("Name" when registering)
    kind: str = ""
    address: str = ""
    port: int = 0
    tags: list[str] = field(factory=list)
    meta: dict[str, str] = field(factory=dict)
    proxy: ConnectProxyConfig | None = None
    connect: dict[str, Any] = field(factory=dict)
    weights: dict[str, int] = field(factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    namespace: str = "default"
    datacenter: str = "dc1"
    node: str = ""                      # node name
    node_id: str = field("", json="NodeID")
    node_address: str = ""
    alloc_id: str = field("", json="AllocID")
    tagged_addresses: dict[str, Any] = field(factory=dict)   # {"lan": {"Address", "Port"}, ...}
    locality: dict[str, str] | None = None                 # {"Region", "Zone"}
    checks: list[HealthCheck] = field(factory=list)
    create_index: int = 0
    modify_index: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """Service IDs are unique per node (agent), as in Consul."""
        return (self.node_id or self.node, self.id)

    @property
    def connect_destination(self) -> str:
        """The service this instance serves mesh traffic for: a proxy's destination, a
        Connect-native service's own name, otherwise ""."""
        if self.kind == KIND_CONNECT_PROXY and self.proxy is not None:
            return self.proxy.destination_service_name
        if self.connect.get("Native"):
            return self.service
        return ""

    @property
    def connect_destinations(self) -> list[str]:
        """Every service this instance serves mesh traffic for: `connect_destination`, or for a
        terminating gateway each external service it links (Proxy.Config["Gateway"], the
        gateway's config entry), as Consul's /v1/health/connect/<service> lists the gateway."""
        if self.kind == KIND_TERMINATING_GATEWAY and self.proxy is not None:
            entry = self.proxy.config.get("Gateway") or {}
            return [str(s.get("Name")) for s in entry.get("Services") or []
                    if isinstance(s, dict) and s.get("Name")]
        dest = self.connect_destination
        return [dest] if dest else []

    def agent_view(self) -> dict[str, Any]:
        """`/v1/agent/services` as Consul's agent answers it: the keys Consul leaves out when
        empty (omitempty in its AgentService) are left out here too, and the catalog's indexes,
        which an agent's local services do not carry."""
        out = self.agent_json()
        for k in ("Kind", "Proxy", "Connect", "AllocID"):
            if not out.get(k):
                out.pop(k, None)
        for k in ("CreateIndex", "ModifyIndex", "ContentHash"):   # the agent's local state has none
            out.pop(k, None)
        if out.get("Namespace") == "default":   # an Enterprise field: OSS Consul never sends it
            out.pop("Namespace")
        return out

    def agent_json(self) -> dict[str, Any]:
        """`/v1/agent/service(s)` shape."""
        return {"ID": self.id, "Service": self.service, "Kind": self.kind, "Tags": list(self.tags),
                "Meta": dict(self.meta), "Port": self.port, "Address": self.address,
                "TaggedAddresses": dict(self.tagged_addresses), "Weights": dict(self.weights),
                "EnableTagOverride": self.enable_tag_override,
                "Proxy": self.proxy.to_json() if self.proxy else None,
                "Connect": dict(self.connect), "Datacenter": self.datacenter,
                "Namespace": self.namespace, "AllocID": self.alloc_id,
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
                "ContentHash": f"{self.modify_index:016x}",
                **({"Locality": dict(self.locality)} if self.locality else {})}


class VirtualIP(Struct):
    """The stable virtual IP of a Connect service (Consul's `consul-virtual` tagged address),
    stored in the keyed table "virtual_ips" by service name: `<service>.virtual.yurt` answers it
    and a transparent proxy maps a connection to it back to the service."""

    service: str = ""
    ip: str = field("", json="IP")
    create_index: int = 0
    modify_index: int = 0
