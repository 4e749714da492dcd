"""The event buffer behind `/v1/event/stream` (Nomad's event broker, `nomad/stream`).

Every committed write reaches the read model through `StateStore._apply` (on etcd, through the
watch, on every server), and `EventBuffer.capture` sees it there first: the write's changes and
the rows they replace, at the write's index. That is all a write pays (a few dict lookups);
which events the write makes, their Types and their JSON payloads are worked out only when a
subscriber first reads the batch, and then once for all subscribers.

The buffer keeps the last `size` batches (Nomad's `event_buffer_size`, one batch per index).
Readers pull: they ask for the batches after the index they have seen (`since`), so a writer never
waits for a reader; a reader that falls so far behind that batches it has not read were dropped
is told so (`Since.lost`) and its stream ends with an error.

A write's Type is Nomad's name for the operation that made it, inferred from what changed
(the same on every server, since they all see the same changes): see `_batch_type`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from yurt.structs import Allocation, Deployment, Evaluation, Job, Node
from yurt.structs.catalog import ServiceRegistration

from .memory import Tables
from .sqlite_backend import Changes

log = logging.getLogger("yurt.events")

TOPICS = ("Job", "Allocation", "Evaluation", "Node", "Deployment", "Service")
DEFAULT_BUFFER_SIZE = 100   # Nomad's server { event_buffer_size }


@dataclass
class Event:
    topic: str
    type: str
    key: str
    namespace: str
    filter_keys: list[str] | None
    index: int
    _payload: Callable[[], dict[str, Any]]
    _json: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Nomad's event object; built once, shared by every subscriber (do not mutate)."""
        if self._json is None:
            self._json = {"Topic": self.topic, "Type": self.type, "Key": self.key, "Namespace": self.namespace,
                          "FilterKeys": self.filter_keys, "Index": self.index,
                          "Payload": {self.topic: self._payload()}}
        return self._json


@dataclass
class _Old:
    """The rows a write replaces, taken before it is applied."""

    jobs: dict[Any, Job | None]
    allocs: dict[str, Allocation | None]
    nodes: dict[str, Node | None]
    deployments: dict[str, Deployment | None]
    services: dict[Any, ServiceRegistration | None]
    service_jobs: dict[str, str]   # the job of each written service's allocation, by alloc ID


@dataclass
class Batch:
    index: int
    changes: Changes
    old: _Old
    _events: list[Event] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[Event]:
        with self._lock:
            if self._events is None:
                self._events = _build(self.changes, self.old)
            return self._events


@dataclass
class Since:
    batches: list[Batch]
    lost: bool          # batches after the asked index were dropped before they were read
    oldest: int         # the oldest index still buffered (0: none)


class EventBuffer:
    def __init__(self, size: int = DEFAULT_BUFFER_SIZE) -> None:
        if size < 1:
            raise ValueError("the event buffer needs a size of at least 1")
        self.size = size
        self._batches: deque[Batch] = deque()
        self._lock = threading.Lock()
        self.dropped_through = 0   # the highest index dropped from the buffer
        self.failed = 0            # writes whose events could not be recorded

    def capture(self, ch: Changes, t: Tables) -> None:
        """A write about to be applied to `t` (called under the store's memory lock, after the
        write committed: it must never fail the write; a failure costs this write's events)."""
        if not (ch.jobs or ch.evals or ch.allocs or ch.nodes or ch.services or ch.deployments):
            return
        try:
            self._capture(ch, t)
        except Exception:   # the write stands; its events are lost, and the log says so
            self.failed += 1
            log.exception("the event stream missed write %d", ch.index)

    def _capture(self, ch: Changes, t: Tables) -> None:
        old = _Old({k: t.jobs.get(k) for k in ch.jobs}, {k: t.allocs.get(k) for k in ch.allocs},
                   {k: t.nodes.get(k) for k in ch.nodes}, {k: t.deployments.get(k) for k in ch.deployments},
                   {k: t.services.get(k) for k in ch.services}, {})
        for k, svc in ch.services.items():
            svc = svc or old.services[k]
            alloc = (ch.allocs.get(svc.alloc_id) or t.allocs.get(svc.alloc_id)) if svc and svc.alloc_id else None
            if alloc is not None:
                old.service_jobs[alloc.id] = alloc.job_id
        with self._lock:
            self._batches.append(Batch(ch.index, ch, old))
            while len(self._batches) > self.size:
                self.dropped_through = self._batches.popleft().index

    def since(self, index: int) -> Since:
        """The batches after `index`, oldest first."""
        with self._lock:
            out: list[Batch] = []
            for b in reversed(self._batches):
                if b.index <= index:
                    break
                out.append(b)
            out.reverse()
            oldest = self._batches[0].index if self._batches else 0
            return Since(out, index < self.dropped_through, oldest)

    def start(self, index: int) -> int:
        """Where a new subscriber asking for `?index=` starts reading (it gets the batches after the
        returned index): Nomad's rule, the first buffered batch at or after `index` (0: the oldest
        still buffered)."""
        with self._lock:
            if not self._batches:
                return max(index - 1, self.dropped_through)
            if index <= self._batches[0].index:
                return self._batches[0].index - 1
            return index - 1


# --- building events ------------------------------------------------------------------------------

