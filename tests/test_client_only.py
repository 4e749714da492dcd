"""A client-only agent serves the same HTTP API as a server: it answers what it owns (its
allocations' logs, itself) and forwards the rest to its server, Nomad-shaped and Consul-shaped
routes and blocking queries alike; a server forwards `alloc logs` to the agent that runs the
allocation. Two real agents on loopback: a server-only one and a client-only one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading

import httpx
import pytest

from .agent_util import AgentProcess, alloc_processes, allocs, free_port, purge_jobs, register, wait_for
from .mesh_agent import MeshAgent
from .test_agent_core import sh_job


class ClientAgent(AgentProcess):
    """`yurt agent -config client.hcl`: client only, raw_exec enabled, pointed at `server`."""

    def __init__(self, servers: list[str]) -> None:
        super().__init__(data_dir=tempfile.mkdtemp(prefix="yurt-client-"))
        self.config = f"{self.data_dir}.hcl"
        listed = ", ".join(f'"{s}"' for s in servers)
        with open(self.config, "w") as f:
            f.write(f'name = "client-only"\nclient {{\n  enabled = true\n  servers = [{listed}]\n}}\n'
                    'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\n')

    def start(self) -> ClientAgent:
        args = [sys.executable, "-m", "yurt.cli.main", "agent", "-config", self.config, "-data-dir", self.data_dir,
                "-http-port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 60, what=f"client agent on port {self.port} (log: {self.log_path})")
        return self

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    server = MeshAgent().start()
    # the first server listed answers nothing: the client fails over to the second
    client = ClientAgent([f"127.0.0.1:{free_port()}", f"127.0.0.1:{server.port}"]).start()
    try:
        yield server, client
    finally:
        with server.api() as api:
            purge_jobs(api)
            wait_for(lambda: all(a["ClientStatus"] != "running" for a in api.get("/v1/allocations").json()),
                     timeout=60, what="every allocation stopped")
        client.close()
        server.close()


@pytest.fixture(scope="module")
def job(cluster):
    _server, client = cluster
    with client.api() as api:   # registered through the client agent: forwarded to the server
        register(api, sh_job("via-client", "echo hello from the client node; exec sleep 600"))
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "via-client") if a["ClientStatus"] == "running"],
                            timeout=60, what="the job running")
    return alloc


def test_python_nomad_works_against_a_client_only_agent(cluster, job):
    import nomad

    _server, client = cluster
    n = nomad.Nomad(host="127.0.0.1", port=client.port, timeout=30)
    assert "via-client" in [j["ID"] for j in n.jobs.get_jobs()]
    assert n.job.get_job("via-client")["TaskGroups"][0]["Tasks"][0]["Driver"] == "raw_exec"
    (alloc,) = n.job.get_allocations("via-client")
    assert alloc["ID"] == job["ID"] and alloc["ClientStatus"] == "running"
    (node,) = n.nodes.get_nodes()
    assert node["Name"] == "client-only" and node["Status"] == "ready" and alloc["NodeID"] == node["ID"]
    assert n.evaluation.get_evaluation(alloc["EvalID"])["Status"] == "complete"
    assert len(alloc_processes(alloc["ID"])) == 1


def test_errors_and_index_headers_come_back_through_the_client(cluster):
    _server, client = cluster
    with client.api() as api:
        r = api.get("/v1/job/nope")
        assert (r.status_code, r.text) == (404, "job not found")
        r = api.get("/v1/jobs")
        assert r.status_code == 200 and int(r.headers["X-Nomad-Index"]) >= 1
        r = api.get("/v1/catalog/services")
        assert r.status_code == 200 and int(r.headers["X-Consul-Index"]) >= 1
        assert api.get("/v1/agent/self").json()["stats"]["nomad"]["server"] == "false"  # answered itself


def test_blocking_query_through_the_client_wakes_on_a_change(cluster):
    server, client = cluster
    with client.api() as api:
        index = int(api.get("/v1/jobs").headers["X-Nomad-Index"])
    result: dict = {}

    def block() -> None:
        r = httpx.get(f"{client.url}/v1/jobs", params={"index": index, "wait": "2m"}, timeout=180)
        result.update(index=int(r.headers["X-Nomad-Index"]), ids=[j["ID"] for j in r.json()])

    t = threading.Thread(target=block)
    t.start()
    with server.api() as api:
        register(api, sh_job("wakes-blocker", "exit 0", kind="batch"))
    t.join(150)
    assert result["index"] > index and "wakes-blocker" in result["ids"]


def test_alloc_logs_through_the_server_come_from_the_client_node(cluster, job):
    server, client = cluster
    with server.api() as api:   # the server has no client: it forwards to the node's agent
        r = api.get(f"/v1/client/fs/logs/{job['ID']}", params={"task": "t", "plain": "true"})
        assert (r.status_code, r.text) == (200, "hello from the client node\n")
    with client.api() as api:   # the client answers for its own allocation
        r = api.get(f"/v1/client/fs/logs/{job['ID']}", params={"task": "t", "plain": "true"})
        assert (r.status_code, r.text) == (200, "hello from the client node\n")
    # `yurt alloc logs -f` pointed at the server follows the task's output on the client node
    follow = subprocess.Popen([sys.executable, "-m", "yurt.cli.main", "alloc", "logs", "-f", "-address", server.url,
                               job["ID"][:8], "t"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(follow.stdout.readline, "")), daemon=True).start()
    try:
        wait_for(lambda: lines, timeout=30, what="the first followed line")
        assert lines[0] == "hello from the client node\n"
        assert follow.poll() is None   # still following
    finally:
        follow.kill()
        follow.communicate(timeout=10)


def test_the_http_client_fails_over_between_servers(cluster):
    from yurt.api.client import YurtClient
    from yurt.errors import Unreachable

    server, _client = cluster
    dead = f"http://127.0.0.1:{free_port()}"
    c = YurtClient([dead, server.url])
    assert "via-client" in [j["ID"] for j in c.jobs()] and c.address == server.url
    with pytest.raises(Unreachable, match=f"cannot reach the Yurt agent at {dead}: connection refused"):
        YurtClient([dead]).jobs()


def test_a_client_says_when_its_server_is_unreachable_or_not_a_yurt_server(tmp_path):
    """Pointed at nothing, the client says so; pointed at an HTTP server that is not Yurt, it
    names the address and the setting to fix. Neither registers, and both keep serving."""
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(tmp_path)))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    web_addr = f"127.0.0.1:{web.server_address[1]}"
    dead_addr = f"127.0.0.1:{free_port()}"
    nothing, not_yurt = ClientAgent([dead_addr]), ClientAgent([web_addr])
    try:
        for agent in (nothing, not_yurt):
            agent.proc = subprocess.Popen(
                [sys.executable, "-m", "yurt.cli.main", "agent", "-config", agent.config, "-data-dir",
                 agent.data_dir, "-http-port", str(agent.port)],
                stdout=open(agent.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "no server reachable" in nothing.log(), timeout=60, what="the unreachable message")
        wait_for(lambda: "is not a Yurt server" in not_yurt.log(), timeout=60, what="the not-Yurt message")
        assert f"http://{web_addr} answers, but is not a Yurt server" in not_yurt.log()
        assert "check client { servers } in the agent's configuration" in not_yurt.log()
        assert f"cannot reach the Yurt agent at http://{dead_addr}" in nothing.log()
        for agent in (nothing, not_yurt):
            health = httpx.get(f"{agent.url}/v1/agent/health", timeout=5)
            assert health.status_code == 500 and health.json()["client"]["ok"] is False
    finally:
        web.shutdown()
        nothing.close()
        not_yurt.close()


def test_the_web_ui_of_a_client_only_agent_is_rendered_by_its_server(cluster, job):
    _server, client = cluster
    with client.api() as api:
        page = api.get("/ui/jobs")
        assert page.status_code == 200 and 'data-job="via-client"' in page.text
        page = api.get(f"/ui/allocation/{job['ID']}")
        assert page.status_code == 200 and "client-only" in page.text   # the node it runs on
        assert f'data-alloc="{job["ID"]}" data-task="t" data-type="stdout"' in page.text
        # what the page's script follows: the task's stdout, through this agent
        logs = api.get(f"/v1/client/fs/logs/{job['ID']}", params={"task": "t", "plain": "true"})
        assert "hello from the client node" in logs.text
        assert api.get("/ui/job/nope").status_code == 404
        assert api.get("/ui/static/ui.js").status_code == 200


def test_agent_servers_lists_and_sets_the_client_s_servers(cluster):
    """Nomad's /v1/agent/servers: the client's server list (GET), replaced by PUT ?address=."""
    import nomad

    server, client = cluster
    n = nomad.Nomad(host="127.0.0.1", port=client.port)
    before = n.agent.get_servers()
    assert before[-1] == f"127.0.0.1:{server.port}" and len(before) == 2
    try:
        n.agent.update_servers([f"127.0.0.1:{server.port}"])
        assert n.agent.get_servers() == [f"127.0.0.1:{server.port}"]
        with client.api() as api:
            assert api.get("/v1/jobs").status_code == 200   # forwarded to the one left
            r = api.put("/v1/agent/servers", params={"address": "nohost"})
            assert (r.status_code, r.text) == (400, 'server address "nohost" is not host:port')
            r = api.put("/v1/agent/servers")
            assert r.status_code == 400 and "missing server address" in r.text
        assert n.agent.get_servers() == [f"127.0.0.1:{server.port}"]
    finally:
        n.agent.update_servers(before)
    with server.api() as api:   # a server agent lists the servers
        assert api.get("/v1/agent/servers").json() == [f"127.0.0.1:{server.port}"]
