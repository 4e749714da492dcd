"""/v1/agent/self, /v1/agent/health, /v1/agent/members, /v1/status/leader, /v1/regions.

On the Consul-shaped listener (ports { consul }), /v1/agent/self and /v1/status/* answer as
Consul's; on the HTTP port, as Nomad's."""

from __future__ import annotations

from fastapi import APIRouter, Request

from yurt import __version__

from .common import reply
from .forward import ToServer

router = APIRouter()


CONSUL_SERVER_PORT = 8300   # Consul's server RPC port: what its /v1/status/* name (Yurt has no RPC port)


def consul_listener(request: Request) -> bool:
    """The request came in on the Consul-shaped listener (ports { consul })."""
    port = request.app.state.agent.config.consul_listener
    server = request.scope.get("server")
    return bool(port) and isinstance(server, (tuple, list)) and len(server) > 1 and server[1] == port


def _consul_self(request: Request):
    """Consul's /v1/agent/self: Config, Member, Stats, Meta (what Consul clients read:
    Config.NodeName, Config.Datacenter, Stats.consul.leader_addr, Member.Addr...)."""
    agent = request.app.state.agent
    cfg = agent.config
    leading = agent.server is not None and agent.server.is_leader()
    servers = _servers(request) if agent.server is not None else []
    leader_addr = next((f"{m['Addr']}:{CONSUL_SERVER_PORT}" for m in servers if m["Leader"]), "")
    return reply({
        "Config": {"Datacenter": cfg.datacenter, "PrimaryDatacenter": cfg.datacenter, "NodeName": cfg.name,
                   "NodeID": agent.node_id or "", "Revision": "", "Server": agent.server is not None,
                   "Version": __version__, "BuildDate": ""},
        "DebugConfig": {},
        "Coord": None,
        "Member": {"Name": cfg.name, "Addr": cfg.http_host or cfg.node_ip or "127.0.0.1", "Port": 8301,
                   "Tags": {"dc": cfg.datacenter, "role": "consul" if agent.server else "node",
                            "build": __version__, "id": agent.node_id or ""},
                   "Status": 1},
        "Stats": {"agent": {"checks": "0", "services": "0"},
                  "consul": {"server": str(agent.server is not None).lower(), "leader": str(leading).lower(),
                             "leader_addr": leader_addr, "known_datacenters": "1", "bootstrap": "false"},
                  "runtime": {"version": "python"}},
        "Meta": {},
        "xDS": None})


