"""ACLs in Nomad's shape: the policy language, compiled rights, and who a request is.

A policy is HCL (or JSON) with Nomad's rules -- `namespace "<name|glob>" { policy, capabilities }`,
`node`, `agent`, `operator` -- and Consul's named rules -- `service`, `service_prefix`,
`intention`, `intention_prefix`, `session`, `session_prefix` (`policy = "read|write|deny"`) and
`key`, `key_prefix` (also `"list"`: the key names, not their values). Rules of several policies
are united; `deny` wins; an exact name beats a glob or prefix (among globs the closest one wins,
among prefixes the longest). For KV and sessions, `operator` is the rule of every key and node
no key or session rule names (the only rule they had before these).

An identity is resolved from a secret by one function (`ACLResolver.resolve`), which asks its
resolvers in turn: ACL tokens (by the sha256 of the secret), node secrets (a client agent's
node SecretID: the rights of a node agent), and workload identities (a `WorkloadVerifier` turns
a signed token into `WorkloadClaims`: the rights of one allocation's services).
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from yurt.errors import InvalidInput, PermissionDenied
from yurt.structs import TOKEN_MANAGEMENT, ACLPolicy, ACLToken, Node, secret_hash

from .identity import WorkloadClaims

# --- the policy language ---------------------------------------------------------------------

NAMESPACE_CAPS = (
    "deny", "list-jobs", "parse-job", "read-job", "submit-job", "dispatch-job", "read-logs", "read-fs",
    "alloc-exec", "alloc-node-exec", "alloc-lifecycle", "sentinel-override", "csi-register-plugin",
    "csi-write-volume", "csi-read-volume", "csi-list-volume", "csi-mount-volume",
    "list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job",
    "submit-recommendation")
_READ = ("list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume", "read-job-scaling",
         "list-scaling-policies", "read-scaling-policy")
EXPAND: dict[str, tuple[str, ...]] = {
    "deny": ("deny",),
    "read": _READ,
    "write": _READ + ("scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs", "alloc-exec",
                      "alloc-lifecycle", "csi-mount-volume", "csi-write-volume", "submit-recommendation"),
    "scale": ("list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job", "read-job",
              "submit-recommendation"),
}
# node, agent, operator, service, intention, session, key ("list": key names only, Consul's)
LEVELS: dict[str, float] = {"deny": -1, "": 0, "list": 0.5, "read": 1, "write": 2}
NAME_RE = re.compile(r"^[a-zA-Z0-9-]{1,128}$")
_SIMPLE = ("node", "agent", "operator", "quota", "plugin")
_MESH = ("service", "service_prefix", "intention", "intention_prefix", "session", "session_prefix",
         "key", "key_prefix")


@dataclass
class Rules:
    """One policy's rules, or the union of several."""

    namespaces: dict[str, set[str]] = field(default_factory=dict)   # name or glob -> capabilities
    simple: dict[str, str] = field(default_factory=dict)            # node/agent/operator -> level
    mesh: dict[str, dict[str, str]] = field(default_factory=dict)   # service/key/... -> name -> level
    # namespace (or glob) -> variable path (or glob) -> capabilities (read, list, write, destroy, deny)
    variables: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def merge(self, other: Rules) -> None:
        for ns, caps in other.namespaces.items():
            self.namespaces.setdefault(ns, set()).update(caps)
        for ns, paths in other.variables.items():
            mine_paths = self.variables.setdefault(ns, {})
            for path, vcaps in paths.items():
                mine_paths.setdefault(path, set()).update(vcaps)
        for k, lvl in other.simple.items():
            self.simple[k] = _union(self.simple.get(k, ""), lvl)
        for kind, names in other.mesh.items():
            mine = self.mesh.setdefault(kind, {})
            for name, lvl in names.items():
                mine[name] = _union(mine.get(name, ""), lvl)


def _union(a: str, b: str) -> str:
    if "deny" in (a, b):
        return "deny"
    return a if LEVELS[a] >= LEVELS[b] else b


def _line_of(text: str, *needles: str) -> int:
    """The line of the last of `needles` found in order (best effort), 1-based; 0 if not found."""
    lines = text.splitlines()
    start, found = 0, 0
    for needle in needles:
        for i in range(start, len(lines)):
            if needle in lines[i]:
                start, found = i, i + 1
                break
    return found


def _bad(policy: str, text: str, where: list[str], message: str) -> InvalidInput:
    needles = [w.split(" ")[0] if '"' not in w else w for w in where]
    line = _line_of(text, *needles)
    at = f" (line {line})" if line else ""
    return InvalidInput(f'ACL policy "{policy}": {" > ".join(where)}{at}: {message}')


