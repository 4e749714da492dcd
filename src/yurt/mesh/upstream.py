"""Upstream listeners: plain TCP in on 127.0.0.1:<local_bind_port>, mTLS out to a healthy
instance of the destination's sidecar.

Per connection: pick an instance (least connections) from the live health watch → dial →
TLS 1.3 handshake presenting our leaf → the server's first URI SAN must be exactly the
destination's SPIFFE ID (`spiffe://<td>/ns/default/dc/<instance dc>/svc/<dest>`). A failed dial,
handshake or identity check moves on to another instance (bounded); with no healthy instance
the client's connection is closed at once.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING

from . import resume
from .balancer import Balancer, Instance
from .pump import IN, OUT, ERRS, Pipe, Side, set_nodelay
from .tls import expired, ssl_reason, peer_cert, service_uri

if TYPE_CHECKING:
    from .config import UpstreamConfig
    from .proxy import Proxy

MAX_ATTEMPTS = 3
# At most this many connections per upstream dialing or in their TLS handshake at once; the rest
# wait their turn, in order. Without a cap a burst of new connections (9,000 opened at once)
# started 9,000 handshakes together at the instance's sidecar, which answered them all late,
# and ~1,000 timed out; with it they are answered at the rate the instance can handshake.
MAX_DIALING = 128


@functools.lru_cache(maxsize=1024)
def sni_name(service: str, datacenter: str, trust_domain: str) -> str | None:
    """Consul's SNI for a service, `<service>.default.<dc>.internal.<trust domain>`: a terminating
    gateway linking several services presents the one named (a sidecar ignores it). None when
    the name is no valid host name."""
    name = f"{service}.default.{datacenter}.internal.{trust_domain}".lower()
    if len(name) > 253 or not all(0 < len(label) < 64 and label.replace("-", "").replace("_", "").isalnum()
                                  for label in name.split(".")):
        return None
    return name


class UpstreamConn:
    def __init__(self, proxy: Proxy, up: UpstreamConfig, balancer: Balancer, sock: socket.socket, addr) -> None:
        self.proxy = proxy
        self.up = up
        self.balancer = balancer
        self.started = time.monotonic()
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.client = Side(proxy.reactor, sock, False, self, 0)
        self.server: Side | None = None
        self.inst: Instance | None = None
        self.tried: set = set()
        self.attempts = 0
        self.errors: list[str] = []
        self.done = False
        self.state = "pick"
        self.timer = None
        self.offered = None   # the TLS session offered to the instance for resumption
        self.gated = False    # holds one of the balancer's MAX_DIALING places
        if balancer.dialing >= MAX_DIALING or balancer.cold:
            self.state = "queued"
            balancer.waiting.append(self)   # no deadline: each attempt has its own once it dials
            return
        self._start()

    def _start(self) -> None:
        self.gated = True
        self.balancer.dialing += 1
        self._next()

    def _ungate(self) -> None:
        """This connection is through (or gave up): the next one waiting dials."""
        if not self.gated:
            return
        self.gated = False
        self.balancer.dialing -= 1
        start_waiting(self.balancer)

    # -- lifecycle -----------------------------------------------------------------------------
    def _log(self, verdict: str, reason: str) -> None:
        self.proxy.log.conn("upstream", self.proxy.cfg.service, self.up.destination, self.peer, 0, 0,
                            self.started, verdict, reason, attempts=self.attempts)

    def fail(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer:
            self.timer.cancel()
        if self.server is not None:
            self.server.close()
        self.client.close()
        self._log("error", reason)
        self._ungate()

    def abort(self, reason: str) -> None:
        self.fail(reason)

    def _retry(self, reason: str, kind: str) -> None:
        self.proxy.metrics.upstream_error(self.up.destination, f"{self.inst.address}:{self.inst.port}"
                                          if self.inst else "", kind)
        self.errors.append(f"{self.inst.address}:{self.inst.port}: {reason}" if self.inst else reason)
        if self.timer:
            self.timer.cancel()
            self.timer = None
        if self.server is not None:
            self.server.close()
            self.server = None
        self._next()

    def _next(self) -> None:
        material = self.proxy.material
        if material is None:
            self.fail("proxy not ready: no certificate yet")
            return
        if self.attempts >= MAX_ATTEMPTS:
            self.fail("all attempts failed: " + "; ".join(self.errors))
            return
        inst = self.balancer.pick(self.tried)
        if inst is None:
            if self.attempts == 0:
                self.proxy.metrics.upstream_error(self.up.destination, "", "no_instance")
                self.fail(f"no healthy instance of {self.up.destination}")
            else:
                self.fail("no instance left to try: " + "; ".join(self.errors))
            return
        self.attempts += 1
        self.tried.add(inst.key)
        self.inst = inst
        s = socket.socket(socket.AF_INET6 if ":" in inst.address else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        set_nodelay(s)
        if self.proxy.cfg.mark:   # a transparent proxy's own connection: iptables lets it out
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.proxy.cfg.mark)
            except OSError as e:
                s.close()
                self.fail(f"cannot mark the connection to {inst.address}:{inst.port} (SO_MARK needs "
                          f"CAP_NET_ADMIN: run the sidecar as root): {e.strerror}")
                return
        err = s.connect_ex((inst.address, inst.port))
        self.state = "connect"
        self.server = Side(self.proxy.reactor, s, False, self, OUT)
        self.timer = self.proxy.reactor.call_later(self.proxy.cfg.connect_timeout, self._timeout)
        if err not in (0, errno.EINPROGRESS):
            self._retry(os.strerror(err), "connect")

    def _session_key(self) -> tuple[str, str, int]:
        """Sessions are kept per destination and instance: a terminating gateway is one instance
        of several services, each with its own certificate, and a session resumed for one would
        present another's."""
        return (self.up.destination, *self.inst.key)   # type: ignore[union-attr]

    def _keep_session(self) -> None:
        """The connection ends: keep the session ticket its server sent (TLS 1.3 sends it after
        the handshake, so it is here once any reply was read) for the next connections to this
        instance to resume. A ticket serves many resumptions, so a new one is taken only when
        there is none, when the one offered was not accepted (the server's certificate or roots
        rotated), or when half its lifetime is gone."""
        sessions = self.material.sessions
        key = self._session_key()
        kept = sessions.get(key)
        sock = self.server.sock   # type: ignore[union-attr]
        resume.finish(sock, self.material.client)
        if kept is not None and kept is self.offered and sock.session_reused and kept.fresh():
            return
        ticket = resume.take(sock)
        if ticket is not None:
            if len(sessions) >= 4096 and key not in sessions:
                sessions.clear()   # instances come and go: the ones still used fill it again
            sessions[key] = ticket

    def _timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        self._retry(f"timed out in {self.state}", "timeout")

    # -- events --------------------------------------------------------------------------------
    def on_side_event(self, side: Side, ev: int) -> None:
        if self.done:
            return
        if side is self.client:
            if ev & ERRS:
                self.fail("client went away")
            return
        if self.state == "connect":
            err = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._retry(os.strerror(err), "connect")
                return
            material = self.proxy.material
            self.offered = material.sessions.get(self._session_key())
            side.sock = resume.wrap(material.client, side.sock, self.offered,
                                    sni_name(self.up.destination, self.inst.datacenter, material.trust_domain))
            side.tls = True
            self.state = "handshake"
            # the handshake has its own deadline: a burst of new connections queues handshakes
            # at the instance's sidecar, which answers them in turn, not in connect_timeout
            if self.timer:
                self.timer.cancel()
            self.timer = self.proxy.reactor.call_later(self.proxy.cfg.handshake_timeout, self._timeout)
            self.material = material
        if self.state == "handshake":
            self._handshake()

    def _handshake(self) -> None:
        side = self.server
        try:
            side.sock.do_handshake()
        except ssl.SSLWantReadError:
            side.set_mask(IN)
            return
        except ssl.SSLWantWriteError:
            side.set_mask(OUT)
            return
        except (ssl.SSLError, OSError) as e:
            self._retry(f"tls handshake: {ssl_reason(e)}", "tls")
            return
        pc = peer_cert(side.sock)
        want = service_uri(self.material.trust_domain, self.inst.datacenter, self.up.destination)
        got = pc.uri if pc else ""
        if got.lower() != want.lower():
            self._retry(f"server identity {got or '(none)'} is not {want}", "identity")
            return
        if side.sock.session_reused:
            if expired(pc.not_after):   # type: ignore[union-attr]
                self.material.sessions.pop(self._session_key(), None)
                self._retry("resumed a session whose server certificate has expired", "tls")
                return
            self.proxy.metrics.tls_resumed["upstream"] += 1
        self.done = True
        if self.timer:
            self.timer.cancel()
        self._ungate()
        self.balancer.acquire(self.inst)
        self.proxy.metrics.upstream_connected(self.up.destination, time.monotonic() - self.started)
        pipe = Pipe(self.proxy.reactor, self.client, side, self.proxy.upstream_closed, self)
        pipe.before_close = self._keep_session
        self.proxy.upstream_opened(pipe)
        pipe.start()


def start_waiting(bal: Balancer) -> None:
    """Start the connections waiting for a place (or for a cold balancer's first endpoints)."""
    while bal.waiting and bal.dialing < MAX_DIALING and not bal.cold:
        nxt = bal.waiting.popleft()
        if not nxt.done:
            nxt._start()
