"""consul-template's function library: the data functions (over a ``Source``) and the helpers.

Each function keeps consul-template's name, argument order (made for pipes: ``{{ .x | split "," }}``)
and output format; see ``template/funcs.go`` of hashicorp/consul-template.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import tomli_w
import yaml

from . import gofmt
from .exec import FuncSpec, spec, truth
from .gofmt import NO_VALUE, FuncError, type_name, value_string
from yurt.errors import YurtError

from .source import (CARoot, CatalogNode, CatalogNodeInfo, CatalogSnippet, Dependency, HealthService, KeyPair, LeafCert,
                     NomadService, NomadServicesSnippet,
                     NomadVarItems, NomadVarMeta, ServiceTags, Source)

# ---------------------------------------------------------------------------------------------
# argument checks


def _str(v: Any, fn: str) -> str:
    if isinstance(v, str):
        return v
    stringer = getattr(type(v), "String", None)
    if stringer is not None:
        return str(stringer(v))
    raise FuncError(f"wrong type for value; expected string; got {type_name(v)}")


def _int(v: Any, fn: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise FuncError(f"wrong type for value; expected int; got {type_name(v)}")


def _list(v: Any, fn: str) -> list[Any]:
    if v is None or v is NO_VALUE:
        return []
    if isinstance(v, (list, tuple)):
        return list(v)
    raise FuncError(f"wrong type for value; expected slice; got {type_name(v)}")


# ---------------------------------------------------------------------------------------------
# data functions

_SERVICE_RE = re.compile(r"\A(?:(?P<tag>[\w=:.\-]+)\.)?(?P<name>[\w\-]+)(?:\?(?P<query>[^@~|]*))?"
                         r"(?:@(?P<dc>[\w.\-]+))?(?:~(?P<near>[\w.\-]+))?(?:\|(?P<filter>[\w,\s]+))?\Z")
_NOMAD_SERVICE_RE = re.compile(r"\A(?:(?P<tag>[\w=:.\-]+)\.)?(?P<name>[\w\-]+)(?:@(?P<ns>[\w\-]+))?"
                               r"(?:\.(?P<region>[\w\-]+))?\Z")
_HEALTH_FILTERS = ("any", "passing", "warning", "critical", "maintenance")


def _owner(name: str, kind: str) -> int:
    """A user or group name (or number) as its ID; -1 (unchanged) when empty."""
    if not name:
        return -1
    import grp
    import pwd
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise LookupError(f"unknown {kind} {name!r}") from None


class Scratch:
    """consul-template's ``scratch``: a render's key/value pad (``.Set``/``.Get``/``.MapSet``...)."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def Key(self, k: str) -> bool:
        return k in self._values

    def Get(self, k: str) -> Any:
        return self._values.get(k)

    def Set(self, k: str, v: Any) -> str:
        self._values[k] = v
        return ""

    def SetX(self, k: str, v: Any) -> str:
        self._values.setdefault(k, v)
        return ""

    def _map(self, k: str, fn: str) -> dict[str, Any]:
        m = self._values.setdefault(k, {})
        if not isinstance(m, dict):
            raise FuncError(f"scratch.{fn}: {k} is not a map")
        return m

    def MapSet(self, k: str, mk: str, v: Any) -> str:
        self._map(k, "MapSet")[mk] = v
        return ""

    def MapSetX(self, k: str, mk: str, v: Any) -> str:
        self._map(k, "MapSetX").setdefault(mk, v)
        return ""

    def MapValues(self, k: str) -> list[Any]:
        m = self._values.get(k)
        if m is None:
            return []
        if not isinstance(m, dict):
            raise FuncError(f"scratch.MapValues: {k} is not a map")
        return [m[mk] for mk in sorted(m)]


