"""Executing a parsed template (Go's ``text/template/exec.go``) and the built-in functions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import gofmt
from .gofmt import NO_VALUE, FuncError, type_name, value_string
from .parse import (ActionNode, BoolNode, BranchNode, BreakNode, ChainNode, CommandNode, CommentNode,
                    ContinueNode, DotNode, FieldNode, IdentifierNode, ListNode, NilNode, Node, NumberNode,
                    PipeNode, StringNode, TemplateError, TemplateNode, TextNode, Tree, VariableNode, line_col)

MAX_DEPTH = 100  # nested {{template}} calls (Go allows 100000; Python's stack is smaller)


_PLAIN = (str, int, float, bool, list, tuple, dict, bytes)


class _NoFinal:
    pass


_NOFINAL = _NoFinal()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class FuncSpec:
    """A template function and how many arguments it takes (``max_args`` None: variadic)."""

    fn: Callable[..., Any]
    min_args: int
    max_args: int | None
    lazy: bool = False  # and/or: gets the unevaluated arguments
    with_state: bool = False  # executeTemplate: gets the executing state first


def spec(fn: Callable[..., Any]) -> FuncSpec:
    """The FuncSpec of a Python function, from its signature (counted once per function)."""
    func = getattr(fn, "__func__", None)
    if func is not None and getattr(fn, "__self__", None) is not None:  # a bound method: self is given
        lo, hi = _arity(func)
        return FuncSpec(fn, max(lo - 1, 0), None if hi is None else hi - 1)
    lo, hi = _arity(fn)
    return FuncSpec(fn, lo, hi)


@functools.lru_cache(maxsize=4096)
def _arity(fn: Callable[..., Any]) -> tuple[int, int | None]:
    sig = inspect.signature(fn)
    lo = 0
    hi: int | None = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            hi = None
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if hi is not None:
                hi += 1
            if p.default is p.empty:
                lo += 1
    return lo, hi


def truth(v: Any) -> bool:
    """Go's truth: false, 0, nil, empty string/slice/map are false; structs are true."""
    if v is None or v is NO_VALUE:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict, bytes)):
        return bool(v)
    if isinstance(v, Mapping):
        return len(v) > 0
    return True


class Template:
    """A parsed template: the main tree and every ``define``d template, ready to execute many times."""

    def __init__(self, tree: Tree) -> None:
        self.name = tree.name
        self.text = tree.text
        self.root = tree.root
        self.defines = dict(tree.defines)
        self.defines.setdefault(tree.name, tree.root)  # Go: the template is associated under its own name

    def execute(self, data: Any, funcs: Mapping[str, FuncSpec], *, missing_key_error: bool = False) -> str:
        out: list[str] = []
        state = _State(self, funcs, out, missing_key_error)
        dot = NO_VALUE if data is None else data  # nil data: Go's invalid value
        state.vars = [("$", dot)]
        try:
            state.walk(dot, self.root)
        except RecursionError:
            raise state.error("exceeded maximum template depth") from None
        return "".join(out)


