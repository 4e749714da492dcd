"""The environment of a task (Nomad's client/taskenv) and ``${...}`` interpolation.

Build order, later steps winning: NOMAD_* base variables -> group network ports -> upstreams ->
hook variables (network, ...) -> meta -> host environment (only keys not set yet) -> the task's
``env`` (interpolated) -> key cleaning for the ``NOMAD_ADDR_``, ``NOMAD_IP_``, ``NOMAD_PORT_``,
``NOMAD_HOST_PORT_`` and ``NOMAD_META_`` prefixes.
"""

from __future__ import annotations

import os
import re
from typing import Any
from collections.abc import Mapping

from yurt.structs import Allocation, Node, Task, TaskGroup

from .allocdir import TaskDir

CLEANED_PREFIXES = ("NOMAD_ADDR_", "NOMAD_IP_", "NOMAD_PORT_", "NOMAD_HOST_PORT_", "NOMAD_META_")
UPSTREAM_IP = "127.0.0.1"
DEFAULT_REGION = "global"

_UNCLEAN = re.compile(r"[^A-Za-z0-9_.]")
_REF = re.compile(r"\$\{([^{}]+)\}")


def clean_env_var(name: str, repl: str = "_") -> str:
    """Nomad's helper.CleanEnvVar: every char not in [A-Za-z0-9_.] (or a leading digit) -> repl."""
    out = _UNCLEAN.sub(repl, name)
    if out[:1].isdigit():
        out = repl + out[1:]
    return out


def clean_keys(env: Mapping[str, str]) -> dict[str, str]:
    """Replace keys with a cleaned prefix by their cleaned spelling (the last writer wins)."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(CLEANED_PREFIXES):
            key = clean_env_var(key)
        out[key] = value
    return out


def node_region(node: Node | None, alloc: Allocation | None = None) -> str:
    if node is not None and node.attributes.get("nomad.region"):
        return node.attributes["nomad.region"]
    if alloc is not None and alloc.job is not None and alloc.job.region:
        return alloc.job.region
    return DEFAULT_REGION


def node_values(node: Node | None, region: str | None = None) -> dict[str, str]:
    """What ``${node.*}``, ``${attr.*}`` and ``${meta.*}`` resolve to."""
    if node is None:
        return {}
    values = {
        "node.unique.id": node.id,
        "node.unique.name": node.name,
        "node.datacenter": node.datacenter,
        "node.class": node.node_class,
        "node.pool": node.node_pool,
        "node.region": region or node_region(node),
    }
    values.update({f"attr.{k}": v for k, v in node.attributes.items()})
    values.update({f"meta.{k}": v for k, v in node.meta.items()})
    return values


def interpolate(value: Any, env: Mapping[str, str], node: Node | None = None,
                region: str | None = None) -> Any:
    """Replace ``${...}`` references in strings, recursively through lists and dict values.

    A reference resolves from the node (``node.*``, ``attr.*``, ``meta.*``) first, then from
    ``env``; an unknown reference is left as written.
    """
    values = node_values(node, region)
    return _interpolate(value, values, env)


def _interpolate(value: Any, values: Mapping[str, str], env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            ref = m.group(1).strip()
            if ref in values:
                return values[ref]
            if ref in env:
                return env[ref]
            return m.group(0)
        return _REF.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v, values, env) for v in value]
    if isinstance(value, tuple):
        return tuple(_interpolate(v, values, env) for v in value)
    if isinstance(value, dict):
        return {k: _interpolate(v, values, env) for k, v in value.items()}
    return value


def _group(alloc: Allocation) -> TaskGroup | None:
    return alloc.job.group(alloc.task_group) if alloc.job else None


def _merged_meta(alloc: Allocation, task: Task) -> dict[str, str]:
    meta: dict[str, str] = {}
    group = _group(alloc)
    for part in (alloc.job.meta if alloc.job else None, group.meta if group else None, task.meta):
        meta.update(part or {})
    return meta


def port_vars(alloc: Allocation) -> dict[str, str]:
    """The per-port variables of the group network's allocated ports (raw keys)."""
    env: dict[str, str] = {}
    for p in alloc.allocated_resources.shared.ports:
        bind = p.to if p.to > 0 else p.value
        ip = p.host_ip
        env[f"NOMAD_PORT_{p.label}"] = str(bind)
        env[f"NOMAD_ALLOC_PORT_{p.label}"] = str(bind)
        env[f"NOMAD_HOST_PORT_{p.label}"] = str(p.value)
        env[f"NOMAD_IP_{p.label}"] = ip
        env[f"NOMAD_HOST_IP_{p.label}"] = ip
        env[f"NOMAD_ADDR_{p.label}"] = f"{ip}:{p.value}"
        env[f"NOMAD_HOST_ADDR_{p.label}"] = f"{ip}:{p.value}"
    return env


