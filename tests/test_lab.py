"""Yurt on many hosts, on a lab of network-namespace hosts (`yurt lab`): one server and three
clients, countdash spread over them, the mesh across hosts, a host killed and brought back, a
server outage, a drain, a client-only agent serving python-nomad, and a lab that leaves
nothing behind. Everything is real: namespaces, veths, CNI, iptables, agents, mTLS.

The tests run in order on one lab (module scope); each says what the user would see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .agent_util import alloc_processes, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a lab of hosts needs root (network namespaces)")

LAB = "t" + str(os.getpid() % 100000)
SUBNET = f"10.{214 + os.getpid() % 20}.{os.getpid() % 250}.0/24"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "countdash"
PLACEMENT = """
    constraint {
      attribute = "${node.unique.name}"
      operator  = "regexp"
      value     = "%s"
    }
    affinity {
      attribute = "${node.unique.name}"
      value     = "%s"
      weight    = 100
    }
"""


def yurt(*args: str, host: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The yurt CLI on this machine, or inside a lab host (`yurt lab exec HOST -- yurt ...`)."""
    base = [sys.executable, "-m", "yurt.cli.main"]
    cmd = base + (["lab", "exec", "-name", LAB, host, "--", "yurt", *args] if host else list(args))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def lab_json() -> dict:
    return json.loads(Path(f"/var/lib/yurt/lab/{LAB}/lab.json").read_text())


def address(host: str) -> str:
    return next(h["address"] for h in lab_json()["hosts"] if h["name"] == host)


def api(host: str, path: str):
    with urllib.request.urlopen(f"http://{address(host)}:4646{path}", timeout=10) as r:
        return json.loads(r.read())


