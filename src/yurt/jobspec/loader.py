"""A job file in, a canonical job out: parse (HCL2 or JSON), fill Nomad's defaults, validate.

Every problem is collected and reported at once, each as `FILE:LINE:COL: <where>: <what>`.
Nothing here raises anything but JobspecError for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from yurt.structs import Job

from .decode import Decoder
from .errors import JobspecError, Path, Position, Problem, errors_only, warnings_only
from .hcl_eval import Evaluator
from .hcl_syntax import Block, parse_body
from .json_source import parse_json
from .locate import Locator, _fields, _submodel

MAX_FILE_BYTES = 4 * 1024 * 1024  # a big job is a few tens of kilobytes


@dataclass
class Loaded:
    job: Job
    warnings: list[Problem] = field(default_factory=list)
    locator: Locator | None = None


def load_file(path: str, variables: dict[str, Any] | None = None) -> Loaded:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise JobspecError.one(Position(path, 1, 1), f"cannot read the job file: {e.strerror}") from None
    import os
    return load(data, path, variables, base_dir=os.path.dirname(os.path.abspath(path)))


def load(source: str | bytes, file: str = "job.nomad", variables: dict[str, Any] | None = None,
         *, canonical: bool = True, base_dir: str | None = None) -> Loaded:
    """Parse a job file's text (HCL2 or JSON), fill defaults and validate it."""
    text = _decode_text(source, file)
    if _looks_like_json(text, file):
        doc, locator = read_json(text, file)
    else:
        doc, locator = read_hcl(text, file, variables or {}, base_dir)
    return finish(doc, locator, canonical=canonical)


def finish(doc: dict[str, Any], locator: Locator, *, canonical: bool = True) -> Loaded:
    """A decoded JSON job document -> a validated Job (defaults filled when canonical)."""
    from .defaults import canonicalize
    from .validate import validate

    locator.doc = doc
    job = to_struct(doc, locator)
    if canonical:
        canonicalize(job)
    problems = validate(job, locator)
    if errors_only(problems):
        raise JobspecError(errors_only(problems) + warnings_only(problems))
    warnings = sorted(warnings_only(problems), key=lambda p: (p.pos, p.where, p.message))
    return Loaded(job, warnings, locator)


def load_document(doc: Any, source: str = "request body", *, canonical: bool = True) -> Loaded:
    """A job already decoded from JSON (the ``Job`` of an API body ``{"Job": {...}}``) -> a
    validated Job, defaults filled when canonical. With no text behind it, problems name the
    path in the job (``group "api" > service "x" > port``) and `source` instead of a line."""
    doc = prune(doc, Job)
    return finish(doc, Locator(source, {}, doc), canonical=canonical)


# -- text -----------------------------------------------------------------------------------

