"""The client agents' two hot routes, answered before anything else of the HTTP stack.

Every client agent heartbeats (`PUT /v1/internal/node/<id>/heartbeat`) and keeps a blocking
query on its allocations open (`GET /v1/internal/node/<id>/allocations`, or Nomad's
`GET /v1/node/<id>/allocations` from an agent of an earlier release); with thousands of nodes these
are most of a server's requests, and the layers around the routes (Starlette's error and
exception middleware, FastAPI's telemetry check, the route matching and dependency solving) cost
more than answering them (bench/scheduler.py's http section, profiled). `HotRoutes.take` is
called first by the app (`app.YurtAPI.__call__`) and answers them itself, with the same checks
and the same documents as the routes (the routes stay: they answer whatever this does not take,
and describe the API):

- only on a server that answers from its own model (a non-HA server, or the HA leader); a client
  agent forwards, a follower waits for consistency: both go the usual way;
- a request the request limits refuse by its headers (api/limits.py) goes the usual way too,
  which answers it;
- the ACL check is the routes' own (`authz.authorize`, given the matched route); errors are
  answered as `errors.install` answers them, a bug logged and answered 500 as there.

The watch (`GET /v1/internal/node/<id>/allocations`) goes further: the HTTP protocol hands it to
`fast` before uvicorn makes an ASGI cycle of it (agent/corked.py), and it is checked at once and
parked on the store by a callback (`Reads.watch`), with no task and no coroutine: a server holds
one parked per node, thousands, and the collector walks what each holds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from yurt.errors import YurtError

from . import authz
from . import allocs, internal
from .allocs import node_allocs
from .errors import error_response
from .common import reply_client_allocs
from .internal import client_allocs, client_allocs_query, heartbeat
from .limits import refusal

log = logging.getLogger("yurt.api")

_ALLOCS = re.compile(r"/v1/node/([^/]+)/allocations")
_HEARTBEAT = re.compile(r"/v1/internal/node/([^/]+)/heartbeat")
_CLIENT_ALLOCS = re.compile(r"/v1/internal/node/([^/]+)/allocations")


# a node ID of printable ASCII without "/" or "%" (anything else goes the usual way, unescaped)
_FAST_CLIENT_ALLOCS = re.compile(rb"/v1/internal/node/([!-$&-.0-9:-~]+)/allocations")


class Exchange(Protocol):
    """A request the HTTP protocol lets the app answer before any ASGI cycle is made of it
    (agent/corked.py's `FastRequest`)."""

    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    scope: dict[str, Any]

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None: ...

    def park(self, end: Callable[[bool], None]) -> None: ...


class HotRoutes:
    def __init__(self, fastapi: FastAPI, max_request_bytes: int) -> None:
        self.fastapi = fastapi
        self.limit = max_request_bytes
        self._routes: dict[tuple[str, str], Any] = {}

    def _route(self, method: str, path: str) -> Any:
        """The route object the app's routing would have matched (authz reads its path template)."""
        key = (method, path)
        if key not in self._routes:
            self._routes[key] = next(r for router in (allocs.router, internal.router) for r in router.routes
                                     if isinstance(r, Route) and r.path == path
                                     and r.methods is not None and method in r.methods)
        return self._routes[key]

    async def take(self, scope: Any, receive: Any, send: Any) -> bool:
        """Answer the request if it is one of the hot routes; False: it goes the usual way."""
        method = scope["method"]
        if method == "GET":
            m = _ALLOCS.fullmatch(scope["path"])
            if m is not None:
                return await self._answer(
                    scope, receive, send, m.group(1), "/v1/node/{node_id}/allocations",
                    lambda request, server, node_id: node_allocs(request, server.reads, node_id))
            m = _CLIENT_ALLOCS.fullmatch(scope["path"])
            if m is not None:
                return await self._answer(
                    scope, receive, send, m.group(1), "/v1/internal/node/{node_id}/allocations",
                    lambda request, server, node_id: client_allocs(request, node_id))
        elif method == "PUT":
            m = _HEARTBEAT.fullmatch(scope["path"])
            if m is not None and refusal(scope, self.limit) is None:
                return await self._answer(
                    scope, receive, send, m.group(1), "/v1/internal/node/{node_id}/heartbeat",
                    lambda request, server, node_id: heartbeat(request, node_id))
        return False

    def fast(self, exchange: Exchange) -> bool:
        """The client agents' allocation watch (`GET /v1/internal/node/<id>/allocations`),
        answered without an ASGI cycle, a task or a coroutine: checked at once, then parked on
        the store (`Reads.watch`) until its node's allocations change or its wait ends. The same
        checks and documents as the route (`internal.client_allocs`). False: the request goes
        the usual way (another route, a path to unescape, a server that does not answer from
        its own model)."""
        if exchange.method != b"GET":
            return False
        path, _, query = exchange.url.partition(b"?")
        m = _FAST_CLIENT_ALLOCS.fullmatch(path)
        if m is None:
            return False
        server = self._own_server()
        if server is None:
            return False
        node_id = m.group(1).decode("ascii")
        route = self._route("GET", "/v1/internal/node/{node_id}/allocations")
        scope = {**exchange.scope, "method": "GET", "path": path.decode("ascii"), "raw_path": path,
                 "query_string": query, "headers": exchange.headers, "app": self.fastapi, "route": route,
                 "path_params": {"node_id": node_id}}
        request = Request(scope)
        try:
            authz.authorize_node_route(request)
            since, index, wait = client_allocs_query(request, node_id)
        except YurtError as e:
            _respond(exchange, error_response(request, e.status, e.message))
            return True
        except Exception as e:   # as errors.install's handler of a bug
            log.error("GET %s failed: %s", scope["path"], e, exc_info=e)
            _respond(exchange, PlainTextResponse("Internal Server Error", status_code=500))
            return True
        reads = server.reads
        watch = _Watch(exchange, reads, node_id, since)
        end = reads.watch(reads.node_allocs_target(node_id), index, wait, watch.answer)
        if end is not None:
            exchange.park(end)
        return True

    def _own_server(self) -> Any:
        """The agent's server when it answers from its own model (not HA, or the HA leader)."""
        server = getattr(self.fastapi.state.agent, "server", None)
        if server is None or (server.ha and not server.is_leader()):
            return None
        return server

    async def _answer(self, scope: Any, receive: Any, send: Any, node_id: str, path: str, handler: Any) -> bool:
        server = self._own_server()
        if server is None:
            return False
        route = self._route(scope["method"], path)
        scope = {**scope, "app": self.fastapi, "route": route, "path_params": {"node_id": node_id}}
        request = Request(scope, receive)
        try:
            await authz.authorize(request)
            response = await handler(request, server, node_id)
        except YurtError as e:
            response = error_response(request, e.status, e.message)
        except Exception as e:   # as errors.install's handler of a bug
            log.error("%s %s failed: %s", request.method, request.url.path, e, exc_info=e)
            response = PlainTextResponse("Internal Server Error", status_code=500)
        await response(scope, receive, send)
        return True


def _respond(exchange: Exchange, response: Response) -> None:
    exchange.respond(response.status_code, response.raw_headers, bytes(response.body))


class _Watch:
    """What a parked watch keeps until it is answered (the request's scope and the rest of its
    checking are gone by then: fewer objects held per node for the collector to walk)."""

    __slots__ = ("exchange", "reads", "node_id", "since")

    def __init__(self, exchange: Exchange, reads: Any, node_id: str, since: int) -> None:
        self.exchange, self.reads, self.node_id, self.since = exchange, reads, node_id, since

    def answer(self, index: int) -> None:
        try:
            response = reply_client_allocs(self.reads.node_allocs(self.node_id), self.since, index)
        except Exception as e:
            log.error("GET /v1/internal/node/%s/allocations failed: %s", self.node_id, e, exc_info=e)
            response = PlainTextResponse("Internal Server Error", status_code=500)
        _respond(self.exchange, response)
