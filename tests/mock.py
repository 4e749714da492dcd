"""Small factories for tests and benchmarks (like Nomad's nomad/mock): jobs, nodes, allocations,
evaluations with plausible values. Test scaffolding: lives with the tests, imported by the tests and
by bench/state_store.py."""

from __future__ import annotations

import uuid

from yurt.structs import (AllocatedCpuResources, AllocatedMemoryResources, AllocatedPortMapping,
                          AllocatedResources, AllocatedSharedResources, AllocatedTaskResources,
                          Allocation, Evaluation, Job, Node, NodeCpuResources, NodeMemoryResources,
                          NodeResources, Resources, Task, TaskGroup)


def new_id() -> str:
    return str(uuid.uuid4())


def job(job_id: str = "example", *, groups: dict[str, int] | None = None, type: str = "service",
        namespace: str = "default", **kw) -> Job:
    groups = groups or {"web": 1}
    return Job(id=job_id, name=job_id, namespace=namespace, type=type, region="global",
               datacenters=["dc1"], priority=50,
               task_groups=[TaskGroup(name=g, count=n, tasks=[
                   Task(name="app", driver="raw_exec", config={"command": "/bin/sleep"},
                        resources=Resources(cpu=100, memory_mb=64))]) for g, n in groups.items()],
               **kw)


def node(node_id: str | None = None, **kw) -> Node:
    node_id = node_id or new_id()
    return Node(id=node_id, name=f"node-{node_id[:8]}", datacenter="dc1", status="ready",
                node_resources=NodeResources(cpu=NodeCpuResources(cpu_shares=4000),
                                             memory=NodeMemoryResources(memory_mb=8192)), **kw)


def alloc(job: Job, node_id: str, *, group: str | None = None, index: int = 0,
          eval_id: str = "", alloc_id: str | None = None, **kw) -> Allocation:
    group = group or job.task_groups[0].name
    return Allocation(
        id=alloc_id or new_id(), namespace=job.namespace or "default", eval_id=eval_id or new_id(),
        name=f"{job.id}.{group}[{index}]", node_id=node_id, node_name=f"node-{node_id[:8]}",
        job_id=job.id, job=job, task_group=group,
        allocated_resources=AllocatedResources(
            tasks={"app": AllocatedTaskResources(cpu=AllocatedCpuResources(cpu_shares=100),
                                                 memory=AllocatedMemoryResources(memory_mb=64))},
            shared=AllocatedSharedResources(
                ports=[AllocatedPortMapping(label="http", value=20000 + index, to=8080)])),
        **kw)


def evaluation(job: Job, *, eval_id: str | None = None, status: str = "pending", **kw) -> Evaluation:
    return Evaluation(id=eval_id or new_id(), namespace=job.namespace or "default",
                      job_id=job.id, type=job.type or "service", priority=job.priority or 50,
                      triggered_by="job-register", status=status, **kw)
