"""Nomad's ACL endpoints: bootstrap, policies, tokens. A client-only agent forwards them.

With ACLs disabled every one answers 400 "ACL support disabled" (but /v1/acl/token/self, which
answers the anonymous token). What a caller may do here beyond `api.authz`'s table (reading a
policy it holds, its own token) is checked by the routes themselves.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from yurt.errors import InvalidInput, PermissionDenied
from yurt.server.acl import anonymous_token
from yurt.structs.acl import ACLPolicy

from .authz import acl_enabled, decide, identity
from .common import json_body, reply
from .forward import need_server
from .bodies import ACLBootstrapRequest, ACLCheckRequest, ACLTokenRequest
from .openapi import body

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these


def _enabled(request: Request):
    if not acl_enabled(request):
        raise InvalidInput("ACL support disabled: start the agents with acl { enabled = true } "
                           "(or -acl-enabled)")
    return request.app.state.agent.server.acl


def _written(index: int) -> Response:
    return Response(status_code=200, headers={"X-Nomad-Index": str(index)})


@router.put("/v1/acl/bootstrap", openapi_extra=body(ACLBootstrapRequest, required=False))
@router.post("/v1/acl/bootstrap", openapi_extra=body(ACLBootstrapRequest, required=False))
async def bootstrap(request: Request):
    acl = _enabled(request)
    body = await json_body(request, required=False)
    secret = body.get("BootstrapSecret", "") if isinstance(body, dict) else ""
    token = acl.bootstrap(str(secret or ""))
    return reply(token.public(secret=True), token.modify_index)


@router.get("/v1/acl/policies")
async def policies(request: Request):
    acl = _enabled(request)
    ident = identity(request)
    visible = None
    if ident is not None and not ident.management:
        visible = set(ident.token.policies) if ident.token is not None else set()
    items = [p for p in acl.store.acl_policies() if visible is None or p.name in visible]
    return reply([p.stub() for p in items], acl.store.table_index("acl"))


@router.get("/v1/acl/policy/{name}")
async def get_policy(request: Request, name: str):
    acl = _enabled(request)
    ident = identity(request)
    if ident is not None and not ident.management and not (
            ident.token is not None and name in ident.token.policies):
        raise PermissionDenied(f'Permission denied: reading ACL policy "{name}" needs a management token '
                               "or a token that holds it")
    p = acl.policy(name)
    return reply(p.to_json(), p.modify_index)


@router.put("/v1/acl/policy/{name}", openapi_extra=body(ACLPolicy))
@router.post("/v1/acl/policy/{name}", openapi_extra=body(ACLPolicy))
async def put_policy(request: Request, name: str):
    acl = _enabled(request)
    return _written(acl.upsert_policy(name, await json_body(request)))


@router.delete("/v1/acl/policy/{name}")
async def delete_policy(request: Request, name: str):
    acl = _enabled(request)
    return _written(acl.delete_policy(name))


@router.get("/v1/acl/tokens")
async def tokens(request: Request):
    acl = _enabled(request)
    return reply([t.stub() for t in acl.tokens()], acl.store.table_index("acl"))


@router.put("/v1/acl/token", openapi_extra=body(ACLTokenRequest))
@router.post("/v1/acl/token", openapi_extra=body(ACLTokenRequest))
async def create_token(request: Request):
    acl = _enabled(request)
    token = acl.create_token(await json_body(request))
    return reply(token.public(secret=True), token.modify_index)


@router.get("/v1/acl/token/self")
async def token_self(request: Request):
    ident = identity(request)
    if ident is None:   # ACLs disabled: everyone is the anonymous token
        return reply(anonymous_token().public())
    if ident.token is None:
        raise InvalidInput(f"this request's identity is a {ident.kind} identity, not an ACL token")
    return reply(ident.token.public(), ident.token.modify_index)


@router.get("/v1/acl/token/{accessor}")
async def get_token(request: Request, accessor: str):
    acl = _enabled(request)
    ident = identity(request)
    if ident is not None and not ident.management and not (
            ident.token is not None and ident.token.accessor_id == accessor):
        raise PermissionDenied("Permission denied: reading another ACL token needs a management token")
    tok = acl.token(accessor)
    return reply(tok.public(), tok.modify_index)


@router.put("/v1/acl/token/{accessor}", openapi_extra=body(ACLTokenRequest))
@router.post("/v1/acl/token/{accessor}", openapi_extra=body(ACLTokenRequest))
async def update_token(request: Request, accessor: str):
    acl = _enabled(request)
    tok = acl.update_token(accessor, await json_body(request))
    return reply(tok.public(), tok.modify_index)


@router.delete("/v1/acl/token/{accessor}")
async def delete_token(request: Request, accessor: str):
    acl = _enabled(request)
    return _written(acl.delete_token(accessor))


@router.post("/v1/internal/acl/check", openapi_extra=body(ACLCheckRequest, required=False))
async def acl_check(request: Request):
    """A client-only agent asks whether its caller (the token headers it passes on) may do
    Method Path (the route template) on Name; 200 if so, 403 naming what is missing."""
    body = await json_body(request, required=False)
    if not isinstance(body, dict):
        body = {}
    decide(request, str(body.get("Method") or ""), str(body.get("Path") or ""), str(body.get("Name") or ""))
    return reply({"Allowed": True})
