"""`/v1/client/fs/logs/<alloc>`: a task's stdout or stderr, across rotated files, optionally followed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from pathlib import Path
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from yurt.errors import InvalidInput, NotFound

from .common import flag
from .forward import HOP, proxy, to_server

router = APIRouter()

POLL = 0.2  # seconds between looks at a followed log


def log_files(logs_dir: Path, task: str, kind: str) -> list[Path]:
    pattern = re.compile(re.escape(f"{task}.{kind}.") + r"(\d+)$")
    found = []
    if logs_dir.is_dir():
        for entry in os.scandir(logs_dir):
            m = pattern.match(entry.name)
            if m:
                found.append((int(m.group(1)), Path(entry.path)))
    return [p for _, p in sorted(found)]


class LogCursor:
    """Reads the chain task.stdout.0, .1, ... as one stream, surviving rotation."""

    def __init__(self, logs_dir: Path, task: str, kind: str) -> None:
        self.logs_dir, self.task, self.kind = logs_dir, task, kind
        self.file: Path | None = None
        self.pos = 0

    def seek(self, origin: str, offset: int) -> None:
        files = log_files(self.logs_dir, self.task, self.kind)
        if not files:
            return
        if origin == "end":
            remaining = offset
            for f in reversed(files):
                size = f.stat().st_size
                if remaining <= size:
                    self.file, self.pos = f, size - remaining
                    return
                remaining -= size
            self.file, self.pos = files[0], 0
        else:
            remaining = offset
            for f in files:
                size = f.stat().st_size
                if remaining < size or f == files[-1]:
                    self.file, self.pos = f, min(remaining, size)
                    return
                remaining -= size

    def read(self, limit: int = 64 * 1024) -> bytes:
        files = log_files(self.logs_dir, self.task, self.kind)
        if not files:
            return b""
        if self.file is None or self.file not in files:
            # first read, or our file was rotated away: continue with the oldest we still have
            newer = [f for f in files if self.file is None or _num(f) > _num(self.file)]
            self.file, self.pos = (newer or files)[0], 0
        out = b""
        while len(out) < limit:
            try:
                with open(self.file, "rb") as fh:
                    fh.seek(self.pos)
                    chunk = fh.read(limit - len(out))
            except FileNotFoundError:
                chunk = b""
            self.pos += len(chunk)
            out += chunk
            if chunk:
                continue
            later = [f for f in files if _num(f) > _num(self.file)]
            if not later:
                break
            self.file, self.pos = later[0], 0
        return out


def _num(p: Path) -> int:
    return int(p.name.rsplit(".", 1)[1])


async def _elsewhere(request: Request, alloc_id: str) -> Response:
    """The logs of an allocation this agent does not run: a server forwards the request to the
    agent of the allocation's node, at the HTTP address that node advertises; a client-only
    agent asks its server (which does that)."""
    agent = request.app.state.agent
    if agent.server is None:
        if request.headers.get(HOP):   # its server sent it here, the allocation's node: not here
            raise NotFound(f"allocation {alloc_id[:8]} is not on this node: it finished and was "
                           "garbage-collected, or it has not started here yet")
        return await to_server(request)
    reads = agent.server.reads
    alloc = reads.alloc(alloc_id)
    if alloc is None:
        raise NotFound("alloc not found")
    if alloc.node_id == agent.node_id:
        if alloc.client_terminal() or alloc.server_terminal():
            raise NotFound(f"allocation {alloc_id[:8]} is not on this node any more: it finished and was "
                           "garbage-collected, its directory removed")
        raise NotFound(f"allocation {alloc_id[:8]} has not started on this agent yet")
    node = reads.node(alloc.node_id)
    if node is None or not node.http_addr:
        raise NotFound(f"allocation {alloc_id[:8]} runs on node {alloc.node_id[:8]}, which advertises "
                       "no HTTP address to read its logs from")
    addr = node.http_addr if "://" in node.http_addr else f"http://{node.http_addr}"
    return await proxy(request, addr)


@router.get("/v1/client/fs/logs/{alloc_id}")
async def logs(request: Request, alloc_id: str):
    agent = request.app.state.agent
    alloc = agent.local_alloc(alloc_id)
    if alloc is None:
        return await _elsewhere(request, alloc_id)
    q = request.query_params
    task = q.get("task") or ""
    tg = alloc.job.group(alloc.task_group) if alloc.job else None
    names = [t.name for t in (tg.tasks if tg else [])]
    if not task:
        if len(names) != 1:
            raise InvalidInput(f"must include task name: one of {', '.join(names)}")
        task = names[0]
    if names and task not in names:
        raise InvalidInput(f'task "{task}" is not in allocation {alloc_id[:8]}: tasks are {", ".join(names)}')
    kind = q.get("type", "stdout")
    if kind not in ("stdout", "stderr"):
        raise InvalidInput('type must be "stdout" or "stderr"')
    origin = q.get("origin", "start")
    if origin not in ("start", "end"):
        raise InvalidInput('origin must be "start" or "end"')
    try:
        offset = int(q.get("offset", "0") or 0)
    except ValueError:
        raise InvalidInput("offset must be a whole number of bytes") from None
    logs_dir = agent.alloc_logs_dir(alloc_id)
    cursor = LogCursor(logs_dir, task, kind)
    cursor.seek(origin, offset)
    follow, plain = flag(request, "follow"), flag(request, "plain")

    async def stream() -> AsyncIterator[bytes]:
        while True:
            data = cursor.read()
            if data:
                if plain:
                    yield data
                else:
                    yield json.dumps({"Offset": cursor.pos, "Data": base64.b64encode(data).decode(),
                                      "File": f"alloc/logs/{cursor.file.name if cursor.file else ''}"}).encode()
                continue
            if not follow or await request.is_disconnected():
                return
            if agent.alloc_done(alloc_id):
                tail = cursor.read()
                if tail:
                    yield tail if plain else json.dumps({"Offset": cursor.pos,
                                                         "Data": base64.b64encode(tail).decode()}).encode()
                return
            await asyncio.sleep(POLL)

    media = "text/plain; charset=utf-8" if plain else "application/json"
    return StreamingResponse(stream(), media_type=media)
