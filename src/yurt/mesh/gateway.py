"""Gateways: the sidecar proxy in a gateway mode (config key "gateway", Consul's config entry).

Ingress gateway (`Kind: ingress-gateway`): listeners on the gateway's ports (the group network
maps them to the host), each carrying outside traffic into mesh services over mTLS, the gateway
being the source identity (so intentions `<gateway> -> <service>` apply at the service's sidecar):

  protocol "tcp", no TLS   one service per listener; the reactor's upstream path (upstream.py,
                           balancer.py) exactly as a sidecar's upstream listener, on 0.0.0.0
  protocol "tcp", TLS      the edge TLS handshake, then the same mTLS dial, on a thread
  protocol "http"          HTTP/1.1 per request (h11), on a thread per client connection: the
                           Host header picks the service (`Hosts`, default `<service>.ingress.*`
                           as Consul's); a host no service matches is answered 404, a service
                           with no healthy instance 503, and a dial that fails or a connection
                           the service's sidecar closes before answering (an intention denies)
                           502/503, each with a log line naming the service

  TLS at the edge (`TLS.Enabled`): the listener serves a certificate from the cluster's CA for
  the gateway's hosts (DNS SANs; the agent's leaf endpoint with ?dns_san=), TLS 1.2+ (or
  `TLSMinVersion`), no client certificate.

Terminating gateway (`Kind: terminating-gateway`): one mTLS listener (the injected port
`connect-terminating-<service>`) for mesh services dialling a linked external service; the
catalog lists the gateway as that service's connect endpoint. The gateway holds each linked
service's leaf (it presents the one the client asked for by SNI, `<service>.<...>`, or the
first), checks intentions `<source> -> <linked service>`, and forwards plain TCP (or TLS with
`CAFile`/`CertFile`/`KeyFile`/`SNI`) to the address the catalog has for the service
(`PUT /v1/catalog/register`). A service the catalog does not know closes the connection, with a
log line naming it.

The threaded paths use blocking sockets and one thread per connection (capped at
max_connections): gateways carry edge traffic, and the TCP fast path stays the reactor's.

The config entry: the gateway starts from the job's block (the task's config, in the entry's
shape) and then follows `/v1/config/<kind>/<name>` (a blocking watch through the agent), which
the server writes from the job at `job run` and which `PUT /v1/config` may change. A new entry
is applied live on the reactor thread: an ingress listener's services and hosts, its protocol,
TLS at the edge and its hosts; a listener added binds its port (a warning when the group's
network maps no host port to it), a listener removed closes its port (connections already
accepted finish). A terminating gateway's linked services' TLS settings change; a linked
service added gets its watches (its leaf needs the gateway's identity to name it, which only
the job gives: the server refuses that change for a gateway a job runs), one removed is closed.
An entry that is deleted or cannot be served is logged and the gateway keeps what it serves.
"""

from __future__ import annotations

import fnmatch
import os
import random
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import h11

from yurt.errors import ConfigError, NotFound

from .balancer import Balancer
from .config import UpstreamConfig
from .inbound import Listener, listen
from .threaded import ThreadedConns, next_cycle
from .tls import (TLSMaterial, _load_chain, build_material, parse_spiffe, peer_cert, roots_bundle, service_uri,
                  ssl_reason)
from .upstream import UpstreamConn

if TYPE_CHECKING:
    from .proxy import Proxy

