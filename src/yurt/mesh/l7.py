"""The HTTP-aware sidecar (L7): HTTP/1.1 per request where a service's protocol is "http".

Chosen per listener and per accepted connection: the proxy follows each of its services' chain
(`/v1/agent/connect/chain/<service>`: protocol, intentions, routes, splits, targets; compiled by
the server from the config entries) and hands a new connection on the public listener (its own
service) or on an upstream listener (that upstream) to this module only while that chain says
"http"; everything else stays on the TCP path (pump.py, inbound.py, upstream.py), which pays
one dict lookup per accepted connection for it. This module, and h11 with it, is imported only
when a chain first says "http".

Each HTTP connection is served by a thread of its own with blocking sockets (the reactor keeps
the TCP path): h11 parses and writes HTTP/1.1 (never a hand-written parser), bodies are read
whole (up to MAX_BODY) before they are passed on.

Inbound (public mTLS listener): the client certificate's SPIFFE ID names the source service;
each request is checked against the intentions to this service in precedence order: the first
intention whose source and destination match decides, an L4 one by its Action, an L7 one by
its first matching permission (path exact/prefix/regex, methods, headers present/exact/prefix/
suffix/regex, invert) or, when none matches, the default intention policy (as Consul). A denied
request is answered 403 with a body naming the intention; an allowed one goes to the local app
over one kept-alive connection.

Upstream (the app's local listener): the first route whose match (path, headers, query
parameters, methods) fits the request picks a destination; its splits pick a target by weight;
the target (a service and subset) has its own endpoints, watched with the subset's filter
(`/v1/health/connect/<service>?filter=`). The request goes over mTLS to an instance whose
identity is verified, with the route's PrefixRewrite, RequestTimeout and retries (NumRetries,
on a connect failure or reset when RetryOnConnectFailure, on the RetryOnStatusCodes; each retry
on another instance when there is one); with no instance of the target, its Failover target.
Connections to instances are kept alive and reused.

Every request is logged (`{"type":"request",...}`: method, path, status, upstream, duration,
retries) and counted (yurt_sidecar_http_*).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import h11

from .balancer import Instance, instances_from_health
from .source import Watch
from .tls import expired, parse_spiffe, peer_cert, service_uri, ssl_reason

if TYPE_CHECKING:
    from .config import UpstreamConfig
    from .proxy import Proxy

READ = 65536
MAX_BODY = 16 * 1024 * 1024     # bytes of a request or response body a sidecar buffers
MAX_ATTEMPTS = 3                # instances tried for one request when dialling fails (as upstream.py)
IDLE_POOL = 16                  # idle kept-alive connections kept per instance
REQUEST_TIMEOUT = 60.0          # seconds for an answer when no route or resolver sets one
HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                 b"upgrade", b"content-length", b"expect"})


class Reset(Exception):
    """The instance closed or broke the connection before a whole answer."""


class NoAnswer(Reset):
    """The connection was closed (or failed to send) before any byte of an answer: on a kept-alive
    connection, the peer had closed it while idle, so the request can go again on a new one."""


class ConnectFailed(Exception):
    """Dial, TLS handshake or identity check failed."""


# -- matching -------------------------------------------------------------------------------------

def _header_ok(h: dict[str, Any], headers: dict[str, list[str]]) -> bool:
    values = headers.get(str(h.get("Name", "")).lower())
    if h.get("Exact") not in (None, ""):
        ok = values is not None and any(v == h["Exact"] for v in values)
    elif h.get("Prefix") not in (None, ""):
        ok = values is not None and any(v.startswith(h["Prefix"]) for v in values)
    elif h.get("Suffix") not in (None, ""):
        ok = values is not None and any(v.endswith(h["Suffix"]) for v in values)
    elif h.get("Regex") not in (None, ""):
        ok = values is not None and any(re.fullmatch(h["Regex"], v) is not None for v in values)
    else:   # Present, or a matcher with nothing else set
        ok = values is not None
    return ok != bool(h.get("Invert"))


def http_matches(m: dict[str, Any] | None, method: str, path: str, query: str,
                 headers: dict[str, list[str]]) -> bool:
    """Consul's HTTP match (a route's Match.HTTP or a permission's HTTP) against one request."""
    if not m:
        return True
    if m.get("PathExact") and path != m["PathExact"]:
        return False
    if m.get("PathPrefix") and not path.startswith(m["PathPrefix"]):
        return False
    if m.get("PathRegex") and re.fullmatch(m["PathRegex"], path) is None:
        return False
    methods = m.get("Methods") or []
    if methods and method.upper() not in {x.upper() for x in methods}:
        return False
    if not all(_header_ok(h, headers) for h in m.get("Header") or []):
        return False
    params = m.get("QueryParam") or []
    if params:
        q = parse_qs(query, keep_blank_values=True)
        for p in params:
            values = q.get(p.get("Name", ""))
            if p.get("Exact") not in (None, ""):
                ok = values is not None and p["Exact"] in values
            elif p.get("Regex") not in (None, ""):
                ok = values is not None and any(re.fullmatch(p["Regex"], v) is not None for v in values)
            else:
                ok = values is not None
            if not ok:
                return False
    return True


