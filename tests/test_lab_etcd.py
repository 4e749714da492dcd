"""A lab with highly available servers (`yurt lab up -servers 3`): an etcd member on every server
host, in its namespace, healthy before the Yurt servers start, which are configured with the
whole cluster; the fault commands the HA tests use (`kill -etcd`, `start -etcd`, `kill`/`start`
of a whole host, `cut`/`heal`), and `down` leaving no etcd behind. Everything real: namespaces,
veths, etcd processes, etcdctl.

The tests run in order on one lab (module scope); each says what the user would see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .agent_util import wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="a lab of hosts needs root (network namespaces)"),
              pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None,
                                 reason="etcd is not installed: apt-get install etcd-server etcd-client")]

LAB = "e" + str(os.getpid() % 100000)
# test_lab.py uses 10.214-233, test_lab_secure.py 10.234-243
SUBNET = f"10.{244 + os.getpid() % 10}.{os.getpid() % 250}.0/24"
LAB_DIR = Path(f"/var/lib/yurt/lab/{LAB}")
SERVERS = ["server1", "server2", "server3"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def yurt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def lab_cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`yurt lab CMD -name LAB ARGS...`"""
    return yurt("lab", args[0], "-name", LAB, *args[1:], timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def ok_stderr(proc: subprocess.CompletedProcess) -> str:
    """etcdctl says how endpoints are on stderr."""
    ok(proc)
    return proc.stderr


def refused(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stderr


def lab_json() -> dict:
    return json.loads((LAB_DIR / "lab.json").read_text())


def host(name: str) -> dict:
    return next(h for h in lab_json()["hosts"] if h["name"] == name)


def address(name: str) -> str:
    return host(name)["address"]


def endpoint(name: str) -> str:
    return f"http://{address(name)}:2379"


def etcdctl(on: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """etcdctl run inside a lab host (`yurt lab exec HOST -- etcdctl ...`)."""
    return lab_cmd("exec", on, "--", "etcdctl", *args, timeout=timeout)


def put_once_a_leader_leads(on: str, key: str, value: str) -> None:
    """A put through the member on host `on`, retried until it succeeds: a write in flight when
    the leader dies is lost and times out, and the next one succeeds once a new leader is elected
    (as an etcd client's retry does)."""
    wait_for(lambda: etcdctl(on, "--command-timeout=2s", "put", key, value).returncode == 0, 60,
             what=f"a put of {key} through {on}'s member")


def health(name: str) -> bool | None:
    """The member's /health, asked from this machine over the lab bridge: None if no answer."""
    try:
        with NO_PROXY.open(f"{endpoint(name)}/health", timeout=3) as r:
            return json.loads(r.read())["health"] == "true"
    except urllib.error.HTTPError as e:
        return json.loads(e.read())["health"] == "true"
    except OSError:
        return None


def reach(src: str, dst_ip: str, port: int) -> str:
    """From inside lab host src, a TCP connection to dst_ip:port: "connected" or the error's name."""
    code = (f"import socket\ntry:\n socket.create_connection(('{dst_ip}', {port}), timeout=3)\n"
            "except OSError as e: print(type(e).__name__)\nelse: print('connected')")
    return subprocess.run(["nsenter", f"--net=/var/run/netns/ylab-{LAB}-{src}", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def etcd_processes() -> list[str]:
    """Command lines of etcd processes with a data dir in this lab."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"etcd") and any(a.startswith(str(LAB_DIR).encode() + b"/") for a in argv):
                out.append(b" ".join(argv).decode())
    return out


@pytest.fixture(scope="module")
def lab():
    shutil.rmtree(LAB_DIR, ignore_errors=True)
    proc = yurt("lab", "up", "-name", LAB, "-servers", "3", "-clients", "1", "-subnet", SUBNET, timeout=300)
    try:
        ok(proc)
        yield proc.stdout
    finally:
        down = yurt("lab", "down", "-name", LAB, timeout=300)
        print(down.stdout, down.stderr)


def test_every_server_host_runs_an_etcd_member_and_the_cluster_is_healthy(lab):
    assert "etcd cluster healthy (3 members)" in lab
    assert f'lab "{LAB}" is up on {SUBNET}' in lab
    status = ok(lab_cmd("status"))
    assert "Etcd" in status.splitlines()[0]
    for name in SERVERS:
        (row,) = [line.split() for line in status.splitlines() if line.startswith(name + " ")]
        assert row[3:5] == ["up", "running"] and row[-2] == "running"   # link, agent, etcd member
    # the members, asked inside a host with every endpoint named
    members = ok(etcdctl("client1", "--endpoints", ",".join(endpoint(s) for s in SERVERS), "member", "list"))
    rows = sorted((r[2], r[1], r[3], r[4]) for r in (line.split(", ") for line in members.splitlines()))
    assert rows == [(s, "started", f"http://{address(s)}:2380", endpoint(s)) for s in SERVERS]
    # inside a server host, etcdctl talks to its own member without flags (it listens on the host's loopback too)
    assert "127.0.0.1:2379 is healthy" in ok_stderr(etcdctl("server2", "endpoint", "health"))
    for name in SERVERS:
        assert health(name) is True
        h = host(name)
        # lab.json records each member; it runs in the host's namespace, on the host's data dir
        assert h["etcd_state"] == "running" and alive(h["etcd_pid"])
        assert os.stat(f"/proc/{h['etcd_pid']}/ns/net").st_ino == os.stat(f"/var/run/netns/ylab-{LAB}-{name}").st_ino
        assert (LAB_DIR / name / "etcd" / "member").is_dir()
        assert (LAB_DIR / name / "etcd.log").stat().st_size > 0
    assert (lab_json()["etcd_client_port"], lab_json()["etcd_peer_port"]) == (2379, 2380)
    assert lab_json()["etcd_token"].startswith(f"ylab-{LAB}-")
    assert host("client1")["etcd_state"] == "" and not host("client1")["etcd_pid"]


def test_the_servers_are_configured_with_the_whole_etcd_cluster_and_the_clients_with_every_server(lab):
    endpoints = ", ".join(f'"{endpoint(s)}"' for s in SERVERS)
    for name in SERVERS:
        config = (LAB_DIR / name / "agent.hcl").read_text()
        assert "store {\n    etcd {\n      endpoints = [" + endpoints + "]\n    }\n  }" in config
        with NO_PROXY.open(f"http://{address(name)}:4646/v1/agent/health", timeout=10) as r:
            assert r.status == 200
    client = (LAB_DIR / "client1" / "agent.hcl").read_text()
    assert "servers = [" + ", ".join(f'"{address(s)}:4646"' for s in SERVERS) + "]" in client


def test_kill_etcd_kills_only_the_member_and_start_etcd_rejoins_it(lab):
    ok(etcdctl("server1", "put", "/lab/before", "1"))
    agent_pid, etcd_pid = host("server2")["pid"], host("server2")["etcd_pid"]
    out = ok(lab_cmd("kill", "server2", "-etcd"))
    assert f"server2: etcd member killed (pid {etcd_pid}); its agent keeps running" in out
    assert not alive(etcd_pid) and alive(agent_pid)
    assert health("server2") is None
    (row,) = [line.split() for line in ok(lab_cmd("status")).splitlines() if line.startswith("server2 ")]
    assert row[4] == "running" and row[-2:] == ["dead", "<none>"]
    # two of three: the cluster still takes writes (once a leader leads, if server2's led)
    put_once_a_leader_leads("server1", "/lab/while-dead", "2")
    assert "is not running: yurt lab start" in refused(lab_cmd("kill", "server2", "-etcd"))
    out = ok(lab_cmd("start", "server2", "-etcd"))
    assert "server2: etcd member started" in out
    wait_for(lambda: health("server2") is True, 60, what="server2's member healthy again")
    # it rejoined on its data and caught up: its own copy (a serializable read) has both keys
    got = ok(etcdctl("server2", "get", "--prefix", "/lab/", "--consistency=s"))
    assert got.split() == ["/lab/before", "1", "/lab/while-dead", "2"]
    assert alive(agent_pid) and host("server2")["pid"] == agent_pid


def test_a_cut_host_reaches_no_one_and_healed_it_does_again(lab):
    pids = [host("server3")["pid"], host("server3")["etcd_pid"]]
    assert reach("server3", address("server1"), 2379) == "connected"
    out = ok(lab_cmd("cut", "server3"))
    assert "server3 is cut off the lab network; its processes keep running" in out
    assert reach("server3", address("server1"), 2379) != "connected"
    assert reach("server1", address("server3"), 2379) != "connected"
    assert reach("server1", address("server2"), 2379) == "connected"
    assert all(alive(p) for p in pids)
    (row,) = [line.split() for line in ok(lab_cmd("status")).splitlines() if line.startswith("server3 ")]
    assert row[3:5] == ["cut", "running"] and row[-2] == "running"
    # the isolated member loses the quorum (asked on its own loopback); the other two keep it
    def isolated_unhealthy():
        proc = etcdctl("server3", "--endpoints", "http://127.0.0.1:2379", "endpoint", "health")
        return proc.returncode != 0 and "http://127.0.0.1:2379 is unhealthy" in proc.stderr
    wait_for(isolated_unhealthy, 60, what="server3's member unhealthy while cut")
    put_once_a_leader_leads("server1", "/lab/while-cut", "3")
    assert "server3 is cut already" in refused(lab_cmd("cut", "server3"))
    out = ok(lab_cmd("heal", "server3"))
    assert "server3 is back on the lab network" in out
    assert reach("server3", address("server1"), 2379) == "connected"
    assert reach("server1", address("server3"), 2379) == "connected"
    wait_for(lambda: health("server3") is True, 60, what="server3's member healthy after heal")
    got = ok(etcdctl("server3", "get", "/lab/while-cut", "--consistency=s", "--print-value-only"))
    assert got.strip() == "3"
    assert all(alive(p) for p in pids)
    assert "server3 is not cut" in refused(lab_cmd("heal", "server3"))


def test_killing_a_host_kills_its_etcd_member_and_start_brings_both_back(lab):
    agent_pid, etcd_pid = host("server1")["pid"], host("server1")["etcd_pid"]
    out = ok(lab_cmd("kill", "server1"))
    assert "server1 killed" in out
    assert not alive(agent_pid) and not alive(etcd_pid)
    (row,) = [line.split() for line in ok(lab_cmd("status")).splitlines() if line.startswith("server1 ")]
    assert row[3:5] == ["down", "killed"] and row[-2:] == ["dead", "<none>"]
    put_once_a_leader_leads("server2", "/lab/while-killed", "4")
    out = ok(lab_cmd("start", "server1"))
    assert "server1: etcd member (pid" in out and "and agent (pid" in out
    assert alive(host("server1")["pid"]) and alive(host("server1")["etcd_pid"])
    wait_for(lambda: health("server1") is True, 60, what="server1's member healthy after start")
    got = ok(etcdctl("server1", "get", "/lab/while-killed", "--consistency=s", "--print-value-only"))
    assert got.strip() == "4"
    wait_for(lambda: NO_PROXY.open(f"http://{address('server1')}:4646/v1/agent/health", timeout=5).status == 200,
             60, what="server1's agent answering again")
    assert "server1 is running already" in refused(lab_cmd("start", "server1"))


def test_etcd_commands_are_refused_where_there_is_no_member(lab):
    assert "client1 runs no etcd member: only server hosts do (server1, server2, server3)" in \
        refused(lab_cmd("kill", "client1", "-etcd"))
    assert "client1 runs no etcd member" in refused(lab_cmd("start", "client1", "-etcd"))
    assert "is running already" in refused(lab_cmd("start", "server2", "-etcd"))
    assert 'has no host "nope"' in refused(lab_cmd("cut", "nope"))
    helptext = ok(yurt("lab", "--help"))
    for command in ("cut", "heal", "kill server2 -etcd", "start server2 -etcd", "-servers 3"):
        assert command in helptext


def test_lab_down_leaves_no_etcd_behind(lab):
    pids = [host(s)["etcd_pid"] for s in SERVERS]
    assert etcd_processes()
    out = ok(yurt("lab", "down", "-name", LAB, timeout=300))
    assert f'lab "{LAB}" is down' in out
    assert etcd_processes() == [] and not any(alive(p) for p in pids)
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"ylab-{LAB}-")]
    assert f"ylab-{LAB}" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert not LAB_DIR.exists()


def test_one_server_with_etcd_and_down_without_lab_json_or_namespace():
    """-etcd with one server: a one-member cluster. Its lab.json and namespace lost (a crash of the
    machine's state), down still finds the agent and the member by their command lines."""
    from yurt.lab.lab import _veth_name
    lab2 = LAB + "b"
    lab2_dir = Path(f"/var/lib/yurt/lab/{lab2}")
    subnet = f"10.{244 + os.getpid() % 10}.{(os.getpid() + 125) % 250}.0/24"
    shutil.rmtree(lab2_dir, ignore_errors=True)
    try:
        out = ok(yurt("lab", "up", "-name", lab2, "-servers", "1", "-clients", "0", "-etcd", "-subnet", subnet,
                      timeout=300))
        assert "etcd cluster healthy (1 member)" in out
        server = json.loads((lab2_dir / "lab.json").read_text())["hosts"][0]
        config = (lab2_dir / "server1" / "agent.hcl").read_text()
        assert f'endpoints = ["http://{server["address"]}:2379"]' in config
        (lab2_dir / "lab.json").unlink()
        subprocess.run(["ip", "netns", "delete", f"ylab-{lab2}-server1"], check=True)
        assert alive(server["pid"]) and alive(server["etcd_pid"])   # in a namespace without a name now
        out = ok(yurt("lab", "down", "-name", lab2, timeout=300))
        assert "2 stray processes killed" in out
        assert not alive(server["pid"]) and not alive(server["etcd_pid"])
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert f"ylab-{lab2}" not in links and _veth_name(lab2, "server1") not in links
        assert not lab2_dir.exists()
    finally:
        yurt("lab", "down", "-name", lab2, timeout=300)


def test_a_member_that_cannot_start_fails_up_naming_its_log_and_leaves_nothing():
    lab3 = LAB + "c"
    lab3_dir = Path(f"/var/lib/yurt/lab/{lab3}")
    subnet = f"10.{244 + os.getpid() % 10}.{(os.getpid() + 60) % 250}.0/24"
    shutil.rmtree(lab3_dir, ignore_errors=True)
    (lab3_dir / "server1").mkdir(parents=True)
    (lab3_dir / "server1" / "etcd").write_text("a file where the member's data dir goes\n")
    try:
        proc = yurt("lab", "up", "-name", lab3, "-servers", "1", "-clients", "0", "-etcd", "-subnet", subnet,
                    timeout=300)
        err = refused(proc)
        assert f"the etcd member of server1 exited; the end of {lab3_dir}/server1/etcd.log:" in err
        # etcd's own reason, from its JSON log, without the stack trace
        assert f"fatal: failed to list data directory (error=readdirent {lab3_dir}/server1/etcd: not a directory" \
            in err
        assert "stacktrace" not in err
        assert not lab3_dir.exists() and not etcd_processes()
        assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"ylab-{lab3}-")]
    finally:
        yurt("lab", "down", "-name", lab3, timeout=300)


def test_several_servers_are_planned_and_up_tells_of_etcd():
    from yurt.lab.lab import plan_hosts
    assert [r for _, r in plan_hosts(3, 2)] == ["server"] * 3 + ["client"] * 2
    helptext = ok(yurt("lab", "up", "--help"))
    assert "-etcd" in helptext and "more than one server" in helptext
