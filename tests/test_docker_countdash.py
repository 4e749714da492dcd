"""The seed's connect.nomad, byte for byte, with the docker driver on `yurt agent -dev-connect`.

The images are the ones `make images` builds locally from examples/countdash (no registry):
the dashboard on host port 9002 shows the count through the mesh; stopping the job leaves no
container, pause container, namespace or iptables rule behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from .agent_util import allocs, wait_for
from .conftest import SEED
from .docker_util import containers_of, engine, iptables_mentions, netns_names
from .docker_util import agent as docker_agent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

DASHBOARD = "http://127.0.0.1:9002"


def count() -> dict:
    with urllib.request.urlopen(DASHBOARD + "/api/count", timeout=5) as r:
        return json.loads(r.read())


def test_seed_connect_nomad_runs_with_the_docker_driver(tmp_path):
    client = engine()
    job_file = tmp_path / "connect.nomad"
    job_file.write_bytes(SEED.read_bytes())  # byte for byte
    agent = docker_agent(extra=["-dev-connect"])
    try:
        env = {**os.environ, "YURT_ADDR": agent.url}
        res = subprocess.run([sys.executable, "-m", "yurt.cli.main", "job", "run", "-detach", str(job_file)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        api = agent.api()
        running = wait_for(lambda: (lambda a: a if len(a) == 2 else None)(
            [a for a in allocs(api, "countdash") if a["ClientStatus"] == "running"]), timeout=180,
            what=f"countdash running (agent log {agent.log_path})")
        first = wait_for(lambda: (lambda c: c if c["count"] > 0 else None)(count()), timeout=90,
                         what="the dashboard counting through the mesh")
        wait_for(lambda: count()["count"] > first["count"], what="the count grows")
        ids = [a["ID"] for a in running]
        for alloc_id in ids:
            names = sorted(c.name for c in containers_of(client, alloc_id))
            assert len(names) == 2 and any(n.startswith("yurt-pause-") for n in names), names
            assert alloc_id in netns_names()
        (api_alloc,) = [a for a in running if a["TaskGroup"] == "api"]
        (web,) = [c for c in containers_of(client, api_alloc["ID"]) if c.labels.get("yurt.task") == "web"]
        assert web.attrs["HostConfig"]["NetworkMode"].startswith("container:")
        # the app's logs reach alloc/logs like any driver's (copied from the engine as they come)
        def logs() -> str:
            return api.get(f"/v1/client/fs/logs/{api_alloc['ID']}", params={"task": "web", "plain": "true"}).text
        wait_for(lambda: "counter-api listening on 0.0.0.0:9001" in logs(), timeout=30,
                 what="counter-api's first line in its alloc logs")

        res = subprocess.run([sys.executable, "-m", "yurt.cli.main", "job", "stop", "-detach", "countdash"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        for alloc_id in ids:
            wait_for(lambda a=alloc_id: not containers_of(client, a), timeout=90, what="no container left")
            wait_for(lambda a=alloc_id: a not in netns_names(), timeout=60, what="namespace removed")
            wait_for(lambda a=alloc_id: not iptables_mentions(a), timeout=60, what="iptables rules removed")
        api.close()
    finally:
        agent.stop()
