"""The public listener: mTLS in, intentions, plain TCP to the local app.

Per connection: TLS 1.3 handshake with a client certificate required and verified against the
CA roots (OpenSSL) → first URI SAN parsed as a service SPIFFE ID in our trust domain →
authorization (cached per identity) → dial the app at local_addr:local_port → pump.
Any failure closes that connection and logs why; the listener keeps serving.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from .pump import IN, OUT, ERRS, Pipe, Side, set_nodelay
from .tls import expired, ssl_reason, parse_spiffe, peer_cert

if TYPE_CHECKING:
    from .proxy import Proxy

ACCEPT_BATCH = 64
REPORT_EVERY = 60.0    # seconds between two log lines about refused or starved accepts
BACKOFF = 0.1          # seconds a listener out of file descriptors stops accepting
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# The accept queue: as long as the kernel allows (net.core.somaxconn caps it). A burst of new
# connections waits there for its TLS handshake (bounded by handshake_timeout) instead of
# having its SYNs dropped and retried a second or three later: at 9,000 connections opened at
# once through a pair, a 1,024 queue made ~1,000 of them time out in connect.
BACKLOG = 65535


def listen(host: str, port: int, backlog: int = BACKLOG, reuseport: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:  # -workers N: the kernel spreads new connections over the workers' sockets
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    s.listen(backlog)
    s.setblocking(False)
    return s


class Listener:
    """A bound listening socket in the reactor; `make(sock, addr)` handles each accept.

    At most `limit` accepted connections are open at once (0: no cap; counted from accept until
    the accepted socket closes). At the cap a new connection first takes the place of the oldest
    one still in its TLS handshake (so idle half-open connections cannot lock real clients out
    until their handshake timeout); with none to evict it is closed at once. Both are logged
    once a minute. When accept() fails for want of file descriptors (EMFILE, ENFILE, ...)
    the listener stops polling for BACKOFF seconds instead of spinning on the pending connection,
    and says so once a minute."""

    def __init__(self, proxy: Proxy, sock: socket.socket, make, limit: int = 0) -> None:
        self.proxy = proxy
        self.sock = sock
        self.make = make
        self.limit = limit
        self.active = 0
        self.opening: dict[Side, Any] = {}   # accepted and not closed, oldest first
        self.refused = 0            # over the cap since the last report
        self.evicted = 0
        self.starved = 0            # accept() failures for want of descriptors since the last report
        self._reported = {"cap": -REPORT_EVERY, "fds": -REPORT_EVERY}
        self._paused = False
        self.port = sock.getsockname()[1]
        proxy.reactor.register(sock.fileno(), IN, self)

    def on_event(self, ev: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                s, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in OUT_OF_FDS:
                    self._back_off(e)
                else:
                    self.proxy.log.event("accept-error", port=self.port, error=str(e))
                return
            if self.limit and self.active >= self.limit and not self._evict():
                s.close()
                self.refused += 1
                self._report("cap", "connection-limit", refused=self.refused, evicted=self.evicted,
                             limit=self.limit)
                continue
            s.setblocking(False)
            set_nodelay(s)
            try:
                conn = self.make(s, addr)
            except Exception as e:  # noqa: BLE001 - one bad accept must not stop the listener
                s.close()
                self.proxy.log.event("accept-error", port=self.port, error=repr(e))
                continue
            side = getattr(conn, "side", None) or getattr(conn, "client", None)
            if isinstance(side, Side) and side.fd >= 0:
                self.active += 1
                self.opening[side] = conn
                side.release = partial(self._released, side)

    def _released(self, side: Side) -> None:
        self.active -= 1
        self.opening.pop(side, None)
        self.proxy.closed_since_trim += 1

    def _evict(self) -> bool:
        """Close the oldest connection still in its TLS handshake; False when there is none."""
        for conn in self.opening.values():
            if getattr(conn, "state", "") == "handshake" and not getattr(conn, "done", True):
                conn.fail("refused", f"still in its TLS handshake when the listener reached its cap of "
                                     f"{self.limit} connections")
                self.evicted += 1
                self._report("cap", "connection-limit", refused=self.refused, evicted=self.evicted,
                             limit=self.limit)
                return True
        return False

    def _report(self, kind: str, event: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self._reported[kind] >= REPORT_EVERY:
            self._reported[kind] = now
            self.proxy.log.event(event, port=self.port, **fields)
            if kind == "cap":
                self.refused = self.evicted = 0
            else:
                self.starved = 0

    def _back_off(self, e: OSError) -> None:
        """Out of file descriptors: the pending connection stays in the backlog and epoll would
        report it again at once. Stop listening to it for a while instead of spinning."""
        self.starved += 1
        self._report("fds", "accept-out-of-fds", error=str(e), failures=self.starved,
                     paused_ms=int(BACKOFF * 1000))
        if not self._paused:
            self._paused = True
            self.proxy.reactor.modify(self.sock.fileno(), 0)
            self.proxy.reactor.call_later(BACKOFF, self._resume)

    def _resume(self) -> None:
        self._paused = False
        fd = self.sock.fileno()
        if fd >= 0 and fd in self.proxy.reactor.handlers:
            self.proxy.reactor.modify(fd, IN)

    def abort(self, reason: str) -> None:
        pass

    def close(self) -> None:
        self.proxy.reactor.unregister(self.sock.fileno())
        self.sock.close()


def _addr(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class InboundConn:
    """One inbound connection until it becomes a Pipe (or is refused)."""

    def __init__(self, proxy: Proxy, sock: socket.socket, addr) -> None:
        self.proxy = proxy
        self.started = time.monotonic()
        self.peer = _addr(addr)
        self.src = ""
        self.uri = ""
        self.serial = ""
        self.done = False
        self.local: Side | None = None
        material = proxy.material
        if material is None:
            sock.close()
            self._log("refused", "proxy not ready: no certificate yet")
            self.done = True
            return
        tls = material.server.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.side = Side(proxy.reactor, tls, True, self, IN)
        self.state = "handshake"
        self.timer = proxy.reactor.call_later(proxy.cfg.handshake_timeout, self._timeout)
        self._handshake()

    def _log(self, verdict: str, reason: str) -> None:
        self.proxy.log.conn("inbound", self.src or self.peer, self.proxy.cfg.service, self.peer,
                            0, 0, self.started, verdict, reason, serial=self.serial)

    def fail(self, verdict: str, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        self.side.close()
        if self.local is not None:
            self.local.close()
        self._log(verdict, reason)

    def abort(self, reason: str) -> None:
        self.fail("error", reason)

    def _timeout(self) -> None:
        if self.state == "handshake" and not self.done:
            self.proxy.metrics.tls_failure("inbound")
        self.fail("refused" if self.state == "handshake" else "error", f"timed out in {self.state}")

    def on_side_event(self, side: Side, ev: int) -> None:
        if self.done:
            return
        if side is self.side:
            if self.state == "handshake":
                self._handshake()
            elif ev & ERRS:
                self.fail("error", "client went away")
        elif self.state == "connect":
            self._connected()

    def _handshake(self) -> None:
        sock = self.side.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.side.set_mask(IN)
            return
        except ssl.SSLWantWriteError:
            self.side.set_mask(OUT)
            return
        except (ssl.SSLError, OSError) as e:
            self._tls_failed(f"tls handshake: {ssl_reason(e)}")
            return
        self.side.set_mask(0)
        pc = peer_cert(sock)
        if pc is None:
            self._tls_failed("no client certificate")
            return
        self.serial = pc.serial
        if sock.session_reused:
            if expired(pc.not_after):
                self._tls_failed("resumed a session whose client certificate has expired")
                return
            self.proxy.metrics.tls_resumed["inbound"] += 1
        sid = parse_spiffe(pc.uri)
        if sid is None:
            self._tls_failed(f"client certificate URI {pc.uri!r} is not a service SPIFFE ID")
            return
        self.src = sid.service
        self.uri = pc.uri.lower()
        td = self.proxy.material.trust_domain if self.proxy.material else ""
        if sid.trust_domain != td:
            self._tls_failed(f"trust domain {sid.trust_domain} is not ours ({td})")
            return
        self.state = "authorize"
        self.proxy.authz.check(self.uri, self.serial, self._decided)

    def _tls_failed(self, reason: str) -> None:
        self.proxy.metrics.tls_failure("inbound")
        self.fail("refused", reason)

    def _decided(self, allowed: bool, reason: str) -> None:
        if self.done:
            return
        if not allowed:
            self.proxy.metrics.denied(self.src)
            self.fail("denied", reason)
            return
        cfg = self.proxy.cfg
        s = socket.socket(socket.AF_INET6 if ":" in cfg.local_addr else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        set_nodelay(s)
        err = s.connect_ex((cfg.local_addr, cfg.local_port))
        self.state = "connect"
        self.local = Side(self.proxy.reactor, s, False, self, OUT)
        if err not in (0, errno.EINPROGRESS):
            self.proxy.metrics.inbound_error("local_service")
            self.fail("error", f"local service {cfg.local_addr}:{cfg.local_port}: {os.strerror(err)}")

    def _connected(self) -> None:
        err = self.local.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        cfg = self.proxy.cfg
        if err:
            self.proxy.metrics.inbound_error("local_service")
            self.fail("error", f"local service {cfg.local_addr}:{cfg.local_port}: {os.strerror(err)}")
            return
        self.done = True
        self.timer.cancel()
        pipe = Pipe(self.proxy.reactor, self.side, self.local, self.proxy.inbound_closed, self)
        self.proxy.inbound_opened(pipe)
        pipe.start()
