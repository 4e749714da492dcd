"""Periodic and parameterized jobs (Nomad's nomad/periodic.go and Job.Dispatch).

A periodic parent launches a child `<parent>/periodic-<unix seconds>` at each cron time; the
launcher runs on the leader only. Its next launch is computed from the store (the newest
child's launch time), so a new leader carries on where the old one stopped, launching a missed
time once. `prohibit_overlap` skips a launch while a child is not dead. A parameterized parent
runs once per dispatch as a child `<parent>/dispatch-<unix>-<8 hex>` with the dispatch's meta
and payload.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from datetime import datetime, UTC
from typing import TYPE_CHECKING, Any

from yurt.errors import InvalidInput, NotFound
from yurt.structs import Job
from yurt.structs.cron import CronError, next_launch

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("yurt.server.periodic")

PERIODIC_SUFFIX = "/periodic-"
DISPATCH_SUFFIX = "/dispatch-"
DISPATCH_PAYLOAD_SIZE_LIMIT = 16 * 1024   # Nomad's DispatchPayloadSizeLimit
TICK = 0.5


def children(server: Server, namespace: str, parent_id: str) -> list[Job]:
    return [j for j in server.store.jobs(namespace, parent_id + "/") if j.parent_id == parent_id]


def launch_time(child_id: str) -> int | None:
    """The unix seconds in `<parent>/periodic-<unix>`, or None."""
    _, sep, tail = child_id.rpartition(PERIODIC_SUFFIX)
    return int(tail) if sep and tail.isdigit() else None


def _derived(parent: Job, child_id: str) -> Job:
    return parent.model_copy(deep=True, update={
        "id": child_id, "name": child_id, "parent_id": parent.id, "periodic": None, "status": "",
        "status_description": "", "stable": False, "version": 0, "create_index": 0, "modify_index": 0,
        "job_modify_index": 0, "submit_time": 0})


class PeriodicLauncher:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (namespace, job ID) -> (JobModifyIndex the time was computed for, next launch)
        self._next: dict[tuple[str, str], tuple[int, datetime | None]] = {}

    def start(self) -> None:
        self._stop.clear()
        self._next.clear()
        self._thread = threading.Thread(target=self._run, name="yurt-periodic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick(datetime.now(UTC))
            except Exception:
                log.exception("the periodic launcher's pass failed")

    def tick(self, now: datetime) -> None:
        seen = set()
        for job in self.server.store.jobs("*"):
            p = job.periodic
            if p is None or not p.enabled or job.stop or job.parent_id:
                continue
            key = (job.namespace or "default", job.id)
            seen.add(key)
            known = self._next.get(key)
            if known is None or known[0] != job.job_modify_index:
                last = max((t for c in children(self.server, key[0], job.id)
                            if (t := launch_time(c.id)) is not None), default=None)
                base = datetime.fromtimestamp(last, UTC) if last is not None else now
                if known is not None:   # a new version: from now on
                    base = now
                known = (job.job_modify_index, self._next_after(job, base))
                self._next[key] = known
            when = known[1]
            if when is None or when > now:
                continue
            self._next[key] = (job.job_modify_index, self._next_after(job, max(when, now)))
            self._launch(job, when)
        for key in set(self._next) - seen:
            del self._next[key]

    @staticmethod
    def _next_after(job: Job, after: datetime) -> datetime | None:
        assert job.periodic is not None
        try:
            return next_launch(job.periodic.all_specs(), after, job.periodic.time_zone)
        except CronError as e:
            log.warning('periodic job "%s": %s', job.id, e)
            return None

    def next_launch_rfc3339(self, job: Job) -> str | None:
        """For a plan: when a periodic job would launch next if submitted now (Nomad's
        NextPeriodicLaunch), in UTC."""
        if job.periodic is None or not job.periodic.enabled:
            return None
        nxt = self._next_after(job, datetime.now(UTC))
        return nxt.astimezone(UTC).isoformat().replace("+00:00", "Z") if nxt else None

    def _launch(self, job: Job, when: datetime, force: bool = False) -> dict[str, Any] | None:
        namespace = job.namespace or "default"
        assert job.periodic is not None
        if job.periodic.prohibit_overlap and not force:
            running = [c.id for c in children(self.server, namespace, job.id) if c.status != "dead"]
            if running:
                log.info('periodic job "%s": launch at %s skipped, prohibit_overlap and %s still running',
                         job.id, when.isoformat(), running[0])
                return None
        child = _derived(job, f"{job.id}{PERIODIC_SUFFIX}{int(when.timestamp())}")
        log.info('periodic job "%s": launching %s', job.id, child.id)
        return self.server.register_job(child, trigger="periodic-job")   # Nomad's EvalTriggerPeriodicJob

    def force(self, namespace: str, job_id: str) -> dict[str, Any]:
        job = self.server.store.job(namespace, job_id)
        if job is None:
            raise NotFound("job not found")
        if job.periodic is None:
            raise InvalidInput(f'job "{job_id}" is not periodic')
        if job.stop:
            raise InvalidInput(f'job "{job_id}" is stopped: run it again before forcing a launch')
        result = self._launch(job, datetime.now(UTC), force=True)
        assert result is not None
        return {"EvalID": result["EvalID"], "EvalCreateIndex": result["EvalCreateIndex"], "Index": result["Index"]}


def dispatch(server: Server, namespace: str, job_id: str, payload: bytes, meta: dict[str, str],
             idempotency_token: str = "", id_prefix_template: str = "") -> dict[str, Any]:
    """Nomad's Job.Dispatch: check the meta and payload against the parent, register the child."""
    job = server.store.job(namespace, job_id)
    if job is None:
        raise NotFound("job not found")
    pj = job.parameterized_job
    if pj is None or job.dispatched:
        raise InvalidInput(f'job "{job_id}" is not a parameterized job: only those can be dispatched')
    if job.stop:
        raise InvalidInput(f'job "{job_id}" is stopped: run it again before dispatching')
    if len(payload) > DISPATCH_PAYLOAD_SIZE_LIMIT:
        raise InvalidInput(f"payload exceeds maximum size; {len(payload)} > {DISPATCH_PAYLOAD_SIZE_LIMIT} bytes")
    if pj.payload == "forbidden" and payload:
        raise InvalidInput(f'job "{job_id}" does not allow a payload (payload = "forbidden")')
    if pj.payload == "required" and not payload:
        raise InvalidInput(f'job "{job_id}" requires a payload (payload = "required"), none was given')
    required = set(pj.meta_required or [])
    allowed = required | set(pj.meta_optional or [])
    missing = sorted(required - set(meta))
    if missing:
        raise InvalidInput("dispatch did not provide required meta keys: " + ", ".join(missing))
    extra = sorted(set(meta) - allowed)
    if extra:
        raise InvalidInput("dispatch included unpermitted meta keys: " + ", ".join(extra)
                           + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else " (the job allows none)"))
    if idempotency_token:   # a retried request gets the child it made (Nomad's CheckIdempotencyToken)
        for c in children(server, namespace, job_id):
            if c.dispatch_idempotency_token == idempotency_token:   # until it is garbage collected
                log.info('dispatch of "%s" with idempotency token: %s already exists', job_id, c.id)
                return {"DispatchedJobID": c.id, "EvalID": "", "EvalCreateIndex": 0,
                        "JobCreateIndex": c.create_index, "Index": c.modify_index}
    now = int(time.time())
    suffix = f"{id_prefix_template}-{now}" if id_prefix_template else str(now)
    child_id = f"{job_id}{DISPATCH_SUFFIX}{suffix}-{uuid.uuid4().hex[:8]}"
    child = _derived(job, child_id).model_copy(update={
        "dispatched": True, "meta": {**(job.meta or {}), **meta} or None,
        "payload": base64.b64encode(payload).decode() if payload else None,
        "dispatch_idempotency_token": idempotency_token})
    result = server.register_job(child)
    log.info('job "%s" dispatched as %s', job_id, child_id)
    return {"DispatchedJobID": child_id, "EvalID": result["EvalID"], "EvalCreateIndex": result["EvalCreateIndex"],
            "JobCreateIndex": result["JobModifyIndex"], "Index": result["Index"]}
