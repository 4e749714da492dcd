"""The sidecar proxy end to end: real TLS, real sockets, a real server-only `yurt agent` as the
proxies' only source. Proxies run on their own threads (the product's Proxy over the product's
AgentSource) or as real `python -m yurt.mesh` processes configured as the connect-proxy driver
configures them (the agent's unix socket). Leaf certificates, roots, mesh endpoints and
intentions come from the agent; the agent's intentions engine decides every connection. The
tests set the scene through the agent's API (service registration, checks, intentions, CA
rotation). A test CA (tests/meshca.py) only makes what the agent never issues: another CA's
certificates, expired ones, a foreign trust domain. No timing assertions."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from yurt.mesh.accesslog import AccessLog
from yurt.mesh.config import ProxyConfig, UpstreamConfig
from yurt.mesh.proxy import Proxy
from yurt.mesh.source import AgentSource
from yurt.mesh.tls import _base

from .agent_util import free_port
from .mesh_agent import MeshAgent, ProcessLines
from .meshca import TestCA

SRC = Path(__file__).resolve().parent.parent / "src"
READY_TIMEOUT = 15.0


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    """Poll `pred` (every 10 ms) until it is truthy; its value, or AssertionError at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Echo:
    """A tiny TCP echo server (the 'app' behind the public listener)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            while True:
                try:
                    d = c.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                c.sendall(d)

    def close(self) -> None:
        self.sock.close()


class Mesh:
    """A real agent, an echo app, and proxies fed by the agent; every access-log line kept."""

    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent
        self.trust_domain = agent.trust_domain
        self.echo = Echo()
        self.logs: list[dict] = []
        self._lock = threading.Lock()
        self.proxies: list[Proxy] = []
        self.sources: list[AgentSource] = []

    def log(self, name: str) -> AccessLog:
        def write(line: str) -> None:
            with self._lock:
                self.logs.append({"proxy": name, **json.loads(line)})
        return AccessLog(write)

    def conns(self, **match) -> list[dict]:
        with self._lock:
            return [r for r in self.logs if r["type"] == "conn" and all(r.get(k) == v for k, v in match.items())]

    def events(self, proxy: str, *names: str) -> list[dict]:
        with self._lock:
            return [r for r in self.logs if r["type"] == "event" and r["proxy"] == proxy and r["event"] in names]

    def source(self, address: str | None = None) -> AgentSource:
        """What `python -m yurt.mesh` makes from its config: the agent over its unix socket."""
        src = AgentSource(address or self.agent.address)
        self.sources.append(src)
        return src

    def start(self, cfg: ProxyConfig, name: str, source: AgentSource | None = None, ready: bool = True) -> Proxy:
        p = Proxy(cfg, source or self.source(), self.log(name)).start_background()
        self.proxies.append(p)
        if ready:
            assert p.ready.wait(READY_TIMEOUT), f"proxy {name} not ready"
        return p

    def server(self, service: str = "api", local_port: int | None = None) -> Proxy:
        """A sidecar with a public listener in front of the echo app (not in the catalog)."""
        cfg = ProxyConfig(service=service, listen_addr="127.0.0.1", listen_port=0,
                          local_port=local_port or self.echo.port)
        return self.start(cfg, f"server-{service}-{len(self.proxies)}")

    def client(self, service: str = "web", dest: str = "api", instances: list[int] | None = None) -> Proxy:
        """A sidecar with one upstream to `dest`; `instances`: public ports registered in the
        agent's catalog as `<dest>-sidecar-proxy` instances (passing) before it starts."""
        for n, port in enumerate(instances or []):
            self.agent.register_sidecar(dest, port, instance=str(n))
        cfg = ProxyConfig(service=service, upstreams=[UpstreamConfig(dest, 0)])
        return self.start(cfg, f"client-{service}")

    def signing_ca(self) -> TestCA:
        """Give the agent's CA a private key this test holds (Consul's CA configuration
        `PrivateKey`: the agent rotates to a root made for it) and sign as that root: for leaves
        the agent would never issue (expired, another trust domain) that chain to its root."""
        key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        roots = self.agent.rotate_root(key)
        active = next(r for r in roots["Roots"] if r["Active"])
        return TestCA.adopt(active["RootCert"], key, roots["TrustDomain"])

    def close(self) -> None:
        for r in self.logs:  # pytest shows this only for a failed test
            print(json.dumps(r))
        for p in self.proxies:
            p.stop()
        for s in self.sources:
            s.close()
        self.echo.close()


def _mesh(extra: list[str] | None = None):
    agent = MeshAgent(extra).start()
    m = Mesh(agent)
    try:
        yield m
    finally:
        m.close()
        print(agent.log()[-5000:])
        agent.close()


@pytest.fixture
def mesh():
    yield from _mesh()


