"""HCL bodies -> the job's JSON document (Nomad's field names), with a position for every value.

The schema is the structs themselves: each model's fields, with the name they have in a job
file, say which attributes and blocks a block may hold. A few Nomad spellings are handled by
hand: `port "label"` blocks split into ReservedPorts/DynamicPorts, constraint shorthands such as
`distinct_hosts = true`, and opaque maps (`config`, `env`, `meta`).
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from yurt.structs.duration import DURATION_VALIDATOR
from yurt.structs import (Affinity, Constraint, Duration, NetworkResource, Port, hcl_name, json_name,
                          parse_duration)

from .errors import Path, Position, Problem
from .hcl_eval import Evaluator
from .hcl_syntax import Attribute, Block, Body

# Blocks Nomad knows that Yurt does not run yet: a clear word instead of "unknown block".
NOT_SUPPORTED = {
    "vault", "csi_plugin", "scaling",
    "multiregion", "secret", "consul", "device",
    "numa", "action", "schedule", "dynamic",
}

# Constraint and affinity shorthands: `distinct_hosts = true`, `regexp = "..."`.
_SHORTHAND_OPERATORS = ("distinct_hosts", "distinct_property", "regexp", "version", "semver",
                        "set_contains", "set_contains_any", "set_contains_all")


@dataclass(frozen=True)
class FieldSpec:
    attr: str
    json: str
    hcl: str
    kind: str  # "value" | "map" | "block" | "blocks" | "named" (labelled blocks -> a map) | "label"
    model: type[BaseModel] | None
    annotation: Any


def _unwrap_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


@cache
def schema(model: type[BaseModel]) -> dict[str, tuple[FieldSpec, ...]]:
    """HCL name -> the fields it may decode into (a `port` block is two: reserved, dynamic)."""
    out: dict[str, list[FieldSpec]] = {}
    for attr, info in model.model_fields.items():
        hcl = hcl_name(model, attr)
        if hcl == "-":
            continue
        t = _unwrap_optional(info.annotation)
        if DURATION_VALIDATOR in info.metadata:  # pydantic moves a bare Annotated's metadata here
            t = Duration
        origin = typing.get_origin(t)
        sub = None
        if hcl == "label" and (info.json_schema_extra or {}).get("hcl") == "label":  # type: ignore[union-attr]
            kind = "label"   # field(hcl="label"): the block's label; a field named label is an attribute
        elif isinstance(t, type) and issubclass(t, BaseModel):
            kind, sub = "block", t
        elif origin is list and isinstance(typing.get_args(t)[0], type) \
                and issubclass(typing.get_args(t)[0], BaseModel):
            kind, sub = "blocks", typing.get_args(t)[0]
        elif origin is dict and isinstance(typing.get_args(t)[1], type) \
                and issubclass(typing.get_args(t)[1], BaseModel):
            kind, sub = "named", typing.get_args(t)[1]   # `volume "name" { }` blocks -> {"name": {...}}
        elif origin is dict:
            kind = "map"
        else:
            kind = "value"
        out.setdefault(hcl, []).append(FieldSpec(attr, json_name(model, attr), hcl, kind, sub, t))
    return {k: tuple(v) for k, v in out.items()}


def _type_word(t: Any) -> str:
    if t is bool:
        return "a boolean (true or false)"
    if t is int:
        return "a whole number"
    if t is float:
        return "a number"
    if t is str:
        return "a string"
    if t == Duration:
        return 'a duration like "30s"'
    if typing.get_origin(t) is list:
        return f"a list of {_type_word(typing.get_args(t)[0]).replace('a ', '', 1)}s"
    if typing.get_origin(t) is dict:
        return "a map"
    return "a value"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) < 40 else f'"{value[:37]}..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    if value is None:
        return "null"
    return str(value)


class Decoder:
    """Decodes one job block; collects problems instead of stopping at the first."""

    def __init__(self, file: str, evaluator: Evaluator) -> None:
        self.file = file
        self.ev = evaluator
        self.positions: dict[Path, Position] = {}
        self.problems: list[Problem] = []
        self.where: dict[Path, str] = {}

    # -- problems ---------------------------------------------------------------------------
    def error(self, pos: Position, where: str, message: str) -> None:
        self.problems.append(Problem(pos, where, message))

    # -- blocks -----------------------------------------------------------------------------
    def block(self, model: type[BaseModel], block: Block, path: Path, where: str) -> dict[str, Any]:
        self.positions[path] = block.pos
        spec = schema(model)
        doc: dict[str, Any] = {}
        label_fields = [f for fs in spec.values() for f in fs if f.kind == "label"]
        if label_fields:
            if len(block.labels) != 1:
                self.error(block.pos, where,
                           f'{block.type} needs exactly one name: write {block.type} "name" {{ ... }}')
            else:
                doc[label_fields[0].json] = block.labels[0]
                self.positions[path + (label_fields[0].json,)] = block.label_pos[0]
        elif block.labels:
            self.error(block.label_pos[0], where,
                       f'{block.type} takes no label; remove "{block.labels[0]}"'
                       + (f' and write name = "{block.labels[0]}" inside' if "name" in spec else ""))
        self.body(model, block.body, path, where, doc)
        return doc

    def body(self, model: type[BaseModel], body: Body, path: Path, where: str, doc: dict[str, Any]) -> None:
        spec = schema(model)
        seen: dict[str, Position] = {}
        for attr in body.attributes:
            if attr.name in seen:
                self.error(attr.pos, where, f'"{attr.name}" is set twice (first at line {seen[attr.name].line}); '
                                            "keep one")
                continue
            seen[attr.name] = attr.pos
            self.attribute(model, spec, attr, path, where, doc)
        for blk in body.blocks:
            self.child_block(model, spec, blk, path, where, doc, seen)

    def attribute(self, model: type[BaseModel], spec: dict, attr: Attribute, path: Path, where: str,
                  doc: dict[str, Any]) -> None:
        if model in (Constraint, Affinity) and attr.name in _SHORTHAND_OPERATORS:
            self.shorthand(attr, path, where, doc)
            return
        fields = spec.get(attr.name)
        if not fields or fields[0].kind == "label":
            self.unknown(attr.pos, where, attr.name, spec, "attribute")
            return
        f = fields[0]
        if f.kind in ("block", "blocks"):
            self.error(attr.pos, where, f'{attr.name} is a block: write {attr.name} {{ ... }} without "="')
            return
        value = self.ev.evaluate(attr.expr)
        ok, converted = self.convert(value, f.annotation)
        if not ok:
            self.error(attr.pos, _join(where, attr.name),
                       f"must be {_type_word(f.annotation)}, not {_show(value)}" + _hint(f.annotation, value))
            return
        doc[f.json] = converted
        self.positions[path + (f.json,)] = attr.pos

    def shorthand(self, attr: Attribute, path: Path, where: str, doc: dict[str, Any]) -> None:
        value = self.ev.evaluate(attr.expr)
        op = attr.name
        self.positions[path + ("Operand",)] = attr.pos
        if op == "distinct_hosts":
            if value not in (True, "true"):
                if value in (False, "false"):
                    return
                self.error(attr.pos, _join(where, op), "must be true or false")
                return
            doc["Operand"] = op
        elif op == "distinct_property":
            doc["Operand"] = op
            doc["LTarget"] = str(value)
            self.positions[path + ("LTarget",)] = attr.pos
        else:
            doc["Operand"] = op
            doc["RTarget"] = _scalar_str(value)
            self.positions[path + ("RTarget",)] = attr.pos

    def child_block(self, model: type[BaseModel], spec: dict, blk: Block, path: Path, where: str,
                    doc: dict[str, Any], seen: dict[str, Position]) -> None:
        fields = spec.get(blk.type)
        if not fields or fields[0].kind in ("value", "label"):
            if fields and fields[0].kind == "value":
                self.error(blk.pos, where, f'{blk.type} is an attribute, not a block: write {blk.type} = ...')
            elif blk.type in NOT_SUPPORTED:
                self.error(blk.pos, where, f'the "{blk.type}" block is not supported by Yurt yet; remove it')
            else:
                self.unknown(blk.pos, where, blk.type, spec, "block")
            return
        f = fields[0]
        if model is NetworkResource and blk.type == "port":
            self.port(blk, path, where, doc)
            return
        if f.kind == "map":
            if blk.type in seen:
                self.error(blk.pos, where, f'"{blk.type}" is set twice (first at line {seen[blk.type].line}); keep one')
                return
            seen[blk.type] = blk.pos
            if blk.labels:
                self.error(blk.label_pos[0], where, f"{blk.type} takes no label")
            value = self.opaque(blk.body, path + (f.json,) if f.json == "Gateway" else None)
            ok, converted = self.convert(value, f.annotation)
            if not ok:
                self.error(blk.pos, _join(where, blk.type), f"must be {_type_word(f.annotation)}")
                return
            doc[f.json] = converted
            self.positions[path + (f.json,)] = blk.pos
            return
        assert f.model is not None
        if f.kind == "block":
            if blk.type in seen:
                self.error(blk.pos, where, f"only one {blk.type} block is allowed here "
                                           f"(another is at line {seen[blk.type].line})")
                return
            seen[blk.type] = blk.pos
            doc[f.json] = self.block(f.model, blk, path + (f.json,), _join(where, blk.type))
        elif f.kind == "named":
            named = doc.setdefault(f.json, {})
            name = blk.labels[0] if blk.labels else ""
            if name in named:
                self.error(blk.pos, where, f'{blk.type} "{name}" is declared twice; keep one')
                return
            named[name] = self.block(f.model, blk, path + (f.json, name), _join(where, f'{blk.type} "{name}"'))
        else:
            items = doc.setdefault(f.json, [])
            child_path = path + (f.json, len(items))
            label = f' "{blk.labels[0]}"' if blk.labels else ""
            items.append(self.block(f.model, blk, child_path, _join(where, blk.type + label)))

    def port(self, blk: Block, path: Path, where: str, doc: dict[str, Any]) -> None:
        label = f' "{blk.labels[0]}"' if blk.labels else ""
        static = next((a for a in blk.body.attributes if a.name == "static"), None)
        key = "DynamicPorts"
        if static is not None:
            value = self.ev.evaluate(static.expr)
            if (isinstance(value, int) and not isinstance(value, bool) and value > 0) or \
                    (isinstance(value, str) and value.isdigit() and int(value) > 0):
                key = "ReservedPorts"
        items = doc.setdefault(key, [])
        items.append(self.block(Port, blk, path + (key, len(items)), _join(where, "port" + label)))

    def unknown(self, pos: Position, where: str, name: str, spec: dict, what: str) -> None:
        choices = [k for k, fs in spec.items() if fs[0].kind != "label"]
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        hint = f'; did you mean "{close[0]}"?' if close else \
            f"; {'attributes' if what == 'attribute' else 'blocks'} allowed here: " + \
            ", ".join(sorted(k for k in choices if (spec[k][0].kind in ("value", "map")) == (what == "attribute")))
        self.error(pos, where, f'unknown {what} "{name}"{hint}')

    # -- values -----------------------------------------------------------------------------
    def opaque(self, body: Body, path: Path | None = None) -> dict[str, Any]:
        """A free-form map block (`config`, `env`, `meta`): attributes, and nested blocks as lists.
        With `path` (a connect gateway block, validated key by key) the positions inside it are
        kept too, so its problems point at their line."""
        out: dict[str, Any] = {a.name: self.ev.evaluate(a.expr) for a in body.attributes}
        if path is not None:
            for a in body.attributes:
                self.positions[path + (a.name,)] = a.pos
        for blk in body.blocks:
            items = out.setdefault(blk.type, [])
            child = path + (blk.type, len(items)) if path is not None and not blk.labels else None
            if child is not None:
                self.positions[child] = blk.pos
            value = self.opaque(blk.body, child)
            for label in reversed(blk.labels):
                value = {label: value}
            items.append(value)
        return out

    def convert(self, value: Any, t: Any) -> tuple[bool, Any]:
        """HCL's type conversions: numbers <-> strings, "true" -> true; False when impossible."""
        t = _unwrap_optional(t)
        if t is Any or t is object:
            return True, value
        if value is None:
            return True, None
        if t == Duration:
            if isinstance(value, str):
                try:
                    return True, parse_duration(value)
                except ValueError:
                    return False, value
            # A bare number is ambiguous in a job file (Nomad's JSON means nanoseconds): only 0 is taken.
            return (True, 0) if value == 0 and not isinstance(value, bool) else (False, value)
        if t is str:
            if isinstance(value, (list, dict)):
                return False, value
            return True, _scalar_str(value)
        if t is bool:
            if isinstance(value, bool):
                return True, value
            if value in ("true", "false"):
                return True, value == "true"
            return False, value
        if t in (int, float):
            if isinstance(value, bool):
                return False, value
            if isinstance(value, (int, float)):
                if t is int and isinstance(value, float):
                    return (True, int(value)) if value.is_integer() else (False, value)
                return True, value
            if isinstance(value, str):
                try:
                    return True, t(value)
                except ValueError:
                    return False, value
            return False, value
        origin = typing.get_origin(t)
        if origin is list:
            if not isinstance(value, list):
                return False, value
            (item_t,) = typing.get_args(t)
            out = []
            for item in value:
                ok, conv = self.convert(item, item_t)
                if not ok:
                    return False, value
                out.append(conv)
            return True, out
        if origin is dict:
            if not isinstance(value, dict):
                return False, value
            _, val_t = typing.get_args(t)
            out_d = {}
            for k, v in value.items():
                ok, conv = self.convert(v, val_t)
                if not ok:
                    return False, value
                out_d[str(k)] = conv
            return True, out_d
        return True, value


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _join(where: str, part: str) -> str:
    return f"{where} > {part}" if where else part


def _hint(t: Any, value: Any) -> str:
    if t == Duration and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'; write "{value}s" for seconds'
    if t == Duration and isinstance(value, str):
        return '; units are ns, us, ms, s, m, h'
    if typing.get_origin(_unwrap_optional(t)) is list and not isinstance(value, list):
        return f"; write [{_show(value)}]"
    return ""
