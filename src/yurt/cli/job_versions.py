"""`yurt job promote|history|revert|inspect|scale|allocs` (command/job_*.go): a job's versions,
its deployments and its counts."""

from __future__ import annotations

import json

import click

from yurt.api.client import YurtClient

from .deployment_cmd import _seconds, promote_and_follow, promote_options, timeout_option
from .format import address_option, api_errors, connect, echo, fmt_time, kv, print_table
from .output import fail
from .status import alloc_rows, find_job


def _follow(client: YurtClient, resp: dict, detach: bool, verbose: bool, timeout: float) -> int:
    """Print the evaluation ID (-detach) or follow it, and the deployment it starts."""
    eval_id = resp.get("EvalID") or ""
    if detach or not eval_id:
        if eval_id:
            echo(f"Evaluation ID: {eval_id}")
        return 0
    from .monitor import Monitor
    return Monitor(client, verbose=verbose, timeout=timeout).monitor(eval_id)


@click.command("promote")
@click.argument("job_id", metavar="JOB")
@promote_options
def promote_cmd(job_id: str, groups: tuple[str, ...], detach: bool, verbose: bool, timeout: str,
                address: str | None) -> None:
    """Promote the canaries of the job's latest deployment, then follow the rollout.

    Exit codes: 0 promoted (and, unless -detach, the deployment successful), 1 an error or a failed
    deployment.
    """
    follow_for = _seconds(timeout)
    with connect(address) as client:
        job = find_job(client, job_id)
        d, _ = client.job_deployment(job["ID"])
        if not d:
            fail(f'job "{job["ID"]}" has no deployment to promote; a deployment starts when `yurt job run` '
                 "changes a service job with an `update` block")
        raise SystemExit(promote_and_follow(client, d, groups, detach, verbose, follow_for))


def _version_kv(v: dict, diff: dict | None, show_diff: bool) -> str:
    rows = [("Version", v.get("Version", 0)), ("Stable", bool(v.get("Stable"))),
            ("Submit Date", fmt_time(v.get("SubmitTime")))]
    text = kv(rows)
    if show_diff and diff is not None:
        from .job import format_job_diff
        text += f"\n{'Diff'.ljust(len('Submit Date'))} =\n{format_job_diff(diff, {}, verbose=False)}"
    return text


