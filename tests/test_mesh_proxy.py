"""The sidecar proxy end to end: real TLS, real sockets, proxies on their own threads (and one
as a real process), certificates from a real test CA. No timing assertions."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from yurt.mesh.accesslog import AccessLog
from yurt.mesh.config import ProxyConfig, UpstreamConfig
from yurt.mesh.proxy import Proxy
from yurt.mesh.static import StaticSource
from yurt.mesh.testca import TestCA
from yurt.mesh.tls import _base

SRC = Path(__file__).resolve().parent.parent / "src"


def wait_for(pred, timeout: float = 5.0, what: str = "condition"):
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
    def __init__(self) -> None:
        self.ca = TestCA()
        self.source = StaticSource(self.ca.trust_domain, [self.ca.root_pem])
        self.echo = Echo()
        self.logs: list[dict] = []
        self._lock = threading.Lock()
        self.proxies: list[Proxy] = []

    def log(self, name: str) -> AccessLog:
        def write(line: str) -> None:
            with self._lock:
                self.logs.append({"proxy": name, **json.loads(line)})
        return AccessLog(write)

    def conns(self, **match) -> list[dict]:
        with self._lock:
            return [r for r in self.logs if r["type"] == "conn" and all(r.get(k) == v for k, v in match.items())]

    def server(self, service: str = "api", leaf: dict | None = None, source: StaticSource | None = None,
               local_port: int | None = None) -> Proxy:
        src = source or self.source
        src.set_leaf(service, leaf or self.ca.leaf(service))
        cfg = ProxyConfig(service=service, listen_addr="127.0.0.1", listen_port=0,
                          local_port=local_port or self.echo.port)
        p = Proxy(cfg, src, self.log(f"server-{service}-{len(self.proxies)}")).start_background()
        self.proxies.append(p)
        assert p.ready.wait(5), "server proxy not ready"
        return p

    def client(self, service: str = "web", dest: str = "api", instances: list[int] | None = None) -> Proxy:
        self.source.set_leaf(service, self.ca.leaf(service))
        if instances is not None:
            self.source.set_endpoints(dest, [{"address": "127.0.0.1", "port": p} for p in instances])
        cfg = ProxyConfig(service=service, upstreams=[UpstreamConfig(dest, 0)])
        p = Proxy(cfg, self.source, self.log(f"client-{service}")).start_background()
        self.proxies.append(p)
        assert p.ready.wait(5), "client proxy not ready"
        return p

    def close(self) -> None:
        for r in self.logs:  # pytest shows this only for a failed test
            print(json.dumps(r))
        for p in self.proxies:
            p.stop()
        self.source.close()
        self.echo.close()


@pytest.fixture
def mesh():
    m = Mesh()
    yield m
    m.close()


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


def tls_client(mesh: Mesh, issued: dict | None, roots: list[str] | None = None) -> ssl.SSLContext:
    roots_pem = "\n".join(roots or [mesh.ca.root_pem])
    if issued is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=roots_pem)
        return ctx
    return _base(ssl.PROTOCOL_TLS_CLIENT, issued["CertPEM"], issued["PrivateKeyPEM"], roots_pem)


def direct_tls(mesh: Mesh, port: int, issued: dict | None, payload: bytes = b"hello") -> bytes | None:
    """Connect straight to a public listener; return the echo, or None if refused."""
    ctx = tls_client(mesh, issued)
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
    assert direct_tls(mesh, srv.public_port, None) is None
    wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")
    assert mesh.echo.conns == 0
    # still serving a good client
    assert direct_tls(mesh, srv.public_port, mesh.ca.leaf("web")) == b"hello"


def test_certificate_from_another_ca_is_refused(mesh):
    srv = mesh.server()
    other = TestCA(trust_domain=mesh.ca.trust_domain)
    assert direct_tls(mesh, srv.public_port, other.leaf("web")) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")[0]
    assert "certificate" in rec["reason"].lower() or "unknown ca" in rec["reason"].lower()
    assert mesh.echo.conns == 0


def test_expired_certificate_is_refused(mesh):
    srv = mesh.server()
    old = mesh.ca.leaf("web", not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10),
                       ttl=dt.timedelta(days=1))
    assert direct_tls(mesh, srv.public_port, old) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")[0]
    assert "expired" in rec["reason"].lower()


def test_foreign_trust_domain_is_refused(mesh):
    srv = mesh.server()
    leaf = mesh.ca.leaf("web", uri="spiffe://other.yurt/ns/default/dc/dc1/svc/web")
    assert direct_tls(mesh, srv.public_port, leaf) is None
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="refused"), what="refused log line")[0]
    assert "trust domain" in rec["reason"]


def test_plaintext_and_garbage_on_public_port_refused_proxy_keeps_serving(mesh):
    srv = mesh.server()
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(300)):
        with socket.create_connection(("127.0.0.1", srv.public_port), timeout=5) as c:
            c.sendall(junk)
            assert closed_without_data(c) or True  # an alert may come back; nothing from the app
    wait_for(lambda: len(mesh.conns(dir="inbound", verdict="refused")) >= 2, what="two refusals")
    assert mesh.echo.conns == 0
    assert direct_tls(mesh, srv.public_port, mesh.ca.leaf("web")) == b"hello"


def test_wrong_server_identity_is_refused_by_upstream(mesh):
    # the "api" instance presents a certificate for service "db"
    impostor_src = StaticSource(mesh.ca.trust_domain, [mesh.ca.root_pem])
    srv = mesh.server(service="db", source=impostor_src)
    cli = mesh.client(instances=[srv.public_port])
    with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
        c.sendall(b"secret")
        assert closed_without_data(c)
    rec = wait_for(lambda: mesh.conns(dir="upstream"), what="upstream log line")[0]
    assert rec["verdict"] == "error" and "svc/db" in rec["reason"] and "is not" in rec["reason"]
    impostor_src.close()


def test_deny_closes_new_and_existing_connections(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    existing = socket.create_connection(("127.0.0.1", port), timeout=5)
    existing.sendall(b"one")
    assert existing.recv(10) == b"one"
    mesh.source.set_intention("web", "deny")
    # the open connection is closed by the server side proxy ...
    assert closed_without_data(existing)
    existing.close()
    rec = wait_for(lambda: mesh.conns(dir="inbound", verdict="denied"), what="denied log line")[0]
    assert "intentions changed" in rec["reason"] and rec["src"] == "web"
    # ... and new ones are refused
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"two")
        assert closed_without_data(c)
    wait_for(lambda: len(mesh.conns(dir="inbound", verdict="denied")) >= 2, what="second denial")
    assert "Matched L4 intention" in mesh.conns(dir="inbound", verdict="denied")[-1]["reason"]
    # allow again: new connections flow
    mesh.source.set_intention("web", "allow")

    def works() -> bool:
        try:
            return roundtrip(port, b"three") == b"three"
        except ConnectionResetError:
            return False
    wait_for(works, what="allowed again")


def test_default_deny_and_wildcard(mesh):
    mesh.source.set_default_allow(False)
    srv = mesh.server()
    assert direct_tls(mesh, srv.public_port, mesh.ca.leaf("web")) is None
    mesh.source.set_intention("*", "allow")
    wait_for(lambda: direct_tls(mesh, srv.public_port, mesh.ca.leaf("web")) == b"hello", what="wildcard allow")


def test_no_healthy_instance_closes_at_once(mesh):
    cli = mesh.client(instances=[])
    with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
        assert closed_without_data(c)
    rec = wait_for(lambda: mesh.conns(dir="upstream"), what="upstream log line")[0]
    assert rec["verdict"] == "error" and "no healthy instance" in rec["reason"]


def test_first_instance_down_retries_on_second(mesh):
    srv = mesh.server()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    cli = mesh.client(instances=[dead_port, srv.public_port])
    for _ in range(4):  # whatever the balancer picks first, every connection gets through
        assert roundtrip(cli.upstream_ports["api"], b"retry") == b"retry"
    wait_for(lambda: len(mesh.conns(dir="upstream")) >= 4, what="upstream log lines")
    recs = mesh.conns(dir="upstream")
    assert all(r["verdict"] == "allowed" and r["upstream"] == f"127.0.0.1:{srv.public_port}" for r in recs)
    assert any(r["attempts"] == 2 for r in recs)


def test_endpoints_watch_is_live(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[])
    mesh.source.set_endpoints("api", [{"address": "127.0.0.1", "port": srv.public_port}])

    def works() -> bool:
        try:
            return roundtrip(cli.upstream_ports["api"], b"x") == b"x"
        except ConnectionResetError:  # closed at once while the watch had not delivered yet
            return False
    wait_for(works, what="new endpoint used")
    mesh.source.set_endpoints("api", [{"address": "127.0.0.1", "port": srv.public_port, "status": "critical"}])
    def refused() -> bool:
        # a connection accepted just before the update still reaches the old instance (open
        # connections are not cut when an instance leaves); later ones are closed at once
        with socket.create_connection(("127.0.0.1", cli.upstream_ports["api"]), timeout=5) as c:
            try:
                return closed_without_data(c, timeout=1)
            except socket.timeout:
                return False
    wait_for(refused, what="critical instance dropped")


def test_leaf_rotation_keeps_streams_and_new_connections_use_new_cert(mesh):
    srv = mesh.server()
    cli = mesh.client(instances=[srv.public_port])
    port = cli.upstream_ports["api"]
    stream = socket.create_connection(("127.0.0.1", port), timeout=5)
    stream.sendall(b"a" * 1000)
    got = 0
    while got < 1000:
        got += len(stream.recv(65536))
    first_serial = wait_for(lambda: [r for r in mesh.logs if r.get("event") == "leaf" and r["proxy"] == "client-web"],
                            what="leaf event")[-1]["serial"]
    new_leaf = mesh.ca.leaf("web")
    mesh.source.set_leaf("web", new_leaf)
    mesh.source.set_leaf("api", mesh.ca.leaf("api"))  # the server side rotates too
    wait_for(lambda: cli.material is not None and cli.material.serial == new_leaf["SerialNumber"], what="client rotated")
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
    assert new_leaf["SerialNumber"] in serials
    assert first_serial != new_leaf["SerialNumber"]
    old = [r for r in mesh.conns(dir="inbound") if r["serial"] != new_leaf["SerialNumber"]]
    assert old and old[0]["bytes_in"] == 1000 + 20 * 5000 and old[0]["verdict"] == "allowed"


def test_root_rotation_with_cross_signed_intermediate(mesh):
    """Server still trusts only the OLD root; client's leaf comes from the NEW CA and carries
    the cross-signed intermediate → accepted. And a server trusting [old, new] accepts both."""
    srv = mesh.server()  # trusts mesh.ca only
    new_ca = TestCA(trust_domain=mesh.ca.trust_domain)
    mesh.ca.cross_sign(new_ca)
    new_leaf = new_ca.leaf("web")
    assert direct_tls(mesh, srv.public_port, new_leaf) == b"hello"
    # both roots in the bundle (old one rotated out): leaves of either CA work
    both = StaticSource(mesh.ca.trust_domain, [mesh.ca.root_pem, new_ca.root_pem])
    srv2 = mesh.server(source=both, leaf=new_ca.leaf("api"))
    assert direct_tls(mesh, srv2.public_port, mesh.ca.leaf("web")) == b"hello"
    plain_new = TestCA(trust_domain=mesh.ca.trust_domain)  # not cross-signed, not trusted
    assert direct_tls(mesh, srv.public_port, plain_new.leaf("web")) is None
    both.close()


def test_readiness_file_and_endpoint(mesh, tmp_path):
    import urllib.request
    ready = tmp_path / "ready"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    ready_port = s.getsockname()[1]
    s.close()
    src = StaticSource(mesh.ca.trust_domain, [mesh.ca.root_pem])  # no leaf yet: not ready
    cfg = ProxyConfig(service="api", listen_addr="127.0.0.1", listen_port=0, local_port=mesh.echo.port,
                      ready_file=str(ready), ready_addr=f"127.0.0.1:{ready_port}")
    p = Proxy(cfg, src, mesh.log("ready")).start_background()
    mesh.proxies.append(p)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=5)
    assert e.value.code == 503
    assert not ready.exists()
    src.set_leaf("api", mesh.ca.leaf("api"))
    wait_for(ready.exists, what="ready file")
    with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=5) as r:
        assert r.status == 200 and r.read() == b"LIVE"
    src.close()


def proxy_process_config(mesh, tmp_path):
    """A free port, a proxy config file on a static source for service "api", its ready file, env."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    static = tmp_path / "static.json"
    static.write_text(json.dumps(mesh.ca.static_doc({"api": mesh.ca.leaf("api")})))
    cfg = tmp_path / "proxy.json"
    ready = tmp_path / "ready"
    cfg.write_text(json.dumps({"service": "api", "listen": f"127.0.0.1:{port}", "local_port": mesh.echo.port,
                               "ready_file": str(ready), "static_source": str(static)}))
    return port, cfg, ready, {**os.environ, "PYTHONPATH": str(SRC)}


