"""`yurt mesh explain` on a real agent: two Connect services with bridge networking and
sidecars, plain Python apps the test controls with signals, four faults injected one at a
time (and undone), each found by the row that names its cause.

explain-src's app holds no port until SIGUSR1 (then it grabs its own upstream's local_bind_port
as soon as it is free), SIGUSR2 lets go. explain-dst's app serves HTTP on 127.0.0.1:9001 and
stops listening on SIGUSR1, listens again on SIGUSR2. No host port is fixed: the upstream and
the app's port live inside the allocations' namespaces, the sidecars' host ports are dynamic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from yurt.jobspec import load

from .agent_util import AgentProcess, alloc_processes, allocs, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

SRC, DST = "explain-src", "explain-dst"
UPSTREAM_PORT = 8080
APP_PORT = 9001
HOPS = ["source registered", "destination registered", "intention", "upstream listener",
        "destination sidecar reachable", "certificates", "mesh-only firewall", "app listening"]

SRC_APP = f'''# EXPLAIN_SRC_APP
import signal, socket, time
state = {{"want": False, "held": None}}
def grab(*_):
    state["want"] = True
def release(*_):
    state["want"] = False
    if state["held"] is not None:
        state["held"].close()
        state["held"] = None
signal.signal(signal.SIGUSR1, grab)
signal.signal(signal.SIGUSR2, release)
while True:
    if state["want"] and state["held"] is None:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", {UPSTREAM_PORT}))
            s.listen(8)
            state["held"] = s
            print("holding port {UPSTREAM_PORT}", flush=True)
        except OSError:
            s.close()
    time.sleep(0.02)
'''

DST_APP = f'''# EXPLAIN_DST_APP
import http.server, signal, threading, time
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from {DST}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
state = {{"server": None, "want": True}}
def stop(*_):
    state["want"] = False
def start(*_):
    state["want"] = True
signal.signal(signal.SIGUSR1, stop)
signal.signal(signal.SIGUSR2, start)
while True:
    srv = state["server"]
    if state["want"] and srv is None:
        try:
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", {APP_PORT}), Hello)
        except OSError:
            time.sleep(0.1)
            continue
        state["server"] = srv
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        print("listening", flush=True)
    elif not state["want"] and srv is not None:
        srv.shutdown()
        srv.server_close()
        state["server"] = None
        print("not listening", flush=True)
    time.sleep(0.02)
'''


def job(name: str, service: str, port: int, script: str, upstream: str = "") -> str:
    upstreams = (f'upstreams {{\n destination_name = "{upstream}"\n local_bind_port = {UPSTREAM_PORT}\n }}'
                 if upstream else "")
    return f'''
job "{name}" {{
  datacenters = ["dc1"]
  group "g" {{
    network {{
      mode = "bridge"
    }}
    restart {{
      attempts = 200
      interval = "30m"
      delay    = "1s"
      mode     = "delay"
    }}
    service {{
      name = "{service}"
      port = "{port}"
      connect {{
        sidecar_service {{
          proxy {{
            {upstreams}
          }}
        }}
      }}
    }}
    task "app" {{
      driver = "exec"
      config {{
        command = "/usr/bin/python3"
        args    = ["-u", "-c", {json.dumps(script)}]
      }}
    }}
  }}
}}
'''


SRC_JOB = job(SRC, SRC, 9002, SRC_APP, upstream=DST)
DST_JOB = job(DST, DST, APP_PORT, DST_APP)


def run_job(api, hcl: str) -> None:
    r = api.put("/v1/jobs", json=load(hcl, "explain.nomad").job.to_document())
    assert r.status_code == 200, r.text


def running_alloc(api, job_id: str) -> str | None:
    running = [a for a in allocs(api, job_id) if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run"]
    return running[0]["ID"] if len(running) == 1 else None


def yurt(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "YURT_ADDR": agent.url, "COLUMNS": "200"}, timeout=120)


def explain(api) -> dict:
    r = api.get("/v1/mesh/explain", params={"source": SRC, "destination": DST})
    assert r.status_code == 200, r.text
    return r.json()


def rows(result: dict, hop: str) -> list[dict]:
    return [r for r in result["Rows"] if r["Hop"] == hop]


def wrong_at(api, hop: str, saying: str = ""):
    """The explanation once `hop` is wrong (saying `saying`): a fault takes effect asynchronously."""
    def check():
        result = explain(api)
        return result if any(r["Status"] == "wrong" and saying in r["Detail"] for r in rows(result, hop)) else None
    return check


def healthy(api):
    def check():
        result = explain(api)
        return result if result["OK"] else None
    return check


def process(alloc_id: str, marker: str) -> int:
    for pid in alloc_processes(alloc_id):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and b"yurt.client" not in cmd:
            return pid
    raise AssertionError(f"no process with {marker} in allocation {alloc_id}")


@pytest.fixture(scope="module")
def mesh():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        run_job(api, DST_JOB)
        run_job(api, SRC_JOB)
        for j in (SRC, DST):
            wait_for(lambda j=j: running_alloc(api, j), timeout=120, what=f"{j} running")
        wait_for(healthy(api), timeout=90, what="the path explained healthy")
        yield agent, api
    finally:   # a -dev agent stops its allocations with it
        for j in (SRC, DST):
            api.delete(f"/v1/job/{j}", params={"purge": "true"})
        api.close()
        agent.stop()


def assert_only_wrong(result: dict, hop: str) -> dict:
    wrong = [r for r in result["Rows"] if r["Status"] == "wrong"]
    assert wrong and all(r["Hop"] == hop for r in wrong), result["Rows"]
    return wrong[0]


def test_healthy_path_exits_0_with_every_hop_ok(mesh):
    agent, _ = mesh
    cli = yurt(agent, "mesh", "explain", SRC, DST)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].split()[:5] == ["Hop", "Status", "Where", "Detail", "Fix"], cli.stdout
    for hop in HOPS:
        assert any(ln.startswith(hop + " ") and " ok " in ln for ln in lines), (hop, cli.stdout)
    assert "wrong" not in cli.stdout
    assert f"The path {SRC} -> {DST} works." in cli.stdout
    as_json = yurt(agent, "mesh", "explain", "-json", SRC, DST)
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["OK"] is True and [r["Hop"] for r in result["Rows"]] == HOPS
    assert all(r["Status"] == "ok" for r in result["Rows"]), result["Rows"]
    (tls,) = rows(result, "certificates")
    assert "mutual TLS handshake done" in tls["Detail"] and f"/svc/{DST}," in tls["Detail"], tls
    assert "both from the active root" in tls["Detail"], tls
    (up,) = rows(result, "upstream listener")
    assert f"127.0.0.1:{UPSTREAM_PORT}" in up["Detail"] and "sidecar" in up["Detail"], up


def test_a_deny_intention(mesh):
    agent, api = mesh
    r = api.put("/v1/connect/intentions/exact", params={"source": SRC, "destination": DST}, json={"Action": "deny"})
    assert r.status_code == 200, r.text
    try:
        cli = yurt(agent, "mesh", "explain", SRC, DST)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert f"The path {SRC} -> {DST} is broken: 1 hop wrong." in cli.stdout, cli.stdout
        result = json.loads(yurt(agent, "mesh", "explain", "-json", SRC, DST).stdout)
        row = assert_only_wrong(result, "intention")
        assert f"{SRC} => {DST} (deny)" in row["Detail"] and "precedence 9" in row["Detail"], row
        assert row["Fix"] == f"yurt intention create -replace -allow {SRC} {DST}", row
    finally:
        api.delete("/v1/connect/intentions/exact", params={"source": SRC, "destination": DST})
    wait_for(healthy(api), timeout=30, what="the path healthy again")


def test_the_destination_stopped(mesh):
    agent, api = mesh
    assert api.delete(f"/v1/job/{DST}").status_code == 200
    try:
        result = wait_for(wrong_at(api, "destination registered"), timeout=60, what="the destination gone")
        (row,) = [r for r in result["Rows"] if r["Status"] == "wrong"]
        assert row["Hop"] == "destination registered", result["Rows"]
        assert row["Detail"] == f"no instance of {DST} is registered in the catalog", row
        assert row["Fix"] == f'job "{DST}" is stopped: run it again (yurt job run <its file>)', row
        for hop in ("destination sidecar reachable", "certificates", "mesh-only firewall", "app listening"):
            assert {r["Status"] for r in rows(result, hop)} == {"skipped"}, result["Rows"]
        cli = yurt(agent, "mesh", "explain", SRC, DST)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert f"no instance of {DST} is registered" in cli.stdout
    finally:
        run_job(api, DST_JOB)
    wait_for(healthy(api), timeout=120, what="the path healthy again")


def test_the_app_not_listening(mesh):
    agent, api = mesh
    alloc = wait_for(lambda: running_alloc(api, DST), what=f"{DST} running")
    pid = process(alloc, "EXPLAIN_DST_APP")
    os.kill(pid, signal.SIGUSR1)
    try:
        result = wait_for(wrong_at(api, "app listening"), timeout=30, what="the app closed")
        row = assert_only_wrong(result, "app listening")
        assert f"does not accept connections on 127.0.0.1:{APP_PORT}" in row["Detail"], row
        assert f"allocation {alloc[:8]}'s namespace" in row["Detail"], row
        assert f"make the app listen on port {APP_PORT}" in row["Fix"], row
        cli = yurt(agent, "mesh", "explain", SRC, DST)
        assert cli.returncode == 1 and "app listening" in cli.stdout, cli.stdout + cli.stderr
    finally:
        os.kill(pid, signal.SIGUSR2)
    wait_for(healthy(api), timeout=30, what="the path healthy again")


def test_the_upstream_port_taken(mesh):
    """The source's app binds its own upstream's local_bind_port while the sidecar restarts:
    the sidecar cannot bind it back, and the row names the process that holds it."""
    agent, api = mesh
    alloc = wait_for(lambda: running_alloc(api, SRC), what=f"{SRC} running")
    app = process(alloc, "EXPLAIN_SRC_APP")
    os.kill(app, signal.SIGUSR1)
    try:
        os.kill(process(alloc, "yurt.mesh"), signal.SIGKILL)
        # first the sidecar is gone (nothing listens), then the app holds the port
        result = wait_for(wrong_at(api, "upstream listener", "is taken by"), timeout=60,
                          what="the upstream port taken")
        (row,) = rows(result, "upstream listener")
        assert f"127.0.0.1:{UPSTREAM_PORT} in allocation {alloc[:8]}'s namespace is taken by pid {app} " \
               f'(task "app"' in row["Detail"], row
        assert "not the sidecar" in row["Detail"], row
        assert "local_bind_port" in row["Fix"], row
        cli = yurt(agent, "mesh", "explain", SRC, DST)
        assert cli.returncode == 1 and f"taken by pid {app}" in cli.stdout, cli.stdout + cli.stderr
    finally:
        os.kill(app, signal.SIGUSR2)
    wait_for(healthy(api), timeout=90, what="the sidecar back on its upstream")


def test_unknown_service_is_named_with_close_names(mesh):
    agent, _ = mesh
    cli = yurt(agent, "mesh", "explain", "explain-srx", DST)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert 'the source service "explain-srx" is not in the catalog nor in any job' in cli.stderr, cli.stderr
    assert f"did you mean '{SRC}'" in cli.stderr, cli.stderr
    usage = yurt(agent, "mesh", "explain", SRC)
    assert usage.returncode == 2, usage.stdout + usage.stderr
    assert "Missing argument 'DESTINATION'" in usage.stderr, usage.stderr


def test_the_api_refuses_what_it_does_not_take_and_a_node_runs_probes_over_http(mesh):
    """A server asks another node's agent for that node's probes over HTTP (POST
    /v1/internal/mesh/probe); here the one agent is asked directly, as a server would ask it."""
    _, api = mesh
    r = api.get("/v1/mesh/explain", params={"source": SRC, "destination": DST, "from": "x"})
    assert r.status_code == 400 and "does not take from" in r.text, r.text
    r = api.get("/v1/mesh/explain", params={"source": SRC})
    assert r.status_code == 400 and "DESTINATION is required" in r.text, r.text
    dst = wait_for(lambda: running_alloc(api, DST), what=f"{DST} running")
    probes = [{"Kind": "app", "AllocID": dst, "Service": DST, "Address": "127.0.0.1", "Port": APP_PORT},
              {"Kind": "firewall", "AllocID": dst},
              {"Kind": "app", "AllocID": "00000000-0000-0000-0000-000000000000", "Port": APP_PORT},
              {"Kind": "bogus", "AllocID": dst}]
    r = api.post("/v1/internal/mesh/probe", json={"Probes": probes})
    assert r.status_code == 200, r.text
    app, firewall, elsewhere, bogus = r.json()["Results"]
    assert app["Status"] == "ok" and f"127.0.0.1:{APP_PORT}" in app["Detail"], app
    assert firewall["Status"] == "ok" and "YURT-MESH-IN" in firewall["Detail"], firewall
    assert elsewhere == {"Status": "wrong", "Detail": "allocation 00000000 does not run on this node (any more)",
                         "Fix": "yurt alloc status 00000000"}, elsewhere
    assert bogus["Status"] == "wrong" and 'unknown probe "bogus"' in bogus["Detail"], bogus
    r = api.post("/v1/internal/mesh/probe", json={"Probes": "all"})
    assert r.status_code == 400 and '{"Probes": [' in r.text, r.text


def test_the_mesh_only_rules_flushed(mesh):
    """Not one of the four faults of the issue, but a hop of its own: the destination's
    YURT-MESH-IN emptied (its app's port open to the bridge) is named, and written back by the
    client's own code it is ok again."""
    from yurt.client.network.mesh_inbound import alloc_open_ports, apply
    from yurt.structs import Allocation

    _, api = mesh
    alloc = wait_for(lambda: running_alloc(api, DST), what=f"{DST} running")
    subprocess.run(["ip", "netns", "exec", alloc, "iptables", "-w", "-F", "YURT-MESH-IN"], check=True, timeout=60)
    try:
        result = wait_for(wrong_at(api, "mesh-only firewall"), timeout=30, what="the rules missing")
        row = assert_only_wrong(result, "mesh-only firewall")
        assert row["Detail"].startswith(f"mesh-only inbound rules missing in allocation {alloc[:8]}'s namespace: "
                                        "iptables: -A YURT-MESH-IN -i lo -j ACCEPT"), row
        assert row["Detail"].endswith("the app's port is open to the bridge, around the mesh"), row
        assert f"yurt alloc stop {alloc[:8]}" in row["Fix"], row
    finally:
        apply(alloc, alloc_open_ports(Allocation.model_validate(api.get(f"/v1/allocation/{alloc}").json())))
    wait_for(healthy(api), timeout=30, what="the path healthy again")


def test_the_other_way_round_has_no_upstream(mesh):
    """explain-dst declares no upstream for explain-src, and explain-src's app serves nothing
    on its service port: both rows say so, the others are ok."""
    agent, _ = mesh
    cli = yurt(agent, "mesh", "explain", "-json", DST, SRC)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    result = json.loads(cli.stdout)
    wrong = {r["Hop"]: r for r in result["Rows"] if r["Status"] == "wrong"}
    assert set(wrong) == {"upstream listener", "app listening"}, result["Rows"]
    assert wrong["upstream listener"]["Detail"] == f"the sidecar of {DST} has no upstream for {SRC}"
    assert wrong["upstream listener"]["Fix"].startswith(f'add upstreams {{ destination_name = "{SRC}"')
    assert "does not accept connections on 127.0.0.1:9002" in wrong["app listening"]["Detail"]


def test_an_instance_registered_by_hand_is_probed_from_its_node(mesh):
    """A service and its sidecar registered through Consul's agent API (no allocation: a proxy
    someone would run by hand with `yurt connect proxy`), nothing running behind them."""
    agent, api = mesh
    port = free_port()
    r = api.put("/v1/agent/service/register", json={"ID": "explain-manual", "Name": "explain-manual",
                                                     "Address": "127.0.0.1", "Port": port,
                                                     "Connect": {"SidecarService": {}}})
    assert r.status_code == 200, r.text
    try:
        cli = yurt(agent, "mesh", "explain", "-json", SRC, "explain-manual")
        assert cli.returncode == 1, cli.stdout + cli.stderr
        result = json.loads(cli.stdout)
        (firewall,) = rows(result, "mesh-only firewall")
        assert firewall["Status"] == "skipped" and "registered through the API" in firewall["Detail"], firewall
        (registered,) = rows(result, "destination registered")
        assert registered["Status"] == "wrong" and 'check "Connect Sidecar Listening" is critical' \
            in registered["Detail"], registered
        (reach,) = rows(result, "destination sidecar reachable")
        assert reach["Status"] == "wrong" and "Connection refused" in reach["Detail"], reach
        (app,) = rows(result, "app listening")
        assert app["Status"] == "wrong" and f"127.0.0.1:{port} in the node (Connection refused)" in app["Detail"], app
    finally:
        api.put("/v1/agent/service/deregister/explain-manual")