def _describe(m: dict[str, Any]) -> str:
    parts = [f"{k} {m[k]}" for k in ("PathExact", "PathPrefix", "PathRegex") if m.get(k)]
    if m.get("Methods"):
        parts.append("methods " + ",".join(m["Methods"]))
    if m.get("Header"):
        parts.append("headers " + ",".join(str(h.get("Name")) for h in m["Header"]))
    return " ".join(parts) or "any request"


def _names_match(pattern: str, name: str) -> bool:
    return pattern == "*" or pattern == name


def decide(chain: dict[str, Any], source: str, method: str, path: str, query: str,
           headers: dict[str, list[str]]) -> tuple[bool, str]:
    """(allowed, reason) for one request from `source` to the chain's service."""
    dest = chain.get("Service", "")
    default = bool(chain.get("DefaultAllow", True))
    for ix in chain.get("Intentions") or []:
        if not (_names_match(ix.get("DestinationName", ""), dest) and _names_match(ix.get("SourceName", ""), source)):
            continue
        name = f'{ix.get("SourceName")} => {ix.get("DestinationName")}'
        perms = ix.get("Permissions")
        if not perms:
            action = ix.get("Action", "")
            return action == "allow", f"intention {name} ({action})"
        for i, p in enumerate(perms, 1):
            if http_matches(p.get("HTTP") or {}, method, path, query, headers):
                action = p.get("Action", "")
                return action == "allow", f"intention {name}, permission {i}: {action} {_describe(p.get('HTTP') or {})}"
        policy = "allow" if default else "deny"
        return default, f"intention {name}: no permission matched {method} {path}; default policy {policy}"
    policy = "allow" if default else "deny"
    return default, f"no intention matched {source} => {dest}; default policy {policy}"


# -- HTTP plumbing --------------------------------------------------------------------------------

def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in raw:
        out.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
    return out


def _read(conn: h11.Connection, sock: Any) -> tuple[Any, bytes] | None:
    """The next whole message on `conn` (h11.Request or h11.Response, and its body), or None
    when the peer closed before one began. Raises Reset when it closes inside one."""
    head = None
    body = bytearray()
    eof = False
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError:
            if not eof:
                raise
            if head is None and not body:
                return None
            raise Reset("connection closed in the middle of a message") from None
        if ev is h11.NEED_DATA:
            try:
                data = sock.recv(READ)
            except TimeoutError:
                raise
            except (OSError, ssl.SSLError) as e:
                if head is None and not body:
                    return None
                raise Reset(str(e) or type(e).__name__) from None
            eof = not data
            conn.receive_data(data)
            continue
        if isinstance(ev, h11.InformationalResponse):
            continue
        if isinstance(ev, (h11.Request, h11.Response)):
            head = ev
            if conn.they_are_waiting_for_100_continue:   # curl's Expect: 100-continue: ask for the body now
                sock.sendall(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        elif isinstance(ev, h11.Data):
            body += ev.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError(f"body larger than {MAX_BODY} bytes", 413)
        elif isinstance(ev, h11.EndOfMessage):
            return head, bytes(body)
        elif isinstance(ev, h11.ConnectionClosed):
            if head is None:
                return None
            raise Reset("connection closed in the middle of a message")
        elif ev is h11.PAUSED:
            return None


def _forward_headers(raw: list[tuple[bytes, bytes]], body: bytes, keep_length: bool) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in raw if k.lower() not in HOP]
    if keep_length:
        out += [(k, v) for k, v in raw if k.lower() == b"content-length"]
    else:
        out.append((b"content-length", str(len(body)).encode()))
    return out


