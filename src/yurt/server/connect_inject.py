"""Injecting the sidecar proxy task for each `connect { sidecar_service {} }` (Nomad's connect mutator).

For a group service with a sidecar, the group gets a prestart sidecar task
`connect-proxy-<service>` (Kind `connect-proxy:<service>`) that runs Yurt's own proxy, a
dynamic port `connect-proxy-<service>` with `to = -1` for its public mTLS listener, and one
`connect-proxy-<service>-metrics` (also `to = -1`) where it serves its Prometheus metrics (the
client registers that port in the sidecar's catalog entry, Meta `metrics_port`). A
`sidecar_task` block is merged over the injected task. Running it twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from yurt.structs import (ConsulConnect, ConsulProxy, Job, LogConfig, NetworkResource, Port, Resources,
                          Service, SidecarTask, Task, TaskGroup, TaskLifecycle)
from yurt.structs.duration import SECOND
from yurt.structs.gateway import INGRESS, TERMINATING, gateway_entry, gateway_kind

PROXY_DRIVER = "connect-proxy"
# Much less than Nomad's 250 MHz / 128 MB for Envoy: Yurt's proxy is small (see bench/proxy.py).
PROXY_CPU = 50
PROXY_MEMORY = 64


def clean(label: str) -> str:
    """Nomad's env-var cleaning for a port label (`connect-proxy-count-api` -> `connect_proxy_count_api`)."""
    out = "".join(c if c.isalnum() or c in "_." else "_" for c in label)
    return "_" + out[1:] if out[:1].isdigit() else out


def metrics_port_label(service: str) -> str:
    """The dynamic port a service's sidecar serves its metrics on (`GET /metrics`)."""
    return f"connect-proxy-{service}-metrics"


def inject_sidecars(job: Job) -> Job:
    for group in job.task_groups or []:
        if not group.networks:
            continue  # validation reports the missing network
        for service in group.services or []:
            connect = service.connect
            if service.has_sidecar and connect is not None and connect.sidecar_service is not None:
                _inject(group, group.networks[0], service, connect)
            elif connect is not None and gateway_kind(connect.gateway) in (INGRESS, TERMINATING):
                _inject_gateway(group, group.networks[0], service, connect.gateway or {})
    return job


def gateway_warnings(job: Job, known: Callable[[str], bool]) -> list[str]:
    """What `job run` warns about a gateway: a service an ingress listener routes to, or a
    terminating gateway links, that neither the catalog nor any job knows (`known`). Not an
    error: it may be registered later; until then the gateway answers 503 / closes, naming it."""
    out: list[str] = []
    for group in job.task_groups or []:
        for service in group.services or []:
            gateway = service.connect.gateway if service.connect is not None else None
            kind = gateway_kind(gateway)
            if kind not in (INGRESS, TERMINATING):
                continue
            entry, _ = gateway_entry(service.name, gateway or {})
            where = f'group "{group.name}" > service "{service.name}" > connect > gateway'
            if kind == INGRESS:
                for lst in entry.get("Listeners") or []:
                    for s in lst.get("Services") or []:
                        if s.get("Name") and not known(s["Name"]):
                            out.append(f'{where}: listener {lst.get("Port")} routes to service "{s["Name"]}", '
                                       "which the catalog does not know yet: until it is registered the "
                                       "gateway answers 503 (http) or closes the connection (tcp)")
            else:
                for s in entry.get("Services") or []:
                    if s.get("Name") and not known(s["Name"]):
                        out.append(f'{where}: service "{s["Name"]}" is not registered in the catalog: register '
                                   "the external service with PUT /v1/catalog/register (Node, Address, "
                                   "Service { Service, Port }) so the gateway knows where to forward")
    return out


def gateway_task_prefix(kind: str) -> str:
    """`connect-ingress` or `connect-terminating` (Nomad's task names and kinds)."""
    return "connect-" + kind.split("-")[0]


def _inject_gateway(group: TaskGroup, network: NetworkResource, service: Service, gateway: dict) -> None:
    """Nomad's gateway task: `connect-ingress-<service>` / `connect-terminating-<service>` (kind
    `connect-ingress:<service>` ...) running Yurt's proxy in a gateway mode, its config the
    gateway block as Consul's config entry (structs/gateway.py). An ingress gateway binds its
    listeners' ports itself (the group network maps them to the host); a terminating gateway
    gets a dynamic port `connect-terminating-<service>` (to = -1) for the mesh's mTLS."""
    entry, _ = gateway_entry(service.name, gateway)
    prefix = gateway_task_prefix(entry["Kind"])
    kind = f"{prefix}:{service.name}"
    if any(t.kind == kind for t in group.tasks or []):
        return
    config: dict = {"service": service.name, "gateway": entry,
                    "connect_timeout_ms": entry.get("ConnectTimeoutMs") or 5000}
    if entry["Kind"] == TERMINATING:
        label = f"{prefix}-{service.name}"
        if not any(p.label == label for p in network.ports()):
            network.dynamic_ports = list(network.dynamic_ports or []) + [Port(label=label, to=-1,
                                                                              host_network="default")]
        config["listen"] = f"0.0.0.0:${{NOMAD_PORT_{clean(label)}}}"
    name = f"{prefix}-{service.name}"
    if group.task(name) is not None:
        name = f"{name}-{uuid.uuid4().hex[:6]}"
    group.tasks = list(group.tasks or []) + [Task(
        name=name, driver=PROXY_DRIVER, kind=kind, config=config,
        resources=Resources(cpu=PROXY_CPU, cores=0, memory_mb=PROXY_MEMORY, memory_max_mb=0, disk_mb=0, secrets_mb=0),
        restart_policy=group.restart_policy, kill_timeout=5 * SECOND, shutdown_delay=0,
        log_config=LogConfig(max_files=2, max_file_size_mb=2, disabled=False))]


