"""The sidecar proxy, assembled: listeners + reactor + watches + authorization + readiness.

Threads: the reactor (all sockets, all proxy state) and one watch thread per followed item
(roots, leaf, intentions, each upstream's endpoints) plus two authorization workers. Watches
only hand values to the reactor; nothing else is shared.

Ready = every listener bound AND a leaf that verifies against the roots is loaded AND every
upstream's first list of endpoints (maybe empty) has arrived -- as Envoy warms a cluster before
using it, so the app's first connection, made as soon as its sidecar is ready, does not fail
for want of an answer not yet received. Then the ready file is written and the ready address
answers `200 LIVE`.

Stopping without dropping a request (the client agent's stop order, see docs/architecture.md):
SIGUSR1 drains the inbound side: the public listener closes (a new connection is refused, so
the caller's sidecar retries another instance) while the connections already accepted go on to
the app; once none is left the drained file is written. Upstream listeners keep serving (the
app may still be answering). SIGTERM or SIGINT stop the proxy gracefully: every listener
closes, open connections finish, and the proxy exits when none is left or `drain_timeout` has
passed (what is still open then is cut, and logged). A second SIGTERM/SIGINT exits at once.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

from .accesslog import AccessLog
from .authz import Authorizer
from .balancer import Balancer, instances_from_health
from .config import ProxyConfig, UpstreamConfig
from .inbound import InboundConn, Listener, listen
from .metrics import MeshMetrics, MetricsConn
from .pump import IN, Pipe, Reactor
from .source import MeshSource, Watch
from .tls import TLSMaterial, build_material, roots_bundle
from .upstream import UpstreamConn

DRAIN_POLL = 0.05  # seconds between two looks at the open connections while draining
TRIM_EVERY = 5.0   # seconds between two looks at whether to give freed memory back
TRIM_AFTER = 256   # connections closed since the last trim that make one worth its cost


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (another libc): freed heap pages go back to the OS."""
    try:
        import ctypes
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class Proxy:
    def __init__(self, cfg: ProxyConfig, source: MeshSource, log: AccessLog | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.log = log or AccessLog()
        self.metrics = MeshMetrics()
        self.reactor = Reactor()
        self.reactor.on_error = lambda e: self.log.event("internal-error", error=repr(e))
        self.material: TLSMaterial | None = None
        self._roots: dict | None = None
        self._leaf: dict | None = None
        self.authz = Authorizer(self.reactor, lambda uri, serial: source.authorize(cfg.service, uri, serial),
                                self._deny_existing)
        self.listeners: list[Listener] = []
        self.public: Listener | None = None
        self.draining = ""  # "" serving; "inbound": the public listener is closed; "all": stopping
        self.balancers: dict[int, Balancer] = {}
        self.inbound: dict[str, set[Pipe]] = {}  # source URI → open pipes
        self.upstream_pipes: set[Pipe] = set()
        # transparent proxy (mesh/transparent.py): the virtual IP table, one balancer per
        # destination reached through it, and the connections passed through to non-mesh ones
        self.vips: Any = None   # a VirtualIPTable with an outbound listener (imported only then)
        if cfg.outbound_port:
            from .transparent import VirtualIPTable
            self.vips = VirtualIPTable()
        self.tp_balancers: dict[str, Balancer] = {}
        self.passthrough_pipes: set[Pipe] = set()
        # the mesh config entry's TransparentProxy.MeshDestinationsOnly, from this service's chain
        self.mesh_destinations_only = False
        self._vips_pending = bool(cfg.outbound_port)
        self.watches: list[Watch] = []
        self.ready = threading.Event()
        self.public_port = 0
        self.metrics_port = 0
        self.upstream_ports: dict[str, int] = {}
        self.outbound_port = 0
        self._endpoints_pending: set[str] = set()  # upstreams whose first endpoints have not come
        self._thread: threading.Thread | None = None
        self._activity: dict[Pipe, tuple[tuple[int, int, bool], float]] = {}  # the idle sweep's
        self.closed_since_trim = 0  # accepted connections closed since memory was last trimmed
        self._trim: Any = False     # malloc_trim once looked up (None: not available)
        # HTTP-aware proxying (l7.py): each service's chain; `l7` made (and h11 imported) only
        # once a chain says "http"
        self.chains: dict[str, dict] = {}
        self.l7: Any = None
        self.gateway: Any = None    # mesh.gateway.Gateway in a gateway mode
        self.threaded: list[Any] = []   # mesh.threaded.ThreadedConns: connections served on threads

    # -- startup -------------------------------------------------------------------------------
    def bind(self) -> None:
        cfg = self.cfg
        if cfg.gateway is not None:   # a gateway mode: its own listeners (mesh/gateway.py)
            from .gateway import Gateway
            self.gateway = Gateway(self)
            self.gateway.bind()
        elif cfg.listen_port is not None:
            s = listen(cfg.listen_addr, cfg.listen_port, reuseport=cfg.workers > 1)
            lst = Listener(self, s, self._inbound_maker, cfg.max_connections)
            self.public_port = lst.port
            self.public = lst
            self.listeners.append(lst)
        for up in cfg.upstreams:
            bal = Balancer()
            s = listen(up.local_bind_address, up.local_bind_port, reuseport=cfg.workers > 1)
            lst = Listener(self, s, self._upstream_maker(up, bal), cfg.max_connections)
            self.balancers[lst.port] = bal
            self.upstream_ports[up.destination] = lst.port
            self.listeners.append(lst)
        if cfg.expose:   # exposed paths (mesh/expose.py; h11 imported only then)
            from .expose import Exposed
            Exposed(self, cfg.expose).bind()
        if cfg.outbound_port:
            from .transparent import accept_outbound
            s = listen(cfg.outbound_addr, cfg.outbound_port, reuseport=cfg.workers > 1)
            lst = Listener(self, s, lambda sock, addr: accept_outbound(self, sock, addr), cfg.max_connections)
            self.outbound_port = lst.port
            self.listeners.append(lst)
        if cfg.ready_addr:
            from .config import split_hostport
            host, port = split_hostport(cfg.ready_addr, "-ready-addr")
            self.listeners.append(Listener(self, listen(host, port), lambda sock, addr: ReadyConn(self, sock)))
        if cfg.metrics_addr:
            from .config import split_hostport
            host, port = split_hostport(cfg.metrics_addr, "-metrics-addr")
            lst = Listener(self, listen(host, port), lambda sock, addr: MetricsConn(self, sock))
            self.metrics_port = lst.port
            self.listeners.append(lst)

        if cfg.idle_timeout:
            self.reactor.call_later(self._sweep_every(), self._sweep_idle)
        self.reactor.call_later(TRIM_EVERY, self._trim_memory)

    def _trim_memory(self) -> None:
        """After many connections closed, hand the heap pages they freed back to the OS. glibc
        only returns the top of its heap by itself: what thousands of closed connections (their
        OpenSSL objects, buffers) freed in the middle stayed resident, so a burst of idle
        connections left the sidecar at its peak RSS for good."""
        if self.closed_since_trim >= TRIM_AFTER:
            self.closed_since_trim = 0
            if self._trim is False:
                self._trim = _malloc_trim()
            if self._trim is not None:
                self._trim(0)
        self.reactor.call_later(TRIM_EVERY, self._trim_memory)

    def _sweep_every(self) -> float:
        return min(max(self.cfg.idle_timeout / 10, 0.2), 30.0)

    def _sweep_idle(self) -> None:
        """Close pipes that moved no byte either way for idle_timeout (a connection with bytes
        still queued for a slow reader is not idle)."""
        now = time.monotonic()
        idle = self.cfg.idle_timeout
        pipes = ([p for ps in self.inbound.values() for p in ps] + list(self.upstream_pipes)
                 + list(self.passthrough_pipes))
        seen = self._activity
        self._activity = {}
        for p in pipes:
            mark = (p.a.nread, p.b.nread, p.a.out is None and p.b.out is None)
            last = seen.get(p)
            since = last[1] if last is not None and last[0] == mark and mark[2] else now
            if now - since >= idle:
                p.close("error", f"idle for {idle:g}s (no bytes either way)")
            else:
                self._activity[p] = (mark, since)
        self.reactor.call_later(self._sweep_every(), self._sweep_idle)

    def _inbound_maker(self, sock: socket.socket, addr: Any) -> Any:
        if self.l7 is not None and self.l7.http(self.cfg.service):
            return self.l7.inbound(sock, addr)   # HTTP per request (l7.py)
        return InboundConn(self, sock, addr)

    def _upstream_maker(self, up: UpstreamConfig, bal: Balancer):
        def make(sock: socket.socket, addr: Any) -> Any:
            if self.l7 is not None and self.l7.http(up.destination):
                return self.l7.upstream(up, sock, addr)   # HTTP per request (l7.py)
            return UpstreamConn(self, up, bal, sock, addr)
        return make

    def _watch(self, name: str, fn, on_value, on_error=None) -> None:
        def failed(n: str, err: str) -> None:
            self.log.event("watch-error", watch=n, error=err)
            if on_error is not None:
                on_error()
        w = Watch(name, fn, lambda v: self.reactor.call_soon_threadsafe(on_value, v),
                  lambda n, err: self.reactor.call_soon_threadsafe(failed, n, err))
        self.watches.append(w)
        w.start()

    def start_watches(self) -> None:
        src, cfg = self.source, self.cfg
        self._endpoints_pending = {up.destination for up in cfg.upstreams if up.destination in self.upstream_ports}
        self._watch("roots", src.roots, self._on_roots)
        self._watch("leaf", lambda i, w: src.leaf(cfg.service, i, w), self._on_leaf)
        self._watch("intentions", lambda i, w: src.intentions(cfg.service, i, w), self._on_intentions)
        chain = getattr(src, "chain", None)
        if chain is not None:   # each service's protocol and routes: the HTTP-aware path where "http"
            services = ([cfg.service] if cfg.listen_port is not None or cfg.outbound_port else []) + \
                [up.destination for up in cfg.upstreams if up.destination in self.upstream_ports]
            for svc in dict.fromkeys(services):
                self._endpoints_pending.add(f"chain:{svc}")
                self._watch(f"chain-{svc}", lambda i, w, s=svc: chain(s, i, w),
                            lambda v, s=svc: self._on_chain(s, v), lambda s=svc: self._chain_failed(s))
        if cfg.outbound_port:
            self._watch("virtual-ips", src.virtual_ips, self._on_virtual_ips)
        for up in cfg.upstreams:
            bal = self.balancers[self.upstream_ports[up.destination]] if up.destination in self.upstream_ports else None
            if bal is None:
                continue
            dc = up.datacenter or cfg.datacenter
            self._watch(f"endpoints-{up.destination}",
                        lambda i, w, d=up.destination, dc=dc: src.endpoints(d, dc, i, w),
                        lambda v, b=bal, dc=dc, d=up.destination: self._on_endpoints(d, b, dc, v))
        if self.gateway is not None:
            self.gateway.start_watches()

    # -- watch results (reactor thread) ---------------------------------------------------------
    def _on_roots(self, roots: dict) -> None:
        self._roots = roots
        self._rebuild("roots")

    def _on_leaf(self, leaf: dict) -> None:
        self._leaf = leaf
        self._rebuild("leaf")

    def _rebuild(self, why: str) -> None:
        if not self._roots or not self._leaf:
            return
        td = self._roots.get("TrustDomain") or ""
        try:
            m = build_material(td, self.cfg.service, self._leaf["CertPEM"], self._leaf["PrivateKeyPEM"],
                               roots_bundle(self._roots), self._leaf.get("SerialNumber", ""),
                               self._leaf.get("ValidBefore", ""))
        except Exception as e:  # noqa: BLE001 - keep serving with the previous material
            self.log.event("tls-error", cause=why, error=str(e))
            return
        if self.material is None:
            from . import resume
            self.log.event("tls-resumption", route="native" if resume.prove(m.client, m.server) else "ssl-module")
        self.material = m
        self.log.event(why, serial=m.serial, trust_domain=m.trust_domain,
                       roots=len(self._roots.get("Roots") or []), valid_before=m.valid_before)
        self._check_ready()

    def _on_intentions(self, _value: Any) -> None:
        self.authz.invalidate()

    def _on_chain(self, service: str, chain: dict) -> None:
        before = (self.chains.get(service) or {}).get("Protocol")
        self.chains[service] = chain or {}
        proto = self.chains[service].get("Protocol") or "tcp"
        if proto == "http" and self.l7 is None:
            from .l7 import L7
            self.l7 = L7(self)
        if self.l7 is not None:
            self.l7.update(self.chains)
        if proto != before:
            self.log.event("protocol", service=service, protocol=proto,
                           routes=len(self.chains[service].get("Routes") or []))
        if service == self.cfg.service and self.cfg.outbound_port:
            self._on_mesh_destinations_only(bool(self.chains[service].get("MeshDestinationsOnly")))
        key = f"chain:{service}"
        if key in self._endpoints_pending:
            self._endpoints_pending.discard(key)
            self._check_ready()

    def _on_mesh_destinations_only(self, value: bool) -> None:
        """The mesh entry's TransparentProxy.MeshDestinationsOnly changed: from now on a
        redirected connection to a destination outside the mesh is closed (or passed through
        again); the connections already passed through are closed when it turns on."""
        if value == self.mesh_destinations_only:
            return
        self.mesh_destinations_only = value
        self.log.event("mesh-config", setting="TransparentProxy.MeshDestinationsOnly", value=value,
                       passthrough="closed" if value or self.cfg.mesh_destinations_only else "allowed")
        if value:
            for pipe in list(self.passthrough_pipes):
                pipe.close("error", "closed: the mesh config entry sets TransparentProxy.MeshDestinationsOnly")

    def _chain_failed(self, service: str) -> None:
        """No chain yet (an agent or server without the route, say): readiness does not wait for
        it; the listener stays on TCP until a chain comes (the watch keeps asking)."""
        key = f"chain:{service}"
        if key in self._endpoints_pending:
            self._endpoints_pending.discard(key)
            self._check_ready()

    def _on_endpoints(self, dest: str, bal: Balancer, dc: str, entries: list[dict]) -> None:
        bal.update(instances_from_health(entries, dc))
        self.log.event("endpoints", destination=dest,
                       instances=[f"{i.address}:{i.port}" for i in bal.instances])
        if bal.cold:   # a transparent proxy's destination: the connections that waited go now
            from .upstream import start_waiting
            bal.cold = False
            start_waiting(bal)
        if dest in self._endpoints_pending:
            self._endpoints_pending.discard(dest)
            self._check_ready()

    def _on_virtual_ips(self, value: Any) -> None:
        self.vips.update(value)
        self.log.event("virtual-ips", services=len(self.vips.by_ip))
        if self._vips_pending:
            self._vips_pending = False
            self._check_ready()

    def transparent_upstream(self, service: str, sock: socket.socket, addr: Any) -> UpstreamConn:
        """A redirected connection to `service`'s virtual IP: an upstream connection to it, its
        endpoints watched from the first one on (connections wait for their first answer)."""
        bal = self.tp_balancers.get(service)
        if bal is None:
            bal = self.tp_balancers[service] = Balancer()
            bal.cold = True
            dc = self.cfg.datacenter
            self._watch(f"endpoints-{service}",
                        lambda i, w, d=service, dc=dc: self.source.endpoints(d, dc, i, w),
                        lambda v, b=bal, d=service, dc=dc: self._on_endpoints(d, b, dc, v))
        return UpstreamConn(self, UpstreamConfig(service, 0), bal, sock, addr)

    def passthrough_closed(self, pipe: Pipe, verdict: str, reason: str) -> None:
        conn = pipe.meta
        self._activity.pop(pipe, None)
        self.passthrough_pipes.discard(pipe)
        conn._log(verdict, reason, pipe.a_to_b, pipe.b_to_a)

    def _check_ready(self) -> None:
        if self.ready.is_set() or self.material is None or self._endpoints_pending or self._vips_pending:
            return
        if self.cfg.ready_file:
            tmp = self.cfg.ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("LIVE\n")
            os.replace(tmp, self.cfg.ready_file)
        self.ready.set()
        extra: dict[str, Any] = {"metrics_port": self.metrics_port} if self.metrics_port else {}
        if self.outbound_port:
            extra["outbound_port"] = self.outbound_port
        self.log.event("ready", service=self.cfg.service, public_port=self.public_port,
                       upstreams=self.upstream_ports, **extra)
        if self.cfg.debug_modules:
            import sys
            self.log.event("modules", modules=sorted(sys.modules))

    # -- connection registries (reactor thread) -------------------------------------------------
    def inbound_opened(self, pipe: Pipe) -> None:
        self.inbound.setdefault(pipe.meta.uri, set()).add(pipe)
        self.metrics.inbound_total += 1

    def inbound_closed(self, pipe: Pipe, verdict: str, reason: str) -> None:
        conn = pipe.meta
        self._activity.pop(pipe, None)
        pipes = self.inbound.get(conn.uri)
        if pipes is not None:
            pipes.discard(pipe)
            if not pipes:
                del self.inbound[conn.uri]
        self.metrics.inbound_closed(pipe.a_to_b, pipe.b_to_a)
        self.log.conn("inbound", conn.src, self.cfg.service, conn.peer, pipe.a_to_b, pipe.b_to_a,
                      conn.started, verdict, reason, serial=conn.serial)

    def upstream_opened(self, pipe: Pipe) -> None:
        self.upstream_pipes.add(pipe)

    def upstream_closed(self, pipe: Pipe, verdict: str, reason: str) -> None:
        conn = pipe.meta
        self._activity.pop(pipe, None)
        self.upstream_pipes.discard(pipe)
        conn.balancer.release(conn.inst)
        self.metrics.upstream_closed(conn.up.destination, pipe.a_to_b, pipe.b_to_a)
        self.log.conn("upstream", self.cfg.service, conn.up.destination, conn.peer, pipe.a_to_b, pipe.b_to_a,
                      conn.started, verdict, reason, upstream=f"{conn.inst.address}:{conn.inst.port}",
                      attempts=conn.attempts)

    def _deny_existing(self, uri: str, reason: str) -> None:
        for pipe in list(self.inbound.get(uri, ())):
            self.metrics.denied(pipe.meta.src)
            pipe.close("denied", f"intentions changed: {reason}")

    # -- draining (reactor thread) ---------------------------------------------------------------
    def drain_inbound(self) -> None:
        """Refuse new inbound connections, let the accepted ones finish; then the drained file."""
        if self.draining:
            return
        self.draining = "inbound"
        public = self.public
        self.log.event("draining", side="inbound", open=public.active if public else 0)
        if public is not None:
            public.close()
        self._poll_inbound()

    def _poll_inbound(self) -> None:
        workers_left = [f for f in self.cfg.worker_drained_files if not os.path.exists(f)]
        l7_open = self.l7.open_inbound if self.l7 is not None else 0
        if (self.public is not None and self.public.active > 0) or workers_left or l7_open:
            self.reactor.call_later(DRAIN_POLL, self._poll_inbound)
            return
        self.log.event("drained", side="inbound")
        if self.cfg.drained_file:
            tmp = self.cfg.drained_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("DRAINED\n")
            os.replace(tmp, self.cfg.drained_file)

    def drain_and_stop(self) -> None:
        """Close every listener, let open connections finish, stop when none is left or at the
        drain deadline; called again (a second signal): stop now."""
        if self.draining == "all":
            self.log.event("stopping", reason="second signal")
            self.reactor.stop()
            return
        self.draining = "all"
        deadline = time.monotonic() + self.cfg.drain_timeout
        self.log.event("draining", side="all", open=self._open(), timeout=self.cfg.drain_timeout)
        for lst in self.listeners:
            lst.close()
        for threaded in self.threaded:
            threaded.drain()
        self._poll_stop(deadline)

    def _open(self) -> int:
        l7_open = self.l7.open_inbound + self.l7.open_upstream if self.l7 is not None else 0
        threaded = sum(t.active for t in self.threaded)   # gateways' and exposed paths' connections
        return sum(lst.active for lst in self.listeners) + l7_open + threaded

    def _poll_stop(self, deadline: float) -> None:
        left = self._open()
        if left == 0:
            self.log.event("stopping", reason="drained")
            self.reactor.stop()
        elif time.monotonic() >= deadline:
            self.log.event("stopping", reason=f"drain timeout: {left} connection(s) still open")
            self.reactor.stop()
        else:
            self.reactor.call_later(DRAIN_POLL, self._poll_stop, deadline)

    # -- running -------------------------------------------------------------------------------
    def run(self) -> None:
        """Bind, watch, serve until stop(). Bind errors raise before anything is served."""
        self.bind()
        self.start_watches()
        try:
            self.reactor.run()
        finally:
            self._shutdown()

    def start_background(self) -> Proxy:
        """For tests and benches: bind now (errors raise here), serve on a thread."""
        self.bind()
        self.start_watches()

        def loop() -> None:
            try:
                self.reactor.run()
            finally:
                self._shutdown()

        self._thread = threading.Thread(target=loop, name="yurt-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.reactor.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def _shutdown(self) -> None:
        for w in self.watches:
            w.stop()
        self.authz.close()
        if self.l7 is not None:
            self.l7.close()
        for lst in self.listeners:
            try:
                lst.close()
            except OSError:
                pass
        for pipes in list(self.inbound.values()):
            for p in list(pipes):
                p.close("allowed", "proxy stopping")
        for p in list(self.upstream_pipes) + list(self.passthrough_pipes):
            p.close("allowed", "proxy stopping")
        for path in (self.cfg.ready_file, self.cfg.drained_file):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.reactor.close()


class ReadyConn:
    """`GET` anything on the ready address: 200 LIVE once ready, 503 before."""

    def __init__(self, proxy: Proxy, sock: socket.socket) -> None:
        self.proxy, self.sock = proxy, sock
        proxy.reactor.register(sock.fileno(), IN, self)

    def on_event(self, ev: int) -> None:
        try:
            self.sock.recv(4096)
            live = self.proxy.ready.is_set() and not self.proxy.draining
            body = b"LIVE" if live else b"DRAINING" if self.proxy.draining else b"NOT READY"
            status = b"200 OK" if live else b"503 Service Unavailable"
            self.sock.send(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        except OSError:
            pass
        self.abort("")

    def abort(self, reason: str) -> None:
        self.proxy.reactor.unregister(self.sock.fileno())
        self.sock.close()


def make_source(cfg: ProxyConfig) -> MeshSource:
    """The proxy's only source: its agent's API (certificates, roots, intentions, endpoints)."""
    from .source import AgentSource
    return AgentSource(cfg.address or None, token_file=cfg.token_file)


def _fork_workers(cfg: ProxyConfig) -> tuple[list[int], bool]:
    """-workers N: fork N-1 more proxy processes, each binding the same ports with SO_REUSEPORT
    (the kernel spreads connections over them). Called before any thread exists, so fork is
    safe. Only the first process keeps the ready file and ready address; each other worker
    writes `<drained file>.worker<n>` when its inbound drain is done, and the first one writes
    the drained file only once they all have. Returns (children, is_child)."""
    children: list[int] = []
    worker_files = [f"{cfg.drained_file}.worker{n}" for n in range(1, cfg.workers)] if cfg.drained_file else []
    for path in worker_files:  # a file a killed worker left: it would claim a drain not done
        try:
            os.unlink(path)
        except OSError:
            pass
    for n in range(1, cfg.workers):
        pid = os.fork()
        if pid == 0:
            cfg.ready_file = ""
            cfg.ready_addr = ""
            cfg.metrics_addr = ""   # the first worker's figures only (see docs/architecture.md)
            cfg.drained_file = worker_files[n - 1] if worker_files else ""
            return [], True
        children.append(pid)
    cfg.worker_drained_files = worker_files  # the first worker's drained file waits for these
    return children, False


def main(argv: list[str] | None = None) -> int:
    import sys
    from yurt.errors import ConfigError

    from .config import from_args
    try:
        cfg = from_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    children, is_child = _fork_workers(cfg) if cfg.workers > 1 else ([], False)
    source = make_source(cfg)
    proxy = Proxy(cfg, source)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: proxy.reactor.call_soon_threadsafe(proxy.drain_and_stop))
    signal.signal(signal.SIGUSR1, lambda *_: proxy.reactor.call_soon_threadsafe(proxy.drain_inbound))
    code = 0
    try:
        proxy.run()
    except OSError as e:
        print(f"Error: {e.strerror or e}", file=sys.stderr)
        code = 1
    finally:
        source.close()
        for pid in children:  # the first worker takes the others down with it
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        for pid in children:
            try:
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                    code = code or 1
            except OSError:
                pass
    if is_child:
        sys.stdout.flush()
        os._exit(code)
    return code
