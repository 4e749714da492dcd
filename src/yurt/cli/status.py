"""`yurt job status [JOB]` and `yurt eval status EVAL` (command/job_status.go, eval_status.go)."""

from __future__ import annotations

import json

import click

from yurt.api.client import YurtClient
from yurt.errors import YurtError

from .flags import NomadCommand, NomadGroup
from .format import (address_option, api_errors, connect, echo, fmt_time, heading, kv, print_table,
                     relative, resolve, short)
from .monitor import placement_failures
from .output import EXIT_ERROR, fail


def status_string(status: str, stop: bool) -> str:
    return f"{status} (stopped)" if stop else status


def find_job(client: YurtClient, ident: str) -> dict:
    """The job stub whose ID is `ident` or uniquely starts with it (else list matches / exit 1).
    Looking in every namespace (`-namespace "*"`), the client then works in the job's own."""
    jobs = client.jobs(prefix=ident)
    every = client.namespace == "*"
    same = [j for j in jobs if j["ID"] == ident]
    if every and len(same) > 1:   # one ID in several namespaces: which one?
        echo("Prefix matched multiple jobs\n")
        print_table(_job_headers(every), [_job_row(j, every) for j in same])
        raise SystemExit(EXIT_ERROR)
    found = resolve("job(s)", ident, jobs, _job_headers(every), lambda j: _job_row(j, every),
                    plural="jobs", missing=f'No job(s) with prefix or ID "{ident}" found')
    if every:
        client.namespace = found.get("Namespace") or "default"
    return found


def _job_headers(every: bool) -> list[str]:
    """Nomad's job list columns (with the namespace when listing every namespace)."""
    return ["ID", *(["Namespace"] if every else []), "Type", "Priority", "Status", "Submit Date"]


def _job_type(j: dict) -> str:
    """Nomad's list shows a parent's kind: batch/periodic, batch/parameterized."""
    kind = "/periodic" if j.get("Periodic") else "/parameterized" if j.get("ParameterizedJob") else ""
    return str(j.get("Type") or "") + kind


def _job_row(j: dict, every: bool) -> tuple:
    return (j["ID"], *([j.get("Namespace")] if every else []), _job_type(j), j.get("Priority"),
            status_string(j.get("Status", ""), j.get("Stop", False)), fmt_time(j.get("SubmitTime")))


def alloc_rows(allocs: list[dict], verbose: bool) -> tuple[list[str], list[tuple]]:
    """Nomad's Allocations table (newest first)."""
    allocs = sorted(allocs, key=lambda a: a.get("CreateIndex", 0), reverse=True)
    if verbose:
        headers = ["ID", "Eval ID", "Node ID", "Node Name", "Task Group", "Version", "Desired", "Status",
                   "Created", "Modified"]
        rows = [(a["ID"], a.get("EvalID"), a.get("NodeID"), a.get("NodeName"), a.get("TaskGroup"),
                 a.get("JobVersion", 0), a.get("DesiredStatus"), a.get("ClientStatus"),
                 fmt_time(a.get("CreateTime")), fmt_time(a.get("ModifyTime"))) for a in allocs]
    else:
        headers = ["ID", "Node ID", "Task Group", "Version", "Desired", "Status", "Created", "Modified"]
        rows = [(short(a["ID"]), short(a.get("NodeID")), a.get("TaskGroup"), a.get("JobVersion", 0),
                 a.get("DesiredStatus"), a.get("ClientStatus"), relative(a.get("CreateTime")),
                 relative(a.get("ModifyTime"))) for a in allocs]
    return headers, rows


@click.command("status", cls=NomadCommand)
@click.argument("job_id", required=False, metavar="[JOB]")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs, absolute times and the evaluations.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the job (or the job list) as JSON.")
@click.option("-evals", "--evals", is_flag=True, help="Show the job's evaluations.")
@click.option("-all-allocs", "--all-allocs", "all_allocs", is_flag=True,
              help="Include allocations of earlier jobs with the same ID.")