class Data:
    """The data functions of one render: they read ``source`` and note what they read and what was missing."""

    def __init__(self, source: Source, namespace: str = "", *, task_dir: str = "", file_sandbox: bool = False) -> None:
        self.source = source
        self.namespace = namespace
        self.task_dir = task_dir            # relative paths of ``file``/``writeToFile`` are relative to it
        self.file_sandbox = file_sandbox    # ``file``/``writeToFile`` only inside ``task_dir``
        self.deps: set[Dependency] = set()
        self.missing: set[Dependency] = set()
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._scratch = Scratch()

    def _ask(self, method: str, *args: Any) -> Any:
        """The source's answer, asked once per render for the same arguments (one consistent view)."""
        memo_key = (method, *args)
        try:
            return self._memo[memo_key]
        except KeyError:
            value = self._memo[memo_key] = getattr(self.source, method)(*args)
            return value

    def _use(self, kind: str, arg: str) -> Dependency:
        d = Dependency(kind, arg)
        self.deps.add(d)
        return d

    # environment
    def env(self, name: Any) -> str:
        name = _str(name, "env")
        self._use("env", name)
        return self._ask("env", name) or ""

    def envOrDefault(self, name: Any, default: Any) -> str:
        name = _str(name, "envOrDefault")
        self._use("env", name)
        v = self._ask("env", name)
        return v if v else _str(default, "envOrDefault")

    def mustEnv(self, name: Any) -> str:
        name = _str(name, "mustEnv")
        self._use("env", name)
        v = self._ask("env", name)
        if v is None:
            raise FuncError(f"mustEnv: environment variable {name!s} is not set")
        return v

    # KV
    def key(self, path: Any) -> str:
        path = _str(path, "key")
        if not path:
            return ""
        d = self._use("kv", path)
        v = self._ask("key", path)
        if v is None:
            self.missing.add(d)
            return ""
        return v

    def keyExists(self, path: Any) -> bool:
        path = _str(path, "keyExists")
        if not path:
            return False
        self._use("kv", path)
        return self._ask("key", path) is not None

    def keyOrDefault(self, path: Any, default: Any) -> str:
        path, default = _str(path, "keyOrDefault"), _str(default, "keyOrDefault")
        if not path:
            return default
        self._use("kv", path)
        v = self._ask("key", path)
        return v if v else default

    def _list(self, prefix: str) -> tuple[Dependency, list[KeyPair]]:
        prefix = prefix.lstrip("/")
        d = self._use("kv_list", prefix)
        pairs = []
        for p in self._ask("ls", prefix):
            key = p.Path[len(prefix):] if p.Path.startswith(prefix) else p.Path
            pairs.append(KeyPair(p.Path, key.lstrip("/"), p.Value, p.CreateIndex, p.ModifyIndex, p.LockIndex,
                                 p.Flags, p.Session))
        return d, pairs

    def ls(self, prefix: Any) -> list[KeyPair]:
        prefix = _str(prefix, "ls")
        if not prefix:
            return []
        _, pairs = self._list(prefix)
        return [p for p in pairs if p.Key and "/" not in p.Key]

    def safeLs(self, prefix: Any) -> list[KeyPair]:
        prefix = _str(prefix, "safeLs")
        if not prefix:
            return []
        d, pairs = self._list(prefix)
        result = [p for p in pairs if p.Key and "/" not in p.Key]
        if not result:
            self.missing.add(d)
        return result

    def tree(self, prefix: Any) -> list[KeyPair]:
        prefix = _str(prefix, "tree")
        if not prefix:
            return []
        _, pairs = self._list(prefix)
        return [p for p in pairs if p.Key.split("/")[-1] != ""]

    def safeTree(self, prefix: Any) -> list[KeyPair]:
        prefix = _str(prefix, "safeTree")
        if not prefix:
            return []
        d, pairs = self._list(prefix)
        result = [p for p in pairs if p.Key.split("/")[-1] != ""]
        if not result:
            self.missing.add(d)
        return result

    # Consul services
    def service(self, *args: Any) -> list[HealthService]:
        return self._health("service", "services", args)

    def connect(self, *args: Any) -> list[HealthService]:
        """Connect-capable instances (sidecars and native services) of a service: ``service``'s
        query syntax over Consul's /v1/health/connect."""
        return self._health("connect", "connect_services", args)

    def _health(self, func: str, source: str, args: tuple[Any, ...]) -> list[HealthService]:
        """``service``/``connect``: "[tag.]name[?query][@dc][~near]|filter,..." (filter: passing)."""
        if not args or args[0] == "":
            return []
        query = "|".join(_str(a, func) for a in args)
        m = _SERVICE_RE.match(query)
        if m is None:
            raise FuncError(f"health.{func}: invalid format: {gofmt.go_quote(query)}")
        filters = [f.strip() for f in (m["filter"] or "passing").split(",") if f.strip()]
        for f in filters:
            if f not in _HEALTH_FILTERS:
                raise FuncError(f"health.{func}: invalid filter: {gofmt.go_quote(f)} in {gofmt.go_quote(query)}")
        self._use(func, query)
        healthy_only = filters == ["passing"]
        found = self._ask(source, m["name"], m["tag"] or "", healthy_only)
        if "any" not in filters and not healthy_only:
            found = [s for s in found if s.Status in filters]
        return sorted(found, key=lambda s: (s.Node, s.ID))

    def node(self, *args: Any) -> CatalogNode | None:
        """A node (none named: the local one) and its services; nil when there is no such node."""
        name = "".join(_str(a, "node") for a in args).split("@")[0]
        self._use("node", name)
        found: CatalogNode | None = self._ask("node", name)
        return found

    def nodes(self, *args: Any) -> list[CatalogNodeInfo]:
        query = "".join(_str(a, "nodes") for a in args)
        self._use("nodes", query)
        return sorted(self._ask("nodes"), key=lambda n: n.Node)

    def caRoots(self) -> list[CARoot]:
        self._use("ca_roots", "")
        return list(self._ask("ca_roots"))

    def caLeaf(self, service: Any) -> LeafCert:
        service = _str(service, "caLeaf")
        self._use("ca_leaf", service)
        try:
            leaf: LeafCert = self._ask("ca_leaf", service)
        except YurtError as e:
            if e.status in (401, 403, 404):
                raise FuncError(f"caLeaf: {service}: {e}") from None
            raise
        return leaf

    def services(self, *args: Any) -> list[CatalogSnippet]:
        query = "".join(_str(a, "services") for a in args)
        self._use("catalog_services", query)
        return sorted(self._ask("catalog_services"), key=lambda s: s.Name)

    # Nomad services and variables
    def nomadService(self, *args: Any) -> list[NomadService]:
        if len(args) == 1:
            query = _str(args[0], "nomadService")
            count, hash_key = 0, ""
        elif len(args) == 3:
            if not isinstance(args[0], int) or isinstance(args[0], bool):
                raise FuncError("expected integer for <count> argument")
            if not isinstance(args[1], str):
                raise FuncError("expected string for <key> argument")
            count, hash_key, query = args[0], args[1], _str(args[2], "nomadService")
        else:
            raise FuncError("expected arguments <service> or <count> <key> <service>")
        m = _NOMAD_SERVICE_RE.match(query)
        if m is None:
            raise FuncError(f"nomad.service: invalid format: {gofmt.go_quote(query)}")
        self._use("nomad_service", query)
        found = sorted(self._ask("nomad_services", m["name"], m["tag"] or "", m["ns"] or self.namespace),
                       key=lambda s: s.Name)
        if count > 0:  # a stable subset: the instances with the highest hash of key and ID
            found.sort(key=lambda s: hashlib.sha256(f"{hash_key}/{s.ID}".encode()).digest(), reverse=True)
            found = found[:count]
        return found

    def nomadServices(self, *args: Any) -> list[NomadServicesSnippet]:
        ns = "".join(_str(a, "nomadServices") for a in args).lstrip("@") or self.namespace
        self._use("nomad_services", ns)
        return sorted(self._ask("nomad_service_list", ns), key=lambda s: s.Name)

    def _var_path(self, s: str) -> tuple[str, str]:
        path, _, ns = s.partition("@")
        return path.strip("/"), ns.split(".")[0] or self.namespace

    def nomadVar(self, path: Any) -> NomadVarItems:
        path = _str(path, "nomadVar")
        if not path:
            return NomadVarItems()
        p, ns = self._var_path(path)
        d = self._use("nomad_var", path)
        var = self._ask("nomad_var", p, ns)
        if var is None:
            self.missing.add(d)
            return NomadVarItems()
        return NomadVarItems.of(var)

    def nomadVarExists(self, path: Any) -> bool:
        path = _str(path, "nomadVarExists")
        if not path:
            return False
        p, ns = self._var_path(path)
        self._use("nomad_var", path)
        return self._ask("nomad_var", p, ns) is not None

    def nomadVarList(self, *args: Any) -> list[NomadVarMeta]:
        if len(args) > 1:
            raise FuncError("nomadVarList takes either a single \"prefix\" parameter or none for all available "
                            f"variables; got: {value_string(list(args))}")
        prefix = _str(args[0], "nomadVarList") if args else ""
        p, ns = self._var_path(prefix)
        self._use("nomad_var_list", prefix)
        return sorted(self._ask("nomad_var_list", p, ns), key=lambda v: v.Path)

    def nomadVarListSafe(self, *args: Any) -> list[NomadVarMeta]:
        result = self.nomadVarList(*args)
        if not result:
            self.missing.add(Dependency("nomad_var_list", _str(args[0], "nomadVarListSafe") if args else ""))
        return result

    def scratch(self) -> Scratch:
        """The render's scratch pad (one per template render, as consul-template's)."""
        return self._scratch

    # files on the node (Nomad: inside the task directory unless the client's template
    # { disable_file_sandbox = true })
    def _path(self, path: str, fn: str) -> str:
        full = os.path.join(self.task_dir, path) if self.task_dir else path
        if self.file_sandbox and self.task_dir:
            real, root = os.path.realpath(full), os.path.realpath(self.task_dir)
            if real != root and not real.startswith(root.rstrip("/") + "/"):
                raise FuncError(f"{fn}: '{path}' is outside of sandbox (the task directory; the agent's "
                                "client { template { disable_file_sandbox = true } } lifts it)")
        return full

    def file(self, path: Any) -> str:
        """The file's content; a file that does not exist yet is waited for, and a change renders again."""
        path = _str(path, "file").strip()
        if not path:
            return ""
        full = self._path(path, "file")
        d = self._use("file", full)
        try:
            with open(full, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            self.missing.add(d)
            return ""
        except OSError as e:
            raise FuncError(f"file: {path}: {e.strerror or e}") from None

    def writeToFile(self, path: Any, user: Any, group: Any, perms: Any, *args: Any) -> str:
        """consul-template's writeToFile: path, user, group, perms[, flags "append"/"newline"], content."""
        path, user, group, perms = (_str(path, "writeToFile"), _str(user, "writeToFile"), _str(group, "writeToFile"),
                                    _str(perms, "writeToFile"))
        if len(args) not in (1, 2):
            raise FuncError("writeToFile: expected <path> <user> <group> <perms> [<flags>] <content>")
        content = _str(args[-1], "writeToFile")
        flags = _str(args[0], "writeToFile") if len(args) == 2 else ""
        try:
            mode = int(perms, 8)
        except ValueError:
            raise FuncError(f"writeToFile: perms {gofmt.go_quote(perms)} is not an octal mode like \"0644\"") from None
        full = self._path(path, "writeToFile")
        if "newline" in flags:
            content += "\n"
        full = os.path.normpath(full)
        parent = os.path.dirname(full) or "."
        try:
            os.makedirs(parent, exist_ok=True)
            if os.path.islink(parent):   # as consul-template: no writes through symlinks
                raise FuncError("writeToFile: refusing to write through symlinked directory in path "
                                f"{gofmt.go_quote(path)}")
            if os.path.islink(full):
                raise FuncError(f"writeToFile: refusing to write to symlink {gofmt.go_quote(path)}")
            how = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if "append" in flags else os.O_TRUNC)
            fd = os.open(full, how, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
            os.chmod(full, mode)
            if user or group:
                os.chown(full, _owner(user, "user"), _owner(group, "group"))
        except (OSError, LookupError) as e:
            raise FuncError(f"writeToFile: {path}: {getattr(e, 'strerror', None) or e}") from None
        return ""


DATA_FUNCS = ("env", "envOrDefault", "mustEnv", "key", "keyExists", "keyOrDefault", "ls", "safeLs", "tree",
              "safeTree", "service", "connect", "services", "nomadService", "nomadServices", "nomadVar",
              "nomadVarExists", "nomadVarList", "nomadVarListSafe", "file", "writeToFile", "scratch", "node", "nodes",
              "caRoots", "caLeaf")
_DATA_SPECS = {name: spec(getattr(Data, name)) for name in DATA_FUNCS}


def data_funcs(data: Data) -> dict[str, FuncSpec]:
    """The data functions bound to one render's ``Data``."""
    out: dict[str, FuncSpec] = {}
    for name, s in _DATA_SPECS.items():  # the specs counted ``self``: one argument fewer
        hi = None if s.max_args is None else s.max_args - 1
        out[name] = FuncSpec(getattr(data, name), s.min_args - 1, hi)
    return out


# ---------------------------------------------------------------------------------------------
# helpers


def _pairs(v: Any, fn: str) -> list[KeyPair]:
    items = _list(v, fn)
    for p in items:
        if not isinstance(p, KeyPair):
            raise FuncError(f"wrong type for value; expected []*dependency.KeyPair; got {type_name(v)}")
    return items


def by_key(pairs: Any) -> dict[str, dict[str, KeyPair]]:
    m: dict[str, dict[str, KeyPair]] = {}
    for p in _pairs(pairs, "byKey"):
        top, _, key = p.Key.partition("/")
        if not key:
            continue
        m.setdefault(top, {})[key] = KeyPair(p.Path, key, p.Value, p.CreateIndex, p.ModifyIndex, p.LockIndex,
                                             p.Flags, p.Session)
    return m


def by_tag(items: Any) -> dict[str, list[Any]]:
    m: dict[str, list[Any]] = {}
    for s in _list(items, "byTag"):
        tags = getattr(s, "Tags", None)
        if tags is None:
            raise FuncError(f"byTag: wrong argument type {type_name(items)}")
        for t in tags:
            m.setdefault(t, []).append(s)
    return m


def by_port(items: Any) -> dict[int, list[Any]]:
    m: dict[int, list[Any]] = {}
    for s in _list(items, "byPort"):
        port = getattr(s, "Port", None)
        if port is None:
            raise FuncError(f"byPort: wrong argument type {type_name(items)}")
        m.setdefault(port, []).append(s)
    return m


def by_meta(meta: Any, items: Any) -> dict[str, list[Any]]:
    """Services grouped by ServiceMeta values: keys joined by "_", "key|int" padded as %05d."""
    def value_of(m: Mapping[str, str], key: str) -> str:
        real = key.removesuffix("|int")
        if m.get(real):
            return m[real]
        return "0" if key.endswith("|int") else f"_no_{real}_"

    metas = _str(meta, "byMeta").split(",")
    groups: dict[str, list[Any]] = {}
    for s in _list(items, "byMeta"):
        sm = getattr(s, "ServiceMeta", None) or {}
        parts = []
        for key in metas:
            value = value_of(sm, key)
            if key.endswith("|int"):
                if not re.fullmatch(r"[+-]?[0-9]+", value):
                    raise FuncError(f"cannot parse {value} as number : strconv.Atoi: parsing "
                                    f"{gofmt.go_quote(value)}: invalid syntax")
                value = f"{int(value):05d}"
            parts.append(re.sub(r"[^a-zA-Z0-9_-]", "_", value))
        groups.setdefault("_".join(parts), []).append(s)
    return groups


def _in(lst: Any, v: Any) -> bool:
    """consul-template's ``in``: an element of a list (same kind), or a substring of a string."""
    lst, v = (None if lst is NO_VALUE else lst), (None if v is NO_VALUE else v)
    if isinstance(lst, (list, tuple)):
        for e in lst:
            if isinstance(e, bool) or isinstance(v, bool):
                continue
            if isinstance(e, int) and isinstance(v, int):
                if e == v:
                    return True
            elif isinstance(e, float) and isinstance(v, float):
                if e == v:
                    return True
            elif isinstance(e, str) and isinstance(v, str) and e == v:
                return True
        return False
    if isinstance(lst, str) and isinstance(v, str):
        return v in lst
    return False


def _contains_some(ret_true: bool, invert: bool) -> Callable[[Any, Any], bool]:
    def f(v: Any, lst: Any) -> bool:
        for x in _list(v, "contains"):
            if _in(lst, x) != invert:
                return not ret_true
        return ret_true
    return f


def explode(pairs: Any) -> dict[str, Any]:
    m: dict[str, Any] = {}
    for p in _pairs(pairs, "explode"):
        _explode_into(m, p.Key, p.Value, p.Key, "explode")
    return m


def explode_map(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise FuncError(f"wrong type for value; expected map[string]interface {{}}; got {type_name(mapping)}")
    m: dict[str, Any] = {}
    for k in sorted(mapping):
        _explode_into(m, k, mapping[k], k, "explodeMap")
    return m


def _explode_into(m: dict[str, Any], k: str, v: Any, p: str, fn: str) -> None:
    while "/" in k:
        top, _, k = k.partition("/")
        nest = m.setdefault(top, {})
        if not isinstance(nest, dict):
            raise FuncError(f"{fn}: not a map: {gofmt.go_quote(p)}: {gofmt.go_quote(top)} already has value "
                            f"{gofmt.go_quote(value_string(nest))}")
        m = nest
    if k:
        m[k] = v


def indent(spaces: Any, s: Any) -> str:
    n = _int(spaces, "indent")
    if n < 0:
        raise FuncError("indent value must be a positive integer")
    prefix = " " * n
    out = []
    at_start = True
    for c in _str(s, "indent"):
        if at_start and c != "\n":
            out.append(prefix)
        out.append(c)
        at_start = c == "\n"
    return "".join(out)


def loop(*args: Any) -> list[int]:
    def to_int(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str):
            return parse_int(v)
        raise FuncError(f"loop: bad argument type: {type_name(v)}")
    if len(args) == 1:
        start, stop = 0, to_int(args[0])
    elif len(args) == 2:
        start, stop = to_int(args[0]), to_int(args[1])
    else:
        raise FuncError(f"loop: wrong number of arguments, expected 1 or 2, but got {len(args)}")
    return list(range(start, stop))


def join(sep: Any, items: Any) -> str:
    sep = _str(sep, "join")
    if isinstance(items, str):
        raise FuncError("wrong type for value; expected []string; got string")
    return sep.join(e if isinstance(e, str) else value_string(e, False) for e in _list(items, "join"))


def split(sep: Any, s: Any) -> list[str]:
    sep, s = _str(sep, "split"), _str(s, "split").strip()
    if not s:
        return []
    if not sep:
        return list(s)
    return s.split(sep)


def split_to_map(sep1: Any, sep2: Any, s: Any) -> dict[str, str]:
    sep1, sep2, s = _str(sep1, "splitToMap"), _str(sep2, "splitToMap"), _str(s, "splitToMap").strip()
    m: dict[str, str] = {}
    if not s:
        return m
    for part in s.split(sep1):
        k, found, v = part.partition(sep2)
        if found:
            m[k] = v
    return m


def _go_trim(s: str, cutset: str) -> str:
    return s.strip(cutset) if cutset else s


def parse_bool(s: Any) -> bool:
    s = _str(s, "parseBool")
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise FuncError(f"parseBool: strconv.ParseBool: parsing {gofmt.go_quote(s)}: invalid syntax")


def parse_int(s: Any) -> int:
    s = _str(s, "parseInt")
    if not re.fullmatch(r"[+-]?[0-9]+", s):
        raise FuncError(f"parseInt: strconv.ParseInt: parsing {gofmt.go_quote(s)}: invalid syntax")
    n = int(s)
    if not -(2 ** 63) <= n < 2 ** 63:
        raise FuncError(f"parseInt: strconv.ParseInt: parsing {gofmt.go_quote(s)}: value out of range")
    return n


def parse_uint(s: Any) -> int:
    s = _str(s, "parseUint")
    if not re.fullmatch(r"[0-9]+", s) or int(s) >= 2 ** 64:
        raise FuncError(f"parseUint: strconv.ParseUint: parsing {gofmt.go_quote(s)}: invalid syntax")
    return int(s)


def parse_float(s: Any) -> float:
    s = _str(s, "parseFloat")
    try:
        if not re.fullmatch(r"[+-]?(?:[0-9_]*\.?[0-9_]*(?:[eE][+-]?[0-9]+)?|[iI]nf(?:inity)?|NaN)", s) or not s:
            raise ValueError
        return float(s.replace("_", ""))
    except ValueError:
        raise FuncError(f"parseFloat: strconv.ParseFloat: parsing {gofmt.go_quote(s)}: invalid syntax") from None


def _plain(v: Any) -> Any:
    """A template value as plain data for the YAML/TOML encoders (dataclasses as their fields)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not f.name.startswith("_")}
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def to_yaml(v: Any) -> str:
    """consul-template's toYAML: a map as YAML (keys sorted), without the final newline."""
    if not isinstance(v, Mapping):
        raise FuncError(f"toYAML: expected a map, got {type_name(v)}")
    text: str = yaml.safe_dump(_plain(v), default_flow_style=False, sort_keys=True, allow_unicode=True)
    return text.strip()


def parse_yaml(s: Any) -> Any:
    s = _str(s, "parseYAML")
    if not s:
        return {}
    try:
        return yaml.safe_load(s)
    except yaml.YAMLError as e:
        raise FuncError(f"parseYAML: {e}") from None


def to_toml(v: Any) -> str:
    """consul-template's toTOML: a map as TOML, without the final newline."""
    if not isinstance(v, Mapping):
        raise FuncError(f"toTOML: expected a map, got {type_name(v)}")
    try:
        text = tomli_w.dumps(_plain(v))
    except (TypeError, ValueError) as e:
        raise FuncError(f"toTOML: {e}") from None
    return text.strip()


def parse_json(s: Any) -> Any:
    s = _str(s, "parseJSON")
    try:
        return json.loads(s, parse_int=float)
    except ValueError as e:
        raise FuncError(f"parseJSON: {e}") from None


def _go_replacement(template: str) -> Callable[[re.Match[str]], str]:
    """Go's regexp Expand: $1, ${1}, $name, ${name}, $$."""
    def expand(m: re.Match[str]) -> str:
        out: list[str] = []
        i = 0
        while i < len(template):
            c = template[i]
            if c != "$" or i + 1 >= len(template):
                out.append(c)
                i += 1
                continue
            if template[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if template[i + 1] == "{":
                close = template.find("}", i)
                name = template[i + 2:close] if close > 0 else ""
                end = close + 1
            else:
                mm = re.match(r"\w+", template[i + 1:])
                name = mm.group(0) if mm else ""
                end = i + 1 + len(name)
            if not name:
                out.append(c)
                i += 1
                continue
            try:
                group = m.group(int(name)) if name.isdigit() else m.group(name)
            except (IndexError, re.error):
                group = ""
            out.append(group or "")
            i = end
        return "".join(out)
    return expand



def _compile(pattern: str, fn: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise FuncError(f"error parsing regexp: {e}: `{pattern}`") from None


def regex_replace_all(pattern: Any, repl: Any, s: Any) -> str:
    rx = _compile(_str(pattern, "regexReplaceAll"), "regexReplaceAll")
    return rx.sub(_go_replacement(_str(repl, "regexReplaceAll")), _str(s, "regexReplaceAll"))


def regex_match(pattern: Any, s: Any) -> bool:
    return _compile(_str(pattern, "regexMatch"), "regexMatch").search(_str(s, "regexMatch")) is not None


def to_title(s: Any) -> str:
    out = []
    prev_letter = False
    for c in _str(s, "toTitle"):
        out.append(c.upper() if not prev_letter and c.isalpha() else c)
        prev_letter = c.isalnum() or c in "'\u2019"
    return "".join(out)


_GO_LAYOUT = [("January", "%B"), ("Jan", "%b"), ("Monday", "%A"), ("Mon", "%a"), ("2006", "%Y"), ("Z07:00", "Z07:00"),
              ("-07:00", "-07:00"), ("-0700", "%z"), ("MST", "%Z"), ("01", "%m"), ("02", "%d"), ("_2", "%e"),
              ("15", "%H"), ("03", "%I"), ("04", "%M"), ("05", "%S"), ("06", "%y"), ("PM", "%p"),
              (".000000000", ".%N9"), (".000000", ".%f"), (".000", ".%N3"), ("1", "%-m"), ("2", "%-d"),
              ("3", "%-I"), ("4", "%-M"), ("5", "%-S")]


def go_time_format(t: datetime.datetime, layout: str) -> str:
    """time.Format with Go's reference layout (Mon Jan 2 15:04:05 MST 2006)."""
    out: list[str] = []
    i = 0
    while i < len(layout):
        for tok, _ in _GO_LAYOUT:
            if layout.startswith(tok, i):
                out.append(_time_piece(t, tok))
                i += len(tok)
                break
        else:
            out.append(layout[i])
            i += 1
    return "".join(out)


def _time_piece(t: datetime.datetime, tok: str) -> str:
    offset = t.utcoffset() or datetime.timedelta(0)
    mins = int(offset.total_seconds()) // 60
    sign = "-" if mins < 0 else "+"
    hh, mm = divmod(abs(mins), 60)
    pieces: dict[str, Callable[[], str]] = {
        "January": lambda: t.strftime("%B"), "Jan": lambda: t.strftime("%b"),
        "Monday": lambda: t.strftime("%A"), "Mon": lambda: t.strftime("%a"),
        "2006": lambda: f"{t.year:04d}", "06": lambda: f"{t.year % 100:02d}",
        "Z07:00": lambda: "Z" if mins == 0 else f"{sign}{hh:02d}:{mm:02d}",
        "-07:00": lambda: f"{sign}{hh:02d}:{mm:02d}", "-0700": lambda: f"{sign}{hh:02d}{mm:02d}",
        "MST": lambda: t.tzname() or "UTC",
        "01": lambda: f"{t.month:02d}", "1": lambda: str(t.month),
        "02": lambda: f"{t.day:02d}", "2": lambda: str(t.day), "_2": lambda: f"{t.day:2d}",
        "15": lambda: f"{t.hour:02d}",
        "03": lambda: f"{(t.hour % 12) or 12:02d}", "3": lambda: str((t.hour % 12) or 12),
        "04": lambda: f"{t.minute:02d}", "4": lambda: str(t.minute),
        "05": lambda: f"{t.second:02d}", "5": lambda: str(t.second),
        "PM": lambda: "PM" if t.hour >= 12 else "AM",
        ".000": lambda: f".{t.microsecond // 1000:03d}", ".000000": lambda: f".{t.microsecond:06d}",
        ".000000000": lambda: f".{t.microsecond:06d}000",
    }
    return pieces[tok]()


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


NOW: Callable[[], datetime.datetime] = _utcnow  # tests replace it


def timestamp(*args: Any) -> str:
    now = NOW()
    if not args:
        return go_time_format(now, "2006-01-02T15:04:05Z07:00")
    if len(args) == 1:
        layout = _str(args[0], "timestamp")
        if layout == "unix":
            return str(int(now.timestamp()))
        return go_time_format(now, layout)
    raise FuncError(f"timestamp: wrong number of arguments, expected 0 or 1, but got {len(args)}")


def _b64decode(s: Any, urlsafe: bool, fn: str) -> str:
    try:
        raw = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(_str(s, fn).encode())
        return raw.decode(errors="replace")
    except (binascii.Error, ValueError) as e:
        raise FuncError(f"{fn}: illegal base64 data: {e}") from None


# arithmetic, with consul-template's reversed operands (``{{ 5 | subtract 2 }}`` is 3)


def _num(v: Any, fn: str) -> int | float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FuncError(f"{fn}: unknown type for {gofmt.go_quote(value_string(v, False))} ({type_name(v)})")
    return v


def _arith(fn: str, op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def f(b: Any, a: Any) -> Any:
        return op(_num(a, fn), _num(b, fn))
    f.__name__ = fn
    return f


def _divide(a: Any, b: Any) -> Any:
    if b == 0:
        raise FuncError("divide: division by 0")
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a < 0) == (b < 0) else -q
    return a / b


def _modulo(a: Any, b: Any) -> Any:
    if not isinstance(a, int) or not isinstance(b, int):
        raise FuncError(f"modulo: unknown type for {gofmt.go_quote(value_string(a, False))} ({type_name(a)})")
    if b == 0:
        raise FuncError("modulo: division by 0")
    r = abs(a) % abs(b)
    return r if a >= 0 else -r


# ---------------------------------------------------------------------------------------------
# sprig's helpers, under consul-template's sprig_ prefix (the commonly used part)


def _strval(v: Any) -> str:
    return v if isinstance(v, str) else value_string(None if v is NO_VALUE else v, False)


def _empty(v: Any) -> bool:
    return not truth(v)


def _sprig_default(default: Any, *given: Any) -> Any:
    if not given or _empty(given[0]):
        return default
    return given[0]


def _sprig_dict(*kv: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for i in range(0, len(kv), 2):
        d[_strval(kv[i])] = kv[i + 1] if i + 1 < len(kv) else ""
    return d


def _sprig_keys(*dicts: Any) -> list[str]:
    out: list[str] = []
    for d in dicts:
        out.extend(d.keys())
    return out


def _sprig_set(d: Any, key: Any, value: Any) -> Any:
    d[_strval(key)] = value
    return d


def _sprig_coalesce(*vs: Any) -> Any:
    for v in vs:
        if not _empty(v):
            return v
    return None


_SPRIG: dict[str, Callable[..., Any]] = {
    "trim": lambda s: _strval(s).strip(),
    "trimAll": lambda cut, s: _strval(s).strip(_strval(cut)),
    "trimPrefix": lambda p, s: _strval(s).removeprefix(_strval(p)),
    "trimSuffix": lambda p, s: _strval(s).removesuffix(_strval(p)),
    "upper": lambda s: _strval(s).upper(),
    "lower": lambda s: _strval(s).lower(),
    "title": lambda s: to_title(_strval(s)),
    "repeat": lambda n, s: _strval(s) * _int(n, "repeat"),
    "replace": lambda old, new, s: _strval(s).replace(_strval(old), _strval(new)),
    "contains": lambda sub, s: _strval(sub) in _strval(s),
    "hasPrefix": lambda p, s: _strval(s).startswith(_strval(p)),
    "hasSuffix": lambda p, s: _strval(s).endswith(_strval(p)),
    "quote": lambda *a: " ".join(gofmt.go_quote(_strval(x)) for x in a if x is not None),
    "squote": lambda *a: " ".join("'" + _strval(x) + "'" for x in a if x is not None),
    "cat": lambda *a: " ".join(_strval(x) for x in a if x is not None),
    "nospace": lambda s: re.sub(r"\s", "", _strval(s)),
    "indent": lambda n, s: "\n".join(" " * _int(n, "indent") + line for line in _strval(s).split("\n")),
    "nindent": lambda n, s: "\n" + "\n".join(" " * _int(n, "nindent") + line for line in _strval(s).split("\n")),
    "default": _sprig_default,
    "empty": _empty,
    "coalesce": _sprig_coalesce,
    "ternary": lambda t, f, cond: t if truth(cond) else f,
    "toString": _strval,
    "list": lambda *a: list(a),
    "dict": _sprig_dict,
    "get": lambda d, k: d.get(_strval(k), ""),
    "set": _sprig_set,
    "hasKey": lambda d, k: _strval(k) in d,
    "keys": _sprig_keys,
    "first": lambda lst: _list(lst, "first")[0] if _list(lst, "first") else None,
    "last": lambda lst: _list(lst, "last")[-1] if _list(lst, "last") else None,
    "has": lambda needle, lst: needle in _list(lst, "has"),
    "join": lambda sep, v: _strval(sep).join(_strval(x) for x in (v if isinstance(v, (list, tuple)) else [v])),
    "splitList": lambda sep, s: _strval(s).split(_strval(sep)),
    "b64enc": lambda s: base64.b64encode(_strval(s).encode()).decode(),
    "b64dec": lambda s: _b64decode(s, False, "b64dec"),
    "sha256sum": lambda s: hashlib.sha256(_strval(s).encode()).hexdigest(),
    "atoi": lambda s: int(s) if re.fullmatch(r"[+-]?\d+", _strval(s)) else 0,
    "int": lambda v: int(v) if isinstance(v, (int, float)) else (int(v) if re.fullmatch(r"[+-]?\d+", _strval(v))
                                                                 else 0),
    "add1": lambda v: _num(v, "add1") + 1,
    "until": lambda n: list(range(_int(n, "until"))),
    "substr": lambda start, end, s: _substr(_int(start, "substr"), _int(end, "substr"), _strval(s)),
    "trunc": lambda n, s: _trunc(_int(n, "trunc"), _strval(s)),
    "abbrev": lambda n, s: _strval(s) if len(_strval(s)) <= _int(n, "abbrev") else
    (_strval(s)[:max(_int(n, "abbrev") - 3, 0)] + "..." if _int(n, "abbrev") >= 4 else _strval(s)),
    "plural": lambda one, many, n: one if _int(n, "plural") == 1 else many,
    "uniq": lambda lst: [x for i, x in enumerate(_list(lst, "uniq")) if x not in _list(lst, "uniq")[:i]],
    "sortAlpha": lambda lst: sorted(_strval(x) for x in _list(lst, "sortAlpha")),
    "append": lambda lst, v: _list(lst, "append") + [v],
    "prepend": lambda lst, v: [v] + _list(lst, "prepend"),
    "rest": lambda lst: _list(lst, "rest")[1:],
    "initial": lambda lst: _list(lst, "initial")[:-1],
    "reverse": lambda lst: _list(lst, "reverse")[::-1],
    "compact": lambda lst: [x for x in _list(lst, "compact") if not _empty(x)],
    "without": lambda lst, *vs: [x for x in _list(lst, "without") if x not in vs],
    "max": lambda a, *more: max([_num(a, "max"), *(_num(x, "max") for x in more)]),
    "min": lambda a, *more: min([_num(a, "min"), *(_num(x, "min") for x in more)]),
    "add": lambda *ns: sum(int(_num(x, "add")) for x in ns),
    "sub": lambda a, b: int(_num(a, "sub")) - int(_num(b, "sub")),
    "mul": lambda *ns: _product([int(_num(x, "mul")) for x in ns]),
    "div": lambda a, b: _divide(int(_num(a, "div")), int(_num(b, "div"))),
    "mod": lambda a, b: _modulo(int(_num(a, "mod")), int(_num(b, "mod"))),
    "toJson": lambda v: gofmt.to_json(v),
    "toPrettyJson": lambda v: gofmt.to_json(v, "  "),
    "fromJson": lambda s: _from_json(_strval(s)),
    "regexMatch": lambda rx, s: _compile(_strval(rx), "regexMatch").search(_strval(s)) is not None,
    "regexFind": lambda rx, s: _regex_find(_strval(rx), _strval(s)),
    "regexFindAll": lambda rx, s, n: [m.group(0) for m in _compile(_strval(rx), "regexFindAll").finditer(_strval(s))]
    [:None if _int(n, "regexFindAll") < 0 else _int(n, "regexFindAll")],
    "regexReplaceAll": lambda rx, s, repl: _compile(_strval(rx), "regexReplaceAll").sub(_go_replacement(_strval(repl)),
                                                                                           _strval(s)),
    "regexSplit": lambda rx, s, n: _regex_split(_strval(rx), _strval(s), _int(n, "regexSplit")),
    "snakecase": lambda s: _case(_strval(s), "_"),
    "kebabcase": lambda s: _case(_strval(s), "-"),
    "semverCompare": lambda c, v: _semver_compare(_strval(c), _strval(v)),
}


def _regex_find(rx: str, s: str) -> str:
    m = _compile(rx, "regexFind").search(s)
    return m.group(0) if m else ""


def _case(s: str, sep: str) -> str:
    return re.sub(r"[-_ ]+", sep, re.sub(r"([a-z0-9])([A-Z])", r"\1" + sep + r"\2", s)).lower()


def _substr(start: int, end: int, s: str) -> str:
    if start < 0:
        return s[:end]
    if end < 0 or end > len(s):
        return s[start:]
    return s[start:end]


def _trunc(n: int, s: str) -> str:
    if n < 0:
        return s[max(len(s) + n, 0):]
    return s[:n]


def _product(ns: list[int]) -> int:
    out = 1
    for n in ns:
        out *= n
    return out


def _from_json(s: str) -> Any:
    try:
        return json.loads(s, parse_int=float)
    except ValueError:
        return {}


def _regex_split(rx: str, s: str, n: int) -> list[str]:
    if n == 0:
        return []
    parts = _compile(rx, "regexSplit").split(s, maxsplit=0 if n < 0 else n - 1)
    return parts


def _semver(v: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+].*)?", v.strip())
    if m is None:
        raise FuncError(f"invalid semantic version: {v}")
    return int(m[1]), int(m[2] or 0), int(m[3] or 0)


def _semver_compare(constraints: str, version: str) -> bool:
    """sprig's semverCompare for the common forms: "=", "!=", ">", ">=", "<", "<=", "~", "^", ","-joined (and)."""
    have = _semver(version)
    for c in constraints.split(","):
        c = c.strip()
        m = re.fullmatch(r"(>=|<=|!=|=|>|<|~|\^)?\s*(.+)", c)
        if m is None:
            raise FuncError(f"improper constraint: {c}")
        op, want = m[1] or "=", _semver(m[2])
        ok = {"=": have == want, "!=": have != want, ">": have > want, ">=": have >= want, "<": have < want,
              "<=": have <= want,
              "~": want <= have < (want[0], want[1] + 1, 0),
              "^": want <= have < ((want[0] + 1, 0, 0) if want[0] else (0, want[1] + 1, 0))}[op]
        if not ok:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# the table


def _pure(fns: Mapping[str, Callable[..., Any]]) -> dict[str, FuncSpec]:
    return {name: spec(fn) for name, fn in fns.items()}


HELPERS: dict[str, FuncSpec] = _pure({
    "base64Decode": lambda s: _b64decode(s, False, "base64Decode"),
    "base64Encode": lambda s: base64.b64encode(_str(s, "base64Encode").encode()).decode(),
    "base64URLDecode": lambda s: _b64decode(s, True, "base64URLDecode"),
    "base64URLEncode": lambda s: base64.urlsafe_b64encode(_str(s, "base64URLEncode").encode()).decode(),
    "byKey": by_key,
    "byMeta": by_meta,
    "byPort": by_port,
    "byTag": by_tag,
    "contains": lambda v, lst: _in(lst, v),
    "containsAll": _contains_some(True, True),
    "containsAny": _contains_some(False, False),
    "containsNone": _contains_some(True, False),
    "containsNotAll": _contains_some(False, True),
    "explode": explode,
    "explodeMap": explode_map,
    "in": _in,
    "indent": indent,
    "loop": loop,
    "join": join,
    "trim": lambda cutset, s: _go_trim(_str(s, "trim"), _str(cutset, "trim")),
    "trimPrefix": lambda p, s: _str(s, "trimPrefix").removeprefix(_str(p, "trimPrefix")),
    "trimSuffix": lambda p, s: _str(s, "trimSuffix").removesuffix(_str(p, "trimSuffix")),
    "trimSpace": lambda s: _str(s, "trimSpace").strip(),
    "parseBool": parse_bool,
    "parseFloat": parse_float,
    "parseInt": parse_int,
    "parseJSON": parse_json,
    "parseYAML": parse_yaml,
    "toYAML": to_yaml,
    "toTOML": to_toml,
    "parseUint": parse_uint,
    "regexMatch": regex_match,
    "regexReplaceAll": regex_replace_all,
    "replaceAll": lambda f, t, s: _str(s, "replaceAll").replace(_str(f, "replaceAll"), _str(t, "replaceAll")),
    "split": split,
    "splitToMap": split_to_map,
    "timestamp": timestamp,
    "toLower": lambda s: _str(s, "toLower").lower(),
    "toUpper": lambda s: _str(s, "toUpper").upper(),
    "toTitle": to_title,
    "toJSON": lambda v: gofmt.to_json(v),
    "toJSONPretty": lambda v: gofmt.to_json(v, "  "),
    "toUnescapedJSON": lambda v: gofmt.to_json(v, "", escape_html=False),
    "toUnescapedJSONPretty": lambda v: gofmt.to_json(v, "  ", escape_html=False),
    "add": _arith("add", lambda a, b: a + b),
    "subtract": _arith("subtract", lambda a, b: a - b),
    "multiply": _arith("multiply", lambda a, b: a * b),
    "divide": _arith("divide", _divide),
    "modulo": _arith("modulo", _modulo),
    "minimum": _arith("minimum", lambda a, b: a if a < b else b),
    "maximum": _arith("maximum", lambda a, b: a if a > b else b),
    "sha256Hex": lambda s: hashlib.sha256(_str(s, "sha256Hex").encode()).hexdigest(),
    "md5sum": lambda s: hashlib.md5(_str(s, "md5sum").encode(), usedforsecurity=False).hexdigest(),
    "hmacSHA256Hex": lambda msg, key: hmac.new(_str(key, "hmacSHA256Hex").encode(), _str(msg, "hmacSHA256Hex").encode(),
                                               hashlib.sha256).hexdigest(),
    **{"sprig_" + k: v for k, v in _SPRIG.items()},
})

# every function name a template may use (parsing checks names against it)
ALL_NAMES: frozenset[str] = frozenset(HELPERS) | frozenset(DATA_FUNCS)

__all__ = ["ALL_NAMES", "DATA_FUNCS", "HELPERS", "Data", "Scratch", "ServiceTags", "data_funcs", "go_time_format"]
