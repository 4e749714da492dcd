"""The eval broker: evaluations wait here for a scheduler worker.

Ready evals are handed out by priority, then age. At most one eval per job is in flight, so two
workers never schedule the same job at once; the job's later evals wait behind it. Evals with a
WaitUntil in the future (delayed reschedules) sit in a timer heap until due. Blocked evals
(placements that failed for lack of capacity) are parked per job and re-enqueued when capacity
changes: a node joins or comes back, or allocations finish.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict, deque

from yurt.structs import Evaluation

JobKey = tuple[str, str]


def _key(ev: Evaluation) -> JobKey:
    return (ev.namespace, ev.job_id)


class EvalBroker:
    def __init__(self, clock=time.time_ns) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._ready: list[tuple[int, int, Evaluation]] = []
        self._delayed: list[tuple[int, int, Evaluation]] = []
        self._inflight: dict[str, Evaluation] = {}
        self._job_inflight: dict[JobKey, str] = {}
        self._job_waiting: dict[JobKey, deque[Evaluation]] = defaultdict(deque)
        self._blocked: dict[JobKey, Evaluation] = {}
        self._known: set[str] = set()
        self._closed = False

    # -- producers --------------------------------------------------------------------------
    def enqueue(self, ev: Evaluation) -> None:
        with self._cond:
            if ev.id in self._known:
                return
            self._known.add(ev.id)
            if ev.wait_until and ev.wait_until > self._clock():
                heapq.heappush(self._delayed, (ev.wait_until, next(self._seq), ev))
            else:
                self._push_ready(ev)
            self._cond.notify_all()

    def block(self, ev: Evaluation) -> None:
        """Park a blocked eval; a newer one for the same job replaces it."""
        with self._cond:
            self._blocked[_key(ev)] = ev

    def unblock(self) -> list[Evaluation]:
        """Capacity changed: every blocked eval becomes ready again. Returns them."""
        with self._cond:
            evs = list(self._blocked.values())
            self._blocked.clear()
            for ev in evs:
                self._known.discard(ev.id)
        for ev in evs:
            self.enqueue(ev)
        return evs

    def drop_job(self, namespace: str, job_id: str) -> None:
        with self._cond:
            self._blocked.pop((namespace, job_id), None)

    def _push_ready(self, ev: Evaluation) -> None:
        key = _key(ev)
        if key in self._job_inflight:
            self._job_waiting[key].append(ev)
        else:
            heapq.heappush(self._ready, (-ev.priority, next(self._seq), ev))
            self._job_inflight[key] = ""  # reserved: this job has an eval queued

    # -- consumers --------------------------------------------------------------------------
    def dequeue(self, timeout: float) -> Evaluation | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                self._promote_due()
                if self._ready:
                    _, _, ev = heapq.heappop(self._ready)
                    self._inflight[ev.id] = ev
                    self._job_inflight[_key(ev)] = ev.id
                    return ev
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._delayed:
                    until_due = (self._delayed[0][0] - self._clock()) / 1e9
                    remaining = min(remaining, max(until_due, 0.001))
                self._cond.wait(remaining)
        return None

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, ev = heapq.heappop(self._delayed)
            self._push_ready(ev)

    def ack(self, eval_id: str) -> None:
        with self._cond:
            ev = self._inflight.pop(eval_id, None)
            self._known.discard(eval_id)
            if ev is None:
                return
            key = _key(ev)
            self._job_inflight.pop(key, None)
            waiting = self._job_waiting.get(key)
            if waiting:
                nxt = waiting.popleft()
                if not waiting:
                    del self._job_waiting[key]
                self._push_ready(nxt)
            self._cond.notify_all()

    def nack(self, eval_id: str) -> None:
        """Give an eval back (its worker failed); it is retried."""
        with self._cond:
            ev = self._inflight.pop(eval_id, None)
            if ev is None:
                return
            self._job_inflight.pop(_key(ev), None)
            self._push_ready(ev)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"TotalReady": len(self._ready), "TotalUnacked": len(self._inflight),
                    "TotalBlocked": len(self._blocked), "TotalWaiting": len(self._delayed)
                    + sum(len(q) for q in self._job_waiting.values())}

    def idle(self) -> bool:
        with self._cond:
            return not (self._ready or self._inflight or self._delayed or self._job_waiting)
