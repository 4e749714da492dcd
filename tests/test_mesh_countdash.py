"""countdash end to end on a real agent: bridge namespaces, sidecars, mTLS, intentions.

The reference scenario: the dashboard reaches count-api through localhost:8080, count-api has
no open port, every hop between the groups is mutual TLS authorized by intentions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from yurt.jobspec import load_file

from .agent_util import AgentProcess, allocs, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

JOB = Path(__file__).resolve().parent.parent / "examples" / "countdash" / "countdash.nomad"
DASHBOARD = "http://127.0.0.1:9002"


def count() -> dict:
    with urllib.request.urlopen(DASHBOARD + "/api/count", timeout=5) as r:
        return json.loads(r.read())


def counting() -> dict | None:
    c = count()
    return c if c["count"] > 0 else None


def unreachable() -> bool:
    return count() == {"count": -1, "hostname": "[Unreachable]"}


def yurt(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "YURT_ADDR": agent.url}, timeout=60)


def sidecar(api, service: str) -> dict:
    (entry,) = api.get(f"/v1/health/connect/{service}").json()
    return entry["Service"]


def connects(host: str, port: int, netns: str | None = None) -> bool:
    """Can a TCP connection be opened (from the host, or from inside a namespace)?"""
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3).close()"
    cmd = [sys.executable, "-c", code]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def mesh():
    agent = AgentProcess(extra=["-dev-connect", "-leaf-cert-ttl", "2m"]).start()
    api = agent.api()
    doc = load_file(str(JOB)).job.to_document()
    assert api.put("/v1/jobs", json=doc).status_code == 200
    wait_for(lambda: len([a for a in allocs(api, "countdash") if a["ClientStatus"] == "running"]) == 2,
             timeout=120, what="countdash running")
    wait_for(counting, timeout=60, what="the dashboard counting through the mesh")
    yield agent, api
    api.delete("/v1/job/countdash", params={"purge": "true"})
    api.close()
    agent.stop()


def test_count_increases_through_the_mesh(mesh):
    first = wait_for(counting, what="count")
    second = wait_for(lambda: (lambda c: c if c["count"] > first["count"] else None)(count()), what="count grows")
    assert second["hostname"] == first["hostname"]


def test_dev_connect_serves_the_dashboard_on_the_public_address_too(mesh):
    """-dev-connect binds 0.0.0.0 as Nomad's does: the node's address is the default route's
    interface, host ports are mapped there (and on 127.0.0.1), the sidecars registered there."""
    _, api = mesh
    (node,) = api.get("/v1/nodes").json()
    public = node["Address"]
    assert public and not public.startswith("127."), node
    with urllib.request.urlopen(f"http://{public}:9002/api/count", timeout=5) as r:
        assert json.loads(r.read())["count"] > 0
    assert sidecar(api, "count-api")["Address"] == public


def test_sidecars_registered_and_passing(mesh):
    _, api = mesh
    for name in ("count-api", "count-dashboard"):
        entries = wait_for(lambda n=name: api.get(f"/v1/health/connect/{n}", params={"passing": "1"}).json(),
                           what=f"{name} sidecar passing")
        assert len(entries) == 1 and entries[0]["Service"]["Kind"] == "connect-proxy"
        assert entries[0]["Service"]["Service"] == f"{name}-sidecar-proxy"
    services = api.get("/v1/catalog/services").json()
    assert {"count-api", "count-api-sidecar-proxy", "count-dashboard", "count-dashboard-sidecar-proxy"} <= set(services)


def test_count_api_is_reachable_only_through_mtls(mesh):
    _, api = mesh
    (api_alloc,) = [a for a in allocs(api, "countdash") if a["TaskGroup"] == "api" and a["ClientStatus"] == "running"]
    (dash_alloc,) = [a for a in allocs(api, "countdash") if a["TaskGroup"] == "dashboard" and a["ClientStatus"] == "running"]
    ip = api.get(f"/v1/allocation/{api_alloc['ID']}").json()["NetworkStatus"]["Address"]
    proxy = sidecar(api, "count-api")
    # the app's port: closed from the host and from another namespace
    assert not connects(ip, 9001)
    assert not connects(ip, 9001, netns=dash_alloc["ID"])
    # the sidecar's public port is open, but only to mTLS with a certificate from the cluster's CA
    assert connects(proxy["Address"], proxy["Port"])
    # a TLS 1.3 client without a certificate: its handshake ends on its side, it sends an HTTP
    # request (-quiet implies -ign_eof: it then reads until the proxy closes), and what comes
    # back is the proxy's "certificate required" alert (116), never an HTTP response
    s_client = subprocess.run(["openssl", "s_client", "-connect", f"{proxy['Address']}:{proxy['Port']}", "-tls1_3",
                               "-quiet"], input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
    err = s_client.stderr.decode(errors="replace")
    assert s_client.stdout == b"", s_client.stdout
    assert "tlsv13 alert certificate required" in err and "SSL alert number 116" in err, err
    assert s_client.returncode == 1, err
    # plain text on the TLS port: the proxy closes the connection on it without a byte of reply
    # (with the rest of the request unread, so the close is a reset)
    with socket.create_connection((proxy["Address"], proxy["Port"]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            s.recv(4096)
    # both refusals are in the proxy's access log, with their reasons
    def refused(reason: str) -> bool:
        log = api.get(f"/v1/client/fs/logs/{api_alloc['ID']}",
                      params={"task": "connect-proxy-count-api", "plain": "true"}).text
        return any(e.get("dir") == "inbound" and e.get("verdict") == "refused" and e.get("reason") == reason
                   for e in (json.loads(ln) for ln in log.splitlines() if ln.startswith("{")))
    wait_for(lambda: refused("tls handshake: peer did not return a certificate"),
             what="the no-certificate refusal logged")
    wait_for(lambda: refused("tls handshake: http request"), what="the plain-text refusal logged")
    # and the proxy keeps serving
    assert wait_for(counting, what="still counting")


def test_deny_intention_cuts_the_dashboard_off_and_deleting_it_restores(mesh):
    agent, _ = mesh
    res = yurt(agent, "intention", "create", "-deny", "count-dashboard", "count-api")
    assert res.returncode == 0, res.stderr
    try:
        wait_for(unreachable, timeout=30, what="dashboard shows [Unreachable]")
        assert yurt(agent, "intention", "check", "count-dashboard", "count-api").returncode == 2
    finally:
        assert yurt(agent, "intention", "delete", "count-dashboard", "count-api").returncode == 0
    wait_for(counting, timeout=30, what="count back after the intention is deleted")


def test_proxy_access_log_records_identity_and_verdict(mesh):
    _agent, api = mesh
    (api_alloc,) = [a for a in allocs(api, "countdash") if a["TaskGroup"] == "api" and a["ClientStatus"] == "running"]
    count()
    log = api.get(f"/v1/client/fs/logs/{api_alloc['ID']}",
                  params={"task": "connect-proxy-count-api", "plain": "true"}).text
    lines = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    conns = [ln for ln in lines if ln.get("type") == "conn" and ln.get("dir") == "inbound"]
    assert conns, log[-2000:]
    assert any("count-dashboard" in str(c.get("src", "")) and c.get("verdict") == "allowed" and c["bytes_out"] > 0
               for c in conns)


def test_leaf_renews_while_a_long_lived_connection_keeps_working(mesh):
    """Leaves live 2 minutes here: renewed at 60-90 % of that, pushed to the running proxies."""
    _agent, api = mesh
    (dash_alloc,) = [a for a in allocs(api, "countdash") if a["TaskGroup"] == "dashboard" and a["ClientStatus"] == "running"]
    before = api.get("/v1/agent/connect/ca/leaf/count-api").json()
    # a long-lived connection through the dashboard's upstream listener, from inside its namespace
    script = ("import socket,time,sys\n"
              "s=socket.create_connection(('127.0.0.1',8080),timeout=10)\n"
              "ok=0\n"
              "end=time.time()+float(sys.argv[1])\n"
              "while time.time()<end:\n"
              "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
              "    data=b''\n"
              "    while not data.endswith(b'}'):\n"
              "        chunk=s.recv(4096)\n"
              "        assert chunk, 'connection closed after %d requests' % ok\n"
              "        data+=chunk\n"
              "    assert b'count' in data, data\n"
              "    ok+=1\n"
              "    time.sleep(1)\n"
              "print(ok)\n")
    proc = subprocess.Popen(["ip", "netns", "exec", dash_alloc["ID"], sys.executable, "-c", script, "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    renewed = wait_for(lambda: (lambda c: c if c["SerialNumber"] != before["SerialNumber"] else None)(
        api.get("/v1/agent/connect/ca/leaf/count-api").json()), timeout=150, interval=2, what="leaf renewed")
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 0, err
    assert int(out.strip()) >= 100  # one request a second for two minutes, on one connection
    assert renewed["ValidAfter"] != before["ValidAfter"]
    wait_for(counting, what="new connections work with the new certificate")


def test_killing_count_api_moves_traffic_to_the_replacement(mesh):
    _agent, api = mesh
    (old,) = [a for a in allocs(api, "countdash") if a["TaskGroup"] == "api" and a["ClientStatus"] == "running"]
    assert api.put(f"/v1/allocation/{old['ID']}/stop").status_code == 200
    new = wait_for(lambda: [a for a in allocs(api, "countdash") if a["TaskGroup"] == "api"
                            and a["ClientStatus"] == "running" and a["ID"] != old["ID"]], timeout=120,
                   what="replacement running")
    wait_for(lambda: (lambda c: c if c["count"] > 0 and c["hostname"] == new[0]["ID"][:8] else None)(count()),
             timeout=60, what="count served by the replacement")
    stopped = wait_for(lambda: (lambda a: a if a["ClientStatus"] not in ("pending", "running") else None)(
        api.get(f"/v1/allocation/{old['ID']}").json()), timeout=60, what="the old allocation stopped")
    assert (stopped["DesiredStatus"], stopped["ClientStatus"]) == ("stop", "complete"), stopped
