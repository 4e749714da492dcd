"""Nomad's deployment endpoints: /v1/deployments, /v1/deployment/<id>, and its promote, fail,
pause and allocation-health writes (the server's `Deployments` does them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput, NotFound
from yurt.server.reads import Reads
from yurt.structs import Deployment

from .authz import may
from .common import block, json_body, reply, reply_stubs, write_reply
from .forward import ServerReads, need_server
from . import bodies as b
from .openapi import body

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these

TABLES = ("deployment",)
_HEALTH = body(b.DeploymentAllocHealthRequest, required=False)


def _get(reads: Reads, deployment_id: str) -> Deployment:
    d = reads.deployment(deployment_id)
    if d is None:
        raise NotFound("deployment not found")
    return d


async def _body(request: Request, deployment_id: str) -> dict[str, Any]:
    """The body, whose DeploymentID (when given) must be the path's."""
    body = await json_body(request, required=False)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    given = body.get("DeploymentID")
    if given and given != deployment_id:
        raise InvalidInput(f"Deployment ID does not match: the path says {deployment_id}, the body {given}")
    return body


@router.get("/v1/deployments")
async def list_deployments(request: Request, reads: ServerReads):
    index = await block(request, reads, TABLES)
    ds = reads.deployments(request.query_params.get("namespace") or "default", request.query_params.get("prefix", ""))
    return reply([d.to_json() for d in ds if may(request, d.namespace, "read-job")], index)


@router.get("/v1/deployment/allocations/{deployment_id}")
async def deployment_allocations(request: Request, reads: ServerReads, deployment_id: str):
    index = await block(request, reads, ("deployment", "allocs"))
    d = _get(reads, deployment_id)
    return reply_stubs(reads.deployment_allocs(d), index)


@router.get("/v1/deployment/{deployment_id}")
async def read_deployment(request: Request, reads: ServerReads, deployment_id: str):
    index = await block(request, reads, TABLES)
    return reply(_get(reads, deployment_id).to_json(), index)


def _server(request: Request):
    return request.app.state.agent.server


@router.put("/v1/deployment/promote/{deployment_id}", openapi_extra=body(b.DeploymentPromoteRequest))
@router.post("/v1/deployment/promote/{deployment_id}", openapi_extra=body(b.DeploymentPromoteRequest))
async def promote(request: Request, deployment_id: str):
    body = await _body(request, deployment_id)
    groups = body.get("Groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise InvalidInput('"Groups" must be a list of task group names')
    if not body.get("All") and not groups:
        raise InvalidInput('say what to promote: "All": true, or "Groups": ["name", ...]')
    result = await run_in_threadpool(_server(request).deployments.promote, deployment_id,
                                     None if body.get("All") else groups)
    return write_reply(result)


@router.put("/v1/deployment/fail/{deployment_id}", openapi_extra=body(b.DeploymentFailRequest, required=False))
@router.post("/v1/deployment/fail/{deployment_id}", openapi_extra=body(b.DeploymentFailRequest, required=False))
async def fail(request: Request, deployment_id: str):
    await _body(request, deployment_id)
    return write_reply(await run_in_threadpool(_server(request).deployments.fail, deployment_id))


@router.put("/v1/deployment/pause/{deployment_id}", openapi_extra=body(b.DeploymentPauseRequest))
@router.post("/v1/deployment/pause/{deployment_id}", openapi_extra=body(b.DeploymentPauseRequest))
async def pause(request: Request, deployment_id: str):
    body = await _body(request, deployment_id)
    if not isinstance(body.get("Pause"), bool):
        raise InvalidInput('"Pause" must be true (pause) or false (resume)')
    return write_reply(await run_in_threadpool(_server(request).deployments.pause, deployment_id, body["Pause"]))


@router.put("/v1/deployment/allocation-health/{deployment_id}", openapi_extra=_HEALTH)
@router.post("/v1/deployment/allocation-health/{deployment_id}", openapi_extra=_HEALTH)
async def allocation_health(request: Request, deployment_id: str):
    body = await _body(request, deployment_id)
    healthy = body.get("HealthyAllocationIDs") or []
    unhealthy = body.get("UnhealthyAllocationIDs") or []
    for name, ids in (("HealthyAllocationIDs", healthy), ("UnhealthyAllocationIDs", unhealthy)):
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise InvalidInput(f'"{name}" must be a list of allocation IDs')
    return write_reply(await run_in_threadpool(_server(request).deployments.set_health, deployment_id,
                                               healthy, unhealthy))
