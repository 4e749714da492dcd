"""The eval broker: evaluations wait here for a scheduler worker.

Ready evals are handed out by priority, then age. At most one eval per job is in flight, so two
workers never schedule the same job at once; the job's later evals wait behind it. Evals with a
WaitUntil in the future (delayed reschedules) sit in a timer heap until due. Blocked evals
(placements that failed for lack of capacity) are parked per job and re-enqueued when capacity
changes: a node joins or comes back, or allocations finish.

A worker acks an eval it processed, or nacks one whose processing failed: a nacked eval is
handed out again after a delay (1 s, then 20 s, as Nomad), until it has been delivered
`delivery_limit` times; then `nack` says so and the worker marks it failed.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from yurt.structs import Evaluation

JobKey = tuple[str, str]

DELIVERY_LIMIT = 3                          # Nomad's EvalDeliveryLimit
NACK_DELAYS = (1_000_000_000, 20_000_000_000)  # ns before the 1st and every later redelivery


def _key(ev: Evaluation) -> JobKey:
    return (ev.namespace, ev.job_id)


class EvalBroker:
    def __init__(self, clock: Callable[[], int] = time.time_ns, *, delivery_limit: int = DELIVERY_LIMIT,
                 nack_delays: tuple[int, int] = NACK_DELAYS) -> None:
        self._clock = clock
        self._delivery_limit = delivery_limit
        self._nack_delays = nack_delays
        self._deliveries: dict[str, int] = {}
        self._redeliver: set[str] = set()   # nacked evals in the timer heap; their job stays reserved
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
                    self._deliveries[ev.id] = self._deliveries.get(ev.id, 0) + 1
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
            if ev.id in self._redeliver:
                self._redeliver.discard(ev.id)
                heapq.heappush(self._ready, (-ev.priority, next(self._seq), ev))
            else:
                self._push_ready(ev)

    def ack(self, eval_id: str) -> None:
        """The eval was processed: it leaves the broker, and its job's next eval may go."""
        with self._cond:
            self._done(eval_id)
            self._cond.notify_all()

    def _done(self, eval_id: str) -> None:
        ev = self._inflight.pop(eval_id, None)
        self._known.discard(eval_id)
        self._deliveries.pop(eval_id, None)
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

    def nack(self, eval_id: str) -> bool:
        """Processing failed. True: the eval will be handed out again after a delay (its job's
        later evals keep waiting behind it). False: it reached the delivery limit and left the
        broker, as with ack; the caller marks it failed."""
        with self._cond:
            ev = self._inflight.get(eval_id)
            if ev is None:
                return False
            deliveries = self._deliveries.get(eval_id, 1)
            if deliveries >= self._delivery_limit:
                self._done(eval_id)
                self._cond.notify_all()
                return False
            del self._inflight[eval_id]
            self._job_inflight[_key(ev)] = ""   # still reserved: redelivered before the job's next
            self._redeliver.add(eval_id)
            delay = self._nack_delays[0 if deliveries == 1 else 1]
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), ev))
            self._cond.notify_all()
            return True

    def deliveries(self, eval_id: str) -> int:
        """How many times the eval has been handed out so far."""
        with self._cond:
            return self._deliveries.get(eval_id, 0)

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
