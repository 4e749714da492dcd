"""Nomad's namespace endpoints: GET /v1/namespaces (?prefix=), GET/PUT/POST/DELETE
/v1/namespace/<name>, PUT/POST /v1/namespace (the body names it). The server's `Namespaces`
does the work (server/namespaces.py); reads are blocking queries on the "namespaces" table."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput, NotFound
from yurt.server.namespaces import namespace_from_json
from yurt.structs import Namespace

from .authz import may_see_namespace
from .common import block, json_body, reply
from .forward import ServerReads, need_server
from .openapi import body

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these

TABLE = "namespaces"


@router.get("/v1/namespaces")
async def list_namespaces(request: Request, reads: ServerReads):
    index = await block(request, reads, TABLE)
    rows = request.app.state.agent.server.namespaces.by_prefix(request.query_params.get("prefix", ""))
    return reply([ns.to_json() for ns in rows if may_see_namespace(request, ns.name)], index)


@router.get("/v1/namespace/{name}")
async def read_namespace(request: Request, reads: ServerReads, name: str):
    await block(request, reads, TABLE)
    ns = request.app.state.agent.server.namespaces.get(name)
    if ns is None:
        raise NotFound("Namespace not found")
    return reply(ns.to_json(), max(ns.modify_index, 1))


async def _upsert(request: Request, name: str):
    doc = await json_body(request)
    ns = namespace_from_json(doc)
    if name and ns.name != name:
        raise InvalidInput(f'Namespace name does not match request path: the path says "{name}", '
                           f'the body "{ns.name}"')
    index = await run_in_threadpool(request.app.state.agent.server.namespaces.upsert, ns)
    return reply(None, index)


_BODY = body(Namespace, description="The namespace (Nomad's JSON): Name, Description, Meta, Capabilities ...")


@router.put("/v1/namespace/{name}", openapi_extra=_BODY)
@router.post("/v1/namespace/{name}", openapi_extra=_BODY)
async def write_namespace(request: Request, name: str):
    return await _upsert(request, name)


@router.put("/v1/namespace", openapi_extra=_BODY)
@router.post("/v1/namespace", openapi_extra=_BODY)
async def create_namespace(request: Request):
    return await _upsert(request, "")


@router.delete("/v1/namespace/{name}")
async def delete_namespace(request: Request, name: str):
    index = await run_in_threadpool(request.app.state.agent.server.namespaces.delete, name)
    return reply(None, index)
