"""uvicorn's HTTP protocol (httptools), with each turn of the event loop's writes sent at once.

uvicorn writes a response's status line and headers as soon as the app sends them, then its body
in a second write: two sends, two packets, for every answer. Under thousands of client agents'
blocking queries the sends were ~15 % of a server's time (bench/scheduler.py's http section,
profiled). Here the writes made within one turn of the event loop are joined and sent together
at the end of the turn (or before the connection is closed), so a response leaves in one send.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
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


def http_protocol() -> Any:
    """uvicorn's `http=` setting: the corked httptools protocol, or "auto" without httptools."""
    if HttpToolsProtocol is None:
        return "auto"

    class CorkedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(CorkedTransport(transport, self.loop))

    return CorkedHttpToolsProtocol
