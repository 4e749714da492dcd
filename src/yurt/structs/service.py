"""Services, checks and Consul Connect blocks (Nomad's api/services.go and api/consul.go)."""

from __future__ import annotations

from typing import Any

from .base import Struct, field
from .duration import Duration
from .resources import Resources
from .policies import LogConfig


class CheckRestart(Struct):
    limit: int = 0
    grace: Duration | None = None
    ignore_warnings: bool = False


class ServiceCheck(Struct):
    name: str = ""
    type: str = ""
    command: str = ""
    args: list[str] | None = None
    path: str = ""
    protocol: str = ""
    port_label: str = field("", hcl="port")
    expose: bool = False
    address_mode: str = ""
    advertise: str = ""
    interval: Duration = 0
    timeout: Duration = 0
    initial_status: str = ""
    notes: str = ""
    tls_server_name: str = field("", json="TLSServerName")
    tls_skip_verify: bool = field(False, json="TLSSkipVerify")
    header: dict[str, list[str]] | None = None
    method: str = ""
    body: str = ""
    check_restart: CheckRestart | None = None
    grpc_service: str = field("", json="GRPCService")
    grpc_use_tls: bool = field(False, json="GRPCUseTLS")
    task_name: str = field("", hcl="task")
    success_before_passing: int = 0
    failures_before_critical: int = 0
    failures_before_warning: int = 0
    on_update: str = ""


class MeshGateway(Struct):
    mode: str = ""


class ConsulUpstream(Struct):
    destination_name: str = ""
    destination_namespace: str = ""
    destination_peer: str = ""
    destination_partition: str = ""
    destination_type: str = ""
    local_bind_port: int = 0
    local_bind_address: str = ""
    local_bind_socket_path: str = ""
    local_bind_socket_mode: str = ""
    datacenter: str = ""
    mesh_gateway: MeshGateway | None = None
    config: dict[str, Any] | None = None


class ConsulExposePath(Struct):
    path: str = ""
    protocol: str = ""
    local_path_port: int = 0
    listener_port: str = ""


class ConsulExposeConfig(Struct):
    paths: list[ConsulExposePath] | None = field(None, hcl="path")


class ConsulTransparentProxy(Struct):
    uid: str = field("", json="UID")
    outbound_port: int = 0
    exclude_inbound_ports: list[str] | None = None
    exclude_outbound_ports: list[int] | None = None
    exclude_outbound_cidrs: list[str] | None = field(None, json="ExcludeOutboundCIDRs")
    exclude_uids: list[str] | None = field(None, json="ExcludeUIDs")
    no_dns: bool = field(False, json="NoDNS")


class ConsulProxy(Struct):
    local_service_address: str = ""
    local_service_port: int = 0
    expose: ConsulExposeConfig | None = None
    upstreams: list[ConsulUpstream] | None = None
    transparent_proxy: ConsulTransparentProxy | None = None
    config: dict[str, Any] | None = None


class ConsulSidecarService(Struct):
    tags: list[str] | None = None
    port: str = ""
    proxy: ConsulProxy | None = None
    disable_default_tcp_check: bool = field(False, json="DisableDefaultTCPCheck")
    meta: dict[str, str] | None = None


class SidecarTask(Struct):
    name: str = ""
    driver: str = ""
    user: str = ""
    config: dict[str, Any] | None = None
    env: dict[str, str] | None = None
    resources: Resources | None = None
    meta: dict[str, str] | None = None
    kill_timeout: Duration | None = None
    log_config: LogConfig | None = field(None, hcl="logs")
    shutdown_delay: Duration | None = None
    kill_signal: str = ""


class ConsulConnect(Struct):
    native: bool = False
    sidecar_service: ConsulSidecarService | None = None
    sidecar_task: SidecarTask | None = None
    gateway: dict[str, Any] | None = None

    @property
    def has_sidecar(self) -> bool:
        return self.sidecar_service is not None


class ServiceWeights(Struct):
    passing: int = 1
    warning: int = 1


class Service(Struct):
    name: str = ""
    task_name: str = field("", hcl="task")
    port_label: str = field("", hcl="port")
    address_mode: str = ""
    address: str = ""
    tags: list[str] | None = None
    canary_tags: list[str] | None = None
    enable_tag_override: bool = False
    checks: list[ServiceCheck] | None = field(None, hcl="check")
    check_restart: CheckRestart | None = None
    connect: ConsulConnect | None = None
    meta: dict[str, str] | None = None
    canary_meta: dict[str, str] | None = None
    tagged_addresses: dict[str, str] | None = None
    on_update: str = ""
    provider: str = ""
    cluster: str = ""
    kind: str = ""
    weights: ServiceWeights | None = None

    @property
    def has_sidecar(self) -> bool:
        return self.connect is not None and self.connect.has_sidecar

    @property
    def is_native(self) -> bool:
        """`connect { native = true }`: the task joins the mesh itself (yurt.connect)."""
        return self.connect is not None and self.connect.native
