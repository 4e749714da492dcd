"""Connections a proxy serves on threads of their own (blocking I/O): the gateways' HTTP and TLS
listeners (`gateway.py`) and a sidecar's exposed paths (`expose.py`).

The reactor accepts and hands the socket over (`spawn`); at most `limit` run at once. They count
as open while they run, so the proxy's drain (SIGTERM) waits for them up to its deadline
(`Proxy._open`); `drain` closes at once those waiting between two HTTP requests
(`next_request` marks them), so a keep-alive connection ends after its request in flight."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .proxy import Proxy


class ThreadedConns:
    def __init__(self, proxy: Proxy, limit: int) -> None:
        self.proxy = proxy
        self.slots = threading.BoundedSemaphore(limit or 1 << 20)
        self.active = 0
        self._idle: set[socket.socket] = set()
        self._lock = threading.Lock()
        proxy.threaded.append(self)

    def spawn(self, fn: Any, *args: Any, sock: socket.socket) -> None:
        """Serve `sock` with `fn(*args)` on a thread of its own; closed when `fn` returns. Over
        the limit it is closed at once (and logged)."""
        if not self.slots.acquire(blocking=False):
            sock.close()
            self.proxy.log.event("connection-limit", limit=self.proxy.cfg.max_connections)
            return
        with self._lock:
            self.active += 1

        def run() -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - one connection's failure is logged, never fatal
                self.proxy.log.event("internal-error", error=repr(e))
            finally:
                try:
                    sock.close()
                except OSError:
                    pass
                with self._lock:
                    self.active -= 1
                self.slots.release()

        threading.Thread(target=run, name="yurt-proxy-conn", daemon=True).start()

    def next_request(self, server: Any, conn: socket.socket) -> Any:
        """The next h11 event of a connection between two requests, counted idle while it waits;
        None once the proxy drains."""
        from .gateway import _next_event
        with self._lock:
            if self.proxy.draining == "all":
                return None
            self._idle.add(conn)
        try:
            return _next_event(server, conn)
        finally:
            with self._lock:
                self._idle.discard(conn)

    def drain(self) -> None:
        """The proxy drains: the connections waiting for their next request are closed now."""
        with self._lock:
            idle = list(self._idle)
        for sock in idle:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def next_cycle(server: Any) -> bool:
    """After an answer: True when the connection may take another request (both sides done,
    h11 ready for the next cycle); False: close it."""
    import h11
    if server.our_state is not h11.DONE or server.their_state is not h11.DONE:
        return False
    try:
        server.start_next_cycle()
    except h11.LocalProtocolError:
        return False
    return True
