"""The allocation hook that gives a task group its network namespace (bridge, none, cni/<name>).

prerun: namespace (created by the task driver that holds it, if one does: the context's
``netns_holder``) + CNI ADD; fills in the context's resources: ``netns`` (path),
``network_status``, ``resolv_conf``, ``hostname`` and NOMAD_ALLOC_{IP,ADDR,INTERFACE}_<label> in
every task's environment. postrun (all tasks dead) and destroy: CNI DEL, namespace deleted.
"""

from __future__ import annotations

import logging
from typing import Any

from yurt.client.alloc_hooks import AllocHook, AllocHookContext, AllocResources
from yurt.client.taskenv import interpolate, node_region
from yurt.structs import Allocation

from . import bridge, cni
from .alloc_network import NetworkSpec, setup, teardown_alloc
from .portmap import check_host_ports_free, port_mappings

log = logging.getLogger(__name__)


def alloc_env(alloc: Allocation, address: str, ifname: str) -> dict[str, str]:
    """NOMAD_ALLOC_IP_/ADDR_/INTERFACE_<label> for every group port (labels keep their dashes)."""
    env: dict[str, str] = {}
    if not address:
        return env
    for p in alloc.allocated_resources.shared.ports:
        env[f"NOMAD_ALLOC_IP_{p.label}"] = address
        env[f"NOMAD_ALLOC_ADDR_{p.label}"] = f"{address}:{p.to if p.to > 0 else p.value}"
        env[f"NOMAD_ALLOC_INTERFACE_{p.label}"] = ifname
    return env


def cni_args(ctx: AllocHookContext, user_args: dict[str, str] | None) -> dict[str, str]:
    """IgnoreUnknown, the job's ``network.cni.args``, then the (non-overridable) NOMAD_* values."""
    alloc = ctx.alloc
    job = alloc.job
    args = {"IgnoreUnknown": "true"}
    args.update({str(k): str(v) for k, v in (user_args or {}).items()})
    args.update({
        "NOMAD_REGION": ctx.region or node_region(ctx.node, alloc),
        "NOMAD_NAMESPACE": (job.namespace if job and job.namespace else alloc.namespace) or "default",
        "NOMAD_JOB_ID": job.id if job else alloc.job_id,
        "NOMAD_GROUP_NAME": alloc.task_group,
        "NOMAD_ALLOC_ID": alloc.id,
    })
    return args


class NetworkHook(AllocHook):
    name = "network"

    def __init__(self, *, cni_paths: tuple[str, ...] | None = None,
                 cni_config_dirs: tuple[str, ...] | None = None, loopback_too: bool = False) -> None:
        self.loopback_too = loopback_too   # a dev node: host ports on 127.0.0.1 as well as its address
        self.cni_paths = tuple(cni_paths or cni.DEFAULT_CNI_PATHS)
        self.cni_config_dirs = tuple(cni_config_dirs or cni.DEFAULT_CNI_CONFIG_DIRS)

    def prerun(self, ctx: AllocHookContext) -> None:
        network = ctx.group.network
        if network is None or network.effective_mode == "host":
            return
        mode = network.effective_mode
        if ctx.ended:  # restored after it ended: nothing will run in it
            return
        alloc = ctx.alloc
        dns = None
        if network.dns is not None:
            dns = {"Servers": list(network.dns.servers or []), "Searches": list(network.dns.searches or []),
                   "Options": list(network.dns.options or [])}
        spec = NetworkSpec(
            alloc_id=alloc.id, mode=mode,
            cni_args=cni_args(ctx, network.cni.args if network.cni else None),
            port_mappings=port_mappings(alloc, gateway=bridge.gateway() if mode == "bridge" else "",
                                        loopback_too=self.loopback_too)
            if mode != "none" else [],
            dns=dns, hostname=self._hostname(ctx, network.hostname),
            cni_paths=self.cni_paths, cni_config_dirs=self.cni_config_dirs,
            check_ports=(lambda: check_host_ports_free(alloc)) if mode != "none" else None,
            holder=ctx.netns_holder)
        st = setup(ctx.data_dir, spec)
        resources = ctx.resources
        resources.netns = st.netns
        resources.network_status = st.network_status()
        resources.resolv_conf = st.resolv_conf
        if st.hostname:
            resources.hostname = st.hostname
        resources.env.update(alloc_env(alloc, st.address, st.ifname))

    @staticmethod
    def _hostname(ctx: AllocHookContext, hostname: str) -> str:
        if not hostname:
            return ""
        alloc = ctx.alloc
        env = {"NOMAD_ALLOC_ID": alloc.id, "NOMAD_SHORT_ALLOC_ID": alloc.id[:8], "NOMAD_ALLOC_NAME": alloc.name,
               "NOMAD_ALLOC_INDEX": str(alloc.index), "NOMAD_GROUP_NAME": alloc.task_group,
               "NOMAD_JOB_ID": alloc.job_id, "NOMAD_JOB_NAME": (alloc.job.name or alloc.job.id) if alloc.job else ""}
        return str(interpolate(hostname, env, ctx.node, ctx.region))

    def postrun(self, ctx: AllocHookContext) -> None:
        self._teardown(ctx)

    def destroy(self, ctx: AllocHookContext) -> None:
        self._teardown(ctx)

    def _teardown(self, ctx: AllocHookContext) -> None:
        errors = teardown_alloc(ctx.data_dir, ctx.alloc_id)
        ctx.resources.netns = ""  # the status stays: it is what the group had
        if errors:
            log.warning("alloc %s: network teardown: %s", ctx.alloc_id, "; ".join(errors))


def network_status(resources: AllocResources) -> dict[str, Any] | None:
    """What to report as the allocation's NetworkStatus (None in host mode)."""
    status = resources.network_status
    return dict(status) if status is not None else None
