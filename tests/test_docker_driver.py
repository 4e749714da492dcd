"""The docker driver against a real engine (podman's Docker API socket): run, logs, kill_timeout,
bad input (missing image, bad config key, engine down), no leaks, re-attach after an agent restart,
and removal of the containers of allocations the client no longer has."""

from __future__ import annotations

import json
import os
import signal
import tempfile

import pytest

from yurt.client.drivers.base import DriverError
from yurt.client.drivers.docker import DockerDriver, validate_config

from .agent_util import allocs, free_port, register, task_events, wait_for
from .docker_util import containers_of, engine, iptables_mentions, netns_names
from .docker_util import agent as docker_agent

IMAGE = "yurt/python-base:3.11"


def py_job(name: str, code: str, *, kind: str = "service", extra_task: str = "", extra_config: str = "",
           group: str = "", restart: str = "", image: str = IMAGE) -> str:
    return f'''
job "{name}" {{
  type = "{kind}"
  group "g" {{
    {group}
    {restart}
    task "t" {{
      driver = "docker"
      {extra_task}
      config {{
        image = "{image}"
        args  = ["-c", {json.dumps(code)}]
        {extra_config}
      }}
      resources {{
        cpu    = 100
        memory = 64
      }}
    }}
  }}
}}
'''


FAIL_FAST = 'restart {\n      attempts = 1\n      interval = "30s"\n      delay = "1s"\n      mode = "fail"\n    }'


@pytest.fixture(scope="module")
def env():
    client = engine()
    agent = docker_agent()
    api = agent.api()
    yield client, agent, api
    api.close()
    agent.stop()


def running_alloc(api, job: str) -> dict:
    (alloc,) = wait_for(lambda: [a for a in allocs(api, job) if a["ClientStatus"] == "running"], timeout=90,
                        what=f"{job} running")
    return alloc


def test_config_is_checked_and_errors_name_the_key():
    with pytest.raises(DriverError, match='unknown docker config key "imag"') as e:
        validate_config({"imag": "x"})
    assert not e.value.recoverable
    with pytest.raises(DriverError, match='"args" must be a list of strings'):
        validate_config({"image": "x", "args": "not a list"})
    with pytest.raises(DriverError, match=r'needs config \{ image = ... \}'):
        validate_config({"command": "x"})
    with pytest.raises(DriverError, match='"privileged" must be a boolean'):
        validate_config({"image": "x", "privileged": "yes"})
    assert validate_config({"image": "x", "labels": [{"a": "b"}]})["labels"] == {"a": "b"}


def test_engine_not_running_means_driver_not_detected_with_the_reason():
    fp = DockerDriver("unix:///run/yurt-test-no-such-engine.sock").fingerprint()
    assert not fp.detected and not fp.healthy
    assert "unix:///run/yurt-test-no-such-engine.sock" in fp.description and "not reachable" in fp.description


def test_engine_fingerprint(env):
    _, _agent, api = env
    (node,) = api.get("/v1/nodes").json()
    info = api.get(f"/v1/node/{node['ID']}").json()
    docker = info["Drivers"]["docker"]
    assert docker["Detected"] and docker["Healthy"]
    assert info["Attributes"]["driver.docker"] == "1" and info["Attributes"]["driver.docker.version"]


def test_batch_container_runs_and_its_logs_land_in_alloc_logs(env):
    client, _, api = env
    code = "import os,sys; print('hello from', os.environ['NOMAD_JOB_NAME'], os.environ['GREETING']); " \
           "print('to stderr', file=sys.stderr)"
    register(api, py_job("dk-batch", code, kind="batch", extra_task='env {\n GREETING = "hi"\n }'))
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "dk-batch") if a["ClientStatus"] == "complete"],
                        timeout=90, what="batch complete")
    out = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "plain": "true"}).text
    assert out == "hello from dk-batch hi\n"
    err = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "type": "stderr", "plain": "true"}).text
    assert err == "to stderr\n"
    wait_for(lambda: not containers_of(client, alloc["ID"]), what="container removed after it ended")


