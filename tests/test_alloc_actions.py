"""Nomad's client allocation actions on a real agent: `alloc signal` and `alloc restart`
through /v1/client/allocation/<id>/signal|restart, from python-nomad and from the CLI."""

from __future__ import annotations

import nomad
import pytest

from .agent_util import AgentProcess, allocs, register, wait_for
from .conftest import run_yurt
from .test_agent_core import sh_job

SCRIPT = ("trap 'echo got USR1' USR1; echo started; "
          "while true; do sleep 0.2 & wait $!; done")


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


def _logs(api, alloc_id: str) -> str:
    return api.get(f"/v1/client/fs/logs/{alloc_id}", params={"task": "t", "plain": "true"}).text


def test_signal_and_restart_a_running_task(agent):
    with agent.api() as api:
        register(api, sh_job("acts", SCRIPT))
        try:
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "acts") if a["ClientStatus"] == "running"],
                                timeout=60, what="the job running")
            wait_for(lambda: "started" in _logs(api, alloc["ID"]), what="the task's first line")
            n = nomad.Nomad(host="127.0.0.1", port=agent.port)
            # python-nomad's call: the task's trap prints what it got
            n.client.allocation.signal_allocation(alloc["ID"], "SIGUSR1", task="t")
            wait_for(lambda: "got USR1" in _logs(api, alloc["ID"]), what="the task to get SIGUSR1")
            wait_for(lambda: any(e["Type"] == "Signaling" and e["Details"]["signal"] == "SIGUSR1" for e in
                                 api.get(f"/v1/allocation/{alloc['ID']}").json()["TaskStates"]["t"]["Events"]),
                     what="the Signaling task event")
            # the CLI, with a short ID, restarting in place: same allocation, one more start
            res = run_yurt("alloc", "restart", "-address", agent.url, alloc["ID"][:8], "t")
            assert res.returncode == 0, res.stderr
            state = wait_for(lambda: (s := api.get(f"/v1/allocation/{alloc['ID']}").json()["TaskStates"]["t"])
                             ["Restarts"] == 1 and s["State"] == "running" and s, what="the task restarted")
            assert [e["Type"] for e in state["Events"]].count("Started") == 2
            wait_for(lambda: _logs(api, alloc["ID"]).count("started") == 2, what="the restarted task's first line")
            # bad input: the reason, and the task left alone
            r = api.put(f"/v1/client/allocation/{alloc['ID']}/signal", json={"Signal": "SIGNOPE", "Task": "t"})
            assert r.status_code == 400 and "unknown signal 'SIGNOPE'" in r.text
            r = api.put(f"/v1/client/allocation/{alloc['ID']}/signal", json={"Signal": "SIGUSR1", "Task": "x"})
            assert r.status_code == 404 and 'has no task "x"' in r.text
            res = run_yurt("alloc", "signal", "-address", agent.url, "-s", "SIGUSR1", "ffffffff")
            assert res.returncode == 1 and "No allocation(s)" in res.stderr
            assert api.get(f"/v1/allocation/{alloc['ID']}").json()["ClientStatus"] == "running"
        finally:
            api.delete("/v1/job/acts", params={"purge": "true"})


def test_the_allocation_directory_through_the_fs_api_and_alloc_fs(agent):
    """Nomad's /v1/client/fs/{ls,stat,cat,readat}: the allocation directory, never outside it,
    never a task's secrets; `yurt alloc fs` lists a directory and prints a file."""
    with agent.api() as api:
        register(api, sh_job("fsjob", "printf 'hello fs\\n' > $NOMAD_TASK_DIR/greeting.txt; exec sleep 600"))
        try:
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "fsjob") if a["ClientStatus"] == "running"],
                                timeout=60, what="the job running")
            aid = alloc["ID"]
            top = {e["Name"]: e["IsDir"] for e in api.get(f"/v1/client/fs/ls/{aid}", params={"path": "/"}).json()}
            assert top["alloc"] is True and top["t"] is True
            wait_for(lambda: api.get(f"/v1/client/fs/stat/{aid}", params={"path": "/t/local/greeting.txt"})
                     .status_code == 200, what="the task's file")
            st = api.get(f"/v1/client/fs/stat/{aid}", params={"path": "/t/local/greeting.txt"}).json()
            assert (st["Name"], st["IsDir"], st["Size"], st["ContentType"]) == ("greeting.txt", False, 9, "text/plain")
            assert api.get(f"/v1/client/fs/cat/{aid}", params={"path": "t/local/greeting.txt"}).text == "hello fs\n"
            r = api.get(f"/v1/client/fs/readat/{aid}", params={"path": "/t/local/greeting.txt", "offset": 6,
                                                               "limit": 2})
            assert r.text == "fs"
            n = nomad.Nomad(host="127.0.0.1", port=agent.port)
            assert n.client.cat.read_file(aid, "/t/local/greeting.txt") == "hello fs\n"
            # never outside the allocation directory, never a task's secrets
            r = api.get(f"/v1/client/fs/cat/{aid}", params={"path": "/../../../etc/passwd"})
            assert r.status_code == 403 and "outside the allocation directory" in r.text
            r = api.get(f"/v1/client/fs/ls/{aid}", params={"path": "/t/secrets"})
            assert (r.status_code, r.text) == (403, "Reading secret files is disallowed")
            r = api.get(f"/v1/client/fs/stat/{aid}", params={"path": "/t/nope"})
            assert r.status_code == 404
            # the CLI
            res = run_yurt("alloc", "fs", "-address", agent.url, aid[:8], "t/local")
            assert res.returncode == 0 and "greeting.txt" in res.stdout, res.stderr
            res = run_yurt("alloc", "fs", "-address", agent.url, aid[:8], "t/local/greeting.txt")
            assert (res.returncode, res.stdout) == (0, "hello fs\n")
        finally:
            api.delete("/v1/job/fsjob", params={"purge": "true"})


