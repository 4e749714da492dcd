"""The HTTP-aware mesh (mesh/l7.py) end to end: a real server agent holds the config entries and
intentions, real sidecars (fed by it over its unix socket, as in production) proxy HTTP/1.1 per
request over real mTLS between real HTTP apps. Each test uses services of its own names."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections import Counter

import httpx
import pytest

from yurt.mesh.accesslog import AccessLog
from yurt.mesh.config import ProxyConfig, UpstreamConfig
from yurt.mesh.l7 import decide, http_matches
from yurt.mesh.proxy import Proxy
from yurt.mesh.source import AgentSource

from .agent_util import wait_for
from .mesh_agent import MeshAgent

READY_TIMEOUT = 20.0


class App:
    """An HTTP/1.1 app (keep-alive) answering `<name> <METHOD> <path>`; `mode` "503" answers
    503 to everything, "close" closes every connection without an answer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.seen: list[tuple[str, str]] = []
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16   # the head and the body in one write (no Nagle wait between them)

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                app.seen.append((self.command, self.path))
                if app.mode == "slow":
                    time.sleep(3)
                if app.mode == "close":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status = 503 if app.mode == "503" else 200
                body = f"{app.name} {self.command} {self.path}".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class L7Mesh:
    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent
        self.logs: list[dict] = []
        self._lock = threading.Lock()
        self.proxies: list[Proxy] = []
        self.sources: list[AgentSource] = []
        self.apps: list[App] = []

    def log(self, name: str) -> AccessLog:
        def write(line: str) -> None:
            with self._lock:
                self.logs.append({"proxy": name, **json.loads(line)})
        return AccessLog(write)

    def requests(self, **match) -> list[dict]:
        with self._lock:
            return [r for r in self.logs if r["type"] == "request" and all(r.get(k) == v for k, v in match.items())]

    def start(self, cfg: ProxyConfig, name: str) -> Proxy:
        src = AgentSource(self.agent.address)
        self.sources.append(src)
        p = Proxy(cfg, src, self.log(name)).start_background()
        self.proxies.append(p)
        assert p.ready.wait(READY_TIMEOUT), f"proxy {name} not ready"
        return p

    def instance(self, service: str, app_name: str, meta: dict[str, str] | None = None) -> App:
        """An app behind its own sidecar, registered as a passing instance of `service`."""
        app = App(app_name)
        self.apps.append(app)
        p = self.start(ProxyConfig(service=service, listen_addr="127.0.0.1", listen_port=0, local_port=app.port),
                       f"server-{app_name}")
        sid = f"{service}-sidecar-proxy-{app_name}"
        r = self.agent.http.put("/v1/agent/service/register", json={
            "ID": sid, "Name": f"{service}-sidecar-proxy", "Kind": "connect-proxy", "Address": "127.0.0.1",
            "Port": p.public_port, "Meta": meta or {},
            "Proxy": {"DestinationServiceName": service, "LocalServiceAddress": "127.0.0.1"},
            "Check": {"CheckID": f"{sid}:ttl", "Name": "ttl", "TTL": "1h", "Status": "passing"}})
        assert r.status_code == 200, r.text
        return app

    def client(self, service: str, dest: str) -> str:
        """A sidecar of `service` with an upstream to `dest`: its base URL."""
        p = self.start(ProxyConfig(service=service, upstreams=[UpstreamConfig(dest, 0)]), f"client-{service}")
        self.last_client = p
        return f"http://127.0.0.1:{p.upstream_ports[dest]}"

    def config(self, entry: dict) -> None:
        r = self.agent.http.put("/v1/config", json=entry)
        assert r.status_code == 200 and r.json() is True, r.text

    def close(self) -> None:
        for p in self.proxies:
            p.stop()
        for s in self.sources:
            s.close()
        for a in self.apps:
            a.close()


@pytest.fixture(scope="module")
def agent():
    a = MeshAgent().start()
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def mesh(agent):
    m = L7Mesh(agent)
    try:
        yield m
    finally:
        m.close()


def test_l7_intentions_allow_get_and_deny_post_on_one_path(mesh):
    app = mesh.instance("count-api", "count")
    mesh.config({"Kind": "service-defaults", "Name": "count-api", "Protocol": "http"})
    mesh.config({"Kind": "service-intentions", "Name": "count-api", "Sources": [{"Name": "dashboard", "Permissions": [
        {"Action": "allow", "HTTP": {"PathPrefix": "/api/count", "Methods": ["GET"]}},
        {"Action": "deny", "HTTP": {"PathPrefix": "/api/count"}}]}]})
    base = mesh.client("dashboard", "count-api")
    with httpx.Client(base_url=base, timeout=10) as c:
        # the sidecars follow the entries: wait until both sides speak HTTP
        wait_for(lambda: c.post("/api/count").status_code == 403, 20, what="the POST denied")
        got = c.get("/api/count")
        assert got.status_code == 200 and got.text == "count GET /api/count"
        denied = c.post("/api/count", content=b"x=1")
        assert denied.status_code == 403
        assert "intention dashboard => count-api" in denied.text and "deny" in denied.text
        # the app saw the GETs only
        assert ("POST", "/api/count") not in app.seen and ("GET", "/api/count") in app.seen
        # another path: no permission matches, the default policy (allow) applies
        assert c.get("/other").status_code == 200
    line = wait_for(lambda: mesh.requests(dir="inbound", method="POST", status=403), 10,
                    what="the denied request's log line")[-1]
    assert line["src"] == "dashboard" and line["verdict"] == "denied" and "dashboard => count-api" in line["reason"]
    assert mesh.requests(dir="upstream", method="GET", path="/api/count", status=200)