@router.get("/v1/agent/self")
async def agent_self(request: Request):
    if consul_listener(request):
        return _consul_self(request)
    agent = request.app.state.agent
    cfg = agent.config
    member = {"Name": cfg.name, "Addr": cfg.http_host, "Port": cfg.http_port, "Status": "alive",
              "Tags": {"region": cfg.region, "dc": cfg.datacenter, "build": __version__,
                       "role": "nomad" if agent.server else "client"}}
    return reply({"config": cfg.public(), "member": member,
                  "stats": {"nomad": {"server": str(agent.server is not None).lower(),
                                      "leader": str(agent.server is not None and agent.server.is_leader()).lower(),
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


def _servers(request: Request) -> list[dict]:
    """Every server as `/v1/agent/members` lists it (Nomad's shape, plus Leader and HTTPAddr)."""
    agent = request.app.state.agent
    cfg = agent.config
    server = agent.server
    if server is not None and server.ha:
        members = server.members()
    else:   # one server: this agent
        members = [{**agent.member_info(), "Leader": True, "Status": "alive"}]
    return [{"Name": f"{m['Name']}.{m.get('Region', cfg.region)}", "Addr": m.get("Addr", ""),
             "Port": m.get("Port", 0), "Status": m["Status"], "Leader": m["Leader"],
             "HTTPAddr": m.get("HTTPAddr", ""),
             "Tags": {"role": "nomad", "region": m.get("Region", cfg.region), "dc": m.get("Datacenter", ""),
                      "build": m.get("Build", ""), "port": str(m.get("Port", "")),
                      "leader": str(m["Leader"]).lower()}}
            for m in members]


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


@router.get("/v1/agent/servers")
async def agent_servers(request: Request):
    """The servers this agent talks to (Nomad: the client's server list), host:port each; on a
    server agent, every live server."""
    agent = request.app.state.agent
    if agent.client is None and agent.server is not None:
        return reply([f"{m['Addr']}:{m['Port']}" for m in _servers(request) if m["Status"] == "alive"])
    return reply([_hostport(a) for a in (agent.api_client.addresses if agent.api_client else [])])


@router.put("/v1/agent/servers")
@router.post("/v1/agent/servers")
async def set_agent_servers(request: Request):
    """?address=host:port (repeated): the servers this agent's client talks to from now on."""
    from yurt.errors import InvalidInput
    agent = request.app.state.agent
    addresses = request.query_params.getlist("address")
    if not addresses:
        raise InvalidInput("missing server address: PUT /v1/agent/servers?address=host:port[&address=...]")
    if agent.client is None or agent.api_client is None or agent.server is not None:
        raise InvalidInput("this agent's servers are not configurable: only a client-only agent has a server list")
    for a in addresses:
        host, _, port = _hostport(a).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f'server address "{a}" is not host:port')
    scheme = "https" if agent.config.tls.http else "http"
    agent.api_client.set_addresses([a if "://" in a else f"{scheme}://{a}" for a in addresses])
    return reply(None)


CONSUL_LAN_PORT = 8301   # the port Consul's members show (its Serf LAN port)


def _consul_members(request: Request) -> list[dict]:
    """Consul's /v1/agent/members: the servers (role consul) and the client nodes (role node),
    Status 1 alive, 4 failed; Consul's protocol fields as a current agent reports them."""
    agent = request.app.state.agent
    cfg = agent.config
    proto = {"ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5,
             "DelegateCur": 4}
    out: dict[str, dict] = {}
    for m in _servers(request):
        name = m["Name"].rsplit(".", 1)[0]
        out[name] = {"Name": name, "Addr": m["Addr"], "Port": CONSUL_LAN_PORT,
                     "Tags": {"role": "consul", "dc": m["Tags"]["dc"] or cfg.datacenter,
                              "port": str(CONSUL_SERVER_PORT), "build": m["Tags"]["build"]},
                     "Status": 1 if m["Status"] == "alive" else 4, **proto}
    for n in agent.server.reads.nodes():
        if n.name in out:
            continue
        out[n.name] = {"Name": n.name, "Addr": n.attributes.get("unique.network.ip-address", ""),
                       "Port": CONSUL_LAN_PORT, "Tags": {"role": "node", "dc": n.datacenter},
                       "Status": 4 if n.status == "down" else 1, **proto}
    return [out[k] for k in sorted(out)]


@router.get("/v1/agent/members")
async def agent_members(request: Request):
    agent = request.app.state.agent
    if agent.server is None:
        raise ToServer()
    if consul_listener(request):
        return reply(_consul_members(request))
    cfg = agent.config
    return reply({"ServerName": cfg.name, "ServerRegion": cfg.region, "ServerDC": cfg.datacenter,
                  "Members": _servers(request)})


@router.get("/v1/status/leader")
async def leader(request: Request):
    """The leader's address (host:port of its HTTP API; "" while no server leads)."""
    if request.app.state.agent.server is None:
        raise ToServer()
    port = CONSUL_SERVER_PORT if consul_listener(request) else None
    return reply(next((f"{m['Addr']}:{port or m['Port']}" for m in _servers(request) if m["Leader"]), ""))


@router.get("/v1/status/peers")
async def peers(request: Request):
    """Every live server's address."""
    if request.app.state.agent.server is None:
        raise ToServer()
    port = CONSUL_SERVER_PORT if consul_listener(request) else None
    return reply([f"{m['Addr']}:{port or m['Port']}" for m in _servers(request) if m["Status"] == "alive"])


@router.get("/v1/regions")
async def regions(request: Request):
    return reply([request.app.state.agent.config.region])
