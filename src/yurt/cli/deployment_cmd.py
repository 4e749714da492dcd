"""`yurt deployment list|status|promote|fail|pause|resume|unblock` (command/deployment_*.go), and
the deployment block that `yurt job run` and `yurt deployment status` print (formatDeployment)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from yurt.api.client import YurtClient

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo, fmt_iso, kv, print_table, render, resolve, short, table
from .output import EXIT_ERROR, fail

ACTIVE = ("running", "paused", "initializing", "pending", "blocked", "unblocking")
NEEDS_PROMOTION = "Deployment is running but requires manual promotion"


# -- the deployment block ---------------------------------------------------------------------
def deployment_kv(d: dict, verbose: bool = False) -> str:
    return kv([("ID", short(d.get("ID"), verbose)), ("Job ID", d.get("JobID")),
               ("Job Version", d.get("JobVersion", 0)), ("Status", d.get("Status")),
               ("Description", d.get("StatusDescription"))])


def deployed_table(d: dict) -> Any:
    """Nomad's "Deployed" table: Auto Revert when a group has it, Promoted and Canaries when one
    has canaries, Progress Deadline when one has a deadline; rows by group name."""
    groups = sorted((d.get("TaskGroups") or {}).items())
    states = [st for _, st in groups]
    auto_revert = any(st.get("AutoRevert") for st in states)
    canaries = any(st.get("DesiredCanaries") for st in states)
    deadline = any(st.get("ProgressDeadline") for st in states)
    headers = ["Task Group", *(["Auto Revert"] if auto_revert else []),
               *(["Promoted"] if canaries else []), "Desired", *(["Canaries"] if canaries else []),
               "Placed", "Healthy", "Unhealthy", *(["Progress Deadline"] if deadline else [])]
    rows = []
    for name, st in groups:
        row: list[Any] = [name]
        if auto_revert:
            row.append(bool(st.get("AutoRevert")))
        if canaries:
            row.append(bool(st.get("Promoted")) if st.get("DesiredCanaries") else "N/A")
        row.append(st.get("DesiredTotal", 0))
        if canaries:
            row.append(st.get("DesiredCanaries", 0))
        row += [st.get("PlacedAllocs", 0), st.get("HealthyAllocs", 0), st.get("UnhealthyAllocs", 0)]
        if deadline:
            by = st.get("RequireProgressBy")
            row.append(fmt_iso(by) if st.get("ProgressDeadline") and by and not by.startswith("0001-")
                       else "N/A")
        rows.append(row)
    return table(headers, rows)


def deployment_text(d: dict, verbose: bool = False) -> str:
    """The KV rows, a blank line, "Deployed" and its table, as plain text."""
    return f"{deployment_kv(d, verbose)}\n\nDeployed\n{render(deployed_table(d))}"


def needs_promotion(d: dict) -> bool:
    """Running, waiting for someone to promote canaries that are all placed and healthy."""
    if d.get("Status") != "running":
        return False
    waiting = [st for st in (d.get("TaskGroups") or {}).values()
               if st.get("DesiredCanaries") and not st.get("Promoted")]
    if not waiting or all(st.get("AutoPromote") for st in waiting):
        return False
    return all(st.get("HealthyAllocs", 0) >= st.get("DesiredCanaries", 0) for st in waiting)


# -- finding one --------------------------------------------------------------------------------
def find_deployment(client: YurtClient, ident: str, verbose: bool = False) -> dict:
    """The deployment whose ID is `ident` or uniquely starts with it (else list matches / exit 1)."""
    return resolve("deployment", ident, client.deployments(), ["ID", "Job ID", "Job Version", "Status", "Description"],
                   lambda d: _row(d, verbose), missing=f'No deployment(s) with prefix or ID "{ident}" found')


def _row(d: dict, verbose: bool) -> tuple:
    return (short(d.get("ID"), verbose), d.get("JobID"), d.get("JobVersion", 0), d.get("Status"),
            d.get("StatusDescription"))


def promote_and_follow(client: YurtClient, d: dict, groups: Sequence[str], detach: bool, verbose: bool,
                       timeout: float) -> int:
    """Promote `d`'s canaries (of `groups`, or all), then follow the rollout unless `detach`."""
    if d.get("Status") not in ACTIVE:
        fail(f'deployment "{short(d["ID"], verbose)}" is {d.get("Status")}: only a running deployment can be '
             "promoted")
    waiting = sorted(g for g, st in (d.get("TaskGroups") or {}).items()
                     if st.get("DesiredCanaries") and not st.get("Promoted"))
    if not waiting:
        fail(f'deployment "{short(d["ID"], verbose)}" of job "{d.get("JobID")}" has no canaries to promote; '
             "promotion is for groups with `update { canary = N }`")
    unknown = [g for g in groups if g not in (d.get("TaskGroups") or {})]
    if unknown:
        fail(f'deployment "{short(d["ID"], verbose)}" has no group {", ".join(unknown)}; its groups with canaries '
             f"to promote: {', '.join(waiting)}")
    resp = client.promote_deployment(d["ID"], groups)
    echo(f'Deployment "{short(d["ID"], verbose)}" promoted' + (f" (groups: {', '.join(groups)})" if groups else ""))
    eval_id = resp.get("EvalID") or ""
    if detach or not eval_id:
        return 0
    from .monitor import Monitor
    echo()
    return Monitor(client, verbose=verbose, timeout=timeout).monitor(eval_id)


def _seconds(value: str) -> float:
    from yurt.structs import parse_duration
    try:
        return parse_duration(value) / 1e9
    except (ValueError, TypeError):
        fail(f'-timeout "{value}" is not a duration; write it like 90s or 5m')


