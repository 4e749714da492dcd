"""The agent's DNS server (Consul's port 8600): mesh names over UDP and TCP.

    <service>.virtual.yurt   A      the service's virtual IP (`connect { virtual_ip_cidr }`)
    <service>.service.yurt   A/SRV  its healthy (passing) instances: addresses, and ports in SRV
    (.consul works the same way as .yurt, for Consul's habits)

A name in the mesh domains that does not exist is NXDOMAIN (DNS has no room for a message: the
agent logs the name at debug level). Other names go to `recursors` (else to the host's
resolvers) and their answer comes back as it is; with none reachable, SERVFAIL.

Where it listens: `ports { dns }` on `addresses { dns }` (default 127.0.0.1), and, for
each allocation whose group has a transparent proxy, 127.0.0.1:53 inside the allocation's
network namespace (`attach`: the sockets are made by a thread that joined the namespace, then
served here like the others), which the namespace's resolv.conf and nat rules point at. The wire
format is dnslib's.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, RR, SRV, A, DNSRecord
from dnslib.dns import DNSError

log = logging.getLogger("yurt.agent.dns")

DOMAINS = ("yurt", "consul")
TTL = 0                  # Consul's default dns_config.node_ttl / service_ttl
CACHE_SECONDS = 1.0      # the virtual IP table is asked again at most this often
FORWARD_TIMEOUT = 2.0
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Catalog:
    """What the DNS server reads, through the agent's API (its server or its own, in-process)."""

    def __init__(self, get: Callable[..., tuple[Any, int]]) -> None:
        self._get = get
        self._vips: dict[str, str] = {}
        self._vips_at = 0.0
        self._lock = threading.Lock()

    def virtual_ip(self, service: str) -> str:
        with self._lock:
            if time.monotonic() - self._vips_at > CACHE_SECONDS:
                body, _ = self._get("/v1/agent/connect/virtual-ips")
                self._vips = dict((body or {}).get("Services") or {})
                self._vips_at = time.monotonic()
            return self._vips.get(service, "")

    def instances(self, service: str) -> list[tuple[str, str, int]] | None:
        """(node name, address, port) of each passing instance; None: no such service."""
        body, _ = self._get(f"/v1/health/service/{service}", passing="true")
        if not body:
            all_, _ = self._get(f"/v1/catalog/service/{service}")
            return [] if all_ else None
        out = []
        for e in body:
            svc, node = e.get("Service") or {}, e.get("Node") or {}
            addr = svc.get("Address") or node.get("Address") or ""
            if addr:
                out.append((node.get("Node") or "node", addr, int(svc.get("Port") or 0)))
        return out


