"""Allocations, their resources and task states (Nomad's structs.Allocation and friends)."""

from __future__ import annotations

import threading
from typing import Any

from .base import Struct, built, field
from .job import Job

# Desired status: what the server wants.
ALLOC_DESIRED_RUN = "run"
ALLOC_DESIRED_STOP = "stop"
ALLOC_DESIRED_EVICT = "evict"

# Client status: what the client reports.
ALLOC_PENDING = "pending"
ALLOC_RUNNING = "running"
ALLOC_COMPLETE = "complete"
ALLOC_FAILED = "failed"
ALLOC_LOST = "lost"
ALLOC_UNKNOWN = "unknown"

TASK_PENDING = "pending"
TASK_RUNNING = "running"
TASK_DEAD = "dead"


class AllocatedPortMapping(Struct):
    label: str = ""
    value: int = 0
    to: int = 0
    host_ip: str = field("", json="HostIP")


class AllocatedCpuResources(Struct):
    cpu_shares: int = 0


class AllocatedMemoryResources(Struct):
    memory_mb: int = field(0, json="MemoryMB")
    memory_max_mb: int = field(0, json="MemoryMaxMB")


class AllocatedTaskResources(Struct):
    cpu: AllocatedCpuResources = field(factory=AllocatedCpuResources)
    memory: AllocatedMemoryResources = field(factory=AllocatedMemoryResources)


class AllocatedSharedResources(Struct):
    disk_mb: int = field(0, json="DiskMB")
    ports: list[AllocatedPortMapping] = field(factory=list)
    networks: list[dict[str, Any]] | None = None


class AllocatedResources(Struct):
    tasks: dict[str, AllocatedTaskResources] = field(factory=dict)
    task_lifecycles: dict[str, Any] | None = None
    shared: AllocatedSharedResources = field(factory=AllocatedSharedResources)

    def cpu(self) -> int:
        return sum(t.cpu.cpu_shares for t in self.tasks.values())

    def memory(self) -> int:
        return sum(t.memory.memory_mb for t in self.tasks.values())


class TaskEvent(Struct):
    type: str = ""
    time: int = 0  # unix nanoseconds
    message: str = ""
    display_message: str = ""
    details: dict[str, str] = field(factory=dict)
    exit_code: int = 0
    signal: int = 0
    fails_task: bool = False
    restart_reason: str = ""
    driver_error: str = ""
    download_error: str = ""
    kill_timeout: int = 0


class TaskState(Struct):
    state: str = TASK_PENDING
    failed: bool = False
    restarts: int = 0
    last_restart: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    events: list[TaskEvent] = field(factory=list)


class RescheduleEvent(Struct):
    reschedule_time: int = 0
    prev_alloc_id: str = field("", json="PrevAllocID")
    prev_node_id: str = field("", json="PrevNodeID")
    delay: int = 0


class RescheduleTracker(Struct):
    events: list[RescheduleEvent] = field(factory=list)


class DesiredTransition(Struct):
    migrate: bool | None = None
    reschedule: bool | None = None
    force_reschedule: bool | None = None
    # `job stop` / `alloc stop -no-shutdown-delay`: the client skips the group's and the tasks'
    # shutdown_delay when it stops this allocation (Nomad's)
    no_shutdown_delay: bool | None = None


class AllocDeploymentStatus(Struct):
    """Whether the allocation became healthy (Nomad's AllocDeploymentStatus). Yurt has no
    deployments yet; the server's drainer sets it, by the group's `migrate` block, on the
    allocations of the groups it migrates. Healthy None: not decided yet."""

    healthy: bool | None = None
    timestamp: str = "0001-01-01T00:00:00Z"
    canary: bool = False
    modify_index: int = 0

    def has_health(self) -> bool:
        return self.healthy is not None


class AllocNetworkStatus(Struct):
    interface_name: str = ""
    address: str = ""
    dns: dict[str, Any] | None = field(None, json="DNS")


