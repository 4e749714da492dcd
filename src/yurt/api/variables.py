"""Nomad's variables API: GET /v1/vars, GET/PUT/DELETE /v1/var/<path> (?cas=, ?namespace=,
blocking queries). The server's `Variables` (server/variables.py) encrypts and decrypts.

ACLs: each route checks the variable's path itself (`allowed`): a management token; a token
whose policies grant the capability in `namespace "<ns>" { variables { path "<glob>" {
capabilities = [...] } } }` (read, list, write, destroy); a workload identity may read and list
`nomad/jobs`, `nomad/jobs/<its job>`, `.../<its group>` and `.../<its group>/<its task>` in its
own namespace, as Nomad's.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput, NotFound, PermissionDenied

from .authz import identity
from .common import block, json_body, reply
from .forward import ServerReads, need_server
from .openapi import body

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these

TABLES = ("variables",)
VAR_BODY = {
    "type": "object", "title": "Variable",
    "properties": {"Namespace": {"type": "string"}, "Path": {"type": "string"},
                   "Items": {"type": "object", "additionalProperties": {"type": "string"}}},
    "required": ["Items"],
}


def allowed(request: Request, namespace: str, path: str, cap: str) -> bool:
    """May the caller `cap` (read, list, write, destroy) the variable `path` in `namespace`?"""
    ident = identity(request)
    if ident is None or ident.management:
        return True
    if ident.workload is not None:
        w = ident.workload
        own = {"nomad/jobs", f"nomad/jobs/{w.job_id}", f"nomad/jobs/{w.job_id}/{w.group}",
               f"nomad/jobs/{w.job_id}/{w.group}/{w.task}"}
        return cap in ("read", "list") and namespace == w.namespace and path in own
    if ident.kind == "node":
        return False
    return ident.acl.allow_variable(namespace, path, cap)


def may_search(request: Request, namespace: str) -> bool:
    """Any variables rights at all in `namespace` ("*": in any): who may list (the rows are then
    filtered path by path); a caller with none is refused, not answered an empty list."""
    ident = identity(request)
    if ident is None or ident.management:
        return True
    if ident.workload is not None:
        return namespace in ("*", ident.workload.namespace)
    if ident.kind == "node":
        return False
    return ident.acl.may_search_variables(namespace)


def _require(request: Request, namespace: str, path: str, cap: str) -> None:
    if not allowed(request, namespace, path, cap):
        raise PermissionDenied(f'Permission denied: this needs variables capability "{cap}" on path "{path}" '
                               f'in namespace "{namespace}"')


def _namespace(request: Request) -> str:
    return request.query_params.get("namespace") or "default"


def _cas(request: Request) -> int | None:
    raw = request.query_params.get("cas")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f'can not parse cas: "{raw}" is not a ModifyIndex (a whole number)') from None
    if value < 0:
        raise InvalidInput(f"can not parse cas: {value} is negative")
    return value


def _no_locks(request: Request) -> None:
    for op in ("lock-acquire", "lock-release", "lock-renew"):
        if op in request.query_params:
            raise InvalidInput(f"?{op}: variable locks are not supported by Yurt yet")


def _server(request: Request):
    return request.app.state.agent.server


@router.get("/v1/vars")
async def list_variables(request: Request, reads: ServerReads):
    ns = _namespace(request)
    if not may_search(request, ns):
        raise PermissionDenied(f'Permission denied: this needs a variables capability in namespace "{ns}"')
    index = await block(request, reads, TABLES)
    rows = _server(request).variables.rows(ns, request.query_params.get("prefix", ""))
    from yurt.server.variables import metadata
    out = [metadata(r) for r in rows if allowed(request, r.namespace, r.path, "list")]
    # Nomad's pagination: ?per_page=N, ?next_token=<namespace>.<path> (X-Nomad-NextToken)
    start = request.query_params.get("next_token", "")
    if start:
        out = [v for v in out if f'{v["Namespace"]}.{v["Path"]}' >= start]
    headers = {}
    per_page = _per_page(request)
    if per_page and len(out) > per_page:
        nxt = out[per_page]
        headers["X-Nomad-NextToken"] = f'{nxt["Namespace"]}.{nxt["Path"]}'
        out = out[:per_page]
    return reply(out, index, headers=headers)


def _per_page(request: Request) -> int:
    raw = request.query_params.get("per_page", "")
    try:
        value = int(raw) if raw else 0
    except ValueError:
        raise InvalidInput(f'invalid per_page "{raw}": must be a whole number') from None
    if value < 0:
        raise InvalidInput(f"invalid per_page {value}: must be 0 (no paging) or more")
    return value


@router.get("/v1/var/{path:path}")
async def read_variable(request: Request, reads: ServerReads, path: str):
    ns = _namespace(request)
    _require(request, ns, path, "read")
    index = await block(request, reads, TABLES)
    got = _server(request).variables.get(ns, path)
    if got is None:
        raise NotFound("variable not found")
    return reply(got, index)


@router.put("/v1/var/{path:path}", openapi_extra=body(VAR_BODY))
@router.post("/v1/var/{path:path}", openapi_extra=body(VAR_BODY))
async def put_variable(request: Request, path: str):
    from yurt.server.variables import CasConflict
    data = await json_body(request)
    ns = str((data.get("Namespace") if isinstance(data, dict) else None) or _namespace(request))
    _require(request, ns, path, "write")   # who may, before what is wrong with the request
    _no_locks(request)
    cas = _cas(request)
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object: {\"Items\": {\"key\": \"value\"}}")
    if data.get("Lock"):
        raise InvalidInput("Lock: variable locks are not supported by Yurt yet")
    if not data.get("Items"):
        raise InvalidInput(f'variable "{path}": missing required Items object')
    try:
        index, out = await run_in_threadpool(_server(request).variables.put, ns, path, data.get("Items"), cas)
    except CasConflict as c:
        return _conflict(request, ns, path, c.current)
    return reply(out, index)


@router.delete("/v1/var/{path:path}")
async def delete_variable(request: Request, path: str):
    from yurt.server.variables import CasConflict
    ns = _namespace(request)
    _require(request, ns, path, "destroy")
    _no_locks(request)
    cas = _cas(request)
    try:
        index = await run_in_threadpool(_server(request).variables.delete, ns, path, cas)
    except CasConflict as c:
        return _conflict(request, ns, path, c.current)
    return Response(status_code=204, headers={"X-Nomad-Index": str(index), "X-Nomad-KnownLeader": "true",
                                              "X-Nomad-LastContact": "0"})


def _conflict(request: Request, ns: str, path: str, current: dict[str, Any]) -> Response:
    """Nomad's 409: the variable as it is (its items only for a caller who may read it)."""
    if not allowed(request, ns, path, "read"):
        current = {k: v for k, v in current.items() if k != "Items"}
    return reply(current, int(current.get("ModifyIndex") or 0), status=409)