def _job_type(new: Job | None, old: Job | None) -> str:
    """JobRegistered / JobDeregistered for a write that registers, stops or purges the job; ""
    for one that only moves its status (the write's own Type then)."""
    if new is None:
        return "JobDeregistered"
    if new.stop and (old is None or not old.stop):
        return "JobDeregistered"
    if old is None or new.job_modify_index != old.job_modify_index or new.version != old.version \
            or new.stop != old.stop:
        return "JobRegistered"
    return ""


def _node_type(new: Node | None, old: Node | None) -> str:
    if new is None:
        return "NodeDeregistration"
    if old is None:
        return "NodeRegistration"
    if new.drain_strategy != old.drain_strategy or new.last_drain != old.last_drain:
        return "NodeDrain"
    if new.scheduling_eligibility != old.scheduling_eligibility:
        return "NodeEligibility"
    if new.status != old.status or new.events != old.events or new.status_description != old.status_description:
        return "NodeStreamEvent"
    return "NodeRegistration"


def _batch_type(ch: Changes, old: _Old) -> str:
    """Nomad's Type for the whole write (Nomad stamps every event of one raft entry with the
    entry's message type)."""
    job_types = {t for k, j in ch.jobs.items() if (t := _job_type(j, old.jobs.get(k)))}
    if job_types:
        if "JobRegistered" in job_types:
            return "JobRegistered"
        deleted = sum(1 for j in ch.jobs.values() if j is None)
        return "JobBatchDeregistered" if deleted > 1 else "JobDeregistered"
    if ch.nodes:
        types = [_node_type(n, old.nodes.get(k)) for k, n in ch.nodes.items()]
        return types[0]
    allocs = [(a, old.allocs.get(k)) for k, a in ch.allocs.items() if a is not None]
    placed = any(o is None or a.desired_status != o.desired_status for a, o in allocs)
    if placed:
        return "PlanResult"
    if ch.deployments:
        for k, d in ch.deployments.items():
            od = old.deployments.get(k)
            if d is not None and od is not None and any(
                    g.promoted and not (od.task_groups.get(n) and od.task_groups[n].promoted)
                    for n, g in d.task_groups.items()):
                return "DeploymentPromotion"
        if any(a.deployment_status != o.deployment_status for a, o in allocs if o is not None):
            return "DeploymentAllocHealth"
        return "DeploymentStatusUpdate"
    if allocs:
        if any(a.desired_transition != o.desired_transition for a, o in allocs if o is not None):
            return "AllocationUpdateDesiredStatus"
        if any(a.client_status != o.client_status or a.task_states != o.task_states
               for a, o in allocs if o is not None):
            return "AllocationUpdated"
        if any(a.deployment_status != o.deployment_status for a, o in allocs if o is not None):
            return "DeploymentAllocHealth"
        return "AllocationUpdated"
    return "EvaluationUpdated"


def _keys(*keys: str) -> list[str] | None:
    out = [k for k in keys if k]
    return out or None


def _alloc_json(a: Allocation) -> dict[str, Any]:
    body = a.model_dump(by_alias=True, mode="json", exclude={"job"})
    body["Job"] = None   # as Nomad's events: the allocation without its job
    return body


def _node_json(n: Node) -> dict[str, Any]:
    body = n.to_json()
    body.pop("SecretID", None)
    return body


def _build(ch: Changes, old: _Old) -> list[Event]:
    ix = ch.index
    typ = _batch_type(ch, old)
    out: list[Event] = []
    for key, job in ch.jobs.items():
        shown = job if job is not None else old.jobs.get(key)
        if shown is None:
            continue
        out.append(Event("Job", _job_type(job, old.jobs.get(key)) or typ, shown.id, shown.namespace or "default",
                         None, ix, shown.to_json))
    for ev in ch.evals.values():
        if ev is not None:
            out.append(_eval_event(ev, typ, ix))
    for d in ch.deployments.values():
        if d is not None:
            out.append(Event("Deployment", typ, d.id, d.namespace, _keys(d.job_id), ix, d.to_json))
    for a in ch.allocs.values():
        if a is not None:
            out.append(_alloc_event(a, typ, ix))
    for node_id, n in ch.nodes.items():
        shown_node = n if n is not None else old.nodes.get(node_id)
        if shown_node is not None:
            out.append(_node_event(shown_node, _node_type(n, old.nodes.get(node_id)), ix))
    for svc_key, svc in ch.services.items():
        if svc is not None:
            out.append(_service_event(svc, "ServiceRegistration", ix, old.service_jobs))
        elif (gone := old.services.get(svc_key)) is not None:
            out.append(_service_event(gone, "ServiceDeregistration", ix, old.service_jobs))
    return out


def _eval_event(ev: Evaluation, typ: str, ix: int) -> Event:
    return Event("Evaluation", typ, ev.id, ev.namespace, _keys(ev.job_id, ev.deployment_id), ix, ev.to_json)


def _alloc_event(a: Allocation, typ: str, ix: int) -> Event:
    return Event("Allocation", typ, a.id, a.namespace, _keys(a.job_id, a.deployment_id), ix,
                 lambda: _alloc_json(a))


def _node_event(n: Node, typ: str, ix: int) -> Event:
    return Event("Node", typ, n.id, "", None, ix, lambda: _node_json(n))


def _service_event(s: ServiceRegistration, typ: str, ix: int, jobs: dict[str, str]) -> Event:
    return Event("Service", typ, s.id, s.namespace, _keys(jobs.get(s.alloc_id, ""), s.service), ix, s.to_json)
