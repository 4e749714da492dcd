"""Scheduler workers: take an eval from the broker, plan it, have the plan applied, record the outcome."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import TYPE_CHECKING

from yurt.scheduler import SchedulerResult, schedule
from yurt.structs import Evaluation
from yurt.structs.evaluation import EVAL_COMPLETE, EVAL_FAILED, TRIGGER_MAX_PLANS

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("yurt.server.worker")

MAX_PLAN_ATTEMPTS = 5


class Worker(threading.Thread):
    def __init__(self, server: Server, n: int) -> None:
        super().__init__(name=f"yurt-worker-{n}", daemon=True)
        self.server = server
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        broker = self.server.broker
        while not self._stop_event.is_set():
            ev = broker.dequeue(0.5)
            if ev is None:
                continue
            try:
                self.process(ev)
            except Exception:
                tries = broker.deliveries(ev.id)
                log.exception("evaluation %s failed (delivery %d)", ev.id, tries)
                if not broker.nack(ev.id):
                    self._failed(ev, f"scheduling failed {tries} times with an internal error; "
                                     "see the agent log")
                else:
                    self.server.metrics.evaluation(ev.type, "nacked")
            else:
                broker.ack(ev.id)

    def process(self, ev: Evaluation) -> None:
        store = self.server.store
        result = None
        for attempt in range(MAX_PLAN_ATTEMPTS):
            snap = store.snapshot()
            seed = zlib.crc32(ev.id.encode()) + attempt * 7919 + snap.index
            metrics = self.server.metrics
            with metrics.placement_seconds.labels(ev.type or "service").time():
                result = schedule(ev, snap, seed=seed, now_ns=time.time_ns())
            if result.plan.is_noop():
                break
            # the eval's outcome is written with the plan, in the same transaction, if the plan is taken whole
            with metrics.plan_apply_seconds.time():
                applied = self.server.applier.apply(result.plan, self._outcome(ev, result))
            if not applied.rejected_nodes:
                self._finish(ev, result, written=True)
                return
            metrics.plan_rejected_nodes.inc(len(applied.rejected_nodes))
            log.info("plan for eval %s rejected on %d node(s); re-planning", ev.id[:8], len(applied.rejected_nodes))
        else:
            self._failed(ev, f"{TRIGGER_MAX_PLANS}: the plan kept conflicting")
            return
        self._finish(ev, result)

    def _failed(self, ev: Evaluation, description: str) -> None:
        self.server.metrics.evaluation(ev.type, "failed")
        self.server.store.upsert_evals([ev.model_copy(update={
            "status": EVAL_FAILED, "status_description": description, "modify_time": time.time_ns()})])

    def _finish(self, ev: Evaluation, result: SchedulerResult, written: bool = False) -> None:
        """Record the outcome (unless the plan's write already did) and hand the blocked and
        follow-up evals to the broker."""
        if not written:
            self.server.store.upsert_evals(self._outcome(ev, result))
        blocked = result.blocked_eval
        if result.failed_tg_allocs:
            self.server.metrics.placement_failures.labels(ev.type or "service").inc(
                sum(result.queued.get(g, 0) for g in result.failed_tg_allocs) or len(result.failed_tg_allocs))
        outcome = "blocked" if blocked is not None and blocked.id == ev.id else (result.status or EVAL_COMPLETE)
        self.server.metrics.evaluation(ev.type, outcome)
        if blocked is not None:
            self.server.broker.block(blocked)
        for follow in result.followup_evals:
            self.server.broker.enqueue(follow)

    @staticmethod
    def _outcome(ev: Evaluation, result: SchedulerResult) -> list[Evaluation]:
        """The evals to write for a scheduling outcome. The scheduler built the blocked eval, if
        any: a new one for what is still queued, or `ev` itself when a blocked eval still cannot place."""
        now = time.time_ns()
        blocked = result.blocked_eval
        if blocked is not None and blocked.id == ev.id:
            updates = [blocked]
        else:
            updates = [ev.model_copy(update={
                "status": result.status or EVAL_COMPLETE,
                "status_description": result.status_description,
                "failed_tg_allocs": result.failed_tg_allocs or None,
                "queued_allocations": result.queued,
                "blocked_eval": blocked.id if blocked else "",
                "next_eval": result.followup_evals[0].id if result.followup_evals else "",
                "modify_time": now,
            })]
            if blocked is not None:
                updates.append(blocked)
        updates.extend(result.followup_evals)
        return updates