def _inject(group: TaskGroup, network: NetworkResource, service: Service, connect: ConsulConnect) -> None:
    kind = f"connect-proxy:{service.name}"
    sidecar = connect.sidecar_service
    assert sidecar is not None, "inject_sidecars passes services with a sidecar_service"
    label = sidecar.port or f"connect-proxy-{service.name}"
    metrics_label = metrics_port_label(service.name)
    for want in (label, metrics_label):
        if not any(p.label == want for p in network.ports()):
            network.dynamic_ports = list(network.dynamic_ports or []) + [Port(label=want, to=-1,
                                                                              host_network="default")]
    if any(t.kind == kind for t in group.tasks or []):
        return
    name = f"connect-proxy-{service.name}"
    if group.task(name) is not None:
        name = f"{name}-{uuid.uuid4().hex[:6]}"
    proxy = sidecar.proxy
    upstreams = [{"destination_name": u.destination_name, "local_bind_address": u.local_bind_address or "127.0.0.1",
                  "local_bind_port": u.local_bind_port} for u in (proxy.upstreams if proxy else None) or []]
    task = Task(
        name=name, driver=PROXY_DRIVER, kind=kind,
        lifecycle=TaskLifecycle(hook="prestart", sidecar=True),
        config={"service": service.name, "listen": f"0.0.0.0:${{NOMAD_PORT_{clean(label)}}}",
                "local_addr": (proxy.local_service_address if proxy else "") or "127.0.0.1",
                "local_port": _local_port(network, service, proxy), "upstreams": upstreams,
                "metrics_addr": f"0.0.0.0:${{NOMAD_PORT_{clean(metrics_label)}}}"},
        resources=Resources(cpu=PROXY_CPU, cores=0, memory_mb=PROXY_MEMORY, memory_max_mb=0, disk_mb=0, secrets_mb=0),
        restart_policy=group.restart_policy, kill_timeout=5 * SECOND, shutdown_delay=5 * SECOND,
        log_config=LogConfig(max_files=2, max_file_size_mb=2, disabled=False))
    exposed = (proxy.expose.paths if proxy is not None and proxy.expose is not None else None) or []
    if exposed:   # plain HTTP listeners for chosen paths of the app (mesh/expose.py)
        assert task.config is not None
        task.config["expose"] = [{"path": e.path, "protocol": e.protocol or "http",
                                  "local_path_port": e.local_path_port,
                                  "listen": f"0.0.0.0:${{NOMAD_PORT_{clean(e.listener_port)}}}"} for e in exposed]
    tp = proxy.transparent_proxy if proxy else None
    if tp is not None:   # the outbound listener the group's redirected traffic reaches
        assert task.config is not None
        task.config["transparent_proxy"] = {"outbound_port": tp.outbound_port or 15001}
    if connect.sidecar_task is not None:
        task = _merge(task, connect.sidecar_task)
    group.tasks = list(group.tasks or []) + [task]


def _local_port(network: NetworkResource, service: Service, proxy: ConsulProxy | None) -> int | str:
    if proxy and proxy.local_service_port:
        return proxy.local_service_port
    if service.port_label.isdigit():
        return int(service.port_label)
    port = next((p for p in network.ports() if p.label == service.port_label), None)
    if port is not None and port.to > 0:
        return port.to
    return f"${{NOMAD_PORT_{clean(service.port_label)}}}"


def _merge(task: Task, over: SidecarTask) -> Task:
    """sidecar_task over the injected task, as Nomad merges it."""
    update: dict = {}
    for attr in ("name", "user", "kill_signal"):
        if getattr(over, attr):
            update[attr] = getattr(over, attr)
    if over.driver and over.driver != task.driver:
        update["driver"], update["config"] = over.driver, dict(over.config or {})
    elif over.config:
        update["config"] = {**(task.config or {}), **over.config}
    if over.env:
        update["env"] = {**(task.env or {}), **over.env}
    if over.meta:
        update["meta"] = {**(task.meta or {}), **over.meta}
    if over.resources:
        base = (task.resources or Resources()).model_dump()
        given = {k: v for k, v in over.resources.model_dump().items() if v}
        update["resources"] = Resources(**{**base, **given})
    for attr in ("kill_timeout", "shutdown_delay", "log_config"):
        if getattr(over, attr) is not None:
            update[attr] = getattr(over, attr)
    return task.model_copy(update=update)