@address_option
@api_errors
def job_status_cmd(job_id: str | None, verbose: bool, as_json: bool, evals: bool, all_allocs: bool,
                   address: str | None) -> None:
    """List jobs, or show one job (JOB may be a unique prefix of its ID)."""
    with connect(address) as client:
        if not job_id:
            jobs = client.jobs()
            if as_json:
                echo(json.dumps(jobs, indent=4))
            elif not jobs:
                echo("No running jobs")
            else:
                every = client.namespace == "*"
                print_table(_job_headers(every), [_job_row(j, every) for j in jobs])
            return
        stub = find_job(client, job_id)
        job = client.job(stub["ID"])
        if as_json:
            echo(json.dumps(job, indent=4))
            return
        show_job(client, job, verbose, evals or verbose, all_allocs)


def show_job(client: YurtClient, job: dict, verbose: bool, evals: bool, all_allocs: bool) -> None:
    echo(kv([
        ("ID", job.get("ID")), ("Name", job.get("Name")), ("Submit Date", fmt_time(job.get("SubmitTime"))),
        ("Type", job.get("Type")), ("Priority", job.get("Priority")),
        ("Datacenters", ",".join(job.get("Datacenters") or [])), ("Namespace", job.get("Namespace")),
        ("Node Pool", job.get("NodePool")), ("Status", status_string(job.get("Status", ""), job.get("Stop", False))),
        ("Periodic", bool(job.get("Periodic"))),
        ("Parameterized", bool(job.get("ParameterizedJob")) and not job.get("Dispatched")),
    ]))
    if job.get("Periodic") or (job.get("ParameterizedJob") and not job.get("Dispatched")):
        _show_children(client, job)
        return
    summary = client.job_summary(job["ID"]) or {}
    echo()
    heading("Summary")
    cols = ("Queued", "Starting", "Running", "Failed", "Complete", "Lost", "Unknown")
    print_table(["Task Group", *cols],
                [(g, *[s.get(c, 0) for c in cols]) for g, s in sorted((summary.get("Summary") or {}).items())])

    if job.get("Type") in ("service", "system"):    # system jobs have deployments since Nomad 1.11
        _latest_deployment(client, job, verbose)

    evaluations = sorted(client.job_evaluations(job["ID"]), key=lambda e: e.get("CreateIndex", 0), reverse=True)
    if evals:
        echo()
        heading("Evaluations")
        print_table(["ID", "Priority", "Triggered By", "Status", "Placement Failures"],
                    [(short(e["ID"], verbose), e.get("Priority"), e.get("TriggeredBy"), e.get("Status"),
                      bool(e.get("FailedTGAllocs"))) for e in evaluations])
    blocked = any(e.get("Status") == "blocked" for e in evaluations)
    failed = next((e for e in evaluations if e.get("FailedTGAllocs")), None)
    if blocked and failed is not None:
        echo()
        heading("Placement Failure")
        for line in placement_failures(failed, indent=""):
            echo(line)

    allocs = client.job_allocations(job["ID"], all_=all_allocs)
    echo()
    heading("Allocations")
    if not allocs:
        echo("No allocations placed")
        return
    headers, rows = alloc_rows(allocs, verbose)
    print_table(headers, rows)


def _show_children(client: YurtClient, job: dict) -> None:
    """A periodic or parameterized parent: its next launch and its children (Nomad's
    "Previously Launched Jobs" / "Dispatched Jobs"); the parent itself has no allocations."""
    from datetime import UTC, datetime

    from yurt.structs.cron import CronError, next_launch
    periodic = job.get("Periodic")
    if periodic:
        specs = [s for s in [periodic.get("Spec"), *(periodic.get("Specs") or [])] if s]
        try:
            nxt = next_launch(specs, datetime.now(UTC), periodic.get("TimeZone") or "UTC")
        except CronError:
            nxt = None
        if nxt is not None and periodic.get("Enabled", True) and not job.get("Stop"):
            echo(kv([("Next Periodic Launch", f"{nxt.isoformat()} "
                                              f"(in {max(0, round((nxt - datetime.now(UTC)).total_seconds()))}s)")]))
    kids = [j for j in client.jobs(prefix=job["ID"] + "/") if j.get("ParentID") == job["ID"]]
    counts: dict[str, int] = {}
    for k in kids:
        counts[k.get("Status") or "pending"] = counts.get(k.get("Status") or "pending", 0) + 1
    echo()
    heading("Children Job Summary")
    print_table(["Pending", "Running", "Dead"], [(counts.get("pending", 0), counts.get("running", 0),
                                                  counts.get("dead", 0))])
    echo()
    heading("Previously Launched Jobs" if periodic else "Dispatched Jobs")
    if not kids:
        echo("No instances of " + ("periodic" if periodic else "parameterized") + " job found")
        return
    print_table(["ID", "Status"], [(k["ID"], k.get("Status")) for k in sorted(kids, key=lambda k: k["ID"])])


