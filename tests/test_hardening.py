"""Hardening, attacked through a real agent: file modes of its data dir, request body limits,
browser-style (non-JSON) bodies refused, job parsing and planning off the event loop. Every attack
is refused and leaves the state as it was."""

from __future__ import annotations

import os
import select
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from .agent_util import AgentProcess, wait_for
from .mesh_agent import ProcessLines
from .test_mesh_proxy import READY_TIMEOUT, Mesh, _mesh, proxy_process_config
from .test_mesh_proxy import roundtrip as mesh_roundtrip
from .test_mesh_proxy import wait_for as mesh_wait

LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def agent():
    data_dir = tempfile.mkdtemp(prefix="yurt-harden-")
    config = f"{data_dir}.hcl"
    with open(config, "w") as f:
        f.write('server {\n  enabled = true\n  min_heartbeat_ttl = "2s"\n}\n'
                'limits {\n  http_max_request_bytes = "4MiB"\n}\n')
    a = AgentProcess(data_dir=data_dir, extra=["-config", config]).start()
    try:
        with a.api() as api:
            wait_for(lambda: [n for n in api.get("/v1/nodes").json() if n["Status"] == "ready"],
                     what="the node ready")
        yield a
    finally:
        a.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        os.unlink(config)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class NodeWatch:
    """Polls the node list on its own thread while an attack runs: every status it saw, and
    whether the agent's health endpoint kept answering."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: set[str] = set()
        self.health_failures: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as api:
            while not self._stop.is_set():
                for node in api.get("/v1/nodes").json():
                    self.statuses.add(node["Status"])
                r = api.get("/v1/agent/health")
                if r.status_code != 200:
                    self.health_failures.append(r.text)
                self.polls += 1
                self._stop.wait(0.2)

    def __enter__(self) -> NodeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def job_doc(job_id: str, groups: int = 1) -> dict:
    return {"Job": {
        "ID": job_id, "Name": job_id, "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{"Name": f"g{i}", "Count": 1, "Tasks": [{
            "Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": ["600"]},
            "Resources": {"CPU": 10, "MemoryMB": 10}}]} for i in range(groups)]}}


def job_hcl(job_id: str, groups: int) -> str:
    body = "".join(f'  group "g{i}" {{\n    task "t" {{\n      driver = "raw_exec"\n'
                   f'      config {{\n        command = "/bin/sleep"\n        args = ["600"]\n      }}\n'
                   f'      resources {{\n        cpu = 10\n        memory = 10\n      }}\n    }}\n  }}\n'
                   for i in range(groups))
    return f'job "{job_id}" {{\n  datacenters = ["dc1"]\n{body}}}\n'


# -- 1. file modes ----------------------------------------------------------------------------
def test_the_data_dir_state_and_api_socket_are_private(agent):
    data = Path(agent.data_dir)
    with agent.api() as api:   # a write: the WAL and its index exist
        assert api.put("/v1/jobs", json=job_doc("modes")).status_code == 200
        api.delete("/v1/job/modes", params={"purge": "true"})
    assert mode(data) == 0o700
    assert mode(data / "server") == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        path = data / "server" / name
        assert path.exists(), name
        assert mode(path) == 0o600, f"{name}: {oct(mode(path))}"
    sock = data / "yurt.sock"
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert mode(sock) == 0o600, oct(mode(sock))
    # the socket still serves this agent's own user (the sidecars' path to their agent)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://agent") as api:
        assert api.get("/v1/agent/health").status_code == 200


def test_a_loose_data_dir_is_made_private_again(tmp_path):
    data = tmp_path / "data"
    (data / "server").mkdir(parents=True)
    os.chmod(data, 0o755)
    os.chmod(data / "server", 0o755)
    (data / "server" / "state.db").touch()
    os.chmod(data / "server" / "state.db", 0o644)
    with AgentProcess(data_dir=str(data)):
        assert mode(data) == 0o700
        assert mode(data / "server") == 0o700
        assert mode(data / "server" / "state.db") == 0o600


# -- 2. request bodies --------------------------------------------------------------------------
def _chunked_post(port: int, path: str, total: int, chunk: int = 256 * 1024) -> tuple[bytes, int]:
    """POST `total` bytes chunked (no Content-Length), reading the answer while sending; returns
    (what came back, bytes sent before the server stopped taking them)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              "Transfer-Encoding: chunked\r\n\r\n".encode())
    piece = f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n"
    sent, answer = 0, b""
    s.setblocking(False)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            want_write = [s] if sent < total else []
            readable, writable, _ = select.select([s], want_write, [], 1.0)
            if readable:
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    break
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer and sent >= total:
                    break
            if writable:
                try:
                    n = s.send(piece if sent + chunk <= total else b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                    if answer:
                        break
                    continue
                sent += n if sent < total else 0
                if n < len(piece):   # the rest of a partial chunk, blocking
                    s.setblocking(True)
                    try:
                        s.sendall(piece[n:])
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    finally:
                        s.setblocking(False)
            if answer.count(b"\r\n\r\n") and b"413" in answer.split(b"\r\n", 1)[0]:
                # read what is left of the answer's body
                s.setblocking(True)
                s.settimeout(5)
                try:
                    while True:
                        more = s.recv(65536)
                        if not more:
                            break
                        answer += more
                except (TimeoutError, ConnectionResetError, OSError):
                    pass
                break
    finally:
        s.close()
    return answer, sent


def test_a_100MB_chunked_body_is_refused_at_the_limit_while_the_node_heartbeats(agent):
    with NodeWatch(agent.url) as watch:
        answer, sent = _chunked_post(agent.port, "/v1/jobs", 100 * 1024 * 1024)
        time.sleep(3)   # longer than the heartbeat TTL: a starved heartbeat would show as "down"
    head = answer.split(b"\r\n", 1)[0]
    assert b" 413 " in head, answer[:500]
    assert b"4 MiB" in answer and b"limits { http_max_request_bytes }" in answer, answer
    assert sent < 100 * 1024 * 1024   # the server stopped taking it long before the end
    assert watch.polls > 0 and watch.statuses == {"ready"}, watch.statuses
    assert not watch.health_failures
    with agent.api() as api:
        assert api.get("/v1/jobs").json() == []


def test_a_declared_length_over_the_limit_is_refused_before_it_is_read(agent):
    s = socket.create_connection(("127.0.0.1", agent.port))
    try:
        s.sendall(f"PUT /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode())
        s.settimeout(30)
        answer = b""
        while b"request body too large" not in answer:
            data = s.recv(65536)
            if not data:
                break
            answer += data
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"limits { http_max_request_bytes }" in answer


def test_a_job_under_the_limit_still_registers(agent):
    with agent.api() as api:
        doc = job_doc("fits")
        doc["Job"]["Meta"] = {"padding": "x" * (LIMIT // 2)}
        r = api.put("/v1/jobs", json=doc)
        assert r.status_code == 200, r.text
        api.delete("/v1/job/fits", params={"purge": "true"})


def test_the_limit_setting_is_checked():
    from yurt.agent.config import AgentConfig, load_file
    from yurt.errors import ConfigError
    with tempfile.NamedTemporaryFile("w", suffix=".hcl") as f:
        f.write('limits {\n  http_max_conns_per_client = 10\n}\n')
        f.flush()
        with pytest.raises(ConfigError, match=r"http_max_conns_per_client.*http_max_request_bytes"):
            load_file(f.name, AgentConfig())
    with tempfile.NamedTemporaryFile("w", suffix=".hcl") as f:
        f.write('limits {\n  http_max_request_bytes = "lots"\n}\n')
        f.flush()
        with pytest.raises(ConfigError, match=r'limits\.http_max_request_bytes = "lots" is not a size'):
            load_file(f.name, AgentConfig())
    with tempfile.NamedTemporaryFile("w", suffix=".hcl") as f:
        f.write('limits {\n  http_max_request_bytes = "32MB"\n}\n')
        f.flush()
        assert load_file(f.name, AgentConfig()).http_max_request_bytes == 32_000_000


# -- 3. browser "simple" requests ----------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_job_sent_as_a_browser_form_is_refused_and_not_stored(agent, content_type):
    import json
    with agent.api() as api:
        r = api.post("/v1/jobs", content=json.dumps(job_doc("csrf")),
                     headers={"Content-Type": content_type})
        assert r.status_code == 415, r.text
        assert "send Content-Type: application/json" in r.text
        assert api.get("/v1/jobs").json() == []
        assert api.get("/v1/job/csrf").status_code == 404
        # a Consul-shaped write too
        r = api.put("/v1/agent/service/register", content=json.dumps({"Name": "csrf", "Port": 1}),
                    headers={"Content-Type": content_type})
        assert r.status_code == 415, r.text
        assert "csrf" not in api.get("/v1/catalog/services").json()


def test_a_client_only_agent_refuses_a_form_body_before_forwarding_it(agent):
    """The client agent forwards job writes to its server without the Content-Type: it must
    refuse a browser-style body itself."""
    import json

    from .test_client_only import ClientAgent
    client = ClientAgent([f"127.0.0.1:{agent.port}"]).start()
    try:
        with client.api() as api:
            assert mode(Path(client.data_dir)) == 0o700
            r = api.post("/v1/jobs", content=json.dumps(job_doc("csrf-fwd")), headers={"Content-Type": "text/plain"})
            assert r.status_code == 415, r.text
            assert api.get("/v1/job/csrf-fwd").status_code == 404   # asked through the client: forwarded
            r = api.post("/v1/jobs", content=b" " * (LIMIT + 1), headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and "http_max_request_bytes" in r.text, r.text
    finally:
        client.close()
        with agent.api() as api:
            for node in api.get("/v1/nodes").json():
                if node["Name"] == "client-only":
                    api.post(f"/v1/node/{node['ID']}/purge")
    with agent.api() as api:
        assert api.get("/v1/jobs").json() == []


def test_json_bodies_with_and_without_a_content_type_are_taken(agent):
    import json
    with agent.api() as api:
        r = api.post("/v1/jobs", content=json.dumps(job_doc("no-type")))   # python-consul's way
        assert r.status_code == 200, r.text
        r = api.post("/v1/jobs", content=json.dumps(job_doc("json-type")),
                     headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 200, r.text
        for job in ("no-type", "json-type"):
            api.delete(f"/v1/job/{job}", params={"purge": "true"})


# -- 4. parsing and planning off the event loop -----------------------------------------------------
def test_big_jobs_parsed_and_planned_in_a_loop_do_not_starve_heartbeats(agent):
    groups = 1500
    hcl = job_hcl("big", groups)
    doc = job_doc("big", groups)
    errors: list[str] = []
    stop = threading.Event()

    def hammer(kind: str) -> None:
        with httpx.Client(base_url=agent.url, timeout=120) as api:
            for _ in range(4):
                if stop.is_set():
                    return
                if kind == "parse":
                    r = api.post("/v1/jobs/parse", json={"JobHCL": hcl})
                    ok = r.status_code == 200 and len(r.json()["TaskGroups"]) == groups
                elif kind == "plan":
                    r = api.post("/v1/job/big/plan", json=doc)
                    ok = r.status_code == 200
                else:
                    r = api.post("/v1/validate/job", json=doc)
                    ok = r.status_code == 200 and r.json()["Error"] == ""
                if not ok:
                    errors.append(f"{kind}: {r.status_code} {r.text[:300]}")

    with NodeWatch(agent.url) as watch:
        threads = [threading.Thread(target=hammer, args=(k,)) for k in ("parse", "plan", "validate")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        stop.set()
    assert not errors, errors
    assert watch.polls > 0 and watch.statuses == {"ready"}, watch.statuses
    assert not watch.health_failures
    with agent.api() as api:
        assert api.get("/v1/jobs").json() == []   # planning stored nothing


# -- 5. the sidecar: connection caps, idle and handshake timeouts, running out of descriptors -------


@pytest.fixture
def mesh():
    yield from _mesh()


def _raise_nofile(n: int) -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard) if hard != resource.RLIM_INFINITY else n, hard))


def _pair(mesh: Mesh, **server_cfg):
    from yurt.mesh.config import ProxyConfig, UpstreamConfig
    cfg = ProxyConfig(service="api", listen_addr="127.0.0.1", listen_port=0, local_port=mesh.echo.port,
                      **server_cfg)
    server = mesh.start(cfg, "server-api")
    mesh.agent.register_sidecar("api", server.public_port)
    client = mesh.start(ProxyConfig(service="web", upstreams=[UpstreamConfig("api", 0)]), "client-web")
    return server, client


def _idle(port: int, n: int) -> list[socket.socket]:
    conns = []
    for _ in range(n):
        conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    return conns


def _echoes(port: int, payload: bytes) -> bool:
    """A round trip through the pair; False while the far sidecar still refuses (reset)."""
    try:
        return mesh_roundtrip(port, payload) == payload
    except OSError:
        return False


def _closed_by_peer(c: socket.socket) -> bool:
    c.setblocking(False)
    try:
        return c.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_2000_idle_connections_to_the_public_port_do_not_stop_traffic(mesh):
    """Past the default cap (1024), a new connection takes the place of the oldest one still in
    its TLS handshake: idle half-open connections never lock real clients out."""
    _raise_nofile(8192)
    server, client = _pair(mesh)
    assert server.cfg.max_connections == 1024
    port = client.upstream_ports["api"]
    conns = _idle(server.public_port, 2000)
    try:
        for i in range(20):
            assert mesh_roundtrip(port, f"ping {i}".encode()) == f"ping {i}".encode()
        (lst,) = [x for x in server.listeners if x.port == server.public_port]
        assert lst.active <= 1024
        assert mesh.events("server-api", "connection-limit")
        assert not any(_closed_by_peer(c) for c in conns[-50:])   # the newest idle ones are still held
    finally:
        for c in conns:
            c.close()


def test_past_the_cap_new_connections_are_closed_and_half_open_ones_time_out(mesh):
    server, client = _pair(mesh, max_connections=5, handshake_timeout=2.0)
    port = client.upstream_ports["api"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    try:
        for i, c in enumerate(held):   # five established connections through the pair: the cap
            c.sendall(f"held {i}".encode())
            assert c.recv(100) == f"held {i}".encode()
        # a sixth is closed at once by the server's sidecar (nothing to evict), and that is logged
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.settimeout(10)
            try:
                c.sendall(b"sixth")
                got = c.recv(100)
            except OSError:
                got = b""
            assert got == b""
        # the client-side sidecar may see the reset before the server-side one has logged it
        refusals = mesh_wait(lambda: mesh.events("server-api", "connection-limit"), timeout=10,
                             what="the refusal logged")
        assert refusals and refusals[0]["refused"] == 1 and refusals[0]["limit"] == 5, refusals
        # one closes: a new one gets through
        held.pop().close()
        mesh_wait(lambda: _echoes(port, b"after"), timeout=10, what="room again")
    finally:
        for c in held:
            c.close()
    # half-open connections (no TLS handshake) are closed at the handshake timeout
    (lst,) = [x for x in server.listeners if x.port == server.public_port]
    mesh_wait(lambda: lst.active == 0, timeout=10, what="the held connections gone")
    conns = _idle(server.public_port, 5)
    try:
        mesh_wait(lambda: all(_closed_by_peer(c) for c in conns), timeout=15,
                  what="the half-open connections closed")

        def timed_out() -> int:
            refused = mesh.conns(proxy="server-api", verdict="refused")
            return sum("timed out in handshake" in r.get("reason", "") for r in refused)
        # the sidecar writes each connection's record after closing it: the last may come later
        mesh_wait(lambda: timed_out() >= 5, timeout=10, what="five handshake timeouts logged")
        assert timed_out() >= 5
    finally:
        for c in conns:
            c.close()


def test_an_idle_established_connection_is_closed(mesh):
    _server, client = _pair(mesh, idle_timeout=1.0)
    port = client.upstream_ports["api"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"hello")
        assert c.recv(100) == b"hello"
        c.settimeout(30)
        assert c.recv(100) == b""   # nothing either way for a second: the pair closes it
    mesh_wait(lambda: [r for r in mesh.conns(proxy="server-api") if "idle for 1s" in r.get("reason", "")]
              or [r for r in mesh.conns(proxy="client-web") if "idle for 1s" in r.get("reason", "")],
              timeout=10, what="the idle close logged")
    assert mesh_roundtrip(port, b"again") == b"again"   # the pair still serves new connections


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_the_sidecar_backs_off_instead_of_spinning(mesh, tmp_path):
    import resource
    import subprocess
    import sys
    port, cfg, ready, env = proxy_process_config(mesh, tmp_path)

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    proc = subprocess.Popen([sys.executable, "-m", "yurt.mesh", "-config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=few_fds)
    out = ProcessLines(proc.stdout)
    conns: list[socket.socket] = []
    try:
        mesh_wait(ready.exists, timeout=READY_TIMEOUT, what="proxy process ready")
        conns = _idle(port, 100)   # more than it has descriptors for: the rest wait in the backlog
        mesh_wait(lambda: [x for x in out.json() if x.get("event") == "accept-out-of-fds"], timeout=10,
                  what="the sidecar saying it is out of descriptors")
        cpu0, wall0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(3)
        used, wall = _cpu_seconds(proc.pid) - cpu0, time.monotonic() - wall0
        assert used < 0.5 * wall, f"{used:.2f}s of CPU in {wall:.2f}s: the accept loop spins"
        assert proc.poll() is None
        starved = [x for x in out.json() if x.get("event") == "accept-out-of-fds"]
        assert len(starved) == 1, starved   # once a minute, not per failure
    finally:
        for c in conns:
            c.close()
        proc.terminate()
        proc.wait(10)
        out.join(10)


# -- 6. IPv6: the mesh-only firewall closes the allocation's IPv6 addresses too --------------------
V6_JOB = '''
job "v6" {
  datacenters = ["dc1"]
  group "api" {
    network {
      mode = "bridge"
    }
    service {
      name = "v6-api"
      port = "9001"
      connect {
        sidecar_service {}
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "--bind", "::", "9001"]
      }
    }
  }
}
'''


def _connects(host: str, port: int, netns: str | None = None) -> bool:
    import subprocess
    import sys
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3).close()"
    cmd = [sys.executable, "-c", code]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")
def test_an_ipv6_connection_to_a_mesh_apps_port_is_refused():
    import json
    import subprocess

    from yurt.jobspec import load
    a = AgentProcess(extra=["-dev-connect"]).start()
    try:
        with a.api() as api:
            assert api.put("/v1/jobs", json=load(V6_JOB, "v6.nomad").job.to_document()).status_code == 200
            (alloc,) = wait_for(lambda: [x for x in api.get("/v1/job/v6/allocations").json()
                                         if x["ClientStatus"] == "running"], timeout=120, what="v6 running")
            ns = alloc["ID"]
            # the app answers inside its namespace, over IPv6 too
            wait_for(lambda: _connects("::1", 9001, ns), timeout=60, what="the app listening on ::")
            addrs = json.loads(subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", "eth0"],
                                              capture_output=True, text=True, check=True).stdout)
            v4 = [i["local"] for x in addrs for i in x["addr_info"] if i["family"] == "inet"]
            v6 = [i["local"] for x in addrs for i in x["addr_info"]
                  if i["family"] == "inet6" and i.get("tentative") is not True]
            assert v4 and v6, addrs
            bridge = "yurt"
            target = f"{v6[0]}%{bridge}" if v6[0].startswith("fe80") else v6[0]
            # from the machine's own namespace: refused over IPv4 (as before) and over IPv6
            assert not _connects(v4[0], 9001)
            assert not _connects(target, 9001)
            rules = subprocess.run(["ip", "netns", "exec", ns, "ip6tables", "-S", "YURT-MESH-IN"],
                                   capture_output=True, text=True, check=True).stdout
            assert "-j REJECT" in rules and "ipv6-icmp" in rules, rules
            api.delete("/v1/job/v6", params={"purge": "true"})
            wait_for(lambda: all(x["ClientStatus"] != "running" for x in api.get("/v1/allocations").json()),
                     timeout=60, what="v6 stopped")
    finally:
        a.stop()