def test_task_user_runs_the_container_as_that_user(env):
    """`user = "nobody"` in a docker task: the container's process runs as nobody, not as the
    image's user (Nomad's docker driver sets the container's User from the task's user)."""
    _, _, api = env
    code = "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.getuid())"
    register(api, py_job("dk-user", code, kind="batch", extra_task='user = "nobody"'))
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "dk-user") if a["ClientStatus"] == "complete"],
                        timeout=90, what="batch complete")
    out = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "plain": "true"}).text
    assert out == "nobody 65534\n"


def test_kill_timeout_then_sigkill(env):
    client, _, api = env
    # PID 1 in a container ignores SIGTERM without a handler: only SIGKILL after kill_timeout ends it
    register(api, py_job("dk-kill", "import time; print('up', flush=True); time.sleep(600)",
                         extra_task='kill_signal = "SIGTERM"\n      kill_timeout = "3s"'))
    alloc = running_alloc(api, "dk-kill")
    (c,) = containers_of(client, alloc["ID"])
    assert c.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    api.delete("/v1/job/dk-kill")
    wait_for(lambda: [a for a in allocs(api, "dk-kill") if a["ClientStatus"] == "complete"], timeout=60,
             what="stopped")
    events = task_events(api, alloc["ID"], "t")
    killing, terminated, killed = events[-3:]
    assert [killing["Type"], terminated["Type"], killed["Type"]] == ["Killing", "Terminated", "Killed"], events
    assert killing["DisplayMessage"] == "Sent interrupt. Waiting 3s before force killing", killing
    assert killing["Details"]["kill_signal"] == "SIGTERM"
    # SIGTERM ignored: the container ended by the SIGKILL (128 + 9) once the 3 s had passed
    assert terminated["ExitCode"] == 137 and terminated["DisplayMessage"] == "Exit Code: 137", terminated
    assert 3e9 <= terminated["Time"] - killing["Time"] < 20e9, (killing, terminated)
    wait_for(lambda: not containers_of(client, alloc["ID"]), what="container removed")


def test_missing_image_that_cannot_be_pulled_is_a_clear_event_and_follows_restart_policy(env):
    client, _, api = env
    register(api, py_job("dk-noimage", "pass", image="yurt-test/does-not-exist:v9", restart=FAIL_FAST))
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "dk-noimage") if a["ClientStatus"] == "failed"],
                        timeout=120, what="allocation failed")
    events = task_events(api, alloc["ID"], "t")
    failures = [e for e in events if e["Type"] == "Driver Failure"]
    assert len(failures) == 2, events  # first try and one restart
    msg = failures[0]["DisplayMessage"] + failures[0].get("DriverError", "")
    assert "image yurt-test/does-not-exist:v9 not found and cannot be pulled" in msg, failures[0]
    assert [e["Type"] for e in events].count("Restarting") == 1
    assert not containers_of(client, alloc["ID"])


def test_bad_config_key_is_refused_before_anything_runs(env):
    _, _, api = env
    from yurt.jobspec import JobspecError, load
    text = py_job("dk-badkey", "pass", extra_config='colour = "blue"')
    with pytest.raises(JobspecError, match='unknown docker config key "colour"'):
        load(text, "dk-badkey.nomad")
    # the API refuses the same job (a client that skips local validation), and stores nothing
    from yurt.jobspec.loader import read_hcl
    doc, _ = read_hcl(text, "dk-badkey.nomad", {})
    r = api.put("/v1/jobs", json={"Job": doc})
    assert r.status_code == 400 and 'unknown docker config key "colour"' in r.text
    assert api.get("/v1/job/dk-badkey").status_code == 404


def test_container_that_exits_at_once_follows_the_restart_policy(env):
    client, _, api = env
    register(api, py_job("dk-crash", "import sys; print('boom', file=sys.stderr); sys.exit(3)", restart=FAIL_FAST))
    (alloc,) = wait_for(lambda: [a for a in allocs(api, "dk-crash") if a["ClientStatus"] == "failed"],
                        timeout=90, what="allocation failed")
    events = task_events(api, alloc["ID"], "t")
    terminated = [e for e in events if e["Type"] == "Terminated"]
    assert len(terminated) == 2 and all(e["ExitCode"] == 3 for e in terminated), events
    wait_for(lambda: not containers_of(client, alloc["ID"]), what="no container left")


@pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")
def test_bridge_group_leaks_nothing_after_stop(env):
    client, _, api = env
    port = free_port()
    code = ("import http.server, os; http.server.ThreadingHTTPServer(('0.0.0.0', 8080), "
            "http.server.SimpleHTTPRequestHandler).serve_forever()")
    group = f'network {{\n mode = "bridge"\n port "http" {{\n static = {port}\n to = 8080\n }}\n }}'
    register(api, py_job("dk-bridge", code, group=group, extra_config='work_dir = "/local"\n ports = ["http"]'))
    alloc = running_alloc(api, "dk-bridge")
    import urllib.request
    wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3).status == 200,
             what="the container served through the group's port mapping")
    names = {c.name for c in containers_of(client, alloc["ID"])}
    assert names == {f"t-{alloc['ID']}", f"yurt-pause-{alloc['ID']}"}
    assert alloc["ID"] in netns_names() and iptables_mentions(alloc["ID"])
    api.delete("/v1/job/dk-bridge")
    wait_for(lambda: not containers_of(client, alloc["ID"]), timeout=60, what="no container, no pause container")
    wait_for(lambda: alloc["ID"] not in netns_names(), what="namespace gone")
    wait_for(lambda: not iptables_mentions(alloc["ID"]), what="iptables rules gone")


def test_agent_restart_reattaches_and_orphans_are_removed():
    client = engine()
    data_dir = tempfile.mkdtemp(prefix="yurt-docker-reattach-")
    port = free_port()
    agent = docker_agent(data_dir=data_dir, port=port)
    orphan = None
    try:
        api = agent.api()
        register(api, py_job("dk-reattach", "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.5)"))
        alloc = running_alloc(api, "dk-reattach")
        (c,) = containers_of(client, alloc["ID"])
        before = task_events(api, alloc["ID"], "t")
        assert [e["Type"] for e in before][-1] == "Started", before
        api.close()
        agent.kill(signal.SIGKILL)
        assert client.containers.get(c.id).status == "running"  # the task outlives the agent
        # a container of an allocation the client does not have, labelled as this client's
        orphan = client.containers.run(IMAGE, ["-c", "import time; time.sleep(600)"], detach=True,
                                       labels={"yurt.alloc_id": "00000000-0000-0000-0000-00000000dead",
                                               "yurt.task": "x", "yurt.data_dir": f"{data_dir}/client"})
        agent = docker_agent(data_dir=data_dir, port=port)
        api = agent.api()
        wait_for(lambda: not [x for x in client.containers.list(all=True) if x.id == orphan.id],
                 what="the orphan container removed at client start")
        wait_for(lambda: f"re-attached to allocation {alloc['ID'][:8]}" in agent.log(),
                 what="the restarted client re-attached to the allocation")
        again = running_alloc(api, "dk-reattach")
        assert again["ID"] == alloc["ID"]
        (c2,) = containers_of(client, alloc["ID"])
        assert c2.id == c.id and c2.status == "running"  # re-attached, not restarted
        types = [e["Type"] for e in task_events(api, alloc["ID"], "t")]
        assert types.count("Started") == 1, types

        def logs() -> str:
            return api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "plain": "true"}).text

        n = logs().count("tick")
        wait_for(lambda: logs().count("tick") > n + 2, what="logs still followed after the restart")
        # The stop reaches the task through the client's reconcile with the server, which comes
        # after the one at its start, where a wrong implementation would start a second copy.
        api.delete("/v1/job/dk-reattach")
        wait_for(lambda: api.get(f"/v1/allocation/{alloc['ID']}").json()["ClientStatus"] == "complete",
                 timeout=60, what="stopped")
        events = task_events(api, alloc["ID"], "t")
        # the same task history, continued by the stop; not a fresh runner's
        assert events[:len(before)] == before, events
        assert [e["Type"] for e in events[len(before):]] == ["Killing", "Terminated", "Killed"], events
        wait_for(lambda: not containers_of(client, alloc["ID"]), timeout=60, what="container removed")
        api.close()
    finally:
        agent.stop()
        if orphan is not None:
            try:
                orphan.remove(force=True)
            except Exception:  # noqa: BLE001
                pass