def test_openssl_s_client_without_cert_refused_real_process(mesh, tmp_path):
    """A real `python -m yurt.mesh` process (static source file), probed by the real openssl."""
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, timeout=15, what="proxy process ready")
        (tmp_path / "ca.pem").write_text(mesh.ca.root_pem)
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                            "-CAfile", str(tmp_path / "ca.pem"), "-ign_eof"],
                           input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=20)
        out = r.stdout + r.stderr
        assert "certificate required" in out or "alert" in out or r.returncode != 0, out
        assert mesh.echo.conns == 0
        # with a certificate, openssl gets through to the app (echo)
        leaf = mesh.ca.leaf("web")
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
    assert proc.returncode == 0, err


def test_workers_share_the_public_port_real_processes(mesh, tmp_path):
    """-workers 2: two processes on one port (SO_REUSEPORT); connections work whichever worker
    takes them; stopping the first worker stops the other."""
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg), "-workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, timeout=15, what="proxy process ready")
        time.sleep(0.5)  # the second worker binds at about the same time
        ctx = _base(ssl.PROTOCOL_TLS_CLIENT, *(lambda l: (l["CertPEM"], l["PrivateKeyPEM"]))(mesh.ca.leaf("web")),
                    mesh.ca.root_pem)
        for i in range(12):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw) as c:
                c.sendall(f"hello {i}".encode())
                assert c.recv(100) == f"hello {i}".encode()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)  # returns once every worker closed stdout
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len([x for x in lines if x.get("type") == "conn" and x["verdict"] == "allowed"]) == 12, out
    assert len([x for x in lines if x.get("event") in ("leaf", "roots")]) >= 2, out  # both workers loaded it