def _decode_text(source: str | bytes, file: str) -> str:
    if isinstance(source, bytes):
        if len(source) > MAX_FILE_BYTES:
            raise JobspecError.one(Position(file, 1, 1),
                                   f"the job file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; "
                                   "a job file is a few kilobytes: is this the right file?")
        if b"\0" in source:
            raise JobspecError.one(Position(file, 1, 1), "this is a binary file, not a job file (HCL or JSON text)")
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = source[:e.start].count(b"\n") + 1
            col = e.start - (source.rfind(b"\n", 0, e.start) + 1) + 1
            raise JobspecError.one(Position(file, line, col),
                                   "the file is not UTF-8 text; save it as UTF-8") from None
    else:
        text = source
        if len(text) > MAX_FILE_BYTES:
            raise JobspecError.one(Position(file, 1, 1),
                                   f"the job file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
        if "\0" in text:
            raise JobspecError.one(Position(file, 1, 1), "this is a binary file, not a job file (HCL or JSON text)")
    if not text.strip():
        raise JobspecError.one(Position(file, 1, 1), 'the job file is empty: it needs a job "name" { ... } block '
                                                     "(`yurt job init` writes an example)")
    return text


def _looks_like_json(text: str, file: str) -> bool:
    return file.endswith(".json") or text.lstrip()[:1] in ("{", "[")


# -- HCL ------------------------------------------------------------------------------------

def read_variables(text: str, file: str) -> dict[str, Any]:
    """A variables file in HCL (``name = value`` lines, what ``-var-file`` takes) -> the values."""
    body = parse_body(text, file)
    ev = Evaluator(file, text + "\n")
    return {a.name: ev.evaluate(a.expr) for a in body.attributes}


def read_hcl(text: str, file: str, variables: dict[str, Any],
             base_dir: str | None = None) -> tuple[dict[str, Any], Locator]:
    try:
        body = parse_body(text, file)
    except RecursionError:
        raise JobspecError.one(Position(file, 1, 1), "the file is nested too deeply to be a job") from None
    problems: list[Problem] = []
    jobs: list[Block] = []
    declared: dict[str, Any] = {}
    local_exprs: dict[str, Any] = {}
    base = Evaluator(file, text + "\n")
    for attr in body.attributes:
        problems.append(Problem(attr.pos, "", f'"{attr.name}" cannot be set at the top of a job file; '
                                              "put it inside the job block"))
    for blk in body.blocks:
        if blk.type == "job":
            jobs.append(blk)
        elif blk.type == "variable":
            _declare_variable(blk, base, declared, problems)
        elif blk.type == "variables":
            for a in blk.body.attributes:
                declared[a.name] = _Var(a.name, a.pos, "", base.evaluate(a.expr), True)
        elif blk.type == "locals":
            for a in blk.body.attributes:
                local_exprs[a.name] = a.expr
        else:
            problems.append(Problem(blk.pos, "", f'unknown block "{blk.type}": a job file holds one job block '
                                                 "and optional variable and locals blocks"))
    if not jobs:
        problems.append(Problem(Position(file, 1, 1), "", 'no job block: a job file needs job "name" { ... }'))
    elif len(jobs) > 1:
        problems.append(Problem(jobs[1].pos, "", f"only one job block is allowed per file (the first is at "
                                                 f"line {jobs[0].pos.line}); put each job in its own file"))
    values = _variable_values(declared, variables, file, problems)
    if problems:
        raise JobspecError(problems)
    ev = Evaluator(file, text + "\n", values, local_exprs, base_dir)
    decoder = Decoder(file, ev)
    try:
        doc = decoder.block(Job, jobs[0], (), "")
    except RecursionError:
        raise JobspecError.one(jobs[0].pos, "the job is nested too deeply") from None
    if decoder.problems:
        raise JobspecError(decoder.problems)
    return doc, Locator(file, decoder.positions, doc)


@dataclass
class _Var:
    name: str
    pos: Position
    type: str
    default: Any
    has_default: bool


def _declare_variable(blk: Block, ev: Evaluator, declared: dict[str, _Var], problems: list[Problem]) -> None:
    if len(blk.labels) != 1:
        problems.append(Problem(blk.pos, "", 'a variable needs a name: variable "name" { ... }'))
        return
    name = blk.labels[0]
    type_src, default, has_default = "", None, False
    for a in blk.body.attributes:
        if a.name == "type":
            type_src = ev.source(a.expr).strip()
        elif a.name == "default":
            default, has_default = ev.evaluate(a.expr), True
        elif a.name not in ("description", "sensitive", "nullable"):
            problems.append(Problem(a.pos, f'variable "{name}"', f'unknown attribute "{a.name}"; '
                                    "a variable has type, default, description and validation"))
    declared[name] = _Var(name, blk.pos, type_src, default, has_default)


def _variable_values(declared: dict[str, _Var], given: dict[str, Any], file: str,
                     problems: list[Problem]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in given.items():
        if name not in declared:
            problems.append(Problem(Position(file, 1, 1), "",
                                    f'a value was given for variable "{name}", '
                                    f'which the file does not declare: add variable "{name}" {{}}'))
            continue
        values[name] = _typed(value, declared[name], problems)
    for name, var in declared.items():
        if name in values:
            continue
        if not var.has_default:
            problems.append(Problem(var.pos, f'variable "{name}"',
                                    f"has no default and no value was given: pass -var {name}=VALUE"))
            continue
        values[name] = var.default
    return values


def _typed(value: Any, var: _Var, problems: list[Problem]) -> Any:
    if not isinstance(value, str):
        return value
    kind = var.type.split("(")[0]
    try:
        if kind == "number":
            return int(value) if value.lstrip("-").isdigit() else float(value)
        if kind == "bool":
            return {"true": True, "false": False}[value]
        if kind in ("list", "set", "tuple", "map", "object"):
            import hcl2
            from .hcl_syntax import trees
            tree = hcl2.parses_to_tree(f"x = {value}\n")
            return Evaluator("-var", f"x = {value}\n").evaluate(trees(trees(trees(tree)[0])[0])[-1])
    except Exception:  # noqa: BLE001 - reported below as the user's input
        problems.append(Problem(var.pos, f'variable "{var.name}"', f'the value "{value}" is not a {kind}'))
    return value


# -- JSON -----------------------------------------------------------------------------------

def read_json(text: str, file: str) -> tuple[dict[str, Any], Locator]:
    value, positions = parse_json(text, file)
    if not isinstance(value, dict):
        raise JobspecError.one(Position(file, 1, 1), 'a JSON job is an object: {"Job": {...}}')
    if "Job" in value and isinstance(value["Job"], dict):
        doc = value["Job"]
        positions = {k[1:]: v for k, v in positions.items() if k[:1] == ("Job",)}
    elif any(k in value for k in ("ID", "TaskGroups", "Name")):
        doc = value
    else:
        raise JobspecError.one(Position(file, 1, 1), 'this JSON is not a job: write {"Job": {"ID": ..., '
                                                     '"TaskGroups": [...]}}')
    doc = prune(doc, Job)
    return doc, Locator(file, positions, doc)


def prune(value: Any, model: type[BaseModel]) -> Any:
    """Drop nulls, and unknown keys whose value is empty (fields of Nomad's that Yurt lacks)."""
    if not isinstance(value, dict):
        return value
    fields = _fields(model)
    out = {}
    for key, v in value.items():
        if v is None:
            continue
        if key not in fields:
            if v in ("", 0, False, [], {}):
                continue
            out[key] = v
            continue
        sub = _submodel(fields[key][1])
        if sub is not None and isinstance(v, list):
            out[key] = [prune(x, sub) for x in v]
        elif sub is not None:
            out[key] = prune(v, sub)
        else:
            out[key] = v
    return out


# -- struct checks --------------------------------------------------------------------------

_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "bool_type": "a boolean (true or false)", "bool_parsing": "a boolean (true or false)",
    "string_type": "a string", "float_type": "a number", "float_parsing": "a number",
    "list_type": "a list", "dict_type": "an object", "model_type": "an object",
    "model_attributes_type": "an object",
}


def to_struct(doc: dict[str, Any], locator: Locator) -> Job:
    try:
        return Job.model_validate(doc)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            path: Path = tuple(err["loc"])
            kind = err["type"]
            if kind == "extra_forbidden":
                parent = path[:-1]
                problems.append(locator.problem(path, f'unknown field "{path[-1]}"' + _close(doc, parent, path[-1])))
            elif kind in _TYPE_WORDS:
                problems.append(locator.problem(path, f"must be {_TYPE_WORDS[kind]}, not {err.get('input')!r}"))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(locator.problem(path, msg))
        raise JobspecError(problems) from None


def _close(doc: dict[str, Any], parent: Path, key: Any) -> str:
    import difflib
    model: type[BaseModel] | None = Job
    for part in parent:
        if isinstance(part, int) or model is None:
            continue
        model = _submodel(_fields(model).get(part, (None, None))[1]) if part in _fields(model) else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(key), list(_fields(model)), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


