"""Registers an allocation's services in the catalog and runs their health checks.

For each group service: the service itself, and for a Connect service its
`<service>-sidecar-proxy` (kind connect-proxy) at the host address and the sidecar's host port;
a Connect-native service (`native = true`) is registered with Connect.Native, so the mesh's
`/v1/health/connect/<service>` lists it at its own port.
Checks run on the client, from inside the allocation's network namespace (see checks.py);
their results are pushed to the catalog. A stop deregisters them first (`prekill`), before the
shutdown delays and the sidecar's drain. The sidecar's own "listening" check restarts the
sidecar when it keeps failing (the originals never do, see user-asks §1.5), and a service's
`check_restart` restarts its task.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from yurt.structs import ConsulSidecarService, Service, ServiceCheck
from yurt.structs.duration import SECOND
from yurt.structs.gateway import INGRESS, TERMINATING, gateway_entry, gateway_kind

from .alloc_hooks import AllocHook, AllocHookContext
from .checks import CRITICAL, PASSING, WARNING, CheckRunner, CheckSpec
from .taskenv import group_env, interpolate

if TYPE_CHECKING:
    from yurt.api.client import YurtClient

log = logging.getLogger("yurt.client.services")

SIDECAR_CHECK_INTERVAL = 2.0     # seconds; the proxy is local, checking it is cheap
SIDECAR_RESTART_LIMIT = 3        # consecutive failures before the sidecar is restarted
SIDECAR_RESTART_GRACE = 10.0     # seconds after (re)start before failures count


def service_id(alloc_id: str, group: str, service: Service, task: str = "") -> str:
    """A group service's ID, or a task service's (`task`), as Nomad forms them."""
    if task:
        return f"_yurt-task-{alloc_id}-{task}-{service.name}-{service.port_label}"
    return f"_yurt-task-{alloc_id}-group-{group}-{service.name}-{service.port_label}"


class ServiceHook(AllocHook):
    name = "services"

    def __init__(self, api: YurtClient, node_id: str = "") -> None:
        self.api = api
        self.node_id = node_id
        self._runners: dict[str, CheckRunner] = {}
        self._registered: dict[str, list[str]] = {}
        self._canary: dict[str, bool] = {}      # alloc ID -> registered as a canary
        self._lock = threading.Lock()

    # -- hook -------------------------------------------------------------------------------
    def prerun(self, ctx: AllocHookContext) -> None:
        regs, specs, restarts = self._plan(ctx)
        if not regs:
            return
        with self._lock:
            self._registered[ctx.alloc_id] = [r["ID"] for r in regs]
            self._canary[ctx.alloc_id] = _is_canary(ctx)
        threading.Thread(target=self._register, args=(regs,), name=f"register-{ctx.alloc_id[:8]}",
                         daemon=True).start()
        if specs:
            tracker = _RestartTracker(ctx, restarts)
            checks = CheckRunner(specs, ctx.resources.netns,
                                 report=lambda cid, st, out: self._report(cid, st, out, regs),
                                 on_status=tracker.observe, name=f"checks-{ctx.alloc_id[:8]}")
            with self._lock:
                self._runners[ctx.alloc_id] = checks
            checks.start()

    def update(self, ctx: AllocHookContext) -> None:
        """A canary that was promoted registers its services again, with their usual tags."""
        with self._lock:
            was = self._canary.get(ctx.alloc_id)
            if was is None or was == _is_canary(ctx) or ctx.alloc.server_terminal():
                return
            self._canary[ctx.alloc_id] = _is_canary(ctx)
            runner = self._runners.get(ctx.alloc_id)
            statuses = dict(runner.statuses) if runner is not None else {}
        regs, _, _ = self._plan(ctx)
        for reg in regs:   # the checks keep the status they have (no flap to their initial one)
            for check in reg.get("Checks") or []:
                check["Status"] = statuses.get(check["CheckID"], check["Status"])
        threading.Thread(target=self._register, args=(regs,), name=f"reregister-{ctx.alloc_id[:8]}",
                         daemon=True).start()

    def prekill(self, ctx: AllocHookContext) -> None:
        """First step of a stop: checks stop (a draining sidecar must not be restarted for
        refusing connections) and the services leave the catalog, so callers stop picking this
        instance before the shutdown delays start."""
        self._deregister(ctx.alloc_id)

    def postrun(self, ctx: AllocHookContext) -> None:
        self._deregister(ctx.alloc_id)

    def destroy(self, ctx: AllocHookContext) -> None:
        self._deregister(ctx.alloc_id)

    # -- building registrations -------------------------------------------------------------
    def _plan(self, ctx: AllocHookContext) -> tuple[list[dict], list[CheckSpec], dict[str, tuple[str, Any]]]:
        alloc, group = ctx.alloc, ctx.group
        ports = {p.label: p for p in alloc.allocated_resources.shared.ports}
        host_ip = next(iter(ports.values())).host_ip if ports else \
            (ctx.node.attributes.get("unique.network.ip-address", "127.0.0.1") if ctx.node else "127.0.0.1")
        status = ctx.resources.network_status or {}
        alloc_ip = status.get("Address", "")
        in_netns = bool(ctx.resources.netns)
        regs: list[dict] = []
        specs: list[CheckSpec] = []
        restarts: dict[str, tuple[str, Any]] = {}
        env = group_env(alloc, ctx.node)
        owned = [("", svc) for svc in group.services or []]
        owned += [(t.name, svc) for t in group.tasks or [] for svc in t.services or []]
        for task_name, svc in owned:
            if task_name:   # a task's service: the task's name and meta too; its checks and restarts are the task's
                owner = group.task(task_name)
                task_meta = {f"NOMAD_META_{k}": v for k, v in ((owner.meta if owner else None) or {}).items()}
                task_meta.update({k.upper(): v for k, v in task_meta.items()})
                svc = interpolated(svc, {**env, "NOMAD_TASK_NAME": task_name, **task_meta}, ctx)
                svc = svc.model_copy(update={"task_name": task_name})
            else:
                svc = interpolated(svc, env, ctx)
            sid = service_id(alloc.id, group.name, svc, task_name)
            if svc.port_label.isdigit():
                address, port, inner = alloc_ip or host_ip, int(svc.port_label), int(svc.port_label)
            elif svc.port_label in ports:
                p = ports[svc.port_label]
                address, port, inner = host_ip, p.value, (p.to if p.to > 0 else p.value)
            else:
                address, port, inner = host_ip, 0, 0
            checks = []
            for i, check in enumerate(svc.checks or []):
                spec = self._spec(sid, i, svc, check, ports, inner, in_netns, host_ip, ctx)
                specs.append(spec)
                checks.append({"CheckID": spec.check_id, "Name": spec.name, "Type": spec.type,
                               "Status": spec.initial_status, "Interval": f"{spec.interval:g}s",
                               "Timeout": f"{spec.timeout:g}s"})
                task = check.task_name or svc.task_name
                if check.check_restart and check.check_restart.limit > 0 and task:
                    restarts[spec.check_id] = (task, check.check_restart)
            tags, meta = svc.tags, svc.meta
            if _is_canary(ctx):   # a canary of a deployment, until it is promoted
                tags = svc.canary_tags if svc.canary_tags is not None else tags
                meta = svc.canary_meta if svc.canary_meta is not None else meta
            reg = {"ID": sid, "Name": svc.name, "Tags": tags or [], "Address": svc.address or address,
                   "Port": port, "Meta": {**(meta or {}), "external-source": "yurt", "alloc_id": alloc.id},
                   "AllocID": alloc.id, "NodeID": self.node_id, "Checks": checks,
                   "EnableTagOverride": svc.enable_tag_override}
            if svc.tagged_addresses:
                reg["TaggedAddresses"] = tagged_addresses(svc.tagged_addresses, port)
            if svc.weights is not None:
                reg["Weights"] = {"Passing": svc.weights.passing, "Warning": svc.weights.warning}
            if svc.is_native:   # Connect-capable itself: /v1/health/connect/<name> lists it
                reg["Connect"] = {"Native": True}
                if (host_ip.startswith("127.") and alloc_ip and svc.port_label in ports
                        and not svc.address):
                    # a dev node advertising loopback: peers in other namespaces reach the app
                    # on the bridge, at the port it listens on (as for a sidecar)
                    reg["Address"], reg["Port"] = alloc_ip, inner
            gateway = svc.connect.gateway if svc.connect is not None else None
            if gateway_kind(gateway) in (INGRESS, TERMINATING):
                self._gateway(reg, svc, gateway or {}, ports, host_ip, alloc_ip)
            regs.append(reg)
            sidecar = svc.connect.sidecar_service if svc.connect is not None else None
            if sidecar is not None:   # svc.has_sidecar
                regs.append(self._sidecar(ctx, svc, sidecar, sid, ports, host_ip, checks, specs, restarts))
        return regs, specs, restarts

    @staticmethod
    def _gateway(reg: dict, svc: Service, gateway: dict, ports: dict, host_ip: str, alloc_ip: str) -> None:
        """A gateway registers as Consul's do: Kind ingress-gateway / terminating-gateway, its
        config entry in Proxy.Config["Gateway"] (the catalog lists a terminating gateway under
        each service it links, /v1/health/connect/<service>). A terminating gateway is dialled
        by the mesh on its injected port `connect-terminating-<service>`."""
        entry, _ = gateway_entry(svc.name, gateway)
        reg["Kind"] = entry["Kind"]
        reg["Proxy"] = {"Config": {"Gateway": entry}}
        if entry["Kind"] == TERMINATING:
            p = ports.get(f"connect-terminating-{svc.name}")
            if p is not None:
                reg["Address"], reg["Port"] = host_ip, p.value
                if host_ip.startswith("127.") and alloc_ip:
                    # a dev node advertising loopback: the mesh reaches it on the bridge (as a sidecar)
                    reg["Address"], reg["Port"] = alloc_ip, (p.to if p.to > 0 else p.value)

    def _spec(self, sid: str, i: int, svc: Service, check: ServiceCheck, ports: dict, inner: int,
              in_netns: bool, host_ip: str, ctx: AllocHookContext) -> CheckSpec:
        port = inner
        if check.port_label:
            if check.port_label.isdigit():
                port = int(check.port_label)
            elif check.port_label in ports:
                p = ports[check.port_label]
                port = (p.to if p.to > 0 else p.value) if in_netns else p.value
        spec = CheckSpec(
            check_id=f"{sid}-check-{i}", name=check.name or f'service: "{svc.name}" check',
            type=check.type, address="127.0.0.1" if in_netns else host_ip, port=port,
            path=check.path or "/", method=check.method or "GET", protocol=check.protocol or "http",
            headers=dict(check.header or {}), body=check.body, tls_skip_verify=check.tls_skip_verify,
            grpc_service=check.grpc_service, grpc_use_tls=check.grpc_use_tls,
            command=check.command, args=list(check.args or []),
            interval=max((check.interval or 10 * SECOND) / SECOND, 0.5),
            timeout=max((check.timeout or 2 * SECOND) / SECOND, 0.1),
            initial_status=check.initial_status or CRITICAL,
            success_before_passing=check.success_before_passing,
            failures_before_critical=check.failures_before_critical)
        if check.type == "script":
            task_dir = ctx.task_dir(check.task_name or svc.task_name)
            if task_dir is not None:
                spec.cwd = str(task_dir.local)
        return spec

    def _sidecar(self, ctx: AllocHookContext, svc: Service, sidecar: ConsulSidecarService, sid: str, ports: dict,
                 host_ip: str, parent_checks: list[dict], specs: list[CheckSpec], restarts: dict) -> dict:
        label = sidecar.port or f"connect-proxy-{svc.name}"
        p = ports.get(label)
        proxy_cfg = sidecar.proxy
        task = next((t.name for t in ctx.tasks if t.kind == f"connect-proxy:{svc.name}"), "")
        local_port = (proxy_cfg.local_service_port if proxy_cfg and proxy_cfg.local_service_port else
                      int(svc.port_label) if svc.port_label.isdigit() else
                      (ports[svc.port_label].to or ports[svc.port_label].value) if svc.port_label in ports else 0)
        check_id = f"{sid}-sidecar-proxy-listening"
        specs.append(CheckSpec(check_id=check_id, name="Connect Sidecar Listening", type="tcp",
                               address="127.0.0.1" if ctx.resources.netns else host_ip,
                               port=(p.to if p and p.to > 0 else p.value) if p else 0,
                               interval=SIDECAR_CHECK_INTERVAL, timeout=1.0))
        if task:
            restarts[check_id] = (task, None)
        tproxy = proxy_cfg.transparent_proxy if proxy_cfg else None
        upstreams = [{"DestinationType": "service", "DestinationName": u.destination_name,
                      "LocalBindAddress": u.local_bind_address or "127.0.0.1", "LocalBindPort": u.local_bind_port}
                     for u in ((proxy_cfg.upstreams if proxy_cfg else None) or [])]
        address, port = host_ip, (p.value if p else 0)
        m = ports.get(f"connect-proxy-{svc.name}-metrics")   # server/connect_inject.metrics_port_label
        metrics_port = m.value if m else 0
        status = ctx.resources.network_status or {}
        if host_ip.startswith("127.") and status.get("Address") and p:
            # A node that advertises loopback (a dev agent): 127.0.0.1 inside another allocation's
            # namespace is that namespace itself, so peers reach this sidecar on the bridge.
            address, port = status["Address"], (p.to if p.to > 0 else p.value)
            metrics_port = (m.to if m.to > 0 else m.value) if m else 0
        # where Prometheus finds the sidecar's metrics (consul_sd_configs + relabeling, see README)
        metrics_meta = {"metrics_port": str(metrics_port), "metrics_path": "/metrics"} if metrics_port else {}
        return {"ID": f"{sid}-sidecar-proxy", "Name": f"{svc.name}-sidecar-proxy", "Kind": "connect-proxy",
                "Tags": (sidecar.tags if sidecar.tags is not None else svc.tags) or [],
                "Address": address, "Port": port, "AllocID": ctx.alloc_id, "NodeID": self.node_id,
                "Meta": {**(sidecar.meta or {}), **metrics_meta, "external-source": "yurt", "alloc_id": ctx.alloc_id},
                "Proxy": {"DestinationServiceName": svc.name, "DestinationServiceID": sid,
                          "LocalServiceAddress": "127.0.0.1", "LocalServicePort": local_port,
                          "Upstreams": upstreams,
                          # Consul's proxy mode: "transparent" with transparent_proxy {}
                          "Mode": "transparent" if tproxy else "",
                          "TransparentProxy": ({"OutboundListenerPort": tproxy.outbound_port or 15001}
                                               if tproxy else {})},
                "Checks": [{"CheckID": check_id, "Name": "Connect Sidecar Listening", "Type": "tcp",
                            "Status": CRITICAL, "Interval": f"{SIDECAR_CHECK_INTERVAL:g}s"},
                           *[{**c, "CheckID": f"{c['CheckID']}-alias", "Name": f"Connect Sidecar Aliasing {sid}",
                              "Type": "alias"} for c in parent_checks]]}

    # -- talking to the catalog -------------------------------------------------------------
    def _register(self, regs: list[dict]) -> None:
        delay = 0.2
        for reg in regs:
            while True:
                try:
                    self.api.register_service(reg)
                    break
                except Exception as e:  # noqa: BLE001 - retried until the server takes it
                    log.warning("registering service %s failed: %s; retrying", reg["Name"], e)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)

    def _report(self, check_id: str, status: str, output: str, regs: list[dict]) -> None:
        ids = [check_id]
        if any(check_id == c["CheckID"] for r in regs for c in r.get("Checks", []) if c.get("Type") != "alias"):
            ids += [c["CheckID"] for r in regs for c in r.get("Checks", [])
                    if c.get("Type") == "alias" and c["CheckID"] == f"{check_id}-alias"]
        for cid in ids:
            try:
                self.api.update_check(cid, status, output, node=self.node_id or None)
            except Exception as e:  # noqa: BLE001 - the next change reports again
                log.debug("reporting check %s failed: %s", cid, e)

    def _deregister(self, alloc_id: str) -> None:
        with self._lock:
            checks = self._runners.pop(alloc_id, None)
            ids = self._registered.pop(alloc_id, [])
            self._canary.pop(alloc_id, None)
        if checks:
            checks.stop()
        for sid in ids:
            try:
                self.api.deregister_service(sid, node=self.node_id or None)
            except Exception as e:  # noqa: BLE001 - the server also drops a stopped alloc's services
                log.debug("deregistering %s failed: %s", sid, e)


class _RestartTracker:
    """check_restart: restart a task after `limit` consecutive failures past its grace period."""

    def __init__(self, ctx: AllocHookContext, restarts: dict[str, tuple[str, Any]]) -> None:
        self.ctx = ctx
        self.restarts = restarts
        self.failures: dict[str, int] = {}
        self.since = {cid: time.monotonic() for cid in restarts}

    def observe(self, check_id: str, status: str) -> None:
        if check_id not in self.restarts:
            return
        task, policy = self.restarts[check_id]
        limit = policy.limit if policy else SIDECAR_RESTART_LIMIT
        grace = (policy.grace or 0) / SECOND if policy else SIDECAR_RESTART_GRACE
        bad = status == CRITICAL or (status == WARNING and policy is not None and not policy.ignore_warnings)
        if status == PASSING or not bad:
            self.failures[check_id] = 0
            return
        if time.monotonic() - self.since[check_id] < grace:
            return
        self.failures[check_id] = self.failures.get(check_id, 0) + 1
        if self.failures[check_id] >= limit:
            if self.ctx.restart_task(task, f"healthcheck: check {check_id!r} unhealthy"):
                log.warning("alloc %s: restarting task %s: its health check failed %d times",
                            self.ctx.alloc_id[:8], task, limit)
            self.failures[check_id] = 0
            self.since[check_id] = time.monotonic()


def tagged_addresses(given: dict[str, str], port: int) -> dict[str, dict[str, Any]]:
    """Nomad's `tagged_addresses { wan = "198.18.0.1" }` as Consul's service TaggedAddresses:
    "host" or "host:port" each, the service's port when none is given."""
    out: dict[str, dict[str, Any]] = {}
    for tag, value in given.items():
        host, sep, p = value.rpartition(":")
        if sep and p.isdigit() and not host.endswith(":"):
            out[tag] = {"Address": host.strip("[]"), "Port": int(p)}
        else:
            out[tag] = {"Address": value, "Port": port}
    return out


