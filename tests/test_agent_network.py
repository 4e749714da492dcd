"""Bridge networking and the exec driver through a real agent: placement, ports, teardown, crash cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import pytest

from .agent_util import AgentProcess, allocs, free_port, register, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def iptables_mentions(alloc_id: str) -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if alloc_id in line]


def bridge_job(name: str, port: int, driver: str = "raw_exec") -> str:
    return f'''
job "{name}" {{
  group "web" {{
    network {{
      mode = "bridge"
      port "http" {{
        static = {port}
        to     = 8080
      }}
    }}
    task "server" {{
      driver = "{driver}"
      config {{
        command = "/usr/bin/python3"
        args    = ["-m", "http.server", "--bind", "0.0.0.0", "8080"]
      }}
      resources {{
        memory = 64
      }}
    }}
  }}
}}
'''


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


@pytest.mark.parametrize("driver", ["raw_exec", "exec"])
def test_bridge_job_answers_on_its_static_port_and_leaves_nothing(agent, driver):
    port = free_port()
    name = f"br-{driver.replace('_', '')}"
    with agent.api() as api:
        register(api, bridge_job(name, port, driver))
        (alloc,) = wait_for(lambda: [a for a in allocs(api, name) if a["ClientStatus"] == "running"],
                            what="running", timeout=90)
        full = api.get(f"/v1/allocation/{alloc['ID']}").json()
        assert full["NetworkStatus"]["Address"].startswith("172.26.")
        assert alloc["ID"] in netns_names()
        body = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read(),
                        what="server answers through the port mapping")
        assert b"Directory listing" in body
        api.delete(f"/v1/job/{name}", params={"purge": "true"})
        wait_for(lambda: alloc["ID"] not in netns_names(), what="namespace removed")
        wait_for(lambda: not iptables_mentions(alloc["ID"]), what="iptables rules removed")


def test_node_reports_bridge_support(agent):
    with agent.api() as api:
        node = api.get("/v1/nodes").json()[0]
        attrs = api.get(f"/v1/node/{node['ID']}").json()["Attributes"]
    assert attrs["network.bridge"] == "1"
    assert attrs["plugins.cni.version.bridge"]
    assert attrs["driver.exec"] == "1"


def test_crashed_dev_agent_leaves_nothing_for_its_allocations():
    port = free_port()
    first = AgentProcess().start()
    with first.api() as api:
        register(api, bridge_job("crashy", port))
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "crashy") if a["ClientStatus"] == "running"],
                            what="running", timeout=90)
    assert alloc["ID"] in netns_names()
    first.kill(signal.SIGKILL)
    # ... and the allocation's processes die too (as after a reboot or an OOM storm)
    for pid in subprocess.run(["ip", "netns", "pids", alloc["ID"]], capture_output=True, text=True).stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", f"executor .*{alloc['ID']}"], check=False)
    assert alloc["ID"] in netns_names()  # the crash left it behind
    second = AgentProcess().start()
    try:
        wait_for(lambda: alloc["ID"] not in netns_names(), what="namespace cleaned by the new agent")
        assert not iptables_mentions(alloc["ID"])
        links = json.loads(subprocess.run(["ip", "-j", "link", "show", "master", "yurt"],
                                          capture_output=True, text=True).stdout or "[]")
        assert all(alloc["ID"][:8] not in json.dumps(link) for link in links)
    finally:
        second.stop()