def _unquote(v: Any) -> Any:
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [_unquote(x) for x in v]
    return v


def _blocks(value: Any) -> list[tuple[str | None, dict[str, Any]]]:
    """(label, body) pairs of a block type as python-hcl2 or JSON gives them."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            continue
        body = {k: v for k, v in item.items() if not k.startswith("__")}
        if item.get("__is_block__") or "policy" in body or "capabilities" in body or not body:
            out.append((None, body))
            continue
        for label, inner in body.items():
            for b in inner if isinstance(inner, list) else [inner]:
                out.append((_unquote(label), {k: v for k, v in (b or {}).items() if not k.startswith("__")}))
    return out


def parse_rules(policy: str, text: str) -> Rules:
    """Parse a policy's rules (HCL or JSON). Raises InvalidInput naming the rule and its line."""
    if not text.strip():
        raise InvalidInput(f'ACL policy "{policy}" has no rules: give it at least one rule, e.g. '
                           'namespace "default" { policy = "read" }')
    raw: Any
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f'ACL policy "{policy}": line {e.lineno}, column {e.colno}: '
                               f'invalid JSON: {e.msg}') from None
    else:
        import hcl2
        try:
            raw = hcl2.loads(text)
        except Exception as e:  # noqa: BLE001 - Lark's errors carry line and column
            line = getattr(e, "line", 0)
            col = getattr(e, "column", 0)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            where = f"line {line}, column {col}" if line and line > 0 else "syntax"
            raise InvalidInput(f'ACL policy "{policy}": {where}: not valid HCL: {first}') from None
    if not isinstance(raw, dict):
        raise InvalidInput(f'ACL policy "{policy}": the rules must be HCL blocks or a JSON object')
    rules = Rules()
    for kind, value in raw.items():
        if kind.startswith("__"):
            continue
        if kind == "namespace":
            for label, body in _blocks(value):
                _namespace(policy, text, rules, label or "", body)
        elif kind in _SIMPLE:
            for _label, body in _blocks(value):
                rules.simple[kind] = _union(rules.simple.get(kind, ""),
                                            _level(policy, text, [kind], body, kind))
        elif kind in _MESH:
            for label, body in _blocks(value):
                if label is None:
                    raise _bad(policy, text, [kind], f'needs a name: {kind} "<name>" {{ policy = "read" }}')
                lvl = _level(policy, text, [f'{kind} "{label}"'], body, kind)
                names = rules.mesh.setdefault(kind, {})
                names[label] = _union(names.get(label, ""), lvl)
        else:
            raise _bad(policy, text, [kind], "unknown rule; a policy takes namespace, node, agent, "
                       "operator, quota, plugin, service, service_prefix, intention, intention_prefix, "
                       "key, key_prefix, session, session_prefix")
    return rules


def _level(policy: str, text: str, where: list[str], body: dict[str, Any], kind: str) -> str:
    unknown = sorted(set(body) - {"policy", "capabilities"})
    if unknown:
        raise _bad(policy, text, where + [unknown[0]], 'unknown key; this rule takes "policy"')
    if "capabilities" in body and kind not in ("operator",):
        raise _bad(policy, text, where + ["capabilities"], 'unknown key; this rule takes "policy"')
    lvl = _unquote(body.get("policy", ""))
    allowed = ("deny", "read", "write", "list") if kind in ("plugin", "key", "key_prefix") \
        else ("deny", "read", "write")
    if lvl not in allowed:
        raise _bad(policy, text, where + ["policy"], f'"{lvl}" is not a policy; use one of {", ".join(allowed)}')
    return "read" if lvl == "list" and kind == "plugin" else str(lvl)


def _namespace(policy: str, text: str, rules: Rules, label: str, body: dict[str, Any]) -> None:
    where = [f'namespace "{label}"']
    if not re.fullmatch(r"[a-zA-Z0-9*-]{1,128}", label):
        raise _bad(policy, text, where, "a namespace rule's name is letters, digits, - and * globs")
    unknown = sorted(set(body) - {"policy", "capabilities", "variables"})
    if unknown:
        raise _bad(policy, text, where + [unknown[0]], 'unknown key; a namespace rule takes "policy", '
                   '"capabilities" and "variables"')
    caps: set[str] = set()
    if "policy" in body:
        lvl = _unquote(body["policy"])
        if lvl not in EXPAND:
            raise _bad(policy, text, where + ["policy"],
                       f'"{lvl}" is not a policy; use one of deny, read, write, scale')
        caps.update(EXPAND[lvl])
    for cap in _unquote(body.get("capabilities", [])) or []:
        if cap not in NAMESPACE_CAPS:
            raise _bad(policy, text, where + ["capabilities"],
                       f'"{cap}" is not a namespace capability; use one of {", ".join(NAMESPACE_CAPS)}')
        caps.add(cap)
    rules.namespaces.setdefault(label, set()).update(caps)
    if "variables" in body:
        _variables(policy, text, rules, label, body["variables"])