def test_a_90_10_split_over_1000_requests(mesh):
    mesh.instance("split-api", "v1", {"version": "v1"})
    mesh.instance("split-api", "v2", {"version": "v2"})
    mesh.config({"Kind": "service-defaults", "Name": "split-api", "Protocol": "http"})
    mesh.config({"Kind": "service-resolver", "Name": "split-api", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})
    base = mesh.client("split-web", "split-api")
    with httpx.Client(base_url=base, timeout=10) as c:
        # the default subset only, until the splitter is written (applied without a restart)
        wait_for(lambda: c.get("/").text.startswith("v1"), 20, what="v1 answering")
        assert {c.get("/").text.split()[0] for _ in range(20)} == {"v1"}
        mesh.config({"Kind": "service-splitter", "Name": "split-api", "Splits": [
            {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})
        wait_for(lambda: any(c.get("/").text.startswith("v2") for _ in range(20)), 20, what="v2 answering")
        counts = Counter(c.get(f"/n/{i}").text.split()[0] for i in range(1000))
    assert set(counts) == {"v1", "v2"}
    assert abs(counts["v1"] - 900) <= 30, counts


def test_a_retry_masks_one_instances_failures(mesh):
    bad = mesh.instance("retry-api", "bad")
    mesh.instance("retry-api", "good")
    mesh.config({"Kind": "service-defaults", "Name": "retry-api", "Protocol": "http"})
    mesh.config({"Kind": "service-router", "Name": "retry-api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/"}},
         "Destination": {"NumRetries": 2, "RetryOnConnectFailure": True, "RetryOnStatusCodes": [503]}}]})
    base = mesh.client("retry-web", "retry-api")
    with httpx.Client(base_url=base, timeout=10) as c:
        wait_for(lambda: c.get("/warm").status_code == 200, 20, what="the upstream answering")
        for mode in ("503", "close"):
            bad.mode = mode
            before = len(bad.seen)
            answers = [c.get(f"/{mode}/{i}") for i in range(30)]
            assert [r.status_code for r in answers] == [200] * 30, [r.text for r in answers if r.status_code != 200]
            assert {r.text.split()[0] for r in answers} == {"good"}
            assert len(bad.seen) > before, "the failing instance was never tried"
    retried = [r for r in mesh.requests(dir="upstream", dst="retry-api", status=200) if r["retries"] > 0]
    assert retried, "no request was retried"
    # the client sidecar's Prometheus series count the requests and the retries
    p = mesh.last_client

    def counted() -> str:   # a request is counted once its answer is sent: the last one maybe just now
        text = p.metrics.render(p)
        ok = re.search(r'yurt_sidecar_http_requests_total\{service="retry-web",direction="upstream",'
                       r'peer="retry-api",code="2xx"\} (\d+)', text)
        return text if ok and int(ok.group(1)) >= 61 else ""
    text = wait_for(counted, 10, what="61 requests counted")
    retries = re.search(r'yurt_sidecar_http_retries_total\{service="retry-web",upstream="retry-api"\} (\d+)', text)
    assert retries and int(retries.group(1)) >= len(retried), text


def test_a_router_by_path_prefix_to_two_services(mesh):
    mesh.instance("route-api", "one")
    mesh.instance("route-api-v2", "two")
    for svc in ("route-api", "route-api-v2"):
        mesh.config({"Kind": "service-defaults", "Name": svc, "Protocol": "http"})
    mesh.config({"Kind": "service-router", "Name": "route-api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v2/"}}, "Destination": {"Service": "route-api-v2", "PrefixRewrite": "/"}}]})
    base = mesh.client("route-web", "route-api")
    with httpx.Client(base_url=base, timeout=10) as c:
        wait_for(lambda: c.get("/v2/items").status_code == 200, 20, what="the v2 route")
        assert c.get("/v2/items?x=1").text == "two GET /items?x=1"
        assert c.get("/items").text == "one GET /items"
        assert c.post("/v2/").text == "two POST /"