def _send(conn: h11.Connection, sock: Any, head: Any, body: bytes) -> None:
    data = conn.send(head) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    sock.sendall(data)


def _answer(conn: h11.Connection, sock: Any, status: int, text: str, keep: bool = True) -> None:
    """A response made by the sidecar itself (403, 502, 503, 504 ...)."""
    body = (text + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"x-yurt-sidecar", b"1")]
    if not keep:
        headers.append((b"connection", b"close"))
    try:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            _send(conn, sock, h11.Response(status_code=status, headers=headers), body)
    except (OSError, h11.LocalProtocolError):
        pass


def _upgrade(conn: h11.Connection, sock: Any, req: Any) -> bool:
    """CONNECT and protocol upgrades (WebSocket, h2c) are not proxied per request: 501, closed."""
    if req.method == b"CONNECT" or any(k.lower() == b"upgrade" for k, _ in req.headers):
        _answer(conn, sock, 501, "the mesh's HTTP-aware path proxies HTTP/1.1 requests only: CONNECT and "
                                 "Upgrade (WebSocket, h2c) are not supported; give the service protocol tcp",
                keep=False)
        return True
    return False


def _next_request(conn: h11.Connection, sock: Any) -> tuple[Any, bytes] | None:
    """The next request on a server connection and its body; None when the connection is done
    (closed, reset, timed out, a bad request answered 400, or an upgrade answered)."""
    try:
        msg = _read(conn, sock)
    except (h11.RemoteProtocolError, h11.LocalProtocolError) as e:
        _answer(conn, sock, getattr(e, "error_status_hint", 400), f"bad request: {e}", keep=False)
        return None
    except (Reset, TimeoutError):
        return None
    if msg is None or _upgrade(conn, sock, msg[0]):
        return None
    return msg


def _next_cycle(conn: h11.Connection) -> bool:
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
        return True
    return False


# -- endpoints of the targets ---------------------------------------------------------------------

@dataclass
class Target:
    service: str
    subset: str
    filter: str
    connect_timeout: float
    failover: str
    instances: list[Instance] = field(default_factory=list)
    rr: int = 0
    seen: bool = False   # its first list of endpoints has come


