"""Scheduler workers: take an eval from the broker, plan it, have the plan applied, record the outcome."""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib

from yurt.scheduler import schedule
from yurt.structs import Evaluation
from yurt.structs.evaluation import EVAL_BLOCKED, EVAL_COMPLETE, EVAL_FAILED, TRIGGER_MAX_PLANS

log = logging.getLogger("yurt.server.worker")

MAX_PLAN_ATTEMPTS = 5


class Worker(threading.Thread):
    def __init__(self, server, n: int) -> None:
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
            except Exception:  # noqa: BLE001 - a scheduler bug must not kill the worker
                log.exception("evaluation %s failed", ev.id)
                self.server.store.upsert_evals([ev.model_copy(update={
                    "status": EVAL_FAILED, "status_description": "internal error while scheduling; see the agent log",
                    "modify_time": time.time_ns()})])
            finally:
                broker.ack(ev.id)

    def process(self, ev: Evaluation) -> None:
        store = self.server.store
        result = None
        for attempt in range(MAX_PLAN_ATTEMPTS):
            snap = store.snapshot()
            seed = zlib.crc32(ev.id.encode()) + attempt * 7919 + snap.index
            result = schedule(ev, snap, seed=seed, now_ns=time.time_ns())
            if result.plan.is_noop():
                break
            applied = self.server.applier.apply(result.plan)
            if not applied.rejected_nodes:
                break
            log.info("plan for eval %s rejected on %d node(s); re-planning", ev.id[:8], len(applied.rejected_nodes))
        else:
            ev = ev.model_copy(update={"triggered_by": ev.triggered_by})
            self._finish(ev, None, failed=f"{TRIGGER_MAX_PLANS}: the plan kept conflicting")
            return
        self._finish(ev, result)

    def _finish(self, ev: Evaluation, result, failed: str = "") -> None:
        now = time.time_ns()
        updates: list[Evaluation] = []
        if result is None:
            updates.append(ev.model_copy(update={"status": EVAL_FAILED, "status_description": failed,
                                                 "modify_time": now}))
            self.server.store.upsert_evals(updates)
            return
        blocked = None
        if result.failed_tg_allocs:
            blocked = Evaluation(
                id=str(uuid.uuid4()), namespace=ev.namespace, priority=ev.priority, type=ev.type,
                triggered_by="queued-allocs", job_id=ev.job_id, job_modify_index=ev.job_modify_index,
                status=EVAL_BLOCKED, status_description="created to place remaining allocations",
                previous_eval=ev.id, failed_tg_allocs=None, create_time=now, modify_time=now)
        done = ev.model_copy(update={
            "status": result.status or EVAL_COMPLETE,
            "status_description": result.status_description,
            "failed_tg_allocs": result.failed_tg_allocs or None,
            "queued_allocations": result.queued,
            "blocked_eval": blocked.id if blocked else "",
            "next_eval": result.followup_evals[0].id if result.followup_evals else "",
            "modify_time": now,
        })
        updates.append(done)
        if blocked:
            updates.append(blocked)
        updates.extend(result.followup_evals)
        self.server.store.upsert_evals(updates)
        if blocked:
            self.server.broker.block(blocked)
        for follow in result.followup_evals:
            self.server.broker.enqueue(follow)
