"""What the Consul-shaped routes share: X-Consul-* headers on every answer (404s included, as
python-consul reads X-Consul-Index there too), blocking on the mesh tables, errors as plain text,
and forwarding to the server when this agent is a client only."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Iterable

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from yurt.server.ca import CAError
from yurt.server.catalog import CatalogError
from yurt.server.intentions import IntentionError, IntentionExists
from yurt.state import NotFound as StateNotFound

from .common import APIError, block

FORWARDED_HEADERS = ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact",
                     "X-Consul-Default-ACL-Policy", "Content-Type", "X-Nomad-Index")


def agent_of(request: Request):
    return request.app.state.agent


def default_policy(request: Request) -> str:
    agent = agent_of(request)
    return getattr(agent.config, "default_intention_policy", "allow") or "allow"


def _index(request: Request, index: int | None) -> int:
    if index is None:
        store = agent_of(request).store
        index = store.index() if store is not None else 1
    return max(int(index), 1)


def headers(request: Request, index: int | None = None) -> dict[str, str]:
    i = _index(request, index)
    return {"X-Consul-Index": str(i), "X-Nomad-Index": str(i), "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0", "X-Consul-Default-ACL-Policy": default_policy(request)}


def creply(request: Request, body: Any, index: int | None = None, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers=headers(request, index))


def cerror(request: Request, status: int, message: str, index: int | None = None) -> Response:
    return PlainTextResponse(message, status_code=status, headers=headers(request, index))


async def cblock(request: Request, tables: str | Iterable[str]) -> int:
    """Blocking query on one or more of the mesh tables ("services", "intentions", "ca")."""
    tables = tables if isinstance(tables, str) else tuple(tables)
    return await block(request, agent_of(request).store, tables)


async def body_json(request: Request, *, required: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise CatalogError("request body is empty: send a JSON object")
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CatalogError(f"request body is not valid JSON: {e}") from None


def consul_route(fn: Callable | None = None, *, forward: bool = True) -> Callable:
    """Errors become Consul answers (400/404/409 with X-Consul-Index); on a client-only agent
    the request goes to the server unless `forward=False`."""
    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
            if forward and agent_of(request).server is None:
                return await forward_to_server(request)
            try:
                return await f(request, *args, **kwargs)
            except IntentionExists as e:
                return cerror(request, 409, str(e))
            except (CatalogError, IntentionError, CAError) as e:
                return cerror(request, 400, str(e))
            except StateNotFound as e:
                return cerror(request, 404, str(e).strip("'\""))
            except APIError as e:
                return cerror(request, e.status_code, str(e.detail))
        return wrapper
    return deco(fn) if fn is not None else deco


def server_address(request: Request) -> str:
    agent = agent_of(request)
    addr = getattr(agent, "server_address", "") or (agent.config.servers[0] if agent.config.servers else "")
    if not addr:
        raise APIError(500, "this agent has no server to ask")
    return addr if "://" in addr else f"http://{addr}"


async def forward_to_server(request: Request, body: bytes | None = None,
                            params: dict[str, str] | None = None) -> Response:
    """Send the request on to a server as it is and answer with the server's answer."""
    url = server_address(request) + request.url.path
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=660.0)) as client:
            resp = await client.request(request.method, url,
                                        params={**request.query_params, **(params or {})},
                                        content=body if body is not None else await request.body())
    except httpx.HTTPError as e:
        return cerror(request, 503, f"cannot reach the server at {url}: {e}")
    return Response(resp.content, status_code=resp.status_code,
                    headers={k: v for k, v in resp.headers.items() if k.title() in
                             {h.title() for h in FORWARDED_HEADERS}})


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
