"""The transparent proxy's outbound listener (`transparent_proxy { outbound_port }`, 15001).

The client agent's iptables rules in the allocation's namespace (nat OUTPUT, chain
YURT_PROXY_OUTPUT) REDIRECT the group's outbound TCP here; the sockets this proxy dials itself
carry the socket mark `MARK` and are let through. Per accepted connection the original
destination is read with SO_ORIGINAL_DST, then:

- a virtual IP of a Connect service (the agent's `/v1/agent/connect/virtual-ips`, followed with
  a blocking query): an `UpstreamConn` to that service, as an upstream listener's connection
  (mTLS to a healthy instance of its sidecar, which checks intentions). The service's endpoints
  are watched from its first connection on; connections that come before the first answer wait
  for it (`Balancer.cold`);
- an address in the virtual IP range that no service has: closed, and logged naming the IP;
- anything else: passed through to the original destination as plain TCP (Consul's default,
  `mesh_destinations_only = false`), or closed when `mesh_destinations_only` is set, in the
  sidecar's config or by the `mesh` config entry's TransparentProxy.MeshDestinationsOnly
  (followed live: it comes with the service's chain, `Proxy._on_mesh_destinations_only`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from typing import TYPE_CHECKING

from .pump import ERRS, OUT, Pipe, Side, set_nodelay

if TYPE_CHECKING:
    from .proxy import Proxy

SO_ORIGINAL_DST = 80        # linux/netfilter_ipv4.h
MARK = 0x5955               # "YU": the mark on the proxy's own outbound sockets (iptables lets them out)
DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_VIP_CIDR = "240.0.0.0/4"


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before iptables REDIRECTed it here (IPv4)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def mark(sock: socket.socket, value: int) -> None:
    """Put the proxy's mark on a socket it dials (needs CAP_NET_ADMIN, which the agent's
    sidecar has); without it iptables would send the proxy's own connection back to itself."""
    if value:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, value)


class VirtualIPTable:
    """Reactor-thread only: the last virtual IP table the agent sent."""

    def __init__(self, cidr: str = DEFAULT_VIP_CIDR) -> None:
        self.by_ip: dict[str, str] = {}
        self.network = ipaddress.ip_network(cidr, strict=False)

    def update(self, value: dict) -> None:
        services = value.get("Services") if isinstance(value, dict) else None
        self.by_ip = {ip: name for name, ip in (services or {}).items()}
        if isinstance(value, dict) and value.get("CIDR"):
            try:
                self.network = ipaddress.ip_network(value["CIDR"], strict=False)
            except ValueError:
                pass

    def in_range(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self.network
        except ValueError:
            return False


class PassthroughConn:
    """A redirected connection to something outside the mesh: dialled as it was meant, plain."""

    def __init__(self, proxy: Proxy, sock: socket.socket, addr, dst: tuple[str, int]) -> None:
        self.proxy = proxy
        self.started = time.monotonic()
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.dst = dst
        self.done = False
        self.client = Side(proxy.reactor, sock, False, self, 0)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        set_nodelay(s)
        self.server: Side | None = None
        try:
            mark(s, proxy.cfg.mark)
        except OSError as e:
            s.close()
            self.fail(f"cannot mark the passthrough socket (SO_MARK needs CAP_NET_ADMIN): {e.strerror}")
            return
        err = s.connect_ex(dst)
        self.server = Side(proxy.reactor, s, False, self, OUT)
        self.timer = proxy.reactor.call_later(proxy.cfg.connect_timeout, self._timeout)
        if err not in (0, errno.EINPROGRESS):
            self.fail(f"passthrough to {dst[0]}:{dst[1]}: {os.strerror(err)}")

    def _log(self, verdict: str, reason: str, a_to_b: int = 0, b_to_a: int = 0) -> None:
        self.proxy.log.conn("passthrough", self.proxy.cfg.service, f"{self.dst[0]}:{self.dst[1]}", self.peer,
                            a_to_b, b_to_a, self.started, verdict, reason)

    def fail(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        timer = getattr(self, "timer", None)
        if timer is not None:
            timer.cancel()
        if self.server is not None:
            self.server.close()
        self.client.close()
        self._log("error", reason)

    def abort(self, reason: str) -> None:
        self.fail(reason)

    def _timeout(self) -> None:
        self.fail(f"passthrough to {self.dst[0]}:{self.dst[1]}: timed out in connect")

    def on_side_event(self, side: Side, ev: int) -> None:
        if self.done:
            return
        if side is self.client:
            if ev & ERRS:
                self.fail("client went away")
            return
        err = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(f"passthrough to {self.dst[0]}:{self.dst[1]}: {os.strerror(err)}")
            return
        self.done = True
        self.timer.cancel()
        pipe = Pipe(self.proxy.reactor, self.client, side, self.proxy.passthrough_closed, self)
        self.proxy.passthrough_pipes.add(pipe)
        pipe.start()


class Refused:
    """A connection the outbound listener closes at once (nothing to account for)."""

    client = None


def accept_outbound(proxy: Proxy, sock: socket.socket, addr) -> object:
    """The outbound listener's `make`: route one redirected connection (see the module doc)."""
    try:
        dst = original_dst(sock)
    except OSError as e:
        sock.close()
        proxy.log.event("outbound-refused", peer=f"{addr[0]}:{addr[1]}",
                        reason=f"no original destination (not redirected by iptables?): {e.strerror}")
        return Refused()
    vips = proxy.vips
    service = vips.by_ip.get(dst[0])
    if service:
        return proxy.transparent_upstream(service, sock, addr)
    if vips.in_range(dst[0]):
        sock.close()
        proxy.log.event("outbound-refused", destination=f"{dst[0]}:{dst[1]}",
                        reason=f"no service has the virtual IP {dst[0]}")
        return Refused()
    if proxy.cfg.mesh_destinations_only or proxy.mesh_destinations_only:
        sock.close()
        setting = ("mesh_destinations_only is set" if proxy.cfg.mesh_destinations_only else
                   'the mesh config entry sets TransparentProxy.MeshDestinationsOnly = true')
        proxy.log.event("outbound-refused", destination=f"{dst[0]}:{dst[1]}",
                        reason=f"not a mesh destination, and {setting}")
        return Refused()
    return PassthroughConn(proxy, sock, addr, dst)
