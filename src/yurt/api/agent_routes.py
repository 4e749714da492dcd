"""/v1/agent/self, /v1/agent/health, /v1/agent/members, /v1/status/leader, /v1/regions."""

from __future__ import annotations

from fastapi import APIRouter, Request

from yurt import __version__

from .common import reply

router = APIRouter()


@router.get("/v1/agent/self")
async def agent_self(request: Request):
    agent = request.app.state.agent
    cfg = agent.config
    member = {"Name": cfg.name, "Addr": cfg.http_host, "Port": cfg.http_port, "Status": "alive",
              "Tags": {"region": cfg.region, "dc": cfg.datacenter, "build": __version__,
                       "role": "nomad" if agent.server else "client"}}
    return reply({"config": cfg.public(), "member": member,
                  "stats": {"nomad": {"server": str(agent.server is not None).lower(),
                                      "leader": str(agent.server is not None).lower(),
                                      "version": __version__},
                            "client": {"node_id": agent.node_id or ""},
                            "broker": agent.server.broker.stats() if agent.server else {}}})


@router.get("/v1/agent/health")
async def agent_health(request: Request):
    agent = request.app.state.agent
    body = {}
    if agent.server is not None:
        body["server"] = {"ok": True, "message": "ok"}
    if agent.client is not None:
        body["client"] = {"ok": agent.client.registered(), "message": "ok" if agent.client.registered()
                          else "not yet registered with a server"}
    ok = all(v["ok"] for v in body.values())
    return reply(body, status=200 if ok else 500)


@router.get("/v1/agent/members")
async def agent_members(request: Request):
    cfg = request.app.state.agent.config
    return reply({"ServerName": cfg.name, "ServerRegion": cfg.region, "ServerDC": cfg.datacenter,
                  "Members": [{"Name": f"{cfg.name}.{cfg.region}", "Addr": cfg.http_host, "Port": 4648,
                               "Status": "alive", "Tags": {"region": cfg.region, "dc": cfg.datacenter}}]})


@router.get("/v1/status/leader")
async def leader(request: Request):
    cfg = request.app.state.agent.config
    return reply(f"{cfg.http_host}:4647")


@router.get("/v1/status/peers")
async def peers(request: Request):
    cfg = request.app.state.agent.config
    return reply([f"{cfg.http_host}:4647"])


@router.get("/v1/regions")
async def regions(request: Request):
    return reply([request.app.state.agent.config.region])
