"""What every request must meet before a route sees it (an ASGI middleware, `RequestLimits`).

- A body is at most `limits { http_max_request_bytes }` (default 16 MiB): a larger Content-Length
  is answered 413 before anything is read, and a body without one (chunked) is counted as it
  streams in, so a route reading it stops at the limit instead of holding it all in memory.
- A POST/PUT/PATCH whose body is declared as a browser form or plain text (the content types a web
  page may send to another origin without asking first) is answered 415: every route with a body
  reads JSON. A request without a Content-Type (python-consul's) is JSON to us, as it is to Consul.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Awaitable, Callable, MutableMapping

from starlette.responses import PlainTextResponse

from yurt.errors import YurtError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
SETTING = "limits { http_max_request_bytes }"
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def too_large(limit: int) -> str:
    return (f"request body too large: this agent takes at most {size_text(limit)} ({limit} bytes); "
            f"send a smaller body, or raise {SETTING} in the agent's config")


def _json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def refusal(scope: Scope, limit: int) -> PlainTextResponse | None:
    """The answer to a request these limits refuse by its headers alone (413, 415), or None."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    length = headers.get("content-length")
    declared = int(length) if length is not None and length.strip().isdigit() else None
    if declared is not None and declared > limit:
        return PlainTextResponse(too_large(limit), status_code=413)
    content_type = headers.get("content-type")
    if (scope["method"] in WITH_BODY and content_type is not None and declared != 0
            and not _json_type(content_type)):
        message = (f'{scope["method"]} {scope["path"]} takes a JSON body, not "{content_type}": '
                   "send Content-Type: application/json (or no Content-Type)")
        return PlainTextResponse(message, status_code=415)
    return None


class RequestLimits:
    def __init__(self, app: ASGIApp, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.limit = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = refusal(scope, self.limit)
        if refused is not None:
            await refused(scope, receive, send)
            return
        limit, seen = self.limit, 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # the route's handler answers it (api/errors.py): 413
                    raise YurtError(too_large(limit), status=413)
            return message

        await self.app(scope, counted, send)