INGRESS, TERMINATING = "ingress-gateway", "terminating-gateway"
HOP_HEADERS = {b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te", b"trailer"}
MAX_ATTEMPTS = 3


class GatewayError(Exception):
    """Why a connection or request could not be carried (answered on the wire, logged)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the config entry ----------------------------------------------------------------------------

@dataclass
class IngressService:
    name: str
    hosts: list[str] = field(default_factory=list)

    def patterns(self) -> list[str]:
        return [h.lower() for h in self.hosts] or [f"{self.name}.ingress.*"]


@dataclass
class IngressListener:
    port: int
    protocol: str = "tcp"
    services: list[IngressService] = field(default_factory=list)


@dataclass
class LinkedService:
    name: str
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    sni: str = ""


@dataclass
class GatewayConfig:
    """Consul's ingress-gateway / terminating-gateway config entry, typed. The job's gateway
    block arrives in this shape (structs/gateway.py writes it), and so would an entry from
    `/v1/config/<kind>/<name>`."""
    kind: str
    name: str = ""
    listeners: list[IngressListener] = field(default_factory=list)
    services: list[LinkedService] = field(default_factory=list)
    tls_enabled: bool = False
    tls_min_version: str = ""

    @classmethod
    def from_entry(cls, d: dict[str, Any]) -> GatewayConfig:
        kind = d.get("Kind") or ""
        if kind not in (INGRESS, TERMINATING):
            raise ConfigError(f'gateway Kind "{kind}" is not served: use "{INGRESS}" or "{TERMINATING}"')
        tls = d.get("TLS") or {}
        cfg = cls(kind=kind, name=str(d.get("Name") or ""), tls_enabled=bool(tls.get("Enabled")),
                  tls_min_version=str(tls.get("TLSMinVersion") or ""))
        if cfg.tls_min_version not in ("", "TLSv1_2", "TLSv1_3"):
            raise ConfigError(f'gateway TLS.TLSMinVersion "{cfg.tls_min_version}": use TLSv1_2 or TLSv1_3')
        for name in ("CipherSuites", "TLSMaxVersion", "SDS"):
            if tls.get(name):
                raise ConfigError(f"gateway TLS.{name} cannot be honoured by Yurt's gateway: remove it")
        seen: set[int] = set()
        for lst in d.get("Listeners") or []:
            port = lst.get("Port")
            if not isinstance(port, int) or not 1 <= port <= 65535 or port in seen:
                raise ConfigError(f"gateway listener port {port!r}: give each listener its own port (1-65535)")
            seen.add(port)
            protocol = lst.get("Protocol") or "tcp"
            if protocol not in ("tcp", "http"):
                raise ConfigError(f'gateway listener {port}: protocol "{protocol}" is not served: use tcp or http')
            services = [IngressService(str(s.get("Name") or ""), [str(h) for h in s.get("Hosts") or []])
                        for s in lst.get("Services") or []]
            if not services or not all(s.name for s in services):
                raise ConfigError(f"gateway listener {port}: every listener needs a named service")
            if protocol == "tcp" and len(services) != 1:
                raise ConfigError(f"gateway listener {port}: a tcp listener carries exactly one service")
            cfg.listeners.append(IngressListener(port, protocol, services))
        for s in d.get("Services") or []:
            if not s.get("Name"):
                raise ConfigError("terminating gateway service without a Name: name the external service")
            cfg.services.append(LinkedService(str(s["Name"]), s.get("CAFile") or "", s.get("CertFile") or "",
                                              s.get("KeyFile") or "", s.get("SNI") or ""))
        if kind == INGRESS and not cfg.listeners:
            raise ConfigError("an ingress gateway needs at least one listener")
        if kind == TERMINATING and not cfg.services:
            raise ConfigError("a terminating gateway needs at least one service")
        return cfg

    def edge_hosts(self) -> list[str]:
        """The DNS names the edge certificate carries: every listener service's hosts that are
        DNS names (a leading `*.` allowed); `<service>.ingress.*` patterns cannot be."""
        out: list[str] = []
        for lst in self.listeners:
            for s in lst.services:
                for h in s.hosts:
                    h = h.lower().split(":")[0]
                    plain = h[2:] if h.startswith("*.") else h
                    if plain and "*" not in plain and h not in out:
                        out.append(h)
        return out


def route(listener: IngressListener, host: str) -> IngressService | None:
    """The service of an http listener a request's Host header picks (port ignored), or None."""
    host = host.strip().lower()
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    for s in listener.services:
        for p in s.patterns():
            if fnmatch.fnmatchcase(bare, p) or fnmatch.fnmatchcase(host, p):
                return s
    return None


# -- the gateway -------------------------------------------------------------------------------

class Gateway:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.cfg = GatewayConfig.from_entry(proxy.cfg.gateway or {})
        self.balancers: dict[str, Balancer] = {}
        self.edge: ssl.SSLContext | None = None
        self.linked: dict[str, TLSMaterial] = {}     # terminating: each linked service's identity
        self._linked_leaf: dict[str, dict] = {}
        self.external: dict[str, list[tuple[str, int]]] = {}   # terminating: catalog addresses
        self.threads = ThreadedConns(proxy, proxy.cfg.max_connections)   # http and TLS listeners
        # terminating: open connections per linked service, so a new deny closes them
        self._open: dict[str, dict[int, _Open]] = {}
        self._open_lock = threading.Lock()
        self.ports: dict[int, Listener] = {}   # ingress: each listener's bound socket, by port
        self._watched: set[str] = set()        # ingress destinations / linked services with watches
        self._entry_index = 0                  # the ModifyIndex of the entry applied (0: the job's block)

    # -- startup (before the reactor runs) ------------------------------------------------------
    def bind(self) -> None:
        p = self.proxy
        if self.cfg.kind == INGRESS:
            for lst in self.cfg.listeners:
                for s in lst.services:
                    self.balancers.setdefault(s.name, Balancer())
                self._bind_port(lst.port)
            p.log.event("gateway", kind=INGRESS, listeners=[
                {"port": lst.port, "protocol": lst.protocol, "services": [s.name for s in lst.services]}
                for lst in self.cfg.listeners], tls=self.cfg.tls_enabled)
        else:
            if p.cfg.listen_port is None:
                raise ConfigError("a terminating gateway needs -listen ADDR:PORT (its mTLS listener)")
            sock = listen(p.cfg.listen_addr, p.cfg.listen_port)
            lst = Listener(p, sock, lambda s, a: self._spawn(self._serve_terminating, None, s, a))
            p.public, p.public_port = lst, lst.port
            p.listeners.append(lst)
            p.log.event("gateway", kind=TERMINATING, port=lst.port, services=[s.name for s in self.cfg.services])

    def _bind_port(self, port: int) -> Listener:
        p = self.proxy
        lst = Listener(p, listen("0.0.0.0", port), lambda s, a, n=port: self._accept(n, s, a),
                       p.cfg.max_connections)
        p.listeners.append(lst)
        self.ports[port] = lst
        return lst

    def _listener(self, port: int) -> IngressListener | None:
        """The listener on `port` as the entry now says (it may have changed since an accept)."""
        return next((lst for lst in self.cfg.listeners if lst.port == port), None)

    def _accept(self, port: int, sock: socket.socket, addr: Any) -> Any:
        """A plain tcp listener is a sidecar's upstream listener on 0.0.0.0 (the reactor's fast
        path); the others go to a thread each. Looked up per accept: the entry may change."""
        lst = self._listener(port)
        if lst is None:
            sock.close()
            return None
        if lst.protocol == "tcp" and not self.cfg.tls_enabled:
            up = UpstreamConfig(lst.services[0].name, lst.port, "0.0.0.0")
            bal = self.balancers.setdefault(up.destination, Balancer())
            return UpstreamConn(self.proxy, up, bal, sock, addr)
        return self._spawn(self._serve_ingress, lst, sock, addr)

    def start_watches(self) -> None:
        p = self.proxy
        for dest in list(self.balancers):
            p._endpoints_pending.add(dest)
            if getattr(p.source, "chain", None) is not None:
                p._endpoints_pending.add(f"chain:{dest}")
            self._watch_destination(dest)
        client = getattr(p.source, "client", None)
        if self.cfg.kind == INGRESS and self.cfg.tls_enabled:
            p._endpoints_pending.add("edge-certificate")
            self._watch_edge_leaf()
        for s in self.cfg.services:
            p._endpoints_pending.update({f"leaf:{s.name}", f"catalog:{s.name}"})
            self._watch_linked(s.name)
        if client is not None:   # the config entry (readiness does not wait: the job's block is the start)
            path = f"/v1/config/{self.cfg.kind}/{quote(self.cfg.name or p.cfg.service, safe='')}"

            def entry(i: int, w: float) -> tuple[Any, int]:
                try:
                    body, idx = client.get(path, index=i, wait=f"{max(1, int(w))}s")
                    return body, idx
                except NotFound:
                    return None, 0   # no entry: asked again each second (Watch polls at index 0)
            p._watch("config-entry", entry, self._on_entry)

    def _watch_destination(self, dest: str) -> None:
        p, src, dc = self.proxy, self.proxy.source, self.proxy.cfg.datacenter
        bal = self.balancers.setdefault(dest, Balancer())
        self._watched.add(dest)
        p._watch(f"endpoints-{dest}", lambda i, w, d=dest: src.endpoints(d, dc, i, w),
                 lambda v, b=bal, d=dest: p._on_endpoints(d, b, dc, v))
        chain = getattr(src, "chain", None)
        if chain is not None:   # its discovery chain: an http service's routes, splits, retries (l7.py)
            p._watch(f"chain-{dest}", lambda i, w, d=dest: chain(d, i, w), lambda v, d=dest: p._on_chain(d, v),
                     lambda d=dest: p._chain_failed(d))

    def _watch_edge_leaf(self) -> None:
        p = self.proxy
        client = getattr(p.source, "client", None)
        hosts = ",".join(self.cfg.edge_hosts())
        path = f"/v1/agent/connect/ca/leaf/{quote(p.cfg.service, safe='')}"
        p._watch("edge-leaf", lambda i, w: client.get(path, index=i, wait=f"{max(1, int(w))}s",
                                                      dns_san=hosts or None), self._on_edge_leaf)

    def _watch_linked(self, name: str) -> None:
        p, src = self.proxy, self.proxy.source
        client = getattr(src, "client", None)
        self._watched.add(name)
        p._watch(f"leaf-{name}", lambda i, w, n=name: src.leaf(n, i, w),
                 lambda v, n=name: self._on_linked_leaf(n, v))
        p._watch(f"intentions-{name}", lambda i, w, n=name: src.intentions(n, i, w),
                 lambda _v, n=name: self._recheck(n))
        cpath = f"/v1/catalog/service/{quote(name, safe='')}"
        p._watch(f"catalog-{name}", lambda i, w, c=cpath: client.get(c, index=i, wait=f"{max(1, int(w))}s"),
                 lambda v, n=name: self._on_catalog(n, v))

    def _unwatch(self, *names: str) -> None:
        p = self.proxy
        for w in [w for w in p.watches if w.watch_name in names]:
            w.stop()
            p.watches.remove(w)

    # -- the config entry (reactor thread) --------------------------------------------------------
    def _on_entry(self, body: Any) -> None:
        p = self.proxy
        if not isinstance(body, dict):
            if self._entry_index:
                p.log.event("config-entry-missing", kind=self.cfg.kind, entry=self.cfg.name, reason=(
                    "the entry was deleted: the gateway keeps serving what it had; `job run` (or "
                    "PUT /v1/config) writes it again"))
            return
        index = int(body.get("ModifyIndex") or 0)
        try:
            new = GatewayConfig.from_entry(body)
            if new.kind != self.cfg.kind:
                raise ConfigError(f'the entry is a {new.kind}, and this gateway runs as a {self.cfg.kind}')
        except ConfigError as e:
            p.log.event("config-entry-error", kind=self.cfg.kind, entry=self.cfg.name, index=index,
                        error=f"{e}; the gateway keeps serving what it had")
            return
        first = not self._entry_index
        self._entry_index = index or self._entry_index or 1
        if new == self.cfg:
            if first:
                p.log.event("config-entry", kind=new.kind, entry=new.name, index=index, changed=False)
            return
        if new.kind == INGRESS:
            self._apply_ingress(new)
        else:
            self._apply_terminating(new)
        p.log.event("config-entry", kind=new.kind, entry=new.name, index=index, changed=True,
                    **({"listeners": [{"port": lst.port, "protocol": lst.protocol,
                                       "services": {s.name: s.hosts for s in lst.services}}
                                      for lst in new.listeners], "tls": new.tls_enabled}
                       if new.kind == INGRESS else {"services": [s.name for s in new.services]}))

    def _apply_ingress(self, new: GatewayConfig) -> None:
        p, old = self.proxy, self.cfg
        old_ports = {lst.port for lst in old.listeners}
        new_ports = {lst.port for lst in new.listeners}
        dests = {s.name for lst in new.listeners for s in lst.services}
        for dest in sorted(dests - self._watched):
            self._watch_destination(dest)
        for dest in sorted(self._watched - dests):
            self._watched.discard(dest)
            self.balancers.pop(dest, None)
            self._unwatch(f"endpoints-{dest}", f"chain-{dest}")
            p.chains.pop(dest, None)
            if p.l7 is not None:
                p.l7.update(p.chains)
        for port in sorted(old_ports - new_ports):
            lst = self.ports.pop(port, None)
            if lst is not None:
                lst.close()
                if lst in p.listeners:
                    p.listeners.remove(lst)
            p.log.event("listener-closed", port=port, reason="the config entry has no listener on it now")
        mapped = _mapped_ports()
        for port in sorted(new_ports - old_ports):
            try:
                self._bind_port(port)
            except OSError as e:
                p.log.event("listener-error", port=port, error=str(e))
                continue
            extra: dict[str, Any] = {}
            if mapped is not None and port not in mapped:
                extra["warning"] = (f"no port of the group's network maps to {port}: it is reachable only "
                                    f"inside the allocation; add port \"...\" {{ to = {port} }} to the job's "
                                    "network and run it")
            p.log.event("listener-added", port=port, **extra)
        edge_before = (old.tls_enabled, old.edge_hosts())
        self.cfg = new
        if new.tls_enabled and (new.tls_enabled, new.edge_hosts()) != edge_before:
            self._unwatch("edge-leaf")
            self._watch_edge_leaf()   # a certificate for the new hosts; until it comes, the old one serves
        elif not new.tls_enabled:
            self._unwatch("edge-leaf")

    def _apply_terminating(self, new: GatewayConfig) -> None:
        names = {s.name for s in new.services}
        for name in sorted(names - self._watched):
            self._watch_linked(name)
        self.cfg = new
        for name in sorted(self._watched - names):
            self._watched.discard(name)
            self._unwatch(f"leaf-{name}", f"intentions-{name}", f"catalog-{name}")
            self.linked.pop(name, None)
            self._linked_leaf.pop(name, None)
            self.external.pop(name, None)
            with self._open_lock:
                conns = list(self._open.get(name, {}).values())
            for c in conns:
                c.cut(f'the config entry no longer links "{name}"')

    # -- watch results (reactor thread) -----------------------------------------------------------
    def _done(self, what: str) -> None:
        p = self.proxy
        if what in p._endpoints_pending:
            p._endpoints_pending.discard(what)
            p._check_ready()

    def _on_edge_leaf(self, leaf: dict) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if self.cfg.tls_min_version == "TLSv1_3"
                               else ssl.TLSVersion.TLSv1_2)
        try:
            _load_chain(ctx, leaf["CertPEM"], leaf["PrivateKeyPEM"])
        except (ssl.SSLError, KeyError, OSError) as e:
            self.proxy.log.event("tls-error", cause="edge-leaf", error=str(e))
            return
        self.edge = ctx
        self.proxy.log.event("edge-leaf", serial=leaf.get("SerialNumber", ""), hosts=self.cfg.edge_hosts())
        self._done("edge-certificate")

    def _on_linked_leaf(self, name: str, leaf: dict) -> None:
        self._linked_leaf[name] = leaf
        self._build_linked(name)

    def _build_linked(self, name: str) -> None:
        roots, leaf = self.proxy._roots, self._linked_leaf.get(name)
        if leaf is None:
            return
        if not roots:
            self.proxy.reactor.call_later(0.2, self._build_linked, name)
            return
        try:
            m = build_material(roots.get("TrustDomain") or "", name, leaf["CertPEM"], leaf["PrivateKeyPEM"],
                               roots_bundle(roots), leaf.get("SerialNumber", ""), leaf.get("ValidBefore", ""))
        except Exception as e:  # noqa: BLE001 - keep serving with the previous material
            self.proxy.log.event("tls-error", cause=f"leaf {name}", error=str(e))
            return
        m.server.sni_callback = self._sni
        self.linked[name] = m
        self.proxy.log.event("linked-leaf", service=name, serial=m.serial)
        self._done(f"leaf:{name}")

    def _on_catalog(self, name: str, entries: Any) -> None:
        addrs = []
        for e in entries or []:
            addr = e.get("ServiceAddress") or e.get("Address")
            port = e.get("ServicePort")
            if addr and port:
                addrs.append((str(addr), int(port)))
        self.external[name] = addrs
        self.proxy.log.event("external", service=name, addresses=[f"{a}:{p}" for a, p in addrs])
        if not addrs:
            self.proxy.log.event("external-unknown", service=name, reason=(
                f'the catalog has no service "{name}": register it with PUT /v1/catalog/register '
                "(Node, Address, Service { Service, Port })"))
        self._done(f"catalog:{name}")

    def _recheck(self, name: str) -> None:
        """The intentions for a linked service changed: ask again for every open connection to
        it (off the reactor: the agent answers over HTTP) and close those now denied, as a
        sidecar closes its denied inbound connections."""
        with self._open_lock:
            conns = list(self._open.get(name, {}).values())
        if not conns:
            return

        def check() -> None:
            decisions: dict[str, tuple[bool, str]] = {}
            for c in conns:
                if c.uri not in decisions:
                    try:
                        decisions[c.uri] = self.proxy.source.authorize(name, c.uri, c.serial)
                    except Exception:  # noqa: BLE001 - unknown: keep the connection, the next change asks again
                        decisions[c.uri] = (True, "")
                allowed, reason = decisions[c.uri]
                if not allowed:
                    c.cut(f"intentions changed: {reason}")

        threading.Thread(target=check, name=f"yurt-gateway-recheck-{name}", daemon=True).start()

    # -- threads ----------------------------------------------------------------------------------
    def _spawn(self, fn: Any, lst: IngressListener | None, sock: socket.socket, addr: Any) -> None:
        self.threads.spawn(fn, lst, sock, addr, sock=sock)

    def _peer(self, addr: Any) -> str:
        return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)

    # ingress --------------------------------------------------------------------------------------
    def _serve_ingress(self, lst: IngressListener, sock: socket.socket, addr: Any) -> None:
        p = self.proxy
        started = time.monotonic()
        peer = self._peer(addr)
        sock.setblocking(True)
        sock.settimeout(p.cfg.handshake_timeout)
        conn: socket.socket = sock
        if self.cfg.tls_enabled:
            edge = self.edge
            if edge is None:
                p.log.conn("ingress", peer, lst.services[0].name, peer, 0, 0, started, "refused",
                           "no edge certificate yet")
                return
            try:
                conn = edge.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as e:
                p.log.conn("ingress", peer, lst.services[0].name, peer, 0, 0, started, "refused",
                           f"edge tls handshake: {ssl_reason(e)}")
                return
        conn.settimeout(p.cfg.idle_timeout or None)
        if lst.protocol == "http":
            self._http(lst, conn, peer, started)
            return
        name = lst.services[0].name
        try:
            up, inst = self._dial(name)
        except GatewayError as e:
            p.log.conn("ingress", peer, name, peer, 0, 0, started, "error", str(e))
            return
        a_to_b, b_to_a, why = relay(conn, up, p.cfg.idle_timeout)
        up.close()
        p.log.conn("ingress", peer, name, peer, a_to_b, b_to_a, started, "allowed", why, upstream=inst)

    def _dial(self, name: str) -> tuple[ssl.SSLSocket, str]:
        """An mTLS connection to a healthy instance of `name`, its identity checked."""
        p = self.proxy
        material = p.material
        if material is None:
            raise GatewayError(503, "gateway not ready: no certificate yet")
        bal = self.balancers.get(name)
        instances = list(bal.instances) if bal is not None else []
        if not instances:
            raise GatewayError(503, f'no healthy instance of service "{name}" (is it running, with a '
                                    "sidecar, and passing its checks?)")
        random.shuffle(instances)
        errors = []
        for inst in instances[:MAX_ATTEMPTS]:
            s: socket.socket | None = None
            try:
                s = socket.create_connection((inst.address, inst.port), timeout=p.cfg.connect_timeout)
                s.settimeout(p.cfg.handshake_timeout)
                tls = material.client.wrap_socket(s, server_side=False)
                pc = peer_cert(tls)
                want = service_uri(material.trust_domain, inst.datacenter, name)
                if pc is None or pc.uri.lower() != want.lower():
                    tls.close()
                    errors.append(f"{inst.address}:{inst.port}: server identity {pc.uri if pc else '(none)'} "
                                  f"is not {want}")
                    continue
                tls.settimeout(p.cfg.idle_timeout or None)
                return tls, f"{inst.address}:{inst.port}"
            except (OSError, ssl.SSLError) as e:
                if s is not None:
                    s.close()
                errors.append(f"{inst.address}:{inst.port}: {ssl_reason(e)}")
        raise GatewayError(502, f'service "{name}" could not be reached: ' + "; ".join(errors))

    def _http(self, lst: IngressListener, conn: socket.socket, peer: str, started: float) -> None:
        p = self.proxy
        server = h11.Connection(h11.SERVER)
        while True:
            ev = self.threads.next_request(server, conn)
            if not isinstance(ev, h11.Request):
                return
            host = _header(ev.headers, b"host") or ev.target.decode("latin-1", "replace").split("/")[0]
            lst = self._listener(lst.port) or lst   # the entry as it is now (hosts may have changed)
            svc = route(lst, host)
            t0 = time.monotonic()
            if svc is None:
                hosts = ", ".join(f"{s.name}: {' '.join(s.patterns())}" for s in lst.services)
                why = f'no service of listener {lst.port} serves host "{host}" (hosts here: {hosts})'
                _drain_body(server, conn)
                _answer(server, conn, 404, why)
                p.log.conn("ingress", peer, "", peer, 0, 0, t0, "error", why, host=host, status=404)
            elif p.l7 is not None and p.l7.http(svc.name):
                self._via_chain(server, conn, ev, svc.name)
            else:
                status, why = self._forward(server, conn, ev, svc.name, peer)
                p.log.conn("ingress", peer, svc.name, peer, 0, 0, t0, "allowed" if status < 500 else "error",
                           why, host=host, status=status, method=ev.method.decode(), path=ev.target.decode())
            if not next_cycle(server):
                return

    def _via_chain(self, server: h11.Connection, conn: socket.socket, req: h11.Request, name: str) -> None:
        """An http service (its chain says so): the request, read whole, goes the way a
        sidecar's HTTP upstream sends it (l7.py: the chain's routes, splits, failover, retries
        and timeouts, pooled mTLS connections), which logs it."""
        from .l7 import MAX_BODY
        body = bytearray()
        while True:
            ev = _next_event(server, conn)
            if isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_BODY:
                    _answer(server, conn, 413, f"request body larger than {MAX_BODY} bytes")
                    return
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                return   # the client went away before sending its whole request
        self.proxy.l7._route(UpstreamConfig(name, 0), server, conn, req, bytes(body))

    def _forward(self, server: h11.Connection, conn: socket.socket, req: h11.Request, name: str,
                 peer: str) -> tuple[int, str]:
        try:
            up, inst = self._dial(name)
        except GatewayError as e:
            _drain_body(server, conn)
            _answer(server, conn, e.status, str(e))
            return e.status, str(e)
        why = (f'service "{name}" ({inst}) closed the connection before answering: its sidecar refused the '
               f"gateway (an intention {self.proxy.cfg.service} -> {name} denies it?) or the app failed")
        try:
            return forward_http(server, conn, req, up, peer, closing=lambda: bool(self.proxy.draining),
                                via=f"via {inst}", failed=why)
        finally:
            up.close()

    # terminating ----------------------------------------------------------------------------------
    def _sni(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        """Present the linked service the client named in its SNI (`<service>.<anything>` or
        the service itself), else the first one."""
        if not server_name:
            return
        name = server_name.lower()
        for svc, m in self.linked.items():
            if name == svc or name.startswith(svc + "."):
                sslobj.context = m.server
                return

    def _serve_terminating(self, _lst: Any, sock: socket.socket, addr: Any) -> None:
        p = self.proxy
        started = time.monotonic()
        peer = self._peer(addr)
        first = next((m for s in self.cfg.services if (m := self.linked.get(s.name)) is not None), None)
        if first is None:
            p.log.conn("terminating", peer, "", peer, 0, 0, started, "refused", "no linked service's certificate yet")
            return
        sock.setblocking(True)
        sock.settimeout(p.cfg.handshake_timeout)
        try:
            tls = first.server.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            p.log.conn("terminating", peer, "", peer, 0, 0, started, "refused", f"tls handshake: {ssl_reason(e)}")
            return
        name = tls.context is not None and next((s for s, m in self.linked.items() if m.server is tls.context), "")
        name = name or ""
        pc = peer_cert(tls)
        sid = parse_spiffe(pc.uri) if pc else None
        if pc is None or sid is None or sid.trust_domain != first.trust_domain:
            p.log.conn("terminating", peer, name, peer, 0, 0, started, "refused",
                       f"client certificate {pc.uri if pc else '(none)'} is not a service of this trust domain")
            return
        src = sid.service
        try:
            allowed, reason = p.source.authorize(name, pc.uri, pc.serial)
        except Exception as e:  # noqa: BLE001 - fail closed
            allowed, reason = False, f"authorization unavailable: {e}"
        if not allowed:
            p.metrics.denied(src)
            p.log.conn("terminating", src, name, peer, 0, 0, started, "denied", reason, serial=pc.serial)
            return
        linked = next((s for s in self.cfg.services if s.name == name), None)
        addrs = list(self.external.get(name) or [])
        if linked is None:
            p.log.conn("terminating", src, name, peer, 0, 0, started, "refused",
                       f'the config entry no longer links "{name}"')
            return
        if not addrs:
            p.log.conn("terminating", src, name, peer, 0, 0, started, "error",
                       f'the catalog has no address for external service "{name}": register it with '
                       "PUT /v1/catalog/register")
            return
        host, port = random.choice(addrs)
        try:
            out: socket.socket = socket.create_connection((host, port), timeout=p.cfg.connect_timeout)
            if linked.ca_file or linked.cert_file:
                ctx = ssl.create_default_context(cafile=linked.ca_file or None)
                if linked.cert_file:
                    ctx.load_cert_chain(linked.cert_file, linked.key_file or None)
                ctx.check_hostname = bool(linked.sni)
                out = ctx.wrap_socket(out, server_hostname=linked.sni or host)
        except (OSError, ssl.SSLError) as e:
            p.log.conn("terminating", src, name, peer, 0, 0, started, "error",
                       f"external service {name} at {host}:{port}: {ssl_reason(e)}")
            return
        tls.settimeout(p.cfg.idle_timeout or None)
        out.settimeout(p.cfg.idle_timeout or None)
        conn = _Open(pc.uri, pc.serial, tls, out)
        with self._open_lock:
            self._open.setdefault(name, {})[id(conn)] = conn
        try:
            a_to_b, b_to_a, why = relay(tls, out, p.cfg.idle_timeout)
        finally:
            with self._open_lock:
                self._open.get(name, {}).pop(id(conn), None)
            out.close()
        if conn.denied:
            p.metrics.denied(src)
        p.log.conn("terminating", src, name, peer, a_to_b, b_to_a, started, "denied" if conn.denied else "allowed",
                   conn.denied or why, upstream=f"{host}:{port}", serial=pc.serial)


# -- helpers ----------------------------------------------------------------------------------------

def _mapped_ports() -> set[int] | None:
    """The ports the group's network makes reachable in the allocation (its NOMAD_PORT_<label>
    values: the `to` ports of a bridge network), or None outside an allocation."""
    if "NOMAD_ALLOC_ID" not in os.environ:
        return None
    out: set[int] = set()
    for k, v in os.environ.items():
        if k.startswith("NOMAD_PORT_") and v.isdigit():
            out.add(int(v))
    return out


@dataclass
class _Open:
    """An open connection through a terminating gateway: who, and its two sockets."""
    uri: str
    serial: str
    client: socket.socket
    server: socket.socket
    denied: str = ""

    def cut(self, why: str) -> None:
        """Deny it from now on: both sockets shut down (their relay ends and logs `why`)."""
        self.denied = why
        for sock in (self.client, self.server):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def forward_http(server: h11.Connection, conn: socket.socket, req: h11.Request, up: socket.socket, peer: str,
                 *, closing: Callable[[], bool], via: str, failed: str) -> tuple[int, str]:
    """Send `req` (its body read from `conn`) to `up` and its answer back; (the status, what to
    log). `closing()`, asked when the answer comes: it says `Connection: close` (the proxy has
    begun draining meanwhile). `failed` says why when `up` closes before answering (a 503), or in
    the middle of its answer (a 502)."""
    client = h11.Connection(h11.CLIENT)
    headers = [(k, v) for k, v in req.headers if k.lower() not in HOP_HEADERS]
    headers.append((b"x-forwarded-for", peer.rsplit(":", 1)[0].encode()))
    headers.append((b"connection", b"close"))
    up.sendall(client.send(h11.Request(method=req.method, target=req.target, headers=headers)))
    while True:
        ev = _next_event(server, conn)
        if isinstance(ev, h11.Data):
            up.sendall(client.send(h11.Data(data=ev.data)))
        elif isinstance(ev, h11.EndOfMessage):
            up.sendall(client.send(h11.EndOfMessage()))
            break
        else:
            return 400, "the client went away before sending its whole request"
    responded, status = False, 0
    while True:
        try:
            rev = _next_event(client, up)
        except (h11.RemoteProtocolError, OSError, ssl.SSLError) as e:
            rev = e
        if isinstance(rev, h11.InformationalResponse):
            continue
        if isinstance(rev, h11.Response):
            headers = [(k, v) for k, v in rev.headers if k.lower() not in HOP_HEADERS]
            if closing():   # the last answer on this connection: say so
                headers.append((b"connection", b"close"))
            conn.sendall(server.send(h11.Response(status_code=rev.status_code, headers=headers,
                                                  reason=rev.reason)))
            responded, status = True, rev.status_code
        elif isinstance(rev, h11.Data):
            conn.sendall(server.send(h11.Data(data=rev.data)))
        elif isinstance(rev, h11.EndOfMessage):
            conn.sendall(server.send(h11.EndOfMessage()))
            return status, via
        elif not responded:
            _answer(server, conn, 503, failed)
            return 503, failed
        else:
            return 502, failed + " (in the middle of its answer)"


def _next_event(conn: h11.Connection, sock: socket.socket) -> Any:
    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            data = b""
        conn.receive_data(data)


def _header(headers: Any, name: bytes) -> str:
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return ""


def _drain_body(server: h11.Connection, sock: socket.socket) -> None:
    while server.their_state is h11.SEND_BODY:
        ev = _next_event(server, sock)
        if isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)) or ev is h11.PAUSED:
            return


