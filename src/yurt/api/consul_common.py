"""What the Consul-shaped routes share: X-Consul-* headers on every answer (errors get them from
`errors.install`, as python-consul reads X-Consul-Index on a 404 too), blocking on the mesh
tables, and forwarding to the server when this agent is a client only."""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from yurt.server.reads import Reads

from .common import block
from .forward import READS, consistent, to_leader, to_server

CONSUL = "consul"   # the tag of the Consul-shaped routers



def agent_of(request: Request):
    return request.app.state.agent


def reads_of(request: Request) -> Reads:
    """The server's read layer, for a route that has made sure this agent is a server
    (`consul_route` forwards otherwise)."""
    reads: Reads = agent_of(request).server.reads
    return reads


def default_policy(request: Request) -> str:
    agent = agent_of(request)
    return getattr(agent.config, "default_intention_policy", "allow") or "allow"


def _index(request: Request, index: int | None) -> int:
    if index is None:
        server = agent_of(request).server
        index = server.reads.index() if server is not None else 1
    return max(int(index), 1)


def headers(request: Request, index: int | None = None) -> dict[str, str]:
    i = _index(request, index)
    return {"X-Consul-Index": str(i), "X-Nomad-Index": str(i), "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0", "X-Consul-Default-ACL-Policy": default_policy(request)}


def consul_router() -> APIRouter:
    """A router for Consul-shaped routes: its errors carry the X-Consul-* headers."""
    return APIRouter(tags=[CONSUL])


def is_consul_route(request: Request) -> bool:
    route = request.scope.get("route")
    return CONSUL in (getattr(route, "tags", None) or ())


def creply(request: Request, body: Any, index: int | None = None, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers=headers(request, index))


async def cblock(request: Request, tables: str | Iterable[str]) -> int:
    """Blocking query on one or more of the mesh tables ("services", "intentions", "ca")."""
    tables = tables if isinstance(tables, str) else tuple(tables)
    return await block(request, reads_of(request), tables)


def consul_route(fn: Callable | None = None, *, forward: bool = True) -> Callable:
    """On a client-only agent the request goes to the server, unless `forward=False` (the
    route answers for this agent itself)."""
    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
            server = agent_of(request).server
            if request.query_params.get("filter"):   # a malformed filter is a 400 before any wait
                from .consul_filter import compile_filter
                compile_filter(request.query_params["filter"])
            if not forward:
                await own_node(request)
            if forward and server is None:
                return await to_server(request)
            if forward and server.ha and not server.is_leader():
                if request.method not in READS:
                    return await to_leader(request)
                await consistent(request, server)
            return await f(request, *args, **kwargs)
        return wrapper
    return deco(fn) if fn is not None else deco


NODE_WAIT = 30.0   # seconds an agent route waits for its agent's node to be registered


async def own_node(request: Request) -> None:
    """An agent route answers for this agent's node: until its client has registered the node,
    the route waits (a service registered before would be filed under the node's name, and
    found by nobody who looks it up by node ID); past NODE_WAIT it answers 503, storing
    nothing."""
    import asyncio
    import time

    from yurt.errors import Unavailable
    client = getattr(agent_of(request), "client", None)
    if client is None or request.query_params.get("node"):
        return
    deadline = time.monotonic() + NODE_WAIT
    while not client.registered():
        if time.monotonic() > deadline:
            raise Unavailable(f"this agent's node is not registered with its servers yet (waited {NODE_WAIT:g}s); "
                              "nothing was stored; try again once `yurt node status -self` shows it")
        await asyncio.sleep(0.05)


def local_node(request: Request) -> tuple[str, str, str]:
    """(node ID, node name, address) of this agent; `?node=` (a node ID or name) names another
    node, which is how a client-only agent's forwarded requests say whose services they mean."""
    agent = agent_of(request)
    cfg = agent.config
    wanted = request.query_params.get("node")
    if wanted:
        return wanted, wanted, ""
    host = cfg.advertise or ("127.0.0.1" if cfg.bind in ("0.0.0.0", "::", "") else cfg.bind)
    return agent.node_id or "", cfg.name, host


def node_key(request: Request) -> str:
    node_id, name, _ = local_node(request)
    return node_id or name