@pytest.fixture
def deny_mesh():
    yield from _mesh(["-default-intention-policy", "deny"])


def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            d = c.recv(65536)
            if not d:
                break
            got += d
        return got


def closed_without_data(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def received_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Every byte the peer sent before it closed the connection (FIN or reset)."""
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            d = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not d:
            return got
        got += d


def tls_client(mesh: Mesh, issued: dict | None, roots: list[str] | None = None) -> ssl.SSLContext:
    roots_pem = "\n".join(roots or mesh.agent.root_pems())
    if issued is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=roots_pem)
        return ctx
    return _base(ssl.PROTOCOL_TLS_CLIENT, issued["CertPEM"], issued["PrivateKeyPEM"], roots_pem)


def direct_tls(mesh: Mesh, port: int, issued: dict | None, payload: bytes = b"hello",
               roots: list[str] | None = None) -> bytes | None:
    """Connect straight to a public listener; return the echo, or None if refused."""
    ctx = tls_client(mesh, issued, roots)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s = ctx.wrap_socket(raw)
        s.sendall(payload)
        got = s.recv(1024)
        return got or None
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return None
    finally:
        raw.close()


# ------------------------------------------------------------------------------------------

def test_mtls_round_trip_through_both_proxies(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    assert roundtrip(port, b"hello mesh") == b"hello mesh"
    big = os.urandom(3 * 2**20)
    assert roundtrip(port, big) == big
    wait_for(lambda: len(mesh.conns(dir="inbound", verdict="allowed")) >= 2, what="inbound log lines")
    rec = mesh.conns(dir="inbound")[-1]
    assert rec["src"] == "web" and rec["dst"] == "api"
    assert rec["bytes_in"] == len(big) and rec["bytes_out"] == len(big)
    assert rec["serial"] == cli.material.serial  # the client's leaf, as the agent issued it
    wait_for(lambda: len(mesh.conns(dir="upstream")) >= 2, what="upstream log lines")
    up = mesh.conns(dir="upstream")[-1]
    assert up["verdict"] == "allowed" and up["upstream"] == f"127.0.0.1:{srv.public_port}"


def test_half_close_is_forwarded(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
        c.sendall(b"last words")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = c.recv(1024)
            if not d:
                break
            got += d
    assert got == b"last words"


def test_client_without_certificate_is_refused_and_proxy_keeps_serving(mesh):
    srv = mesh.server()
    # TLS 1.3: the client's handshake completes before the server has checked its (missing)
    # certificate; its first read gets the server's alert
    raw = socket.create_connection(("127.0.0.1", srv.public_port), timeout=5)
    with tls_client(mesh, None).wrap_socket(raw) as s, pytest.raises(ssl.SSLError) as e:
        s.recv(1024)
    assert e.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")
    assert mesh.echo.conns == 0
    # still serving a good client
    assert direct_tls(mesh, srv.public_port, mesh.agent.leaf("web")) == b"hello"


def test_certificate_from_another_ca_is_refused(mesh):
    srv = mesh.server()
    other = TestCA(trust_domain=mesh.trust_domain)
    assert direct_tls(mesh, srv.public_port, other.leaf("web")) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")[0]
    assert "certificate" in rec["reason"].lower() or "unknown ca" in rec["reason"].lower()
    assert mesh.echo.conns == 0


def test_expired_certificate_is_refused(mesh):
    ca = mesh.signing_ca()
    srv = mesh.server()
    old = ca.leaf("web", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
                  ttl=dt.timedelta(days=1))
    assert direct_tls(mesh, srv.public_port, old) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")[0]
    assert "expired" in rec["reason"].lower()


def test_foreign_trust_domain_is_refused(mesh):
    ca = mesh.signing_ca()
    srv = mesh.server()
    leaf = ca.leaf("web", uri="spiffe://other.yurt/ns/default/dc/dc1/svc/web")
    assert direct_tls(mesh, srv.public_port, leaf) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")[0]
    assert "trust domain" in rec["reason"]


def test_plaintext_and_garbage_on_public_port_refused_proxy_keeps_serving(mesh):
    srv = mesh.server()
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", random.Random(7).randbytes(300)):
        with socket.create_connection(("127.0.0.1", srv.public_port), timeout=5) as c:
            c.sendall(junk)
            # not TLS: the proxy hangs up without a byte (no alert, nothing from the app)
            assert received_until_closed(c) == b""
    wait_for(lambda: len(mesh.conns(dir="inbound", verdict="refused")) >= 2, what="two refusals")
    assert mesh.echo.conns == 0
    assert direct_tls(mesh, srv.public_port, mesh.agent.leaf("web")) == b"hello"


def test_wrong_server_identity_is_refused_by_upstream(mesh):
    # the catalog's "api" instance is a sidecar whose certificate is for service "db"
    srv = mesh.server(service="db")
    cli = mesh.client(instances=[srv.public_port])
    with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
        c.sendall(b"secret")
        assert closed_without_data(c)
    rec = wait_for(lambda: mesh.conns(dir="upstream"), what="upstream log line")[0]
    assert rec["verdict"] == "error" and "svc/db" in rec["reason"] and "is not" in rec["reason"]


def test_deny_closes_new_and_existing_connections(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    existing = socket.create_connection(("127.0.0.1", port), timeout=5)
    existing.sendall(b"one")
    assert existing.recv(10) == b"one"
    mesh.agent.intention("web", "api", "deny")
    # the open connection is closed by the server side proxy ...
    assert closed_without_data(existing)
    existing.close()
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="denied"), what="denied log line")[0]
    assert rec["reason"] == "intentions changed: Matched L4 intention: web => api (deny)" and rec["src"] == "web"
    # ... and new ones are refused
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"two")
        assert closed_without_data(c)
    wait_for(lambda: len(mesh.conns(dir="inbound", verdict="denied")) >= 2, what="second denial")
    assert mesh.conns(dir="inbound", verdict="denied")[-1]["reason"] == "Matched L4 intention: web => api (deny)"
    # allow again: new connections flow
    mesh.agent.intention("web", "api", "allow")

    def works() -> bool:
        try:
            return roundtrip(port, b"three") == b"three"
        except ConnectionResetError:
            return False
    wait_for(works, what="allowed again")


def test_a_new_connection_resumes_the_tls_session_and_is_checked_as_a_full_handshake(mesh):
    """The sidecars resume TLS sessions (tickets) between them: no certificate signature or chain
    check on a second connection, but the same identity check and live intentions; a rotated
    leaf or root starts over with a full handshake."""
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    assert roundtrip(port, b"first") == b"first"
    wait_for(lambda: cli.material.sessions, what="the client sidecar keeping the server's session ticket")
    assert (cli.metrics.tls_resumed["upstream"], srv.metrics.tls_resumed["inbound"]) == (0, 0)
    assert roundtrip(port, b"second") == b"second"
    assert (cli.metrics.tls_resumed["upstream"], srv.metrics.tls_resumed["inbound"]) == (1, 1)
    rec = wait_for(lambda: len(mesh.conns(dir="inbound")) >= 2 and mesh.conns(dir="inbound")[-1],
                   what="the resumed connection's log line")
    # the identity the server sidecar saw is the client's certificate, from the resumed session
    assert (rec["src"], rec["serial"], rec["verdict"]) == ("web", cli.material.serial, "allowed")
    assert "yurt_sidecar_tls_resumed_total" in cli.metrics.render(cli)
    # intentions are checked on a resumed connection too
    mesh.agent.intention("web", "api", "deny")
    attempts = []

    def refused() -> bool:
        attempts.append(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"three")
            return closed_without_data(c)
    wait_for(refused, what="a new connection refused once the intention denies")
    assert srv.metrics.tls_resumed["inbound"] == 1 + len(attempts)   # every one of them resumed
    assert refused()   # the deny is in force: this one is refused at authorization, after resuming
    denied = wait_for(lambda: len(mesh.conns(dir="inbound", verdict="denied")) >= 2
                      and mesh.conns(dir="inbound", verdict="denied"), what="the resumed connection denied")
    assert denied[-1]["reason"] == "Matched L4 intention: web => api (deny)"
    assert srv.metrics.tls_resumed["inbound"] == 1 + len(attempts)
    mesh.agent.intention("web", "api", "allow")
    # a rotated leaf (and root) means a full handshake: the new client context has no session
    # and the server's new context could not read the old tickets anyway
    first = cli.material.serial
    mesh.agent.rotate_root()
    wait_for(lambda: cli.material.serial != first and srv.material.serial != first, what="both sidecars rotated")
    before = (cli.metrics.tls_resumed["upstream"], srv.metrics.tls_resumed["inbound"])

    def works() -> bool:
        try:
            return roundtrip(port, b"four") == b"four"
        except ConnectionResetError:
            return False
    wait_for(works, what="allowed again after the rotation")
    assert (cli.metrics.tls_resumed["upstream"], srv.metrics.tls_resumed["inbound"]) == before
    assert cli.material.serial != first
    wait_for(lambda: [r for r in mesh.conns(dir="inbound", verdict="allowed") if r["serial"] == cli.material.serial],
             what="the server sidecar logging the client's new leaf")


def test_a_burst_of_new_connections_is_set_up_in_turn_and_every_one_gets_through(mesh, monkeypatch):
    """More connections at once than an upstream may have in set-up (dial + TLS) wait their turn
    instead of all handshaking together; every one gets through, and once they are gone the
    upstream serves new connections as before (no place in set-up is lost)."""
    from yurt.mesh import upstream
    monkeypatch.setattr(upstream, "MAX_DIALING", 4)
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(60)]
    try:
        for i, c in enumerate(conns):
            c.sendall(b"burst %d" % i)
        for i, c in enumerate(conns):
            want = b"burst %d" % i
            got = b""
            while len(got) < len(want):
                d = c.recv(100)
                assert d, f"connection {i} closed before its echo"
                got += d
            assert got == want
    finally:
        for c in conns:
            c.close()
    bal = cli.balancers[port]
    wait_for(lambda: bal.dialing == 0 and not bal.waiting and not bal.active, what="every place given back")
    for i in range(10):   # and it keeps serving, place after place
        assert roundtrip(port, b"after %d" % i) == b"after %d" % i
    assert not [r for r in mesh.conns(dir="upstream") if r["verdict"] != "allowed"]


def test_a_resumed_session_is_refused_once_the_peer_certificate_expired():
    from yurt.mesh.tls import expired
    assert expired("Jan  1 00:00:00 2020 GMT")
    assert not expired("Jan  1 00:00:00 2099 GMT")
    assert expired("Jan  1 00:00:00 2099 GMT", now=4102444800.0)   # 2100-01-01
    assert expired("garbage")   # unreadable: never trusted


def test_default_deny_wildcard_and_precedence(deny_mesh):
    """An agent with -default-intention-policy deny: nothing passes until an intention allows
    it; `* => api` allows every source; the exact `web => api` deny outranks it for web only."""
    mesh = deny_mesh
    srv = mesh.server()
    web, other = mesh.agent.leaf("web"), mesh.agent.leaf("other")
    assert direct_tls(mesh, srv.public_port, web) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="denied"), what="denied log line")[0]
    assert rec["reason"] == "Default behavior: no intention matched, default policy deny"
    mesh.agent.intention("*", "api", "allow")
    wait_for(lambda: direct_tls(mesh, srv.public_port, web) == b"hello", what="wildcard allow")
    assert direct_tls(mesh, srv.public_port, other) == b"hello"
    mesh.agent.intention("web", "api", "deny")

    def web_denied_by_exact_intention() -> bool:
        direct_tls(mesh, srv.public_port, web)  # a new connection, decided anew once the proxy saw the change
        return any(r["reason"] == "Matched L4 intention: web => api (deny)"
                   for r in mesh.conns(dir="inbound", verdict="denied", src="web"))
    wait_for(web_denied_by_exact_intention, what="exact deny over the wildcard")
    assert direct_tls(mesh, srv.public_port, web) is None
    assert direct_tls(mesh, srv.public_port, other) == b"hello"


def test_no_healthy_instance_closes_at_once(mesh):
    cli = mesh.client(instances=[])
    # ready only once the agent has answered for the upstream (here: no instance)
    assert [(e["event"], e.get("instances")) for e in mesh.events("client-web", "endpoints", "ready")] == \
        [("endpoints", []), ("ready", None)]
    with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
        assert closed_without_data(c)
    rec = wait_for(lambda: mesh.conns(dir="upstream"), what="upstream log line")[0]
    assert rec["verdict"] == "error" and "no healthy instance" in rec["reason"]


def test_first_instance_down_retries_on_second(mesh):
    srv = mesh.server()
    dead_port = free_port()  # nothing listens there, yet the catalog says it is passing
    cli = mesh.client(instances=[dead_port, srv.public_port])
    for _ in range(4):  # whatever the balancer picks first, every connection gets through
        assert roundtrip(cli.upstream_ports["api"], b"retry") == b"retry"
    wait_for(lambda: len(mesh.conns(dir="upstream")) >= 4, what="upstream log lines")
    recs = mesh.conns(dir="upstream")
    assert all(r["verdict"] == "allowed" and r["upstream"] == f"127.0.0.1:{srv.public_port}" for r in recs)
    assert any(r["attempts"] == 2 for r in recs)


def test_an_instance_draining_before_the_catalog_drops_it_costs_no_connection(mesh):
    """The caller's sidecar may still pick an instance whose sidecar has started draining (its
    removal from the catalog not seen yet): the refused dial is retried on another instance,
    and while it drains its accepted connections go on."""
    draining, other = mesh.server(), mesh.server()
    cli = mesh.client(instances=[draining.public_port, other.public_port])
    port = cli.upstream_ports["api"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as open_conn:
        open_conn.sendall(b"before")
        assert open_conn.recv(100) == b"before"
        draining.reactor.call_soon_threadsafe(draining.drain_inbound)
        wait_for(lambda: refused(draining.public_port), what="the draining instance refusing")
        for i in range(8):  # whatever the balancer picks first, every connection gets through
            assert roundtrip(port, f"during {i}".encode()) == f"during {i}".encode()
        open_conn.sendall(b"still")              # the connection accepted before the drain
        assert open_conn.recv(100) == b"still"
    wait_for(lambda: mesh.events(draining_name(mesh, draining), "drained"), what="drained once it closed")
    recs = wait_for(lambda: (lambda r: r if len(r) >= 9 else None)(mesh.conns(dir="upstream")), what="upstream lines")
    assert all(r["verdict"] == "allowed" for r in recs)
    later = [r for r in recs if r["bytes_in"] < len(b"beforestill")]
    assert all(r["upstream"] == f"127.0.0.1:{other.public_port}" for r in later)
    assert any(r["attempts"] == 2 for r in later)


def draining_name(mesh: Mesh, proxy: Proxy) -> str:
    return f"server-api-{mesh.proxies.index(proxy)}"

def test_endpoints_watch_is_live(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[])
    check = mesh.agent.register_sidecar("api", srv.public_port)

    def works() -> bool:
        try:
            return roundtrip(cli.upstream_ports["api"], b"x") == b"x"
        except ConnectionResetError:  # closed at once while the watch had not delivered yet
            return False
    wait_for(works, what="new endpoint used")
    mesh.agent.set_check(check, "critical")

    def refused() -> bool:
        # a connection accepted just before the update still reaches the old instance (open
        # connections are not cut when an instance leaves); later ones are closed at once
        with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
            try:
                return closed_without_data(c, timeout=1)
            except TimeoutError:
                return False
    wait_for(refused, what="critical instance dropped")


def test_leaf_rotation_keeps_streams_and_new_connections_use_new_cert(mesh):
    """The agent re-issues every leaf when its root rotates: the proxies swap certificates in
    place; a long-lived stream keeps flowing and new connections present the new leaf."""
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    stream = socket.create_connection(("127.0.0.1", port), timeout=5)
    stream.sendall(b"a" * 1000)
    got = 0
    while got < 1000:
        got += len(stream.recv(65536))
    first_serial = cli.material.serial
    mesh.agent.rotate_root()
    new_serial = wait_for(lambda: cli.material.serial != first_serial and cli.material.serial,
                          what="client rotated to a new leaf")
    # the long-lived stream still flows, both ways
    for _ in range(20):
        stream.sendall(b"b" * 5000)
        got = 0
        while got < 5000:
            d = stream.recv(65536)
            assert d, "stream dropped by rotation"
            got += len(d)
    # a new connection presents the new certificate: the server side logs its serial
    assert roundtrip(port, b"new") == b"new"
    stream.close()
    wait_for(lambda: len(mesh.conns(dir="inbound")) >= 2, what="two inbound log lines")
    serials = {r["serial"] for r in mesh.conns(dir="inbound")}
    assert serials == {first_serial, new_serial}
    old = [r for r in mesh.conns(dir="inbound") if r["serial"] == first_serial]
    assert old[0]["bytes_in"] == 1000 + 20 * 5000 and old[0]["verdict"] == "allowed"


def test_root_rotation_with_cross_signed_intermediate(mesh):
    """The agent rotates its root; the old root cross-signs the new one and stays trusted. A
    peer still trusting only the OLD root accepts the new leaves (their chain carries the
    cross-signed intermediate); a proxy trusting both accepts leaves of either root; a CA it
    never trusted is refused."""
    srv = mesh.server()
    old_root = mesh.agent.active_root_pem()
    old_web = mesh.agent.leaf("web")
    old_srv_serial = srv.material.serial
    roots = mesh.agent.rotate_root()
    new_root = next(r["RootCert"] for r in roots["Roots"] if r["Active"])
    assert next(r for r in roots["Roots"] if r["Active"])["IntermediateCerts"]  # the cross-signed root
    wait_for(lambda: srv.material.serial != old_srv_serial, what="server proxy re-issued its leaf")
    new_web = wait_for(lambda: (leaf := mesh.agent.leaf("web"))["SerialNumber"] != old_web["SerialNumber"] and leaf,
                       what="web's leaf re-issued under the new root")
    # a client trusting only the old root: the server's new leaf verifies through the
    # cross-signed intermediate, and the server accepts the client's new leaf
    assert direct_tls(mesh, srv.public_port, new_web, roots=[old_root]) == b"hello"
    # once the proxy trusts both roots, a leaf of the old root still gets in
    wait_for(lambda: [e for e in mesh.events("server-api-0", "roots", "leaf") if e["roots"] == 2],
             what="server proxy trusting both roots")
    assert direct_tls(mesh, srv.public_port, old_web, roots=[new_root]) == b"hello"
    plain_new = TestCA(trust_domain=mesh.trust_domain)  # not cross-signed, not trusted
    assert direct_tls(mesh, srv.public_port, plain_new.leaf("web")) is None


def test_readiness_file_and_endpoint(mesh, tmp_path):
    """A sidecar started before its agent answers: listeners bound, 503 and no ready file until
    the agent is up and has issued its leaf, then 200 LIVE."""
    import urllib.error
    import urllib.request
    ready = tmp_path / "ready"
    ready_port = free_port()
    late = MeshAgent()  # not started yet: nothing on its socket
    try:
        cfg = ProxyConfig(service="api", listen_addr="127.0.0.1", listen_port=0, local_port=mesh.echo.port,
                          ready_file=str(ready), ready_addr=f"127.0.0.1:{ready_port}")
        p = mesh.start(cfg, "ready", source=mesh.source(late.address), ready=False)
        wait_for(lambda: mesh.events("ready", "watch-error"), what="the proxy failing to reach its agent")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=5)
        assert e.value.code == 503
        assert not ready.exists() and not p.ready.is_set()
        late.start()
        wait_for(ready.exists, timeout=30, what="ready file")
        with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=5) as r:
            assert r.status == 200 and r.read() == b"LIVE"
        assert p.material.trust_domain == late.trust_domain.lower()
    finally:
        late.close()


def proxy_process_config(mesh: Mesh, tmp_path: Path):
    """A free port and a proxy config for service "api" as the connect-proxy driver writes it
    (the agent's unix socket, a ready file); its ready file, env."""
    port = free_port()
    cfg = tmp_path / "proxy.json"
    ready = tmp_path / "ready"
    cfg.write_text(json.dumps({"service": "api", "listen": f"127.0.0.1:{port}", "local_port": mesh.echo.port,
                               "address": mesh.agent.address, "ready_file": str(ready), "datacenter": "dc1"}))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("YURT_ADDR", None)
    return port, cfg, ready, env


def test_openssl_s_client_without_cert_refused_real_process(mesh, tmp_path):
    """A real `python -m yurt.mesh` process fed by the agent, probed by the real openssl."""
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, timeout=READY_TIMEOUT, what="proxy process ready")
        (tmp_path / "ca.pem").write_text("".join(mesh.agent.root_pems()))
        # no client certificate: the TLS 1.3 handshake completes, then the server's alert arrives
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                            "-CAfile", str(tmp_path / "ca.pem"), "-ign_eof"],
                           input="", capture_output=True, text=True, timeout=20)
        out = r.stdout + r.stderr
        assert "tlsv13 alert certificate required" in out, out
        assert mesh.echo.conns == 0
        # with the agent's leaf for "web", openssl gets through to the app (echo)
        leaf = mesh.agent.leaf("web")
        (tmp_path / "web.crt").write_text(leaf["CertPEM"])
        (tmp_path / "web.key").write_text(leaf["PrivateKeyPEM"])
        sc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-quiet",
                               "-CAfile", str(tmp_path / "ca.pem"), "-cert", str(tmp_path / "web.crt"),
                               "-key", str(tmp_path / "web.key")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            sc.stdin.write("ping-through-openssl\n")
            sc.stdin.flush()
            assert sc.stdout.readline() == "ping-through-openssl\n"
        finally:
            sc.kill()
            sc.wait()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    refused = [x for x in lines if x.get("type") == "conn" and x["verdict"] == "refused"]
    assert refused and "certificate" in refused[0]["reason"].lower(), out + err
    allowed = [x for x in lines if x.get("type") == "conn" and x["verdict"] == "allowed"]
    assert allowed and allowed[0]["src"] == "web" and allowed[0]["serial"] == leaf["SerialNumber"], out
    assert proc.returncode == 0, err