PORT_COLLISION = "network: reserved port collision "   # the scheduler's dimension: "<prefix><label>=<port>"


class AllocMetric(Struct):
    """Why placement went as it did (Nomad's AllocMetric): the scheduler makes one per placement
    (`of_placement`); allocations and failed placements carry it, the CLI prints `reasons()`."""

    nodes_evaluated: int = 0
    nodes_filtered: int = 0
    nodes_in_pool: int = 0
    nodes_available: dict[str, int] = field(factory=dict)
    class_filtered: dict[str, int] = field(factory=dict)
    constraint_filtered: dict[str, int] = field(factory=dict)
    nodes_exhausted: int = 0
    class_exhausted: dict[str, int] = field(factory=dict)
    dimension_exhausted: dict[str, int] = field(factory=dict)
    quota_exhausted: list[str] = field(factory=list)
    resources_exhausted: dict[str, Any] | None = None
    scores: dict[str, float] | None = None
    score_meta_data: list[dict[str, Any]] | None = None
    allocation_time: int = 0
    coalesced_failures: int = 0

    @classmethod
    def of_placement(cls, *, evaluated: int, in_pool: int, available: dict[str, int],
                     filtered: dict[str, int], exhausted: dict[str, int],
                     score_meta: list[dict[str, Any]]) -> AllocMetric:
        """The metric of one placement from the scheduler's counts (nodes filtered per reason,
        exhausted per dimension). Built without validation and with every field given, so no
        default factory runs: the scheduler makes one per placement."""
        return built(cls, {
            "nodes_evaluated": evaluated, "nodes_filtered": sum(filtered.values()), "nodes_in_pool": in_pool,
            "nodes_available": available, "class_filtered": {}, "constraint_filtered": filtered,
            "nodes_exhausted": sum(exhausted.values()), "class_exhausted": {}, "dimension_exhausted": exhausted,
            "quota_exhausted": [], "resources_exhausted": None, "scores": None,
            "score_meta_data": score_meta or None, "allocation_time": 0, "coalesced_failures": 0})

    def reasons(self) -> list[str]:
        """Human lines, as `nomad job run` prints them under a failed placement."""
        lines = []
        if self.nodes_evaluated == 0 and not self.nodes_in_pool:
            lines.append("No nodes were eligible for evaluation")
        for dc, n in sorted(self.nodes_available.items()):
            if n == 0:
                lines.append(f'No nodes are available in datacenter "{dc}"')
        for reason, n in sorted(self.constraint_filtered.items()):
            lines.append(f"{n} node{'s' if n != 1 else ''} excluded by filter: {reason}")
        for reason, n in sorted(self.class_filtered.items()):
            lines.append(f'Class "{reason}": {n} nodes excluded by filter')
        if self.nodes_exhausted:
            n = self.nodes_exhausted
            lines.append(f"Resources exhausted on {n} node{'s' if n != 1 else ''}")
        for dim, n in sorted(self.dimension_exhausted.items()):
            lines.append(f'Dimension "{dim}" exhausted on {n} node{"s" if n != 1 else ""}')
            if dim.startswith(PORT_COLLISION):
                label, _, port = dim[len(PORT_COLLISION):].rpartition("=")
                lines.append(f'  host port {port} is already used on {"that node" if n == 1 else "those nodes"} '
                             "(by another allocation, or reserved by the node): give port "
                             f'"{label}" another static value, or remove static to get a dynamic port')
        return lines


