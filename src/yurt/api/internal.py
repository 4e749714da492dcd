"""The client agent's side door to its server: register, heartbeat, report allocation status.

Nomad's clients use RPC for these; Yurt's use HTTP so a client on another host works the same
way as the one inside a dev agent. Paths live under /v1/internal/.

Every one of them needs the calling node's SecretID in `X-Nomad-Token`, always (ACLs or not, as
Nomad's node RPCs): a heartbeat or an allocation update for a node, a re-registration of a known
node ID, a node's workload identities. A node updates only allocations placed on itself.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from yurt.errors import InvalidInput, PermissionDenied
from yurt.server.identity import check_node_secret, check_registration
from yurt.structs import Allocation, Node

from .common import json_body, json_object, query_index, reply, reply_client_allocs, wait_seconds, write_reply
from .forward import need_server
from .bodies import NodeAllocUpdateRequest, NodeRegisterRequest
from .openapi import body

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these

CLIENT_FIELDS = ("ID", "ClientStatus", "ClientDescription", "TaskStates", "NetworkStatus")


@router.put("/v1/internal/node/register", openapi_extra=body(NodeRegisterRequest))
async def register_node(request: Request):
    body = await json_object(request)
    try:
        node = Node.model_validate(body.get("Node", body))
    except ValidationError as e:
        raise InvalidInput(f"invalid node: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    server = request.app.state.agent.server
    check_registration(server.reads.node(node.id), node, request_token(request))
    return write_reply(server.register_node(node))


def request_token(request: Request) -> str:
    """The caller's token: X-Nomad-Token, else `Authorization: Bearer <token>`."""
    token = request.headers.get("X-Nomad-Token", "").strip()
    if not token:
        scheme, _, rest = request.headers.get("Authorization", "").strip().partition(" ")
        token = rest.strip().split(" ")[0] if scheme.lower() == "bearer" else ""
    return token


def _node(request: Request, node_id: str, what: str) -> Node:
    server = request.app.state.agent.server
    return check_node_secret(server.reads.node(node_id), node_id, request_token(request), what)


@router.put("/v1/internal/node/{node_id}/heartbeat")
async def heartbeat(request: Request, node_id: str):
    _node(request, node_id, "a heartbeat")
    result = request.app.state.agent.server.heartbeat(node_id)
    return reply(result, result["Index"])


@router.get("/v1/internal/node/{node_id}/allocations")
async def client_allocs(request: Request, node_id: str):
    """The allocations of a node as its client agent watches them (a blocking query): each one's
    AllocModifyIndex under "Allocs", and under "Changed" the whole allocation of those whose
    AllocModifyIndex is past `?since=` (0, the default: all of them). The index moves only with
    what the servers change (placement, desired status, job), so an agent keeps what it has and
    reads again only what moved; what it reports itself changes nothing here."""
    since, index, wait = client_allocs_query(request, node_id)
    reads = request.app.state.agent.server.reads
    index = await reads.block(reads.node_allocs_target(node_id), index, wait)
    return reply_client_allocs(reads.node_allocs(node_id), since, index)


def client_allocs_query(request: Request, node_id: str) -> tuple[int, int, float]:
    """A watch's `since`, `index` and `wait`, once its node's secret is checked (the route's
    and the hot path's, api/hot.py)."""
    raw = request.query_params.get("since", "0")
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput(f'invalid since "{raw}": must be a whole number (the highest AllocModifyIndex '
                           f"the client holds; 0 for every allocation)")
    _node(request, node_id, "a watch of its allocations")
    index = query_index(request)
    return int(raw), index, wait_seconds(request) if index > 0 else 0.0


@router.put("/v1/internal/node/{node_id}/allocations", openapi_extra=body(NodeAllocUpdateRequest))
async def update_allocs(request: Request, node_id: str):
    body = await json_body(request)
    items = body.get("Allocs") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidInput('the body must be {"Allocs": [...]}')
    try:
        updates = [Allocation.model_validate({k: v for k, v in item.items() if k in CLIENT_FIELDS})
                   for item in items]
    except (ValidationError, AttributeError) as e:
        raise InvalidInput(f"invalid allocation update: {e}") from None
    _node(request, node_id, "an allocation update")
    server = request.app.state.agent.server
    others = [u.id for u in updates if (a := server.reads.alloc(u.id)) is not None and a.node_id != node_id]
    if others:
        raise PermissionDenied(f"node {node_id} may update only its own allocations; not {', '.join(others)}")
    index = server.client_update_allocs(node_id, updates)
    return reply({"Index": index}, index)


@router.put("/v1/internal/alloc/{alloc_id}/identity")
async def alloc_identity(request: Request, alloc_id: str):
    """The workload identities ({"Tokens": {task: JWT}}) of an allocation, for the node it is
    placed on (the node's SecretID in X-Nomad-Token, `?node=<node id>`)."""
    node_id = request.query_params.get("node", "")
    if not node_id:
        raise InvalidInput("?node=<node ID> is required: the node the allocation is placed on")
    _node(request, node_id, "an allocation's workload identity")
    server = request.app.state.agent.server
    tokens = server.identity.sign_alloc(server.reads.alloc(alloc_id), node_id)
    return reply({"Tokens": tokens}, server.reads.index())


@router.get("/.well-known/jwks.json")
async def jwks(request: Request):
    """The public keys workload identities are signed with (Nomad's shape; public)."""
    server = request.app.state.agent.server
    return reply(server.identity.jwks(), None, headers={"Cache-Control": "max-age=900"})
