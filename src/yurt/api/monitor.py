"""/v1/agent/monitor: the agent's log lines as they are written (Nomad's AgentMonitor,
command/agent/agent_endpoint.go), what `yurt monitor` and `nomad monitor` follow.

Query: `log_level` (trace, debug, info, warn, error; default info), `log_json` (hclog-style JSON
lines), `plain` (the text itself instead of frames), `log_include_location`, `node_id` (the
agent of that node: a server forwards there), `server_id` (this server's name, or "leader" on the
leader). The answer is Nomad's stream of frames, `{"Data": "<base64 of lines>"}` one per line,
with `{}` every `HEARTBEAT` seconds while the agent logs nothing; lines a slow reader lost are
reported in its stream. The lines come from the agent's `LogMonitor` (agent/log_monitor.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from yurt.errors import InvalidInput, NotFound

from .events import check_region
from .forward import proxy, to_server

router = APIRouter()

HEARTBEAT = 10.0
LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
          "WARNING": logging.WARNING, "ERROR": logging.ERROR}
PARAMS = ("log_level", "log_json", "plain", "log_include_location", "node_id", "server_id", "region")


def parse_level(raw: str) -> int:
    """A log level name (Nomad's: trace, debug, info, warn, error; any case) → its logging level."""
    level = LEVELS.get(raw.strip().upper())
    if level is None:
        raise InvalidInput(f'Unknown log level: "{raw}"; use one of trace, debug, info, warn, error')
    return level


def _bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "")
    if raw == "":
        return False
    value = raw.strip().lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise InvalidInput(f'Unknown option for {name}: "{raw}" (use true or false)')


async def _elsewhere(request: Request, node_id: str) -> Response | None:
    """Another node's agent: a server forwards to the HTTP address the node advertises; a
    client-only agent asks its server to. None: the node is this agent's own."""
    agent = request.app.state.agent
    if agent.server is None:
        return await to_server(request)
    matches = [n for n in agent.server.reads.nodes(node_id) if n.id.startswith(node_id)]
    if not matches:
        raise NotFound(f'node "{node_id}" not found: `yurt node status` lists the nodes')
    if len(matches) > 1:
        raise InvalidInput(f'node_id "{node_id}" matches {len(matches)} nodes; give more of its ID')
    node = matches[0]
    if node.id == agent.node_id:
        return None
    if not node.http_addr:
        raise NotFound(f"node {node.id[:8]} advertises no HTTP address to follow its agent's logs at")
    addr = node.http_addr if "://" in node.http_addr else f"http://{node.http_addr}"
    return await proxy(request, addr, params={"node_id": node.id})


def _check_server(request: Request, server_id: str) -> None:
    agent = request.app.state.agent
    cfg = agent.config
    if agent.server is None:
        raise InvalidInput(f'server_id "{server_id}": this agent is not a server; ask a server\'s agent, or '
                           'use node_id for a client')
    names = {cfg.name, f"{cfg.name}.{cfg.region}"}
    if server_id == "leader" and agent.server.is_leader():
        return
    if server_id not in names:
        raise InvalidInput(f'server_id "{server_id}": this agent is server "{cfg.name}"'
                           f'{" (the leader)" if agent.server.is_leader() else ""}; Yurt follows the logs of the '
                           'server it is asked, so ask that server\'s agent (-address)')


@router.get("/v1/agent/monitor")
async def agent_monitor(request: Request):
    q = request.query_params
    unknown = sorted(set(q) - set(PARAMS))
    if unknown:
        raise InvalidInput(f'unknown query parameter "{unknown[0]}" for /v1/agent/monitor; it takes '
                           f'{", ".join(PARAMS)}')
    check_region(request)
    level = parse_level(q.get("log_level") or "info")
    log_json, plain, location = _bool(request, "log_json"), _bool(request, "plain"), \
        _bool(request, "log_include_location")
    node_id, server_id = q.get("node_id", ""), q.get("server_id", "")
    if node_id and server_id:
        raise InvalidInput("Cannot target node and server simultaneously: give node_id or server_id")
    agent = request.app.state.agent
    if node_id and node_id != (agent.node_id or ""):
        forwarded = await _elsewhere(request, node_id)
        if forwarded is not None:
            return forwarded
    if server_id:
        _check_server(request, server_id)
    monitor = agent.log_monitor

    def frame(text: str) -> bytes:
        if plain:
            return text.encode()
        return json.dumps({"Data": base64.b64encode(text.encode()).decode()}).encode() + b"\n"

    async def stream() -> AsyncIterator[bytes]:
        sub = monitor.subscribe(level, log_json, location)
        try:
            if not plain:
                yield b"{}\n"
            while True:
                try:
                    line = await asyncio.wait_for(sub.queue.get(), HEARTBEAT)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    if not plain:
                        yield b"{}\n"
                    continue
                lines = [line]
                while not sub.queue.empty() and len(lines) < 256:
                    lines.append(sub.queue.get_nowait())
                if sub.dropped:
                    lines.append(f"[WARN] yurt.monitor: {sub.dropped} log lines were dropped: this monitor read "
                                 "them more slowly than the agent wrote them\n")
                    sub.dropped = 0
                yield frame("".join(lines))
        finally:
            monitor.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/plain" if plain else "application/json")
