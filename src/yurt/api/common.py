"""What every route shares: Nomad-style errors, blocking queries, index headers, JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from yurt.structs import parse_duration

DEFAULT_WAIT = 300.0   # Nomad's default blocking-query wait: 5 minutes
MAX_WAIT = 600.0       # and its cap: 10 minutes


class APIError(HTTPException):
    """An error Nomad would answer with: a status code and a plain-text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status_code=status, detail=message)


def error_response(status: int, message: str) -> Response:
    return PlainTextResponse(message, status_code=status)


def wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if not raw:
        return DEFAULT_WAIT
    try:
        seconds = float(raw) if raw.replace(".", "", 1).isdigit() else parse_duration(raw) / 1e9
    except ValueError:
        raise APIError(400, f'invalid wait "{raw}": use a duration like "5s" or "1m"') from None
    return max(0.0, min(seconds, MAX_WAIT))


def query_index(request: Request) -> int:
    raw = request.query_params.get("index", "0") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise APIError(400, f'invalid index "{raw}": must be a whole number') from None


async def block(request: Request, store, table: str | None = None) -> int:
    """Blocking query: wait until `table` (or anything) changes past ?index=, or ?wait= passes."""
    index = query_index(request)
    if index > 0:
        current = await store.wait_async(index, wait_seconds(request), table)
    else:
        current = store.table_index(table) if table else store.index()
    return max(current, 1)  # as Nomad: never 0, so a client's next ?index= always blocks


def reply(body: Any, index: int | None = None, status: int = 200, headers: dict | None = None) -> Response:
    h = {"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}
    if index is not None:
        h["X-Nomad-Index"] = str(index)
    if headers:
        h.update(headers)
    return JSONResponse(body, status_code=status, headers=h)


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "request body is empty: send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from None


def flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def by_prefix(items, prefix: str, key=lambda x: x.id):
    return [x for x in items if key(x).startswith(prefix)] if prefix else list(items)
