"""From a path in the job's JSON to a position in the file and a description in job terms.

The reader records the position of every block and attribute it decodes, keyed by the JSON
path of the value it produced. A rule that finds a problem names the path; the locator gives
the closest recorded position (the attribute itself, or the block that should have held it) and
says where that is in words a job author recognises: `group "api" > service "count-api" > port`.
"""

from __future__ import annotations

import typing
from functools import cache
from typing import Any

from pydantic import BaseModel

from yurt.structs import Job, hcl_name, json_name

from .errors import Path, Position, Problem

# How list elements are named in descriptions: JSON list key -> (HCL word, key holding its name)
_NAMED = {
    "TaskGroups": ("group", "Name"),
    "Tasks": ("task", "Name"),
    "Services": ("service", "Name"),
    "Checks": ("check", "Name"),
    "DynamicPorts": ("port", "Label"),
    "ReservedPorts": ("port", "Label"),
    "Upstreams": ("upstreams", "DestinationName"),
    "Templates": ("template", "DestPath"),
    "SpreadTarget": ("target", "Value"),
}


@cache
def _fields(model: type[BaseModel]) -> dict[str, tuple[str, Any]]:
    """JSON name -> (HCL name, annotation) for a struct."""
    out = {}
    for attr, info in model.model_fields.items():
        out[json_name(model, attr)] = (hcl_name(model, attr), info.annotation)
    return out


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The struct inside `X | None`, `list[X] | None`; None for plain values and maps."""
    stack = [annotation]
    while stack:
        t = stack.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
        origin = typing.get_origin(t)
        if origin is dict:
            return None
        stack.extend(typing.get_args(t))
    return None


def describe(doc: dict | None, path: Path, root: type[BaseModel] = Job) -> str:
    """Words for a path: ("TaskGroups", 0, "Services", 0, "PortLabel") -> group "api" > service "x" > port."""
    parts: list[str] = []
    model: type[BaseModel] | None = root
    value: Any = doc
    i = 0
    while i < len(path):
        key = path[i]
        nxt = path[i + 1] if i + 1 < len(path) else None
        hcl, annotation = (_fields(model).get(key, (None, None)) if model else (None, None))
        child = value.get(key) if isinstance(value, dict) else None
        if key in _NAMED and isinstance(nxt, int):
            word, name_key = _NAMED[key]
            item = child[nxt] if isinstance(child, list) and 0 <= nxt < len(child) else None
            name = item.get(name_key) if isinstance(item, dict) else None
            parts.append(f'{word} "{name}"' if name else f"{word}[{nxt}]")
            value, i = item, i + 2
        elif isinstance(key, int):
            parts[-1:] = [f"{parts[-1]}[{key}]"] if parts else [f"[{key}]"]
            value = value[key] if isinstance(value, list) and 0 <= key < len(value) else None
            i += 1
            continue
        else:
            if hcl == "label":
                hcl = "name"
            parts.append(hcl or str(key))
            value, i = child, i + 1
            if isinstance(nxt, int) and key not in _NAMED:
                word = parts[-1]
                item = child[nxt] if isinstance(child, list) and 0 <= nxt < len(child) else None
                if key == "Networks":
                    parts[-1] = word if nxt == 0 else f"{word}[{nxt}]"
                else:
                    parts[-1] = f"{word}[{nxt}]"
                value, i = item, i + 1
        model = _submodel(annotation) if annotation is not None else None
    return " > ".join(parts)


class Locator:
    """Positions recorded while reading a file, and the document they belong to."""

    def __init__(self, file: str, positions: dict[Path, Position] | None = None,
                 doc: dict | None = None) -> None:
        self.file = file
        self.positions: dict[Path, Position] = positions or {}
        self.doc = doc

    def position(self, path: Path) -> Position:
        path = tuple(path)
        for i in range(len(path), -1, -1):
            pos = self.positions.get(path[:i])
            if pos is not None:
                return pos
        return Position(self.file, 1, 1)

    def problem(self, path: Path, message: str, severity: str = "error") -> Problem:
        return Problem(self.position(path), describe(self.doc, tuple(path)), message, severity)
