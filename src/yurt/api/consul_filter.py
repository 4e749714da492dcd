"""Consul's `?filter=` expressions (the go-bexpr grammar), evaluated on the JSON answers.

    Service == "web" and "v1" in Tags
    Meta.env != prod or not (Checks.Status contains critical)
    Node.Meta is not empty and Service.Port matches "^80"

Matching operators: `==`, `!=`, `in`, `not in`, `contains`, `not contains`, `is empty`, `is not
empty`, `matches`, `not matches`; logic: `and`, `or`, `not`, parentheses. A selector is dotted
field names (`Service.Meta.env`); through a list (`Checks.Status`) it stands for every element's
value, and a comparison holds when it holds for one of them. Values are "double-quoted",
`backquoted`, or bare words (numbers, true, false). Field names match whatever their case.

A malformed expression is a 400 that shows where it went wrong, as Consul's does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yurt.errors import InvalidInput

Predicate = Callable[[Any], bool]

_TOKEN = re.compile(r'''
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<op>==|!=|\(|\))
  | (?P<word>[A-Za-z0-9_\-./:*\[\]]+)
''', re.X)
_KEYWORDS = {"and", "or", "not", "in", "contains", "is", "empty", "matches"}


@dataclass
class _Tok:
    kind: str   # "str", "op", "word", "end"
    text: str
    pos: int


class FilterError(InvalidInput):
    pass


def _tokens(expr: str) -> list[_Tok]:
    out = []
    i = 0
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if m is None:
            raise FilterError(f"Failed to create boolean expression evaluator: 1:{i + 1}: unexpected "
                              f"{expr[i]!r} in filter {expr!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            text = m.group()
            if kind == "str":
                text = text[1:-1] if text[0] == "`" else re.sub(r"\\(.)", r"\1", text[1:-1])
            out.append(_Tok(kind, text, i))
        i = m.end()
    out.append(_Tok("end", "", len(expr)))
    return out


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokens(expr)
        self.i = 0

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def word(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == "word" and t.text.lower() in words

    def take(self) -> _Tok:
        t = self.peek()
        self.i += 1
        return t

    def fail(self, what: str) -> FilterError:
        t = self.peek()
        got = "the end" if t.kind == "end" else repr(t.text)
        return FilterError(f"Failed to create boolean expression evaluator: 1:{t.pos + 1}: expected {what}, "
                           f"found {got} in filter {self.expr!r}")

    def parse(self) -> Predicate:
        p = self.or_()
        if self.peek().kind != "end":
            raise self.fail('"and", "or" or the end of the expression')
        return p

    def or_(self) -> Predicate:
        left = self.and_()
        while self.word("or"):
            self.take()
            right = self.and_()
            left = (lambda a, b: lambda v: a(v) or b(v))(left, right)
        return left

    def and_(self) -> Predicate:
        left = self.not_()
        while self.word("and"):
            self.take()
            right = self.not_()
            left = (lambda a, b: lambda v: a(v) and b(v))(left, right)
        return left

    def not_(self) -> Predicate:
        if self.word("not"):
            self.take()
            inner = self.not_()
            return lambda v: not inner(v)
        if self.peek().kind == "op" and self.peek().text == "(":
            self.take()
            inner = self.or_()
            if not (self.peek().kind == "op" and self.peek().text == ")"):
                raise self.fail('")"')
            self.take()
            return inner
        return self.match()

    def value(self) -> str:
        t = self.peek()
        if t.kind == "str" or (t.kind == "word" and t.text.lower() not in _KEYWORDS):
            self.take()
            return t.text
        raise self.fail("a value")

    def selector(self) -> list[str]:
        t = self.peek()
        if t.kind != "word" or t.text.lower() in _KEYWORDS:
            raise self.fail("a selector (a field name such as Service or Meta.env)")
        self.take()
        return [p for p in t.text.split(".") if p]

    def match(self) -> Predicate:
        # <value> [not] in <selector>
        t, nxt = self.peek(), self.peek(1)
        if (t.kind == "str" or t.kind == "word") and nxt.kind == "word" and nxt.text.lower() in ("in", "not"):
            if nxt.text.lower() == "in" or (self.peek(2).kind == "word" and self.peek(2).text.lower() == "in"):
                val = self.value()
                negate = self.word("not")
                if negate:
                    self.take()
                self.take()   # in
                sel = self.selector()
                return _negated(negate, lambda v: any(_contains(x, val) for x in _select(v, sel)))
        sel = self.selector()
        op = self.peek()
        if op.kind == "op" and op.text in ("==", "!="):
            self.take()
            val = self.value()
            eq: Predicate = lambda v: any(_equal(x, val) for x in _select(v, sel))   # noqa: E731
            return eq if op.text == "==" else (lambda v: not eq(v))
        negate = False
        if self.word("is"):
            self.take()
            if self.word("not"):
                self.take()
                negate = True
            if not self.word("empty"):
                raise self.fail('"empty"')
            self.take()
            return _negated(negate, lambda v: all(_empty(x) for x in _select(v, sel)))
        if self.word("not"):
            self.take()
            negate = True
        if self.word("contains"):
            self.take()
            val = self.value()
            return _negated(negate, lambda v: any(_contains(x, val) for x in _select(v, sel)))
        if self.word("matches"):
            self.take()
            pattern = self.value()
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise FilterError(f"Failed to create boolean expression evaluator: invalid regular expression "
                                  f"{pattern!r}: {e}") from None
            return _negated(negate, lambda v: any(isinstance(x, str) and rx.search(x) is not None
                                                  for x in _select(v, sel)))
        raise self.fail('a match operator (==, !=, in, not in, contains, is empty, matches)')


def _negated(negate: bool, p: Predicate) -> Predicate:
    return (lambda v: not p(v)) if negate else p


def _select(value: Any, path: list[str]) -> list[Any]:
    """Every value the selector reaches (a list along the way fans out)."""
    current = [value]
    for part in path:
        nxt: list[Any] = []
        for v in current:
            for item in (v if isinstance(v, list) else [v]):
                if isinstance(item, dict):
                    key = part if part in item else next((k for k in item if k.lower() == part.lower()), None)
                    if key is not None:
                        nxt.append(item[key])
        current = nxt
    return current


def _text(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


def _equal(x: Any, val: str) -> bool:
    if isinstance(x, list):
        return False
    return _text(x) == val


def _contains(x: Any, val: str) -> bool:
    if isinstance(x, list):
        return any(_text(i) == val for i in x)
    if isinstance(x, dict):
        return val in x
    if isinstance(x, str):
        return val in x
    return False


def _empty(x: Any) -> bool:
    return x is None or x == "" or x == [] or x == {}


def compile_filter(expr: str) -> Predicate:
    if not expr.strip():
        return lambda v: True
    return _Parser(expr).parse()


def apply(expr: str | None, items: Any) -> Any:
    """The answer with only what matches `expr` (a list, or a map of ID -> object)."""
    if not expr:
        return items
    keep = compile_filter(expr)
    if isinstance(items, dict):
        return {k: v for k, v in items.items() if keep(v)}
    return [v for v in items if keep(v)]
