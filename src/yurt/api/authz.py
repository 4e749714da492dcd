"""Who may call which route: every route's requirement in one table, checked app-wide.

`REQUIREMENTS` maps (method, path template) to a `Requirement`; `authorize`, a dependency of
every route, looks up the matched route and checks the caller's identity against it. A route
missing from the table is denied (fail closed) unless it is in `PUBLIC`. With ACLs disabled
(the default) everything is allowed.

An agent without a server (a client-only agent) has no ACL tables: it asks its server
(`/v1/internal/acl/check`, with the caller's token) whether the caller meets the route's
requirement, then answers or forwards the request (with its token) as usual. The agent's own
in-process callers use a secret only this process knows (`Agent.internal_token`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.requests import HTTPConnection

import httpx

from yurt.errors import PermissionDenied, Unavailable
from yurt.server.acl import ACL, Identity, node_rules

PUBLIC: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/v1/agent/health"),
    ("GET", "/v1/connect/ca/roots"),
    ("GET", "/v1/agent/connect/ca/roots"),
    ("GET", "/.well-known/jwks.json"),
    ("PUT", "/v1/acl/bootstrap"), ("POST", "/v1/acl/bootstrap"),
    ("GET", "/v1/acl/token/self"),
    ("GET", "/v1/status/leader"),
    ("GET", "/v1/metrics"),   # as Nomad's: a scraper has no token
})


@dataclass(frozen=True)
class Requirement:
    """kind: namespace (cap), namespace_any (some capability in the namespace `name_from`, or
    in any namespace without one), node/agent/operator (cap = read|write), kv (cap = list|write:
    some key at that level, or a client node's identity for reads; the route checks each key),
    session (cap = read|write, some node's sessions; the route checks each), service/intention (cap =
    read|write, the name from path or query parameter `name_from`, "*" if absent), management,
    node_identity (a client agent's node secret), any (any resolved identity), config_read
    (a config entry, the name "<kind>/<name>": operator:read, or service:read on the name for
    an ingress-gateway or terminating-gateway entry, as Consul's)."""

    kind: str
    cap: str = ""
    name_from: str = ""

    def describe(self, name: str) -> str:
        if self.kind == "namespace":
            return f'namespace "{name}" capability {self.cap}'
        if self.kind == "namespace_any":
            return "a capability in some namespace" if name == "*" else f'a capability in namespace "{name}"'
        if self.kind in ("service", "intention"):
            return f'{self.kind} "{name}" {self.cap}'
        if self.kind in ("node", "agent", "operator"):
            return f"{self.kind}:{self.cap}"
        if self.kind == "kv":
            if self.cap == "write":
                return "key write on some key (a key or key_prefix rule, or operator:write)"
            return "key list or read on some key (a key or key_prefix rule, or operator:read), or a client node"
        if self.kind == "session":
            return f"session {self.cap} on some node (a session or session_prefix rule, or operator:{self.cap})"
        if self.kind == "config_read":
            kind, _, entry = name.partition("/")
            return ("operator:read" + (f' (or service "{entry}" read, for its {kind} entry)'
                                       if kind in GATEWAY_KINDS else ""))
        if self.kind == "any":
            return "an ACL token"
        if self.kind in ("node_identity", "node_register"):
            return "a client node's identity (its node SecretID)"
        return "a management token"


def _r(kind: str, cap: str = "", name_from: str = "") -> Requirement:
    return Requirement(kind, cap, name_from)


NS = "namespace"
READ_JOB = _r(NS, "read-job")
SUBMIT = _r(NS, "submit-job")
MGMT = _r("management")
NODE_ID = _r("node_identity")

REQUIREMENTS: dict[tuple[str, str], Requirement] = {}
GATEWAY_KINDS = ("ingress-gateway", "terminating-gateway")


def _add(methods: str, path: str, req: Requirement) -> None:
    for m in methods.split():
        REQUIREMENTS[(m, path)] = req


# Nomad-shaped
_add("GET", "/v1/jobs", _r(NS, "list-jobs"))
_add("PUT POST", "/v1/jobs", SUBMIT)
_add("PUT POST", "/v1/jobs/parse", _r(NS, "parse-job"))
_add("PUT POST", "/v1/validate/job", _r(NS, "read-job"))
_add("GET", "/v1/job/{job_id}", READ_JOB)
_add("PUT POST DELETE", "/v1/job/{job_id}", SUBMIT)
_add("PUT POST", "/v1/job/{job_id}/plan", SUBMIT)
_add("PUT POST", "/v1/job/{job_id}/evaluate", SUBMIT)
_add("PUT POST", "/v1/job/{job_id}/periodic/force", SUBMIT)
_add("PUT POST", "/v1/job/{job_id}/dispatch", _r(NS, "dispatch-job"))
for sub in ("allocations", "evaluations", "versions", "summary", "deployment", "deployments"):
    _add("GET", f"/v1/job/{{job_id}}/{sub}", READ_JOB)
_add("PUT POST", "/v1/job/{job_id}/revert", SUBMIT)
_add("PUT POST", "/v1/job/{job_id}/stable", SUBMIT)
_add("GET", "/v1/job/{job_id}/scale", READ_JOB)
_add("PUT POST", "/v1/job/{job_id}/scale", SUBMIT)
_add("GET", "/v1/deployments", _r(NS, "list-jobs"))
_add("GET", "/v1/deployment/{deployment_id}", READ_JOB)
_add("GET", "/v1/deployment/allocations/{deployment_id}", READ_JOB)
for verb in ("promote", "fail", "pause", "allocation-health"):
    _add("PUT POST", f"/v1/deployment/{verb}/{{deployment_id}}", SUBMIT)
_add("GET", "/v1/allocations", READ_JOB)
_add("GET", "/v1/allocation/{alloc_id}", READ_JOB)
_add("PUT POST", "/v1/allocation/{alloc_id}/stop", _r(NS, "alloc-lifecycle"))
_add("GET", "/v1/evaluations", READ_JOB)
_add("GET", "/v1/evaluation/{eval_id}", READ_JOB)
_add("GET", "/v1/evaluation/{eval_id}/allocations", READ_JOB)
_add("GET", "/v1/nodes", _r("node", "read"))
_add("GET", "/v1/node/{node_id}", _r("node", "read"))
_add("GET", "/v1/node/{node_id}/allocations", _r("node", "read"))
_add("PUT POST", "/v1/node/{node_id}/drain", _r("node", "write"))
_add("PUT POST", "/v1/node/{node_id}/eligibility", _r("node", "write"))
_add("PUT POST", "/v1/node/{node_id}/purge", _r("node", "write"))
_add("GET", "/v1/client/fs/logs/{alloc_id}", _r(NS, "read-logs"))
_add("GET", "/v1/agent/self", _r("agent", "read"))
_add("GET", "/v1/agent/monitor", _r("agent", "read"))
# the event stream checks each event itself (api/events.py): read-job in its namespace, node:read
_add("GET", "/v1/event/stream", _r("check"))
_add("GET", "/v1/agent/members", _r("node", "read"))
_add("GET", "/v1/status/peers", _r("operator", "read"))
_add("GET", "/v1/regions", _r("agent", "read"))
# the client agent's routes to its server
_add("PUT", "/v1/internal/node/register", _r("node_register"))
_add("PUT", "/v1/internal/node/{node_id}/heartbeat", _r("node_identity", "", "node_id"))
_add("GET PUT", "/v1/internal/node/{node_id}/allocations", _r("node_identity", "", "node_id"))
_add("PUT", "/v1/internal/connect/ca/sign", NODE_ID)
# the route itself also checks that the allocation is placed on the node whose secret is given
_add("PUT", "/v1/internal/alloc/{alloc_id}/identity", NODE_ID)
_add("POST", "/v1/internal/acl/check", _r("check"))   # the route checks the requirement it is asked
# yurt mesh explain: intentions, the catalog; a node's probes with the caller's token (api/mesh.py)
_add("GET", "/v1/mesh/explain", _r("intention", "read", "destination"))
_add("POST", "/v1/internal/mesh/probe", _r("agent", "read"))
# the web UI (api/ui.py): each page checks the token from ?token=, its cookie or the headers itself
for p in ("/ui", "/ui/", "/ui/static/{name}", "/ui/login", "/ui/logout", "/ui/jobs", "/ui/job/{job_id}",
          "/ui/allocation/{alloc_id}", "/ui/nodes", "/ui/services", "/ui/{rest:path}"):
    _add("GET", p, _r("ui"))
# Consul-shaped
_add("PUT", "/v1/agent/service/register", _r("service", "write", "body:Name"))
_add("GET PUT", "/v1/agent/service/deregister/{service_id}", _r("service", "write", "service_id"))
_add("GET", "/v1/agent/services", _r("service", "read"))
_add("GET", "/v1/agent/service/{service_id}", _r("service", "read", "service_id"))
_add("GET", "/v1/agent/checks", _r("service", "read"))
_add("PUT", "/v1/agent/check/{verb}/{check_id:path}", _r("service", "write"))
_add("PUT", "/v1/agent/check/register", _r("service", "write"))
_add("PUT", "/v1/agent/service/maintenance/{service_id}", _r("service", "write"))
_add("GET", "/v1/catalog/datacenters", _r("service", "read"))
_add("GET", "/v1/agent/servers", _r("agent", "read"))
_add("PUT POST", "/v1/client/allocation/{alloc_id}/signal", _r(NS, "alloc-lifecycle"))
_add("PUT POST", "/v1/search", READ_JOB)
_add("PUT POST", "/v1/system/gc", MGMT)
# namespaces: the list shows (and a read answers) only namespaces the caller has some capability
# in (the list filters itself, api/namespaces.py); writes are for management tokens, as Nomad's
_add("GET", "/v1/namespaces", _r("namespace_any"))
_add("GET", "/v1/namespace/{name}", _r("namespace_any", "", "name"))
_add("PUT POST DELETE", "/v1/namespace/{name}", MGMT)
_add("PUT POST", "/v1/namespace", MGMT)
_add("GET", "/v1/client/allocation/{alloc_id}/stats", READ_JOB)
_add("GET", "/v1/client/allocation/{alloc_id}/exec", _r(NS, "alloc-exec"))   # a websocket (api/client_exec.py)
_add("GET", "/v1/client/stats", _r("node", "read"))
_add("PUT POST", "/v1/search/fuzzy", READ_JOB)
for _fs in ("ls", "stat", "cat", "readat", "stream"):
    _add("GET", f"/v1/client/fs/{_fs}/{{alloc_id}}", _r(NS, "read-fs"))
_add("PUT POST", "/v1/client/allocation/{alloc_id}/restart", _r(NS, "alloc-lifecycle"))
_add("GET PUT", "/v1/client/allocation/{alloc_id}/gc", SUBMIT)
# ephemeral_disk migrate: the new node's client downloads it (Nomad: node identity only)
_add("GET", "/v1/client/allocation/{alloc_id}/snapshot", NODE_ID)   # Nomad's: submit-job in its namespace
_add("GET PUT", "/v1/client/gc", _r("node", "write"))
_add("PUT", "/v1/agent/servers", _r("agent", "write"))
_add("POST", "/v1/agent/servers", _r("agent", "write"))
_add("PUT", "/v1/catalog/register", _r("service", "write"))
_add("PUT", "/v1/catalog/deregister", _r("service", "write"))
_add("GET", "/v1/catalog/nodes", _r("node", "read"))
_add("GET", "/v1/catalog/node/{name}", _r("node", "read"))
_add("GET", "/v1/health/node/{name}", _r("node", "read"))
_add("GET", "/v1/health/ingress/{name}", _r("service", "read"))
_add("GET", "/v1/catalog/gateway-services/{gateway}", _r("service", "read"))
_add("PUT", "/v1/agent/check/deregister/{check_id:path}", _r("service", "write"))
_add("GET", "/v1/catalog/services", _r("service", "read"))
for p in ("/v1/catalog/service/{name}", "/v1/catalog/connect/{name}", "/v1/health/service/{name}",
          "/v1/health/connect/{name}", "/v1/health/checks/{name}"):
    _add("GET", p, _r("service", "read", "name"))
_add("GET", "/v1/health/state/{state}", _r("service", "read"))
_add("GET", "/v1/connect/ca/configuration", _r("operator", "read"))
_add("PUT", "/v1/connect/ca/configuration", _r("operator", "write"))
_add("GET", "/v1/agent/connect/ca/leaf/{service}", _r("service", "write", "service"))
_add("GET", "/v1/agent/connect/virtual-ips", _r("service", "read"))   # a transparent proxy's map
_add("POST PUT", "/v1/agent/connect/authorize", _r("intention", "read", "body:Target"))
_add("GET", "/v1/connect/intentions", _r("intention", "read"))
_add("POST", "/v1/connect/intentions", _r("intention", "write", "body:DestinationName"))
_add("GET", "/v1/connect/intentions/exact", _r("intention", "read", "destination"))
_add("PUT DELETE", "/v1/connect/intentions/exact", _r("intention", "write", "destination"))
_add("GET", "/v1/connect/intentions/match", _r("intention", "read", "name"))
_add("GET", "/v1/connect/intentions/check", _r("intention", "read", "destination"))
_add("GET", "/v1/connect/intentions/{ix_id}", _r("intention", "read"))
_add("PUT DELETE", "/v1/connect/intentions/{ix_id}", _r("intention", "write"))
# Consul's KV and sessions (api/consul_kv.py): Consul's key, key_prefix, session and
# session_prefix rules, and operator for every key and node they do not name. The route asks for
# the right on some key or node; the handler checks each key (a tree delete: all of it) and
# session node, and filters what a list shows. A client node's identity reads every key: its
# template hook renders its allocations' templates (`{{ key }}`, `{{ ls }}`) as the node, as
# Nomad's client reads Consul KV with its own token.
_add("GET", "/v1/kv/{key:path}", _r("kv", "list"))
_add("PUT DELETE", "/v1/kv/{key:path}", _r("kv", "write"))
_add("PUT", "/v1/session/create", _r("session", "write"))
# Consul's config entries (api/consul_config.py): cluster-wide mesh configuration, operator read /
# write; a sidecar reads what it needs of them through the chain of its service (service read)
_add("PUT", "/v1/config", _r("operator", "write"))
_add("GET", "/v1/config/{kind}", _r("operator", "read"))
_add("GET", "/v1/config/{kind}/{name}", _r("config_read"))   # a gateway's own entry: service read, as Consul
_add("DELETE", "/v1/config/{kind}/{name}", _r("operator", "write"))
_add("GET", "/v1/agent/connect/chain/{service}", _r("service", "read", "service"))
_add("PUT", "/v1/session/destroy/{session_id}", _r("session", "write"))
_add("PUT", "/v1/session/renew/{session_id}", _r("session", "write"))
_add("GET", "/v1/session/info/{session_id}", _r("session", "read"))
_add("GET", "/v1/session/node/{node}", _r("session", "read"))
_add("GET", "/v1/session/list", _r("session", "read"))
# variables (api/variables.py): each route checks the variable's path itself (its namespace's
# variables { path } capabilities, or a workload identity's own job paths)
_add("GET", "/v1/vars", _r("check"))
_add("GET PUT POST DELETE", "/v1/var/{path:path}", _r("check"))
# ACLs: the routes check further themselves (management, or the token's own)
_add("GET", "/v1/acl/policies", _r("any"))
_add("GET", "/v1/acl/policy/{name}", _r("any"))
_add("PUT POST DELETE", "/v1/acl/policy/{name}", MGMT)
_add("GET", "/v1/acl/tokens", MGMT)
_add("PUT POST", "/v1/acl/token", MGMT)
_add("GET", "/v1/acl/token/{accessor}", _r("any"))
_add("PUT POST DELETE", "/v1/acl/token/{accessor}", MGMT)


def request_token(request: Request) -> str:
    """The caller's secret: X-Nomad-Token, X-Consul-Token, or Authorization: Bearer."""
    h = request.headers
    for name in ("x-nomad-token", "x-consul-token"):
        if h.get(name, "").strip():
            return h[name].strip()
    auth = h.get("authorization", "").strip()
    scheme, _, rest = auth.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip().split()[0]
    return ""


def acl_enabled(request: Request) -> bool:
    return bool(getattr(request.app.state.agent.config, "acl_enabled", False))


def identity(request: Request) -> Identity | None:
    """The caller's identity (resolved once per request), or None with ACLs disabled or on an
    agent without a server."""
    if not acl_enabled(request):
        return None
    if "yurt.identity" in request.scope:
        ident: Identity | None = request.scope["yurt.identity"]
        return ident
    own = getattr(request.app.state.agent, "internal_token", "")
    if own and request_token(request) == own:
        request.scope["yurt.identity"] = Identity("node", ACL(node_rules()))
        return request.scope["yurt.identity"]   # type: ignore[no-any-return]
    server = request.app.state.agent.server
    ident = server.acl.resolver.resolve(request_token(request)) if server is not None else None
    request.scope["yurt.identity"] = ident
    return ident


def _denied(what: str) -> PermissionDenied:
    return PermissionDenied(f"Permission denied: this needs {what}")


async def _name(request: Request, source: str) -> str:
    if source.startswith("body:"):
        try:
            body = await request.json()
        except ValueError:
            return "*"
        value = body.get(source[5:]) if isinstance(body, dict) else None
        return str(value) if value else "*"
    return _param_name(request, source)


def _param_name(request: Request, source: str) -> str:
    """The name a requirement checks, from a path parameter or the query ("*" for none)."""
    if not source:
        return "*"
    return str(request.path_params.get(source) or request.query_params.get(source) or "*")


def check(ident: Identity, req: Requirement, name: str) -> bool:
    if ident.management:
        return True
    if req.kind == "any":   # any identity but the anonymous one
        return ident.kind != "anonymous"
    if req.kind == "management":
        return False
    if req.kind in ("node_identity", "node_register"):   # a node speaks only for itself
        return ident.is_node and (ident.node is None or name in ("*", ident.node.id))
    if req.kind == "config_read":   # Consul: an ingress/terminating gateway entry is read with service:read
        kind, _, entry = name.partition("/")
        if kind in GATEWAY_KINDS and entry and ident.allow_mesh("service", entry, "read"):
            return True
        return ident.workload is None and ident.acl.allow("operator", "read")
    if ident.workload is not None:
        return req.kind in ("service", "intention") and ident.allow_mesh(req.kind, name, req.cap)
    if req.kind == "kv":   # some key: the handler checks each (api/consul_kv.py); client nodes read
        return (ident.is_node and req.cap != "write") or ident.acl.may_use("key", req.cap)
    if req.kind == "session":   # some node's sessions: the handler checks each
        return ident.acl.may_use("session", req.cap)
    if req.kind == "namespace":
        return ident.acl.allow_namespace(name, req.cap)
    if req.kind == "namespace_any":
        return ident.acl.sees_namespace(name)
    if req.kind in ("node", "agent", "operator"):
        return ident.acl.allow(req.kind, req.cap)
    if req.kind in ("service", "intention"):
        return ident.allow_mesh(req.kind, name, req.cap)
    return False


async def authorize(request: Request) -> None:
    """A dependency of every route (see `api.app`)."""
    if not acl_enabled(request):
        return
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    key = (request.method, path)
    if request.method == "HEAD":
        key = ("GET", path)
    if key in PUBLIC:
        return
    req = REQUIREMENTS.get(key)
    if req is not None and req.kind in ("check", "ui"):
        return
    if req is not None and req.kind == "node_register" and await _registers_itself(request):
        return
    if request.app.state.agent.server is None:
        own = request.app.state.agent.internal_token
        if not (own and request_token(request) == own):
            await _ask_server(request, key, req)
        return
    _decide(request, path, req, await _name_for(request, req) if req is not None else "")


def authorize_node_route(request: Request) -> None:
    """`authorize` for a route of a client agent's node (a `node_identity` requirement, named
    by a path parameter) on an agent with a server: nothing in it waits, so the hot routes call
    it without a coroutine (api/hot.py). The request's scope names the route matched."""
    if not acl_enabled(request):
        return
    path = request.scope["route"].path
    req = REQUIREMENTS[(request.method, path)]
    assert req.kind == "node_identity" and request.app.state.agent.server is not None
    _decide(request, path, req, _param_name(request, req.name_from))


def _decide(request: Request, path: str, req: Requirement | None, name: str) -> None:
    """The caller's identity against the route's requirement (on an agent with a server)."""
    ident = identity(request)
    assert ident is not None
    if req is None:   # fail closed: a route nobody declared is for management tokens only
        if ident.management:
            return
        raise _denied(f"a management token: {request.method} {path} declares no capability")
    if not check(ident, req, name):
        raise _denied(req.describe(name))


async def authorize_ws(ws: HTTPConnection, path: str) -> None:
    """`authorize` for a websocket route (a GET upgraded), called by the route itself."""
    if not acl_enabled(ws):   # type: ignore[arg-type]
        return
    key = ("GET", path)
    req = REQUIREMENTS[key]
    if ws.app.state.agent.server is None:
        own = ws.app.state.agent.internal_token
        if not (own and request_token(ws) == own):   # type: ignore[arg-type]
            await _ask_server(ws, key, req)   # type: ignore[arg-type]
        return
    ident = identity(ws)   # type: ignore[arg-type]
    assert ident is not None
    name = await _name_for(ws, req)   # type: ignore[arg-type]
    if not check(ident, req, name):
        raise _denied(req.describe(name))


_BY_ID = (("alloc_id", "alloc"), ("eval_id", "eval"), ("deployment_id", "deployment"))


def _object_namespace(request: Request) -> str:
    """The namespace of the allocation, evaluation or deployment a route names by ID ("" if it
    names none, or none is known here): a read of or an action on one is checked against its
    own namespace, as Nomad's, not against ?namespace=. A client-only agent knows the
    allocations it runs; the rest it forwards to its server, which checks again."""
    params = request.path_params
    agent = request.app.state.agent
    server = getattr(agent, "server", None)
    for key, kind in _BY_ID:
        oid = params.get(key)
        if not oid:
            continue
        if server is not None:
            obj = getattr(server.reads, kind)(oid)
        else:
            obj = agent.local_alloc(oid) if kind == "alloc" else None
        if obj is not None:
            return str(obj.namespace or "default")
    return ""


async def _name_for(request: Request, req: Requirement) -> str:
    if req.kind == "namespace":
        return _object_namespace(request) or request.query_params.get("namespace") or "default"
    if req.kind == "config_read":
        return f'{request.path_params.get("kind", "")}/{request.path_params.get("name", "")}'

    return await _name(request, req.name_from)


async def _ask_server(request: Request, key: tuple[str, str], req: Requirement | None) -> None:
    """A client-only agent: may the caller do this? Its server decides (403 if not)."""
    from .forward import HOP, TOKEN_HEADERS, server_address
    name = await _name_for(request, req) if req is not None else ""
    headers = {k: v for k, v in request.headers.items() if k.lower() in TOKEN_HEADERS}
    agent = request.app.state.agent
    try:   # with tls { }, as the agent's other calls to its server: trust ca_file, present cert_file
        async with httpx.AsyncClient(timeout=30, verify=getattr(agent, "tls_context", True)) as client:
            resp = await client.post(server_address(request).rstrip("/") + "/v1/internal/acl/check",
                                     json={"Method": key[0], "Path": key[1], "Name": name},
                                     headers={HOP: "1", **headers})
    except httpx.HTTPError as e:
        tls = getattr(agent, "tls", None)   # a TLS failure says which setting to fix
        raise Unavailable(f"cannot ask the server whether this request is allowed: "
                          f"{(tls.reason(e) if tls else None) or e}") from None
    if resp.status_code != 200:
        raise PermissionDenied(resp.text.strip() or "Permission denied") if resp.status_code == 403 \
            else Unavailable(f"the server could not check this request's token: {resp.text.strip()}")


def decide(request: Request, method: str, path: str, name: str) -> None:
    """The server's side of `_ask_server`: raises PermissionDenied unless the caller may."""
    ident = identity(request)
    if ident is None:
        return
    req = REQUIREMENTS.get((method, path))
    if req is None or req.kind in ("check", "node_register"):
        if ident.management:
            return
        raise _denied(f"a management token: {method} {path} declares no capability")
    if not check(ident, req, name or "*"):
        raise _denied(req.describe(name or "*"))


async def _registers_itself(request: Request) -> bool:
    """A client registering its node with the node's own SecretID as its token (the server
    refuses a SecretID that differs from the one the node registered with first)."""
    token = request_token(request)
    try:
        body = await request.json()
    except ValueError:
        return False
    node = body.get("Node", body) if isinstance(body, dict) else None
    return bool(token) and isinstance(node, dict) and node.get("SecretID") == token


def may(request: Request, namespace: str, cap: str) -> bool:
    """Whether the caller has `cap` in `namespace` (always, with ACLs off): list routes asked for
    every namespace (`?namespace=*`) show only what the caller may see."""
    ident = identity(request)
    return ident is None or check(ident, Requirement("namespace", cap), namespace)


def may_see_namespace(request: Request, namespace: str) -> bool:
    """Whether the caller has some capability in `namespace` (always, with ACLs off): the
    namespaces it may list and read (Nomad's AllowNamespace)."""
    ident = identity(request)
    if ident is None or ident.management:
        return True
    return ident.workload is None and ident.acl.sees_namespace(namespace)


def require_namespace(request: Request, namespace: str, cap: str) -> None:
    """A route's own check once it knows the namespace (a job's, from its body)."""
    ident = identity(request)
    if ident is not None and not check(ident, Requirement("namespace", cap), namespace):
        raise _denied(Requirement("namespace", cap).describe(namespace))