def _answer(server: h11.Connection, sock: socket.socket, status: int, message: str) -> None:
    body = (message + "\n").encode()
    try:
        sock.sendall(server.send(h11.Response(status_code=status, headers=[
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())])))
        sock.sendall(server.send(h11.Data(data=body)))
        sock.sendall(server.send(h11.EndOfMessage()))
    except (OSError, h11.LocalProtocolError):
        pass


def relay(a: socket.socket, b: socket.socket, idle: float) -> tuple[int, int, str]:
    """Copy both ways until both sides are done (half-closes passed on) or `idle` seconds pass
    with no byte; (bytes a->b, bytes b->a, how it ended)."""
    peer = {a: b, b: a}
    counts = {a: 0, b: 0}
    open_ = {a: True, b: True}
    why = ""
    while open_[a] or open_[b]:
        ready = [s for s in (a, b) if open_[s] and isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select([s for s in (a, b) if open_[s]], [], [], idle or None)
            if not ready:
                why = f"idle for {idle:g}s (no bytes either way)"
                break
        for s in ready:
            try:
                data = s.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except (OSError, ssl.SSLError) as e:
                why = ssl_reason(e)
                return counts[a], counts[b], why
            if not data:
                open_[s] = False
                try:
                    socket.socket.shutdown(peer[s], socket.SHUT_WR)
                except OSError:
                    pass
                continue
            try:
                peer[s].sendall(data)
            except (OSError, ssl.SSLError) as e:
                return counts[a], counts[b], ssl_reason(e)
            counts[s] += len(data)
    return counts[a], counts[b], why
