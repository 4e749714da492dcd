"""Nomad's allocation filesystem API: /v1/client/fs/{ls,stat,cat,readat}/<alloc>?path=...

Paths are inside the allocation directory (`/alloc/logs`, `/<task>/local/...`), never outside it
(symbolic links included); a task's `secrets` directory is not readable, as in Nomad. The agent
whose client runs the allocation answers; a server forwards the request to that node's agent.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

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
