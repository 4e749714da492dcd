"""Consul's catalog, health and agent-service routes.

/v1/agent/service/register|deregister, /v1/agent/services, /v1/agent/service/<id>,
/v1/agent/checks, /v1/agent/check/pass|warn|fail|update/<id>, /v1/catalog/services,
/v1/catalog/service/<name>, /v1/catalog/connect/<name>, /v1/health/service/<name>,
/v1/health/connect/<name>, /v1/health/checks/<name>, /v1/health/state/<state>.
Reads are blocking queries on the "services" and "catalog_nodes" tables (?index=&wait=) and always send
X-Consul-Index. On a client-only agent everything goes to the server; the agent endpoints add
this agent's node so the server knows whose services they are.
"""

from __future__ import annotations

import json

from fastapi import Request

from yurt.errors import InvalidInput, NotFound

from .common import flag, json_body, json_object
from .consul_filter import apply as filtered
from .consul_common import agent_of, cblock, consul_route, consul_router, creply, local_node, node_key, reads_of
from .forward import to_server
from . import bodies as b
from .openapi import body

CATALOG = ("services", "catalog_nodes")   # the tables the catalog's answers come from
GATEWAYS = (*CATALOG, "config_entries")   # what a gateway carries: its config entry, else its registration

router = consul_router()
_CHECK_UPDATE = body(b.CheckUpdateRequest, required=False,
                     description="update only; pass, warn and fail take ?note=")


def _catalog(request: Request):
    return agent_of(request).server.catalog


# -- agent: local services and checks --------------------------------------------------------

@router.put("/v1/agent/service/register", openapi_extra=body(b.AgentServiceRegistration))
@consul_route(forward=False)
async def register(request: Request):
    body = await json_body(request)
    node_id, node, address = local_node(request)
    if agent_of(request).server is None:
        if isinstance(body, dict):
            body = {"NodeID": node_id, "Node": node, "NodeAddress": address, **body}
        return await to_server(request, json.dumps(body).encode())
    services = _catalog(request).register(body, node_id, node, address)
    return creply(request, None, services[-1].modify_index)


@router.put("/v1/agent/service/deregister/{service_id}")
@router.get("/v1/agent/service/deregister/{service_id}")  # python-consul 0.x used GET
@consul_route(forward=False)
async def deregister(request: Request, service_id: str):
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    index = _catalog(request).deregister(node_key(request), service_id)
    return creply(request, None, index)


@router.get("/v1/agent/services")
@consul_route(forward=False)
async def agent_services(request: Request):
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    reads = reads_of(request)
    rows = reads.services_by_node(node_key(request))
    return creply(request, filtered(request.query_params.get("filter"), {s.id: s.agent_view() for s in rows}),
                  reads.table_index(CATALOG))


@router.get("/v1/agent/service/{service_id}")
@consul_route(forward=False)
async def agent_service(request: Request, service_id: str):
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    index = await cblock(request, CATALOG)
    svc = reads_of(request).service(node_key(request), service_id)
    if svc is None:
        raise NotFound(f'unknown service ID "{service_id}"')
    return creply(request, svc.agent_json(), index)


@router.get("/v1/agent/checks")
@consul_route(forward=False)
async def agent_checks(request: Request):
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    cat, reads = _catalog(request), reads_of(request)
    key = node_key(request)
    checks = {c.check_id: c.public() for c in cat.node_level_checks(key)}
    checks.update({c.check_id: c.public() for s in reads.services_by_node(key) for c in cat.checks_of(s)})
    return creply(request, checks, reads.table_index(CATALOG))


async def _set_check(request: Request, check_id: str, status: str, output: str | None):
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    check = _catalog(request).update_check(node_key(request), check_id, status, output)
    return creply(request, None, check.modify_index)


@router.put("/v1/agent/check/register", openapi_extra=body(b.CheckDefinition))
@consul_route(forward=False)
async def check_register(request: Request):
    body = await json_body(request)
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    node_id, name, _ = local_node(request)
    check = _catalog(request).register_check(node_id or name, body, name)
    return creply(request, None, check.modify_index)


@router.put("/v1/agent/check/deregister/{check_id:path}")
@consul_route(forward=False)
async def check_deregister(request: Request, check_id: str):
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    index = _catalog(request).deregister_check(node_key(request), check_id)
    if index is None:
        raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
    return creply(request, None, index)


@router.put("/v1/agent/check/{verb}/{check_id:path}", openapi_extra=_CHECK_UPDATE)
@consul_route(forward=False)
async def check_ttl(request: Request, verb: str, check_id: str):
    """pass|warn|fail with ?note=, or update with {"Status", "Output"}: how the client's check
    runner reports results."""
    if verb == "update":
        body = await json_object(request)
        return await _set_check(request, check_id, str(body.get("Status", "")).lower(), body.get("Output"))
    if verb not in ("pass", "warn", "fail"):
        raise NotFound(f"unknown check operation {verb!r}: use pass, warn, fail or update")
    return await _set_check(request, check_id, verb, request.query_params.get("note", ""))


@router.put("/v1/agent/service/maintenance/{service_id}")
@consul_route(forward=False)
async def service_maintenance(request: Request, service_id: str):
    """?enable=true|false&reason=...: Consul's maintenance mode for one of this agent's services."""
    raw = request.query_params.get("enable")
    if raw not in ("true", "false"):
        raise InvalidInput('enable must be "true" or "false": PUT /v1/agent/service/maintenance/<id>?enable=true'
                           '&reason=...')
    if agent_of(request).server is None:
        return await to_server(request, params={"node": node_key(request)})
    index = _catalog(request).set_maintenance(node_key(request), service_id, raw == "true",
                                              request.query_params.get("reason", ""))
    return creply(request, None, index)