def timeout_option(fn: Any) -> Any:
    return click.option("-timeout", "--timeout", "timeout", default="5m", show_default=True, metavar="DURATION",
                        help="How long to follow the deployment (e.g. 90s, 5m).")(fn)


# -- commands -----------------------------------------------------------------------------------
@click.group("deployment", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def deployment_group() -> None:
    """Work with deployments: list, status, promote, fail, pause, resume."""


@deployment_group.command("list")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the deployments as JSON.")
@address_option
@api_errors
def list_cmd(verbose: bool, as_json: bool, address: str | None) -> None:
    """List deployments, newest first."""
    with connect(address) as client:
        ds = sorted(client.deployments(), key=lambda d: d.get("CreateIndex", 0), reverse=True)
    if as_json:
        echo(json.dumps(ds, indent=4))
    elif not ds:
        echo("No deployments found")
    else:
        print_table(["ID", "Job ID", "Job Version", "Status", "Description"], [_row(d, verbose) for d in ds])


@deployment_group.command("status")
@click.argument("deployment_id", metavar="DEPLOYMENT")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
@address_option
@api_errors
def status_cmd(deployment_id: str, verbose: bool, as_json: bool, address: str | None) -> None:
    """Show a deployment (DEPLOYMENT may be a unique prefix of its ID) and its task groups."""
    with connect(address) as client:
        d = client.deployment(find_deployment(client, deployment_id, verbose)["ID"])[0]
    if as_json:
        echo(json.dumps(d, indent=4))
        return
    echo(deployment_text(d, verbose))


def promote_options(f):
    """The options of `deployment promote` and `job promote`."""
    for option in reversed((
            click.option("-group", "--group", "groups", multiple=True, metavar="GROUP",
                         help="Promote only this group's canaries (repeatable; default: every group)."),
            click.option("-detach", "--detach", is_flag=True, help="Return at once; do not follow the rollout."),
            click.option("-verbose", "--verbose", is_flag=True, help="Full IDs."),
            timeout_option, address_option, api_errors)):
        f = option(f)
    return f


@deployment_group.command("promote")
@click.argument("deployment_id", metavar="DEPLOYMENT")
@promote_options
def promote_cmd(deployment_id: str, groups: tuple[str, ...], detach: bool, verbose: bool, timeout: str,
                address: str | None) -> None:
    """Promote a deployment's canaries, then follow the rollout.

    Exit codes: 0 promoted (and, unless -detach, the deployment successful), 1 an error or a failed
    deployment.
    """
    follow_for = _seconds(timeout)
    with connect(address) as client:
        d = client.deployment(find_deployment(client, deployment_id, verbose)["ID"])[0]
        raise SystemExit(promote_and_follow(client, d, groups, detach, verbose, follow_for))


@deployment_group.command("fail")
@click.argument("deployment_id", metavar="DEPLOYMENT")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def fail_cmd(deployment_id: str, verbose: bool, address: str | None) -> None:
    """Mark a running deployment as failed (with auto_revert, the job goes back to its last stable
    version)."""
    with connect(address) as client:
        d = find_deployment(client, deployment_id, verbose)
        name = short(d["ID"], verbose)
        if d.get("Status") not in ACTIVE:
            fail(f'deployment "{name}" is already {d.get("Status")}; only a running or paused deployment can be '
                 "failed")
        resp = client.fail_deployment(d["ID"])
    reverted = resp.get("RevertedJobVersion")
    if reverted is None:
        echo(f'Deployment "{name}" failed')
    else:
        echo(f'Deployment "{name}" failed. Auto-reverted to job version {reverted}.')


def _pause(deployment_id: str, pause: bool, verbose: bool, address: str | None) -> None:
    with connect(address) as client:
        d = find_deployment(client, deployment_id, verbose)
        name = short(d["ID"], verbose)
        if pause and d.get("Status") == "paused":
            fail(f'deployment "{name}" is already paused; `yurt deployment resume {name}` resumes it')
        if not pause and d.get("Status") == "running":
            fail(f'deployment "{name}" is not paused; `yurt deployment pause {name}` pauses it')
        if d.get("Status") not in ACTIVE:
            fail(f'deployment "{name}" is {d.get("Status")}; only a '
                 f"{'running deployment can be paused' if pause else 'paused deployment can be resumed'}")
        client.pause_deployment(d["ID"], pause)
    echo(f'Deployment "{name}" {"paused" if pause else "resumed"}')


@deployment_group.command("pause")
@click.argument("deployment_id", metavar="DEPLOYMENT")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def pause_cmd(deployment_id: str, verbose: bool, address: str | None) -> None:
    """Pause a running deployment: no new allocations are placed until it is resumed."""
    _pause(deployment_id, True, verbose, address)


@deployment_group.command("resume")
@click.argument("deployment_id", metavar="DEPLOYMENT")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def resume_cmd(deployment_id: str, verbose: bool, address: str | None) -> None:
    """Resume a paused deployment."""
    _pause(deployment_id, False, verbose, address)


@deployment_group.command("unblock")
@click.argument("deployment_id", metavar="DEPLOYMENT")
@address_option
def unblock_cmd(deployment_id: str, address: str | None) -> None:
    """Nomad's unblock is for multiregion deployments; Yurt has one region."""
    fail(f'"deployment unblock" is for multiregion deployments, and Yurt has one region, so deployment '
         f'"{deployment_id}" is never blocked on a peer region; use `yurt deployment promote`, `fail`, `pause` '
         "or `resume` instead", EXIT_ERROR)
