"""Connect Native for Python (`yurt.connect`) against a real agent and real sidecar proxies.

The agent is a real server-only `yurt agent` (tests/mesh_agent.py) reached through its unix
socket, as a native task reaches it; the sidecars are Yurt's own proxy (yurt.mesh.proxy) fed by
the same agent; every connection is real TLS 1.3 with the agent's certificates. Both
directions: a sidecar-proxied client dials the native server by name (the catalog lists the
native instance under /v1/health/connect), and the native client dials a sidecar-proxied
server. Intentions are enforced on accept and refused on dial; a rotated root is picked up
without a restart; a bad identity is refused with a message naming the fix.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from yurt.connect import ConnectError, NotAuthorized, Service

from .agent_util import AgentProcess, alloc_processes, allocs
from .agent_util import wait_for as wait_long
from .test_mesh_proxy import Mesh, _mesh, roundtrip, wait_for


@pytest.fixture
def mesh():
    yield from _mesh()


class NativeEcho:
    """A native server: `Service.listen`, echoing each authorized connection; the refused
    handshakes are kept (`refused`)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.sock = svc.listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.refused: list[str] = []
        self.peers: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except NotAuthorized as e:
                self.refused.append(str(e))
                continue
            except ssl.SSLError:
                continue
            except OSError:
                return
            cert = c.getpeercert() or {}
            self.peers.append(next((v for k, v in cert.get("subjectAltName", ()) if k == "URI"), ""))
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


def register_native(mesh: Mesh, name: str, port: int) -> None:
    """As the client's service hook registers a `native = true` service."""
    r = mesh.agent.http.put("/v1/agent/service/register", json={
        "ID": f"{name}-1", "Name": name, "Address": "127.0.0.1", "Port": port, "Connect": {"Native": True},
        "Check": {"CheckID": f"{name}:ttl", "Name": "ttl", "TTL": "1h", "Status": "passing"}})
    assert r.status_code == 200, r.text


def native(mesh: Mesh, name: str) -> Service:
    svc = Service(name, address=mesh.agent.address)
    mesh.sources.append(svc)   # closed with the mesh
    return svc


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    with sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            d = sock.recv(65536)
            if not d:
                break
            got += d
        return got


def test_catalog_lists_a_native_instance_as_a_mesh_endpoint(mesh):
    register_native(mesh, "nat", 4321)
    entries = mesh.agent.http.get("/v1/health/connect/nat", params={"passing": "1"}).json()
    assert [(e["Service"]["Port"], e["Service"]["Connect"]) for e in entries] == [(4321, {"Native": True})]
    assert [s["ServicePort"] for s in mesh.agent.http.get("/v1/catalog/connect/nat").json()] == [4321]


def test_sidecar_client_reaches_native_server(mesh):
    """web (sidecar) -> native: the sidecar finds the native instance in /v1/health/connect and
    checks its certificate is the native service's; the native server checks web's."""
    svc = native(mesh, "native")
    server = NativeEcho(svc)
    register_native(mesh, "native", server.port)
    cli = mesh.client(service="web", dest="native")
    assert roundtrip(cli.upstream_ports["native"], b"hello native") == b"hello native"
    assert server.peers == [f"spiffe://{mesh.trust_domain}/ns/default/dc/dc1/svc/web"]
    server.close()


def test_native_client_reaches_sidecar_server(mesh):
    """native -> api (sidecar in front of an echo app), by name; and through httpx."""
    srv = mesh.server("api")
    mesh.agent.register_sidecar("api", srv.public_port)
    svc = native(mesh, "native")
    assert exchange(svc.connect("api"), b"ping over mtls") == b"ping over mtls"
    wait_for(lambda: mesh.conns(dir="inbound", verdict="allowed"), what="the sidecar's inbound log line")
    rec = mesh.conns(dir="inbound")[-1]
    assert rec["src"] == "native" and rec["dst"] == "api" and rec["serial"] == svc.serial