class L7:
    """The proxy's HTTP side: chains, targets, their endpoint watches, the connection threads."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.chains: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, Target] = {}
        self.watches: dict[tuple[str, str], Watch] = {}
        self.by_watch: dict[tuple[str, str], list[Instance]] = {}
        self.lock = threading.Lock()
        self.pool: dict[tuple[str, int, str], list[tuple[Any, h11.Connection]]] = {}
        self.wrr: dict[tuple, list[float]] = {}   # a route's splits -> their current weights
        self.open_inbound = 0
        self.open_upstream = 0
        self.socks: set[Any] = set()
        self.closed = False

    # -- chains (reactor thread) ---------------------------------------------------------------
    def http(self, service: str) -> bool:
        chain = self.chains.get(service)
        return chain is not None and chain.get("Protocol") == "http"

    def update(self, chains: dict[str, dict[str, Any]]) -> None:
        """New chains: start the endpoint watches of new targets, stop the ones no longer used."""
        self.chains = dict(chains)
        targets: dict[str, Target] = {}
        for svc, chain in chains.items():
            if chain.get("Protocol") != "http" or (svc == self.proxy.cfg.service and not self._is_upstream(svc)):
                continue
            for tid, t in (chain.get("Targets") or {}).items():
                old = self.targets.get(tid)
                target = Target(t.get("Service", ""), t.get("Subset", ""), t.get("Filter", ""),
                                float(t.get("ConnectTimeout") or self.proxy.cfg.connect_timeout), t.get("Failover", ""))
                if old is not None and (old.service, old.filter) == (target.service, target.filter):
                    target.instances, target.rr, target.seen = old.instances, old.rr, old.seen
                targets[tid] = target
        self.targets = targets
        wanted = {(t.service, t.filter) for t in targets.values()}
        for key in list(self.watches):
            if key not in wanted:
                self.watches.pop(key).stop()
                self.by_watch.pop(key, None)
        src = self.proxy.source
        for key in wanted:
            if key in self.watches:
                with self.lock:
                    self._assign(key)
                continue
            svc, flt = key
            fn = getattr(src, "filtered_endpoints", None)
            if fn is None:
                continue
            w = Watch(f"endpoints-{svc}" + (f"[{flt}]" if flt else ""),
                      lambda i, wt, s=svc, f=flt, fn=fn: fn(s, f, i, wt),
                      lambda v, k=key: self._on_endpoints(k, v),
                      lambda n, err: self.proxy.log.event("watch-error", watch=n, error=err))
            self.watches[key] = w
            w.start()

    def _is_upstream(self, svc: str) -> bool:
        return any(up.destination == svc for up in self.proxy.cfg.upstreams)

    def _on_endpoints(self, key: tuple[str, str], entries: list[dict]) -> None:
        """A watch thread: the instances of one (service, filter)."""
        dc = self.proxy.cfg.datacenter
        instances = instances_from_health(entries, dc)
        with self.lock:
            self.by_watch[key] = instances
            self._assign(key)
        self.proxy.log.event("endpoints", destination=key[0], filter=key[1],
                             instances=[f"{i.address}:{i.port}" for i in instances])

    def _assign(self, key: tuple[str, str]) -> None:
        if key not in self.by_watch:
            return
        for t in self.targets.values():
            if (t.service, t.filter) == key:
                t.instances = self.by_watch[key]
                t.seen = True

    def close(self) -> None:
        self.closed = True
        for w in self.watches.values():
            w.stop()
        with self.lock:
            socks = list(self.socks)
            for conns in self.pool.values():
                socks += [s for s, _ in conns]
            self.pool.clear()
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def _track(self, sock: Any, add: bool) -> None:
        with self.lock:
            (self.socks.add if add else self.socks.discard)(sock)

    # -- accepting (reactor thread) -------------------------------------------------------------
    def inbound(self, sock: socket.socket, addr: Any) -> None:
        self._spawn(self._serve_inbound, sock, addr, "inbound")

    def upstream(self, up: UpstreamConfig, sock: socket.socket, addr: Any) -> None:
        self._spawn(lambda s, a: self._serve_upstream(up, s, a), sock, addr, "upstream")

    def _spawn(self, fn: Callable[[Any, Any], None], sock: socket.socket, addr: Any, side: str) -> None:
        cap = self.proxy.cfg.max_connections
        with self.lock:
            full = bool(cap) and (self.open_inbound if side == "inbound" else self.open_upstream) >= cap
            if not full:
                if side == "inbound":
                    self.open_inbound += 1
                else:
                    self.open_upstream += 1
        if full:   # -max-connections: HTTP connections of one side at once, each a thread
            sock.close()
            self.proxy.log.event("connection-limit", side=f"http-{side}", limit=cap)
            return

        def run() -> None:
            try:
                fn(sock, addr)
            except Exception as e:  # noqa: BLE001 - one connection's failure must not go unseen
                self.proxy.log.event("internal-error", side=f"http-{side}", error=repr(e))
            finally:
                try:
                    sock.close()
                except OSError:
                    pass
                with self.lock:
                    if side == "inbound":
                        self.open_inbound -= 1
                    else:
                        self.open_upstream -= 1
        threading.Thread(target=run, name=f"yurt-http-{side}", daemon=True).start()

    # -- inbound ---------------------------------------------------------------------------------
    def _serve_inbound(self, sock: socket.socket, addr: Any) -> None:
        proxy, cfg = self.proxy, self.proxy.cfg
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        started = time.monotonic()
        material = proxy.material
        if material is None:
            proxy.log.conn("inbound", peer, cfg.service, peer, 0, 0, started, "refused", "proxy not ready")
            return
        sock.setblocking(True)
        sock.settimeout(cfg.handshake_timeout)
        try:
            tls = material.server.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            proxy.metrics.tls_failure("inbound")
            proxy.log.conn("inbound", peer, cfg.service, peer, 0, 0, started, "refused",
                           f"tls handshake: {ssl_reason(e)}")
            return
        self._track(tls, True)
        app: tuple[socket.socket, h11.Connection] | None = None
        try:
            pc = peer_cert(tls)
            if pc is not None and tls.session_reused and expired(pc.not_after):
                proxy.metrics.tls_failure("inbound")
                proxy.log.conn("inbound", peer, cfg.service, peer, 0, 0, started, "refused",
                               "resumed a session whose client certificate has expired")
                return
            sid = parse_spiffe(pc.uri) if pc else None
            if sid is None or sid.trust_domain != material.trust_domain:
                proxy.metrics.tls_failure("inbound")
                proxy.log.conn("inbound", peer, cfg.service, peer, 0, 0, started, "refused",
                               "client certificate is not a service of this trust domain")
                return
            source = sid.service
            tls.settimeout(cfg.idle_timeout or None)
            conn = h11.Connection(h11.SERVER)
            while not self.closed:
                msg = _next_request(conn, tls)
                if msg is None:
                    return
                req, body = msg
                t0 = time.monotonic()
                method, target = req.method.decode(), req.target.decode("latin-1")
                path, _, query = target.partition("?")
                hdrs = _headers(req.headers)
                chain = self.chains.get(cfg.service) or {"Service": cfg.service}
                allowed, reason = decide(chain, source, method, path, query, hdrs)
                if not allowed:
                    proxy.metrics.denied(source)
                    _answer(conn, tls, 403, f"RBAC: access denied by the mesh: {reason}")
                    self._done("inbound", source, cfg.service, method, path, 403, t0, "", 0, "denied", reason)
                    if not _next_cycle(conn):
                        return
                    continue
                status = 502
                try:
                    reused = app is not None
                    if app is None:
                        app = self._dial_app()
                    try:
                        resp, rbody = self._exchange(app, req, target, body)
                    except NoAnswer:
                        if not reused:
                            raise
                        # a kept-alive connection the app had closed meanwhile: once more, anew
                        self._close(app[0])
                        app = None
                        app = self._dial_app()
                        resp, rbody = self._exchange(app, req, target, body)
                    status = resp.status_code
                    keep_len = method == "HEAD" or status in (204, 304)
                    out = h11.Response(status_code=status, headers=_forward_headers(resp.headers, rbody, keep_len),
                                       reason=resp.reason)
                    _send(conn, tls, out, rbody)
                    if not _next_cycle(app[1]):
                        self._close(app[0])
                        app = None
                    self._done("inbound", source, cfg.service, method, path, status, t0,
                               f"{cfg.local_addr}:{cfg.local_port}", 0, "allowed", "")
                except (OSError, Reset, h11.ProtocolError) as e:
                    # as Envoy: the app refused, reset or closed before answering: 503 (a caller's
                    # route may retry it: RetryOnStatusCodes), no answer in time: 504
                    proxy.metrics.inbound_error("local_service")
                    if app is not None:
                        self._close(app[0])
                        app = None
                    status = 504 if isinstance(e, TimeoutError) else 503
                    what = "did not answer in time" if status == 504 else \
                        f"upstream connect error or disconnect/reset before headers: {e or type(e).__name__}"
                    _answer(conn, tls, status, f"local service {cfg.local_addr}:{cfg.local_port}: {what}")
                    self._done("inbound", source, cfg.service, method, path, status, t0,
                               f"{cfg.local_addr}:{cfg.local_port}", 0, "error", what)
                if not _next_cycle(conn):
                    return
        finally:
            self._track(tls, False)
            if app is not None:
                self._close(app[0])
            try:
                tls.close()
            except OSError:
                pass

    def _dial_app(self) -> tuple[socket.socket, h11.Connection]:
        cfg = self.proxy.cfg
        s = socket.create_connection((cfg.local_addr, cfg.local_port), timeout=cfg.connect_timeout)
        s.settimeout(REQUEST_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(s, True)
        return s, h11.Connection(h11.CLIENT)

    def _exchange(self, c: tuple[Any, h11.Connection], req: Any, target: str, body: bytes) -> tuple[Any, bytes]:
        sock, conn = c
        head = h11.Request(method=req.method, target=target.encode("latin-1"),
                           headers=_forward_headers(req.headers, body, False))
        try:
            _send(conn, sock, head, body)
        except OSError as e:
            raise NoAnswer(str(e)) from None
        msg = _read(conn, sock)
        if msg is None:
            raise NoAnswer("closed without an answer")
        return msg

    def _close(self, sock: Any) -> None:
        self._track(sock, False)
        try:
            sock.close()
        except OSError:
            pass

    def _done(self, direction: str, src: str, dst: str, method: str, path: str, status: int, t0: float,
              upstream: str, retries: int, verdict: str, reason: str) -> None:
        dur = time.monotonic() - t0
        self.proxy.metrics.http_request(direction, dst if direction == "upstream" else src, status, dur, retries)
        extra: dict[str, Any] = {"reason": reason} if reason else {}
        self.proxy.log.request(direction, src, dst, method, path, status, upstream, dur, retries, verdict, **extra)

    # -- upstream --------------------------------------------------------------------------------
    def _serve_upstream(self, up: UpstreamConfig, sock: socket.socket, addr: Any) -> None:
        cfg = self.proxy.cfg
        sock.setblocking(True)
        sock.settimeout(cfg.idle_timeout or None)
        self._track(sock, True)
        conn = h11.Connection(h11.SERVER)
        try:
            while not self.closed:
                msg = _next_request(conn, sock)
                if msg is None:
                    return
                req, body = msg
                self._route(up, conn, sock, req, body)
                if not _next_cycle(conn):
                    return
        finally:
            self._track(sock, False)

    def _route(self, up: UpstreamConfig, conn: h11.Connection, sock: Any, req: Any, body: bytes) -> None:
        t0 = time.monotonic()
        cfg = self.proxy.cfg
        method, target = req.method.decode(), req.target.decode("latin-1")
        path, _, query = target.partition("?")
        hdrs = _headers(req.headers)
        chain = self.chains.get(up.destination) or {}
        routes = chain.get("Routes") or []
        ri = next((i for i, r in enumerate(routes) if http_matches(r.get("Match"), method, path, query, hdrs)), -1)
        route = routes[ri] if ri >= 0 else None
        if route is None:
            _answer(conn, sock, 503, f"no route for {method} {path} to {up.destination}")
            self._done("upstream", cfg.service, up.destination, method, path, 503, t0, "", 0, "error", "no route")
            return
        dest = route.get("Destination") or {}
        tid = self._pick_split((up.destination, ri), route.get("Splits") or [])
        if dest.get("PrefixRewrite"):
            m = route.get("Match") or {}
            prefix = m.get("PathPrefix") or m.get("PathExact") or ""
            if prefix and path.startswith(prefix):
                new_path = dest["PrefixRewrite"] + path[len(prefix):]
                if new_path.startswith("//"):
                    new_path = new_path[1:]
                target = new_path + ("?" + query if query else "")
        timeout = float(dest.get("RequestTimeout") or 0) or REQUEST_TIMEOUT
        retries_left = int(dest.get("NumRetries") or 0)
        retry_codes = set(dest.get("RetryOnStatusCodes") or [])
        retry_connect = bool(dest.get("RetryOnConnectFailure")) or retries_left > 0
        tried: set[tuple[str, int]] = set()
        retries = 0
        dial_failures = 0
        errors: list[str] = []
        while True:
            t = self._target(tid)
            inst = self._pick(t, tried) if t is not None else None
            if inst is None:
                text = f"no healthy instance of {up.destination}" + (f" (target {tid})" if tid else "")
                if errors:
                    text += ": " + "; ".join(errors)
                _answer(conn, sock, 503, text)
                self._done("upstream", cfg.service, up.destination, method, path, 503, t0, "", retries, "error", text)
                return
            assert t is not None
            tried.add(inst.key)
            where = f"{inst.address}:{inst.port}"
            try:
                resp, rbody = self._to_instance(t, inst, req, target, body, timeout)
            except ConnectFailed as e:
                self.proxy.metrics.upstream_error(up.destination, where, "connect")
                errors.append(f"{where}: {e}")
                dial_failures += 1
                if dial_failures < MAX_ATTEMPTS:
                    continue
                break
            except TimeoutError:
                text = f"{up.destination} ({where}) did not answer within {timeout:g}s"
                _answer(conn, sock, 504, text)
                self._done("upstream", cfg.service, up.destination, method, path, 504, t0, where, retries, "error",
                           text)
                return
            except (Reset, OSError, h11.ProtocolError) as e:
                errors.append(f"{where}: {e or type(e).__name__}")
                if retry_connect and retries < retries_left:
                    retries += 1
                    self.proxy.metrics.http_retry(up.destination)
                    continue
                break
            status = resp.status_code
            if status in retry_codes and retries < retries_left:
                retries += 1
                errors.append(f"{where}: answered {status}")
                self.proxy.metrics.http_retry(up.destination)
                continue
            keep_len = method == "HEAD" or status in (204, 304)
            try:
                out = h11.Response(status_code=status, headers=_forward_headers(resp.headers, rbody, keep_len),
                                   reason=resp.reason)
                _send(conn, sock, out, rbody)
            except OSError:
                pass
            self._done("upstream", cfg.service, up.destination, method, path, status, t0, where, retries, "allowed", "")
            return
        text = f"{up.destination}: every attempt failed: " + "; ".join(errors)
        _answer(conn, sock, 502, text)
        self._done("upstream", cfg.service, up.destination, method, path, 502, t0, "", retries, "error", text)

    def _pick_split(self, route: tuple[str, int], splits: list[dict[str, Any]]) -> str:
        """A target by the splits' weights: smooth weighted round-robin (as nginx's), so 90/10
        is exactly 9 in 10 over every 10 requests, not 90 % on average."""
        if len(splits) <= 1:
            return str(splits[0].get("Target", "")) if splits else ""
        key = (route, tuple((str(s.get("Target")), float(s.get("Weight") or 0)) for s in splits))
        with self.lock:
            cur = self.wrr.get(key)
            if cur is None:
                if len(self.wrr) > 1024:
                    self.wrr.clear()
                cur = self.wrr[key] = [0.0] * len(splits)
            total, best = 0.0, 0
            for i, (_, weight) in enumerate(key[1]):
                cur[i] += weight
                total += weight
                if cur[i] > cur[best]:
                    best = i
            cur[best] -= total
        return key[1][best][0]

    def _target(self, tid: str) -> Target | None:
        seen: set[str] = set()
        t = self.targets.get(tid)
        while t is not None and not t.instances and t.failover and t.failover not in seen:
            seen.add(t.failover)
            nxt = self.targets.get(t.failover)
            if nxt is None:
                break
            t = nxt
        return t

    def _pick(self, t: Target, tried: set[tuple[str, int]]) -> Instance | None:
        with self.lock:
            insts = [i for i in t.instances if i.key not in tried] or list(t.instances)
            if not insts:
                return None
            t.rr += 1
            return insts[t.rr % len(insts)]

    def _to_instance(self, t: Target, inst: Instance, req: Any, target: str, body: bytes,
                     timeout: float) -> tuple[Any, bytes]:
        key = (inst.address, inst.port, t.service)
        pooled = None
        with self.lock:
            idle = self.pool.get(key)
            if idle:
                pooled = idle.pop()
        if pooled is not None:
            try:
                return self._over(key, pooled, req, target, body, timeout)
            except NoAnswer:
                pass   # a kept connection the instance had closed: dial anew, not a retry
        return self._over(key, self._dial(t, inst), req, target, body, timeout)

    def _over(self, key: tuple[str, int, str], c: tuple[Any, h11.Connection], req: Any, target: str, body: bytes,
              timeout: float) -> tuple[Any, bytes]:
        sock, conn = c
        sock.settimeout(timeout)
        try:
            resp, rbody = self._exchange(c, req, target, body)
        except BaseException:
            self._close(sock)
            raise
        if _next_cycle(conn) and not self.closed:
            with self.lock:
                idle = self.pool.setdefault(key, [])
                if len(idle) < IDLE_POOL:
                    idle.append(c)
                    return resp, rbody
        self._close(sock)
        return resp, rbody

    def _dial(self, t: Target, inst: Instance) -> tuple[Any, h11.Connection]:
        material = self.proxy.material
        if material is None:
            raise ConnectFailed("proxy not ready: no certificate yet")
        try:
            raw = socket.create_connection((inst.address, inst.port), timeout=t.connect_timeout)
        except OSError as e:
            raise ConnectFailed(e.strerror or str(e)) from None
        try:
            raw.settimeout(self.proxy.cfg.handshake_timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = material.client.wrap_socket(raw, server_side=False)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise ConnectFailed(f"tls handshake: {ssl_reason(e)}") from None
        pc = peer_cert(tls)
        want = service_uri(material.trust_domain, inst.datacenter, t.service)
        got = pc.uri if pc else ""
        if got.lower() != want.lower():
            tls.close()
            raise ConnectFailed(f"server identity {got or '(none)'} is not {want}")
        self._track(tls, True)
        return tls, h11.Connection(h11.CLIENT)