def interpolated(svc: Service, env: dict[str, str], ctx: AllocHookContext) -> Service:
    """The service with `${NOMAD_*}`, `${node.*}`, `${attr.*}` and `${meta.*}` replaced in the
    fields Nomad interpolates: name, tags, canary tags, meta, canary meta, address and tagged
    addresses; in its checks the name, command, args, path, protocol, method, headers, body,
    gRPC service, initial status and notes."""
    def i(v: Any) -> Any:
        return interpolate(v, env, ctx.node)
    checks = [c.model_copy(update={
        "name": i(c.name), "command": i(c.command), "args": i(c.args), "path": i(c.path),
        "protocol": i(c.protocol), "method": i(c.method), "header": i(c.header), "body": i(c.body),
        "grpc_service": i(c.grpc_service), "initial_status": i(c.initial_status), "notes": i(c.notes)})
        for c in svc.checks or []]
    return svc.model_copy(update={
        "name": i(svc.name), "tags": i(svc.tags), "canary_tags": i(svc.canary_tags), "meta": i(svc.meta),
        "canary_meta": i(svc.canary_meta), "address": i(svc.address), "tagged_addresses": i(svc.tagged_addresses),
        "checks": checks if svc.checks is not None else None})


def _is_canary(ctx: AllocHookContext) -> bool:
    status = ctx.alloc.deployment_status
    return status is not None and status.canary
