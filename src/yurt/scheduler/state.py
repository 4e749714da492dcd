"""The read-only view of the cluster a scheduler works from.

The server's state store provides it (its `Snapshot`); the tests and benches have one in plain
dicts (`tests/memory_state.py`).
"""

from __future__ import annotations

from typing import Protocol

from yurt.structs import Allocation, Deployment, Job, Node, NodeUsed


class SchedulerState(Protocol):
    """What ``schedule`` reads: the store's `Snapshot` is one."""

    @property
    def index(self) -> int:
        """The state's index (the plan records it as its snapshot index)."""
        ...

    def job(self, namespace: str, job_id: str) -> Job | None: ...

    def nodes(self) -> list[Node]: ...

    def node(self, node_id: str) -> Node | None: ...

    def allocs_by_job(self, namespace: str, job_id: str) -> list[Allocation]:
        """Every allocation of the job, terminal ones included."""
        ...

    def allocs_by_node(self, node_id: str) -> list[Allocation]:
        """The allocations on a node that still hold resources (not terminal)."""
        ...

    def node_used(self, node_id: str) -> NodeUsed | None:
        """What those allocations add up to (None: nothing), kept as they are written."""
        ...

    def alloc(self, alloc_id: str) -> Allocation | None: ...

    def latest_deployment(self, namespace: str, job_id: str) -> Deployment | None:
        """The job's newest deployment (by CreateIndex), whatever its status."""
        ...