def upstream_vars(group: TaskGroup | None) -> dict[str, str]:
    """NOMAD_UPSTREAM_{ADDR,IP,PORT}_<dest> for the group services' sidecar upstreams."""
    env: dict[str, str] = {}
    for service in (group.services or []) if group else []:
        if not service.has_sidecar:
            continue
        proxy = service.connect.sidecar_service.proxy
        for up in (proxy.upstreams or []) if proxy else []:
            port = str(up.local_bind_port)
            for name in dict.fromkeys((up.destination_name, clean_env_var(up.destination_name))):
                env[f"NOMAD_UPSTREAM_IP_{name}"] = UPSTREAM_IP
                env[f"NOMAD_UPSTREAM_PORT_{name}"] = port
                env[f"NOMAD_UPSTREAM_ADDR_{name}"] = f"{UPSTREAM_IP}:{port}"
    return env


def native_services(alloc: Allocation, task: Task) -> list[str]:
    """The group's `connect { native = true }` services that `task` implements (its `task =`,
    or the group's only task)."""
    group = _group(alloc)
    if group is None:
        return []
    only = len(group.tasks or []) == 1
    return [s.name for s in group.services or []
            if s.is_native and (s.task_name == task.name or (not s.task_name and only))]


def native_vars(agent_socket: str, services: list[str], token_file: str = "") -> dict[str, str]:
    """What a Connect-native task is given (Nomad's connect_native_hook sets CONSUL_HTTP_ADDR and
    the token the same way): the agent's API, where its workload identity is, and its services."""
    addr = f"unix://{agent_socket}"
    env = {"CONSUL_HTTP_ADDR": addr, "YURT_ADDR": addr, "YURT_CONNECT_SERVICE": ",".join(services)}
    if token_file:
        env["CONSUL_HTTP_TOKEN_FILE"] = env["YURT_TOKEN_FILE"] = token_file
    return env


def task_limits(alloc: Allocation, task: Task) -> tuple[int, int, int]:
    """(cpu MHz, memory MB, memory_max MB) allocated to ``task`` (else its resources block)."""
    allocated = alloc.allocated_resources.tasks.get(task.name)
    res = task.resources
    if allocated:
        return (allocated.cpu.cpu_shares, allocated.memory.memory_mb,
                allocated.memory.memory_max_mb)
    if res is not None:
        return res.cpu or 0, res.memory_mb or 0, res.memory_max_mb or 0
    return 0, 0, 0


def _limits(alloc: Allocation, task: Task) -> dict[str, str]:
    env: dict[str, str] = {}
    cpu, mem, mem_max = task_limits(alloc, task)
    if cpu:
        env["NOMAD_CPU_LIMIT"] = str(cpu)
    if mem:
        env["NOMAD_MEMORY_LIMIT"] = str(mem)
    if mem_max:
        env["NOMAD_MEMORY_MAX_LIMIT"] = str(mem_max)
    return env


ISOLATED_DIRS = {"NOMAD_ALLOC_DIR": "/alloc", "NOMAD_TASK_DIR": "/local",
                 "NOMAD_SECRETS_DIR": "/secrets"}


