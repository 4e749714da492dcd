"""The gateways and Consul's config entries on a real `-dev-connect` agent: `job run` writes each
gateway's entry from the job's block, and the running gateway proxy follows `PUT /v1/config`
without a restart (same allocation, same proxy process), checked with the real curl.

Every host port is a free one (no fixed ports: other tests run beside these).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .agent_util import AgentProcess, allocs, free_port, wait_for
from .mesh_agent import MeshAgent
from .test_gateways import WEB_B, curl, register, running

needs_bridge = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

JOB = """
job "gw-entries" {
  datacenters = ["dc1"]
  group "web-b" {
    network { mode = "bridge" }
    service {
      name = "web-b"
      port = "9003"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", %(web_b)s]
      }
    }
  }

  group "web-c" {
    network { mode = "bridge" }
    service {
      name = "web-c"
      port = "9004"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", %(web_c)s]
      }
    }
  }

  group "gw" {
    network {
      mode = "bridge"
      port "http" {
        static = %(http)d
        to     = 8081
      }
      port "extra" {               # mapped now; its listener comes later, through the entry
        static = %(extra)d
        to     = 8082
      }
    }
    service {
      name = "entry-gw"
      port = "8081"
      connect {
        gateway {
          ingress {
            listener {
              port     = 8081
              protocol = "http"
              service {
                name  = "web-b"
                hosts = ["old.example.test"]
              }
            }
          }
        }
      }
    }
  }

  group "tgw" {
    network { mode = "bridge" }
    service {
      name = "entry-tgw"
      connect {
        gateway {
          terminating {
            service {
              name = "outside-x"
            }
          }
        }
      }
    }
  }
}
"""


WEB_C = WEB_B.replace("web-b", "web-c").replace("9003", "9004")
ARGS = {"web_b": json.dumps(WEB_B), "web_c": json.dumps(WEB_C)}


def proxy_pid(alloc_id: str) -> int | None:
    """The gateway proxy process of an allocation (`python -m yurt.mesh -config <its task dir>`)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"yurt.mesh" in cmd and any(alloc_id.encode() in part for part in cmd):
            return int(d.name)
    return None


def put(api, entry: dict):
    return api.put("/v1/config", json=entry)


@pytest.fixture(scope="module")
def agent():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    yield agent, api
    api.delete("/v1/job/gw-entries", params={"purge": "true"})
    api.close()
    agent.stop()


