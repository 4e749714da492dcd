"""`yurt mesh explain` across agents: a server-only agent plans, the client agent that runs the
allocations runs the probes (`POST /v1/internal/mesh/probe`, reached at the address its node
advertises), and the CLI gets the same answer from either agent (a client-only agent forwards
explain to its server)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from .agent_util import wait_for
from .mesh_agent import MeshAgent
from .test_client_only import ClientAgent
from .test_mesh_explain import (APP_PORT, DST, DST_JOB, HOPS, SRC, SRC_JOB, assert_only_wrong, explain, healthy,
                                process, run_job, running_alloc, wrong_at, yurt)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")


@pytest.fixture(scope="module")
def nodes():
    server = MeshAgent().start()
    client = ClientAgent([f"127.0.0.1:{server.port}"]).start()
    api = server.api()
    try:
        run_job(api, DST_JOB)
        run_job(api, SRC_JOB)
        for j in (SRC, DST):
            wait_for(lambda j=j: running_alloc(api, j), timeout=120, what=f"{j} running")
        wait_for(healthy(api), timeout=90, what="the path explained healthy")
        yield server, client, api
    finally:
        for j in (SRC, DST):
            api.delete(f"/v1/job/{j}", params={"purge": "true"})
        wait_for(lambda: all(a["ClientStatus"] != "running" for a in api.get("/v1/allocations").json()),
                 timeout=60, what="every allocation stopped")
        api.close()
        client.close()
        server.close()


def test_the_server_gets_the_node_probes_and_either_agent_answers(nodes):
    server, client, api = nodes
    (node,) = api.get("/v1/nodes").json()
    for agent in (server, client):
        cli = yurt(agent, "mesh", "explain", "-json", SRC, DST)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        result = json.loads(cli.stdout)
        assert [r["Hop"] for r in result["Rows"]] == HOPS and all(r["Status"] == "ok" for r in result["Rows"])
        assert all(r["Where"].endswith(f"on {node['Name']}") for r in result["Rows"] if r["Where"].startswith("alloc ")
                   and "->" not in r["Where"]), result["Rows"]


def test_a_node_side_fault_comes_back_through_the_server(nodes):
    _, client, api = nodes
    alloc = wait_for(lambda: running_alloc(api, DST), what=f"{DST} running")
    pid = process(alloc, "EXPLAIN_DST_APP")
    os.kill(pid, signal.SIGUSR1)
    try:
        row = assert_only_wrong(wait_for(wrong_at(api, "app listening"), timeout=30, what="the app closed"),
                                "app listening")
        assert f"does not accept connections on 127.0.0.1:{APP_PORT} in allocation {alloc[:8]}'s namespace" \
            in row["Detail"], row
        cli = yurt(client, "mesh", "explain", SRC, DST)
        assert cli.returncode == 1 and "app listening" in cli.stdout, cli.stdout + cli.stderr
    finally:
        os.kill(pid, signal.SIGUSR2)
    wait_for(healthy(api), timeout=30, what="the path healthy again")
    assert explain(api)["OK"] is True