@click.command("history")
@click.argument("job_id", metavar="JOB")
@click.option("-p", "show_diff", is_flag=True, help="Show the diff of each version against the one before.")
@click.option("-full", "--full", is_flag=True, help="Show each version's whole job as JSON.")
@click.option("-version", "--version", "only", type=int, default=None, metavar="N", help="Show only version N.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@address_option
@api_errors
def history_cmd(job_id: str, show_diff: bool, full: bool, only: int | None, as_json: bool,
                address: str | None) -> None:
    """The job's versions, newest first (JOB may be a unique prefix of its ID)."""
    with connect(address) as client:
        job = find_job(client, job_id)
        versions, diffs = client.job_versions_diffs(job["ID"])
    if only is not None:
        keep = [i for i, v in enumerate(versions) if v.get("Version") == only]
        if not keep:
            fail(f'job "{job["ID"]}" has no version {only}; its versions: '
                 f'{", ".join(str(v.get("Version")) for v in versions)}')
    else:
        keep = list(range(len(versions)))
    if as_json:
        echo(json.dumps([versions[i] for i in keep], indent=4))
        return
    blocks = []
    for i in keep:
        v = versions[i]
        diff = diffs[i] if diffs is not None and i < len(diffs) else None
        text = _version_kv(v, diff, show_diff)
        if full:
            text += "\n" + json.dumps(v, indent=4)
        blocks.append(text)
    echo("\n\n".join(blocks))


def _version_arg(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        fail(f'version "{value}" is not a number; give a version from `yurt job history JOB`, e.g. 0')
    if n < 0:
        fail(f"version {n} is negative; versions count up from 0 (`yurt job history JOB` lists them)")
    return n


@click.command("revert", context_settings={"ignore_unknown_options": True})
@click.argument("job_id", metavar="JOB")
@click.argument("version", metavar="VERSION")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@timeout_option
@address_option
@api_errors
def revert_cmd(job_id: str, version: str, detach: bool, verbose: bool, timeout: str, address: str | None) -> None:
    """Run an earlier version of the job again (as a new version), and follow its deployment.

    Exit codes: 0 the reverted version runs, 1 an error or a failed deployment, 2 placement failures.
    """
    target = _version_arg(version)
    follow_for = _seconds(timeout)
    with connect(address) as client:
        job = find_job(client, job_id)
        versions = [v.get("Version") for v in client.job_versions(job["ID"])]
        current = client.job(job["ID"]).get("Version", 0)
        if target == current:
            fail(f'job "{job["ID"]}" is at version {target} already; give an earlier version '
                 f"(`yurt job history {job['ID']}` lists them)")
        if target not in versions:
            fail(f'job "{job["ID"]}" has no version {target}; its versions: '
                 f'{", ".join(str(v) for v in sorted(versions))}')
        resp = client.revert_job(job["ID"], target)
        raise SystemExit(_follow(client, resp, detach, verbose, follow_for))


@click.command("inspect")
@click.argument("job_id", metavar="JOB")
@click.option("-version", "--version", "only", type=int, default=None, metavar="N",
              help="Inspect version N instead of the current one.")
@click.option("-json", "--json", "as_json", is_flag=True, help="JSON (the default; for Nomad's habit).")
@address_option
@api_errors
def inspect_cmd(job_id: str, only: int | None, as_json: bool, address: str | None) -> None:
    """Print the job as the server holds it, as JSON: {"Job": {...}}."""
    with connect(address) as client:
        job = find_job(client, job_id)
        if only is None:
            doc = client.job(job["ID"])
        else:
            found = [v for v in client.job_versions(job["ID"]) if v.get("Version") == only]
            if not found:
                fail(f'job "{job["ID"]}" has no version {only} (`yurt job history {job["ID"]}` lists them)')
            doc = found[0]
    echo(json.dumps({"Job": doc}, indent=4))


@click.command("scale", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, metavar="JOB [GROUP] COUNT")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@timeout_option
@address_option
@api_errors
def scale_cmd(args: tuple[str, ...], detach: bool, verbose: bool, timeout: str, address: str | None) -> None:
    """Set a task group's count (GROUP may be left out when the job has one group).

    Exit codes: 0 scaled and running, 1 an error, 2 placement failures.
    """
    if len(args) not in (2, 3):
        fail("give JOB [GROUP] COUNT, e.g. `yurt job scale web 3` or `yurt job scale web api 3`")
    try:
        count = int(args[-1])
    except ValueError:
        fail(f'count "{args[-1]}" is not a whole number; e.g. `yurt job scale {args[0]} 3`')
    follow_for = _seconds(timeout)
    with connect(address) as client:
        job = client.job(find_job(client, args[0])["ID"])
        names = [g.get("Name") for g in job.get("TaskGroups") or []]
        if len(args) == 3:
            group = args[1]
            if group not in names:
                fail(f'job "{job["ID"]}" has no group "{group}"; its groups: {", ".join(names)}')
        elif len(names) == 1:
            group = names[0]
        else:
            fail(f'job "{job["ID"]}" has {len(names)} groups ({", ".join(names)}): name the one to scale, '
                 f"e.g. `yurt job scale {job['ID']} {names[0]} {count}`")
        resp = client.scale_job(job["ID"], group, count)
        raise SystemExit(_follow(client, resp, detach, verbose, follow_for))


@click.command("allocs")
@click.argument("job_id", metavar="JOB")
@click.option("-all", "--all", "all_allocs", is_flag=True, help="Include allocations of earlier jobs with the same ID.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs and absolute times.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the allocations as JSON.")
@address_option
@api_errors
def allocs_cmd(job_id: str, all_allocs: bool, verbose: bool, as_json: bool, address: str | None) -> None:
    """The job's allocations, newest first."""
    with connect(address) as client:
        allocs = client.job_allocations(find_job(client, job_id)["ID"], all_=all_allocs)
    if as_json:
        echo(json.dumps(allocs, indent=4))
        return
    if not allocs:
        echo("No allocations placed")
        return
    headers, rows = alloc_rows(allocs, verbose)
    print_table(headers, rows)


COMMANDS = (promote_cmd, history_cmd, revert_cmd, inspect_cmd, scale_cmd, allocs_cmd)