@needs_bridge
def test_job_run_writes_the_entries_and_the_gateway_follows_put_v1_config(agent):
    _, api = agent
    ports = {"http": free_port(), "extra": free_port()}
    register(api, JOB % {**ports, **ARGS}, "gw-entries")

    # job run wrote each gateway's entry from the job's block, in Consul's shape
    ig = api.get("/v1/config/ingress-gateway/entry-gw").json()
    assert ig["Kind"] == "ingress-gateway" and ig["TLS"]["Enabled"] is False
    assert ig["Listeners"] == [{"Port": 8081, "Protocol": "http",
                                "Services": [{"Name": "web-b", "Hosts": ["old.example.test"]}]}]
    tg = api.get("/v1/config/terminating-gateway/entry-tgw").json()
    assert [s["Name"] for s in tg["Services"]] == ["outside-x"]

    wait_for(lambda: running(api, "gw-entries", 4), timeout=180, what="the gateway job running")
    web = f"http://127.0.0.1:{ports['http']}/"
    wait_for(lambda: curl("-H", "Host: old.example.test", web).stdout == "web-b says hello to old.example.test",
             timeout=60, what="web-b through the gateway by the job's host")
    (gw_alloc,) = [a["ID"] for a in allocs(api, "gw-entries") if a["TaskGroup"] == "gw"]
    pid = wait_for(lambda: proxy_pid(gw_alloc), timeout=10, what="the gateway proxy's process")

    # new hosts through PUT /v1/config: checked as Consul does (web-b speaks tcp so far) ...
    entry = {"Kind": "ingress-gateway", "Name": "entry-gw", "Listeners": [
        {"Port": 8081, "Protocol": "http", "Services": [{"Name": "web-b", "Hosts": ["new.example.test"]}]}]}
    r = put(api, entry)
    assert r.status_code == 400 and 'service "web-b" has protocol "tcp"' in r.text, r.text
    assert put(api, {"Kind": "service-defaults", "Name": "web-b", "Protocol": "http"}).json() is True
    assert put(api, entry).json() is True
    # ... and followed by the running gateway: the new host answers, the old one is a 404
    wait_for(lambda: curl("-H", "Host: new.example.test", web).stdout == "web-b says hello to new.example.test",
             timeout=60, what="web-b by the entry's new host")
    r = curl("-H", "Host: old.example.test", "-w", "\n%{http_code}", web)
    assert r.stdout.endswith("\n404") and 'serves host "old.example.test"' in r.stdout, r.stdout
    # the catalog says what the gateway carries now
    rows = api.get("/v1/catalog/gateway-services/entry-gw").json()
    assert [(r["Service"]["Name"], r["Port"], r["Hosts"]) for r in rows] == [("web-b", 8081, ["new.example.test"])]

    # an http service's discovery chain is honoured: a router sends /c to web-c (split, retries
    # and timeouts go the same way, as a sidecar's HTTP upstream)
    assert put(api, {"Kind": "service-defaults", "Name": "web-c", "Protocol": "http"}).json() is True
    assert put(api, {"Kind": "service-router", "Name": "web-b", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/c"}}, "Destination": {"Service": "web-c"}}]}).json() is True
    wait_for(lambda: curl("-H", "Host: new.example.test", web + "c").stdout == "web-c says hello to new.example.test",
             timeout=60, what="/c routed to web-c through the gateway")
    assert curl("-H", "Host: new.example.test", web).stdout == "web-b says hello to new.example.test"

    # a listener added through the entry binds its port (the job's network maps it already)
    extra = f"http://127.0.0.1:{ports['extra']}/"
    entry["Listeners"].append({"Port": 8082, "Protocol": "http", "Services": [{"Name": "web-b"}]})
    assert put(api, entry).json() is True
    wait_for(lambda: curl("-H", "Host: web-b.ingress.test", extra).stdout == "web-b says hello to web-b.ingress.test",
             timeout=60, what="web-b on the listener the entry added")
    # and removed again: the port is closed (curl cannot connect)
    entry["Listeners"].pop()
    assert put(api, entry).json() is True
    wait_for(lambda: curl("-H", "Host: web-b.ingress.test", extra).returncode == 7, timeout=30,
             what="the removed listener's port closed")
    assert curl("-H", "Host: new.example.test", web).stdout == "web-b says hello to new.example.test"
    # a listener on a port the job's network does not map: bound, and the gateway's log says so
    entry["Listeners"].append({"Port": 8083, "Protocol": "http", "Services": [{"Name": "web-b"}]})
    assert put(api, entry).json() is True

    def gateway_log() -> str:
        return api.get(f"/v1/client/fs/logs/{gw_alloc}", params={
            "task": "connect-ingress-entry-gw", "type": "stdout", "plain": "true"}).text
    line = wait_for(lambda: next((ln for ln in gateway_log().splitlines() if '"listener-added"' in ln
                                  and '"port":8083' in ln), None), timeout=30, what="the listener-added line")
    assert "no port of the group's network maps to 8083" in line and "to = 8083" in line, line
    entry["Listeners"].pop()
    assert put(api, entry).json() is True

    log = gateway_log()
    assert '"event":"config-entry"' in log and "internal-error" not in log, log[-2000:]

    # all of it without a restart: the same allocation, the same proxy process
    assert [a["ID"] for a in allocs(api, "gw-entries") if a["TaskGroup"] == "gw"] == [gw_alloc]
    assert proxy_pid(gw_alloc) == pid

    # a terminating gateway a job runs: its linked services come from the job (identity, catalog)
    r = put(api, {"Kind": "terminating-gateway", "Name": "entry-tgw",
                  "Services": [{"Name": "outside-x"}, {"Name": "outside-y"}]})
    assert r.status_code == 409, r.text
    assert 'is run by job "gw-entries", which links outside-x' in r.text and "change the job's gateway" in r.text
    # how a linked service is reached may change here
    r = put(api, {"Kind": "terminating-gateway", "Name": "entry-tgw",
                  "Services": [{"Name": "outside-x", "SNI": "x.example.test"}]})
    assert r.json() is True, r.text
    (tgw_alloc,) = [a["ID"] for a in allocs(api, "gw-entries") if a["TaskGroup"] == "tgw"]
    wait_for(lambda: any('"config-entry"' in ln and '"changed":true' in ln for ln in api.get(
        f"/v1/client/fs/logs/{tgw_alloc}", params={"task": "connect-terminating-entry-tgw", "type": "stdout",
                                                    "plain": "true"}).text.splitlines()),
             timeout=30, what="the terminating gateway applying its changed entry")

    # stopping the job leaves the entries, as Nomad does
    assert api.delete("/v1/job/gw-entries").status_code == 200
    wait_for(lambda: running(api, "gw-entries", 0), timeout=60, what="the job stopped")
    assert api.get("/v1/config/ingress-gateway/entry-gw").status_code == 200
    # and running it again writes the job's block over what PUT /v1/config changed
    register(api, JOB % {**ports, **ARGS}, "gw-entries")
    assert api.get("/v1/config/ingress-gateway/entry-gw").json()["Listeners"][0]["Services"] == [
        {"Name": "web-b", "Hosts": ["old.example.test"]}]


def test_a_gateway_reads_its_own_entry_with_service_read_as_in_consul():
    """With ACLs on, an ingress/terminating gateway entry is readable with `service:read` on the
    gateway's name (so the gateway's workload identity can follow it); other entries need
    operator:read."""
    a = MeshAgent(extra=["-acl-enabled"]).start()
    try:
        root = {"X-Nomad-Token": a.http.put("/v1/acl/bootstrap").json()["SecretID"]}

        def token(name: str, rules: str) -> dict[str, str]:
            assert a.http.put(f"/v1/acl/policy/{name}", json={"Name": name, "Rules": rules},
                              headers=root).status_code == 200
            tok = a.http.put("/v1/acl/token", json={"Name": name, "Policies": [name]}, headers=root).json()
            return {"X-Consul-Token": tok["SecretID"]}
        ig = {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
            {"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "api"}]}]}
        assert a.http.put("/v1/config", json=ig, headers=root).json() is True
        assert a.http.put("/v1/config", json={"Kind": "service-defaults", "Name": "ig", "Protocol": "tcp"},
                          headers=root).json() is True
        gw = token("igread", 'service "ig" {\n  policy = "read"\n}\n')
        assert a.http.get("/v1/config/ingress-gateway/ig", headers=gw).json()["Listeners"] == ig["Listeners"]
        r = a.http.get("/v1/config/service-defaults/ig", headers=gw)
        assert r.status_code == 403 and "operator:read" in r.text, r.text
        other = token("apiread", 'service "api" {\n  policy = "read"\n}\n')
        r = a.http.get("/v1/config/ingress-gateway/ig", headers=other)
        assert r.status_code == 403 and 'service "ig" read, for its ingress-gateway entry' in r.text, r.text
    finally:
        a.close()
