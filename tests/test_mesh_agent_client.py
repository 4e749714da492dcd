"""The sidecar's lean agent client (stdlib http.client over a unix socket or TCP) against a small
fake agent (to control what the agent answers: indexes, closed connections, errors), and a real
`python -m yurt.mesh` process fed by a real agent that must never load httpx/pydantic/FastAPI."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from yurt.errors import NotFound, Unreachable
from yurt.mesh.agent_client import AgentClient
from yurt.mesh.source import AgentSource

from .agent_util import free_port, wait_for
from .mesh_agent import MeshAgent, ProcessLines
from .meshca import TestCA

SRC = Path(__file__).resolve().parent.parent / "src"
HEAVY = ("httpx", "httpcore", "anyio", "pydantic", "fastapi", "starlette", "uvicorn", "yurt.api")


class FakeAgent:
    """Consul-shaped endpoints the proxy uses; blocking queries honour ?index=&wait=."""

    def __init__(self, ca: TestCA, unix_path: str | None = None) -> None:
        self.ca = ca
        self.index = 10
        self.leaves: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, dict]] = []  # method, path, query, headers
        self.changed = threading.Condition()
        self.close_after_response = False
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:
                pass

            def address_string(self) -> str:
                return "fake"

            def _reply(self, status: int, body, index: int | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if index is not None:
                    self.send_header("X-Consul-Index", str(index))
                if agent.close_after_response:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)

            def _block(self, q: dict) -> int:
                idx = int(q.get("index", ["0"])[0])
                wait = q.get("wait", ["0s"])[0]
                secs = float(wait[:-1]) if wait.endswith("s") else float(wait or 0)
                end = time.monotonic() + secs
                with agent.changed:
                    while idx and agent.index <= idx and time.monotonic() < end:
                        agent.changed.wait(end - time.monotonic())
                    return agent.index

            def do_GET(self) -> None:
                u = urlsplit(self.path)
                q = parse_qs(u.query, keep_blank_values=True)
                agent.requests.append(("GET", u.path, q, dict(self.headers)))
                if u.path == "/v1/agent/connect/ca/roots":
                    self._reply(200, agent.ca.roots_json(), self._block(q))
                elif u.path.startswith("/v1/agent/connect/ca/leaf/"):
                    svc = u.path.rsplit("/", 1)[1]
                    idx = self._block(q)
                    if svc not in agent.leaves:
                        agent.leaves[svc] = agent.ca.leaf(svc)
                    self._reply(200, agent.leaves[svc], idx)
                elif u.path == "/v1/connect/intentions/match":
                    name = q["name"][0]
                    self._reply(200, {name: []}, self._block(q))
                elif u.path.startswith("/v1/health/connect/"):
                    self._reply(200, [], self._block(q))
                else:
                    self._reply(404, {"error": "no such path"})

            def do_POST(self) -> None:
                u = urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                agent.requests.append(("POST", u.path, body, dict(self.headers)))
                if u.path == "/v1/agent/connect/authorize":
                    ok = body["ClientCertURI"].endswith("/svc/web")
                    self._reply(200, {"Authorized": ok, "Reason": "ok" if ok else "denied by test"})
                else:
                    self._reply(404, {})

        if unix_path:
            class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True
            self.server = Server(unix_path, Handler)
            self.address = f"unix://{unix_path}"
        else:
            class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
                daemon_threads = True
                allow_reuse_address = True
            self.server = Server(("127.0.0.1", 0), Handler)
            self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bump(self) -> None:
        with self.changed:
            self.index += 1
            self.changed.notify_all()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["unix", "tcp"])
def agent(request, tmp_path):
    a = FakeAgent(TestCA(), str(tmp_path / "yurt.sock") if request.param == "unix" else None)
    yield a
    a.close()


def test_client_endpoints_and_blocking_queries(agent):
    c = AgentClient(agent.address)
    roots, idx = c.ca_roots()
    assert roots["TrustDomain"] == agent.ca.trust_domain and idx == 10
    leaf, idx = c.leaf("web")
    assert leaf["CertPEM"] and idx == 10
    # a blocking query returns after ?wait= with the same index when nothing changed
    t = time.monotonic()
    _, idx2 = c.leaf("web", index=idx, wait="1s")
    assert idx2 == idx and time.monotonic() - t >= 0.9
    # ... and as soon as the index moves
    threading.Timer(0.2, agent.bump).start()
    t = time.monotonic()
    _, idx3 = c.ca_roots(index=idx, wait=30)
    assert idx3 == 11 and time.monotonic() - t < 5
    q = [r for r in agent.requests if r[1] == "/v1/agent/connect/ca/roots"][-1][2]
    assert q["index"] == ["10"] and q["wait"] == ["30s"]
    assert c.intention_match("api") == ([], 11)
    assert c.health_connect("api") == ([], 11)
    hq = [r for r in agent.requests if r[1] == "/v1/health/connect/api"][-1][2]
    assert hq["passing"] == ["1"]
    assert c.authorize("api", agent.ca.uri("web"), "01")["Authorized"] is True
    with pytest.raises(NotFound) as e:  # the agent's 404, as the error the server raised
        c.get("/v1/nope")
    assert e.value.status == 404
    c.close()


def test_client_keeps_alive_and_survives_server_closing(agent):
    c = AgentClient(agent.address)
    c.ca_roots()
    conn = c._local.conn
    c.ca_roots()
    assert c._local.conn is conn  # same kept-alive connection
    agent.close_after_response = True
    c.ca_roots()
    c.ca_roots()  # the agent closed the previous one: a fresh connection, no error
    agent.close_after_response = False
    c.close()


def test_client_unreachable(tmp_path):
    with pytest.raises(Unreachable):
        AgentClient(f"unix://{tmp_path}/nothing.sock").ca_roots()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(Unreachable):
        AgentClient(f"127.0.0.1:{port}").ca_roots()


def test_client_addresses():
    assert (AgentClient("http://10.1.2.3:4646")._host, AgentClient("10.1.2.3:4646")._port) == ("10.1.2.3", 4646)
    assert (AgentClient("http://[::1]:8500")._host, AgentClient("http://[::1]:8500")._port) == ("::1", 8500)
    assert AgentClient("unix:///run/yurt.sock")._unix == "/run/yurt.sock"


def test_agent_source_uses_lean_client(agent):
    src = AgentSource(agent.address)
    assert type(src.client).__name__ == "AgentClient"
    assert src.roots(0, 60)[0]["TrustDomain"] == agent.ca.trust_domain
    assert src.authorize("api", agent.ca.uri("web"), "01") == (True, "ok")
    assert src.authorize("api", agent.ca.uri("db"), "01") == (False, "denied by test")
    assert src.intentions("api", 0, 60) == ({"api": []}, 10)
    assert src.endpoints("api", "dc1", 0, 60) == ([], 10)
    src.close()


def test_real_proxy_process_never_imports_heavy_modules(tmp_path):
    """`python -m yurt.mesh` against a real agent on its unix socket (as the connect-proxy driver
    configures it): becomes ready with its leaf from the agent, and httpx/pydantic/FastAPI/
    yurt.api are not in sys.modules."""
    agent = MeshAgent().start()
    ready = tmp_path / "ready"
    cfg = tmp_path / "proxy.json"
    cfg.write_text(json.dumps({"service": "api", "listen": f"127.0.0.1:{free_port()}", "local_port": 9,
                               "address": agent.address, "ready_file": str(ready)}))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("YURT_ADDR", None)
    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg), "-debug-modules"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = ProcessLines(proc.stdout)

    def modules() -> list[str] | None:
        assert proc.poll() is None, f"the proxy exited with {proc.returncode}: {out.text()}"
        return next((e["modules"] for e in out.json() if e.get("event") == "modules"), None)
    try:
        mods = wait_for(modules, 15, interval=0.02, what="the proxy's modules event (logged once ready)")
        assert ready.exists()
        leaf = next(e for e in out.json() if e.get("event") == "leaf")
        assert leaf["serial"] == agent.leaf("api")["SerialNumber"]  # its certificate came from the agent
    finally:
        proc.terminate()
        proc.wait(10)
        out.join(10)
        err = proc.stderr.read()
        proc.stderr.close()
        agent.close()
    assert "yurt.mesh.agent_client" in mods
    heavy = [m for m in mods if m.split(".")[0] in HEAVY or m.startswith("yurt.api")]
    assert heavy == [], heavy
    assert proc.returncode == 0, err
