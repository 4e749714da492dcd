"""TLS session resumption between sidecars: the tickets an upstream instance's sidecar sent,
kept per instance and offered on the next connection to it.

CPython's `ssl` copies a session through DER whenever it is read (`SSLSocket.session`) or
offered (`wrap_socket(session=...)`): an i2d/d2i round trip that parses the peer's certificate
chain again, ~200 µs a connection on this 2-core bench box, which cost more CPU than resuming
saved. A ticket is taken the `ssl` module's way (rarely: one serves many resumptions), and
offered on each new connection directly through ctypes, on the very library `_ssl` is linked
with: `SSL_set_session` with an in-memory copy (`SSL_SESSION_dup`: no DER, no parsing) of the
SSL_SESSION inside the kept `SSLSession`. A copy, not the session itself: a TLS 1.3 handshake
writes its resumption secret into the session it resumed, so connections resuming one shared
session at once corrupt each other's key schedule (seen: at 3,000 connections opened at once,
a third of the handshakes failed).

The C objects are found inside CPython's `_ssl` objects (`PySSLSocket.ssl`,
`PySSLContext.ctx`, `PySSLSession.session`, each the first field after the object header but for
the socket's weakref). That layout is CPython's private business, so it is checked once, in
`native()`, on real in-memory handshakes with the sidecar's own contexts: a socket's SSL must
belong to its context, the session found must carry the time Python reads from it, a native
offer must really resume. Anything off
(another interpreter, another layout, no symbols) and the sidecar uses the `ssl` module's own
calls instead: slower, same behaviour.
"""

from __future__ import annotations

import ctypes
import ssl
import time
from typing import Any

_HEAD = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)   # PyObject_HEAD
_SSL_OFFSET = _HEAD + ctypes.sizeof(ctypes.c_void_p)    # PySSLSocket: head, Socket (weakref), ssl
_CTX_OFFSET = _HEAD                                    # PySSLContext: head, ctx
_SESSION_OFFSET = _HEAD                                # PySSLSession: head, session


def _field(obj: Any, offset: int) -> int:
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


class _Native:
    def __init__(self) -> None:
        import _ssl
        lib = ctypes.CDLL(_ssl.__file__)
        p, i, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self.set_session = _fn(lib.SSL_set_session, [p, p], i)
        self.session_dup = _fn(lib.SSL_SESSION_dup, [p], p)
        self.session_free = _fn(lib.SSL_SESSION_free, [p], None)
        self.get_ctx = _fn(lib.SSL_get_SSL_CTX, [p], p)
        self.session_time = _fn(lib.SSL_SESSION_get_time, [p], L)
        self.set_shutdown = _fn(lib.SSL_set_shutdown, [p, i], None)

    def ssl_of(self, sock: ssl.SSLSocket, context: ssl.SSLContext) -> int:
        """The SSL* of an SSLSocket, checked to belong to `context` (0 if it does not)."""
        obj = getattr(sock, "_sslobj", None)
        if obj is None:
            return 0
        ptr = _field(obj, _SSL_OFFSET)
        return ptr if ptr and self.get_ctx(ptr) == _field(context, _CTX_OFFSET) else 0


SENT_AND_RECEIVED_SHUTDOWN = 3   # SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN


def _fn(f: Any, args: list, res: Any) -> Any:
    f.argtypes, f.restype = args, res
    return f


class Ticket:
    """A session to resume (the `ssl` module's SSLSession; `ptr` its SSL_SESSION when the
    ctypes route is on). `fresh()`: less than half its lifetime gone."""
    __slots__ = ("py", "ptr", "expires_half")

    def __init__(self, py: ssl.SSLSession) -> None:
        self.py = py
        self.ptr = _field(py, _SESSION_OFFSET) if _native is not None else 0
        self.expires_half = py.time + py.timeout / 2

    def fresh(self) -> bool:
        return time.time() < self.expires_half