def test_native_to_native_over_httpx(mesh):
    """The httpx transport: http://<service>/ goes to that service over the mesh."""
    srv_svc = native(mesh, "pages")
    listener = srv_svc.listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    register_native(mesh, "pages", port)

    def serve_one() -> None:
        c, _ = listener.accept()
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            body = b"hello from pages"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    cli = native(mesh, "reader")
    with httpx.Client(transport=cli.http_transport(), timeout=10) as http:
        r = http.get("http://pages/")
    assert r.status_code == 200 and r.text == "hello from pages"
    listener.close()


def test_intentions_deny_is_refused_on_accept_and_on_dial(mesh):
    svc = native(mesh, "native")
    server = NativeEcho(svc)
    register_native(mesh, "native", server.port)
    cli = mesh.client(service="web", dest="native")
    port = cli.upstream_ports["native"]
    assert roundtrip(port, b"before") == b"before"
    mesh.agent.intention("web", "native", "deny")

    def refused() -> bool:   # the decision cached for web is dropped when the intentions change
        try:
            return roundtrip(port, b"after", timeout=3) == b""
        except OSError:
            return True
    wait_for(refused, 10, what="web refused by the native server")
    wait_for(lambda: any("refused by intentions" in r and "/svc/web" in r for r in server.refused), 5,
             what=f"the native server's refusal of web (refused: {server.refused})")

    # dialling: the native client is told, and how to fix it
    srv = mesh.server("api")
    mesh.agent.register_sidecar("api", srv.public_port)
    mesh.agent.intention("native", "api", "deny")
    with pytest.raises(ConnectError) as e:
        svc.connect("api")
    assert "native may not connect to api" in str(e.value)
    assert "yurt intention create -allow native api" in str(e.value)
    # and the sidecar refuses it too, were the check skipped
    svc._may_dial = lambda dest: (True, "")   # type: ignore[method-assign]
    assert exchange(svc.connect("api"), b"x") == b""
    server.close()


def test_root_rotation_is_picked_up_without_a_restart(mesh):
    svc = native(mesh, "native")
    server = NativeEcho(svc)
    register_native(mesh, "native", server.port)
    cli = mesh.client(service="web", dest="native")
    srv = mesh.server("api")
    mesh.agent.register_sidecar("api", srv.public_port)
    first, gen = svc.serial, svc.generation
    old_root = mesh.agent.roots()["ActiveRootID"]
    ctx = svc.server_context()
    mesh.agent.rotate_root()
    wait_for(lambda: svc.serial != first, 30, what="the native service's new leaf")
    assert svc.generation > gen and svc.server_context() is ctx   # same context, new certificate
    new_roots = mesh.agent.roots()
    assert new_roots["ActiveRootID"] != old_root
    wait_for(lambda: cli.material.serial and roundtrip(cli.upstream_ports["native"], b"r") == b"r", 30,
             what="web -> native after the rotation")
    assert exchange(svc.connect("api"), b"rotated") == b"rotated"
    # the server presented its new leaf to web's sidecar
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            cli.material.client.wrap_socket(raw) as s:
        assert s.getpeercert()["serialNumber"].lower().lstrip("0") in svc.serial.replace(":", "").lstrip("0")
    server.close()


def test_a_bad_identity_is_refused_with_a_message_naming_the_fix(mesh):
    fake = ("eyJhbGciOiJSUzI1NiIsImtpZCI6IngiLCJ0eXAiOiJKV1QifQ."
            + base64.urlsafe_b64encode(json.dumps({
                "sub": "global:default:job:group:task:default", "nomad_allocation_id": "x",
                "nomad_workload_services": ["native"]}).encode()).rstrip(b"=").decode() + ".c2ln")
    with pytest.raises(ConnectError) as e:
        Service("native", address=mesh.agent.address, token=fake)
    assert "refused a certificate for native" in str(e.value)
    assert "workload identity is not valid" in str(e.value)


def test_no_agent_is_a_clear_error(tmp_path):
    with pytest.raises(ConnectError) as e:
        Service("native", address=f"unix://{tmp_path}/nothing.sock")
    assert "CONSUL_HTTP_ADDR" in str(e.value)


# -- the example, run by a real agent: bridge namespaces, a real sidecar, raw_exec apps ------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "connect-native"