def test_workers_share_the_public_port_real_processes(mesh, tmp_path):
    """-workers 2: two processes on one port (SO_REUSEPORT), each with its own leaf from the
    agent; connections are served by both; stopping the first worker stops the other."""
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg), "-workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = ProcessLines(proc.stdout)
    leaf = mesh.agent.leaf("web")
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, leaf["CertPEM"], leaf["PrivateKeyPEM"], "".join(mesh.agent.root_pems()))
    sent = 0

    def served_by() -> set[int]:
        return {x["pid"] for x in out.json() if x.get("type") == "conn" and x["verdict"] == "allowed"}

    def one_connection() -> set[int]:
        nonlocal sent
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as c:
            c.sendall(f"hello {sent}".encode())
            assert c.recv(100) == f"hello {sent}".encode()
        sent += 1
        return served_by()

    try:
        wait_for(ready.exists, timeout=READY_TIMEOUT, what="proxy process ready")
        # every worker logs "ready" once it has bound the port and loaded its certificate
        def ready_workers() -> set[int] | None:
            pids = {x["pid"] for x in out.json() if x.get("event") == "ready"}
            return pids if len(pids) == 2 else None
        workers = wait_for(ready_workers, timeout=READY_TIMEOUT, what="both workers ready")
        (child,) = workers - {proc.pid}
        assert proc.pid in workers
        assert Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid)
        # the kernel spreads new connections over the two sockets: connect until both served
        wait_for(lambda: one_connection() == workers, timeout=30, what="connections served by both workers")
    finally:
        proc.terminate()
        proc.wait(10)  # the first worker stops the other before it exits
        out.join(10)
        err = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == 0, err
    assert not Path(f"/proc/{child}").exists()  # the second worker is gone (and reaped)
    allowed = [x for x in out.json() if x.get("type") == "conn" and x["verdict"] == "allowed"]
    assert len(allowed) == sent and {x["pid"] for x in allowed} == workers, out.text()


