"""`yurt job ...`: validate, run, init (Nomad's verbs and flags, single- or double-dash)."""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

import click

from yurt.jobspec import JobspecError, Loaded, load_file

from .flags import NomadGroup
from .output import EXIT_ERROR, fail, out, show_problems, show_warnings


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
    from yurt.jobspec.hcl_eval import Evaluator
    from yurt.jobspec.hcl_syntax import parse_body
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
        body = parse_body(text, path)
        ev = Evaluator(path, text + "\n")
        return {a.name: ev.evaluate(a.expr) for a in body.attributes}
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
    """Work with jobs: validate, run, init."""


@job_group.command("validate")
@click.argument("file", metavar="FILE")
@_var_options
def validate_cmd(file: str, var: tuple[str, ...], var_file: tuple[str, ...]) -> None:
    """Check a job file; exit 0 if it is valid, 1 with every problem listed otherwise."""
    loaded = load_job(file, var, var_file)
    show_warnings(loaded.warnings)
    out.print("Job validation successful")


@job_group.command("run")
@click.argument("file", metavar="FILE")
@click.option("-output", "--output", is_flag=True,
              help="Print the canonical JSON of the job ({\"Job\": ...}) and submit nothing.")
@_var_options
def run_cmd(file: str, output: bool, var: tuple[str, ...], var_file: tuple[str, ...]) -> None:
    """Run a job (with -output: print its canonical JSON instead)."""
    loaded = load_job(file, var, var_file)
    show_warnings(loaded.warnings)
    if output:
        click.echo(json.dumps(loaded.job.to_document(), indent=4))
        return
    fail("submitting a job needs a running agent, which this version of yurt does not have yet; "
         "use -output to see the job Yurt would submit")


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
