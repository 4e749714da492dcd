"""Consul's intention routes (/v1/connect/intentions...): by name (exact), legacy by ID, list,
match and check. Every answer carries X-Consul-Default-ACL-Policy, the default intention action.
"""

from __future__ import annotations

from fastapi import Request

from yurt.errors import InvalidInput, NotFound
from yurt.structs import Intention

from .common import json_object
from .consul_common import agent_of, cblock, consul_route, consul_router, creply, reads_of
from .openapi import body

router = consul_router()


def _ix(request: Request):
    return agent_of(request).server.intentions


def _pair(request: Request) -> tuple[str, str]:
    q = request.query_params
    return q.get("source", ""), q.get("destination", "")


def _checked_pair(request: Request) -> tuple[str, str] | None:
    source, destination = _pair(request)
    return (source, destination) if source and destination else None


@router.get("/v1/connect/intentions")
@consul_route
async def list_intentions(request: Request):
    index = await cblock(request, "intentions")
    return creply(request, [i.public() for i in _ix(request).list()], index)


@router.post("/v1/connect/intentions", openapi_extra=body(Intention))
@consul_route
async def create(request: Request):
    body = await json_object(request)
    ix = _ix(request).create(body)
    return creply(request, {"ID": ix.id}, ix.modify_index)


@router.get("/v1/connect/intentions/exact")
@consul_route
async def get_exact(request: Request):
    pair = _checked_pair(request)
    if pair is None:
        raise InvalidInput("source and destination are required query parameters")
    index = await cblock(request, "intentions")
    ix = _ix(request).get_exact(*pair)
    if ix is None:
        raise NotFound(f"intention not found: {pair[0]} => {pair[1]}")
    return creply(request, ix.public(), index)


@router.put("/v1/connect/intentions/exact", openapi_extra=body(Intention))
@consul_route
async def put_exact(request: Request):
    pair = _checked_pair(request)
    if pair is None:
        raise InvalidInput("source and destination are required query parameters")
    ix = _ix(request).upsert_exact(*pair, await json_object(request))
    return creply(request, True, ix.modify_index)


@router.delete("/v1/connect/intentions/exact")
@consul_route
async def delete_exact(request: Request):
    pair = _checked_pair(request)
    if pair is None:
        raise InvalidInput("source and destination are required query parameters")
    index = _ix(request).delete_exact(*pair)
    return creply(request, True, index)


@router.get("/v1/connect/intentions/match")
@consul_route
async def match(request: Request):
    by = request.query_params.get("by", "")
    names = request.query_params.getlist("name")
    if not names:
        raise InvalidInput("name is a required query parameter")
    index = await cblock(request, "intentions")
    ix = _ix(request)
    return creply(request, {n: [i.public() for i in ix.match(by, n)] for n in names}, index)


@router.get("/v1/connect/intentions/check")
@consul_route
async def check(request: Request):
    pair = _checked_pair(request)
    if pair is None:
        raise InvalidInput("source and destination are required query parameters")
    allowed, reason = _ix(request).check(*pair)
    return creply(request, {"Allowed": allowed, "Reason": reason},
                  reads_of(request).table_index("intentions"))


@router.get("/v1/connect/intentions/{ix_id}")
@consul_route
async def get_by_id(request: Request, ix_id: str):
    index = await cblock(request, "intentions")
    ix = _ix(request).get(ix_id)
    if ix is None:
        raise NotFound(f"intention {ix_id!r} not found")
    return creply(request, ix.public(), index)


@router.put("/v1/connect/intentions/{ix_id}", openapi_extra=body(Intention))
@consul_route
async def update_by_id(request: Request, ix_id: str):
    ix = _ix(request).update(ix_id, await json_object(request))
    return creply(request, None, ix.modify_index)


@router.delete("/v1/connect/intentions/{ix_id}")
@consul_route
async def delete_by_id(request: Request, ix_id: str):
    if _ix(request).get(ix_id) is None:
        raise NotFound(f"intention {ix_id!r} not found")
    return creply(request, True, _ix(request).delete(ix_id))