VARIABLE_CAPS = ("read", "list", "write", "destroy", "deny")


def _variables(policy: str, text: str, rules: Rules, ns: str, value: Any) -> None:
    """`variables { path "<path|glob>" { capabilities = [...] } }` in a namespace rule (Nomad's):
    read implies list; deny wins."""
    where = [f'namespace "{ns}"', "variables"]
    paths = rules.variables.setdefault(ns, {})
    found = False
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            raise _bad(policy, text, where, 'takes path blocks: variables { path "<path>" { capabilities = '
                       '["read"] } }')
        unknown = sorted(k for k in item if not k.startswith("__") and k != "path")
        if unknown:
            raise _bad(policy, text, where + [unknown[0]], 'unknown key; variables takes "path" blocks')
        for spec, body in _blocks(item.get("path", [])):
            found = True
            if not spec:
                raise _bad(policy, text, where + ["path"], 'needs a path: path "<path or glob>" { ... }')
            if spec.startswith("/"):
                raise _bad(policy, text, where + [f'path "{spec}"'], "a variable path cannot start with a "
                           "leading '/'")
            extra = sorted(set(body) - {"capabilities"})
            if extra:
                raise _bad(policy, text, where + [f'path "{spec}"', extra[0]],
                           'unknown key; a variables path takes "capabilities"')
            caps = set(_unquote(body.get("capabilities", [])) or [])
            for cap in caps:
                if cap not in VARIABLE_CAPS:
                    raise _bad(policy, text, where + [f'path "{spec}"', "capabilities"],
                               f'"{cap}" is not a variables capability; use one of {", ".join(VARIABLE_CAPS)}')
            if "deny" in caps:
                caps = {"deny"}
            elif "read" in caps:
                caps.add("list")
            paths.setdefault(spec, set()).update(caps)
    if not found:
        raise _bad(policy, text, where, f"no variable paths in namespace {ns}: give at least one "
                   'path "<path>" { capabilities = ["read"] }')


def _closest(patterns: Iterable[str], name: str) -> str | None:
    """The exact `name`, else the glob matching it with the fewest characters left to the `*`s
    (Nomad's closest matching glob)."""
    pats = list(patterns)
    if name in pats:
        return name
    best: tuple[int, str] | None = None
    for p in pats:
        if "*" in p and fnmatch.fnmatchcase(name, p):
            diff = len(name) - len(p) + p.count("*")
            if best is None or diff < best[0]:
                best = (diff, p)
    return best[1] if best else None


# --- rights ----------------------------------------------------------------------------------

