"""Evaluating HCL2 expressions the way Nomad's job parser does.

`var.x` and `local.x` are resolved, a small set of HCL functions is available, and every
reference that only a client can resolve at run time (`${NOMAD_UPSTREAM_ADDR_count_api}`,
`${attr.kernel.name}`, `${node.datacenter}`, `${meta.rack}`, ...) is kept as literal text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import hcl2
from lark import Token, Tree

from .errors import JobspecError, Position
from .hcl_syntax import name_of, position, trees


class Unknown:
    """A value known only at run time; it is written back as `${text}`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return "${" + self.text + "}"

    def __repr__(self) -> str:
        return f"Unknown({self.text!r})"


class EvalError(Exception):
    def __init__(self, node: Tree | Token | None, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _fn(name: str, fn: Callable[..., Any], nargs: tuple[int, int | None]) -> tuple[str, Any]:
    return name, (fn, nargs)


def _join(sep: str, *lists: list) -> str:
    return sep.join(to_str(x) for lst in lists for x in lst)


def _format(fmt: str, *args: Any) -> str:
    # HCL's format verbs are Go's; %s %d %v %q cover job files.
    conv = re.sub(r"%([-+ #0-9.]*)v", r"%\1s", fmt)
    conv = re.sub(r"%([-+ #0-9.]*)q", r'"%\1s"', conv)
    return conv % tuple(to_str(a) if not isinstance(a, (int, float)) or isinstance(a, bool) else a for a in args)


FUNCTIONS: dict[str, tuple[Callable[..., Any], tuple[int, int | None]]] = dict([
    _fn("upper", lambda s: to_str(s).upper(), (1, 1)),
    _fn("lower", lambda s: to_str(s).lower(), (1, 1)),
    _fn("title", lambda s: to_str(s).title(), (1, 1)),
    _fn("trimspace", lambda s: to_str(s).strip(), (1, 1)),
    _fn("trim", lambda s, c: to_str(s).strip(c), (2, 2)),
    _fn("trimprefix", lambda s, p: to_str(s)[len(p):] if to_str(s).startswith(p) else to_str(s), (2, 2)),
    _fn("trimsuffix", lambda s, p: to_str(s)[:-len(p)] if p and to_str(s).endswith(p) else to_str(s), (2, 2)),
    _fn("chomp", lambda s: to_str(s).rstrip("\r\n"), (1, 1)),
    _fn("replace", lambda s, a, b: to_str(s).replace(a, b), (3, 3)),
    _fn("substr", lambda s, o, n: to_str(s)[o:(None if n < 0 else o + n)], (3, 3)),
    _fn("format", _format, (1, None)),
    _fn("join", _join, (2, None)),
    _fn("split", lambda sep, s: to_str(s).split(sep), (2, 2)),
    _fn("concat", lambda *ls: [x for lst in ls for x in lst], (1, None)),
    _fn("length", lambda v: len(v), (1, 1)),
    _fn("merge", lambda *ms: {k: v for m in ms for k, v in (m or {}).items()}, (0, None)),
    _fn("lookup", lambda m, k, *d: m[k] if k in m else (d[0] if d else _missing(k)), (2, 3)),
    _fn("keys", lambda m: sorted(m), (1, 1)),
    _fn("values", lambda m: [m[k] for k in sorted(m)], (1, 1)),
    _fn("contains", lambda lst, v: v in lst, (2, 2)),
    _fn("element", lambda lst, i: lst[i % len(lst)], (2, 2)),
    _fn("flatten", lambda lst: _flatten(lst), (1, 1)),
    _fn("distinct", lambda lst: [json.loads(x) for x in dict.fromkeys(json.dumps(v, sort_keys=True) for v in lst)],
        (1, 1)),
    _fn("range", lambda *a: list(range(*[int(x) for x in a])), (1, 3)),
    _fn("coalesce", lambda *a: next((x for x in a if x not in (None, "")), None), (1, None)),
    _fn("min", lambda *a: min(a), (1, None)),
    _fn("max", lambda *a: max(a), (1, None)),
    _fn("abs", lambda n: abs(n), (1, 1)),
    _fn("ceil", lambda n: math.ceil(n), (1, 1)),
    _fn("floor", lambda n: math.floor(n), (1, 1)),
    _fn("tostring", lambda v: to_str(v), (1, 1)),
    _fn("tonumber", lambda v: _to_number(v), (1, 1)),
    _fn("tobool", lambda v: v if isinstance(v, bool) else {"true": True, "false": False}[to_str(v)], (1, 1)),
    _fn("tolist", lambda v: list(v), (1, 1)),
    _fn("toset", lambda v: list(dict.fromkeys(v)), (1, 1)),
    _fn("tomap", lambda v: dict(v), (1, 1)),
    _fn("jsonencode", lambda v: json.dumps(v, separators=(",", ":")), (1, 1)),
    _fn("jsondecode", lambda s: json.loads(s), (1, 1)),
])


def _missing(key: str) -> Any:
    raise ValueError(f'key "{key}" is not in the map; give lookup() a default as third argument')


def _flatten(lst: list) -> list:
    out: list = []
    for x in lst:
        out.extend(_flatten(x) if isinstance(x, list) else [x])
    return out


def _to_number(v: Any) -> int | float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    s = to_str(v)
    return int(s) if re.fullmatch(r"-?\d+", s) else float(s)


def to_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        raise ValueError("a list or map cannot be used where a string is expected; use jsonencode() or join()")
    return str(v)


_ESCAPED = {"ESCAPED_INTERPOLATION", "ESCAPED_DIRECTIVE"}
_ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
          "/": lambda a, b: a / b, "%": lambda a, b: a % b}
