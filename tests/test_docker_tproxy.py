"""countdash on the docker driver with a transparent proxy instead of an upstream block.

The dashboard's container dials `count-api.virtual.consul:9001`, a name only the agent's DNS
knows: the container shares the pause container's namespace, so its DNS (whatever resolv.conf
the engine gave it) is redirected to the agent, and its connection to the virtual IP to the
group's sidecar, which dials count-api's sidecar over mTLS. A deny intention stops it. Stopping
the job leaves no container, namespace or iptables rule behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from .agent_util import allocs, register, wait_for
from .docker_util import agent as docker_agent
from .docker_util import containers_of, engine, iptables_mentions, netns_names

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking and iptables need root")

JOB = """
job "tpdash" {
  datacenters = ["dc1"]
  group "api" {
    network { mode = "bridge" }
    service {
      name = "count-api"
      port = "9001"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "docker"
      config { image = "hashicorpnomad/counter-api:v1" }
    }
  }
  group "dashboard" {
    network {
      mode = "bridge"
      port "http" { to = 9002 }
    }
    service {
      name = "count-dashboard"
      port = "9002"
      connect {
        sidecar_service {
          proxy {
            transparent_proxy {}
          }
        }
      }
    }
    task "dashboard" {
      driver = "docker"
      env { COUNTING_SERVICE_URL = "http://count-api.virtual.consul:9001" }
      config {
        image = "hashicorpnomad/counter-dashboard:v1"
        ports = ["http"]
      }
    }
  }
}
"""


def test_docker_tasks_reach_count_api_through_the_transparent_proxy():
    client = engine()
    agent = docker_agent(extra=["-dev-connect"])
    api = agent.api()
    ids: list[str] = []
    try:
        register(api, JOB)
        running = wait_for(lambda: (lambda a: a if len(a) == 2 else None)(
            [a for a in allocs(api, "tpdash") if a["ClientStatus"] == "running"]), timeout=180,
            what=f"both groups running (agent log {agent.log_path})")
        ids = [a["ID"] for a in running]
        (dash,) = [a for a in running if a["TaskGroup"] == "dashboard"]
        full = api.get(f"/v1/allocation/{dash['ID']}").json()
        (port,) = [p["Value"] for p in full["AllocatedResources"]["Shared"]["Ports"] if p["Label"] == "http"]

        def count() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/count", timeout=5) as r:
                return json.loads(r.read())

        first = wait_for(lambda: (lambda c: c if c.get("count", 0) > 0 else None)(count()), timeout=90,
                         what="the dashboard counting through the transparent proxy")
        wait_for(lambda: count()["count"] > first["count"], what="the count grows")
        (web,) = [c for c in containers_of(client, dash["ID"]) if c.labels.get("yurt.task") == "dashboard"]
        assert web.attrs["HostConfig"]["NetworkMode"].startswith("container:")

        # the dashboard's sidecar carried it: its log has the redirected connection, allowed
        def sidecar_log(alloc_id: str, service: str) -> list[dict]:
            text = api.get(f"/v1/client/fs/logs/{alloc_id}",
                           params={"task": f"connect-proxy-{service}", "plain": "true"}).text
            return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
        wait_for(lambda: [e for e in sidecar_log(dash["ID"], "count-dashboard") if e.get("dir") == "upstream"
                          and e.get("dst") == "count-api" and e.get("verdict") == "allowed"],
                 what="the dashboard sidecar's log of the redirected connection")

        # a deny intention stops it (count-api's sidecar refuses), and deleting it restores it
        env = {**os.environ, "YURT_ADDR": agent.url}
        cli = [sys.executable, "-m", "yurt.cli.main", "intention"]
        res = subprocess.run([*cli, "create", "-deny", "count-dashboard", "count-api"], capture_output=True,
                             text=True, env=env, timeout=60)
        assert res.returncode == 0, res.stderr
        (api_alloc,) = [a for a in running if a["TaskGroup"] == "api"]
        # (the dashboard asks count-api only when its own /api/count is asked)
        wait_for(lambda: count()["count"] == -1, timeout=60, what="the dashboard showing count-api unreachable")
        wait_for(lambda: [e for e in sidecar_log(api_alloc["ID"], "count-api") if e.get("dir") == "inbound"
                          and e.get("verdict") == "denied" and e.get("src") == "count-dashboard"],
                 timeout=30, what="count-api's sidecar log of the denied connection")   # written after it closes
        res = subprocess.run([*cli, "delete", "count-dashboard", "count-api"], capture_output=True,
                             text=True, env=env, timeout=60)
        assert res.returncode == 0, res.stderr
        wait_for(lambda: count()["count"] > first["count"], timeout=60,
                 what="the dashboard counting again once the intention is gone")
    finally:
        api.delete("/v1/job/tpdash", params={"purge": "true"})
        for alloc_id in ids:
            wait_for(lambda a=alloc_id: not containers_of(client, a), timeout=90, what="no container left")
            wait_for(lambda a=alloc_id: a not in netns_names(), timeout=60, what="namespace removed")
            wait_for(lambda a=alloc_id: not iptables_mentions(a), timeout=60, what="iptables rules removed")
        api.close()
        agent.stop()
