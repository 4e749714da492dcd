"""The orchestrator core end to end: a real agent, real processes, its HTTP API and python-nomad."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading

import httpx
import pytest

from .agent_util import (AgentProcess, alloc_processes, allocs, register, task_events, tcp_queues, wait_for,
                         wait_request_read)


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


@pytest.fixture
def api(agent):
    with agent.api() as c:
        yield c


def raw_job(name: str, command: str, *, kind: str = "service", count: int = 1, restart: str = "",
            reschedule: str = "reschedule {\n      attempts = 0\n      unlimited = false\n    }") -> str:
    return f'''
job "{name}" {{
  type = "{kind}"
  group "g" {{
    count = {count}
    {restart}
    {reschedule if kind == "service" else ""}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", {command!r}]
      }}
      resources {{
        memory = 32
      }}
    }}
  }}
}}
'''.replace("'", '"') if "'" not in command else None


def sh_job(name: str, script: str, **kw) -> str:
    text = raw_job(name, "SCRIPT", **kw)
    escaped = script.replace("\\", "\\\\").replace('"', '\\"')
    return text.replace('"SCRIPT"', f'"{escaped}"')


def test_batch_job_completes(api):
    register(api, sh_job("batch-ok", "echo hello from $NOMAD_JOB_NAME", kind="batch"))
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "batch-ok") if a["ClientStatus"] == "complete"],
                        what="batch allocation complete")
    assert alloc["TaskStates"]["t"]["State"] == "dead" and not alloc["TaskStates"]["t"]["Failed"]
    out = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "plain": "true"}).text
    assert out == "hello from batch-ok\n"
    wait_for(lambda: api.get("/v1/job/batch-ok").json()["Status"] == "dead", what="job dead")


def test_crash_loop_follows_the_restart_policy(api):
    restart = 'restart {\n      attempts = 2\n      interval = "30s"\n      delay = "1s"\n      mode = "fail"\n    }'
    register(api, sh_job("crash", "echo boom >&2; exit 3", restart=restart))
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "crash") if a["ClientStatus"] == "failed"],
                        what="allocation failed after restarts")
    state = alloc["TaskStates"]["t"]
    assert state["Failed"] is True and state["Restarts"] == 2
    types = [e["Type"] for e in task_events(api, alloc["ID"], "t")]
    assert types.count("Restarting") == 2 and types.count("Terminated") == 3
    assert types[-1] == "Not Restarting"
    # no reschedule (attempts = 0): the job stays with its one failed allocation
    assert len(allocs(api, "crash")) == 1


def test_missing_command_is_a_failed_to_start_event(api):
    restart = 'restart {\n      attempts = 1\n      interval = "30s"\n      delay = "1s"\n      mode = "fail"\n    }'
    text = raw_job("nocmd", "x", restart=restart).replace('"/bin/sh"', '"/no/such/command"')
    register(api, text)
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "nocmd") if a["ClientStatus"] == "failed"],
                        what="allocation failed")
    events = task_events(api, alloc["ID"], "t")
    failures = [e for e in events if e["Type"] == "Driver Failure"]
    assert len(failures) == 2, events  # the first try and the one restart
    for e in failures:
        assert e["DisplayMessage"] == 'failed to start: exec: "/no/such/command": no such executable file', e
    assert [e["Type"] for e in events][-1] == "Not Restarting"
    assert alloc["TaskStates"]["t"]["Restarts"] == 1


def test_run_update_scale_stop(api):
    register(api, sh_job("web", "echo v1; exec sleep 600", count=1))
    wait_for(lambda: [a for a in allocs(api, "web") if a["ClientStatus"] == "running"], what="v1 running")
    # scale 1 -> 3: two more, the first untouched
    first = allocs(api, "web")[0]["ID"]
    register(api, sh_job("web", "echo v1; exec sleep 600", count=3))
    running = wait_for(lambda: (lambda r: r if len(r) == 3 else None)(
        [a for a in allocs(api, "web") if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run"]),
        what="3 running")
    assert first in {a["ID"] for a in running}
    assert sorted(a["Name"] for a in running) == ["web.g[0]", "web.g[1]", "web.g[2]"]
    # update the command: destructive, every allocation replaced by version 2
    register(api, sh_job("web", "echo v2; exec sleep 600", count=3))
    wait_for(lambda: (lambda r: len(r) == 3)([a for a in allocs(api, "web") if a["ClientStatus"] == "running"
                                               and a["JobVersion"] == 2]), what="v2 running")
    assert api.get("/v1/job/web").json()["Version"] == 2
    versions = api.get("/v1/job/web/versions").json()["Versions"]
    assert [v["Version"] for v in versions] == [2, 1, 0]
    # scale down to 1: the highest indexes stop first
    register(api, sh_job("web", "echo v2; exec sleep 600", count=1))
    live = wait_for(lambda: (lambda r: r if len(r) == 1 else None)(
        [a for a in allocs(api, "web") if a["DesiredStatus"] == "run" and a["ClientStatus"] == "running"]),
        what="1 left")
    assert live[0]["Name"] == "web.g[0]"
    # stop
    r = api.delete("/v1/job/web")
    assert r.status_code == 200 and r.json()["EvalID"]
    every = wait_for(lambda: (lambda r: r if all(a["ClientStatus"] in ("complete", "failed", "lost") for a in r)
                              else None)(allocs(api, "web")), what="all stopped")
    # 1 + 2 (scale up) + 3 (v2) allocations, each stopped by the server: complete, none failed or lost
    assert len(every) == 6, every
    assert [(a["DesiredStatus"], a["ClientStatus"]) for a in every] == [("stop", "complete")] * 6
    job = api.get("/v1/job/web").json()
    assert job["Stop"] is True and job["Status"] == "dead"
    summary = api.get("/v1/job/web/summary").json()["Summary"]["g"]
    assert summary == {"Queued": 0, "Complete": 6, "Failed": 0, "Running": 0, "Starting": 0, "Lost": 0,
                       "Unknown": 0}
    # purge
    assert api.delete("/v1/job/web", params={"purge": "true"}).status_code == 200
    assert api.get("/v1/job/web").status_code == 404


def test_unplaceable_job_says_why(api):
    text = sh_job("needs-docker", "true").replace('driver = "raw_exec"', 'driver = "docker"')
    text = text.replace('config {\n        command = "/bin/sh"', 'config {\n        image = "x"\n        command = "/bin/sh"')
    ev_id = register(api, text)["EvalID"]
    ev = wait_for(lambda: (lambda e: e if e["Status"] != "pending" else None)(api.get(f"/v1/evaluation/{ev_id}").json()),
                  what="eval done")
    metric = ev["FailedTGAllocs"]["g"]
    assert metric["ConstraintFiltered"] == {"missing driver docker": 1}, metric
    assert ev["BlockedEval"]
    assert api.get(f"/v1/evaluation/{ev['BlockedEval']}").json()["Status"] == "blocked"


def test_bad_job_body_is_400_and_nothing_is_stored(api):
    before = api.get("/v1/jobs").json()
    r = api.put("/v1/jobs", json={"Job": {"ID": "bad job", "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t"}]}]}})
    assert r.status_code == 400
    assert "job validation failed" in r.text and "driver" in r.text
    assert api.put("/v1/jobs", content=b"{not json").status_code == 400
    assert api.get("/v1/jobs").json() == before


def test_errors_as_nomad_gives_them(api):
    r = api.get("/v1/job/does-not-exist")
    assert r.status_code == 404 and r.text == "job not found"
    assert api.get("/v1/allocation/nope").text == "alloc not found"
    assert api.get("/v1/nothing/here").status_code == 404


def test_blocking_query_wakes_on_change(agent, api):
    r = api.get("/v1/jobs")
    index = int(r.headers["X-Nomad-Index"])
    assert "wakeup" not in [j["ID"] for j in r.json()]
    # A wait longer than the test's patience: if the change does not wake it, the read times out.
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
    try:
        conn.request("GET", f"/v1/jobs?index={index}&wait=10m")
        port = conn.sock.getsockname()[1]
        # in flight: the agent has read the whole request off the connection...
        wait_request_read(port, agent.port)
        # ...and not answered it: nothing has changed yet
        assert tcp_queues(port, agent.port)[1] == 0, "the blocking query was answered before the registration"
        register(api, sh_job("wakeup", "exit 0", kind="batch"))
        try:
            resp = conn.getresponse()
        except TimeoutError:
            pytest.fail("the blocking query did not wake when a job was registered")
        assert resp.status == 200
        ids = [j["ID"] for j in json.loads(resp.read())]
        assert int(resp.getheader("X-Nomad-Index")) > index and "wakeup" in ids
    finally:
        conn.close()


def test_python_nomad_client_reads_our_agent(agent, api):
    import nomad

    register(api, sh_job("pn", "exec sleep 600"))
    wait_for(lambda: [a for a in allocs(api, "pn") if a["ClientStatus"] == "running"], what="pn running")
    n = nomad.Nomad(host="127.0.0.1", port=agent.port, timeout=10)
    assert "pn" in [j["ID"] for j in n.jobs.get_jobs()]
    job = n.job.get_job("pn")
    assert job["ID"] == "pn" and job["TaskGroups"][0]["Tasks"][0]["Driver"] == "raw_exec"
    (alloc,) = n.job.get_allocations("pn")
    assert alloc["ClientStatus"] == "running" and alloc["TaskGroup"] == "g"
    nodes = n.nodes.get_nodes()
    assert nodes and nodes[0]["Status"] == "ready" and alloc["NodeID"] == nodes[0]["ID"]
    assert n.node.get_node(nodes[0]["ID"])["Drivers"]["raw_exec"]["Detected"] is True
    assert n.evaluations.get_evaluations()
    api.delete("/v1/job/pn")


def test_agent_restart_reattaches_to_running_tasks(tmp_path):
    data = str(tmp_path / "data")
    script = 'echo $$ > "$NOMAD_ALLOC_DIR/pid"; exec sleep 600'
    agent = AgentProcess(data_dir=data).start()
    try:
        with agent.api() as api:
            register(api, sh_job("keep", script))
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "keep") if a["ClientStatus"] == "running"],
                                what="running")
            before = task_events(api, alloc["ID"], "t")
        assert [e["Type"] for e in before] == ["Received", "Task Setup", "Started"], before
        pid_file = tmp_path / "data" / "client" / "alloc" / alloc["ID"] / "alloc" / "pid"
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="pid file"))
        agent.kill(signal.SIGKILL)
        os.kill(pid, 0)  # the task outlived its agent
        agent = AgentProcess(data_dir=data, port=agent.port).start()
        wait_for(lambda: f"re-attached to allocation {alloc['ID'][:8]}" in agent.log(),
                 what="the restarted client re-attached to the allocation")
        with agent.api() as api:
            wait_for(lambda: api.get(f"/v1/allocation/{alloc['ID']}").json()["ClientStatus"] == "running",
                     what="running after restart")
            (again,) = [a for a in allocs(api, "keep") if a["DesiredStatus"] == "run"]
            assert again["ID"] == alloc["ID"]
            # The stop reaches the task through the client's reconcile with the server, which comes
            # after the one at its start, where a wrong implementation would start a second copy.
            api.delete("/v1/job/keep")
            wait_for(lambda: api.get(f"/v1/allocation/{alloc['ID']}").json()["ClientStatus"] == "complete",
                     what="stopped")
            assert int(pid_file.read_text()) == pid  # not started again: a second copy writes its pid
            events = task_events(api, alloc["ID"], "t")
            # the same task history, continued by the stop; not a fresh runner's
            assert events[:len(before)] == before, events
            assert [e["Type"] for e in events[len(before):]] == ["Killing", "Terminated", "Killed"], events
        wait_for(lambda: not _alive(pid), timeout=30, what="the original task stopped by the re-attached runner")
        wait_for(lambda: not alloc_processes(alloc["ID"]), timeout=30, what="no process of the allocation left")
    finally:
        agent.stop()


def _alive(pid: int) -> bool:
    """Running, not a zombie (this machine's pid 1 may not reap what the executor left)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_mid_write_loses_and_duplicates_nothing(tmp_path):
    data = str(tmp_path / "data")
    agent = AgentProcess(data_dir=data).start()
    accepted: list[tuple[str, int]] = []
    stop = threading.Event()

    def writer():
        with agent.api() as api:
            i = 0
            while not stop.is_set():
                try:
                    r = register(api, sh_job(f"w{i}", "exit 0", kind="batch"))
                except (httpx.HTTPError, AssertionError):
                    return
                accepted.append((f"w{i}", r["JobModifyIndex"]))
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    wait_for(lambda: len(accepted) >= 15, what="some jobs written")
    agent.kill(signal.SIGKILL)
    stop.set()
    t.join(timeout=60)
    agent = AgentProcess(data_dir=data, port=agent.port).start()
    try:
        with agent.api() as api:
            r = api.get("/v1/jobs")
            ids = {j["ID"] for j in r.json()}
            assert {name for name, _ in accepted} <= ids
            assert int(r.headers["X-Nomad-Index"]) >= max(i for _, i in accepted)
            every = api.get("/v1/allocations").json()
            assert len({a["ID"] for a in every}) == len(every)
            per_name = {}
            for a in every:
                assert a["JobID"] in ids
                if a["DesiredStatus"] == "run":
                    per_name.setdefault(a["Name"], []).append(a["ID"])
            assert all(len(v) == 1 for v in per_name.values()), per_name
            # and the agent goes on: the jobs that were pending get placed after the restart
            wait_for(lambda: all(a["ClientStatus"] == "complete" for a in allocs(api, accepted[-1][0])) and
                     allocs(api, accepted[-1][0]), what="last job ran")
    finally:
        agent.stop()


def test_check_index_registers_only_at_the_expected_version(api):
    from yurt.jobspec import load
    doc = load(sh_job("guarded", "exec sleep 600"), "g.nomad").job.to_document()
    assert api.put("/v1/jobs", json={**doc, "EnforceIndex": True, "JobModifyIndex": 0}).status_code == 200
    current = api.get("/v1/job/guarded").json()["JobModifyIndex"]
    stale = api.put("/v1/jobs", json={**doc, "EnforceIndex": True, "JobModifyIndex": current - 1})
    assert stale.status_code == 400 and "conflicting job modify index" in stale.text
    assert api.put("/v1/jobs", json={**doc, "EnforceIndex": True, "JobModifyIndex": current}).status_code == 200
    api.delete("/v1/job/guarded", params={"purge": "true"})


def test_node_that_misses_its_heartbeat_goes_down_and_its_allocations_move(api):
    """A second node registers and never heartbeats: after its TTL it is down, its allocation is
    lost, and the scheduler places a replacement on the node that is alive, which runs it."""
    real = api.get("/v1/nodes").json()[0]
    node = api.get(f"/v1/node/{real['ID']}").json()
    fake_id = "00000000-0000-4000-8000-00000000fa4e"
    # a node registers with its own SecretID (as Nomad's, the server refuses one without)
    node.update({"ID": fake_id, "SecretID": "00000000-0000-4000-8000-0000000005ec", "Name": "fake-node",
                 "Status": "initializing"})
    node["Attributes"] = {**node["Attributes"], "unique.hostname": "fake-node"}
    r = api.put("/v1/internal/node/register", json={"Node": node})
    assert r.status_code == 200, r.text
    text = sh_job("mover", "exec sleep 600").replace(
        '  group "g" {', '  group "g" {\n    affinity {\n      attribute = "${node.unique.name}"\n'
                        '      value = "fake-node"\n      weight = 100\n    }', 1)
    register(api, text)
    (first,) = wait_for(lambda: allocs(api, "mover"), what="placed")
    assert first["NodeID"] == fake_id  # the affinity put it on the node that will die
    wait_for(lambda: api.get(f"/v1/node/{fake_id}").json()["Status"] == "down", timeout=90, what="node down")
    lost = wait_for(lambda: (lambda a: a if a["ClientStatus"] == "lost" else None)(
        api.get(f"/v1/allocation/{first['ID']}").json()), timeout=120, what="lost")
    assert lost["DesiredStatus"] == "stop"
    # the replacement is placed on the live node under the same name (the lost one is stopped),
    # and that node's client runs it
    repl = wait_for(lambda: [a for a in allocs(api, "mover") if a["ClientStatus"] == "running"],
                    timeout=120, what="replacement running")
    assert repl[0]["NodeID"] == real["ID"] and repl[0]["Name"] == first["Name"] and repl[0]["ID"] != first["ID"]
    assert repl[0]["DesiredStatus"] == "run"
    api.delete("/v1/job/mover", params={"purge": "true"})


def test_parse_and_validate_endpoints(api):
    from .conftest import SEED
    r = api.put("/v1/jobs/parse", json={"JobHCL": SEED.read_text(), "Canonicalize": True})
    assert r.status_code == 200 and r.json()["ID"] == "countdash" and r.json()["Priority"] == 50
    raw = api.put("/v1/jobs/parse", json={"JobHCL": SEED.read_text()}).json()
    assert raw["Priority"] is None  # without Canonicalize, defaults are not filled
    bad = api.put("/v1/jobs/parse", json={"JobHCL": 'job "x" {\n  group "g" {\n    cout = 1\n  }\n}\n'})
    assert bad.status_code == 400 and "JobHCL:3:5" in bad.text and 'did you mean "count"' in bad.text
    ok = api.put("/v1/validate/job", json={"Job": r.json()}).json()
    assert ok["ValidationErrors"] == [] and ok["Error"] == ""
    broken = dict(r.json(), Priority=500)
    res = api.put("/v1/validate/job", json={"Job": broken}).json()
    assert res["ValidationErrors"] and "priority" in res["Error"].lower()


def test_dev_agent_stopped_with_sigterm_takes_its_tasks_with_it(tmp_path):
    agent = AgentProcess().start()
    try:
        with agent.api() as api:
            register(api, sh_job("goner", 'echo $$ > "$NOMAD_ALLOC_DIR/pid"; exec sleep 600'))
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "goner") if a["ClientStatus"] == "running"],
                                what="running")
            data = api.get("/v1/agent/self").json()["config"]["data_dir"]
        pid_file = f"{data}/client/alloc/{alloc['ID']}/alloc/pid"
        pid = int(wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read().strip(), what="pid"))
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=120)
        assert "Yurt agent stopped" in agent.log()
        wait_for(lambda: not _alive(pid), timeout=30, what="the task gone with its dev agent")
    finally:
        agent.kill()
