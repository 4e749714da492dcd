"""`yurt job ...`: validate, run, plan, stop, init (Nomad's verbs and flags, single- or double-dash)."""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from typing import Any
from urllib.parse import quote

import click

from yurt.errors import Unreachable, YurtError
from yurt.jobspec import JobspecError, Loaded, load_file, read_variables

from .flags import NomadGroup
from .format import address_option, api_errors, api_message, connect
from .output import EXIT_ERROR, err, fail, out, show_problems, show_warnings


def _var_options(fn: Any) -> Any:
    fn = click.option("-var", "--var", "var", multiple=True, metavar="KEY=VALUE",
                      help="Set a variable declared in the job file (repeatable).")(fn)
    fn = click.option("-var-file", "--var-file", "var_file", multiple=True, metavar="FILE",
                      type=click.Path(dir_okay=False), help="HCL file of variable values (repeatable).")(fn)
    return fn


def _variables(var: tuple[str, ...], var_file: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in var_file:
        values.update(_read_var_file(path))
    for item in var:
        if "=" not in item:
            fail(f'-var "{item}" must be KEY=VALUE, for example -var image=redis:7')
        key, value = item.split("=", 1)
        values[key.strip()] = value
    return values


def _read_var_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        fail(f"cannot read the variables file {path}: {e.strerror}")
    if path.endswith(".json"):
        try:
            return dict(json.loads(text))
        except (ValueError, TypeError) as e:
            fail(f"{path}: not a JSON object of variable values ({e})")
    try:
        return read_variables(text, path)
    except JobspecError as e:
        show_problems(e.problems, path)
        raise SystemExit(EXIT_ERROR) from None


def load_job(path: str, var: tuple[str, ...] = (), var_file: tuple[str, ...] = ()) -> Loaded:
    """Read, default and validate a job file, or print every problem and exit 1."""
    if path != "-" and os.path.isdir(path):
        fail(f"{path} is a directory; give the path of a job file")
    if path != "-" and not os.path.exists(path):
        fail(f"no such job file: {path}")
    try:
        if path == "-":
            from yurt.jobspec import load
            data = click.get_binary_stream("stdin").read()
            return load(data, "<stdin>", _variables(var, var_file))
        return load_file(path, _variables(var, var_file))
    except JobspecError as e:
        show_problems(e.problems, path)
        raise SystemExit(EXIT_ERROR) from None


@click.group("job", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def job_group() -> None:
    """Work with jobs: run, plan, status, stop, validate, init."""


@job_group.command("validate")
@click.argument("file", metavar="FILE")
@_var_options
def validate_cmd(file: str, var: tuple[str, ...], var_file: tuple[str, ...]) -> None:
    """Check a job file; exit 0 if it is valid, 1 with every problem listed otherwise."""
    loaded = load_job(file, var, var_file)
    show_warnings(loaded.warnings)
    out.print("Job validation successful")


def _timeout_option(default: str) -> Any:
    return click.option("-timeout", "--timeout", "timeout", default=default, show_default=True, metavar="DURATION",
                        help="How long to follow the evaluation and its allocations (e.g. 90s, 5m).")


def _seconds(value: str) -> float:
    from yurt.structs import parse_duration
    try:
        return parse_duration(value) / 1e9
    except (ValueError, TypeError):
        fail(f'-timeout "{value}" is not a duration; write it like 90s or 5m')


@job_group.command("run")
@click.argument("file", metavar="FILE")
@click.option("-output", "--output", is_flag=True,
              help="Print the canonical JSON of the job ({\"Job\": ...}) and submit nothing.")
@click.option("-detach", "--detach", is_flag=True,
              help="Submit the job and print its evaluation ID; do not follow it.")
@click.option("-check-index", "--check-index", "check_index", type=int, default=None, metavar="N",
              help="Register only if the job's modify index is N (0: only if the job is new).")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@_timeout_option("5m")
@address_option
@_var_options
@api_errors
def run_cmd(file: str, output: bool, detach: bool, check_index: int | None, verbose: bool, timeout: str,
            address: str | None, var: tuple[str, ...], var_file: tuple[str, ...]) -> None:
    """Run a job and follow it until its allocations run (with -output: print its JSON instead).

    Exit codes: 0 all placed and running, 1 an error or a failed allocation, 2 placement failures.
    """
    loaded = load_job(file, var, var_file)
    show_warnings(loaded.warnings)
    if output:
        click.echo(json.dumps(loaded.job.to_document(), indent=4))
        return
    follow_for = _seconds(timeout)
    doc = loaded.job.to_document()
    if check_index is not None:
        doc["EnforceIndex"] = True
        doc["JobModifyIndex"] = check_index
    with connect(address) as client:
        resp = client.register_job(doc)
        # the file's own warnings were shown with their positions; the server's others (a
        # gateway's service the catalog does not know) are shown here
        mine = {f"{w.where}: {w.message}" if w.where else w.message for w in loaded.warnings}
        server = [ln for ln in str(resp.get("Warnings") or "").splitlines() if ln.strip() and ln not in mine]
        if server:
            err.print("[bold yellow]Job Warnings:[/]")
            err.print("\n".join(server), markup=False)
        eval_id = resp.get("EvalID") or ""
        if detach or not eval_id:
            click.echo("Job registration successful")
            _approximate_next_launch(loaded.job)
            if eval_id:
                click.echo(f"Evaluation ID: {eval_id}")
            return
        from .monitor import Monitor
        raise SystemExit(Monitor(client, verbose=verbose, timeout=follow_for).monitor(eval_id))


def _approximate_next_launch(job: Any) -> None:
    """A periodic job's next launch, as Nomad's `job run` prints it."""
    from datetime import UTC, datetime

    from yurt.structs.cron import CronError, next_launch
    p = job.periodic
    if p is None or not p.enabled:
        return
    try:
        nxt = next_launch(p.all_specs(), datetime.now(UTC), p.time_zone)
    except CronError:
        return
    if nxt is not None:
        delta = max(0, round((nxt - datetime.now(UTC)).total_seconds()))
        click.echo(f"Approximate next launch time: {nxt.isoformat()} (in {delta}s from now)")


@job_group.command("stop")
@click.argument("job_id", metavar="JOB")
@click.option("-purge", "--purge", is_flag=True, help="Remove the job from the cluster's state, not only stop it.")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-yes", "--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@click.option("-no-shutdown-delay", "--no-shutdown-delay", "no_shutdown_delay", is_flag=True,
              help="Stop the allocations without waiting their group's and tasks' shutdown_delay.")
@_timeout_option("2m")
@address_option
@api_errors
def stop_cmd(job_id: str, purge: bool, detach: bool, yes: bool, verbose: bool, no_shutdown_delay: bool,
             timeout: str, address: str | None) -> None:
    """Stop a job (JOB may be a unique prefix of its ID) and follow until its allocations stop."""
    from .status import find_job
    follow_for = _seconds(timeout)
    with connect(address) as client:
        job = find_job(client, job_id)
        if job["ID"] != job_id and not yes and click.get_text_stream("stdin").isatty():
            if not click.confirm(f'Are you sure you want to stop job "{job["ID"]}"?', default=False):
                click.echo("Cancelling job stop")
                raise SystemExit(0)
        resp = client.stop_job(job["ID"], purge=purge, no_shutdown_delay=no_shutdown_delay)
        eval_id = resp.get("EvalID") or ""
        if detach or not eval_id:
            click.echo(eval_id)
            return
        from .monitor import Monitor
        raise SystemExit(Monitor(client, verbose=verbose, timeout=follow_for).monitor(eval_id, follow="stops"))


@job_group.command("plan")
@click.argument("file", metavar="FILE")
@click.option("-verbose", "--verbose", is_flag=True, help="Show the whole diff, unchanged groups and added fields too.")
@address_option
@_var_options
def plan_cmd(file: str, verbose: bool, address: str | None, var: tuple[str, ...], var_file: tuple[str, ...]) -> None:
    """Dry-run a job: the diff against the running version and what the scheduler would do.

    Exit codes: 0 no allocations would be created or destroyed, 1 some would, 255 an error.
    """
    try:
        loaded = load_job(file, var, var_file)
        show_warnings(loaded.warnings)
        with connect(address) as client:
            try:
                resp = client.plan_job(loaded.job.to_document(), diff=True)
            except Unreachable as e:
                fail(str(e))
            except YurtError as e:
                fail(api_message(e))
    except SystemExit as e:
        raise SystemExit(255 if e.code not in (0, None) else e.code) from None
    raise SystemExit(show_plan(resp, file, verbose, warned=bool(loaded.warnings)))


INIT_FILES = {False: "example.nomad.hcl", True: "example.nomad.hcl"}


@job_group.command("init")
@click.argument("filename", required=False, metavar="[FILENAME]")
@click.option("-connect", "--connect", is_flag=True,
              help="Write the Connect example (the countdash job) instead of the basic one.")
@click.option("-short", "--short", is_flag=True, help="Leave the explanatory comments out.")
def init_cmd(filename: str | None, connect: bool, short: bool) -> None:
    """Write an example job file (example.nomad.hcl) in the current directory."""
    asset = "connect.nomad" if connect else "example.nomad.hcl"
    target = filename or "example.nomad.hcl"
    if os.path.exists(target):
        fail(f"{target} already exists; remove it or give another file name")
    text = resources.files("yurt.cli").joinpath("assets", asset).read_text(encoding="utf-8")
    if short:
        text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")).lstrip("\n") + "\n"
    try:
        with open(target, "x", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        fail(f"cannot write {target}: {e.strerror}")
    out.print(f"Example job file written to {target}")


# -- `job plan` output (command/job_plan.go formatJobDiff, formatDryRun) -----------------------------
_MARKERS = {"Added": "+ ", "Deleted": "- ", "Edited": "+/- "}
_UPDATE_NAMES = (("Place", "create"), ("DestructiveUpdate", "create/destroy update"), ("Stop", "destroy"),
                 ("Ignore", "ignore"), ("InPlaceUpdate", "in-place update"), ("Migrate", "migrate"),
                 ("Canary", "canary"))
_CHANGES = ("Place", "Stop", "Migrate", "DestructiveUpdate", "Canary")


def _marker(kind: str | None) -> str:
    return _MARKERS.get(kind or "", "")


def _longest(fields: list[dict], objects: list[dict]) -> tuple[int, int]:
    lf = max((len(f.get("Name", "")) for f in fields), default=0)
    lm = max((len(_marker(x.get("Type"))) for x in [*fields, *objects]), default=0)
    return lf, lm


def _annot(items: list[str] | None) -> str:
    return f" ({', '.join(items)})" if items else ""


def _field(f: dict, start: int, kpre: int, vpre: int) -> str:
    kind = f.get("Type")
    value = {"Added": json.dumps(f.get("New", "")), "Deleted": json.dumps(f.get("Old", "")),
             "Edited": f'{json.dumps(f.get("Old", ""))} => {json.dumps(f.get("New", ""))}'}.get(
        kind or "", json.dumps(f.get("New", "")))
    return f'{" " * start}{_marker(kind)}{" " * kpre}{f.get("Name")}: {" " * vpre}{value}{_annot(f.get("Annotations"))}'


def _object(o: dict, start: int, kpre: int) -> str:
    head = f'{" " * start}{_marker(o.get("Type"))}{" " * kpre}{o.get("Name")} {{\n'
    lf, lm = _longest(o.get("Fields") or [], o.get("Objects") or [])
    body = _aligned(o.get("Fields") or [], o.get("Objects") or [], start + kpre + 2, lf, lm)
    return f'{head}{body}\n{" " * (start + kpre)}}}'


def _aligned(fields: list[dict], objects: list[dict], start: int, lf: int, lm: int) -> str:
    parts = [_field(f, start, lm - len(_marker(f.get("Type"))), lf - len(f.get("Name", ""))) for f in fields]
    parts += [_object(o, start, lm - len(_marker(o.get("Type")))) for o in objects]
    return "\n".join(parts)


def _task_diff(t: dict, start: int, tpre: int, verbose: bool) -> str:
    out_ = f'{" " * start}{_marker(t.get("Type"))}{" " * tpre}Task: "{t.get("Name")}"{_annot(t.get("Annotations"))}'
    kind = t.get("Type")
    if kind == "None" or (kind in ("Added", "Deleted") and not verbose):
        return out_
    lf, lm = _longest(t.get("Fields") or [], t.get("Objects") or [])
    body = _aligned(t.get("Fields") or [], t.get("Objects") or [], start + 2, lf, lm)
    return out_ + ("\n" + body if body else "")


def _group_diff(g: dict, pre: int, updates: dict | None, verbose: bool) -> str:
    out_ = f'{_marker(g.get("Type"))}{" " * pre}Task Group: "{g.get("Name")}"'
    counts = [f"{(updates or {}).get(key, 0)} {name}" for key, name in sorted(_UPDATE_NAMES, key=lambda x: x[1])
              if (updates or {}).get(key, 0)]
    if counts:
        out_ += f" ({', '.join(counts)})"
    out_ += "\n"
    fields, objects, tasks = g.get("Fields") or [], g.get("Objects") or [], g.get("Tasks") or []
    if g.get("Type") != "Edited" and not verbose:
        fields, objects = [], []  # not shown, so not aligned against
    lf, lm = _longest(fields, objects)
    lm = max([lm] + [len(_marker(t.get("Type"))) for t in tasks])
    sub = pre + 2
    if g.get("Type") == "Edited" or verbose:
        fo = _aligned(fields, objects, sub, lf, lm)
        if fo:
            out_ += fo + "\n"
    for t in tasks:
        out_ += _task_diff(t, sub, lm - len(_marker(t.get("Type"))), verbose) + "\n"
    return out_


def format_job_diff(diff: dict, updates: dict[str, dict], verbose: bool = False) -> str:
    groups = diff.get("TaskGroups") or []
    fields, objects = diff.get("Fields") or [], diff.get("Objects") or []
    if diff.get("Type") != "Edited" and not verbose:
        fields, objects = [], []  # not shown, so not aligned against
    groups = [g for g in groups if verbose or g.get("Type") != "None" or _changes(updates.get(g.get("Name", "")))]
    text = f'{_marker(diff.get("Type"))}Job: "{diff.get("ID")}"\n'
    lf, lm = _longest(fields, objects)
    lm = max([lm] + [len(_marker(g.get("Type"))) for g in groups])
    if diff.get("Type") == "Edited" or verbose:
        fo = _aligned(fields, objects, 0, lf, lm)
        if fo:
            text += fo + "\n"
    for g in groups:
        text += _group_diff(g, lm - len(_marker(g.get("Type"))), updates.get(g.get("Name", "")), verbose) + "\n"
    return text.strip()


def _changes(u: dict | None) -> bool:
    return any((u or {}).get(k, 0) for k in _CHANGES)


def format_dry_run(resp: dict) -> str:
    from .format import metric_reasons
    failed = resp.get("FailedTGAllocs") or {}
    if not failed:
        return "- All tasks successfully allocated."
    lines = ["- WARNING: Failed to place all allocations."]
    for group, metric in sorted(failed.items()):
        n = (metric or {}).get("CoalescedFailures", 0) + 1
        lines.append(f'  Task Group "{group}" (failed to place {n} allocation{"s" if n != 1 else ""}):')
        lines += [f"    * {r}" for r in metric_reasons(metric)]
    return "\n".join(lines)


def _paint(text: str) -> None:
    """Plain text when piped; on a terminal color the diff markers as Nomad does."""
    if not out.is_terminal:
        click.echo(text)
        return
    from rich.markup import escape
    for line in text.splitlines():
        s = line.lstrip()
        style = ("yellow" if s.startswith("+/-") else "green" if s.startswith("+") else
                 "red" if s.startswith("-") and not s.startswith("- All") else "")
        out.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)


def show_plan(resp: dict, file: str, verbose: bool, warned: bool = False) -> int:
    """Print a plan response like `nomad job plan`; returns its exit code (0 or 1). The server's
    warnings are the file's, without positions: shown only when `warned` says the file's own
    (with FILE:LINE:COL) were not."""
    updates = (resp.get("Annotations") or {}).get("DesiredTGUpdates") or {}
    if resp.get("Diff"):
        _paint(format_job_diff(resp["Diff"], updates, verbose) + "\n")
    click.echo("Scheduler dry-run:")
    _paint(format_dry_run(resp))
    if resp.get("NextPeriodicLaunch"):
        click.echo(f"- If submitted now, next periodic launch would be at {resp['NextPeriodicLaunch']}")
    click.echo("")
    if resp.get("Warnings") and not warned:
        err.print("[bold yellow]Job Warnings:[/]")
        err.print(str(resp["Warnings"]), markup=False)
    index = resp.get("JobModifyIndex", 0)
    click.echo(f"Job Modify Index: {index}\n"
               "To submit the job with version verification run:\n\n"
               f"yurt job run -check-index {index} {file}\n\n"
               "When running the job with the check-index flag, the job will only be run if the\n"
               "job modify index given matches the server-side version. If the index has\n"
               "changed, another user has modified the job and the plan's results are\n"
               "potentially invalid.")
    if resp.get("Diff") is None:
        return 0
    return 1 if any(_changes(u) for u in updates.values()) else 0


@job_group.group("periodic", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def periodic_group() -> None:
    """Interact with periodic jobs."""


@periodic_group.command("force")
@click.argument("job_id", metavar="JOB")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def periodic_force_cmd(job_id: str, detach: bool, verbose: bool, address: str | None) -> None:
    """Launch a periodic job's child now, whatever its schedule (and prohibit_overlap) says."""
    from .status import find_job
    with connect(address) as client:
        job = find_job(client, job_id)
        if not job.get("Periodic"):
            fail(f'job "{job["ID"]}" is not periodic')
        resp = client.put(f"/v1/job/{quote(job['ID'], safe='')}/periodic/force")
        eval_id = resp.get("EvalID") or ""
        if detach or not eval_id:
            click.echo("Force periodic successful")
            click.echo(f"Evaluation ID: {eval_id}")
            return
        from .monitor import Monitor
        raise SystemExit(Monitor(client, verbose=verbose).monitor(eval_id))


@job_group.command("start")
@click.argument("job_id", metavar="JOB")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@_timeout_option("5m")
@address_option
@api_errors
def start_cmd(job_id: str, detach: bool, verbose: bool, timeout: str, address: str | None) -> None:
    """Run a stopped job again (JOB may be a unique prefix of its ID), as `nomad job start`: its
    latest version, registered again not stopped, followed as `job run` is unless -detach."""
    from yurt.structs import Job

    from .status import find_job
    follow_for = _seconds(timeout)
    with connect(address) as client:
        stub = find_job(client, job_id)
        doc = client.get(f"/v1/job/{quote(stub['ID'], safe='')}", namespace=stub.get("Namespace"))[0]
        if not doc.get("Stop"):
            fail(f'Job "{doc.get("Name") or doc["ID"]}" has not been stopped')
        resp = client.register_job({"Job": {**doc, "Stop": False}})
        eval_id = resp.get("EvalID") or ""
        if detach or not eval_id:
            click.echo("Job start successful")
            if doc.get("Periodic"):
                _approximate_next_launch(Job.model_validate(doc))
            if eval_id:
                click.echo(f"Evaluation ID: {eval_id}")
            return
        from .monitor import Monitor
        raise SystemExit(Monitor(client, verbose=verbose, timeout=follow_for).monitor(eval_id))


@job_group.command("eval")
@click.argument("job_id", metavar="JOB")
@click.option("-force-reschedule", "--force-reschedule", "force", is_flag=True,
              help="Reschedule the job's failed allocations now, even past their reschedule policy.")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def eval_cmd(job_id: str, force: bool, detach: bool, verbose: bool, address: str | None) -> None:
    """Evaluate a job again (JOB may be a unique prefix of its ID), as `nomad job eval`: a new
    evaluation, followed unless -detach."""
    from .status import find_job
    with connect(address) as client:
        job = find_job(client, job_id)
        resp = client.put(f"/v1/job/{quote(job['ID'], safe='')}/evaluate",
                          {"JobID": job["ID"], "EvalOptions": {"ForceReschedule": force}})
        eval_id = resp.get("EvalID") or ""
        if detach or not eval_id:
            click.echo(f'Created eval ID: "{eval_id if verbose else eval_id[:8]}"')
            return
        from .monitor import Monitor
        raise SystemExit(Monitor(client, verbose=verbose).monitor(eval_id))


@job_group.command("dispatch")
@click.argument("job_id", metavar="JOB")
@click.argument("input_file", metavar="[INPUT|-]", required=False)
@click.option("-meta", "--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Meta of the dispatched job.")
@click.option("-id-prefix-template", "--id-prefix-template", "id_prefix", default="",
              help="A prefix in the dispatched job's ID.")
@click.option("-idempotency-token", "--idempotency-token", "token", default="",
              help="Dispatch at most once with this token (until its child is garbage collected).")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def dispatch_cmd(job_id: str, input_file: str | None, meta: tuple[str, ...], id_prefix: str, token: str,
                 detach: bool, verbose: bool, address: str | None) -> None:
    """Run a parameterized job once, with meta and a payload (a file, or - for stdin)."""
    import base64
    pairs: dict[str, str] = {}
    for m in meta:
        key, sep, value = m.partition("=")
        if not sep or not key:
            fail(f'-meta "{m}" is not KEY=VALUE')
        pairs[key] = value
    payload = b""
    if input_file == "-":
        payload = sys.stdin.buffer.read()
    elif input_file:
        try:
            with open(input_file, "rb") as f:
                payload = f.read()
        except OSError as e:
            fail(f"cannot read the payload {input_file}: {e.strerror}")
    body: dict[str, Any] = {"Payload": base64.b64encode(payload).decode(), "Meta": pairs,
                            "IdempotencyToken": token, "IdPrefixTemplate": id_prefix}
    with connect(address) as client:
        resp = client.put(f"/v1/job/{quote(job_id, safe='')}/dispatch", body)
        eval_id = resp.get("EvalID") or ""
        click.echo("Dispatched Job ID = " + str(resp.get("DispatchedJobID")))
        click.echo("Evaluation ID     = " + (eval_id if verbose else eval_id[:8]))
        if detach or not eval_id:
            return
        click.echo()
        from .monitor import Monitor
        raise SystemExit(Monitor(client, verbose=verbose).monitor(eval_id))