def _latest_deployment(client: YurtClient, job: dict, verbose: bool) -> None:
    """Nomad's "Latest Deployment" block: ID, Status, Description, and the Deployed table."""
    from .deployment_cmd import deployed_table
    from .format import render
    d, _ = client.job_deployment(job["ID"])
    if not d:
        return
    echo()
    heading("Latest Deployment")
    echo(kv([("ID", short(d.get("ID"), verbose)), ("Status", d.get("Status")),
             ("Description", d.get("StatusDescription"))]))
    echo()
    heading("Deployed")
    echo(render(deployed_table(d)))


# -- evaluations ------------------------------------------------------------------------------
@click.group("eval", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def eval_group() -> None:
    """Inspect evaluations."""


@eval_group.command("status")
@click.argument("eval_id", metavar="EVAL")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs and absolute times.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
@address_option
@api_errors
def eval_status_cmd(eval_id: str, verbose: bool, as_json: bool, address: str | None) -> None:
    """Show an evaluation (EVAL may be a unique prefix of its ID) and its placement failures."""
    with connect(address) as client:
        stub = resolve("evaluation", eval_id, client.evaluations(prefix=eval_id),
                       ["ID", "Priority", "Triggered By", "Job ID", "Status", "Placement Failures"],
                       lambda e: (short(e["ID"], verbose), e.get("Priority"), e.get("TriggeredBy"), e.get("JobID"),
                                  e.get("Status"), bool(e.get("FailedTGAllocs"))),
                       missing=f'No evaluation(s) with prefix or id "{eval_id}" found')
        try:
            ev, _ = client.evaluation(stub["ID"])
        except YurtError as e:
            fail(e.message)
        if as_json:
            echo(json.dumps(ev, indent=4))
            return
        when = fmt_time if verbose else relative
        failures = bool(ev.get("FailedTGAllocs"))
        echo(kv([
            ("ID", short(ev["ID"], verbose)), ("Create Time", when(ev.get("CreateTime"))),
            ("Modify Time", when(ev.get("ModifyTime"))), ("Status", ev.get("Status")),
            ("Status Description", ev.get("StatusDescription") or ev.get("Status")),
            ("Type", ev.get("Type")), ("TriggeredBy", ev.get("TriggeredBy")), ("Job ID", ev.get("JobID")),
            ("Namespace", ev.get("Namespace")), ("Priority", ev.get("Priority")),
            ("Placement Failures", failures),
            *([("Previous Eval", short(ev["PreviousEval"], verbose))] if ev.get("PreviousEval") else []),
            *([("Next Eval", short(ev["NextEval"], verbose))] if ev.get("NextEval") else []),
            *([("Blocked Eval", short(ev["BlockedEval"], verbose))] if ev.get("BlockedEval") else []),
        ]))
        if failures:
            echo()
            heading("Failed Placements")
            for line in placement_failures(ev, indent=""):
                echo(line)
            if ev.get("BlockedEval"):
                echo()
                echo(f'Evaluation "{short(ev["BlockedEval"], verbose)}" waiting for additional capacity to place '
                     "remainder")


__all__ = ["job_status_cmd", "eval_group", "find_job", "alloc_rows"]