class ACL:
    """What one identity may do. `management` passes every check."""

    def __init__(self, rules: Rules | None = None, *, management: bool = False) -> None:
        self.rules = rules or Rules()
        self.management = management

    def namespace_caps(self, ns: str) -> set[str]:
        nss = self.rules.namespaces
        if ns in nss:
            return nss[ns]
        best: tuple[int, str] | None = None
        for pattern in nss:
            if "*" in pattern and fnmatch.fnmatchcase(ns, pattern):
                extra = len(ns) - len(pattern.replace("*", ""))
                if best is None or extra < best[0]:
                    best = (extra, pattern)
        return nss[best[1]] if best else set()

    def allow_namespace(self, ns: str, cap: str) -> bool:
        if self.management:
            return True
        if ns == "*":  # any namespace: list routes filter by what the caller may see
            return any(cap in c and "deny" not in c for c in self.rules.namespaces.values())
        caps = self.namespace_caps(ns)
        return "deny" not in caps and cap in caps

    def allow_variable(self, ns: str, path: str, cap: str) -> bool:
        """Variable capability `cap` (read, list, write, destroy) on `path` in namespace `ns`:
        the exact path rule, else the closest glob, in the closest namespace rule."""
        if self.management:
            return True
        ns_key = _closest(self.rules.variables, ns)
        if ns_key is None:
            return False
        paths = self.rules.variables[ns_key]
        path_key = _closest(paths, path)
        if path_key is None:
            return False
        caps = paths[path_key]
        return "deny" not in caps and cap in caps

    def may_search_variables(self, ns: str) -> bool:
        """Any variables rule for namespace `ns` (any namespace for "*")."""
        if self.management:
            return True
        if ns == "*":
            return any(self.rules.variables.values())
        key = _closest(self.rules.variables, ns)
        return key is not None and bool(self.rules.variables[key])
    def sees_namespace(self, ns: str) -> bool:
        """Nomad's AllowNamespace: some capability (not deny) in the namespace -- whether the
        namespace is listed and may be read."""
        if self.management:
            return True
        if ns == "*":   # some namespace
            return any(caps and "deny" not in caps for caps in self.rules.namespaces.values())
        caps = self.namespace_caps(ns)
        return bool(caps) and "deny" not in caps

    def allow(self, kind: str, level: str) -> bool:
        """node / agent / operator at `level` (read or write)."""
        if self.management:
            return True
        have = self.rules.simple.get(kind, "")
        return have != "deny" and LEVELS[have] >= LEVELS[level]

    def _named(self, kind: str, name: str) -> str | None:
        """The level of the exact `kind` rule for `name`, else of the longest `<kind>_prefix`
        rule it starts with; None when no rule matches."""
        have = self.rules.mesh.get(kind, {}).get(name)
        return have if have is not None else self._longest_prefix(kind, name)

    def _longest_prefix(self, kind: str, name: str) -> str | None:
        """The level of the longest `<kind>_prefix` rule `name` starts with; None if none does."""
        prefixes = self.rules.mesh.get(kind + "_prefix", {})
        best = max((p for p in prefixes if name.startswith(p)), key=len, default=None)
        return prefixes[best] if best is not None else None

    def _key_rules_under(self, prefix: str) -> list[str]:
        """The levels of the `key` and `key_prefix` rules named under `prefix`."""
        return [lvl for kind in ("key", "key_prefix") for name, lvl in self.rules.mesh.get(kind, {}).items()
                if name.startswith(prefix)]

    def allow_mesh(self, kind: str, name: str, level: str) -> bool:
        """service / intention `name` at `level`: exact rule, else the longest prefix rule."""
        if self.management:
            return True
        have = self._named(kind, name) or ""
        return have != "deny" and LEVELS[have] >= LEVELS[level]

    def allow_key(self, key: str, level: str) -> bool:
        """Consul KV: `level` (list, read, write) on `key` by its `key` rule, else the longest
        `key_prefix` rule, else `operator`. With `key`/`session`, `operator` is the fallback."""
        return self._allow_named("key", key, level)

    def allow_session(self, node: str, level: str) -> bool:
        """Consul sessions on node `node` (read, write): `session`, `session_prefix`, else `operator`."""
        return self._allow_named("session", node, level)

    def _allow_named(self, kind: str, name: str, level: str) -> bool:
        if self.management:
            return True
        have = self._named(kind, name)
        if have is None:
            have = self.rules.simple.get("operator", "")
        return have != "deny" and LEVELS[have] >= LEVELS[level]

    def may_see_under(self, prefix: str, level: str) -> bool:
        """Whether some key under `prefix` could be seen at `level` (list, read): the rule that
        would govern a key there is one named under `prefix`, or else the longest `key_prefix`
        rule `prefix` starts with (else `operator`). A list no key of which could be seen is
        refused before it waits for anything."""
        if self.management:
            return True
        if any(lvl != "deny" and LEVELS[lvl] >= LEVELS[level] for lvl in self._key_rules_under(prefix)):
            return True
        have = self._longest_prefix("key", prefix)
        if have is None:
            have = self.rules.simple.get("operator", "")
        return have != "deny" and LEVELS[have] >= LEVELS[level]

    def allow_key_tree(self, prefix: str) -> bool:
        """Write (delete) every key under `prefix` (Consul's KeyWritePrefix): write on the prefix
        itself and no rule for a key or prefix under it giving less."""
        if not self.allow_key(prefix, "write"):
            return False
        if self.management:
            return True
        return not any(lvl == "deny" or LEVELS[lvl] < LEVELS["write"] for lvl in self._key_rules_under(prefix))

    def may_use(self, kind: str, level: str) -> bool:
        """Some key (`kind` "key") or session node at `level`: the route's own check, before its
        handler checks each key or session (`allow_key`, `allow_session`) and filters lists."""
        if self.management or self.allow(kind="operator", level=level):
            return True
        return any(lvl != "deny" and LEVELS[lvl] >= LEVELS[level]
                   for k in (kind, kind + "_prefix") for lvl in self.rules.mesh.get(k, {}).values())


