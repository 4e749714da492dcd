"""uvicorn's HTTP protocol (httptools), with each turn of the event loop's writes sent at once.

uvicorn writes a response's status line and headers as soon as the app sends them, then its body
in a second write: two sends, two packets, for every answer. Under thousands of client agents'
blocking queries the sends were ~15 % of a server's time (bench/scheduler.py's http section,
profiled). Here the writes made within one turn of the event loop are joined and sent together
at the end of the turn (or before the connection is closed), so a response leaves in one send.

The protocol also offers each request to the app's `fast(request)` before it makes an ASGI cycle
of it (`FastRequest`): the client agents' allocation watches are answered, or parked until their
node's allocations change, without uvicorn's cycle, its task and its ASGI messages (api/hot.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:   # uvicorn without httptools: its own choice stays
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class CorkedTransport:
    """A transport whose writes wait for the end of the event loop's turn, then go as one."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class FastRequest:
    """A request the app answers itself, before uvicorn makes an ASGI cycle of it (the app's
    `fast(request) -> bool`: api/hot.py, the client agents' allocation watches). Thousands of
    watches stay parked at once on a server; each holds this, not uvicorn's cycle with its task,
    its coroutines, its event and its ASGI messages.

    The protocol keeps it as its current cycle, so the attributes uvicorn's callbacks read and
    set on one are here: `response_complete`, `body`, `more_body`, `message_event` (this: its
    `set()` is called when data or the end of the connection arrive) and `disconnected` (the
    client went: the app's wait is ended without an answer); `keep_alive` set to False (the
    server is shutting down) answers a parked request at once, then closes the connection."""

    __slots__ = ("method", "url", "headers", "scope", "response_complete", "disconnected", "body", "more_body",
                 "message_event", "_keep_alive", "_end", "_proto")

    def __init__(self, proto: Any, method: bytes, keep_alive: bool) -> None:
        self._proto = proto
        self.method, self.url, self.headers = method, proto.url, proto.headers
        # what an ASGI scope of this request would say of its connection
        self.scope: dict[str, Any] | None = {
            "type": "http", "http_version": "1.1", "server": proto.server, "client": proto.client,
            "scheme": proto.scheme, "root_path": proto.root_path}
        self.response_complete = self.disconnected = False
        self.body = bytearray()
        self.more_body = True
        self.message_event = self
        self._keep_alive = keep_alive
        self._end: Any = None

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send the whole answer (headers as a Starlette response's `raw_headers`: lower-case,
        with content-length), as uvicorn's cycle would: its default headers first."""
        if self.response_complete:
            return
        self.response_complete = True
        self._end = None
        proto = self._proto
        content = [STATUS_LINE[status]]
        for name, value in proto.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if not self._keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        proto.transport.write(b"".join(content))
        if not self._keep_alive:
            proto.transport.close()
        proto.on_response_complete()

    def park(self, end: Any) -> None:
        """The app waits before answering: `end(answer)` stops its wait (with answer=True it
        answers at once, with False never)."""
        if not self.response_complete:
            self._end = end

    # what uvicorn's protocol does to its cycle
    def set(self) -> None:
        """`message_event.set()`: more of the request, or the connection is gone."""
        if self.disconnected:
            self._stop(False)

    def _stop(self, answer: bool) -> None:
        if self._end is not None:
            end, self._end = self._end, None
            end(answer)

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        self._keep_alive = value
        if not value:
            self._stop(True)


def http_protocol() -> Any:
    """uvicorn's `http=` setting: the corked httptools protocol, or "auto" without httptools."""
    if HttpToolsProtocol is None:
        return "auto"

    class CorkedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(CorkedTransport(transport, self.loop))
            self.fast = getattr(self.app, "fast", None)

        def on_headers_complete(self) -> None:
            # a request the app answers itself (only when nothing is in flight on the connection,
            # and not one that waits for "100 Continue" or asks for an upgrade)
            if (self.fast is not None and not self.pipeline and (self.cycle is None or self.cycle.response_complete)
                    and not self.expect_100_continue and not self.parser.should_upgrade()
                    and self.limit_concurrency is None):
                # a request answered at once arms the keep-alive timer; the next one of the same
                # read (pipelined) must not be cut by it while it waits
                self._unset_keepalive_if_required()
                request = FastRequest(self, self.parser.get_method(), self.parser.should_keep_alive()
                                      and self.parser.get_http_version() != "1.0")
                self.cycle = request   # type: ignore[assignment]
                if self.fast(request):
                    request.scope = None   # what a parked request holds: as little as it needs
                    return
                self.cycle = None   # type: ignore[assignment]
            super().on_headers_complete()

    return CorkedHttpToolsProtocol
