"""Requests this agent does not answer itself go, as they are, to the agent that does.

A client-only agent serves the same HTTP API as a server: it answers what it owns (its
allocations' logs, its node, its own agent endpoints) and forwards the rest to its server --
Nomad-shaped and Consul-shaped routes alike, blocking queries included (the answer is streamed
back as it comes). A server forwards `alloc logs` to the agent that runs the allocation, at the
HTTP address its node advertises. A forwarded request carries `X-Yurt-Forwarded`, so it is never
forwarded twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse

from yurt.errors import Unavailable
from yurt.server.reads import Reads

HOP = "X-Yurt-Forwarded"
PASSED_BACK = {h.title() for h in (
    "Content-Type", "X-Nomad-Index", "X-Nomad-KnownLeader", "X-Nomad-LastContact", "X-Consul-Index",
    "X-Consul-KnownLeader", "X-Consul-LastContact", "X-Consul-Default-ACL-Policy")}
TOKEN_HEADERS = ("x-nomad-token", "x-consul-token", "authorization")   # ACLs: the server checks them
TIMEOUT = httpx.Timeout(30.0, read=660.0)   # a blocking query may wait 10 minutes


class ToServer(Exception):
    """Raised (by `need_server`) on an agent without a server: the app forwards the request."""


class NotConnected(Unavailable):
    """The agent forwarded to could not be dialled: nothing was sent, another may be asked."""


class ToLeader(Exception):
    """Raised on a server that does not lead (servers on etcd) for a write: the app forwards
    the request to the leader."""


READS = ("GET", "HEAD")


async def need_server(request: Request) -> None:
    """A dependency of the routes only a server answers. On a follower, a write goes to the
    leader and a read is made consistent first (`consistent`)."""
    server = request.app.state.agent.server
    if server is None:
        raise ToServer()
    await _follower(request, server)


async def server_reads(request: Request) -> Reads:
    """A dependency of the routes that read the server's state: its read layer (`Server.reads`);
    on an agent without a server, `ToServer` as `need_server`."""
    server = request.app.state.agent.server
    if server is None:
        raise ToServer()
    await _follower(request, server)
    reads: Reads = server.reads
    return reads


async def _follower(request: Request, server) -> None:
    if not server.ha or server.is_leader():
        return
    if request.method not in READS:
        raise ToLeader()
    await consistent(request, server)


async def consistent(request: Request, server) -> None:
    """Nomad's default consistency on a follower: wait until this server's model holds the last
    write etcd has (`?stale` answers from the model as it is, as Nomad's stale reads do). Once
    per request."""
    if "stale" in request.query_params or getattr(request.state, "synced", False):
        return
    from starlette.concurrency import run_in_threadpool
    await run_in_threadpool(server.store.sync)
    request.state.synced = True


async def leader_address(request: Request) -> str:
    server = request.app.state.agent.server
    addr = server.leader_address() if server is not None else ""
    if not addr:
        if server is not None:   # say why when it is the store: "no quorum in the state store: ..."
            from starlette.concurrency import run_in_threadpool
            await run_in_threadpool(server.store.kv.check_quorum)
        raise Unavailable("no server leads the cluster right now (an election is under way); nothing was "
                          "written; try again in a few seconds")
    return addr


ServerReads = Annotated[Reads, Depends(server_reads)]
"""A route's parameter `reads: ServerReads` is the server's read layer."""


# the caller's credentials go with a forwarded request (node secrets, workload identities, tokens)


def forwarded(request: Request) -> bool:
    return HOP.lower() in request.headers


def server_address(request: Request) -> str:
    """The server this agent talks to now (its HTTP client fails over between its servers)."""
    addr: str = request.app.state.agent.server_address
    if not addr:
        raise Unavailable("this agent has no server to ask: give it client { servers = [...] }")
    return addr


async def proxy(request: Request, base: str, *, body: bytes | None = None,
                params: dict[str, str] | None = None, to_leader: bool = False) -> Response:
    """Send the request on to the agent at `base` and stream its answer back. A request goes at
    most to a server (from a client-only agent) and then to the leader (from a follower)."""
    hop = request.headers.get(HOP, "")
    if hop == "leader" or (hop and not to_leader):
        raise Unavailable(f"{request.url.path} was forwarded to this agent, which cannot answer it either")
    client = httpx.AsyncClient(timeout=TIMEOUT, verify=getattr(request.app.state.agent, "tls_context", True))
    url = base.rstrip("/") + request.url.path
    outgoing = client.build_request(
        request.method, url, params={**request.query_params, **(params or {})},
        content=body if body is not None else await request.body(),
        headers={HOP: "leader" if to_leader else "1",
                 **{k: v for k, v in request.headers.items() if k.lower() in TOKEN_HEADERS}})
    try:
        resp = await client.send(outgoing, stream=True)
    except httpx.HTTPError as e:
        await client.aclose()
        tls = getattr(request.app.state.agent, "tls", None)   # a TLS failure says which setting to fix
        message = f"cannot reach the agent at {base}: {(tls.reason(e) if tls else None) or e}"
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            raise NotConnected(message) from None
        raise Unavailable(message) from None

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()
            await client.aclose()

    headers = {k: v for k, v in resp.headers.items() if k.title() in PASSED_BACK}
    return StreamingResponse(relay(), status_code=resp.status_code, headers=headers)


async def to_leader(request: Request) -> Response:
    return await proxy(request, await leader_address(request), to_leader=True)


async def to_server(request: Request, body: bytes | None = None,
                    params: dict[str, str] | None = None) -> Response:
    """Forward to this agent's server; when it cannot be dialled (nothing was sent), to the next
    of its servers, as its HTTP client does, which then stays on the one that answered."""
    agent = request.app.state.agent
    tried = len(agent.api_client.addresses) if agent.api_client is not None else 1
    body = body if body is not None else await request.body()
    for attempt in range(tried):
        base = server_address(request)
        try:
            return await proxy(request, base, body=body, params=params)
        except NotConnected:
            if attempt == tried - 1:
                raise
            agent.api_client.fail_over(base)
    raise AssertionError("unreachable")
