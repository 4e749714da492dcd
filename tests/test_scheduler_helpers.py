"""Builders shared by the scheduler tests: nodes, canonical jobs, evals, running a schedule."""

from __future__ import annotations

from yurt.jobspec.defaults import canonicalize
from yurt.scheduler import schedule
from yurt.structs import (DriverInfo, EphemeralDisk, Evaluation, Job, NetworkResource, Node,
                          NodeCpuResources, NodeDiskResources, NodeMemoryResources,
                          NodeResources, Port, Resources, Task, TaskGroup)

from .memory_state import MemoryState

NOW = 1_700_000_000 * 1_000_000_000
S = 1_000_000_000
CNI = {f"plugins.cni.version.{p}": "1.1.1" for p in ("bridge", "firewall", "host-local", "loopback", "portmap")}


def make_node(i: int, *, dc: str = "dc1", cpu: int = 4000, mem: int = 8192, disk: int = 100_000,
              drivers=("docker", "raw_exec"), attrs: dict | None = None, meta: dict | None = None,
              **kw) -> Node:
    attributes = {"kernel.name": "linux", "unique.network.ip-address": f"10.0.0.{i}", **CNI}
    attributes.update(attrs or {})
    return Node(
        id=f"node-{i:04d}-0000-0000-0000-000000000000", name=f"node{i}", datacenter=dc,
        status=kw.pop("status", "ready"), attributes=attributes, meta=meta or {},
        drivers={d: DriverInfo(detected=True, healthy=True) for d in drivers},
        node_resources=NodeResources(cpu=NodeCpuResources(cpu_shares=cpu),
                                     memory=NodeMemoryResources(memory_mb=mem),
                                     disk=NodeDiskResources(disk_mb=disk)), **kw)


def make_job(job_id: str = "web", *, type_: str = "service", count: int = 1, cpu: int = 100,
             mem: int = 256, driver: str = "docker", config: dict | None = None,
             networks=None, group_kw: dict | None = None, task_kw: dict | None = None,
             **kw) -> Job:
    task = Task(name="app", driver=driver, config=config or {"image": "nginx"},
                resources=Resources(cpu=cpu, memory_mb=mem), **(task_kw or {}))
    group = TaskGroup(name="g", count=count, tasks=[task], networks=networks,
                      ephemeral_disk=EphemeralDisk(size_mb=300), **(group_kw or {}))
    return canonicalize(Job(id=job_id, type=type_, task_groups=[group], **kw))


def ports(*static: tuple[str, int], dynamic=(), mode: str = "host") -> list[NetworkResource]:
    return [NetworkResource(mode=mode,
                            reserved_ports=[Port(label=lbl, value=v) for lbl, v in static] or None,
                            dynamic_ports=[Port(label=lbl, to=t) for lbl, t in dynamic] or None)]


_n = [0]


def make_eval(job: Job, **kw) -> Evaluation:
    _n[0] += 1
    fields = dict(id=f"eval-{_n[0]:04d}", namespace=job.namespace, job_id=job.id, type=job.type,
                  priority=job.priority, triggered_by="job-register")
    return Evaluation(**{**fields, **kw})


def run(state: MemoryState, job: Job, *, seed: int = 1, now: int = NOW, apply: bool = True, **kw):
    res = schedule(make_eval(job, **kw), state, seed=seed, now_ns=now)
    if apply:
        state.apply_plan(res.plan)
    return res


def placed(res) -> list:
    return [a for allocs in res.plan.node_allocation.values() for a in allocs]


def stopped(res) -> list:
    return [a for allocs in res.plan.node_update.values() for a in allocs]


def live(state: MemoryState, job: Job) -> list:
    return sorted((a for a in state.allocs_by_job(job.namespace, job.id) if not a.terminal()),
                  key=lambda a: a.name)
