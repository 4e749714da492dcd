"""`GET /v1/mesh/explain?source=&destination=` (`yurt mesh explain`) and the node's
`POST /v1/internal/mesh/probe`.

A server answers explain: it plans (`server/mesh_explain.py`: catalog, health, intentions, CA)
and asks the agent of each node involved to run that node's probes (`client/mesh_probe.py`):
its own client in-process, another node's agent over HTTP at the address the node advertises,
with the caller's token (as a server reaches a node for its allocations' logs). A client-only
agent forwards explain to its server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput, Unavailable
from yurt.server.mesh_explain import WRONG, MeshExplain, Probe, finish

from .common import json_body, reply
from .forward import HOP, TOKEN_HEADERS, need_server
from .bodies import MeshProbeRequest
from .openapi import body

router = APIRouter()

PARAMS = {"source", "destination", "stale"}
NODE_TIMEOUT = 30.0   # seconds for a node to run its probes (each is bounded much shorter)


@router.get("/v1/mesh/explain", dependencies=[Depends(need_server)])
async def explain(request: Request):
    q = request.query_params
    unknown = sorted(set(q) - PARAMS)
    if unknown:
        raise InvalidInput(f"/v1/mesh/explain does not take {', '.join(unknown)}: its parameters are "
                           "source and destination (service names)")
    agent = request.app.state.agent
    plan = await run_in_threadpool(MeshExplain(agent.server).plan, q.get("source", ""), q.get("destination", ""))
    by_node: dict[str, list[int]] = {}
    for i, probe in enumerate(plan.probes):
        by_node.setdefault(probe.node_id, []).append(i)
    answers: list[dict[str, Any]] = [{} for _ in plan.probes]

    async def one_node(node_id: str, indexes: list[int]) -> None:
        probes = [plan.probes[i] for i in indexes]
        try:
            got = await _on_node(request, node_id, probes)
        except Unavailable as e:
            got = [{"Status": WRONG, "Detail": e.message, "Fix": f"yurt node status {node_id[:8]}"} for _ in probes]
        for i, a in zip(indexes, got, strict=True):
            answers[i] = a

    await asyncio.gather(*(one_node(n, ix) for n, ix in by_node.items()))
    return reply(finish(plan, answers))


async def _on_node(request: Request, node_id: str, probes: list[Probe]) -> list[dict[str, Any]]:
    agent = request.app.state.agent
    specs = [p.spec for p in probes]
    if node_id and node_id == agent.node_id:
        result: list[dict[str, Any]] = await run_in_threadpool(agent.mesh_probe, specs)
        return result
    node = agent.server.reads.node(node_id) if node_id else None
    name = probes[0].node or node_id[:8]
    if node is None or not node.http_addr:
        raise Unavailable(f"node {name} advertises no HTTP address to run its probes at")
    base = node.http_addr if "://" in node.http_addr else f"http://{node.http_addr}"
    headers = {HOP: "1", **{k: v for k, v in request.headers.items() if k.lower() in TOKEN_HEADERS}}
    try:
        async with httpx.AsyncClient(timeout=NODE_TIMEOUT, verify=getattr(agent, "tls_context", True)) as client:
            resp = await client.post(base.rstrip("/") + "/v1/internal/mesh/probe", json={"Probes": specs},
                                     headers=headers)
    except httpx.HTTPError as e:
        raise Unavailable(f"cannot reach the agent of node {name} at {base}: {e}") from None
    if resp.status_code != 200:
        raise Unavailable(f"the agent of node {name} answered {resp.status_code}: {resp.text.strip()[:200]}")
    results = resp.json().get("Results") or []
    if len(results) != len(specs):
        raise Unavailable(f"the agent of node {name} answered {len(results)} probes of {len(specs)}")
    return list(results)


@router.post("/v1/internal/mesh/probe", openapi_extra=body(MeshProbeRequest))
async def probe(request: Request):
    """Run a server's probes on this node (its allocations' namespaces)."""
    agent = request.app.state.agent
    if agent.client is None:
        raise InvalidInput("this agent runs no client: mesh probes run on the node of the allocation")
    body = await json_body(request)
    probes = body.get("Probes") if isinstance(body, dict) else None
    if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        raise InvalidInput('the body must be {"Probes": [{"Kind": ..., "AllocID": ...}, ...]}')
    results = await run_in_threadpool(agent.mesh_probe, probes)
    return reply({"Results": results})
