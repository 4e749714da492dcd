"""Nomad's node lifecycle writes: /v1/node/<id>/drain, /eligibility and /purge.

Bodies are Nomad's: `{"DrainSpec": {"Deadline": ns, "IgnoreSystemJobs": bool} | null,
"MarkEligible": bool, "Meta": {...}}` and `{"Eligibility": "eligible" | "ineligible"}`; answers
`{"EvalIDs", "EvalCreateIndex", "NodeModifyIndex", "Index"}`. A field Yurt does not know is
refused by name rather than ignored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from yurt.errors import InvalidInput
from yurt.structs import DrainSpec

from .common import json_body, write_reply
from .forward import need_server
from .bodies import NodeDrainRequest, NodeEligibilityRequest
from .openapi import body

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these

DRAIN_FIELDS = ("DrainSpec", "MarkEligible", "Meta", "NodeID")
SPEC_FIELDS = ("Deadline", "IgnoreSystemJobs")
ELIGIBILITY_FIELDS = ("Eligibility", "NodeID")


def _object(body: Any, what: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"{what} must be a JSON object with {', '.join(known)}")
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise InvalidInput(f'unknown field "{unknown[0]}" in {what}; it takes {", ".join(known)}')
    return body


def _node_id(body: dict[str, Any], node_id: str) -> None:
    given = body.get("NodeID")
    if given not in (None, "", node_id):
        raise InvalidInput(f'NodeID "{given}" in the body does not match the node in the path "{node_id}"')


def _drain_spec(raw: Any) -> DrainSpec | None:
    if raw is None:
        return None
    spec = _object(raw, "DrainSpec", SPEC_FIELDS)
    deadline = spec.get("Deadline", 0)
    if isinstance(deadline, bool) or not isinstance(deadline, int):
        raise InvalidInput(f"DrainSpec.Deadline must be a whole number of nanoseconds (<0 force, 0 no "
                           f"deadline), not {deadline!r}")
    ignore = spec.get("IgnoreSystemJobs", False)
    if not isinstance(ignore, bool):
        raise InvalidInput(f"DrainSpec.IgnoreSystemJobs must be true or false, not {ignore!r}")
    return DrainSpec(deadline=deadline, ignore_system_jobs=ignore)


def _meta(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InvalidInput('Meta must be an object of strings, like {"reason": "kernel upgrade"}')
    return raw


@router.put("/v1/node/{node_id}/drain", openapi_extra=body(NodeDrainRequest))
@router.post("/v1/node/{node_id}/drain", openapi_extra=body(NodeDrainRequest))
async def drain(request: Request, node_id: str):
    body = _object(await json_body(request), "the drain request", DRAIN_FIELDS)
    _node_id(body, node_id)
    mark = body.get("MarkEligible", False)
    if not isinstance(mark, bool):
        raise InvalidInput(f"MarkEligible must be true or false, not {mark!r}")
    result = request.app.state.agent.server.drainer.update_drain(
        node_id, _drain_spec(body.get("DrainSpec")), mark_eligible=mark, meta=_meta(body.get("Meta")))
    return write_reply(result)


@router.put("/v1/node/{node_id}/eligibility", openapi_extra=body(NodeEligibilityRequest))
@router.post("/v1/node/{node_id}/eligibility", openapi_extra=body(NodeEligibilityRequest))
async def eligibility(request: Request, node_id: str):
    body = _object(await json_body(request), "the eligibility request", ELIGIBILITY_FIELDS)
    _node_id(body, node_id)
    value = body.get("Eligibility")
    if not isinstance(value, str):
        raise InvalidInput('Eligibility is required: "eligible" or "ineligible"')
    return write_reply(request.app.state.agent.server.drainer.update_eligibility(node_id, value))


@router.put("/v1/node/{node_id}/purge")
@router.post("/v1/node/{node_id}/purge")
async def purge(request: Request, node_id: str):
    return write_reply(request.app.state.agent.server.drainer.purge(node_id))
