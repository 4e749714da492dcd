"""Follow an evaluation and then its allocations, as `nomad job run` does (command/monitor.go).

Everything waits on blocking queries (`?index=&wait=`), so following costs one open request at a
time. On a terminal a rich Live table of the followed allocations updates in place; otherwise a
plain line is printed on each change.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from rich.live import Live
from rich.text import Text

from yurt.api.client import YurtClient

from .deployment_cmd import ACTIVE, deployment_text, needs_promotion
from .format import bullets, echo, fmt_clock, fmt_time, metric_reasons, pretty_duration, relative, render, short, table
from .output import EXIT_ERROR, EXIT_OK, EXIT_PLACEMENT, err, out

TERMINAL_EVAL = ("complete", "failed", "canceled")
TERMINAL_CLIENT = ("complete", "failed", "lost")
MAX_WAIT = 30.0  # seconds one blocking query may hold, so the -timeout is honoured


class FollowTimeout(Exception):
    pass


def placement_failures(ev: dict, indent: str = "    ") -> list[str]:
    """`Task Group "g" (failed to place N allocation(s)):` and the metric bullets."""
    lines = []
    for group, metric in sorted((ev.get("FailedTGAllocs") or {}).items()):
        n = (metric or {}).get("CoalescedFailures", 0) + 1
        lines.append(f'{indent}Task Group "{group}" (failed to place {n} allocation{"s" if n != 1 else ""}):')
        lines.extend(bullets(metric_reasons(metric), indent + "  "))
    return lines


def task_summary(alloc: dict) -> str:
    parts = []
    for name, st in sorted((alloc.get("TaskStates") or {}).items()):
        s = f"{name}: {st.get('State', 'pending')}"
        if st.get("Failed"):
            s += " (failed)"
        if st.get("Restarts"):
            s += f", {st['Restarts']} restart{'s' if st['Restarts'] != 1 else ''}"
        parts.append(s)
    return "; ".join(parts) or "-"


def event_rows(state: dict, limit: int | None = None) -> list[tuple[str, str, str]]:
    events = sorted(state.get("Events") or [], key=lambda e: e.get("Time", 0), reverse=True)
    if limit:
        events = events[:limit]
    return [(fmt_time(e.get("Time")), e.get("Type", ""), e.get("DisplayMessage") or e.get("Message") or "")
            for e in events]


class Monitor:
    def __init__(self, client: YurtClient, *, verbose: bool = False, timeout: float = 300.0,
                 live: bool | None = None) -> None:
        self.client = client
        self.verbose = verbose
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.live_enabled = out.is_terminal if live is None else live
        self._live: Live | None = None
        self._dlive: Live | None = None
        self.job_id = ""

    # -- output -----------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        line = f"==> {fmt_clock()}: {msg}"
        if self._live is not None:
            self._live.console.print(line, style="bold", markup=False, highlight=False)
        elif out.is_terminal:
            out.print(line, style="bold", markup=False)
        else:
            echo(line)

    def progress(self, msg: str) -> None:
        line = f"    {fmt_clock()}: {msg}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            echo(line)

    def raw(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            echo(line)

    def _wait(self) -> str:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FollowTimeout()
        return f"{int(min(left, MAX_WAIT) * 1000) or 1}ms"

    def _id(self, ident: str) -> str:
        return short(ident, self.verbose)

    # -- the evaluation ---------------------------------------------------------------------
    def monitor(self, eval_id: str, *, follow: str = "placements") -> int:
        """Follow `eval_id` to the end, then (follow="placements") its allocations until they
        run, or (follow="stops") the job's stopping allocations until they are stopped."""
        try:
            return self._monitor(eval_id, follow)
        except FollowTimeout:
            self._stop_live()
            took = pretty_duration(self.timeout) if self.timeout >= 1 else f"{int(self.timeout * 1000)}ms"
            see = f"`yurt job status {self.job_id}`" if self.job_id else "`yurt job status`"
            msg = (f'timed out after {took} following evaluation "{self._id(eval_id)}" and its allocations; '
                   f"they carry on in the cluster (see {see})")
            err.print(f"Error: {msg}", markup=False, highlight=False)
            return EXIT_ERROR
        finally:
            self._stop_live()

    def _monitor(self, eval_id: str, follow: str) -> int:
        self.info(f'Monitoring evaluation "{self._id(eval_id)}"')
        sched_failure = False
        placed: list[dict] = []
        job_id = ""
        first_eval_index = 0
        while True:
            ev, allocs = self._eval_to_end(eval_id)
            first_eval_index = first_eval_index or ev.get("CreateIndex", 0)
            job_id = ev.get("JobID") or job_id
            self.job_id = job_id
            placed.extend(a for a in allocs if a.get("DesiredStatus") == "run")
            status = ev.get("Status")
            if status != "complete":
                self.info(f'Evaluation "{self._id(eval_id)}" finished with status "{status}"')
                if ev.get("StatusDescription"):
                    self.raw(f"    {ev['StatusDescription']}")
                return EXIT_ERROR
            if ev.get("FailedTGAllocs"):
                sched_failure = True
                self.info(f'Evaluation "{self._id(eval_id)}" finished with status "complete" but failed '
                          "to place all allocations:")
                for line in placement_failures(ev):
                    self.raw(line)
                if ev.get("BlockedEval"):
                    self.raw(f'    Evaluation "{self._id(ev["BlockedEval"])}" waiting for additional '
                             "capacity to place remainder")
            else:
                self.info(f'Evaluation "{self._id(eval_id)}" finished with status "complete"')
            if not ev.get("NextEval"):
                break
            eval_id = ev["NextEval"]
            self.info(f'Monitoring next evaluation "{self._id(eval_id)}"')

        if follow == "stops":
            return self._follow_stops(job_id)
        if sched_failure:       # a deployment short of placements waits for capacity: say so, exit 2
            code = self._follow_placements(job_id, placed) if placed else EXIT_OK
            return EXIT_PLACEMENT if code == EXIT_OK else code
        deployment = self._deployment_of(ev, first_eval_index, job_id)
        if placed:
            code = self._follow_placements(job_id, placed, deployment)
            if code != EXIT_OK and not (deployment and _auto_revert(deployment)):
                return code
        if deployment is None:
            return EXIT_OK
        return self.follow_deployment(deployment["ID"])

    def _eval_to_end(self, eval_id: str) -> tuple[dict, list[dict]]:
        """Wait for the evaluation to finish; print its allocations, then its status change."""
        index, last = 0, None
        while True:
            ev, index = self.client.evaluation(eval_id, index=index, wait=self._wait() if index else None)
            status = ev.get("Status")
            if last is None:
                if ev.get("NodeID") and not ev.get("JobID"):
                    self.progress(f'Evaluation triggered by node "{self._id(ev["NodeID"])}"')
                else:
                    self.progress(f'Evaluation triggered by job "{ev.get("JobID")}"')
            allocs: list[dict] = []
            if status in TERMINAL_EVAL:
                allocs = self.client.eval_allocations(eval_id)
                for a in sorted(allocs, key=lambda a: a.get("CreateIndex", 0)):
                    verb = "created" if a.get("CreateIndex", 0) >= ev.get("CreateIndex", 0) else "modified"
                    self.progress(f'Allocation "{self._id(a["ID"])}" {verb}: node "{self._id(a.get("NodeID"))}", '
                                  f'group "{a.get("TaskGroup")}"')
            if last is not None and status != last:
                self.progress(f'Evaluation status changed: "{last}" -> "{status}"')
            last = status
            if status in TERMINAL_EVAL:
                return ev, allocs

    # -- allocations ------------------------------------------------------------------------
    def _job_allocs(self, job_id: str, index: int) -> tuple[list[dict], int]:
        return self.client.get(f"/v1/job/{quote(job_id, safe='')}/allocations", index=index,
                               wait=self._wait() if index else None)

    def _follow_placements(self, job_id: str, placed: list[dict], deployment: dict | None = None) -> int:
        ids = [a["ID"] for a in placed]
        last = {a["ID"]: a.get("ClientStatus") or "pending" for a in placed}   # in-place updates: running already
        latest = {a["ID"]: a for a in placed}
        batch = any(a.get("JobType") in ("batch", "sysbatch") for a in placed)
        ok_states = ("running", "complete") if batch else ("running",)
        self._start_live(latest, ids)
        index = 0
        while True:
            allocs, index = self._job_allocs(job_id, index)
            by_id = {a["ID"]: a for a in allocs}
            changes = []
            for aid in ids:
                a = by_id.get(aid)
                if a is None:
                    continue
                latest[aid] = a
                status = a.get("ClientStatus", "pending")
                if status != last[aid]:
                    desc = f" ({a['ClientDescription']})" if a.get("ClientDescription") else ""
                    changes.append(f'Allocation "{self._id(aid)}" status changed: "{last[aid]}" -> "{status}"{desc}')
                    last[aid] = status
            self._update_live(latest, ids)
            for line in changes:
                self.progress(line)
            failed = [latest[i] for i in ids if latest[i].get("ClientStatus") in ("failed", "lost")]
            if failed:
                self._stop_live()
                for a in failed:
                    self._explain_failure(a)
                if deployment is not None and not _auto_revert(deployment):
                    self.raw(f'    Deployment "{self._id(deployment["ID"])}" goes on (the allocation may be '
                             f'rescheduled): `yurt deployment status {self._id(deployment["ID"])}` follows it')
                return EXIT_ERROR
            done = [i for i in ids if latest[i].get("DesiredStatus") != "run" or
                    (latest[i].get("ClientStatus") in ok_states and _tasks_up(latest[i], batch))]
            if len(done) == len(ids):
                self._stop_live()
                running = sum(1 for i in ids if latest[i].get("ClientStatus") == "running")
                complete = sum(1 for i in ids if latest[i].get("ClientStatus") == "complete")
                what = ", ".join(p for p in (f"{running} running" if running else "",
                                             f"{complete} complete" if complete else "") if p) or "none running"
                self.info(f"Allocations of job \"{job_id}\" ready: {what}")
                return EXIT_OK

    def _follow_stops(self, job_id: str) -> int:
        index = 0
        last: dict[str, str] = {}
        while True:
            # /v1/allocations, not /v1/job/<id>/allocations: after -purge the job is gone
            every, index = self.client.get("/v1/allocations", index=index, wait=self._wait() if index else None)
            allocs = [a for a in every if a.get("JobID") == job_id]
            stopping = [a for a in allocs if a.get("DesiredStatus") != "run"]
            for a in stopping:
                status = a.get("ClientStatus", "pending")
                if a["ID"] in last and status != last[a["ID"]]:
                    self.progress(f'Allocation "{self._id(a["ID"])}" status changed: "{last[a["ID"]]}" -> "{status}"')
                last[a["ID"]] = status
            left = [a for a in stopping if a.get("ClientStatus") not in TERMINAL_CLIENT]
            if not left and all(a.get("DesiredStatus") != "run" or a.get("ClientStatus") in TERMINAL_CLIENT
                                for a in allocs):
                self.info(f'All allocations of job "{job_id}" are stopped')
                return EXIT_OK

    def _explain_failure(self, a: dict) -> None:
        self.info(f'Allocation "{self._id(a["ID"])}" {a.get("ClientStatus")}: '
                  f'{a.get("ClientDescription") or "no description"}')
        for name, st in sorted((a.get("TaskStates") or {}).items()):
            if not st.get("Failed") and st.get("State") != "dead":
                continue
            failed = " (failed)" if st.get("Failed") else ""
            self.raw(f'    Task "{name}" is "{st.get("State")}"{failed}; recent events:')
            rendered = render(table(["Time", "Type", "Description"], event_rows(st, limit=5)))
            for line in rendered.splitlines():
                self.raw(f"      {line}")

    # -- the deployment ---------------------------------------------------------------------
    def _deployment_of(self, ev: dict, since_index: int, job_id: str) -> dict | None:
        """The deployment this run rolls out: the evaluation's, else the job's latest when it is
        active or was created by these evaluations; None when there is none (batch jobs, no change)."""
        if ev.get("DeploymentID"):
            return self.client.deployment(ev["DeploymentID"])[0]
        if not job_id:
            return None
        d, _ = self.client.job_deployment(job_id)
        if not d:
            return None
        if d.get("Status") in ACTIVE or d.get("CreateIndex", 0) >= since_index:
            return d
        return None

    def follow_deployment(self, deployment_id: str) -> int:
        """Follow a deployment until it ends (0 successful, 1 failed or cancelled; with auto_revert
        the rollback deployment is followed too, still 1) or waits for a manual promotion (0)."""
        try:
            return self._follow_deployment(deployment_id)
        except FollowTimeout:
            self._stop_live()
            err.print(f'Error: timed out after {pretty_duration(self.timeout)} following deployment '
                      f'"{self._id(deployment_id)}"; it carries on in the cluster (see `yurt deployment status '
                      f'{self._id(deployment_id)}`)', markup=False, highlight=False)
            return EXIT_ERROR
        finally:
            self._stop_live()

    def _follow_deployment(self, deployment_id: str) -> int:
        self.info(f'Monitoring deployment "{self._id(deployment_id)}"')
        index, shown = 0, None
        while True:
            d, index = self.client.deployment(deployment_id, index=index, wait=self._wait() if index else None)
            shape = _deployment_shape(d)
            status = d.get("Status")
            done = status in ("successful", "failed", "cancelled") or needs_promotion(d)
            if shape != shown and not done:
                shown = shape
                self._show_deployment(d)
            if not done:
                continue
            self._end_deployment_live()
            name = self._id(d["ID"])
            if status == "successful":
                self._final(f'  ✓ Deployment "{name}" successful', d)
                return EXIT_OK
            if status == "running":
                self._final(f'  ! Deployment "{name}" needs manual promotion of its canaries', d)
                self.raw(f'    Promote it with "yurt job promote {d.get("JobID")}" (or "yurt deployment promote '
                         f'{name}"); "yurt deployment fail {name}" abandons it')
                return EXIT_OK
            self._final(f'  ! Deployment "{name}" {status}', d)
            if status == "failed" and "rolling back to job version" in (d.get("StatusDescription") or ""):
                self.info(f'Deployment "{name}" failed; job "{d.get("JobID")}" is rolling back to job version '
                          f'{d["StatusDescription"].rsplit(" ", 1)[-1]}')
                self._follow_deployment(self._rollback_of(d)["ID"])
            return EXIT_ERROR

    def _rollback_of(self, d: dict) -> dict:
        """The deployment of the version auto_revert registered (waits for the scheduler to make it;
        the -timeout bounds the wait)."""
        index = 0
        while True:
            latest, index = self.client.job_deployment(d["JobID"], index=index, wait=self._wait() if index else None)
            if latest and latest.get("ID") != d["ID"] and latest.get("JobVersion", 0) > d.get("JobVersion", 0):
                return latest

    def _block(self, d: dict) -> str:
        return f"{fmt_clock()}\n{deployment_text(d, self.verbose)}"

    def _show_deployment(self, d: dict) -> None:
        if self.live_enabled:
            from rich.console import Group
            from rich.spinner import Spinner
            view = Group(Spinner("dots", text=f'Deployment "{self._id(d["ID"])}" in progress...'), "",
                         _indent(self._block(d)))
            if self._dlive is None:
                self._dlive = Live(view, console=out, refresh_per_second=8, transient=True)
                self._dlive.start()
            else:
                self._dlive.update(view)
            return
        self.raw("")
        for line in self._block(d).splitlines():
            self.raw(f"    {line}" if line else "")

    def _end_deployment_live(self) -> None:
        if self._dlive is not None:
            live, self._dlive = self._dlive, None
            live.stop()

    def _final(self, line: str, d: dict) -> None:
        self.raw(line)
        self.raw("")
        for text in self._block(d).splitlines():
            self.raw(f"    {text}" if text else "")

    # -- the live table ---------------------------------------------------------------------
    def _table(self, latest: dict[str, dict], ids: list[str]):
        return table(["ID", "Task Group", "Status", "Tasks", "Modified"],
                     [(self._id(i), latest[i].get("TaskGroup"), latest[i].get("ClientStatus"),
                       task_summary(latest[i]), relative(latest[i].get("ModifyTime")))
                      for i in ids])

    def _start_live(self, latest: dict[str, dict], ids: list[str]) -> None:
        if not self.live_enabled or self._live is not None:
            return
        self._live = Live(self._table(latest, ids), console=out, refresh_per_second=4, transient=True)
        self._live.start()

    def _update_live(self, latest: dict[str, dict], ids: list[str]) -> None:
        if self._live is not None:
            self._live.update(self._table(latest, ids))

    def _stop_live(self) -> None:
        self._end_deployment_live()
        if self._live is not None:
            live, self._live = self._live, None
            table_ = live.renderable
            live.stop()
            out.print(table_)


def _auto_revert(d: dict) -> bool:
    return any(st.get("AutoRevert") for st in (d.get("TaskGroups") or {}).values())


def _deployment_shape(d: dict) -> tuple:
    """What the block shows, but the clock: a new block is printed only when this changes."""
    return (d.get("Status"), d.get("StatusDescription"),
            tuple(sorted((g, st.get("DesiredTotal"), st.get("DesiredCanaries"), st.get("PlacedAllocs"),
                          st.get("HealthyAllocs"), st.get("UnhealthyAllocs"), st.get("Promoted"),
                          st.get("RequireProgressBy")) for g, st in (d.get("TaskGroups") or {}).items())))


def _indent(text: str) -> Text:
    return Text("\n".join(f"    {ln}" if ln else "" for ln in text.splitlines()))


def _tasks_up(alloc: dict, batch: bool) -> bool:
    states = alloc.get("TaskStates") or {}
    if batch:
        return True
    return all(st.get("State") == "running" or (st.get("State") == "dead" and not st.get("Failed"))
               for st in states.values()) if states else True




__all__ = ["Monitor", "placement_failures", "event_rows", "task_summary"]
