"""`yurt job restart`: restart a job's running allocations in batches, as `nomad job restart`.

In place (each allocation's running tasks, or `-task`, or `-all-tasks`, through
`/v1/client/allocation/<id>/restart`) or, with `-reschedule`, stopped and replaced
(`/v1/allocation/<id>/stop`; the next batch starts once the replacements run). `-batch-size N`
or `N%`, `-batch-wait D` between batches (or `ask`), `-group`/`-task` to choose, `-on-error
ask|fail`. Exit 0 when every allocation was restarted, 1 otherwise (each error said)."""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click

from yurt.api.client import YurtClient
from yurt.errors import YurtError

from .format import address_option, api_errors, connect
from .output import fail
from .status import find_job

CTX = {"help_option_names": ["-h", "-help", "--help"]}
RUNNING_AGAIN_TIMEOUT = 300.0   # -reschedule: how long a replacement may take to run


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(text: str, header: bool = False) -> None:
    click.echo(f"==> {_now()}: {text}" if header else f"    {_now()}: {text}")


@click.command("restart", context_settings=CTX)
@click.argument("job_id", metavar="JOB")
@click.option("-all-tasks", "--all-tasks", "all_tasks", is_flag=True,
              help="Restart every task of the allocations (prestart and poststart ones too), "
                   "not only the running ones.")
@click.option("-batch-size", "--batch-size", "batch_size", default="1", metavar="N|N%",
              help="How many allocations to restart at once (a number, or a share of them like 25%).")
@click.option("-batch-wait", "--batch-wait", "batch_wait", default="0s", metavar="DURATION|ask",
              help="How long to wait between batches, or ask before each one.")
@click.option("-group", "--group", "groups", multiple=True, metavar="GROUP", help="Only this group's (repeatable).")
@click.option("-task", "--task", "tasks", multiple=True, metavar="TASK", help="Only this task (repeatable).")
@click.option("-no-shutdown-delay", "--no-shutdown-delay", "no_shutdown_delay", is_flag=True,
              help="With -reschedule: stop without waiting the shutdown delays.")
@click.option("-on-error", "--on-error", "on_error", default="ask", type=click.Choice(["ask", "fail"]),
              help="After a batch with errors: ask whether to go on, or stop (fail).")
@click.option("-reschedule", "--reschedule", is_flag=True,
              help="Stop each allocation and have it replaced, instead of restarting it in place.")
@click.option("-yes", "--yes", "-y", "yes", is_flag=True, help="Never ask: go on after errors.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs, and the allocations skipped.")
@address_option
@api_errors
def restart_cmd(job_id: str, all_tasks: bool, batch_size: str, batch_wait: str, groups: tuple[str, ...],
                tasks: tuple[str, ...], no_shutdown_delay: bool, on_error: str, reschedule: bool, yes: bool,
                verbose: bool, address: str | None) -> None:
    """Restart a job's running allocations (JOB may be a unique prefix of its ID), in batches."""
    size, percent = _batch_size(batch_size)
    wait_s, ask_between = _batch_wait(batch_wait)
    interactive = sys.stdin.isatty()
    if all_tasks and tasks:
        fail("The -all-tasks option cannot be used with -task")
    if reschedule and tasks:
        fail("The -reschedule option cannot be used with -task")
    if no_shutdown_delay and not reschedule:
        fail("-no-shutdown-delay only applies with -reschedule (an in-place restart waits no shutdown delay)")
    if not yes and not interactive and (on_error == "ask" or ask_between):
        what = "-on-error ask" if on_error == "ask" else "-batch-wait ask"
        fail(f"{what} needs an interactive terminal: pass -yes, or -on-error fail")
    short = (lambda i: i) if verbose else (lambda i: i[:8])
    with connect(address) as client:
        job = find_job(client, job_id)
        if reschedule and job.get("Type") not in ("service", "batch", "system"):
            fail(f'Jobs of type "{job.get("Type")}" are not allowed to be rescheduled.')
        allocs = _chosen(client, job, set(groups), set(tasks), verbose, short)
        if not allocs:
            click.echo("No allocations to restart")
            return
        if percent:
            size = max(1, math.ceil(len(allocs) * size / 100))
        _say(f"Restarting {len(allocs)} allocation{'s' if len(allocs) != 1 else ''}", header=True)
        errors: list[str] = []
        batches = [allocs[i:i + size] for i in range(0, len(allocs), size)]
        for n, batch in enumerate(batches, 1):
            busy = _active_deployment(client, job["ID"], short)
            if busy:
                errors.append(busy)
                break
            if size > 1:
                _say(f"Restarting {_ordinal(n)} batch of {len(batch)} allocations", header=True)
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                found = [e for e in pool.map(lambda a: _one(client, a, reschedule, all_tasks, tasks,
                                                             no_shutdown_delay, short), batch) if e]
            errors += found
            if n == len(batches):
                break
            if found:
                if on_error == "fail":
                    _say("Stopping job restart due to error", header=True)
                    break
                if not yes:
                    for e in found:
                        _say(e, header=True)
                    if not click.confirm("Proceed with the next batch?", default=False):
                        _say("Job restart canceled", header=True)
                        raise SystemExit(1)
            elif ask_between and not yes and not click.confirm("Proceed with the next batch?", default=True):
                _say("Job restart canceled", header=True)
                raise SystemExit(0)
            if wait_s > 0:
                _say(f"Waiting {batch_wait} before restarting the next batch", header=True)
                time.sleep(wait_s)
        if errors:
            _say("Job restart finished with errors", header=True)
            click.echo("\n" + "\n".join(errors), err=True)
            raise SystemExit(1)
        _say("Job restart finished", header=True)
        click.echo("\nJob restarted successfully!")


