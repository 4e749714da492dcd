"""Nomad's search: /v1/search (ID prefixes) and /v1/search/fuzzy (names containing a text).

`{"Prefix": "ab", "Context": "all"}` answers {"Matches": {"jobs": [...], "allocs": [...],
"nodes": [...], "evals": [...], "deployment": [...]}, "Truncations": {...}}, at most 20 per
context; `{"Text": "web", "Context": "all"}` matches job, group, task, service and node names
that contain the text, each with its scope ([namespace, job] ...), as Nomad's fuzzy search.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from yurt.errors import InvalidInput

from .authz import may_see_namespace
from .common import json_body, reply
from .forward import ServerReads
from .bodies import FuzzySearchRequest, SearchRequest
from .openapi import body

router = APIRouter()
LIMIT = 20
PREFIX_CONTEXTS = ("jobs", "allocs", "nodes", "evals", "deployment", "namespaces")
FUZZY_CONTEXTS = ("jobs", "groups", "tasks", "services", "nodes", "namespaces")


def _context(body: dict, allowed: tuple[str, ...]) -> list[str]:
    ctx = body.get("Context") or "all"
    if ctx == "all":
        return list(allowed)
    if ctx not in allowed:
        raise InvalidInput(f'Context "{ctx}" is not one of all, {", ".join(allowed)}')
    return [ctx]


async def _body(request: Request) -> dict:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def _namespace(request: Request, body: dict) -> str:
    """The namespace searched: ?namespace=, else the body's Namespace, else default; "*": all."""
    ns = request.query_params.get("namespace") or body.get("Namespace") or "default"
    return ns if isinstance(ns, str) else "default"


def _namespaces(request: Request, text: str, fuzzy: bool = False) -> list[str]:
    """The names of the namespaces the caller may see that start with (fuzzy: contain) `text`."""
    server = request.app.state.agent.server
    names = [n.name for n in server.namespaces.by_prefix("" if fuzzy else text)] if server is not None else ["default"]
    return [n for n in names if (text.lower() in n.lower() if fuzzy else n.startswith(text))
            and may_see_namespace(request, n)]


def _cut(found: list, matches: dict, truncations: dict, ctx: str) -> None:
    matches[ctx] = found[:LIMIT]
    truncations[ctx] = len(found) > LIMIT


@router.put("/v1/search", openapi_extra=body(SearchRequest))
@router.post("/v1/search", openapi_extra=body(SearchRequest))
async def search(request: Request, reads: ServerReads):
    body = await _body(request)
    prefix = body.get("Prefix")
    if not isinstance(prefix, str):
        raise InvalidInput('Prefix must be a string: {"Prefix": "<ID prefix>", "Context": "all"}')
    matches: dict[str, list] = {}
    truncations: dict[str, bool] = {}
    ns = _namespace(request, body)
    for ctx in _context(body, PREFIX_CONTEXTS):
        if ctx == "jobs":
            found = [j.id for j in reads.jobs(ns, prefix)]
        elif ctx == "allocs":
            found = [a.id for a in reads.allocs(prefix, ns)]
        elif ctx == "nodes":
            found = [n.id for n in reads.nodes(prefix)]
        elif ctx == "evals":
            found = [e.id for e in reads.evals(prefix, ns)]
        elif ctx == "deployment":
            found = [d.id for d in reads.deployments(ns, prefix)]
        else:
            found = _namespaces(request, prefix)
        _cut(sorted(found), matches, truncations, ctx)
    return reply({"Matches": matches, "Truncations": truncations}, reads.index())


@router.put("/v1/search/fuzzy", openapi_extra=body(FuzzySearchRequest))
@router.post("/v1/search/fuzzy", openapi_extra=body(FuzzySearchRequest))
async def fuzzy(request: Request, reads: ServerReads):
    body = await _body(request)
    text = body.get("Text")
    if not isinstance(text, str) or len(text) < 2:
        raise InvalidInput('Text must be a string of at least 2 characters: {"Text": "web", "Context": "all"}')
    want = text.lower()
    found: dict[str, list[dict]] = {c: [] for c in FUZZY_CONTEXTS}
    for job in reads.jobs(_namespace(request, body), ""):
        ns = job.namespace or "default"
        if want in job.id.lower():
            found["jobs"].append({"ID": job.id, "Scope": [ns]})
        for g in job.task_groups or []:
            if want in g.name.lower():
                found["groups"].append({"ID": g.name, "Scope": [ns, job.id]})
            for s in g.services or []:
                if s.name and want in s.name.lower():
                    found["services"].append({"ID": s.name, "Scope": [ns, job.id, g.name]})
            for t in g.tasks or []:
                if want in t.name.lower():
                    found["tasks"].append({"ID": t.name, "Scope": [ns, job.id, g.name]})
    for node in reads.nodes(""):
        if want in node.name.lower():
            found["nodes"].append({"ID": node.name, "Scope": [node.id]})
    found["namespaces"] = [{"ID": n, "Scope": []} for n in _namespaces(request, want, fuzzy=True)]
    matches: dict[str, list] = {}
    truncations: dict[str, bool] = {}
    for ctx in _context(body, FUZZY_CONTEXTS):
        _cut(found[ctx], matches, truncations, ctx)
    return reply({"Matches": matches, "Truncations": truncations}, reads.index())