def test_search_by_prefix_and_fuzzy(agent):
    """Nomad's /v1/search (ID prefixes per context) and /v1/search/fuzzy (names with a text)."""
    with agent.api() as api:
        register(api, sh_job("findme-web", "exec sleep 600"))
        try:
            (alloc,) = wait_for(lambda: allocs(api, "findme-web"), timeout=60, what="an allocation")
            n = nomad.Nomad(host="127.0.0.1", port=agent.port)
            res = n.search.search("findme", "jobs")
            assert res["Matches"]["jobs"] == ["findme-web"] and res["Truncations"]["jobs"] is False
            res = api.put("/v1/search", json={"Prefix": alloc["ID"][:6], "Context": "all"}).json()
            assert alloc["ID"] in res["Matches"]["allocs"] and set(res["Matches"]) >= {"jobs", "nodes", "evals"}
            res = api.put("/v1/search/fuzzy", json={"Text": "dme-w", "Context": "all"}).json()
            assert res["Matches"]["jobs"] == [{"ID": "findme-web", "Scope": ["default"]}]
            res = api.put("/v1/search/fuzzy", json={"Text": "g", "Context": "all"})
            assert res.status_code == 400 and "at least 2 characters" in res.text
            res = api.put("/v1/search", json={"Prefix": "x", "Context": "planets"})
            assert res.status_code == 400 and 'Context "planets" is not one of all' in res.text
        finally:
            api.delete("/v1/job/findme-web", params={"purge": "true"})


def test_allocation_and_host_stats(agent):
    """Nomad's /v1/client/allocation/<id>/stats (each running task's CPU and memory) and
    /v1/client/stats (the host: memory, CPUs, the data dir's disk, uptime)."""
    with agent.api() as api:
        register(api, sh_job("statjob", "exec sleep 600"))
        try:
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "statjob") if a["ClientStatus"] == "running"],
                                timeout=60, what="the job running")
            n = nomad.Nomad(host="127.0.0.1", port=agent.port)
            usage = wait_for(lambda: (u := n.client.allocation.read_allocation_stats(alloc["ID"]))["Tasks"] and u,
                             what="the task's figures")
            assert usage["Tasks"]["t"]["ResourceUsage"]["MemoryStats"]["RSS"] > 0
            assert usage["ResourceUsage"]["MemoryStats"]["RSS"] == usage["Tasks"]["t"]["ResourceUsage"]["MemoryStats"]["RSS"]
            host = n.client.stats.read_stats()
            assert host["Memory"]["Total"] > host["Memory"]["Available"] > 0 and host["CPU"] and host["Uptime"] > 0
            assert host["DiskStats"][0]["Size"] > 0
            r = api.get(f"/v1/client/allocation/{alloc['ID']}/stats", params={"task": "nope"})
            assert r.status_code == 404 and 'task "nope"' in r.text
            node_id = alloc["NodeID"]
            assert api.get("/v1/client/stats", params={"node_id": node_id}).json()["Memory"]["Total"] > 0
            r = api.get("/v1/client/stats", params={"node_id": "no-such-node"})
            assert (r.status_code, r.text) == (404, 'node "no-such-node" not found')
            res = run_yurt("node", "status", "-address", agent.url, "-stats", node_id[:8])
            assert res.returncode == 0 and "Host Resource Utilization" in res.stdout, res.stderr
        finally:
            api.delete("/v1/job/statjob", params={"purge": "true"})
