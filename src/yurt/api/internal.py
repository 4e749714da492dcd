"""The client agent's side door to its server: register, heartbeat, report allocation status.

Nomad's clients use RPC for these; Yurt's use HTTP so a client on another host works the same
way as the one inside a dev agent. Paths live under /v1/internal/.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from yurt.errors import InvalidInput
from yurt.structs import Allocation, Node

from .common import json_body, reply, write_reply
from .forward import need_server

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these

CLIENT_FIELDS = ("ID", "ClientStatus", "ClientDescription", "TaskStates", "NetworkStatus")


@router.put("/v1/internal/node/register")
async def register_node(request: Request):
    body = await json_body(request)
    try:
        node = Node.model_validate(body.get("Node", body))
    except ValidationError as e:
        raise InvalidInput(f"invalid node: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    return write_reply(request.app.state.agent.server.register_node(node))


@router.put("/v1/internal/node/{node_id}/heartbeat")
async def heartbeat(request: Request, node_id: str):
    result = request.app.state.agent.server.heartbeat(node_id)
    return reply(result, result["Index"])


@router.put("/v1/internal/node/{node_id}/allocations")
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
    index = request.app.state.agent.server.client_update_allocs(node_id, updates)
    return reply({"Index": index}, index)