def _get_in_netns(alloc_id: str, url: str) -> dict:
    script = ("import json, sys, urllib.request\n"
              "with urllib.request.urlopen(sys.argv[1], timeout=20) as r:\n"
              "    print(r.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", alloc_id, sys.executable, "-c", script, url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def example():
    if os.geteuid() != 0:
        pytest.skip("bridge networking needs root")
    data_dir = tempfile.mkdtemp(prefix="yurt-native-")
    agent = AgentProcess(data_dir=data_dir, extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        run = subprocess.run([sys.executable, "-m", "yurt.cli.main", "job", "run", "-detach",
                              "-var", f"python={sys.executable}", str(EXAMPLE / "connect-native.nomad")],
                             capture_output=True, text=True, env={**os.environ, "YURT_ADDR": agent.url}, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr

        def running(group: str) -> str:
            ids = [a["ID"] for a in allocs(api, "connect-native")
                   if a["TaskGroup"] == group and a["ClientStatus"] == "running"]
            return ids[0] if ids else ""
        wait_long(lambda: running("greeter") and running("native"), timeout=120, what="both groups running")
        for name in ("native-api", "greeter"):
            wait_long(lambda n=name: api.get(f"/v1/health/connect/{n}", params={"passing": "1"}).json(), timeout=60,
                      what=f"{name} passing in /v1/health/connect")
        yield agent, api, running("greeter"), running("native"), Path(data_dir)
    finally:
        for log in sorted(Path(data_dir).glob("**/alloc/logs/*.stderr.0")):   # shown for a failed test
            print(f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}")
        # stop the job and let the client end its tasks and networks before the agent goes (the
        # tasks run detached, to outlive an agent restart: an agent stopped first leaves them)
        ids = [a["ID"] for a in allocs(api, "connect-native")]
        api.delete("/v1/job/connect-native")
        try:
            wait_long(lambda: not any(alloc_processes(i) for i in ids), timeout=90, what="the example's tasks ended")
        finally:
            api.delete("/v1/job/connect-native", params={"purge": "true"})
            api.close()
            agent.stop()
            print(agent.log()[-4000:])
            shutil.rmtree(data_dir, ignore_errors=True)


def test_the_native_example_talks_both_ways_with_a_sidecar_service(example):
    _, api, greeter, native_alloc, _ = example
    (entry,) = api.get("/v1/health/connect/native-api", params={"passing": "1"}).json()
    ports = api.get(f"/v1/allocation/{native_alloc}").json()["AllocatedResources"]["Shared"]["Ports"]
    (https,) = [p for p in ports if p["Label"] == "https"]
    # the native instance itself is the mesh endpoint, at its own (mapped) port
    assert entry["Service"]["Connect"] == {"Native": True}
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) in ((https["HostIP"], https["Value"]),
                                                                        (entry["Service"]["Address"], 9443))
    assert api.get("/v1/catalog/connect/native-api").json()[0]["ServiceConnect"] == {"Native": True}
    # sidecar -> native: greeter's sidecar upstream, checked by the native server's intentions
    got = wait_long(lambda: _try(lambda: _get_in_netns(greeter, "http://127.0.0.1:9001/native")), timeout=60,
                   what="greeter -> native-api")
    assert got["native"] == {"service": "native-api",
                             "caller": got["native"]["caller"]} and got["native"]["caller"].endswith("/svc/greeter")
    # native -> sidecar (and back): native-api dials greeter by name through yurt.connect
    got = _get_in_netns(greeter, "http://127.0.0.1:9001/relay")
    assert got == {"service": "greeter", "native": {"service": "native-api", "greeter": {"service": "greeter"}}}
    # what the native task was given (Nomad's connect_native_hook: CONSUL_HTTP_ADDR and the token)
    env = Path(f"/proc/{_pid_of(native_alloc)}/environ").read_bytes().split(b"\0")
    env_map = dict(e.decode().split("=", 1) for e in env if b"=" in e)
    assert env_map["CONSUL_HTTP_ADDR"].startswith("unix://") and env_map["CONSUL_HTTP_ADDR"].endswith("/yurt.sock")
    assert env_map["YURT_ADDR"] == env_map["CONSUL_HTTP_ADDR"] and env_map["YURT_CONNECT_SERVICE"] == "native-api"
    assert env_map["CONSUL_HTTP_TOKEN_FILE"].endswith("/app/secrets/nomad_token")


def test_intentions_deny_refuses_the_sidecar_at_the_native_server(example):
    _, api, greeter, _, _ = example
    r = api.put("/v1/connect/intentions/exact", params={"source": "greeter", "destination": "native-api"},
                json={"Action": "deny"})
    assert r.status_code == 200, r.text
    try:
        def refused() -> bool:
            return _try(lambda: _get_in_netns(greeter, "http://127.0.0.1:9001/native")) is None
        wait_long(refused, timeout=30, what="greeter refused by native-api")
    finally:
        api.delete("/v1/connect/intentions/exact", params={"source": "greeter", "destination": "native-api"})


def test_a_stopped_allocations_identity_is_refused_with_the_fix(example):
    agent, api, _, native_alloc, data_dir = example
    (token_path,) = data_dir.glob(f"**/{native_alloc}/app/secrets/nomad_token")
    token = token_path.read_text().strip()
    svc = Service("native-api", address=agent.url, token=token)   # valid while the allocation runs
    svc.close()
    r = api.post(f"/v1/allocation/{native_alloc}/stop")
    assert r.status_code == 200, r.text

    def complete() -> bool:
        return api.get(f"/v1/allocation/{native_alloc}").json()["ClientStatus"] == "complete"
    wait_long(complete, timeout=120, what="the native allocation stopped")
    with pytest.raises(ConnectError) as e:
        Service("native-api", address=agent.url, token=token)
    msg = str(e.value)
    assert "revoked" in msg and f"allocation {native_alloc[:8]} has stopped" in msg
    assert "run the app as a task of a running allocation" in msg


def _try(fn):
    try:
        return fn()
    except AssertionError:
        return None


def _pid_of(alloc_id: str) -> int:
    for pid in alloc_processes(alloc_id):
        try:
            if b"YURT_CONNECT_SERVICE=" in Path(f"/proc/{pid}/environ").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no process of allocation {alloc_id} has YURT_CONNECT_SERVICE")


# -- the client's side, without an agent: what a native task is given, what is registered ----------

def _native_alloc(tmp_path, script: str):
    from yurt.structs import ConsulConnect
    from yurt.structs import Service as JobService

    from .test_client_util import make_alloc, sh
    app = sh("app", script)
    helper = sh("helper", "env > $NOMAD_TASK_DIR/env; exec sleep 600")
    return make_alloc([app, helper], services=[JobService(name="native-api", port_label="9443", task_name="app",
                                                          connect=ConsulConnect(native=True))])


def test_a_native_task_is_given_the_agent_its_identity_and_its_service(tmp_path):
    from yurt.client.alloc_hooks import AllocDirHook, ConnectNativeHook

    from .test_client_util import start_alloc
    from .test_client_util import wait_for as wait_short
    alloc = _native_alloc(tmp_path, "env > $NOMAD_TASK_DIR/env; exec sleep 600")
    runner, _ = start_alloc(alloc, tmp_path, hooks=[AllocDirHook(), ConnectNativeHook("/run/yurt/yurt.sock")])
    try:
        def env_of(task: str) -> dict[str, str]:
            path = runner.alloc_dir.task_dir(task).local / "env"
            text = path.read_text() if path.exists() else ""
            return dict(line.split("=", 1) for line in text.splitlines() if "=" in line) if text else {}
        app = wait_short(lambda: env_of("app"), what="the app's environment")
        assert app["CONSUL_HTTP_ADDR"] == app["YURT_ADDR"] == "unix:///run/yurt/yurt.sock"
        assert app["YURT_CONNECT_SERVICE"] == "native-api"
        assert app["CONSUL_HTTP_TOKEN_FILE"] == app["YURT_TOKEN_FILE"] == \
            str(runner.alloc_dir.task_dir("app").secrets / "nomad_token")
        helper = wait_short(lambda: env_of("helper"), what="the helper's environment")
        assert "YURT_CONNECT_SERVICE" not in helper   # only the task that implements the service
        assert helper.get("CONSUL_HTTP_ADDR") != "unix:///run/yurt/yurt.sock"
    finally:
        runner.destroy(30)


def test_a_task_env_block_wins_over_what_native_sets(tmp_path):
    """As Nomad's connect_native_hook: CONSUL_HTTP_ADDR only if the task does not set it."""
    from yurt.client.taskenv import build_task_env, native_vars
    from yurt.structs import Task
    alloc = _native_alloc(tmp_path, "true")
    task = Task(name="app", driver="raw_exec", env={"CONSUL_HTTP_ADDR": "http://10.0.0.1:8500"})

    class Dir:   # what build_task_env reads of a task dir
        shared = local = secrets = tmp_path
    env = build_task_env(alloc, task, Dir(), hook_env=native_vars("/s.sock", ["native-api"]), host_env={})
    assert env["CONSUL_HTTP_ADDR"] == "http://10.0.0.1:8500" and env["YURT_ADDR"] == "unix:///s.sock"


def test_a_native_service_is_registered_connect_capable_at_its_own_port(tmp_path):
    from types import SimpleNamespace

    from yurt.client.alloc_hooks import AllocHookContext, AllocResources
    from yurt.client.allocdir import AllocDir
    from yurt.client.service_hook import ServiceHook
    from yurt.structs import AllocatedPortMapping
    alloc = _native_alloc(tmp_path, "true")
    group = alloc.job.task_groups[0]
    group.services[0].port_label = "https"
    alloc.allocated_resources.shared.ports = [AllocatedPortMapping(label="https", value=23456, to=9443,
                                                                   host_ip="127.0.0.1")]

    def ctx(status: dict | None) -> AllocHookContext:
        return AllocHookContext(alloc=alloc, group=group, node=None, region=None, data_dir=tmp_path,
                                alloc_dir=AllocDir(tmp_path, alloc.id), restart_task=lambda *_: False,
                                resources=AllocResources(netns="x" if status else "", network_status=status))
    hook = ServiceHook(SimpleNamespace())
    (reg,) = hook._plan(ctx(None))[0]
    assert reg["Connect"] == {"Native": True} and (reg["Address"], reg["Port"]) == ("127.0.0.1", 23456)
    # a dev node advertising loopback, the group on the bridge: peers dial the app's bridge address
    (reg,) = hook._plan(ctx({"Address": "172.26.64.9"}))[0]
    assert reg["Connect"] == {"Native": True} and (reg["Address"], reg["Port"]) == ("172.26.64.9", 9443)
    assert "Kind" not in reg and "Proxy" not in reg


def test_a_client_agent_asks_its_server_whether_an_identity_is_revoked():
    from yurt.agent.leaf_cert import RemoteCA
    from yurt.errors import NotFound as NotFoundError
    from yurt.server.identity import WorkloadClaims

    class Server:
        def __init__(self) -> None:
            self.allocs: dict[str, dict] = {}
            self.asked = 0

        def get(self, path: str):
            self.asked += 1
            alloc = self.allocs.get(path.rsplit("/", 1)[1])
            if alloc is None:
                raise NotFoundError("alloc not found")
            return alloc, 1

    server = Server()
    ca = RemoteCA(server)
    claims = WorkloadClaims("default", "job", "group", "a1b2c3d4-0000", "app", ["native-api"])
    server.allocs["a1b2c3d4-0000"] = {"ClientStatus": "running", "DesiredStatus": "run"}
    assert ca.revoked(claims) == ""
    server.allocs["a1b2c3d4-0000"] = {"ClientStatus": "complete", "DesiredStatus": "stop"}
    assert ca.revoked(claims) == ""   # kept REVOKED_TTL seconds
    ca._revoked.clear()
    assert ca.revoked(claims) == "its allocation a1b2c3d4 has stopped (complete)"
    del server.allocs["a1b2c3d4-0000"]
    ca._revoked.clear()
    assert ca.revoked(claims) == "its allocation a1b2c3d4 no longer exists"
    # a draining allocation (stop asked, its tasks still running) keeps its identity
    server.allocs["a1b2c3d4-0000"] = {"ClientStatus": "running", "DesiredStatus": "stop"}
    ca._revoked.clear()
    assert ca.revoked(claims) == ""


def test_an_exec_task_reaches_the_agent_through_the_relay_in_its_allocation():
    """exec's chroot cannot see the agent's socket: the agent relays its API at the allocation's
    alloc/tmp/yurt_http.sock, which the task sees as /alloc/tmp/yurt_http.sock."""
    from yurt.client import AllocRunner
    from yurt.client.alloc_hooks import AllocDirHook, ConnectNativeHook
    from yurt.client.drivers.exec import ExecDriver
    from yurt.structs import ConsulConnect, Resources, Task
    from yurt.structs import Service as JobService

    from .test_client_util import Recorder, make_alloc
    driver = ExecDriver()
    if driver.missing():
        pytest.skip("; ".join(driver.missing()))
    short = tempfile.mkdtemp(prefix="yn-")   # the relay's path must fit in sun_path
    agent_path = os.path.join(short, "agent.sock")
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.bind(agent_path)
    agent.listen(8)
    seen: list[bytes] = []

    def serve() -> None:   # a stand-in for the agent's API: one answer per connection
        while True:
            try:
                c, _ = agent.accept()
            except OSError:
                return
            with c:
                seen.append(c.recv(65536))
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nagent")
    threading.Thread(target=serve, daemon=True).start()
    script = ("import os, socket\n"
              "addr = os.environ['CONSUL_HTTP_ADDR']\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "s.connect(addr[len('unix://'):])\n"
              "s.sendall(b'GET /v1/agent/self HTTP/1.0\\r\\n\\r\\n')\n"
              "data = b''\n"
              "while True:\n"
              "    d = s.recv(4096)\n"
              "    if not d:\n"
              "        break\n"
              "    data += d\n"
              "print(addr, os.environ['CONSUL_HTTP_TOKEN_FILE'], data.split(b'\\r\\n\\r\\n')[1].decode())\n")
    task = Task(name="app", driver="exec", config={"command": "/usr/bin/python3", "args": ["-c", script]},
                resources=Resources(cpu=100, memory_mb=64))
    alloc = make_alloc([task], job_type="batch",
                       services=[JobService(name="native-api", port_label="9443",
                                            connect=ConsulConnect(native=True))])
    runner = AllocRunner(alloc, data_dir=short, drivers={"exec": driver}, on_update=Recorder(),
                         hooks=[AllocDirHook(), ConnectNativeHook(agent_path)])
    try:
        runner.run()
        assert runner.wait(60)
        out = (runner.alloc_dir.logs / "app.stdout.0").read_text()
        err = (runner.alloc_dir.logs / "app.stderr.0").read_text()
        assert out == "unix:///alloc/tmp/yurt_http.sock /secrets/nomad_token agent\n", err
        assert seen and seen[0].startswith(b"GET /v1/agent/self")
        assert not (runner.alloc_dir.shared / "tmp" / "yurt_http.sock").exists()   # closed when it ended
    finally:
        runner.destroy(30)
        agent.close()
        shutil.rmtree(short, ignore_errors=True)


def test_an_asyncio_server_enforces_the_intentions_too(mesh):
    """server_context() with asyncio (SSLObject over memory BIOs): web allowed, then denied."""
    import asyncio
    svc = native(mesh, "native")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=svc.server_context())
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        loop.set_exception_handler(lambda *_: None)   # a refused handshake is logged by asyncio
        try:
            loop.run_until_complete(main())
        except (RuntimeError, asyncio.CancelledError):
            pass
    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    register_native(mesh, "native", port[0])
    cli = mesh.client(service="web", dest="native")
    up = cli.upstream_ports["native"]
    assert roundtrip(up, b"async hello") == b"async hello"
    mesh.agent.intention("web", "native", "deny")

    def refused() -> bool:
        try:
            return roundtrip(up, b"after", timeout=3) == b""
        except OSError:
            return True
    wait_for(refused, 10, what="web refused by the asyncio server")
    web = f"spiffe://{mesh.trust_domain}/ns/default/dc/dc1/svc/web"
    assert svc._authz[web][0] is False   # refused by the intentions check, at the end of the handshake
    loop.call_soon_threadsafe(loop.stop)
