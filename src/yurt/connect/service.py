"""`Service`: one Connect-native identity, its certificates kept fresh, serving and dialling.

Certificates: the leaf (`/v1/agent/connect/ca/leaf/<name>`, which the agent gives only to a
workload identity naming the service) and the CA roots are fetched at once, then followed with
blocking queries (yurt.mesh.source.Watch): a renewed leaf or rotated roots make a new
generation of contexts, used by every connection made after it, without a restart.

Serving: `server_context()` is one `ssl.SSLContext` for the life of the service. Each handshake
is moved to the current generation's context (in its SNI callback, called for every
ClientHello), and once it is done the client's certificate is checked against the intentions
(`/v1/agent/connect/authorize`, one decision per client identity until the intentions for this
service change): a client they deny is refused with `NotAuthorized` (an `ssl.SSLError`, so
`socket.accept`-based servers drop it and go on). Session tickets are off: every connection
presents a certificate that is verified.

Dialling: `connect(dest)` asks the agent whether the intentions allow this service to reach
`dest` (a clear error if not), picks a healthy mesh endpoint of `dest` (its sidecars and its
native instances, `/v1/health/connect/<dest>?passing`, followed with a blocking query), and
makes an mTLS connection whose server certificate must carry `dest`'s SPIFFE ID.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import threading
from typing import Any

from yurt.errors import PermissionDenied, YurtError
from yurt.mesh.agent_client import AgentClient
from yurt.mesh.balancer import Instance, instances_from_health
from yurt.mesh.source import Watch
from yurt.mesh.tls import (TLSMaterial, _base, build_material, parse_spiffe, peer_cert, roots_bundle,
                           service_uri, ssl_reason)

log = logging.getLogger("yurt.connect")

WAIT_SECONDS = 60.0
DIAL_ATTEMPTS = 3


class ConnectError(YurtError):
    """The mesh cannot be joined or the destination not reached; the message says why and what to do."""


class NotAuthorized(ssl.SSLError):
    """A client whose certificate the intentions deny (raised by the server's handshake)."""


def _env(*names: str) -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), "")


class _Client(AgentClient):
    """The mesh's stdlib agent client, with a token given as a value too."""

    def __init__(self, address: str, token: str, token_file: str) -> None:
        super().__init__(address, timeout=WAIT_SECONDS + 30, token_file=token_file)
        self.token = token

    def _token(self) -> str:
        return super()._token() if self.token_file else self.token


