"""Allocations, evaluations and nodes: /v1/allocation(s), /v1/evaluation(s), /v1/node(s)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from yurt.errors import NotFound
from yurt.structs import Allocation

from .authz import may
from .common import block, flag, reply, reply_allocs, reply_stubs, strict_flag
from .forward import ServerReads, need_server

router = APIRouter(dependencies=[Depends(need_server)])  # a client-only agent forwards these


def _ns(request: Request) -> str:
    """The namespace a list is of: ?namespace=, default without; "*" is every namespace."""
    return request.query_params.get("namespace") or "default"


def _full_alloc(alloc: Allocation) -> dict:
    return alloc.to_json()


@router.get("/v1/allocations")
async def list_allocs(request: Request, reads: ServerReads):
    index = await block(request, reads, "allocs")
    rows = []
    for a in reads.allocs(request.query_params.get("prefix", ""), _ns(request)):
        if not may(request, a.namespace, "read-job"):
            continue
        row = a.stub()
        if request.query_params.get("task_states", "true").lower() == "false":
            row["TaskStates"] = None
        if flag(request, "resources"):
            row["AllocatedResources"] = a.allocated_resources.to_json()
        rows.append(row)
    return reply(rows, index)


@router.get("/v1/allocation/{alloc_id}")
async def read_alloc(request: Request, reads: ServerReads, alloc_id: str):
    index = await block(request, reads, "allocs")
    alloc = reads.alloc(alloc_id)
    if alloc is None:
        raise NotFound("alloc not found")
    return reply(_full_alloc(alloc), index)


@router.put("/v1/allocation/{alloc_id}/stop")
@router.post("/v1/allocation/{alloc_id}/stop")
async def stop_alloc(request: Request, alloc_id: str):
    result = request.app.state.agent.server.stop_alloc(alloc_id,
                                                       no_shutdown_delay=strict_flag(request, "no_shutdown_delay"))
    return reply(result, result["Index"])


@router.get("/v1/evaluations")
async def list_evals(request: Request, reads: ServerReads):
    index = await block(request, reads, "evals")
    evals = reads.evals(request.query_params.get("prefix", ""), _ns(request))
    return reply([e.to_json() for e in evals if may(request, e.namespace, "read-job")], index)


@router.get("/v1/evaluation/{eval_id}")
async def read_eval(request: Request, reads: ServerReads, eval_id: str):
    index = await block(request, reads, "evals")
    ev = reads.eval(eval_id)
    if ev is None:
        raise NotFound("eval not found")
    return reply(ev.to_json(), index)


@router.get("/v1/evaluation/{eval_id}/allocations")
async def eval_allocs(request: Request, reads: ServerReads, eval_id: str):
    index = await block(request, reads, "allocs")
    return reply_stubs(reads.eval_allocs(eval_id), index)


@router.get("/v1/nodes")
async def list_nodes(request: Request, reads: ServerReads):
    index = await block(request, reads, "nodes")
    nodes = reads.nodes(request.query_params.get("prefix", ""))
    return reply([n.stub(resources=flag(request, "resources"), os=flag(request, "os")) for n in nodes], index)


@router.get("/v1/node/{node_id}")
async def read_node(request: Request, reads: ServerReads, node_id: str):
    index = await block(request, reads, "nodes")
    node = reads.node(node_id)
    if node is None:
        raise NotFound("node not found")
    body = node.to_json()
    body.pop("SecretID", None)
    return reply(body, index)


@router.get("/v1/node/{node_id}/allocations")
async def node_allocs(request: Request, reads: ServerReads, node_id: str):
    """Full allocations of a node; the client agent watches this with a blocking query."""
    index = await block(request, reads, reads.node_allocs_target(node_id))
    if reads.node(node_id) is None:
        raise NotFound("node not found")
    return reply_allocs(reads.node_allocs(node_id), index)