def _batch_size(raw: str) -> tuple[int, bool]:
    text = raw[:-1] if raw.endswith("%") else raw
    if not text.isdigit() or int(text) < 1 or (raw.endswith("%") and int(text) > 100):
        fail(f'Invalid -batch-size value "{raw}": a number of allocations (1 or more), or a percentage like 25%')
    return int(text), raw.endswith("%")


def _batch_wait(raw: str) -> tuple[float, bool]:
    if raw == "ask":
        return 0.0, True
    from yurt.structs import parse_duration
    try:
        return parse_duration(raw) / 1e9, False
    except (ValueError, TypeError):
        fail(f'Invalid -batch-wait value "{raw}": a duration like 10s, or ask')


def _chosen(client: YurtClient, job: dict, groups: set[str], tasks: set[str], verbose: bool,
            short: Any) -> list[dict]:
    """The job's running allocations not yet replaced, of the groups (and with the tasks) asked."""
    out = []
    for stub in client.get(f"/v1/job/{quote(job['ID'], safe='')}/allocations", namespace=job.get("Namespace"))[0]:
        why = ""
        if stub.get("ClientStatus") != "running" or stub.get("DesiredStatus") != "run":
            why = f'desired status is "{stub.get("DesiredStatus")}" and client status is "{stub.get("ClientStatus")}"'
        elif stub.get("NextAllocation"):
            why = f'it has already been replaced by "{short(stub["NextAllocation"])}"'
        elif groups and stub.get("TaskGroup") not in groups:
            why = "it doesn't have any of requested groups"
        elif tasks and not tasks & set(stub.get("TaskStates") or {}):
            why = "it doesn't have any of requested tasks"
        if why:
            if verbose:
                _say(f'Skipping allocation "{short(stub["ID"])}" because {why}')
            continue
        out.append(stub)
    return sorted(out, key=lambda a: (a.get("TaskGroup", ""), a.get("Name", "")))


def _active_deployment(client: YurtClient, job_id: str, short: Any) -> str:
    for d in client.get(f"/v1/job/{quote(job_id, safe='')}/deployments")[0] or []:
        if d.get("Status") not in ("failed", "successful", "cancelled"):
            return f'Deployment "{short(d["ID"])}" is "{d.get("Status")}"'
    return ""


def _one(client: YurtClient, alloc: dict, reschedule: bool, all_tasks: bool, tasks: tuple[str, ...],
         no_shutdown_delay: bool, short: Any) -> str:
    """Restart (or stop and wait for the replacement of) one allocation; "" or the error."""
    aid, group = alloc["ID"], alloc.get("TaskGroup", "")
    try:
        if reschedule:
            _say(f'Rescheduling allocation "{short(aid)}" for group "{group}"')
            client.stop_allocation(aid, no_shutdown_delay=no_shutdown_delay)
            return _replacement_runs(client, aid, short)
        if tasks:
            for task in sorted(set(tasks) & set(alloc.get("TaskStates") or {})):
                _say(f'Restarting task "{task}" in allocation "{short(aid)}" for group "{group}"')
                client.put(f"/v1/client/allocation/{aid}/restart", {"TaskName": task, "AllTasks": False})
            return ""
        what = "all tasks" if all_tasks else "running tasks"
        _say(f'Restarting {what} in allocation "{short(aid)}" for group "{group}"')
        client.put(f"/v1/client/allocation/{aid}/restart", {"TaskName": "", "AllTasks": all_tasks})
        return ""
    except YurtError as e:
        return f'Error restarting allocation "{short(aid)}": {e}'


def _replacement_runs(client: YurtClient, alloc_id: str, short: Any) -> str:
    """Wait until the stopped allocation's replacement runs (following a replacement that is
    itself replaced, as Nomad's does); "" or the error."""
    deadline = time.monotonic() + RUNNING_AGAIN_TIMEOUT
    current = alloc_id
    while time.monotonic() < deadline:
        alloc = client.allocation(current)
        if alloc.get("NextAllocation"):
            _say(f'Allocation "{short(current)}" replaced by "{short(alloc["NextAllocation"])}", '
                 f'waiting for "{short(alloc["NextAllocation"])}" to start running')
            current = alloc["NextAllocation"]
            continue
        if current != alloc_id and alloc.get("ClientStatus") == "running":
            _say(f'Allocation "{short(current)}" is "running"')
            return ""
        time.sleep(0.5)
    return (f'Error restarting allocation "{short(alloc_id)}": its replacement did not run within '
            f"{RUNNING_AGAIN_TIMEOUT:.0f}s")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
