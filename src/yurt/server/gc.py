"""Garbage collection of what is done (Nomad's core scheduler GC): terminal evaluations with their
terminal allocations, stopped jobs whose every evaluation and allocation is terminal, finished
deployments, and nodes down for a day with nothing left on them.

Thresholds are Nomad's defaults: an evaluation is collected an hour after its last change (a
batch job's after 24 hours: its allocations' outcome is what users come back for), a stopped
job four hours after it was stopped, a finished deployment (successful, failed, cancelled) an
hour after its last change once no live allocation belongs to it (at once when its job is
gone), a down node 24 hours after it went down, once it holds no live allocation. An
allocation is only ever collected with its evaluation, and only once both the server and the
client are done with it (a stopped allocation still running on its node stays, whatever its
age). `POST /v1/system/gc` collects everything
terminal now, whatever its age, as Nomad's forced GC does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from yurt.state import StateStore
from yurt.structs import Allocation, Evaluation, Job

log = logging.getLogger("yurt.gc")

HOUR = 3600 * 10**9
EVAL_GC_THRESHOLD = 1 * HOUR
BATCH_EVAL_GC_THRESHOLD = 24 * HOUR
JOB_GC_THRESHOLD = 4 * HOUR
DEPLOYMENT_GC_THRESHOLD = 1 * HOUR
NODE_GC_THRESHOLD = 24 * HOUR
GC_INTERVAL = 300.0   # seconds between two periodic passes (Nomad's job_gc_interval)


@dataclass
class Collected:
    jobs: int = 0
    evals: int = 0
    allocs: int = 0
    deployments: int = 0
    nodes: int = 0


def _done(a: Allocation) -> bool:
    """Nothing left to do for this allocation, on either side."""
    return a.client_terminal() or (a.server_terminal() and a.client_status in ("pending", ""))


class GarbageCollector:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass -------------------------------------------------------------------------
    def collect(self, force: bool = False, now: int | None = None) -> Collected:
        now = time.time_ns() if now is None else now
        out = Collected()
        jobs = {(j.namespace or "default", j.id): j for j in self.store.jobs()}
        by_eval: dict[str, list[Allocation]] = {}
        for a in self.store.allocs():
            by_eval.setdefault(a.eval_id, []).append(a)
        evals = self.store.evals()
        by_job: dict[tuple[str, str], list[Evaluation]] = {}
        for e in evals:
            by_job.setdefault((e.namespace or "default", e.job_id), []).append(e)

        # stopped jobs, everything of theirs terminal
        for key, job in jobs.items():
            if not self._job_collectable(job, by_job.get(key, []), by_eval, force, now):
                continue
            mine = by_job.get(key, [])
            alloc_ids = [a.id for e in mine for a in by_eval.get(e.id, [])]
            alloc_ids += [a.id for a in self.store.allocs() if (a.namespace or "default", a.job_id) == key
                          and a.id not in alloc_ids]
            self.store.delete_evals([e.id for e in mine], alloc_ids)
            self.store.delete_job(*key)
            out.jobs += 1
            out.evals += len(mine)
            out.allocs += len(alloc_ids)
            for e in mine:
                by_eval.pop(e.id, None)
            by_job.pop(key, None)

        # terminal evaluations whose allocations are all done
        gone_evals: list[str] = []
        gone_allocs: list[str] = []
        for e in [e for es in by_job.values() for e in es]:
            if not e.terminal():
                continue
            allocs = by_eval.get(e.id, [])
            if not all(_done(a) for a in allocs):
                continue
            owner = jobs.get((e.namespace or "default", e.job_id))
            threshold = BATCH_EVAL_GC_THRESHOLD if owner is not None and owner.type == "batch" else EVAL_GC_THRESHOLD
            changed = max([e.modify_time, *(a.modify_time for a in allocs)])
            if not force and now - changed < threshold:
                continue
            gone_evals.append(e.id)
            gone_allocs.extend(a.id for a in allocs)
        if gone_evals:
            self.store.delete_evals(gone_evals, gone_allocs)
            out.evals += len(gone_evals)
            out.allocs += len(gone_allocs)
        out.deployments = self._deployments(force, now)
        out.nodes = self._nodes(force, now)
        if out.jobs or out.evals or out.deployments or out.nodes:
            log.info("garbage collection%s: %d jobs, %d evaluations, %d allocations, %d deployments, %d nodes",
                     " (forced)" if force else "", out.jobs, out.evals, out.allocs, out.deployments, out.nodes)
        return out

    def _deployments(self, force: bool, now: int) -> int:
        live = {a.deployment_id for a in self.store.allocs() if a.deployment_id and not a.terminal()}
        gone = []
        for d in self.store.deployments():
            if d.active() or d.id in live:
                continue
            job_gone = self.store.job(d.namespace or "default", d.job_id) is None
            if force or job_gone or now - d.modify_time >= DEPLOYMENT_GC_THRESHOLD:
                gone.append(d.id)
        if gone:
            self.store.delete_deployments(gone)
        return len(gone)

    def _nodes(self, force: bool, now: int) -> int:
        n = 0
        for node in self.store.nodes():
            if node.status != "down":
                continue
            if not force and now - node.status_updated_at * 10**9 < NODE_GC_THRESHOLD:   # StatusUpdatedAt: seconds
                continue
            if any(not a.terminal() for a in self.store.allocs_by_node(node.id)):
                continue
            self.store.delete_node(node.id)
            n += 1
        return n

    @staticmethod
    def _job_collectable(job: Job, evals: list[Evaluation], by_eval: dict[str, list[Allocation]],
                         force: bool, now: int) -> bool:
        if not (job.stop or job.status == "dead"):
            return False
        if not all(e.terminal() for e in evals):
            return False
        if not all(_done(a) for e in evals for a in by_eval.get(e.id, [])):
            return False
        if force:
            return True
        changed = max([job.submit_time, *(e.modify_time for e in evals)])
        return now - changed >= JOB_GC_THRESHOLD

    # -- the periodic pass (the leader's) ---------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="yurt-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(GC_INTERVAL):
            try:
                self.collect()
            except Exception:   # a failed pass: the next one tries again
                log.exception("garbage collection failed")
