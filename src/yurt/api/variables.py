"""Nomad's variables API: GET /v1/vars, GET/PUT/DELETE /v1/var/<path> (?cas=, ?namespace=,
blocking queries, ?lock-acquire/?lock-renew/?lock-release). The server's `Variables`
(server/variables.py) encrypts and decrypts.

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
                   "Items": {"type": "object", "additionalProperties": {"type": "string"}},
                   "Lock": {"type": "object", "description": "?lock-acquire: TTL, LockDelay; a locked variable's "
                            "holder, ?lock-renew, ?lock-release: ID",
                            "properties": {"ID": {"type": "string"}, "TTL": {"type": "string"},
                                           "LockDelay": {"type": "string"}}}},
    "description": "Items is required but with ?lock-acquire (the variable's own items are kept), "
                   "?lock-renew and ?lock-release (which take only Lock.ID)",
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


LOCK_OPS = ("lock-acquire", "lock-renew", "lock-release")


def _lock_op(request: Request) -> str:
    """The lock operation asked for (`?lock-acquire`, `?lock-renew`, `?lock-release`), "" if none."""
    ops = [op for op in LOCK_OPS if op in request.query_params]
    if len(ops) > 1:
        raise InvalidInput(f"multiple lock operations: {', '.join('?' + o for o in ops)} (give one)")
    if ops and "cas" in request.query_params:
        raise InvalidInput(f"CAS can't be used with lock operations (?cas with ?{ops[0]})")
    return ops[0] if ops else ""


def _shown(request: Request, var: dict[str, Any], lock_id: str = "") -> dict[str, Any]:
    """A variable as the caller may see it: its Lock (its ID above all) only to a management
    token or the lock's holder, as Nomad's."""
    if "Lock" not in var:
        return var
    ident = identity(request)
    if ident is None or ident.management or (lock_id and var["Lock"].get("ID") == lock_id):
        return var
    return {k: v for k, v in var.items() if k != "Lock"}


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
    out = [_shown(request, metadata(r)) for r in rows if allowed(request, r.namespace, r.path, "list")]
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
    return reply(_shown(request, got), index)


@router.put("/v1/var/{path:path}", openapi_extra=body(VAR_BODY))
@router.post("/v1/var/{path:path}", openapi_extra=body(VAR_BODY))
async def put_variable(request: Request, path: str):
    from yurt.server.variables import CasConflict, LockConflict, lock_id_of
    data = await json_body(request)
    ns = str((data.get("Namespace") if isinstance(data, dict) else None) or _namespace(request))
    _require(request, ns, path, "write")   # who may, before what is wrong with the request
    op = _lock_op(request)
    cas = _cas(request)
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object: {\"Items\": {\"key\": \"value\"}}")
    variables = _server(request).variables
    lock_id = lock_id_of(data)
    try:
        if op == "lock-acquire":
            index, out = await run_in_threadpool(variables.acquire, ns, path, data.get("Items"), data.get("Lock"))
            return reply(out, index)
        if op == "lock-renew":
            out = await run_in_threadpool(variables.renew, ns, path, lock_id)
            return reply(out, int(out["ModifyIndex"]))
        if op == "lock-release":
            if data.get("Items"):
                raise InvalidInput("lock release operation doesn't take variable items: send only "
                                   '{"Lock": {"ID": "..."}}')
            index, out = await run_in_threadpool(variables.release, ns, path, lock_id)
            return reply(out, index)
        lock = data.get("Lock")
        if isinstance(lock, dict) and (lock.get("TTL") or lock.get("LockDelay")):
            raise InvalidInput(f'variable "{path}": variable should not contain lock definition (TTL, LockDelay) '
                               "outside ?lock-acquire")
        if lock is not None and (not isinstance(lock, dict) or set(lock) - {"ID", "TTL", "LockDelay"}):
            raise InvalidInput(f'variable "{path}": Lock takes only the holder\'s ID here: {{"Lock": {{"ID": "..."}}}}')
        if not data.get("Items"):
            raise InvalidInput(f'variable "{path}": missing required Items object')
        index, out = await run_in_threadpool(variables.put, ns, path, data.get("Items"), cas, lock_id)
    except CasConflict as c:
        return _conflict(request, ns, path, c.current)
    except LockConflict as c:
        return reply(c.current, 0, status=409)
    return reply(_shown(request, out, lock_id), index)


@router.delete("/v1/var/{path:path}")
async def delete_variable(request: Request, path: str):
    from yurt.server.variables import CasConflict, LockConflict, lock_id_of
    ns = _namespace(request)
    _require(request, ns, path, "destroy")
    op = _lock_op(request)
    if op:
        raise InvalidInput(f"?{op}: lock operations are PUTs (DELETE /v1/var/<path> deletes)")
    cas = _cas(request)
    data = await json_body(request, required=False)   # a locked variable: {"Lock": {"ID": ...}}
    try:
        index = await run_in_threadpool(_server(request).variables.delete, ns, path, cas, lock_id_of(data))
    except CasConflict as c:
        return _conflict(request, ns, path, c.current)
    except LockConflict as c:
        return reply(c.current, 0, status=409)
    return Response(status_code=204, headers={"X-Nomad-Index": str(index), "X-Nomad-KnownLeader": "true",
                                              "X-Nomad-LastContact": "0"})


def _conflict(request: Request, ns: str, path: str, current: dict[str, Any]) -> Response:
    """Nomad's 409: the variable as it is (its items only for a caller who may read it)."""
    if not allowed(request, ns, path, "read"):
        current = {k: v for k, v in current.items() if k != "Items"}
    return reply(_shown(request, current), int(current.get("ModifyIndex") or 0), status=409)
