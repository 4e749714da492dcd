"""Nomad's allocation filesystem API: /v1/client/fs/{ls,stat,cat,readat,stream}/<alloc>?path=...

Paths are inside the allocation directory (`/alloc/logs`, `/<task>/local/...`), never outside it
(symbolic links included); a task's `secrets` directory is not readable, as in Nomad. The agent
whose client runs the allocation answers; a server forwards the request to that node's agent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput, NotFound, PermissionDenied

from .common import reply
from .logs import _elsewhere

router = APIRouter()
READ_LIMIT = 16 * 1024 * 1024   # the most one cat/readat answers


def _root(request: Request, alloc_id: str) -> Path | None:
    agent = request.app.state.agent
    if agent.client is None or agent.local_alloc(alloc_id) is None:
        return None
    logs = agent.alloc_logs_dir(alloc_id)
    return logs.parent.parent if logs is not None else None


def _resolve(root: Path, raw: str) -> Path:
    rel = (raw or "/").lstrip("/")
    if "\x00" in rel:
        raise InvalidInput("path must not contain NUL")
    target = Path(os.path.realpath(root / rel))
    real_root = Path(os.path.realpath(root))
    if target != real_root and real_root not in target.parents:
        raise PermissionDenied(f'path "{raw}" is outside the allocation directory')
    parts = target.relative_to(real_root).parts
    if len(parts) >= 2 and parts[1] == "secrets" and parts[0] != "alloc":
        raise PermissionDenied("Reading secret files is disallowed")
    if not target.exists():
        raise NotFound(f'no file or directory at "{raw}" in the allocation directory')
    return target


def _info(p: Path) -> dict:
    st = p.lstat()
    is_dir = stat.S_ISDIR(st.st_mode)
    return {"Name": p.name, "IsDir": is_dir, "Size": 0 if is_dir else st.st_size,
            "FileMode": stat.filemode(st.st_mode),
            "ModTime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat().replace("+00:00", "Z"),
            "ContentType": "" if is_dir else (mimetypes.guess_type(p.name)[0] or "application/octet-stream")}


async def _local_or_forward(request: Request, alloc_id: str):
    root = _root(request, alloc_id)
    if root is None:
        return None, await _elsewhere(request, alloc_id)
    return _resolve(root, request.query_params.get("path", "/")), None


@router.get("/v1/client/fs/ls/{alloc_id}")
async def ls(request: Request, alloc_id: str):
    target, forwarded = await _local_or_forward(request, alloc_id)
    if forwarded is not None:
        return forwarded
    if not target.is_dir():
        raise InvalidInput(f'"{request.query_params.get("path", "/")}" is a file: use /v1/client/fs/stat or cat')
    return reply([_info(p) for p in sorted(target.iterdir(), key=lambda p: p.name)])


@router.get("/v1/client/fs/stat/{alloc_id}")
async def stat_(request: Request, alloc_id: str):
    target, forwarded = await _local_or_forward(request, alloc_id)
    if forwarded is not None:
        return forwarded
    return reply(_info(target))


def _read(target: Path, offset: int, limit: int) -> bytes:
    if target.is_dir():
        raise InvalidInput(f'"{target.name}" is a directory: use /v1/client/fs/ls')
    with open(target, "rb") as f:
        f.seek(offset)
        return f.read(min(limit, READ_LIMIT))


@router.get("/v1/client/fs/cat/{alloc_id}")
async def cat(request: Request, alloc_id: str):
    target, forwarded = await _local_or_forward(request, alloc_id)
    if forwarded is not None:
        return forwarded
    return Response(_read(target, 0, READ_LIMIT), media_type="text/plain; charset=utf-8")


@router.get("/v1/client/fs/readat/{alloc_id}")
async def readat(request: Request, alloc_id: str):
    target, forwarded = await _local_or_forward(request, alloc_id)
    if forwarded is not None:
        return forwarded
    try:
        offset = int(request.query_params.get("offset", "0"))
        limit = int(request.query_params.get("limit", str(READ_LIMIT)))
    except ValueError:
        raise InvalidInput("offset and limit must be whole numbers of bytes") from None
    if offset < 0 or limit < 0:
        raise InvalidInput("offset and limit must not be negative")
    return Response(_read(target, offset, limit), media_type="text/plain; charset=utf-8")


STREAM_POLL = 0.2          # seconds between looks at a followed file
STREAM_FRAME = 64 * 1024   # the most one frame carries
STREAM_HEARTBEAT = 10.0    # an empty frame ({}) after this long with nothing to send (NDJSON)


def _stream_params(request: Request) -> tuple[str, int, bool, bool]:
    q = request.query_params
    origin = q.get("origin") or "start"
    if origin not in ("start", "end"):
        raise InvalidInput('origin must be "start" or "end"')
    try:
        offset = int(q.get("offset") or 0)
    except ValueError:
        raise InvalidInput("offset must be a whole number of bytes") from None
    if offset < 0:
        raise InvalidInput("offset must not be negative")
    follow = (q.get("follow") or "true").lower() in ("1", "true", "yes")
    plain = (q.get("plain") or "").lower() in ("1", "true", "yes")
    return origin, offset, follow, plain


@router.get("/v1/client/fs/stream/{alloc_id}")
async def stream(request: Request, alloc_id: str):
    """Nomad's file stream: the file at ?path= from ?offset= (counted from the end with
    ?origin=end), followed as it grows unless ?follow=false, as NDJSON frames {Offset, Data
    (base64), File, FileEvent} (Offset: where the frame's data ends) or, with ?plain=true, the
    bytes themselves. A truncated file is read again from its start (FileEvent "file
    truncated"); a deleted one ends the stream (FileEvent "file deleted"). A followed stream also
    ends once the allocation has finished and everything in the file has been sent."""
    if not request.query_params.get("path"):
        raise InvalidInput("must provide a file path: ?path=/alloc/logs/...")
    origin, offset, follow, plain = _stream_params(request)
    target, forwarded = await _local_or_forward(request, alloc_id)
    if forwarded is not None:
        return forwarded
    if target.is_dir():
        raise InvalidInput(f'"{request.query_params["path"]}" is a directory: use /v1/client/fs/ls')
    agent = request.app.state.agent
    name = request.query_params["path"].lstrip("/")
    size = target.stat().st_size
    start = max(0, size - offset) if origin == "end" else min(offset, size)

    def frame(data: bytes, pos: int, event: str = "") -> bytes:
        doc: dict = {"Offset": pos, "Data": base64.b64encode(data).decode(), "File": name}
        if event:
            doc["FileEvent"] = event
        return json.dumps(doc).encode() + b"\n"

    def read_from(pos: int) -> bytes:
        try:
            with open(target, "rb") as f:
                f.seek(pos)
                return f.read(STREAM_FRAME)
        except FileNotFoundError:
            return b""

    async def frames() -> AsyncIterator[bytes]:
        pos = start
        idle = 0.0
        while True:
            data = await run_in_threadpool(read_from, pos)
            if data:
                pos += len(data)
                idle = 0.0
                yield data if plain else frame(data, pos)
                continue
            if not follow or await request.is_disconnected():
                return
            try:
                now = target.stat().st_size
            except FileNotFoundError:
                if not plain:
                    yield frame(b"", pos, "file deleted")
                return
            if now < pos:
                pos = 0
                if not plain:
                    yield frame(b"", pos, "file truncated")
                continue
            if agent.alloc_done(alloc_id):   # finished: what it wrote last, then the end
                if not await run_in_threadpool(read_from, pos):
                    # the server learns the end before the follower does (not at the next batch)
                    await run_in_threadpool(agent.report_alloc, alloc_id)
                    return
                continue
            await asyncio.sleep(STREAM_POLL)
            idle += STREAM_POLL
            if idle >= STREAM_HEARTBEAT and not plain:
                idle = 0.0
                yield b"{}\n"

    media = "text/plain; charset=utf-8" if plain else "application/json"
    return StreamingResponse(frames(), media_type=media)