# --- identities ------------------------------------------------------------------------------

class WorkloadVerifier(Protocol):
    def verify(self, token: str) -> WorkloadClaims | None: ...


ANONYMOUS = "anonymous"


@dataclass
class Identity:
    """Who a request is: kind is anonymous, token, management, node or workload."""

    kind: str
    acl: ACL
    token: ACLToken | None = None
    node: Node | None = None
    workload: WorkloadClaims | None = None

    @property
    def management(self) -> bool:
        return self.acl.management

    @property
    def is_node(self) -> bool:
        return self.kind == "node"

    def allow_mesh(self, kind: str, name: str, level: str) -> bool:
        if self.workload is not None:
            # as Consul's service identities: write its own services, read every service (a
            # sidecar watches its upstreams' endpoints) and every intention
            if kind == "intention":
                return level == "read"
            return kind == "service" and (level == "read" or name in self.workload.services)
        return self.acl.allow_mesh(kind, name, level)


def node_rules() -> Rules:
    """A client agent's rights (its node SecretID as token)."""
    return Rules(namespaces={"*": {"read-job", "list-jobs"}}, simple={"node": "read"},
                 mesh={"service_prefix": {"": "write"}, "intention_prefix": {"": "read"}})


def anonymous_token() -> ACLToken:
    return ACLToken(accessor_id=ANONYMOUS, name="Anonymous Token", type="client", policies=[ANONYMOUS])


Resolver = Callable[[str], "Identity | None"]


class ACLStoreReads(Protocol):
    def acl_policy(self, name: str) -> ACLPolicy | None: ...
    def acl_token_by_hash(self, digest: str) -> ACLToken | None: ...
    def nodes(self) -> list[Node]: ...
    def table_index(self, table: str) -> int: ...


class ACLResolver:
    """Turns a secret into an `Identity`: token, node secret, workload identity, in that order;
    more resolvers can be added (`add`). No secret: the anonymous token. Unknown: 403."""

    def __init__(self, store: Any, verifier: WorkloadVerifier | None = None) -> None:
        self.store = store
        self.verifier = verifier
        self.resolvers: list[Resolver] = [self._token, self._node, self._workload]
        self._cache: dict[str, tuple[int, Rules]] = {}
        self._nodes: tuple[int, dict[str, Node]] = (-1, {})   # node secrets, at the nodes table's index

    def add(self, resolver: Resolver) -> None:
        self.resolvers.append(resolver)

    def rules_of(self, names: Iterable[str]) -> Rules:
        rules = Rules()
        for name in names:
            p = self.store.acl_policy(name)
            if p is None:
                continue   # a missing policy is ignored, as Nomad does
            cached = self._cache.get(name)
            if cached is None or cached[0] != p.modify_index:
                cached = (p.modify_index, parse_rules(name, p.rules))
                self._cache[name] = cached
            rules.merge(cached[1])
        return rules

    def resolve(self, secret: str | None) -> Identity:
        secret = (secret or "").strip()
        if not secret:
            return Identity(ANONYMOUS, ACL(self.rules_of([ANONYMOUS])), token=anonymous_token())
        for resolver in self.resolvers:
            ident = resolver(secret)
            if ident is not None:
                return ident
        raise PermissionDenied("Permission denied: ACL token not found")

    def _token(self, secret: str) -> Identity | None:
        tok: ACLToken | None = self.store.acl_token_by_hash(secret_hash(secret))
        if tok is None:
            return None
        if tok.expired(time.time_ns()):
            raise PermissionDenied("ACL token expired")
        if tok.type == TOKEN_MANAGEMENT:
            return Identity("management", ACL(management=True), token=tok)
        return Identity("token", ACL(self.rules_of(tok.policies)), token=tok)

    def _node(self, secret: str) -> Identity | None:
        index = self.store.table_index("nodes")
        if self._nodes[0] != index:
            self._nodes = (index, {n.secret_id: n for n in self.store.nodes() if n.secret_id})
        node = self._nodes[1].get(secret)
        return Identity("node", ACL(node_rules()), node=node) if node is not None else None

    def _workload(self, secret: str) -> Identity | None:
        if self.verifier is None:
            return None
        claims = self.verifier.verify(secret)
        if claims is None:
            return None
        return Identity("workload", ACL(), workload=claims)


def check_name(name: str, what: str = "ACL policy") -> None:
    if not NAME_RE.match(name or ""):
        raise InvalidInput(f'{what} name "{name}" is invalid: use 1-128 letters, digits and -')