class Allocation(Struct):
    id: str = field("", json="ID")
    namespace: str = "default"
    eval_id: str = field("", json="EvalID")
    name: str = ""
    node_id: str = field("", json="NodeID")
    node_name: str = ""
    job_id: str = field("", json="JobID")
    job: Job | None = None
    task_group: str = ""
    allocated_resources: AllocatedResources = field(factory=AllocatedResources)
    desired_status: str = ALLOC_DESIRED_RUN
    desired_description: str = ""
    desired_transition: DesiredTransition = field(factory=DesiredTransition)
    deployment_id: str = field("", json="DeploymentID")
    deployment_status: AllocDeploymentStatus | None = None
    client_status: str = ALLOC_PENDING
    client_description: str = ""
    task_states: dict[str, TaskState] = field(factory=dict)
    previous_allocation: str = ""
    next_allocation: str = ""
    reschedule_tracker: RescheduleTracker | None = None
    followup_eval_id: str = field("", json="FollowupEvalID")
    network_status: AllocNetworkStatus | None = None
    metrics: AllocMetric | None = None
    create_index: int = 0
    modify_index: int = 0
    alloc_modify_index: int = 0
    create_time: int = 0
    modify_time: int = 0

    @property
    def index(self) -> int:
        """The N of `job.group[N]`."""
        try:
            return int(self.name[self.name.rindex("[") + 1:-1])
        except ValueError:
            return 0

    def terminal(self) -> bool:
        """Stopped by the server, or finished on the client."""
        return self.server_terminal() or self.client_terminal()

    def server_terminal(self) -> bool:
        return self.desired_status in (ALLOC_DESIRED_STOP, ALLOC_DESIRED_EVICT)

    def client_terminal(self) -> bool:
        return self.client_status in (ALLOC_COMPLETE, ALLOC_FAILED, ALLOC_LOST)

    def job_version(self) -> int:
        return self.job.version if self.job else 0

    def stub(self) -> dict[str, Any]:
        """The row of `/v1/allocations` and `/v1/job/<id>/allocations` (AllocationListStub)."""
        return {
            "ID": self.id, "EvalID": self.eval_id, "Name": self.name, "Namespace": self.namespace,
            "NodeID": self.node_id, "NodeName": self.node_name, "JobID": self.job_id,
            "JobType": self.job.type if self.job else "", "JobVersion": self.job_version(),
            "TaskGroup": self.task_group, "DesiredStatus": self.desired_status,
            "DesiredDescription": self.desired_description, "ClientStatus": self.client_status,
            "DesiredTransition": self.desired_transition.to_json(), "DeploymentID": self.deployment_id,
            "DeploymentStatus": self.deployment_status.to_json() if self.deployment_status else None,
            "ClientDescription": self.client_description,
            "TaskStates": {k: v.to_json() for k, v in self.task_states.items()},
            "FollowupEvalID": self.followup_eval_id, "PreviousAllocation": self.previous_allocation,
            "NextAllocation": self.next_allocation,
            "RescheduleTracker": self.reschedule_tracker.to_json() if self.reschedule_tracker else None,
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
            "AllocModifyIndex": self.alloc_modify_index,
            "CreateTime": self.create_time, "ModifyTime": self.modify_time,
        }


class _Heads:
    """An allocation's JSON without its job, kept for the allocations written last.

    The store writes this form of each allocation it stores (SQLite's row), and the API answers
    a node's watch with it (plus the job) right after: one serialization for both. Kept by the
    object itself (a stored allocation is never changed in place once stored; etcd's writer,
    whose indexes are stamped in place at the commit, serializes with `dump`, never kept)."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._rows: dict[str, tuple[Allocation, bytes]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def dump(a: Allocation) -> bytes:
        """The same JSON, not kept: for a writer whose allocation's indexes are not final yet
        (etcd's, which holds PENDING until the commit and stamps the object in place after)."""
        return a.model_dump_json(by_alias=True, exclude={"job"}).encode()

    def __call__(self, a: Allocation) -> bytes:
        hit = self._rows.get(a.id)
        if hit is not None and hit[0] is a:
            return hit[1]
        data = self.dump(a)
        with self._lock:
            rows = self._rows
            rows.pop(a.id, None)
            rows[a.id] = (a, data)
            while len(rows) > self.size:
                del rows[next(iter(rows))]
        return data


head_json = _Heads()