def host_resolvers() -> list[str]:
    """The host's nameservers (systemd-resolved's upstream file when resolv.conf is its stub)."""
    for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        servers = [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
        if servers:
            return servers
    return []


class MeshDNS:
    def __init__(self, catalog: Catalog, recursors: list[str] | None = None, datacenter: str = "dc1") -> None:
        self.catalog = catalog
        self.recursors = list(recursors or [])
        self.datacenter = datacenter
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="yurt-dns")
        self.stopped = threading.Event()
        self._socks: dict[str, list[socket.socket]] = {}   # listener key -> its sockets
        self._lock = threading.Lock()
        self.bound: tuple[str, int] | None = None

    # -- answering -------------------------------------------------------------------------------
    def answer(self, data: bytes, tcp: bool = False) -> bytes | None:
        try:
            q = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError, ValueError):
            return None
        if not q.questions:
            return None
        labels = [x.decode(errors="replace").lower() for x in q.q.qname.label]
        if not labels or labels[-1] not in DOMAINS:
            return self._forward(data, tcp) or self._reply(q, RCODE.SERVFAIL).pack()
        try:
            reply = self._mesh(q, labels)
        except Exception as e:  # noqa: BLE001 - the agent's API failed: the client may retry
            log.warning("dns %s: %s", q.q.qname, e)
            reply = self._reply(q, RCODE.SERVFAIL)
        return reply.pack()

    def _reply(self, q: DNSRecord, rcode: int = RCODE.NOERROR) -> DNSRecord:
        r = q.reply()
        r.header.rcode = rcode
        return r

    def _mesh(self, q: DNSRecord, labels: list[str]) -> DNSRecord:
        qname, qtype = q.q.qname, q.q.qtype
        # <service>.virtual[.<dc>].yurt and <service>.service[.<dc>].yurt
        body = labels[:-1]
        if len(body) == 3 and body[2] == self.datacenter:
            body = body[:2]
        if len(body) == 2 and not SERVICE_NAME.match(body[0]):   # never a path into the API
            log.debug("dns: %s: %r is not a service name", qname, body[0])
            return self._reply(q, RCODE.NXDOMAIN)
        if len(body) == 2 and body[1] == "virtual":
            ip = self.catalog.virtual_ip(body[0])
            if not ip:
                log.debug("dns: %s: no Connect service %r has a virtual IP", qname, body[0])
                return self._reply(q, RCODE.NXDOMAIN)
            r = self._reply(q)
            if qtype in (QTYPE.A, QTYPE.ANY):
                r.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=TTL))
            return r
        if len(body) == 2 and body[1] == "service":
            found = self.catalog.instances(body[0])
            if found is None:
                log.debug("dns: %s: no service %r in the catalog", qname, body[0])
                return self._reply(q, RCODE.NXDOMAIN)
            r = self._reply(q)
            for node, addr, port in found:
                if qtype in (QTYPE.A, QTYPE.ANY) and ":" not in addr:
                    r.add_answer(RR(qname, QTYPE.A, rdata=A(addr), ttl=TTL))
                elif qtype == QTYPE.SRV:
                    target = f"{node}.node.{self.datacenter}.{labels[-1]}."
                    r.add_answer(RR(qname, QTYPE.SRV, rdata=SRV(1, 1, port, target), ttl=TTL))
                    if ":" not in addr:
                        r.add_ar(RR(target, QTYPE.A, rdata=A(addr), ttl=TTL))
            return r
        log.debug("dns: %s: not a name Yurt answers (<service>.virtual.%s, <service>.service.%s)",
                  qname, labels[-1], labels[-1])
        return self._reply(q, RCODE.NXDOMAIN)

    def _forward(self, data: bytes, tcp: bool) -> bytes | None:
        for server in self.recursors or host_resolvers():
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "53")
            try:
                if tcp:
                    with socket.create_connection((host, int(port or 53)), timeout=FORWARD_TIMEOUT) as s:
                        s.sendall(struct.pack("!H", len(data)) + data)
                        n = struct.unpack("!H", _recv_exact(s, 2))[0]
                        return _recv_exact(s, n)
                with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(FORWARD_TIMEOUT)
                    s.sendto(data, (host, int(port or 53)))
                    return s.recv(65535)
            except (OSError, ValueError, struct.error) as e:
                log.debug("dns: recursor %s: %s", server, e)
        return None

    # -- serving ---------------------------------------------------------------------------------
    def listen(self, host: str, port: int) -> None:
        """UDP and TCP on host:port (the agent's own listener); raises OSError when taken."""
        udp, tcp = _sockets(host, port)
        self.bound = (host, udp.getsockname()[1])
        self._serve("agent", udp, tcp)

    def attach(self, alloc_id: str, netns_path: str) -> None:
        """Serve 127.0.0.1:53 inside the allocation's network namespace (idempotent)."""
        with self._lock:
            if alloc_id in self._socks:
                return
        made: list[Any] = []

        def inside() -> None:
            try:
                from yurt.client.procs import join_netns
                join_netns(netns_path)
                made.extend(_sockets("127.0.0.1", 53))
            except BaseException as e:  # noqa: BLE001 - reported to the caller below
                made.append(e)
        t = threading.Thread(target=inside, name="yurt-dns-netns", daemon=True)   # never reused
        t.start()
        t.join()
        if made and isinstance(made[0], BaseException):
            raise OSError(f"cannot serve DNS on 127.0.0.1:53 in the allocation's namespace {netns_path}: "
                          f"{made[0]}; if the group serves port 53 itself, set no_dns = true in transparent_proxy")
        self._serve(alloc_id, made[0], made[1])

    def detach(self, alloc_id: str) -> None:
        with self._lock:
            socks = self._socks.pop(alloc_id, [])
        for s in socks:
            s.close()

    def close(self) -> None:
        self.stopped.set()
        with self._lock:
            keys = list(self._socks)
        for k in keys:
            self.detach(k)
        self.pool.shutdown(wait=False)

    def _serve(self, key: str, udp: socket.socket, tcp: socket.socket) -> None:
        with self._lock:
            self._socks[key] = [udp, tcp]
        threading.Thread(target=self._udp_loop, args=(key, udp), name=f"yurt-dns-udp-{key[:8]}",
                         daemon=True).start()
        threading.Thread(target=self._tcp_loop, args=(key, tcp), name=f"yurt-dns-tcp-{key[:8]}",
                         daemon=True).start()

    def _live(self, key: str, sock: socket.socket) -> bool:
        return not self.stopped.is_set() and sock in self._socks.get(key, ())

    def _udp_loop(self, key: str, sock: socket.socket) -> None:
        while self._live(key, sock):
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.pool.submit(self._udp_one, sock, data, peer)

    def _udp_one(self, sock: socket.socket, data: bytes, peer: Any) -> None:
        out = self.answer(data)
        if out is None:
            return
        if len(out) > 512:   # too long for plain UDP: truncated, the client asks again over TCP
            try:
                r = DNSRecord.parse(out)
                r.rr, r.ar, r.auth = [], [], []
                r.header.tc = 1
                out = r.pack()
            except (DNSError, struct.error):
                return
        try:
            sock.sendto(out, peer)
        except OSError:
            pass

    def _tcp_loop(self, key: str, sock: socket.socket) -> None:
        while self._live(key, sock):
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.pool.submit(self._tcp_one, conn)

    def _tcp_one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                while True:
                    head = conn.recv(2)
                    if len(head) < 2:
                        return
                    data = _recv_exact(conn, struct.unpack("!H", head)[0])
                    out = self.answer(data, tcp=True)
                    if out is None:
                        return
                    conn.sendall(struct.pack("!H", len(out)) + out)
            except (OSError, struct.error):
                return


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed mid-message")
        buf += chunk
    return buf


def _sockets(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        udp.bind((host, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, udp.getsockname()[1]))
        tcp.listen(64)
    except OSError:
        udp.close()
        tcp.close()
        raise
    for s in (udp, tcp):
        s.settimeout(1.0)
        os.set_inheritable(s.fileno(), False)
    return udp, tcp