class Held:
    """An app that answers each connection only once the test releases it (all: `release`, or
    one request: `release_one`): `b"answer:" + what it read`. Stands for a slow request in
    flight while its sidecar is told to stop."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.release = threading.Event()
        self._released: dict[bytes, threading.Event] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _one(self, data: bytes) -> threading.Event:
        return self._released.setdefault(data, threading.Event())

    def release_one(self, data: bytes) -> None:
        self._one(data).set()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(c,), daemon=True).start()

    def _answer(self, c: socket.socket) -> None:
        with c:
            data = c.recv(1024)
            one = self._one(data)
            self.received.append(data)
            deadline = time.monotonic() + 60
            while not (self.release.is_set() or one.is_set()) and time.monotonic() < deadline:
                one.wait(0.05)
            c.sendall(b"answer:" + data)

    def close(self) -> None:
        self.release.set()
        self.sock.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False   # a listener closing resets what was queued on it: not refused yet, look again
    return False


def held_proxy(mesh: Mesh, tmp_path: Path, app: Held, **extra) -> tuple[int, subprocess.Popen, ProcessLines, Path]:
    """A real `python -m yurt.mesh` process in front of `app`, configured as the connect-proxy
    driver configures it (drained file, drain timeout); ready."""
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)
    drained = tmp_path / "drained"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "local_port": app.port,
                               "drained_file": str(drained), **extra}))
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = ProcessLines(proc.stdout)
    wait_for(ready.exists, timeout=READY_TIMEOUT, what="proxy process ready")
    return port, proc, out, drained


def open_request(mesh: Mesh, port: int, app: Held, payload: bytes) -> ssl.SSLSocket:
    """An mTLS connection (the agent's leaf for "web") through the proxy to `app`, its request
    read by the app, its answer held."""
    leaf = mesh.agent.leaf("web")
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, leaf["CertPEM"], leaf["PrivateKeyPEM"], "".join(mesh.agent.root_pems()))
    c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))
    c.sendall(payload)
    wait_for(lambda: payload in app.received, what=f"the app reading {payload!r}")
    return c


def test_sigterm_drains_new_connections_refused_open_ones_finish(mesh, tmp_path):
    """SIGTERM: the proxy stops accepting at once, the request in flight is answered in full,
    then the proxy exits 0 by itself; SIGUSR1 first drains only the inbound side and writes the
    drained file once the open connection has finished."""
    app = Held()
    try:
        ready_port = free_port()
        port, proc, out, drained = held_proxy(mesh, tmp_path, app, drain_timeout_ms=60000,
                                              ready_addr=f"127.0.0.1:{ready_port}")
        try:
            first = open_request(mesh, port, app, b"first")
            proc.send_signal(signal.SIGUSR1)           # the client agent's drain
            wait_for(lambda: refused(port), what="new inbound connections refused")
            with pytest.raises(urllib.error.HTTPError) as e:   # no longer ready
                urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=5)
            assert (e.value.code, e.value.read()) == (503, b"DRAINING")
            assert not drained.exists()                # the first request is still in flight
            app.release.set()
            assert received_until_closed(first, timeout=30) == b"answer:first"
            first.close()
            wait_for(drained.exists, what="the drained file once the open connection finished")
            app.release.clear()
            assert proc.poll() is None                 # draining is not stopping
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            out.join(10)
            err = proc.stderr.read()
            proc.stderr.close()
        assert proc.returncode == 0, err
        # (the probes that found the listener still open before the signal landed are refused)
        conns = [x for x in out.json() if x.get("type") == "conn" and x["src"] == "web"]
        assert [(c["verdict"], c["bytes_out"]) for c in conns] == [("allowed", len(b"answer:first"))], out.text()
        events = [x for x in out.json() if x.get("type") == "event" and x["event"] in ("draining", "drained")]
        assert [(e["event"], e.get("side")) for e in events] == [
            ("draining", "inbound"), ("drained", "inbound"), ("draining", "all")], out.text()
    finally:
        app.close()


def test_sigterm_lets_an_open_request_finish_then_exits(mesh, tmp_path):
    app = Held()
    try:
        port, proc, out, _ = held_proxy(mesh, tmp_path, app, drain_timeout_ms=60000)
        try:
            c = open_request(mesh, port, app, b"slow")
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: refused(port), what="new connections refused after SIGTERM")
            assert proc.poll() is None                 # still serving the open request
            app.release.set()
            assert received_until_closed(c, timeout=30) == b"answer:slow"
            c.close()
            proc.wait(30)                              # nothing left open: it exits by itself
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            out.join(10)
            err = proc.stderr.read()
            proc.stderr.close()
        assert proc.returncode == 0, err
        stopping = [x for x in out.json() if x.get("event") == "stopping"]
        assert [s["reason"] for s in stopping] == ["drained"], out.text()
    finally:
        app.close()


def test_drain_timeout_cuts_what_is_still_open(mesh, tmp_path):
    """An open connection that does not finish within the drain timeout is cut; the proxy exits
    0 and logs why."""
    app = Held()
    try:
        port, proc, out, _ = held_proxy(mesh, tmp_path, app, drain_timeout_ms=500)
        try:
            c = open_request(mesh, port, app, b"stuck")
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            assert received_until_closed(c, timeout=30) == b""
            c.close()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            out.join(10)
            err = proc.stderr.read()
            proc.stderr.close()
        assert proc.returncode == 0, err
        stopping = [x for x in out.json() if x.get("event") == "stopping"]
        assert [s["reason"] for s in stopping] == ["drain timeout: 1 connection(s) still open"], out.text()
        (conn,) = [x for x in out.json() if x.get("type") == "conn" and x["src"] == "web"]
        assert conn["reason"] == "proxy stopping", out.text()
    finally:
        app.close()


def socket_owner(pids: set[int], port: int, peer_port: int) -> int | None:
    """Which of `pids` holds this host's TCP socket 127.0.0.1:port <-> 127.0.0.1:peer_port."""
    want = f":{port:04X} "
    with open("/proc/net/tcp") as f:
        rows = [r.split() for r in f.read().splitlines()[1:]]
    inodes = {r[9] for r in rows if (r[1] + " ").endswith(want) and r[2].endswith(f":{peer_port:04X}")}
    for pid in pids:
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if any(f"socket:[{i}]" in links for i in inodes):
            return pid
    return None


def test_workers_drain_together_the_drained_file_waits_for_every_worker(mesh, tmp_path):
    """-workers 2: SIGUSR1 to the process group (as the connect-proxy driver sends it) drains
    both; the drained file appears only once the connection the second worker accepted is done."""
    app = Held()
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)
    drained = tmp_path / "drained"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "local_port": app.port, "drained_file": str(drained)}))
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg), "-workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out = ProcessLines(proc.stdout)
    held: list[ssl.SSLSocket] = []
    try:
        wait_for(ready.exists, timeout=READY_TIMEOUT, what="proxy process ready")
        workers = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
            {x["pid"] for x in out.json() if x.get("event") == "ready"}), timeout=READY_TIMEOUT, what="both workers")
        (child,) = workers - {proc.pid}

        def held_by_child() -> bool:
            """Open a connection; keep it held when the second worker accepted it, else let the
            app answer it and close it (the first worker is left with nothing open)."""
            payload = f"req{len(held)}".encode()
            c = open_request(mesh, port, app, payload)
            if socket_owner(workers, port, c.getsockname()[1]) == child:
                held.append(c)
                return True
            app.release_one(payload)
            assert received_until_closed(c, timeout=30) == b"answer:" + payload
            c.close()
            return False
        wait_for(held_by_child, timeout=60, what="a connection accepted by the second worker")
        os.killpg(proc.pid, signal.SIGUSR1)
        wait_for(lambda: refused(port), what="both workers refusing")
        # the first worker has nothing open: it would be drained at once but for the second one
        wait_for(lambda: [x for x in out.json() if x.get("event") == "draining" and x["pid"] == proc.pid],
                 what="the first worker draining")
        assert not drained.exists()
        app.release.set()
        for c in held:
            assert received_until_closed(c, timeout=30).startswith(b"answer:req")
            c.close()
        wait_for(drained.exists, what="the drained file once every worker is done")
        # each worker logs its own "drained" line: read them all (the reader may lag the file)
        wait_for(lambda: {x["pid"] for x in out.json() if x.get("event") == "drained"} == workers, timeout=10,
                 what="both workers' drained lines")
        proc.terminate()
        proc.wait(30)
    finally:
        for c in held:
            c.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        out.join(10)
        err = proc.stderr.read()
        proc.stderr.close()
        app.close()
    assert proc.returncode == 0, err