_native: _Native | None = None
_checked = False


def native(client: ssl.SSLContext, server: ssl.SSLContext) -> _Native | None:
    """The ctypes route, once proven on this interpreter with the sidecar's first pair of
    contexts (see the module's doc), else None."""
    global _native, _checked
    if not _checked:
        _checked = True
        try:
            n = _Native()
            if _prove(n, client, server):
                _native = n
        except (OSError, AttributeError, ValueError, ssl.SSLError):
            _native = None
    return _native


def prove(client: ssl.SSLContext, server: ssl.SSLContext) -> bool:
    """Decide the route now (the proxy calls it with its first certificate): True for ctypes."""
    return native(client, server) is not None


def take(sock: ssl.SSLSocket) -> Ticket | None:
    """The session the server gave this connection (its latest ticket), if any."""
    try:
        py = sock.session
    except (AttributeError, ValueError):
        return None
    return Ticket(py) if py is not None and py.has_ticket else None


def wrap(context: ssl.SSLContext, sock: Any, ticket: Ticket | None,
         server_hostname: str | None = None) -> ssl.SSLSocket:
    """A client SSLSocket for a connected non-blocking socket, offering `ticket` to resume, with
    `server_hostname` as SNI (a terminating gateway presents the linked service it names)."""
    if ticket is None or not ticket.ptr:   # none yet, or the ssl module's route
        return context.wrap_socket(sock, server_side=False, do_handshake_on_connect=False,
                                   session=ticket.py if ticket is not None else None,
                                   server_hostname=server_hostname)
    tls = context.wrap_socket(sock, server_side=False, do_handshake_on_connect=False,
                              server_hostname=server_hostname)
    n = _native
    s = n.ssl_of(tls, context) if n is not None else 0
    if s and n is not None:
        own = n.session_dup(ticket.ptr)
        if own:
            n.set_session(s, own)   # a full handshake if it fails: never an error
            n.session_free(own)     # the SSL holds its own reference
    return tls


def finish(sock: ssl.SSLSocket, context: ssl.SSLContext) -> None:
    """Before an upstream connection closes: mark its TLS session as shut down. OpenSSL marks
    the session of a connection freed without close_notify as not resumable (a TLS 1.2 rule RFC
    8446 dropped); the proxy half-closes at the TCP level and never sends one, and sessions are
    shared, not copied (the kept ticket with the connection it came from and with every one it
    was offered to), so without this a ticket would die with the first connection that closed."""
    n = _native
    if n is not None:
        s = n.ssl_of(sock, context)
        if s:
            n.set_shutdown(s, SENT_AND_RECEIVED_SHUTDOWN)


def _prove(n: _Native, client: ssl.SSLContext, server: ssl.SSLContext) -> bool:
    """Two handshakes in memory between the sidecar's own contexts, the second offering the
    first's session natively: true when every pointer read is what it should be and the second
    handshake resumed."""
    from .tls import handshake_in_memory

    def finished(cli: ssl.SSLObject | None) -> ssl.SSLObject | None:
        s = n.ssl_of(cli, client) if cli is not None else 0   # type: ignore[arg-type]
        if not s:
            return None
        n.set_shutdown(s, SENT_AND_RECEIVED_SHUTDOWN)   # as `finish`
        return cli

    first = finished(handshake_in_memory(client, server))
    py = first.session if first is not None else None
    if py is None or not py.has_ticket:
        return False
    ptr = _field(py, _SESSION_OFFSET)
    if not ptr or n.session_time(ptr) != py.time:
        return False

    def offer(cli: ssl.SSLObject) -> None:
        s = n.ssl_of(cli, client)   # type: ignore[arg-type]
        if s:
            own = n.session_dup(ptr)
            n.set_session(s, own)
            n.session_free(own)
    second = finished(handshake_in_memory(client, server, before=offer))
    return second is not None and second.session_reused