class Service:
    """`name`: the service this process is (default `$YURT_CONNECT_SERVICE`). `address`: the
    agent (default `$CONSUL_HTTP_ADDR`, `$YURT_ADDR`, `$NOMAD_ADDR`, http://127.0.0.1:4646).
    `token` / `token_file`: the workload identity (or an ACL token) presented for the leaf
    (default `$CONSUL_HTTP_TOKEN_FILE`, `$YURT_TOKEN_FILE`, `$CONSUL_HTTP_TOKEN`, `$YURT_TOKEN`,
    `$NOMAD_TOKEN`). Raises ConnectError when no certificate can be had."""

    def __init__(self, name: str = "", *, address: str = "", token: str | None = None,
                 token_file: str | None = None, wait: float = WAIT_SECONDS) -> None:
        self.name = name or _env("YURT_CONNECT_SERVICE").split(",")[0]
        if not self.name:
            raise ConnectError("Service() needs the name of the service this process is: "
                               "Service(\"api\"), or set YURT_CONNECT_SERVICE")
        self.address = address or _env("CONSUL_HTTP_ADDR", "YURT_ADDR", "NOMAD_ADDR") or "http://127.0.0.1:4646"
        if token_file is None:
            token_file = "" if token else _env("CONSUL_HTTP_TOKEN_FILE", "YURT_TOKEN_FILE")
        if token is None:
            token = _env("CONSUL_HTTP_TOKEN", "YURT_TOKEN", "NOMAD_TOKEN")
        self.client = _Client(self.address, token, token_file)
        self.wait = wait
        self._lock = threading.Lock()
        self._roots: dict = {}
        self._leaf: dict = {}
        self.material: TLSMaterial | None = None
        self._key: tuple[str, str] = ("", "")
        self.generation = 0
        self.datacenter = "dc1"
        self.last_error = ""
        self._authz: dict[str, tuple[bool, str]] = {}
        self._endpoints: dict[str, list[Instance]] = {}
        self._endpoint_watches: dict[str, Watch] = {}
        self._front: ssl.SSLContext | None = None
        self._changed = threading.Condition(self._lock)
        try:
            roots, _ = self.client.ca_roots()
            leaf, _ = self.client.leaf(self.name)
        except PermissionDenied as e:
            self.client.close()
            raise ConnectError(f"the agent at {self.address} refused a certificate for {self.name}: {e}") from None
        except YurtError as e:
            self.client.close()
            raise ConnectError(f"cannot get a certificate for {self.name} from the agent at {self.address}: {e}. "
                               "Set CONSUL_HTTP_ADDR (or YURT_ADDR) to the agent's address and give the "
                               "workload identity in CONSUL_HTTP_TOKEN_FILE") from None
        self._deliver(roots=roots, leaf=leaf)
        if self.material is None:
            self.client.close()
            raise ConnectError(f"the certificate for {self.name} does not verify against the CA roots: "
                               f"{self.last_error}")
        self._watches: list[Watch] = [
            Watch(f"{self.name}-roots", lambda i, w: self.client.ca_roots(index=i, wait=_w(w)),
                  lambda v: self._deliver(roots=v), self._error, wait),
            Watch(f"{self.name}-leaf", lambda i, w: self.client.leaf(self.name, index=i, wait=_w(w)),
                  lambda v: self._deliver(leaf=v), self._error, wait),
            Watch(f"{self.name}-intentions", lambda i, w: self.client.get(
                "/v1/connect/intentions/match", index=i, wait=_w(w), by="destination", name=self.name),
                  lambda v: self._forget_decisions(), self._error, wait)]
        for t in self._watches:
            t.start()

    # -- identity ---------------------------------------------------------------------------
    @property
    def trust_domain(self) -> str:
        return self.material.trust_domain if self.material else ""

    @property
    def spiffe_id(self) -> str:
        return service_uri(self.trust_domain, self.datacenter, self.name)

    @property
    def serial(self) -> str:
        return self.material.serial if self.material else ""

    def _deliver(self, roots: dict | None = None, leaf: dict | None = None) -> None:
        with self._lock:
            if roots is not None:
                self._roots = roots or {}
            if leaf is not None:
                self._leaf = leaf or {}
            r, lf = self._roots, self._leaf
            key = (lf.get("SerialNumber", ""), roots_bundle(r))
            if self.material is not None and key == self._key:
                return   # nothing new (a watch's first answer)
        try:
            sid = parse_spiffe(lf.get("ServiceURI", ""))
            pem = roots_bundle(r)
            new = build_material(r.get("TrustDomain", "") or (sid.trust_domain if sid else ""), self.name,
                                 lf["CertPEM"], lf["PrivateKeyPEM"], pem, lf.get("SerialNumber", ""),
                                 lf.get("ValidBefore", ""))
        except (KeyError, ssl.SSLError, ValueError) as e:
            # a leaf signed by a root we have not seen yet: the roots watch brings it
            self.last_error = f"certificate not usable yet: {ssl_reason(e) if isinstance(e, OSError) else e}"
            log.info("%s: %s", self.name, self.last_error)
            return
        new.server.num_tickets = 0    # no resumption: every client's certificate is verified
        with self._lock:
            self._key = key
            if sid is not None:
                self.datacenter = sid.datacenter
            self.material = new
            self.generation += 1
            self.last_error = ""
            self._changed.notify_all()
        log.info("%s: certificate %s in use (generation %d)", self.name, new.serial, self.generation)

    def _error(self, what: str, err: str) -> None:
        self.last_error = f"{what}: {err}"
        log.warning("%s: %s", self.name, self.last_error)

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until the contexts are newer than `generation` (tests, tools)."""
        with self._lock:
            return self._changed.wait_for(lambda: self.generation > generation, timeout)

    # -- serving ----------------------------------------------------------------------------
    def server_context(self) -> ssl.SSLContext:
        """An SSLContext for serving the mesh (TLS 1.3, client certificate required, intentions
        checked when the handshake completes). Works with `wrap_socket` (http.server,
        socketserver) and `wrap_bio` (asyncio: `asyncio.start_server(..., ssl=svc.server_context())`)."""
        if self._front is not None:
            return self._front
        m = self.material
        assert m is not None
        lf = self._leaf
        front = _base(ssl.PROTOCOL_TLS_SERVER, lf["CertPEM"], lf["PrivateKeyPEM"], roots_bundle(self._roots))
        front.num_tickets = 0
        svc = self

        def pick(sslobj: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
            current = svc.material
            if current is not None:
                sslobj.context = current.server
            return None

        class _Sock(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                super().do_handshake(block)
                if self.server_side:
                    svc.check_peer(self)

        class _Obj(ssl.SSLObject):
            def do_handshake(self) -> None:
                super().do_handshake()
                if self.server_side:
                    svc.check_peer(self)

        front.sni_callback = pick
        front.sslsocket_class = _Sock
        front.sslobject_class = _Obj
        self._front = front
        return front

    def listen(self, host: str = "0.0.0.0", port: int = 0, backlog: int = 128) -> ssl.SSLSocket:
        """A listening socket whose `accept()` returns only authorized mTLS connections (a
        denied or failed handshake raises from accept: ssl.SSLError, NotAuthorized)."""
        raw = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        return self.server_context().wrap_socket(raw, server_side=True)

    def authorize(self, client_uri: str, serial: str = "") -> tuple[bool, str]:
        """May the holder of `client_uri` connect to this service? Cached until the intentions
        for this service change; an agent error denies (not cached)."""
        with self._lock:
            d = self._authz.get(client_uri)
        if d is not None:
            return d
        try:
            r = self.client.authorize(self.name, client_uri, serial) or {}
        except YurtError as e:
            return False, f"authorization unavailable: {e}"
        d = (bool(r.get("Authorized")), str(r.get("Reason", "")))
        with self._lock:
            if len(self._authz) > 10000:
                self._authz.clear()
            self._authz[client_uri] = d
        return d

    def check_peer(self, sock: ssl.SSLSocket | ssl.SSLObject) -> None:
        pc = peer_cert(sock)
        uri = pc.uri if pc else ""
        if parse_spiffe(uri) is None:
            raise NotAuthorized(f"connection to {self.name} refused: the client's certificate has no service "
                                f"SPIFFE ID ({uri or 'none'})")
        allowed, reason = self.authorize(uri, pc.serial if pc else "")
        if not allowed:
            log.info("%s: refused %s: %s", self.name, uri, reason)
            raise NotAuthorized(f"connection from {uri} to {self.name} refused by intentions: {reason}")

    def _forget_decisions(self) -> None:
        with self._lock:
            self._authz.clear()

    # -- dialling ---------------------------------------------------------------------------
    def instances(self, destination: str) -> list[Instance]:
        """The healthy mesh endpoints of `destination` (followed once asked for)."""
        with self._lock:
            known = self._endpoints.get(destination)
            watch = self._endpoint_watches.get(destination)
        if known is not None and watch is not None:
            return known
        try:
            entries, _ = self.client.health_connect(destination, passing=True)
        except YurtError as e:
            raise ConnectError(f"cannot look up {destination} in the catalog: {e}") from None
        found = instances_from_health(entries, self.datacenter)
        with self._lock:
            self._endpoints[destination] = found
            if destination not in self._endpoint_watches:
                w = Watch(f"{self.name}-to-{destination}",
                          lambda i, t: self.client.health_connect(destination, passing=True, index=i, wait=_w(t)),
                          lambda v: self._set_endpoints(destination, v), self._error, self.wait)
                self._endpoint_watches[destination] = w
                w.start()
        return found

    def _set_endpoints(self, destination: str, entries: list[dict]) -> None:
        found = instances_from_health(entries, self.datacenter)
        with self._lock:
            self._endpoints[destination] = found

    def connect(self, destination: str, timeout: float = 10.0) -> ssl.SSLSocket:
        """An mTLS connection to a healthy instance of `destination` (its sidecar or a native
        instance), its server certificate checked to be `destination`'s. ConnectError if the
        intentions deny it or no instance can be reached."""
        allowed, reason = self._may_dial(destination)
        if not allowed:
            raise ConnectError(f"{self.name} may not connect to {destination}: {reason}. Allow it with "
                               f"`yurt intention create -allow {self.name} {destination}`")
        found = list(self.instances(destination))
        if not found:
            raise ConnectError(f"no healthy instance of {destination} in the mesh (/v1/health/connect/"
                               f"{destination}?passing is empty): is it running, with a sidecar or native = true?")
        random.shuffle(found)
        errors: list[str] = []
        for inst in found[:DIAL_ATTEMPTS]:
            m = self.material
            assert m is not None
            try:
                raw = socket.create_connection((inst.address, inst.port), timeout=timeout)
            except OSError as e:
                errors.append(f"{inst.address}:{inst.port}: {ssl_reason(e)}")
                continue
            try:
                s = m.client.wrap_socket(raw, server_side=False)
            except (ssl.SSLError, OSError) as e:
                raw.close()
                errors.append(f"{inst.address}:{inst.port}: tls handshake: {ssl_reason(e)}")
                continue
            want = service_uri(m.trust_domain, inst.datacenter, destination)
            pc = peer_cert(s)
            got = pc.uri if pc else ""
            if got.lower() != want.lower():
                s.close()
                errors.append(f"{inst.address}:{inst.port}: server identity {got or '(none)'} is not {want}")
                continue
            s.settimeout(None)
            return s
        raise ConnectError(f"cannot connect to {destination}: " + "; ".join(errors))

    def _may_dial(self, destination: str) -> tuple[bool, str]:
        """The intentions as the agent reads them (the destination checks them again)."""
        try:
            r = self.client.authorize(destination, self.spiffe_id, self.serial) or {}
        except YurtError as e:
            return True, f"not checked: {e}"   # the destination still decides
        return bool(r.get("Authorized")), str(r.get("Reason", ""))

    def http_transport(self) -> Any:
        """An httpx transport dialling by service name: `http://<destination>[:port]/path`
        goes over mTLS to a healthy instance of <destination> (the port is ignored)."""
        from .transport import mesh_transport
        return mesh_transport(self)

    # -- life -------------------------------------------------------------------------------
    def close(self) -> None:
        for w in [*self._watches, *self._endpoint_watches.values()]:
            w.stop()
        self.client.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _w(wait: float) -> str:
    return f"{max(1, int(wait))}s"