def test_l7_matching_as_consul_evaluates_it():
    """The per-request decision with no agent: first matching intention, its first matching
    permission, else the default policy; every kind of match."""
    h = {"x-debug": ["1"], "user-agent": ["curl/8.5"]}
    assert http_matches({"PathExact": "/a"}, "GET", "/a", "", h)
    assert not http_matches({"PathExact": "/a"}, "GET", "/a/b", "", h)
    assert http_matches({"PathRegex": "/items/[0-9]+"}, "GET", "/items/42", "", h)
    assert not http_matches({"PathRegex": "/items/[0-9]+"}, "GET", "/items/42/x", "", h)
    assert http_matches({"Methods": ["get", "HEAD"]}, "GET", "/", "", h)
    assert not http_matches({"Methods": ["POST"]}, "GET", "/", "", h)
    assert http_matches({"Header": [{"Name": "X-Debug", "Present": True}]}, "GET", "/", "", h)
    assert http_matches({"Header": [{"Name": "user-agent", "Prefix": "curl/"}]}, "GET", "/", "", h)
    assert http_matches({"Header": [{"Name": "user-agent", "Suffix": "8.5"}]}, "GET", "/", "", h)
    assert http_matches({"Header": [{"Name": "user-agent", "Regex": "curl/[0-9.]+"}]}, "GET", "/", "", h)
    assert not http_matches({"Header": [{"Name": "x-debug", "Exact": "1", "Invert": True}]}, "GET", "/", "", h)
    assert http_matches({"Header": [{"Name": "x-missing", "Present": True, "Invert": True}]}, "GET", "/", "", h)
    assert http_matches({"QueryParam": [{"Name": "v", "Exact": "2"}]}, "GET", "/", "v=2&w", h)
    assert not http_matches({"QueryParam": [{"Name": "w", "Regex": "[0-9]+"}]}, "GET", "/", "v=2&w", h)
    chain = {"Service": "api", "DefaultAllow": False, "Intentions": [
        {"SourceName": "web", "DestinationName": "api", "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"]}}]},
        {"SourceName": "*", "DestinationName": "api", "Action": "allow"}]}
    assert decide(chain, "web", "GET", "/items", "", {})[0] is True
    allowed, reason = decide(chain, "web", "GET", "/admin/x", "", {})
    assert not allowed and "intention web => api, permission 1: deny PathPrefix /admin" in reason
    allowed, reason = decide(chain, "web", "POST", "/items", "", {})   # no permission: the default (deny)
    assert not allowed and "no permission matched POST /items; default policy deny" in reason
    assert decide(chain, "other", "POST", "/admin", "", {}) == (True, "intention * => api (allow)")


def test_expect_continue_is_answered_and_upgrades_are_refused(mesh):
    mesh.instance("misc-api", "misc")
    mesh.config({"Kind": "service-defaults", "Name": "misc-api", "Protocol": "http"})
    base = mesh.client("misc-web", "misc-api")
    port = int(base.rsplit(":", 1)[1])
    with httpx.Client(base_url=base, timeout=10) as c:
        wait_for(lambda: c.get("/warm").status_code == 200, 20, what="the upstream answering")
    import socket
    body = b"x" * 4096
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # as curl sends a large body: the head, then the body once 100 Continue has come
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: misc-api\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 100 ")
        s.sendall(body)
        answer = b""
        while b"misc POST /upload" not in answer:
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: misc-api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 501 ") and b"give the service protocol tcp" in answer


def test_failover_and_request_timeout(mesh):
    slow = mesh.instance("fo-backup", "backup")
    for svc in ("fo-api", "fo-backup"):
        mesh.config({"Kind": "service-defaults", "Name": svc, "Protocol": "http"})
    mesh.config({"Kind": "service-resolver", "Name": "fo-api", "Failover": {"*": {"Service": "fo-backup"}}})
    mesh.config({"Kind": "service-router", "Name": "fo-api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/slow"}}, "Destination": {"RequestTimeout": "500ms"}}]})
    base = mesh.client("fo-web", "fo-api")
    with httpx.Client(base_url=base, timeout=10) as c:
        # fo-api has no instance at all: its failover target answers
        wait_for(lambda: c.get("/x").text == "backup GET /x", 20, what="the failover target answering")
        slow.mode = "slow"
        r = c.get("/slow")
        assert r.status_code == 504 and "did not answer within 0.5s" in r.text


def test_a_sidecar_whose_agent_has_no_chain_route_still_gets_ready_on_tcp(mesh):
    """An older agent (or server) without /v1/agent/connect/chain: readiness does not wait for
    the chain, and the listeners stay on the TCP path."""
    from yurt.errors import NotFound

    class OldAgent(AgentSource):
        def chain(self, service: str, index: int, wait: float):
            raise NotFound("404 page not found")

    src = OldAgent(mesh.agent.address)
    mesh.sources.append(src)
    p = Proxy(ProxyConfig(service="old-web", upstreams=[UpstreamConfig("old-api", 0)]), src,
              mesh.log("old")).start_background()
    mesh.proxies.append(p)
    assert p.ready.wait(READY_TIMEOUT)
    assert p.l7 is None and p.chains == {}
