"""JSON job files with positions: a small JSON reader that remembers where each key was.

Python's json module forgets positions; errors in a JSON job must point at their line too.
Numbers, strings and escapes are parsed by the json module's own scanner.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import JobspecError, Path, Position

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
_MAX_DEPTH = 200


class _Reader:
    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.positions: dict[Path, Position] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def pos(self, i: int) -> Position:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        return Position(self.file, lo + 1, i - self._line_starts[lo] + 1)

    def fail(self, i: int, message: str) -> JobspecError:
        return JobspecError.one(self.pos(i), f"invalid JSON: {message}")

    def ws(self, i: int) -> int:
        return _WS.match(self.text, i).end()  # type: ignore[union-attr]

    def value(self, i: int, path: Path, depth: int) -> tuple[Any, int]:
        if depth > _MAX_DEPTH:
            raise self.fail(i, f"nested more than {_MAX_DEPTH} deep")
        i = self.ws(i)
        if i >= len(self.text):
            raise self.fail(i, "unexpected end of file")
        self.positions.setdefault(path, self.pos(i))
        ch = self.text[i]
        if ch == "{":
            return self.obj(i + 1, path, depth)
        if ch == "[":
            return self.arr(i + 1, path, depth)
        if ch == '"':
            return self.string(i)
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, i):
                return val, i + len(word)
        m = _NUMBER.match(self.text, i)
        if m and m.end() > i:
            num = m.group(0)
            return (float(num) if m.group(1) or m.group(2) else int(num)), m.end()
        raise self.fail(i, f"unexpected {self.text[i]!r}")

    def string(self, i: int) -> tuple[str, int]:
        try:
            return json.decoder.scanstring(self.text, i + 1)  # type: ignore[attr-defined]
        except json.JSONDecodeError as e:
            raise self.fail(e.pos, e.msg) from None

    def obj(self, i: int, path: Path, depth: int) -> tuple[dict, int]:
        out: dict[str, Any] = {}
        i = self.ws(i)
        if i < len(self.text) and self.text[i] == "}":
            return out, i + 1
        while True:
            i = self.ws(i)
            if i >= len(self.text) or self.text[i] != '"':
                raise self.fail(i, "expected a quoted key")
            key_pos = i
            key, i = self.string(i)
            i = self.ws(i)
            if i >= len(self.text) or self.text[i] != ":":
                raise self.fail(i, 'expected ":" after a key')
            self.positions[path + (key,)] = self.pos(key_pos)
            out[key], i = self.value(i + 1, path + (key,), depth + 1)
            i = self.ws(i)
            if i < len(self.text) and self.text[i] == ",":
                i += 1
                continue
            if i < len(self.text) and self.text[i] == "}":
                return out, i + 1
            raise self.fail(i, 'expected "," or "}"')

    def arr(self, i: int, path: Path, depth: int) -> tuple[list, int]:
        out: list[Any] = []
        i = self.ws(i)
        if i < len(self.text) and self.text[i] == "]":
            return out, i + 1
        while True:
            item, i = self.value(i, path + (len(out),), depth + 1)
            out.append(item)
            i = self.ws(i)
            if i < len(self.text) and self.text[i] == ",":
                i += 1
                continue
            if i < len(self.text) and self.text[i] == "]":
                return out, i + 1
            raise self.fail(i, 'expected "," or "]"')


def parse_json(text: str, file: str) -> tuple[Any, dict[Path, Position]]:
    """The document and the position of every key and value, by JSON path."""
    reader = _Reader(text, file)
    value, end = reader.value(0, (), 0)
    end = reader.ws(end)
    if end != len(text):
        raise reader.fail(end, "unexpected text after the end of the document")
    return value, reader.positions
