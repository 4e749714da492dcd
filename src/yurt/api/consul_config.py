"""Consul's config entries (/v1/config...) and the sidecar's compiled view of one service
(`/v1/agent/connect/chain/<service>`). The store, the checks and the compilation are
`Server.config_entries`' (server/config_entries.py); here: the HTTP shapes, `?cas`, blocking
queries, and the subset filters checked with the same `?filter=` grammar the sidecar asks the
catalog with."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from yurt.errors import InvalidInput
from yurt.server.config_entries import check_kind

from .common import json_body, query_index, wait_seconds
from .consul_common import agent_of, cblock, consul_route, consul_router, creply, reads_of
from .consul_filter import compile_filter
from .openapi import body

router = consul_router()
# what a chain is compiled from: the entries, the intentions, and the protocols that sidecars'
# registrations and jobs declare
CHAIN_TABLES = ("config_entries", "intentions", "jobs", "services")

CONFIG_BODY = body({"type": "object", "required": ["Kind", "Name"], "additionalProperties": True, "properties": {
    "Kind": {"type": "string", "enum": ["service-defaults", "proxy-defaults", "service-router", "service-splitter",
                                        "service-resolver", "service-intentions", "ingress-gateway",
                                        "terminating-gateway", "mesh"]},
    "Name": {"type": "string", "description": 'the service (proxy-defaults: "global")'},
    "Protocol": {"type": "string", "enum": ["tcp", "http"], "description": "service-defaults"},
    "Config": {"type": "object", "description": 'proxy-defaults: {"protocol": "http"}'},
    "Routes": {"type": "array", "items": {"type": "object"}, "description": "service-router"},
    "Splits": {"type": "array", "items": {"type": "object"}, "description": "service-splitter"},
    "Subsets": {"type": "object", "description": "service-resolver"},
    "Sources": {"type": "array", "items": {"type": "object"}, "description": "service-intentions"},
    "Listeners": {"type": "array", "items": {"type": "object"}, "description": "ingress-gateway"},
    "Services": {"type": "array", "items": {"type": "object"}, "description": "terminating-gateway"},
    "TransparentProxy": {"type": "object", "description": 'mesh: {"MeshDestinationsOnly": true}'},
    "Meta": {"type": "object", "additionalProperties": {"type": "string"}}}},
    description="a config entry in Consul's shape (CamelCase or snake_case keys)")


def _entries(request: Request):
    return agent_of(request).server.config_entries


def _cas(request: Request) -> int | None:
    raw = request.query_params.get("cas")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 63:
        raise InvalidInput(f'invalid ?cas="{raw}": the entry\'s ModifyIndex (0: create only), a whole number')
    return value


def _check_filters(raw: Any) -> None:
    """A resolver's subset filters, in the `?filter=` grammar (a bad one: 400 naming it)."""
    if not isinstance(raw, dict):
        return
    subsets = raw.get("Subsets", raw.get("subsets"))
    if not isinstance(subsets, dict):
        return
    for name, sub in subsets.items():
        if isinstance(sub, dict):
            expr = sub.get("Filter", sub.get("filter"))
            if isinstance(expr, str) and expr.strip():
                try:
                    compile_filter(expr)
                except InvalidInput as e:
                    raise InvalidInput(f'service-resolver: Subsets "{name}": Filter: {e}') from None


@router.put("/v1/config", openapi_extra=CONFIG_BODY)
@consul_route
async def apply_entry(request: Request):
    raw = await json_body(request)
    _check_filters(raw)
    ok, index = _entries(request).apply(raw, _cas(request))
    return creply(request, ok, index)


@router.get("/v1/config/{kind}")
@consul_route
async def list_entries(request: Request, kind: str):
    entries = _entries(request)
    check_kind(kind)   # an unknown kind: 400 before any wait
    index = await cblock(request, entries.tables(kind))
    return creply(request, entries.of_kind(kind), index)


@router.get("/v1/config/{kind}/{name}")
@consul_route
async def get_entry(request: Request, kind: str, name: str):
    entries = _entries(request)
    check_kind(kind)
    index = await cblock(request, entries.tables(kind))
    return creply(request, entries.get(kind, name), index)


@router.delete("/v1/config/{kind}/{name}")
@consul_route
async def delete_entry(request: Request, kind: str, name: str):
    ok, index = _entries(request).delete(kind, name, _cas(request))
    return creply(request, ok, index)


@router.get("/v1/agent/connect/chain/{service}")
@consul_route
async def chain(request: Request, service: str):
    """Yurt's own: what a sidecar needs about `service` (protocol, intentions, routes, splits,
    targets), blocking on everything it is compiled from."""
    entries = _entries(request)
    reads = reads_of(request)
    since, wait = query_index(request), wait_seconds(request)
    if since <= 0 or reads.current(CHAIN_TABLES) > since:   # the caller is behind: answer now
        return creply(request, entries.chain(service), max(reads.current(CHAIN_TABLES), 1))
    # the caller holds the chain as of now: wait until it changes, not merely its tables (a
    # registration or a job's status moves them often; every sidecar asking again for the same
    # chain each time would be a storm)
    before = entries.chain(service)
    deadline = time.monotonic() + wait
    while True:
        index = await reads.block(CHAIN_TABLES, since, max(0.0, deadline - time.monotonic()))
        chain = entries.chain(service)
        if chain != before or time.monotonic() >= deadline or index <= since:
            return creply(request, chain, index)
        since = index