class _State:
    __slots__ = ("tmpl", "funcs", "out", "missing_error", "vars", "node", "depth", "tname")

    def __init__(self, tmpl: Template, funcs: Mapping[str, FuncSpec], out: list[str], missing_error: bool) -> None:
        self.tmpl, self.funcs, self.out, self.missing_error = tmpl, funcs, out, missing_error
        self.vars: list[tuple[str, Any]] = []
        self.node: Node | None = None
        self.depth = 0
        self.tname = tmpl.name

    # errors
    def error(self, message: str) -> TemplateError:
        name = self.tmpl.name
        if self.node is None:
            return TemplateError(f"template: {self.tname}: {message}", name=name)
        line, col = line_col(self.tmpl.text, self.node.pos)
        context = str(self.node)
        if len(context) > 20:
            context = context[:20] + "..."
        return TemplateError(f"template: {name}:{line}:{col}: executing {gofmt.go_quote(self.tname)} at <{context}>: "
                             f"{message}", name=name, line=line, col=col)

    # variables
    def push(self, name: str, value: Any) -> None:
        self.vars.append((name, value))

    def set_var(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise self.error(f"undefined variable: {name}")

    def set_top(self, n: int, value: Any) -> None:
        name = self.vars[-n][0]
        self.vars[-n] = (name, value)

    def var_value(self, name: str) -> Any:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                return self.vars[i][1]
        raise self.error(f"undefined variable: {name}")

    # walking
    def walk(self, dot: Any, node: Node) -> None:
        self.node = node
        t = type(node)
        if t is TextNode:
            self.out.append(node.text)  # type: ignore[attr-defined]
        elif t is ActionNode:
            pipe = node.pipe  # type: ignore[attr-defined]
            val = self.eval_pipeline(dot, pipe)
            if not pipe.decls:
                if type(val) is str:
                    self.out.append(val)
                else:
                    self.print_value(node, val)
        elif t is ListNode:
            for n in node.nodes:  # type: ignore[attr-defined]
                self.walk(dot, n)
        elif isinstance(node, BranchNode):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_with(dot, node)
        elif isinstance(node, TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break
        elif isinstance(node, ContinueNode):
            raise _Continue
        elif isinstance(node, CommentNode):
            pass
        else:  # pragma: no cover - the parser makes no other node
            raise self.error(f"unknown node: {node}")

    def print_value(self, node: Node, val: Any) -> None:
        self.node = node
        if val is None or val is NO_VALUE:
            self.out.append("<no value>")
        elif isinstance(val, str):
            self.out.append(val)
        elif callable(val) and not dataclasses.is_dataclass(val) and getattr(type(val), "String", None) is None:
            raise self.error(f"can't print {node} of type {type_name(val)}")
        else:
            self.out.append(value_string(val))

    def walk_if_with(self, dot: Any, node: BranchNode) -> None:
        mark = len(self.vars)
        try:
            val = self.eval_pipeline(dot, node.pipe)
            if truth(val):
                self.walk(val if node.kind == "with" else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: Any, node: BranchNode) -> None:
        self.node = node
        mark = len(self.vars)
        try:
            val = self.eval_pipeline(dot, node.pipe)
            self.node = node
            decls = node.pipe.decls

            def one(index: Any, elem: Any) -> bool:
                if decls:
                    if node.pipe.is_assign:
                        if len(decls) > 1:
                            self.set_var(decls[0].idents[0], index)
                            self.set_var(decls[1].idents[0], elem)
                        else:
                            self.set_var(decls[0].idents[0], elem)
                    else:
                        self.set_top(1, elem)
                        if len(decls) > 1:
                            self.set_top(2, index)
                vmark = len(self.vars)
                try:
                    self.walk(elem, node.list)
                except _Continue:
                    pass
                except _Break:
                    return False
                finally:
                    del self.vars[vmark:]
                return True

            items: Iterable[tuple[Any, Any]]
            if val is None or val is NO_VALUE:
                items = ()
            elif isinstance(val, (list, tuple)):
                items = enumerate(val)
            elif isinstance(val, Mapping):
                items = ((k, val[k]) for k in gofmt.sort_keys(val))
            elif isinstance(val, int) and not isinstance(val, bool):
                if len(decls) > 1:
                    raise self.error(f"can't use {val} to iterate over more than one variable")
                items = ((i, i) for i in range(val))
            elif isinstance(val, (str, bool, float)) or not isinstance(val, Iterable):
                raise self.error(f"range can't iterate over {value_string(val)}")
            else:  # an iterator: like a Go channel, one variable only
                if len(decls) > 1:
                    raise self.error(f"can't use {value_string(val)} to iterate over more than one variable")
                items = ((e, e) for e in val)
            ran = False
            for index, elem in items:
                ran = True
                if not one(index, elem):
                    break
            if not ran and node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        self.node = node
        body = self.tmpl.defines.get(node.name)
        if body is None:
            raise self.error(f"template {gofmt.go_quote(node.name)} not defined")
        if self.depth >= MAX_DEPTH:
            raise self.error(f"exceeded maximum template depth ({MAX_DEPTH})")
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else NO_VALUE
        saved = (self.vars, self.tname)
        self.vars, self.tname = [("$", new_dot)], node.name
        self.depth += 1
        try:
            self.walk(new_dot, body)
        finally:
            self.depth -= 1
            self.vars, self.tname = saved

    # evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        self.node = pipe
        value: Any = _NOFINAL
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for decl in pipe.decls:
            if pipe.is_assign:
                self.set_var(decl.idents[0], value)
            else:
                self.push(decl.idents[0], value)
        return value

    def not_a_function(self, args: list[Node], final: Any) -> None:
        if len(args) > 1 or final is not _NOFINAL:
            raise self.error(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, VariableNode):
            return self.eval_variable(dot, first, cmd.args, final)
        self.node = first
        self.not_a_function(cmd.args, final)
        if isinstance(first, BoolNode):
            return first.value
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            raise self.error("nil is not a command")
        if isinstance(first, NumberNode):
            return first.value
        if isinstance(first, StringNode):
            return first.text
        raise self.error(f"can't evaluate command {first}")  # pragma: no cover

    def eval_chain(self, dot: Any, chain: ChainNode, args: list[Node], final: Any) -> Any:
        if isinstance(chain.node, NilNode):
            raise self.error("indirection through explicit nil in " + str(chain))
        pipe = self.eval_arg(dot, chain.node)
        return self.eval_field_chain(dot, pipe, chain, chain.fields, args, final)

    def eval_variable(self, dot: Any, var: VariableNode, args: list[Node], final: Any) -> Any:
        self.node = var
        value = self.var_value(var.idents[0])
        if len(var.idents) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, var, var.idents[1:], args, final)

    def eval_field_chain(self, dot: Any, receiver: Any, node: Node, idents: list[str], args: list[Node],
                         final: Any) -> Any:
        for ident in idents[:-1]:
            receiver = self.eval_field(dot, ident, node, [], _NOFINAL, receiver)
        return self.eval_field(dot, idents[-1], node, args, final, receiver)

    def eval_field(self, dot: Any, name: str, node: Node, args: list[Node], final: Any, receiver: Any) -> Any:
        self.node = node
        t = type(receiver)
        if len(args) <= 1 and final is _NOFINAL:  # the common cases first: a map's key, a struct's field
            if t is dict:
                value = receiver.get(name, _NOFINAL)
                if value is not _NOFINAL:
                    return value
            else:
                fields = getattr(t, "__dataclass_fields__", None)
                if fields is not None and name in fields and name[:1].isupper():
                    return getattr(receiver, name)
        if receiver is NO_VALUE:
            if self.missing_error:
                raise self.error(f"nil data; no entry for key {gofmt.go_quote(name)}")
            return NO_VALUE
        if receiver is None:
            raise self.error(f"nil pointer evaluating interface {{}}.{name}")
        has_args = len(args) > 1 or final is not _NOFINAL
        if name[:1].isupper() and type(receiver) not in _PLAIN:
            method = getattr(type(receiver), name, None)
            if callable(method) and not isinstance(method, type):
                return self.call(dot, getattr(receiver, name), name, node, args[1:], final)
        if isinstance(receiver, Mapping):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            try:
                return receiver[name]
            except KeyError:
                if self.missing_error:
                    raise self.error(f"map has no entry for key {gofmt.go_quote(name)}") from None
                return NO_VALUE
            except TypeError:
                raise self.error(f"can't evaluate field {name} in type {type_name(receiver)}") from None
        if isinstance(receiver, (str, int, float, bool, list, tuple, bytes)) or not hasattr(receiver, name):
            raise self.error(f"can't evaluate field {name} in type {type_name(receiver)}")
        if not name[:1].isupper():  # Go reaches only exported (capitalized) fields and methods
            raise self.error(f"{name} is an unexported field of struct type {type_name(receiver)}")
        value = getattr(receiver, name)
        if callable(value) and not dataclasses.is_dataclass(value):
            return self.call(dot, value, name, node, args[1:], final)
        if has_args:
            raise self.error(f"{name} has arguments but cannot be invoked as function")
        return value

    def eval_function(self, dot: Any, ident: IdentifierNode, cmd: Node, args: list[Node], final: Any) -> Any:
        self.node = ident
        fs = self.funcs.get(ident.name)
        if fs is None:
            raise self.error(f"{gofmt.go_quote(ident.name)} is not a defined function")
        return self.call_spec(dot, fs, ident.name, cmd, args[1:], final)

    def call(self, dot: Any, fn: Callable[..., Any], name: str, node: Node, args: list[Node], final: Any) -> Any:
        return self.call_spec(dot, spec(fn), name, node, args, final)

    def call_spec(self, dot: Any, fs: FuncSpec, name: str, node: Node, args: list[Node], final: Any) -> Any:
        n = len(args) + (0 if final is _NOFINAL else 1)
        if fs.max_args is None:
            if n < fs.min_args:
                raise self.error(f"wrong number of args for {name}: want at least {fs.min_args} got {n}")
        elif not fs.min_args <= n <= fs.max_args:
            want = fs.max_args if fs.min_args == fs.max_args else f"{fs.min_args} to {fs.max_args}"
            raise self.error(f"wrong number of args for {name}: want {want} got {n}")
        if fs.lazy:  # and, or: stop at the first argument that decides
            want_true = name == "or"
            v: Any = None
            for a in args:
                v = self.eval_arg(dot, a)
                if truth(v) == want_true:
                    return v
            if final is not _NOFINAL:
                v = final
            return v
        values = [self.eval_arg(dot, a) for a in args]
        if final is not _NOFINAL:
            values.append(final)
        self.node = node
        if fs.with_state:
            values.insert(0, self)
        try:
            return fs.fn(*values)
        except TemplateError:
            raise
        except (_Break, _Continue, RecursionError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever a function raises is the template's error, never a traceback
            self.node = node
            raise self.error(f"error calling {name}: {e}") from None

    def eval_arg(self, dot: Any, n: Node) -> Any:
        self.node = n
        if isinstance(n, DotNode):
            return dot
        if isinstance(n, NilNode):
            return None
        if isinstance(n, FieldNode):
            return self.eval_field_chain(dot, dot, n, n.idents, [n], _NOFINAL)
        if isinstance(n, VariableNode):
            return self.eval_variable(dot, n, [n], _NOFINAL)
        if isinstance(n, PipeNode):
            return self.eval_pipeline(dot, n)
        if isinstance(n, IdentifierNode):
            return self.eval_function(dot, n, n, [n], _NOFINAL)
        if isinstance(n, ChainNode):
            return self.eval_chain(dot, n, [n], _NOFINAL)
        if isinstance(n, BoolNode):
            return n.value
        if isinstance(n, NumberNode):
            return n.value
        if isinstance(n, StringNode):
            return n.text
        raise self.error(f"can't handle {n} as an argument")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# the built-in functions


def _arg(v: Any) -> Any:
    return None if v is NO_VALUE else v


def _basic(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return ""


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise FuncError("missing argument for comparison")
    a = _arg(a)
    for b in bs:
        b = _arg(b)
        ka, kb = _basic(a), _basic(b)
        if ka and kb:
            if ka != kb:
                raise FuncError("incompatible types for comparison")
            if a == b:
                return True
        elif a is None or b is None:
            if a is b:
                return True
        elif isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
            raise FuncError(f"non-comparable type {value_string(a)}: {type_name(a)}")
        elif ka or kb:
            raise FuncError("incompatible types for comparison")
        elif a == b:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _lt(a: Any, b: Any) -> bool:
    a, b = _arg(a), _arg(b)
    ka, kb = _basic(a), _basic(b)
    if not ka or not kb or ka == "bool" or kb == "bool":
        raise FuncError("invalid type for comparison")
    if ka != kb:
        raise FuncError("incompatible types for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _not(a: Any) -> bool:
    return not truth(a)


def _len(v: Any) -> int:
    v = _arg(v)
    if v is None:
        raise FuncError("len of nil pointer")
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, (list, tuple, Mapping, bytes)):
        return len(v)
    raise FuncError(f"len of type {type_name(v)}")


def _index_one(item: Any, idx: Any) -> Any:
    if item is None or item is NO_VALUE:
        raise FuncError("index of untyped nil")
    if isinstance(item, Mapping):
        try:
            return item[idx]
        except KeyError:
            return NO_VALUE
        except TypeError:
            raise FuncError(f"value has type {type_name(idx)}; should be string") from None
    if isinstance(item, (list, tuple, str)):
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise FuncError(f"cannot index slice/array with type {type_name(idx)}")
        seq: Any = item.encode() if isinstance(item, str) else item
        if idx < 0 or idx >= len(seq):
            raise FuncError(f"index out of range: {idx}")
        return seq[idx]
    raise FuncError(f"can't index item of type {type_name(item)}")


def _index(item: Any, *indexes: Any) -> Any:
    for i in indexes:
        item = _index_one(item, i)
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    item = _arg(item)
    if item is None:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    if not isinstance(item, (str, list, tuple)):
        raise FuncError(f"can't slice item of type {type_name(item)}")
    if isinstance(item, str) and len(indexes) == 3:
        raise FuncError("cannot 3-index slice a string")
    idx = []
    for i in indexes:
        if not isinstance(i, int) or isinstance(i, bool):
            raise FuncError(f"cannot index slice/array with type {type_name(i)}")
        idx.append(i)
    n = len(item)
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else n
    for i in idx:
        if i < 0 or i > n:
            raise FuncError(f"index out of range: {i}")
    if lo > hi:
        raise FuncError(f"invalid slice index: {lo} > {hi}")
    return item[lo:hi]


def _call(fn: Any, *args: Any) -> Any:
    if not callable(fn):
        raise FuncError(f"non-function {value_string(fn)} of type {type_name(fn)}")
    return fn(*args)


def _eval_args(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return gofmt.sprint(list(args))


def _printf(fmt: str, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise FuncError(f"wrong type for value; expected string; got {type_name(fmt)}")
    return gofmt.sprintf(fmt, [_arg(a) for a in args])


def _and(*args: Any) -> Any:  # never called: evaluated lazily by the executor
    raise AssertionError


def _execute_template(state: _State, name: Any, *data: Any) -> str:
    """consul-template's executeTemplate: a defined template's output, as a string."""
    if not isinstance(name, str):
        raise FuncError(f"wrong type for value; expected string; got {type_name(name)}")
    if len(data) > 1:
        raise FuncError(f"executeTemplate: wrong number of arguments, expected 1 or 2, but got {len(data) + 1}")
    body = state.tmpl.defines.get(name)
    if body is None:
        raise FuncError(f"template: no template {gofmt.go_quote(name)} associated with template "
                        f"{gofmt.go_quote(state.tmpl.name)}")
    if state.depth >= MAX_DEPTH:
        raise FuncError(f"exceeded maximum template depth ({MAX_DEPTH})")
    new_dot = data[0] if data and data[0] is not None else NO_VALUE
    out: list[str] = []
    inner = _State(state.tmpl, state.funcs, out, state.missing_error)
    inner.vars, inner.tname, inner.depth = [("$", new_dot)], name, state.depth + 1
    inner.walk(new_dot, body)
    return "".join(out)


BUILTINS: dict[str, FuncSpec] = {
    "and": FuncSpec(_and, 1, None, lazy=True),
    "or": FuncSpec(_and, 1, None, lazy=True),
    "not": spec(_not),
    "len": spec(_len),
    "index": spec(_index),
    "slice": spec(_slice),
    "call": spec(_call),
    "eq": spec(_eq),
    "ne": spec(_ne),
    "lt": spec(_lt),
    "le": spec(_le),
    "gt": spec(_gt),
    "ge": spec(_ge),
    "print": spec(lambda *a: gofmt.sprint([_arg(x) for x in a])),
    "println": spec(lambda *a: gofmt.sprintln([_arg(x) for x in a])),
    "printf": spec(_printf),
    "html": spec(lambda *a: gofmt.html_escape(_eval_args(a))),
    "js": spec(lambda *a: gofmt.js_escape(_eval_args(a))),
    "urlquery": spec(lambda *a: gofmt.query_escape(_eval_args(a))),
    "executeTemplate": FuncSpec(_execute_template, 1, None, with_state=True),  # consul-template's
}
