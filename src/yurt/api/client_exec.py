"""Nomad's `alloc exec`: the websocket /v1/client/allocation/<id>/exec.

Query parameters `task`, `tty` (true/false) and `command` (a JSON array). Frames, as Nomad's
(JSON text messages): from the caller `{"stdin":{"data":"<base64>"}}`, `{"stdin":{"close":true}}`,
`{"tty_size":{"height":h,"width":w}}`; to it `{"stdout":{"data":...}}`, `{"stderr":{"data":...}}`
and at the end `{"exited":true,"result":{"exit_code":N}}`. An error closes the websocket with
code 1008 (1011 for a fault here) and the message as its reason, as Nomad's does.

The agent that runs the allocation runs the command; another agent relays the websocket to it
(a client-only agent through its server, a server to the allocation's node's agent), with the
caller's token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from yurt.errors import InvalidInput, NotFound, Unavailable, YurtError

from . import authz
from .forward import HOP, TOKEN_HEADERS

PATH = "/v1/client/allocation/{alloc_id}/exec"
POLICY, INTERNAL = 1008, 1011
REASON_MAX = 123   # a close frame's reason is at most 123 bytes


async def _close(ws: WebSocket, code: int, message: str) -> None:
    reason = message.encode()[:REASON_MAX].decode(errors="ignore")
    try:
        if ws.client_state.name == "CONNECTING":
            await ws.accept()
        await ws.close(code, reason)
    except (RuntimeError, WebSocketDisconnect):
        pass


def _command(ws: WebSocket) -> list[str]:
    raw = ws.query_params.get("command", "")
    try:
        command = json.loads(raw) if raw else None
    except ValueError:
        command = None
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise InvalidInput('command must be a non-empty JSON array of strings, as ["/bin/sh", "-c", "ls"]')
    return command


def _target(ws: WebSocket, alloc_id: str) -> str:
    """The agent to relay to: this agent's server, or the allocation's node's agent."""
    agent = ws.app.state.agent
    if agent.server is None:
        if ws.headers.get(HOP):
            raise NotFound(f"allocation {alloc_id[:8]} is not on this node: it finished and was "
                           "garbage-collected, or it has not started here yet")
        addr: str = agent.server_address
        if not addr:
            raise Unavailable("this agent has no server to ask: give it client { servers = [...] }")
        return addr
    alloc = agent.server.reads.alloc(alloc_id)
    if alloc is None:
        raise NotFound("alloc not found")
    if alloc.client_terminal() or alloc.server_terminal():
        raise InvalidInput(f"allocation {alloc_id[:8]} is {alloc.client_status}: alloc exec needs a running task")
    if alloc.node_id == agent.node_id or ws.headers.get(HOP) == "node":
        raise NotFound(f"allocation {alloc_id[:8]} has not started on its node yet")
    node = agent.server.reads.node(alloc.node_id)
    if node is None or not node.http_addr:
        raise NotFound(f"allocation {alloc_id[:8]} runs on node {alloc.node_id[:8]}, which advertises "
                       "no HTTP address to reach it at")
    return str(node.http_addr if "://" in node.http_addr else f"http://{node.http_addr}")


async def exec_ws(ws: WebSocket) -> None:
    alloc_id = ws.path_params["alloc_id"]
    agent = ws.app.state.agent
    try:
        await authz.authorize_ws(ws, PATH)
        command = _command(ws)
        if agent.client is None or agent.local_alloc(alloc_id) is None:
            await _relay(ws, _target(ws, alloc_id), "1" if agent.server is None else "node")
            return
        tty = ws.query_params.get("tty", "false").lower() in ("1", "true", "yes")
        session = await run_in_threadpool(agent.client.exec_alloc, alloc_id, ws.query_params.get("task", ""),
                                          command, tty)
    except YurtError as e:
        await _close(ws, INTERNAL if e.status >= 500 else POLICY, str(e))
        return
    await ws.accept()
    await _run(ws, session)


async def _run(ws: WebSocket, session: Any) -> None:
    async def inbound() -> None:
        while True:
            try:
                frame = json.loads(await ws.receive_text())
            except WebSocketDisconnect:
                await run_in_threadpool(session.kill)
                return
            except ValueError:
                continue
            if not isinstance(frame, dict):
                continue
            stdin = frame.get("stdin") or {}
            if stdin.get("data"):
                await run_in_threadpool(session.write, base64.b64decode(stdin["data"]))
            if stdin.get("close"):
                await run_in_threadpool(session.close_stdin)
            size = frame.get("tty_size")
            if isinstance(size, dict):
                await run_in_threadpool(session.resize, int(size.get("height") or 0), int(size.get("width") or 0))

    # the command's output is read by a thread of its own (not the threadpool the routes share:
    # a session may last hours), its frames handed to the event loop
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[str] = asyncio.Queue(maxsize=64)

    closed = threading.Event()   # the caller has gone: the rest of the output is dropped

    def put(frame: dict) -> None:
        if not closed.is_set():
            asyncio.run_coroutine_threadsafe(frames.put(json.dumps(frame)), loop).result()

    def pump() -> None:
        try:
            while (item := session.read()) is not None:
                stream, data = item
                put({stream: {"data": base64.b64encode(data).decode()}})
            put({"exited": True, "result": {"exit_code": session.wait()}})
        except RuntimeError:   # the loop has gone: the agent is stopping
            session.kill()

    threading.Thread(target=pump, daemon=True, name="alloc-exec").start()
    reader = asyncio.ensure_future(inbound())
    try:
        while True:
            message = await frames.get()
            await ws.send_text(message)
            if message.startswith('{"exited"'):
                break
        await ws.close()
    except (WebSocketDisconnect, RuntimeError):
        await run_in_threadpool(session.kill)
    finally:
        reader.cancel()
        closed.set()
        while not frames.empty():   # a put waiting for room returns
            frames.get_nowait()


async def _relay(ws: WebSocket, base: str, hop: str) -> None:
    """The websocket relayed, frame by frame, to the agent at `base`; its close passed back."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    url = base.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    url += ws.url.path + ("?" + ws.url.query if ws.url.query else "")
    headers = {HOP: hop, **{k: v for k, v in ws.headers.items() if k.lower() in TOKEN_HEADERS}}
    tls = getattr(ws.app.state.agent, "tls_context", None)
    kw: dict[str, Any] = {}
    if url.startswith("wss://") and isinstance(tls, ssl.SSLContext):   # with tls { }: its CA, its cert
        kw["ssl"] = tls
    try:
        upstream = await connect(url, additional_headers=headers, max_size=None, open_timeout=30, **kw)
    except (TimeoutError, OSError, InvalidHandshake) as e:
        raise Unavailable(f"cannot reach the agent at {base}: {e}") from None
    await ws.accept()

    async def up() -> None:
        try:
            while True:
                await upstream.send(await ws.receive_text())
        except (WebSocketDisconnect, ConnectionClosed):
            await upstream.close()

    forward = asyncio.ensure_future(up())
    code, reason = 1000, ""
    try:
        async for message in upstream:
            await ws.send_text(message if isinstance(message, str) else message.decode())
    except ConnectionClosed:
        pass
    except (WebSocketDisconnect, RuntimeError):
        code = 0
    finally:
        forward.cancel()
        if upstream.close_code is not None:
            code, reason = upstream.close_code, upstream.close_reason or ""
        await upstream.close()
    if code:
        await _close(ws, code if code != 1006 else INTERNAL, reason)


routes = [WebSocketRoute(PATH, exec_ws)]