# -- catalog ---------------------------------------------------------------------------------

@router.put("/v1/catalog/register", openapi_extra=body(b.CatalogRegistration))
@consul_route
async def catalog_register(request: Request):
    index = _catalog(request).catalog_register(await json_body(request))
    return creply(request, True, index)


@router.put("/v1/catalog/deregister", openapi_extra=body(b.CatalogDeregistration))
@consul_route
async def catalog_deregister(request: Request):
    index = _catalog(request).catalog_deregister(await json_body(request))
    return creply(request, True, index)


@router.get("/v1/catalog/datacenters")
@consul_route
async def catalog_datacenters(request: Request):
    return creply(request, [_catalog(request).datacenter])


@router.get("/v1/catalog/nodes")
@consul_route
async def catalog_nodes(request: Request):
    index = await cblock(request, CATALOG)
    return creply(request, filtered(request.query_params.get("filter"), _catalog(request).nodes()), index)


@router.get("/v1/catalog/node/{name}")
@consul_route
async def catalog_node(request: Request, name: str):
    index = await cblock(request, CATALOG)
    found = _catalog(request).node_services(name)
    if found is None:
        return creply(request, None, index)   # Consul answers null for an unknown node
    row, services = found
    return creply(request, {"Node": row, "Services": {s.id: s.agent_json() for s in services}}, index)


@router.get("/v1/health/ingress/{name}")
@consul_route
async def health_ingress(request: Request, name: str):
    """The ingress gateways with a listener for `name` ([] when none exposes it, as Consul)."""
    index = await cblock(request, GATEWAYS)
    cat = _catalog(request)
    return creply(request, [cat.health_entry(s) for s in cat.ingress_gateways(name, _passing(request))], index)


@router.get("/v1/catalog/gateway-services/{gateway}")
@consul_route
async def catalog_gateway_services(request: Request, gateway: str):
    """The services a gateway is configured for (from its instances' config entry)."""
    index = await cblock(request, GATEWAYS)
    return creply(request, _catalog(request).gateway_services(gateway), index)


@router.get("/v1/health/node/{name}")
@consul_route
async def health_node(request: Request, name: str):
    index = await cblock(request, CATALOG)
    return creply(request, filtered(request.query_params.get("filter"), _catalog(request).node_checks(name) or []),
                  index)


@router.get("/v1/catalog/services")
@consul_route
async def catalog_services(request: Request):
    index = await cblock(request, CATALOG)
    return creply(request, _catalog(request).service_map(), index)


@router.get("/v1/catalog/service/{name}")
@consul_route
async def catalog_service(request: Request, name: str):
    index = await cblock(request, CATALOG)
    cat = _catalog(request)
    rows = cat.instances(name, request.query_params.get("tag"))
    return creply(request, filtered(request.query_params.get("filter"), [cat.catalog_entry(s) for s in rows]),
                  index)


@router.get("/v1/catalog/connect/{name}")
@consul_route
async def catalog_connect(request: Request, name: str):
    index = await cblock(request, CATALOG)
    cat = _catalog(request)
    rows = cat.instances(name, request.query_params.get("tag"), connect=True)
    return creply(request, [cat.catalog_entry(s) for s in rows], index)


# -- health ----------------------------------------------------------------------------------

def _passing(request: Request) -> bool:
    return "passing" in request.query_params and (
        request.query_params["passing"] == "" or flag(request, "passing"))


@router.get("/v1/health/service/{name}")
@consul_route
async def health_service(request: Request, name: str):
    _no_peer(request)
    index = await cblock(request, CATALOG)
    cat = _catalog(request)
    rows = cat.instances(name, request.query_params.get("tag"), passing=_passing(request))
    return creply(request, filtered(request.query_params.get("filter"), [cat.health_entry(s) for s in rows]),
                  index)


def _no_peer(request: Request) -> None:
    if request.query_params.get("peer"):
        raise InvalidInput(f'peer "{request.query_params["peer"]}": Yurt has no cluster peering; drop ?peer= '
                           "to ask this cluster's catalog")


@router.get("/v1/health/connect/{name}")
@consul_route
async def health_connect(request: Request, name: str):
    """The mesh endpoints of `name`: its sidecars (and Connect-native instances). Proxies use
    this, with ?passing, to find where to dial."""
    index = await cblock(request, CATALOG)
    cat = _catalog(request)
    rows = cat.instances(name, request.query_params.get("tag"), connect=True, passing=_passing(request))
    return creply(request, filtered(request.query_params.get("filter"), [cat.health_entry(s) for s in rows]),
                  index)


@router.get("/v1/health/checks/{name}")
@consul_route
async def health_checks(request: Request, name: str):
    index = await cblock(request, CATALOG)
    return creply(request, filtered(request.query_params.get("filter"), _catalog(request).checks_for_service(name)),
                  index)


@router.get("/v1/health/state/{state}")
@consul_route
async def health_state(request: Request, state: str):
    index = await cblock(request, CATALOG)
    return creply(request, filtered(request.query_params.get("filter"), _catalog(request).checks_in_state(state)),
                  index)