def base_vars(alloc: Allocation, task: Task, task_dir: TaskDir, node: Node | None,
              region: str | None = None, isolated: bool = False) -> dict[str, str]:
    """``isolated``: the task runs chrooted in its task dir (exec), so the dirs are /alloc..."""
    job = alloc.job
    env = {
        "NOMAD_ALLOC_DIR": str(task_dir.shared),
        "NOMAD_TASK_DIR": str(task_dir.local),
        "NOMAD_SECRETS_DIR": str(task_dir.secrets),
        **(ISOLATED_DIRS if isolated else {}),
        "NOMAD_ALLOC_ID": alloc.id,
        "NOMAD_SHORT_ALLOC_ID": alloc.id[:8],
        "NOMAD_ALLOC_NAME": alloc.name,
        "NOMAD_ALLOC_INDEX": str(alloc.index),
        "NOMAD_GROUP_NAME": alloc.task_group,
        "NOMAD_TASK_NAME": task.name,
        "NOMAD_JOB_ID": job.id if job else alloc.job_id,
        "NOMAD_JOB_NAME": (job.name or job.id) if job else alloc.job_id,
        "NOMAD_NAMESPACE": (job.namespace if job and job.namespace else alloc.namespace) or "default",
        "NOMAD_REGION": region or node_region(node, alloc),
    }
    if job is not None and job.parent_id:
        env["NOMAD_JOB_PARENT_ID"] = job.parent_id
    if node is not None:
        env["NOMAD_DC"] = node.datacenter
    env.update(_limits(alloc, task))
    return env


def group_env(alloc: Allocation, node: Node | None = None, region: str | None = None) -> dict[str, str]:
    """The variables a group service's fields are interpolated with, as Nomad's: the
    allocation's, the job's and group's, the group's ports and upstreams, and NOMAD_META_* from
    the job's and the group's meta (no task's)."""
    job = alloc.job
    region = region or node_region(node, alloc)
    env = {
        "NOMAD_ALLOC_ID": alloc.id, "NOMAD_SHORT_ALLOC_ID": alloc.id[:8], "NOMAD_ALLOC_NAME": alloc.name,
        "NOMAD_ALLOC_INDEX": str(alloc.index), "NOMAD_GROUP_NAME": alloc.task_group,
        "NOMAD_JOB_ID": job.id if job else alloc.job_id,
        "NOMAD_JOB_NAME": (job.name or job.id) if job else alloc.job_id,
        "NOMAD_NAMESPACE": (job.namespace if job and job.namespace else alloc.namespace) or "default",
        "NOMAD_REGION": region,
    }
    if job is not None and job.parent_id:
        env["NOMAD_JOB_PARENT_ID"] = job.parent_id
    if node is not None:
        env["NOMAD_DC"] = node.datacenter
    env.update(port_vars(alloc))
    env.update(upstream_vars(_group(alloc)))
    group = _group(alloc)
    values = node_values(node, region)
    meta: dict[str, str] = {**((job.meta if job else None) or {}), **((group.meta if group else None) or {})}
    for key, value in meta.items():
        value = _interpolate(value, values, env)
        env[f"NOMAD_META_{key}"] = value
        env[f"NOMAD_META_{key.upper()}"] = value
    return clean_keys(env)


def build_task_env(alloc: Allocation, task: Task, task_dir: TaskDir, node: Node | None = None,
                   *, host_env: Mapping[str, str] | None = None,
                   hook_env: Mapping[str, str] | None = None,
                   region: str | None = None, isolated: bool = False) -> dict[str, str]:
    """The full environment a task runs with (``isolated``: paths as seen inside a chroot)."""
    region = region or node_region(node, alloc)
    env = base_vars(alloc, task, task_dir, node, region, isolated)
    env.update(port_vars(alloc))
    env.update(upstream_vars(_group(alloc)))
    env.update(hook_env or {})
    values = node_values(node, region)
    for key, value in _merged_meta(alloc, task).items():
        value = _interpolate(value, values, env)
        env[f"NOMAD_META_{key}"] = value
        env[f"NOMAD_META_{key.upper()}"] = value
    for key, value in (os.environ if host_env is None else host_env).items():
        env.setdefault(key, value)
    for key, value in (task.env or {}).items():
        env[key] = _interpolate(str(value), values, env)
    return clean_keys(env)