def in_host(host: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Python code run inside a lab host's network namespace."""
    return subprocess.run(["nsenter", f"--net=/var/run/netns/ylab-{LAB}-{host}", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)


def count(dashboard_host: str) -> dict:
    with urllib.request.urlopen(f"http://{address(dashboard_host)}:9002/api/count", timeout=5) as r:
        return json.loads(r.read())


def allocs(group: str, status: str = "running") -> list[dict]:
    return [a for a in api("server1", "/v1/job/countdash/allocations")
            if a["TaskGroup"] == group and a["ClientStatus"] == status]


def node_of(alloc: dict) -> str:
    return alloc["NodeName"] if alloc.get("NodeName") else api("server1", f"/v1/node/{alloc['NodeID']}")["Name"]


def counting_from(dashboard_host: str, api_alloc: str, above: int = 0):
    """A good count served by the count-api allocation `api_alloc` (hostname = its short ID)."""
    def check():
        try:
            c = count(dashboard_host)
        except OSError:
            return None
        return c if c["count"] > above and c["hostname"] == api_alloc[:8] else None
    return check


@pytest.fixture(scope="module")
def lab():
    shutil.rmtree(f"/var/lib/yurt/lab/{LAB}", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "yurt.cli.main", "lab", "up", "-name", LAB, "-servers", "1",
                           "-clients", "3", "-subnet", SUBNET], capture_output=True, text=True, timeout=180)
    try:
        ok(proc)
        yield proc.stdout
    finally:
        down = subprocess.run([sys.executable, "-m", "yurt.cli.main", "lab", "down", "-name", LAB],
                              capture_output=True, text=True, timeout=300)
        print(down.stdout, down.stderr)


@pytest.fixture(scope="module")
def countdash(lab, tmp_path_factory):
    """countdash with count-api on client1 and the dashboard on client2 (affinities), each free
    to move elsewhere (count-api never to client2)."""
    d = tmp_path_factory.mktemp("countdash")
    for f in ("counter_api.py", "dashboard.py"):
        shutil.copy(EXAMPLES / f, d / f)
    text = (EXAMPLES / "countdash.nomad").read_text()
    text = text.replace('group "api" {\n', 'group "api" {\n' + PLACEMENT % ("^client[13]$", "client1"), 1)
    text = text.replace('group "dashboard" {\n', 'group "dashboard" {\n' + PLACEMENT % ("^client", "client2"), 1)
    (d / "countdash.nomad").write_text(text)
    # submitted to a client-only agent (client3), which forwards it to the server
    out = ok(subprocess.run([sys.executable, "-m", "yurt.cli.main", "lab", "exec", "-name", LAB, "client3", "--",
                             "yurt", "job", "run", str(d / "countdash.nomad")], capture_output=True, text=True,
                            timeout=180, cwd=d))
    assert 'Allocations of job "countdash" ready: 2 running' in out
    return d


def test_lab_is_up_with_one_agent_per_host(lab):
    assert f'lab "{LAB}" is up on {SUBNET}' in lab
    status = ok(yurt("lab", "status", "-name", LAB))
    for host in ("server1", "client1", "client2", "client3"):
        assert host in status
    assert status.count("running") == 4
    nodes = {n["Name"]: n for n in api("server1", "/v1/nodes")}
    assert sorted(nodes) == ["client1", "client2", "client3"]
    for name, node in nodes.items():
        # each node advertises its own lab address, never loopback
        assert node["Status"] == "ready" and node["Address"] == address(name)
        detail = api("server1", f"/v1/node/{node['ID']}")
        assert detail["Attributes"]["unique.network.ip-address"] == address(name)
        assert detail["HTTPAddr"] == f"http://{address(name)}:4646"
    # each host sees only its own interface
    out = in_host("client2", "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
    assert out.stdout.strip() == "['eth0', 'lo']"


def test_lab_refuses_duplicate_host_names_and_a_second_lab_of_the_same_name(lab):
    dup = yurt("lab", "up", "-name", "tdup", "-host", "a:server", "-host", "a")
    assert dup.returncode == 1
    assert 'two lab hosts are named "a": give each host its own name' in dup.stderr
    assert not Path("/var/lib/yurt/lab/tdup").exists()
    again = yurt("lab", "up", "-name", LAB)
    assert again.returncode == 1
    assert f'lab "{LAB}" is already up' in again.stderr
    assert ok(yurt("lab", "status", "-name", LAB)).count("running") == 4   # untouched


def test_countdash_counts_through_the_mesh_across_hosts(countdash):
    (api_alloc,) = allocs("api")
    (dash_alloc,) = allocs("dashboard")
    assert node_of(api_alloc) == "client1" and node_of(dash_alloc) == "client2"
    c = wait_for(counting_from("client2", api_alloc["ID"]), 60, what="the dashboard on client2 counting")
    c2 = wait_for(counting_from("client2", api_alloc["ID"], above=c["count"]), 30, what="the count rising")
    assert c2["count"] > c["count"]
    # the sidecars are registered at their node's address and host port
    (entry,) = api("server1", "/v1/health/connect/count-api")
    assert entry["Node"]["Node"] == "client1" and entry["Node"]["Address"] == address("client1")
    assert entry["Service"]["Address"] == address("client1")
    port = entry["Service"]["Port"]
    assert 20000 <= port <= 32000


def test_count_api_is_reachable_from_another_host_only_through_mtls(countdash):
    (api_alloc,) = allocs("api")
    (entry,) = api("server1", "/v1/health/connect/count-api")
    sidecar = entry["Service"]["Port"]
    a1 = address("client1")
    # no host port for the app itself
    probe = in_host("client3", f"import socket\ntry:\n socket.create_connection(('{a1}', 9001), timeout=3)\n"
                               "except OSError as e: print(type(e).__name__)\nelse: print('connected')")
    assert probe.stdout.strip() == "ConnectionRefusedError"
    # a host that routes to client1's allocation subnet still cannot reach the app's port: only
    # the sidecar's port is open in the allocation's namespace
    net = json.loads(next(Path(f"/var/lib/yurt/lab/{LAB}/client1/data").glob(f"**/network/{api_alloc['ID']}.json"))
                     .read_text())
    alloc_ip = net["address"]
    subprocess.run(["ip", "-n", f"ylab-{LAB}-client3", "route", "add", f"{alloc_ip}/32", "via", a1], check=True)
    try:
        probe = in_host("client3", f"import socket\ntry:\n socket.create_connection(('{alloc_ip}', 9001), timeout=3)\n"
                                   "except OSError as e: print(type(e).__name__)\nelse: print('connected')")
        # the packet reaches the namespace, whose mesh-only firewall resets it
        assert probe.stdout.strip() == "ConnectionRefusedError", probe
    finally:
        subprocess.run(["ip", "-n", f"ylab-{LAB}-client3", "route", "del", f"{alloc_ip}/32"], check=False)
    # the sidecar's port speaks mutual TLS only: without a certificate of the mesh, no answer
    probe = in_host("client3", (
        "import socket, ssl\nctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        f"s = socket.create_connection(('{a1}', {sidecar}), timeout=5)\n"
        "try:\n t = ctx.wrap_socket(s); t.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(repr(t.recv(100)))\n"
        "except (ssl.SSLError, OSError) as e: print('refused', type(e).__name__)\n"))
    assert probe.stdout.startswith("refused"), probe


def test_intentions_hold_across_hosts(countdash):
    """A deny intention, created through a client-only agent on a third host, cuts the dashboard
    (client2) off count-api (client1); deleting it restores the count."""
    (api_alloc,) = allocs("api")
    ok(yurt("intention", "create", "-deny", "count-dashboard", "count-api", host="client3"))
    try:
        def unreachable():
            try:
                return count("client2") == {"count": -1, "hostname": "[Unreachable]"}
            except OSError:
                return False
        wait_for(unreachable, 30, what="the dashboard on client2 showing [Unreachable]")
    finally:
        ok(yurt("intention", "delete", "count-dashboard", "count-api", host="client3"))
    wait_for(counting_from("client2", api_alloc["ID"]), 30, what="the count back after the intention is deleted")


def test_alloc_logs_through_the_server_from_another_host(countdash):
    (dash_alloc,) = allocs("dashboard")
    # asked of the server (server1), for an allocation running on client2
    out = ok(yurt("alloc", "logs", dash_alloc["ID"], "dashboard", host="server1"))
    assert "counter-dashboard listening on :9002" in out
    follow = subprocess.Popen([sys.executable, "-m", "yurt.cli.main", "lab", "exec", "-name", LAB, "server1", "--",
                               "yurt", "alloc", "logs", "-f", dash_alloc["ID"], "dashboard"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        count("client2")   # a request the dashboard logs, to be followed
        lines: list[str] = []

        def followed():
            line = follow.stdout.readline()
            lines.append(line)
            return "GET /api/count" in line
        wait_for(followed, 30, interval=0, what="a new request in `alloc logs -f`")
    finally:
        follow.kill()
        follow.wait()


def test_python_nomad_works_against_a_client_only_agent(countdash):
    import nomad
    n = nomad.Nomad(host=address("client3"), port=4646, timeout=10)
    assert [j["ID"] for j in n.jobs.get_jobs()] == ["countdash"]
    assert sorted(x["Name"] for x in n.nodes.get_nodes()) == ["client1", "client2", "client3"]
    assert n.job.get_job("countdash")["TaskGroups"][0]["Name"] == "api"


def test_tasks_keep_running_through_a_server_outage(countdash):
    (api_alloc,) = allocs("api")
    before = wait_for(counting_from("client2", api_alloc["ID"]), 30, what="counting")
    ok(yurt("lab", "stop", "-name", LAB, "server1"))
    try:
        c = wait_for(counting_from("client2", api_alloc["ID"], above=before["count"]), 30,
                     what="the count rising while the server is down")
        assert c["count"] > before["count"]
        assert alloc_processes(api_alloc["ID"])
    finally:
        ok(yurt("lab", "start", "-name", LAB, "server1"))
    wait_for(lambda: api("server1", "/v1/agent/health") is not None, 60, what="the server back")


def test_a_killed_host_is_replaced_and_the_count_resumes(countdash, capsys):
    (old,) = allocs("api")
    assert node_of(old) == "client1"
    wait_for(counting_from("client2", old["ID"]), 30, what="counting before the kill")
    assert alloc_processes(old["ID"])
    killed_at = time.monotonic()
    ok(yurt("lab", "kill", "-name", LAB, "client1"))
    # every process of the host is gone (the agent, executors, the app, its sidecar)
    assert alloc_processes(old["ID"]) == []
    assert "killed" in ok(yurt("lab", "status", "-name", LAB))

    def replaced():
        live = allocs("api")
        return live[0] if live and live[0]["ID"] != old["ID"] else None
    new = wait_for(replaced, 90, what="count-api replaced on a live host")
    assert node_of(new) == "client3"
    wait_for(counting_from("client2", new["ID"]), 60, what="the count resuming from the replacement")
    seconds = time.monotonic() - killed_at
    with capsys.disabled():
        print(f"\n[lab] from SIGKILL of client1 to the first good count from its replacement: {seconds:.1f} s")
    (lost,) = [a for a in api("server1", "/v1/job/countdash/allocations") if a["ID"] == old["ID"]]
    assert lost["ClientStatus"] == "lost" and lost["DesiredStatus"] == "stop"


def test_the_host_that_comes_back_stops_its_replaced_allocations(countdash):
    lost = [a for a in api("server1", "/v1/job/countdash/allocations")
            if a["TaskGroup"] == "api" and a["ClientStatus"] == "lost"]
    assert len(lost) == 1
    old_id = lost[0]["ID"]
    (current,) = allocs("api")
    netns_before = sorted(os.listdir("/var/run/netns"))
    assert current["ID"] in netns_before
    ok(yurt("lab", "start", "-name", LAB, "client1"))
    # the old count-api never runs again, and its network is gone; the replacement's is untouched
    wait_for(lambda: not Path(f"/var/run/netns/{old_id}").exists(), 60, what="the stale allocation's namespace gone")
    assert alloc_processes(old_id) == []
    assert Path(f"/var/run/netns/{current['ID']}").exists()
    # client1's clean-up left client3's lease and rules for the replacement alone
    lease = Path(f"/var/run/yurt/ipam/ylab-{LAB}-client3/yurt")
    assert current["ID"] in [f.read_text().splitlines()[0] for f in lease.iterdir() if f.name[0].isdigit()]
    rules = subprocess.run(["ip", "netns", "exec", f"ylab-{LAB}-client3", "iptables-save", "-t", "nat"],
                           capture_output=True, text=True).stdout
    assert current["ID"] in rules
    wait_for(lambda: any(n["Name"] == "client1" and n["Status"] == "ready" for n in api("server1", "/v1/nodes")),
             60, what="client1 ready again")
    assert alloc_processes(old_id) == []
    assert [a["ID"] for a in allocs("api")] == [current["ID"]]
    (stale,) = [a for a in api("server1", "/v1/job/countdash/allocations") if a["ID"] == old_id]
    assert (stale["ClientStatus"], stale["DesiredStatus"]) == ("lost", "stop")   # not "running" again
    c = wait_for(counting_from("client2", current["ID"]), 30, what="still counting")
    assert c["count"] > 0


def test_draining_the_dashboards_host_moves_it_and_the_count_resumes(countdash):
    (dash,) = allocs("dashboard")
    assert node_of(dash) == "client2"
    (api_alloc,) = allocs("api")
    out = ok(yurt("node", "drain", "-enable", "-yes", "client2", host="server1", timeout=300))
    assert "Drain complete for node" in out
    (moved,) = allocs("dashboard")
    assert moved["ID"] != dash["ID"] and node_of(moved) in ("client1", "client3")
    c = wait_for(counting_from(node_of(moved), api_alloc["ID"]), 60,
                 what=f"the dashboard counting again on {node_of(moved)}")
    assert c["count"] > 0
    nodes = {n["Name"]: n for n in api("server1", "/v1/nodes")}
    assert nodes["client2"]["SchedulingEligibility"] == "ineligible" and not nodes["client2"]["Drain"]
    assert alloc_processes(dash["ID"]) == []
    ok(yurt("node", "eligibility", "-enable", "client2", host="client3"))
    assert {n["Name"]: n for n in api("server1", "/v1/nodes")}["client2"]["SchedulingEligibility"] == "eligible"


def test_lab_down_leaves_nothing(lab, countdash):
    ids = [a["ID"] for a in api("server1", "/v1/job/countdash/allocations")]
    down = ok(yurt("lab", "down", "-name", LAB))
    assert f'lab "{LAB}" is down' in down
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"ylab-{LAB}-") or n in ids]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"ylab-{LAB}" not in links
    assert f"yurt lab {LAB}" not in subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    for alloc_id in ids:
        assert alloc_processes(alloc_id) == []
    assert not Path(f"/var/lib/yurt/lab/{LAB}").exists()
    assert list(Path("/var/run/yurt/ipam").glob(f"ylab-{LAB}-*")) == []
    owners = Path("/var/run/yurt/networks")
    assert not [i for i in ids if (owners / i).exists()]


def test_lab_host_plans_and_bad_names():
    from yurt.lab import LabError
    from yurt.lab.lab import plan_hosts
    assert plan_hosts(1, 2) == [("server1", "server"), ("client1", "client"), ("client2", "client")]
    assert plan_hosts(1, 3, ["web:server+client", "db"]) == [("web", "server+client"), ("db", "client")]
    # several servers: highly available, on etcd (tests/test_lab_etcd.py)
    assert plan_hosts(3, 1) == [("server1", "server"), ("server2", "server"), ("server3", "server"),
                                ("client1", "client")]
    for args, message in (((1, 0, ["a:server", "a"]), 'two lab hosts are named "a"'),
                          ((1, 0, ["Web:server"]), 'host name "Web" is not valid'),
                          ((1, 0, ["a:boss"]), 'role "boss" is not one of server, client, server+client'),
                          ((1, 0, ["a", "b"]), "a lab needs a server"),
                          ((0, 2, []), "a lab needs a server: -servers 1")):
        with pytest.raises(LabError) as e:
            plan_hosts(*args)
        assert message in str(e.value)
