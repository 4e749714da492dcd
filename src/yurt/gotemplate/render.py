"""Parse once (cached), execute many: ``render`` for Nomad's templates, ``execute`` for plain data."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import library
from . import sockaddr as sockaddr_mod
from .exec import BUILTINS, FuncSpec, Template, spec
from .gofmt import FuncError
from .parse import TemplateError
from .parse import parse as parse_tree
from .source import Dependency, Source

_KNOWN = frozenset(BUILTINS) | library.ALL_NAMES | {"sockaddr"}
_CONSUL_FUNCS: dict[str, FuncSpec] = {**BUILTINS, **library.HELPERS,
                                      "sockaddr": FuncSpec(sockaddr_mod.sockaddr, 1, None)}


@dataclass(frozen=True)
class Rendered:
    """A render's output, what it read (``deps``) and what it read that does not exist yet (``missing``)."""

    text: str
    deps: frozenset[Dependency] = field(default_factory=frozenset)
    missing: frozenset[Dependency] = field(default_factory=frozenset)


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str, name: str, left: str, right: str, known: frozenset[str]) -> Template:
    return Template(parse_tree(text, name, known.__contains__, left, right))


def parse(text: str, *, name: str = "template", left_delim: str = "{{", right_delim: str = "}}",
          extra_funcs: frozenset[str] = frozenset()) -> Template:
    """A parsed template (cached by its text, name, delimiters); raises TemplateError."""
    try:
        return _parse_cached(text, name, left_delim or "{{", right_delim or "}}", _KNOWN | extra_funcs)
    except RecursionError:
        raise TemplateError(f"template: {name}: too deeply nested", name=name) from None


def render(text: str, source: Source, *, name: str = "template", left_delim: str = "{{", right_delim: str = "}}",
           missing_key_error: bool = False, namespace: str = "", task_dir: str = "", file_sandbox: bool = False,
           denied: frozenset[str] = frozenset()) -> Rendered:
    """Render a Nomad template: consul-template's functions over ``source``; dot is nil, as in Nomad.

    ``file``/``writeToFile`` paths are relative to ``task_dir`` (and kept inside it with
    ``file_sandbox``); a function in ``denied`` fails when called (the client's function_denylist)."""
    tmpl = parse(text, name=name, left_delim=left_delim, right_delim=right_delim)
    data = library.Data(source, namespace, task_dir=task_dir, file_sandbox=file_sandbox)
    funcs = {**_CONSUL_FUNCS, **library.data_funcs(data)}
    for fn in denied:
        if fn in funcs:
            funcs[fn] = FuncSpec(_denied(fn), 0, None)
    out = tmpl.execute(None, funcs, missing_key_error=missing_key_error)
    return Rendered(out, frozenset(data.deps), frozenset(data.missing))


def _denied(fn: str) -> Any:
    def call(*_: Any) -> Any:
        raise FuncError(f"function {fn!r} is disabled: the agent's client {{ template {{ function_denylist }} }} "
                        "lists it")
    return call


def execute(text: str, data: Any = None, *, name: str = "template", funcs: Mapping[str, Any] | None = None,
            left_delim: str = "{{", right_delim: str = "}}", missing_key_error: bool = False) -> str:
    """Execute a Go template over plain data with the built-ins and the helpers (and ``funcs``: callables)."""
    extra = {k: spec(v) for k, v in (funcs or {}).items()}
    tmpl = parse(text, name=name, left_delim=left_delim, right_delim=right_delim, extra_funcs=frozenset(extra))
    return tmpl.execute(data, {**_CONSUL_FUNCS, **extra}, missing_key_error=missing_key_error)
