"""Nomad's client allocation actions: /v1/client/allocation/<id>/signal, /restart, /gc and
/snapshot (ephemeral_disk migrate), and the node's garbage collection /v1/client/gc.

The agent whose client runs the allocation acts; a server forwards the request to that node's
agent (as it does `alloc logs`), a client-only agent that does not run it asks its server.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput

from .common import json_body, reply
from .logs import _elsewhere
from .bodies import AllocRestartRequest, AllocSignalRequest
from .openapi import body

router = APIRouter()


def _str(body: dict, key: str) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    return value


async def _body(request: Request) -> dict:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


@router.put("/v1/client/allocation/{alloc_id}/signal", openapi_extra=body(AllocSignalRequest, required=False))
@router.post("/v1/client/allocation/{alloc_id}/signal", openapi_extra=body(AllocSignalRequest, required=False))
async def signal(request: Request, alloc_id: str):
    """{"Signal": "SIGHUP", "Task": "web"}: the signal to the task (no Task: every running task)."""
    agent = request.app.state.agent
    body = await _body(request)
    sig, task = _str(body, "Signal") or "SIGKILL", _str(body, "Task")
    if agent.client is None or agent.local_alloc(alloc_id) is None:
        return await _elsewhere(request, alloc_id)
    try:
        await run_in_threadpool(agent.client.signal_alloc, alloc_id, task, sig)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    return reply({})


@router.put("/v1/client/allocation/{alloc_id}/restart", openapi_extra=body(AllocRestartRequest, required=False))
@router.post("/v1/client/allocation/{alloc_id}/restart", openapi_extra=body(AllocRestartRequest, required=False))
async def restart(request: Request, alloc_id: str):
    """{"TaskName": "web", "AllTasks": false}: the task restarted in place (no TaskName: every
    running task)."""
    agent = request.app.state.agent
    body = await _body(request)
    task = _str(body, "TaskName")
    if agent.client is None or agent.local_alloc(alloc_id) is None:
        return await _elsewhere(request, alloc_id)
    await run_in_threadpool(agent.client.restart_alloc, alloc_id, task, bool(body.get("AllTasks", True)))
    return reply({})


@router.get("/v1/client/allocation/{alloc_id}/stats")
async def alloc_stats(request: Request, alloc_id: str):
    """Nomad's AllocResourceUsage: each running task's CPU and memory (?task= for one)."""
    agent = request.app.state.agent
    if agent.client is None or agent.local_alloc(alloc_id) is None:
        return await _elsewhere(request, alloc_id)
    return reply(await run_in_threadpool(agent.alloc_stats, alloc_id, request.query_params.get("task", "")))


@router.get("/v1/client/stats")
async def client_stats(request: Request):
    """Nomad's HostStats of this agent's node, or of `?node_id=` (a server forwards the request
    to that node's agent; a client-only agent asks its server)."""

    agent = request.app.state.agent
    wanted = request.query_params.get("node_id", "")
    if agent.client is not None and wanted in ("", agent.node_id):
        return reply(await run_in_threadpool(agent.host_stats))
    if not wanted:
        raise InvalidInput("this agent has no client: give ?node_id= of the node to ask")
    return await _to_node(request, wanted, "to read its figures from")


@router.get("/v1/client/allocation/{alloc_id}/snapshot")
async def snapshot(request: Request, alloc_id: str):
    """Nomad's alloc snapshot (ephemeral_disk migrate): a tar of a terminal allocation's
    alloc/data and each task's local/, from the agent whose client has its directory (a server
    forwards it there); 409 while the allocation runs. For client nodes (their node secret)."""
    import tempfile

    from starlette.responses import StreamingResponse
    from yurt.errors import Conflict, NotFound
    agent = request.app.state.agent
    if agent.client is None or agent.local_alloc(alloc_id) is None:
        if agent.server is not None:   # the new node asks only this route (a node's token reads nothing else)
            alloc = agent.server.reads.alloc(alloc_id)
            if alloc is None:
                raise NotFound(f"allocation {alloc_id[:8]} not found")
            node = agent.server.reads.node(alloc.node_id)
            if node is None or node.status == "down":
                raise NotFound(f"the node {alloc.node_id[:8]} of allocation {alloc_id[:8]} is gone or down")
            if not alloc.client_terminal():
                raise Conflict(f"allocation {alloc_id[:8]} is still running: its snapshot is only taken once it "
                               "has stopped (stop it, or wait for it to finish)")
        return await _elsewhere(request, alloc_id)
    tmp = tempfile.TemporaryFile()
    try:
        await run_in_threadpool(agent.client.snapshot, alloc_id, tmp)
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise

    def chunks():
        with tmp:
            while chunk := tmp.read(1 << 16):
                yield chunk
    return StreamingResponse(chunks(), media_type="application/x-tar")


@router.get("/v1/client/allocation/{alloc_id}/gc")
@router.put("/v1/client/allocation/{alloc_id}/gc")
async def gc_alloc(request: Request, alloc_id: str):
    """Nomad's: a stopped or finished allocation destroyed on its node now, its directory
    removed (the server keeps its record until its own garbage collection)."""
    agent = request.app.state.agent
    if agent.client is None or agent.local_alloc(alloc_id) is None:
        return await _elsewhere(request, alloc_id)
    await run_in_threadpool(agent.client.gc, alloc_id)
    return reply(None)


@router.get("/v1/client/gc")
@router.put("/v1/client/gc")
async def gc_node(request: Request):
    """Nomad's client GC: every stopped or finished allocation of this agent's node, or of
    `?node_id=` (a server forwards the request to that node's agent), destroyed there."""

    agent = request.app.state.agent
    wanted = request.query_params.get("node_id", "")
    if agent.client is not None and wanted in ("", agent.node_id):
        await run_in_threadpool(agent.client.gc)
        return reply(None)
    if not wanted:
        raise InvalidInput("this agent has no client: give ?node_id= of the node to collect")
    return await _to_node(request, wanted, "to ask")


async def _to_node(request: Request, node_id: str, why: str) -> Response:
    """The request answered by node `node_id`'s agent: through the server on a client-only
    agent, else proxied to the node's advertised HTTP address."""
    from yurt.errors import NotFound

    from .forward import proxy, to_server
    agent = request.app.state.agent
    if agent.server is None:
        return await to_server(request)
    node = agent.server.reads.node(node_id)
    if node is None:
        raise NotFound(f'node "{node_id}" not found')
    if not node.http_addr:
        raise NotFound(f"node {node_id[:8]} advertises no HTTP address {why}")
    return await proxy(request, node.http_addr if "://" in node.http_addr else f"http://{node.http_addr}")