_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
            ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


class Evaluator:
    """Evaluates expressions of one file with its variables and locals."""

    def __init__(self, file: str, text: str, variables: dict[str, Any] | None = None,
                 locals_: dict[str, Tree] | None = None, base_dir: str | None = None) -> None:
        self.file = file
        self.base_dir = base_dir  # where file() reads from; None: file() is not available
        self.text = text
        self.variables = variables or {}
        self._local_exprs = locals_ or {}
        self._locals: dict[str, Any] = {}
        self._resolving: set[str] = set()
        self.scopes: list[dict[str, Any]] = []

    # -- entry points -----------------------------------------------------------------------
    def evaluate(self, node: Tree) -> Any:
        """The value of an attribute expression; a runtime reference becomes "${...}"."""
        try:
            value = self.value(node)
        except EvalError as e:
            raise JobspecError.one(self.pos(e.node if e.node is not None else node), e.message) from None
        except RecursionError:
            raise JobspecError.one(self.pos(node), "expression nested too deeply") from None
        return materialize(value)

    def pos(self, node: Tree | Token) -> Position:
        return position(self.file, node)

    def source(self, node: Tree) -> str:
        meta = node.meta
        if getattr(meta, "empty", True):
            return ""
        return self.text[meta.start_pos:meta.end_pos]

    # -- expressions ------------------------------------------------------------------------
    def value(self, node: Tree | Token) -> Any:
        if isinstance(node, Token):
            raise EvalError(node, f"unexpected {node!s}")
        kind = node.data
        method = getattr(self, "_" + kind, None)
        if method is None:
            raise EvalError(node, f"{kind.replace('_', ' ')} expressions are not supported in job files")
        return method(node)

    def _expr_term(self, node: Tree) -> Any:
        inner = [c for c in trees(node) if c.data != "new_line_or_comment"]
        return self.value(inner[0])

    def _int_lit(self, node: Tree) -> int:
        return int(str(node.children[0]))

    def _float_lit(self, node: Tree) -> float:
        return float(str(node.children[0]))

    def _literal_value(self, node: Tree) -> Any:
        return {"true": True, "false": False, "null": None}[str(node.children[0])]

    def _string(self, node: Tree) -> Any:
        parts: list[str] = []
        for part in trees(node):
            inner = part.children[0]
            if isinstance(inner, Token):
                text = str(inner)
                if inner.type in _ESCAPED:
                    parts.append(text[1:])
                else:
                    parts.append(hcl2.utils.process_escape_sequences(text))
            elif inner.data == "interpolation":
                value = self.value(trees(inner)[0])
                parts.append(str(value) if isinstance(value, Unknown) else self._stringify(inner, value))
            else:
                raise EvalError(inner, "template directives (%{ ... }) are not supported in job files: "
                                       "compute the value in a locals block instead")
        return "".join(parts)

    def _stringify(self, node: Tree, value: Any) -> str:
        try:
            return to_str(value)
        except ValueError as e:
            raise EvalError(node, str(e)) from None

    def _heredoc_template(self, node: Tree, trim: bool = False) -> str:
        raw = str(node.children[0])
        m = re.match(r"<<-?([A-Za-z][A-Za-z0-9._-]*)\r?\n", raw)
        marker = m.group(1) if m else ""
        body = raw[m.end() if m else 0:]
        body = re.sub(r"[ \t]*" + re.escape(marker) + r"\r?\n?$", "", body)
        if trim:
            lines = body.split("\n")
            indents = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
            cut = min(indents) if indents else 0
            body = "\n".join(x[cut:] for x in lines)
        return self._interpolate_text(node, body)

    def _heredoc_template_trim(self, node: Tree) -> str:
        return self._heredoc_template(node, trim=True)

    def _interpolate_text(self, node: Tree, body: str) -> str:
        out, i = [], 0
        while True:
            j = body.find("${", i)
            if j < 0:
                out.append(body[i:])
                break
            if j > 0 and body[j - 1] == "$":
                out.append(body[i:j - 1] + "${")
                i = j + 2
                continue
            depth, k = 1, j + 2
            while k < len(body) and depth:
                depth += {"{": 1, "}": -1}.get(body[k], 0)
                k += 1
            if depth:
                out.append(body[i:])
                break
            inner = body[j + 2:k - 1]
            out.append(body[i:j])
            out.append(self._interpolate_one(node, inner))
            i = k
        return "".join(out)

    def _interpolate_one(self, node: Tree, inner: str) -> str:
        try:
            tree = hcl2.parses_to_tree(f"x = {inner}\n")
        except Exception:  # noqa: BLE001 - what python-hcl2 cannot parse stays literal text
            return "${" + inner + "}"
        expr = trees(trees(trees(tree)[0])[0])[-1]
        sub = Evaluator(self.file, f"x = {inner}\n", self.variables, self._local_exprs, self.base_dir)
        sub._locals = self._locals
        try:
            value = sub.value(expr)
        except EvalError as e:
            raise EvalError(node, e.message) from None
        return str(value) if isinstance(value, Unknown) else self._stringify(node, value)

    def _tuple(self, node: Tree) -> list:
        return [self.value(c) for c in trees(node) if c.data != "new_line_or_comment"]

    def _object(self, node: Tree) -> dict:
        out: dict[str, Any] = {}
        for elem in trees(node):
            if elem.data != "object_elem":
                continue
            kids = trees(elem)
            key_node, val_node = kids[0], kids[-1]
            out[self._key(key_node)] = self.value(val_node)
        return out

    def _key(self, key_node: Tree) -> str:
        inner = trees(key_node)[0]
        if inner.data == "keyword":
            return name_of(inner)
        ident = inner
        while ident.data == "expr_term" and len(trees(ident)) == 1:
            ident = trees(ident)[0]
        if ident.data == "identifier":
            return name_of(ident)
        value = self.value(inner)
        if isinstance(value, Unknown):
            return str(value)
        return self._stringify(inner, value)

    def _identifier(self, node: Tree) -> Any:
        name = name_of(node)
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return Unknown(name)

    def _get_attr_expr_term(self, node: Tree) -> Any:
        base_node, attr = trees(node)
        root = self._root_name(base_node)
        name = name_of(trees(attr)[0])
        if root == "var" and self._is_root(base_node):
            if name not in self.variables:
                raise EvalError(node, f'unknown variable "{name}": declare it with variable "{name}" {{}}')
            return self.variables[name]
        if root == "local" and self._is_root(base_node):
            return self._local(node, name)
        base = self.value(base_node)
        if isinstance(base, Unknown):
            return Unknown(self.source(node))
        if isinstance(base, dict) and name in base:
            return base[name]
        raise EvalError(node, f'"{self.source(base_node)}" has no attribute "{name}"')

    def _root_name(self, node: Tree) -> str | None:
        while node.data == "expr_term" and len(trees(node)) == 1:
            node = trees(node)[0]
        return name_of(node) if node.data == "identifier" else None

    def _is_root(self, node: Tree) -> bool:
        name = self._root_name(node)
        return name is not None and not any(name in s for s in self.scopes)

    def _local(self, node: Tree, name: str) -> Any:
        if name in self._locals:
            return self._locals[name]
        if name not in self._local_exprs:
            raise EvalError(node, f'unknown local "{name}": define it in a locals block')
        if name in self._resolving:
            raise EvalError(node, f'local "{name}" refers to itself')
        self._resolving.add(name)
        try:
            self._locals[name] = self.value(self._local_exprs[name])
        finally:
            self._resolving.discard(name)
        return self._locals[name]

    def _index_expr_term(self, node: Tree) -> Any:
        base_node, index = trees(node)
        base = self.value(base_node)
        if index.data == "short_index":
            key: Any = int(str(index.children[-1]))
        else:
            key = self.value(next(c for c in trees(index) if c.data != "new_line_or_comment"))
        if isinstance(base, Unknown) or isinstance(key, Unknown):
            return Unknown(self.source(node))
        try:
            return base[key] if isinstance(base, (list, dict)) else _fail()
        except (KeyError, IndexError, TypeError):
            raise EvalError(node, f"index {key!r} is not in {self.source(base_node)}") from None

    def _function_call(self, node: Tree) -> Any:
        parts = trees(node)
        name = name_of(parts[0])
        args_node = next((p for p in parts if p.data == "arguments"), None)
        args = [self.value(a) for a in trees(args_node) if a.data != "new_line_or_comment"] if args_node else []
        if args_node is not None and any(isinstance(t, Token) and t.type == "ELLIPSIS" for t in args_node.children):
            args = args[:-1] + list(args[-1])
        if name == "file":
            return self._file(node, args)
        if name not in FUNCTIONS:
            raise EvalError(node, f"unknown function {name}(): job files may use "
                                  + ", ".join(sorted(FUNCTIONS)))
        if any(isinstance(a, Unknown) for a in args):
            return Unknown(self.source(node))
        fn, (lo, hi) = FUNCTIONS[name]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = str(lo) if lo == hi else f"{lo} to {hi}" if hi else f"at least {lo}"
            raise EvalError(node, f"{name}() takes {want} arguments, got {len(args)}")
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure of a function is the user's input
            raise EvalError(node, f"{name}(): {e}") from None

    def _file(self, node: Tree, args: list[Any]) -> str:
        """file("path"): a file's text, relative to the job file (only for job files on disk)."""
        import os
        if len(args) != 1 or not isinstance(args[0], str):
            raise EvalError(node, 'file() takes one path, like file("app.py")')
        if self.base_dir is None:
            raise EvalError(node, "file() is only available in job files read from disk")
        path = os.path.join(self.base_dir, args[0])
        try:
            with open(path, "rb") as f:
                data = f.read(1024 * 1024 + 1)
        except OSError as e:
            raise EvalError(node, f'file("{args[0]}"): {e.strerror} ({path})') from None
        if len(data) > 1024 * 1024:
            raise EvalError(node, f'file("{args[0]}"): larger than 1 MB')
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise EvalError(node, f'file("{args[0]}"): not UTF-8 text') from None

    def _binary_op(self, node: Tree) -> Any:
        left_node, term = trees(node)[0], trees(node)[1]
        op_node, right_node = [c for c in trees(term) if c.data != "new_line_or_comment"]
        op = str(op_node.children[0])
        left = self.value(left_node)
        if op == "&&" and left is False:
            return False
        if op == "||" and left is True:
            return True
        right = self.value(right_node)
        if isinstance(left, Unknown) or isinstance(right, Unknown):
            return Unknown(self.source(node))
        try:
            if op in _ARITH:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
                    raise TypeError
                result = _ARITH[op](left, right)
                return int(result) if isinstance(result, float) and result.is_integer() and op != "/" else result
            if op in _COMPARE:
                return _COMPARE[op](left, right)
            return (left and right) if op == "&&" else (left or right)
        except (TypeError, ZeroDivisionError):
            raise EvalError(node, f'cannot apply "{op}" to {self.source(left_node)} and '
                                  f"{self.source(right_node)}") from None

    def _unary_op(self, node: Tree) -> Any:
        op = str(node.children[0])
        value = self.value(trees(node)[0])
        if isinstance(value, Unknown):
            return Unknown(self.source(node))
        if op == "!":
            return not value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalError(node, f"cannot negate {self.source(node)}")
        return -value

    def _conditional(self, node: Tree) -> Any:
        cond_node, yes, no = [c for c in trees(node) if c.data != "new_line_or_comment"]
        cond = self.value(cond_node)
        if isinstance(cond, Unknown):
            return Unknown(self.source(node))
        return self.value(yes if cond else no)

    def _for_tuple_expr(self, node: Tree) -> list:
        intro, body, cond = self._for_parts(node)
        out = []
        for scope in self._for_scopes(intro):
            self.scopes.append(scope)
            try:
                if cond is None or self.value(cond):
                    out.append(self.value(body[0]))
            finally:
                self.scopes.pop()
        return out

    def _for_object_expr(self, node: Tree) -> dict:
        intro, body, cond = self._for_parts(node)
        out: dict[str, Any] = {}
        for scope in self._for_scopes(intro):
            self.scopes.append(scope)
            try:
                if cond is None or self.value(cond):
                    out[to_str(self.value(body[0]))] = self.value(body[1])
            finally:
                self.scopes.pop()
        return out

    def _for_parts(self, node: Tree) -> tuple[Tree, list[Tree], Tree | None]:
        parts = [c for c in trees(node) if c.data != "new_line_or_comment"]
        intro = parts[0]
        cond = next((p for p in parts if p.data == "for_cond"), None)
        body = [p for p in parts[1:] if p.data != "for_cond"]
        cond_expr = next(c for c in trees(cond) if c.data != "new_line_or_comment") if cond else None
        return intro, body, cond_expr

    def _for_scopes(self, intro: Tree) -> list[dict[str, Any]]:
        parts = [c for c in trees(intro) if c.data != "new_line_or_comment"]
        names = [name_of(p) for p in parts if p.data == "identifier"]
        coll = self.value(parts[-1])
        if isinstance(coll, Unknown):
            raise EvalError(intro, "a for expression cannot iterate over a value known only at run time")
        items = list(coll.items()) if isinstance(coll, dict) else list(enumerate(coll))
        if len(names) == 1:
            return [{names[0]: v} for _, v in items]
        return [{names[0]: k, names[1]: v} for k, v in items]


def _fail() -> Any:
    raise TypeError


def materialize(value: Any) -> Any:
    """Unknown references become their literal "${...}" text, recursively."""
    if isinstance(value, Unknown):
        return str(value)
    if isinstance(value, list):
        return [materialize(v) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    return value
