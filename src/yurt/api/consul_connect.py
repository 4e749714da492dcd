"""Consul's Connect CA and agent connect routes.

GET /v1/connect/ca/roots (?pem=true), GET /v1/agent/connect/ca/roots, GET|PUT
/v1/connect/ca/configuration, GET /v1/agent/connect/ca/leaf/<service> (blocking: returns when a
new certificate is issued; with a workload identity token only for one of its services), POST
/v1/agent/connect/authorize, GET /v1/agent/connect/virtual-ips (blocking), and the client
agents' side door PUT /v1/internal/connect/ca/sign
{CSR, Service} (a node's SecretID required).
"""

from __future__ import annotations

import asyncio
import hmac
import re

from fastapi import Request
from fastapi.responses import Response

from yurt.errors import InvalidInput, PermissionDenied
from yurt.server import intentions as ixmod
from yurt.server.identity import group_services
from yurt.structs import Intention, parse_service_uri
from yurt.structs.connect import leaf_key, service_name_problem

from .common import json_body, json_object, query_index, wait_seconds
from .consul_common import (agent_of, cblock, consul_route, consul_router, creply, headers)
from .bodies import CAConfigRequest, CASignRequest, ConnectAuthorizeRequest
from .openapi import body

router = consul_router()


def _ca(request: Request):
    return agent_of(request).server.ca


# -- virtual IPs -------------------------------------------------------------------------------

@router.get("/v1/agent/connect/virtual-ips")
@consul_route
async def virtual_ips(request: Request):
    """Every Connect service's virtual IP and the range they come from (`{"CIDR": "240.0.0.0/4",
    "Services": {"count-api": "240.0.0.1"}}`), a blocking query on the table: what a
    transparent proxy maps an original destination back to a service with."""
    index = await cblock(request, "virtual_ips")
    vips = agent_of(request).server.virtual_ips
    return creply(request, {"CIDR": str(vips.network), "Services": dict(sorted(vips.table().items()))}, index)


# -- roots and configuration -------------------------------------------------------------------

@router.get("/v1/connect/ca/roots")
@router.get("/v1/agent/connect/ca/roots")
@consul_route
async def ca_roots(request: Request):
    index = await cblock(request, "ca")
    roots = _ca(request).roots()
    if request.query_params.get("pem", "").lower() in ("1", "true"):
        pem = "".join(r["RootCert"] + "".join(r["IntermediateCerts"] or []) for r in roots["Roots"])
        return Response(pem, media_type="application/pem-certificate-chain", headers=headers(request, index))
    return creply(request, roots, index)


@router.get("/v1/connect/ca/configuration")
@consul_route
async def ca_config(request: Request):
    index = await cblock(request, "ca")
    return creply(request, _ca(request).configuration(), index)


@router.put("/v1/connect/ca/configuration", openapi_extra=body(CAConfigRequest))
@consul_route
async def ca_set_config(request: Request):
    """A changed key (`Config.PrivateKey`) or `Config.ForceRotation: true` rotates the root,
    cross-signed by the old one. Other `Config` keys (LeafCertTTL ...) just apply."""
    body = await json_object(request)
    state = await asyncio.to_thread(_ca(request).set_configuration, body)
    return creply(request, None, state.modify_index)


@router.put("/v1/internal/connect/ca/sign", openapi_extra=body(CASignRequest))
@consul_route
async def ca_sign(request: Request):
    """A client-only agent has its CSR signed here (the key stays on the client); only for a
    caller presenting a registered node's SecretID (X-Nomad-Token or X-Consul-Token)."""
    token = _token(request)
    if not token:
        raise PermissionDenied("signing a certificate needs a node's SecretID in the X-Nomad-Token header; "
                               "none was given")
    reads = agent_of(request).server.reads
    node = next((n for n in reads.nodes()
                 if n.secret_id and hmac.compare_digest(n.secret_id.encode(), token.encode())), None)
    if node is None:
        raise PermissionDenied("signing a certificate needs a node's SecretID in the X-Nomad-Token header; "
                               "the token given is not one")
    # a node has certificates signed only for the services of the allocations it runs
    allowed = {svc for a in reads.node_allocs(node.id) if not a.terminal() and a.job is not None
               for svc in group_services(a.job, a.task_group)}
    body = await json_object(request)
    cert = await asyncio.to_thread(_ca(request).sign, str(body.get("CSR", "")), body.get("Service") or None,
                                   allowed, f'node "{node.name}"')
    return creply(request, cert.to_json(), cert.modify_index)


# -- leaf certificates ------------------------------------------------------------------------

@router.get("/v1/agent/connect/ca/leaf/{service}")
@consul_route(forward=False)
async def leaf(request: Request, service: str):
    """This agent's certificate for `service` (made on demand; key generated here). With
    ?index=N it waits until a certificate newer than N is issued (renewal or root rotation)."""
    if service_name_problem(service):
        raise InvalidInput(service_name_problem(service))
    leafs = agent_of(request).leaf_certs
    await asyncio.to_thread(leafs.check_identity, service, _token(request))
    index = query_index(request)
    # Yurt's extension for ingress gateways (Consul adds them from the gateway's config entry):
    # ?dns_san=a.example.com,b.example.com adds those DNS SANs, for TLS at the edge
    dns = [d for d in request.query_params.get("dns_san", "").split(",") if d.strip()]
    for d in dns:
        if not _DNS_SAN.fullmatch(d.strip()):
            raise InvalidInput(f'dns_san "{d}" is not a DNS name: give names like api.example.com '
                               "or *.example.com, separated by commas")
    cert = await leafs.wait(leaf_key(service, dns), index, wait_seconds(request) if index else 0)
    return creply(request, cert, cert["ModifyIndex"])


_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_DNS_SAN = re.compile(rf"(\*\.)?({_LABEL}\.)*{_LABEL}")


def _token(request: Request) -> str:
    """X-Consul-Token, else X-Nomad-Token, else `Authorization: Bearer <token>`."""
    for name in ("X-Consul-Token", "X-Nomad-Token"):
        token = request.headers.get(name, "").strip()
        if token:
            return token
    scheme, _, rest = request.headers.get("Authorization", "").strip().partition(" ")
    return rest.strip().split(" ")[0] if scheme.lower() == "bearer" else ""


# -- authorize -------------------------------------------------------------------------------

@router.post("/v1/agent/connect/authorize", openapi_extra=body(ConnectAuthorizeRequest))
@router.put("/v1/agent/connect/authorize", openapi_extra=body(ConnectAuthorizeRequest))
@consul_route(forward=False)
async def authorize(request: Request):
    """May the holder of `ClientCertURI` connect to `Target`? Decided by the intentions that
    match Target and this agent's default policy. The caller has verified the certificate."""
    body = await json_body(request)
    target = body.get("Target") if isinstance(body, dict) else None
    if not target:
        raise InvalidInput("Target service must be specified")
    uri = str(body.get("ClientCertURI") or "")
    sid = parse_service_uri(uri)
    if sid is None:
        raise InvalidInput(f'ClientCertURI "{uri}" is not a service SPIFFE ID '
                           "(spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>)")
    agent = agent_of(request)
    default_allow = (agent.config.default_intention_policy or "allow") != "deny"
    if agent.server is not None:
        matching = agent.server.intentions.match("destination", target)
        index = agent.server.reads.table_index("intentions")
    else:
        found, index = await asyncio.to_thread(agent.api_client.intention_match, target)
        matching = [Intention.model_validate(i) for i in found]
    allowed, reason = ixmod.decide(matching, sid.service, target, default_allow)
    return creply(request, {"Authorized": allowed, "Reason": reason}, index)
