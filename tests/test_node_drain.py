"""Node lifecycle against real agents on loopback: a server-only agent and two client-only agents
("node-a", "node-b", separate data dirs and ports, raw_exec tasks running `sleep`).

Drain (`yurt node drain`) moves allocations max_parallel at a time and waits for replacements to
be healthy; eligibility keeps the scheduler away from a node; -disable cancels a drain; purge
forgets a node; a node that misses heartbeats goes down and, when it comes back, stops what was
replaced meanwhile. Everything is observed as a user sees it: the CLI's output and exit code,
the HTTP API, and the processes running on the machine.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from yurt.structs.times import parse_rfc3339

from .agent_util import AgentProcess, allocs, env_processes, register, wait_for
from .conftest import YURT, run_yurt
from .mesh_agent import MeshAgent


class ClientNode(AgentProcess):
    """`yurt agent -config <file>`: client only, named `name`, raw_exec on, pointed at `server`."""

    def __init__(self, name: str, server: str) -> None:
        super().__init__(data_dir=tempfile.mkdtemp(prefix=f"yurt-{name}-"))
        self.name = name
        self.config = f"{self.data_dir}.hcl"
        Path(self.config).write_text(
            f'name = "{name}"\nclient {{\n  enabled = true\n  servers = ["{server}"]\n}}\n'
            'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\n')

    def start(self) -> ClientNode:
        args = [sys.executable, "-m", "yurt.cli.main", "agent", "-config", self.config, "-data-dir",
                self.data_dir, "-http-port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 60, what=f"client agent {self.name} (log: {self.log_path})")
        return self

    def freeze(self) -> None:
        """SIGSTOP the agent process alone: its tasks (under their own executors) keep running."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.thaw()
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        Path(self.config).unlink(missing_ok=True)


class Cluster:
    def __init__(self, heartbeat_ttl: str | None = None) -> None:
        self.config = None
        extra: list[str] = []
        if heartbeat_ttl:
            fd, self.config = tempfile.mkstemp(prefix="yurt-server-", suffix=".hcl")
            os.write(fd, f'server {{\n  enabled = true\n  min_heartbeat_ttl = "{heartbeat_ttl}"\n}}\n'.encode())
            os.close(fd)
            extra = ["-config", self.config]
        self.server = MeshAgent(extra=extra).start()
        self.a = ClientNode("node-a", f"127.0.0.1:{self.server.port}").start()
        self.b = ClientNode("node-b", f"127.0.0.1:{self.server.port}").start()
        self.api = httpx.Client(base_url=self.server.url, timeout=30)
        wait_for(lambda: len(self.nodes()) == 2, what="both nodes registered")

    def nodes(self) -> dict[str, dict]:
        return {n["Name"]: n for n in self.api.get("/v1/nodes").json() if n["Status"] == "ready"}

    def node_id(self, name: str) -> str:
        return self.nodes()[name]["ID"]

    def node(self, node_id: str) -> dict:
        return self.api.get(f"/v1/node/{node_id}").json()

    def cli(self, *args: str, stdin: bytes = b"", timeout: float = 180) -> subprocess.CompletedProcess:
        """The real `yurt` command (stdin a pipe, not a terminal)."""
        return run_yurt(*args, input=stdin, env={"YURT_ADDR": self.server.url, "NO_COLOR": "1"}, timeout=timeout)

    def reset(self) -> None:
        """No jobs, no drains, both nodes eligible."""
        for job in self.api.get("/v1/jobs").json():
            self.api.delete(f"/v1/job/{job['ID']}", params={"purge": "true"})
        wait_for(lambda: all(a["ClientStatus"] not in ("running", "pending")
                             for a in self.api.get("/v1/allocations").json()),
                 timeout=90, what="every allocation stopped")
        for node in self.nodes().values():
            if node["Drain"]:
                self.api.put(f"/v1/node/{node['ID']}/drain", json={"DrainSpec": None, "MarkEligible": True})
            self.api.put(f"/v1/node/{node['ID']}/eligibility", json={"Eligibility": "eligible"})

    def close(self) -> None:
        try:
            self.reset()
        finally:
            self.api.close()
            self.a.close()
            self.b.close()
            self.server.close()
            if self.config:
                Path(self.config).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh(cluster):
    cluster.reset()
    return cluster


def sleep_job(name: str, count: int, migrate: str = "", *, kind: str = "service", seconds: int = 3600) -> str:
    return f'''job "{name}" {{
  type = "{kind}"
  group "g" {{
    count = {count}
    {migrate}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sleep"
        args    = ["{seconds}"]
      }}
      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
}}
'''


def migrate_block(max_parallel: int = 1, min_healthy_time: str = "2s") -> str:
    return (f'migrate {{\n      max_parallel = {max_parallel}\n      health_check = "task_states"\n'
            f'      min_healthy_time = "{min_healthy_time}"\n      healthy_deadline = "1m"\n    }}')


def running_on(api: httpx.Client, job: str, node_id: str, n: int) -> list[dict]:
    """Wait until exactly `n` allocations of `job` run on `node_id` (and none elsewhere)."""
    def ok():
        live = [a for a in allocs(api, job) if a["DesiredStatus"] == "run"]
        good = [a for a in live if a["NodeID"] == node_id and a["ClientStatus"] == "running"]
        return good if len(good) == n == len(live) else None
    return wait_for(ok, timeout=90, what=f"{n} allocation(s) of {job} running on {node_id[:8]}")


def job_processes(job: str) -> list[int]:
    """Live task processes of `job` on this machine (their environment names the job)."""
    return env_processes("NOMAD_JOB_NAME", job)


# -- drain ---------------------------------------------------------------------------------------
def test_drain_moves_allocations_max_parallel_at_a_time(fresh):
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    r = c.cli("node", "eligibility", "-disable", "node-b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'Node "{b}" scheduling eligibility set: ineligible for scheduling'
    register(c.api, sleep_job("mover", 3, migrate_block(max_parallel=1, min_healthy_time="2s")))
    old = running_on(c.api, "mover", a, 3)      # node-b is ineligible: everything lands on node-a
    r = c.cli("node", "eligibility", "-enable", b[:8])   # a unique ID prefix names a node too
    assert r.returncode == 0 and "eligible for scheduling" in r.stdout, r.stderr

    drain = subprocess.Popen([*YURT, "node", "drain", "-enable", "-yes", "-deadline", "5m", "node-a"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             env={**os.environ, "YURT_ADDR": c.server.url, "NO_COLOR": "1"})
    # While it runs: never more than max_parallel (1) allocations of the group in transition, i.e.
    # marked but not stopped yet, or placed on node-b and not healthy yet.
    most, polls = 0, 0
    deadline = time.monotonic() + 180
    while drain.poll() is None and time.monotonic() < deadline:
        live = [x for x in allocs(c.api, "mover") if x["DesiredStatus"] == "run"]
        marked = [x for x in live if (x["DesiredTransition"] or {}).get("Migrate")]
        starting = [x for x in live if x["NodeID"] == b and not (x["DeploymentStatus"] or {}).get("Healthy")]
        most = max(most, len(marked) + len(starting))
        polls += 1
        time.sleep(0.05)
    out, err = drain.communicate(timeout=60)
    assert drain.returncode == 0, out + err
    assert polls > 20 and most == 1, (polls, most)

    new = sorted(running_on(c.api, "mover", b, 3), key=lambda x: x["CreateIndex"])
    # one at a time: each replacement was created after the previous one became healthy (the
    # last one's health decided nothing more, so the drain did not wait for it)
    for prev, nxt in itertools.pairwise(new):
        assert prev["DeploymentStatus"]["Healthy"] is True
        assert nxt["CreateTime"] >= parse_rfc3339(prev["DeploymentStatus"]["Timestamp"])
    for x in old:
        done = c.api.get(f"/v1/allocation/{x['ID']}").json()
        assert done["DesiredStatus"] == "stop" and done["ClientStatus"] == "complete"
        assert done["DesiredTransition"]["Migrate"] is True and done["DesiredDescription"] == "alloc is being migrated"
        assert f'Alloc "{x["ID"][:8]}" marked for migration' in out
    assert out.count("marked for migration") == 3
    assert f'Node "{a}" drain strategy set' in out
    assert f"Drain complete for node {a}" in out and f'All allocations on node "{a}" have stopped' in out
    # the completed drain leaves node-a ineligible, with its history
    node = c.node(a)
    assert node["DrainStrategy"] is None and node["Drain"] is False
    assert node["SchedulingEligibility"] == "ineligible" and node["LastDrain"]["Status"] == "complete"
    assert [e["Message"] for e in node["Events"]][-2:] == ["Node drain strategy set", "Node drain complete"]
    status = c.cli("node", "status", a)
    assert "Node drain complete" in status.stdout and "Last Drain" in status.stdout


def test_eligibility_keeps_new_allocations_off_a_node_until_enabled_again(fresh):
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    for name in ("node-a", "node-b"):
        assert c.cli("node", "eligibility", "-disable", name).returncode == 0
    register(c.api, sleep_job("waiter", 1))
    wait_for(lambda: any(e["Status"] == "blocked" for e in c.api.get("/v1/job/waiter/evaluations").json()),
             what="the job blocked")
    assert allocs(c.api, "waiter") == []
    status = c.cli("job", "status", "waiter")
    assert "Placement Failure" in status.stdout and "No nodes were eligible" in status.stdout
    # -self on the agent of node-b (a client-only agent: it forwards to the server)
    r = c.cli("node", "eligibility", "-enable", "-self", "-address", c.b.url)
    assert r.returncode == 0 and r.stdout.strip() == f'Node "{b}" scheduling eligibility set: eligible for scheduling'
    running_on(c.api, "waiter", b, 1)
    assert c.node(a)["SchedulingEligibility"] == "ineligible"
    status = c.cli("node", "status", "-self", "-address", c.a.url)
    assert "Name          = node-a" in status.stdout and "Eligibility   = ineligible" in status.stdout
    assert [e["Message"] for e in c.node(b)["Events"]][-2:] == [
        "Node marked as ineligible for scheduling", "Node marked as eligible for scheduling"]


def test_drain_disable_cancels_and_the_rest_stays(fresh):
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    c.cli("node", "eligibility", "-disable", "node-b")
    # min_healthy_time: long enough that the disable below comes before the second allocation is
    # marked, even on a loaded machine (4s was not: the CLI calls in between took longer)
    register(c.api, sleep_job("halfway", 2, migrate_block(max_parallel=1, min_healthy_time="15s")))
    running_on(c.api, "halfway", a, 2)
    c.cli("node", "eligibility", "-enable", "node-b")
    r = c.cli("node", "drain", "-enable", "-yes", "-detach", "node-a")
    assert r.returncode == 0 and r.stdout.strip() == f'Node "{a}" drain strategy set', r.stderr
    assert c.node(a)["DrainStrategy"]["Deadline"] == 3600 * 10**9   # the default deadline: 1h

    def first_moved():
        live = [x for x in allocs(c.api, "halfway") if x["DesiredStatus"] == "run"]
        moved = [x for x in live if x["NodeID"] == b and x["ClientStatus"] == "running"]
        return moved[0] if len(moved) == 1 else None
    moved = wait_for(first_moved, timeout=90, what="the first allocation moved to node-b")
    # `-monitor` follows the drain under way (by node name) and says when it is canceled: exit 1
    follow = subprocess.Popen([*YURT, "node", "drain", "-monitor", "node-a"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              env={**os.environ, "YURT_ADDR": c.server.url, "NO_COLOR": "1"})
    r = c.cli("node", "drain", "-disable", "-yes", "node-a")
    assert r.returncode == 0 and r.stdout.strip() == f'Node "{a}" drain strategy unset', r.stderr
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 1, out + err
    assert "Ctrl-C to stop monitoring: will not cancel the node drain" in out
    assert out.rstrip().endswith(f"Drain canceled for node {a}")
    node = c.node(a)
    assert node["DrainStrategy"] is None and node["LastDrain"]["Status"] == "canceled"
    assert node["SchedulingEligibility"] == "eligible"      # -disable makes it eligible (no -keep-ineligible)
    assert "Node drain disabled" in [e["Message"] for e in node["Events"]]
    # had the drain gone on, the second allocation would have been marked once the first
    # replacement had run 15s; well past that, it still runs on node-a, unmarked
    started = parse_rfc3339(moved["TaskStates"]["t"]["StartedAt"])
    wait_for(lambda: time.time_ns() - started > 19 * 10**9, timeout=40, what="19s past the replacement's start")
    stay = [x for x in allocs(c.api, "halfway") if x["NodeID"] == a and x["DesiredStatus"] == "run"]
    assert len(stay) == 1 and stay[0]["ClientStatus"] == "running"
    assert not (stay[0]["DesiredTransition"] or {}).get("Migrate")


def test_draining_the_last_eligible_node_warns_and_exits_2_when_allocations_are_blocked(fresh):
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    c.cli("node", "eligibility", "-disable", "node-b")
    register(c.api, sleep_job("stranded", 1, migrate_block(min_healthy_time="1s")))
    (old,) = running_on(c.api, "stranded", a, 1)
    r = c.cli("node", "drain", "-enable", "-yes", "-deadline", "2m", "node-a")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Warning:" in r.stderr and "is the last eligible node" in r.stderr and 'node pool "default"' in r.stderr
    assert f'Alloc "{old["ID"][:8]}" was stopped, but no node can take its replacement' in r.stdout
    assert "yurt job status stranded" in r.stdout
    assert "1 migrated allocation(s) could not be placed on another node; blocked job(s): stranded" in r.stdout
    status = c.cli("job", "status", "stranded")
    assert "Placement Failure" in status.stdout
    # capacity comes back: the blocked placement goes to node-b
    assert c.cli("node", "eligibility", "-enable", "node-b").returncode == 0
    running_on(c.api, "stranded", b, 1)


def test_bad_input_is_refused_with_clear_messages_and_exit_codes(fresh):
    c = fresh
    a = c.node_id("node-a")
    ghost = "00000000-0000-4000-8000-000000000000"
    # the API: unknown nodes are 404s, bad bodies 400s naming the field
    for path, body in ((f"/v1/node/{ghost}/drain", {"DrainSpec": {"Deadline": 0}}),
                       (f"/v1/node/{ghost}/eligibility", {"Eligibility": "ineligible"}),
                       (f"/v1/node/{ghost}/purge", None)):
        r = c.api.put(path, json=body)
        assert (r.status_code, r.text) == (404, f'node "{ghost}" not found: `yurt node status` lists the nodes')
    r = c.api.put(f"/v1/node/{a}/eligibility", json={"Eligibility": "maybe"})
    assert r.status_code == 400 and r.text == 'invalid scheduling eligibility "maybe": use "eligible" or "ineligible"'
    r = c.api.put(f"/v1/node/{a}/drain", json={"DrainSpec": {"Deadline": "1h"}})
    assert r.status_code == 400 and "DrainSpec.Deadline must be a whole number of nanoseconds" in r.text
    r = c.api.put(f"/v1/node/{a}/drain", json={"DrainSpec": None, "Force": True})
    assert r.status_code == 400 and r.text.startswith('unknown field "Force" in the drain request')
    assert c.node(a)["SchedulingEligibility"] == "eligible"

    # the CLI: exit 1 and a message naming what is wrong
    r = c.cli("node", "drain", "-enable", "-yes", "no-such-node")
    assert r.returncode == 1
    assert r.stderr.strip() == 'Error: No node with ID, ID prefix or name "no-such-node" found (yurt node status lists the nodes)'
    r = c.cli("node", "eligibility", "-disable", "no-such-node")
    assert r.returncode == 1 and "No node with ID, ID prefix or name" in r.stderr
    r = c.cli("node", "drain", "-enable", "-yes", "-deadline", "soon", "node-a")
    assert r.returncode == 1 and "invalid -deadline 'soon'" in r.stderr and "30s" in r.stderr
    r = c.cli("node", "drain", "-enable", "-yes", "-deadline", "1h", "-no-deadline", "node-a")
    assert r.returncode == 1 and "-deadline and -no-deadline cannot be used together" in r.stderr
    r = c.cli("node", "drain", "-yes", "node-a")
    assert r.returncode == 1 and "either the -enable or the -disable flag must be set" in r.stderr
    r = c.cli("node", "drain", "-enable", "-yes", "-bogus", "node-a")
    assert r.returncode == 1 and "unknown flag -bogus" in r.stderr
    r = c.cli("node", "drain", "-enable", "-yes", "-self")    # the server agent has no client
    assert r.returncode == 1 and "runs no client, so it has no node of its own" in r.stderr
    r = c.cli("node", "drain", "-enable", "node-a")          # no -yes, and no terminal to ask on
    assert r.returncode == 1 and "pass -yes to confirm" in r.stderr
    assert c.node(a)["DrainStrategy"] is None and c.node(a)["SchedulingEligibility"] == "eligible"

    # a draining node cannot be made eligible: max_parallel = 0 keeps it draining (no deadline)
    register(c.api, sleep_job("pinned", 1, migrate_block(max_parallel=0)))
    (pinned,) = wait_for(lambda: [x for x in allocs(c.api, "pinned") if x["ClientStatus"] == "running"],
                         what="pinned running")
    where = pinned["NodeID"]
    r = c.cli("node", "drain", "-enable", "-yes", "-no-deadline", "-ignore-system", "-meta", "reason=kernel",
              "-detach", where)
    assert r.returncode == 0, r.stderr
    node = c.node(where)
    assert node["DrainStrategy"]["Deadline"] == 0 and node["DrainStrategy"]["ForceDeadline"] == "0001-01-01T00:00:00Z"
    assert node["DrainStrategy"]["IgnoreSystemJobs"] is True and node["DrainStrategy"]["DrainSpec"] == {
        "Deadline": 0, "IgnoreSystemJobs": True}
    assert node["LastDrain"]["Status"] == "draining" and node["LastDrain"]["Meta"] == {"reason": "kernel"}
    r = c.cli("node", "eligibility", "-enable", where)
    assert r.returncode == 1
    assert "can not set node's scheduling eligibility to eligible while it is draining" in r.stderr
    r = c.cli("node", "drain", "-disable", "-keep-ineligible", "-yes", where)
    assert r.returncode == 0
    assert c.node(where)["SchedulingEligibility"] == "ineligible" and c.node(where)["DrainStrategy"] is None
    assert not (c.api.get(f"/v1/allocation/{pinned['ID']}").json()["DesiredTransition"] or {}).get("Migrate")


def test_drain_force_stops_everything_at_once(fresh):
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    c.cli("node", "eligibility", "-disable", "node-b")
    register(c.api, sleep_job("forced", 3, migrate_block(max_parallel=1, min_healthy_time="30s")))
    running_on(c.api, "forced", a, 3)
    c.cli("node", "eligibility", "-enable", "node-b")
    r = c.cli("node", "drain", "-enable", "-yes", "-force", "node-a")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(deadline reached: what was left was stopped at once)" in r.stdout
    assert r.stdout.count("marked for migration") == 3
    running_on(c.api, "forced", b, 3)
    events = c.node(a)["Events"]
    assert events[-1]["Message"] == "Node drain complete" and events[-1]["Details"] == {"deadline_reached": "true"}


def test_batch_allocations_finish_in_place_until_the_deadline(fresh):
    """A drain leaves batch allocations to finish where they run; at the deadline what is still
    running is migrated at once (and replaced elsewhere)."""
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    c.cli("node", "eligibility", "-disable", "node-b")
    # long enough to still be running when the drain's monitor starts, even on a loaded machine
    register(c.api, sleep_job("quick", 1, kind="batch", seconds=8))
    register(c.api, sleep_job("slow", 1, kind="batch", seconds=3600))
    (quick,) = running_on(c.api, "quick", a, 1)
    (slow,) = running_on(c.api, "slow", a, 1)
    c.cli("node", "eligibility", "-enable", "node-b")
    r = c.cli("node", "drain", "-enable", "-yes", "-deadline", "16s", "node-a")
    assert r.returncode == 0, r.stdout + r.stderr
    done = c.api.get(f"/v1/allocation/{quick['ID']}").json()
    assert (done["NodeID"], done["DesiredStatus"], done["ClientStatus"]) == (a, "run", "complete")
    assert not (done["DesiredTransition"] or {}).get("Migrate")
    assert f'Alloc "{quick["ID"][:8]}" status running -> complete' in r.stdout
    assert f'Alloc "{quick["ID"][:8]}" marked for migration' not in r.stdout
    assert f'Alloc "{slow["ID"][:8]}" marked for migration' in r.stdout and "deadline reached" in r.stdout
    moved = c.api.get(f"/v1/allocation/{slow['ID']}").json()
    assert moved["DesiredStatus"] == "stop" and moved["DesiredTransition"]["Migrate"] is True
    running_on(c.api, "slow", b, 1)


# -- the drainer in process: health by checks ----------------------------------------------------
def test_checks_must_pass_for_min_healthy_time_before_a_migration(tmp_path):
    """With health_check = "checks", an allocation counts as healthy once its tasks run and every
    check passed for min_healthy_time (as the server saw it); only then does the drainer mark
    one (max_parallel = 1) for migration, with a node-drain eval for its job."""
    from yurt.server.server import Server
    from yurt.state import StateStore
    from yurt.structs import Allocation, DrainSpec, MigrateStrategy, Service, ServiceCheck, TaskState
    from yurt.structs.times import rfc3339

    from .test_scheduler_helpers import make_job, make_node

    S = 10**9
    store = StateStore(str(tmp_path / "state.db"))
    srv = Server(store)            # not started: the test drives the drainer's ticks itself
    try:
        n1, n2 = make_node(1), make_node(2)
        srv.register_node(n1)
        srv.register_node(n2)
        group = {"services": [Service(name="api", checks=[ServiceCheck(name="alive", type="tcp")])],
                 "migrate": MigrateStrategy(max_parallel=1, health_check="checks", min_healthy_time=10 * S,
                                            healthy_deadline=300 * S)}
        store.upsert_job(make_job("api", count=2, driver="raw_exec", config={"command": "/bin/sleep"},
                                  group_kw=group))
        job = store.job("default", "api")
        t0 = time.time_ns()
        ids = []
        for i in range(2):
            alloc = Allocation(id=f"alloc-{i}", name=f"api.g[{i}]", node_id=n1.id, job_id="api", job=job,
                               task_group="g", client_status="running", create_time=t0 - 20 * S,
                               task_states={"app": TaskState(state="running", started_at=rfc3339(t0 - 20 * S))})
            store.upsert_allocs([alloc])
            srv.catalog.register({"ID": f"svc-{i}", "Name": "api", "Port": 1000 + i, "AllocID": alloc.id,
                                  "Checks": [{"CheckID": f"chk-{i}", "Name": "alive", "TTL": "1h",
                                              "Status": "critical"}]}, n1.id, n1.name)
            ids.append(alloc.id)
        srv.drainer.update_drain(n1.id, DrainSpec(deadline=0))

        def marked():
            return [i for i in ids if store.alloc(i).desired_transition.migrate]

        srv.drainer.tick(t0)                       # checks critical: nothing is healthy
        assert marked() == [] and all(store.alloc(i).deployment_status is None for i in ids)
        for i in range(2):
            srv.catalog.update_check(n1.id, f"chk-{i}", "passing")
        srv.drainer.tick(t0 + S)                   # passing from now on: not for 10s yet
        assert marked() == [] and all(store.alloc(i).deployment_status is None for i in ids)
        srv.drainer.tick(t0 + 11 * S)              # passing for 10s: healthy, one may go
        assert all(store.alloc(i).deployment_status.healthy is True for i in ids)
        assert marked() == ["alloc-0"]
        (ev,) = [e for e in store.evals_by_job("default", "api") if e.triggered_by == "node-drain"]
        assert ev.node_id == n1.id and ev.status == "pending"
        srv.drainer.tick(t0 + 12 * S)              # the marked one no longer counts: no second mark
        assert marked() == ["alloc-0"]
        assert store.node(n1.id).drain_strategy is not None   # its allocations still run
        # a replacement whose check never passes is unhealthy at healthy_deadline (300s after it
        # was created); decided either way, it counts, so the drain goes on (as Nomad's does)
        repl = Allocation(id="alloc-2", name="api.g[0]", node_id=n2.id, job_id="api", job=job, task_group="g",
                          client_status="running", create_time=t0 + 12 * S, previous_allocation="alloc-0",
                          task_states={"app": TaskState(state="running", started_at=rfc3339(t0 + 13 * S))})
        store.upsert_allocs([repl, store.alloc("alloc-0").model_copy(update={"desired_status": "stop"})])
        srv.catalog.register({"ID": "svc-2", "Name": "api", "Port": 1002, "AllocID": "alloc-2",
                              "Checks": [{"CheckID": "chk-2", "Name": "alive", "TTL": "1h", "Status": "critical"}]},
                             n2.id, n2.name)
        srv.drainer.tick(t0 + 100 * S)
        assert store.alloc("alloc-2").deployment_status is None and marked() == ["alloc-0"]
        srv.drainer.tick(t0 + 313 * S)
        assert store.alloc("alloc-2").deployment_status.healthy is False
        assert marked() == ["alloc-0", "alloc-1"]
    finally:
        store.close()


# -- purge and heartbeats: a node that comes back stops what was replaced -----------------------
def test_purge_forgets_the_node_and_a_returning_agent_stops_the_replaced_task(fresh):
    c = fresh
    a, b = c.node_id("node-a"), c.node_id("node-b")
    c.cli("node", "eligibility", "-disable", "node-b")
    register(c.api, sleep_job("purged", 1))
    (old,) = running_on(c.api, "purged", a, 1)
    c.cli("node", "eligibility", "-enable", "node-b")
    wait_for(lambda: len(job_processes("purged")) == 1, what="one task process")
    c.a.freeze()
    try:
        r = c.api.put(f"/v1/node/{a}/purge")
        assert r.status_code == 200 and r.json()["EvalIDs"], r.text
        assert c.api.get(f"/v1/node/{a}").status_code == 404
        (new,) = running_on(c.api, "purged", b, 1)
        lost = c.api.get(f"/v1/allocation/{old['ID']}").json()
        assert (lost["DesiredStatus"], lost["ClientStatus"]) == ("stop", "lost")
        assert new["PreviousAllocation"] == old["ID"]
        assert len(job_processes("purged")) == 2     # node-a's agent is frozen; its task still runs
    finally:
        c.a.thaw()
    # the agent registers again (same ID) and stops the task that was replaced meanwhile
    wait_for(lambda: c.node_id("node-a") == a, timeout=60, what="node-a registered again")
    wait_for(lambda: len(job_processes("purged")) == 1, timeout=60, what="the stale task stopped")
    running_on(c.api, "purged", b, 1)


@pytest.fixture
def short_ttl_cluster():
    c = Cluster(heartbeat_ttl="5s")
    try:
        yield c
    finally:
        c.close()


def test_a_node_back_from_missed_heartbeats_stops_its_replaced_allocations(short_ttl_cluster):
    c = short_ttl_cluster
    a, b = c.node_id("node-a"), c.node_id("node-b")
    c.cli("node", "eligibility", "-disable", "node-b")
    register(c.api, sleep_job("comeback", 2))
    old = running_on(c.api, "comeback", a, 2)
    c.cli("node", "eligibility", "-enable", "node-b")
    wait_for(lambda: len(job_processes("comeback")) == 2, what="two task processes")
    c.a.freeze()
    try:
        wait_for(lambda: c.node(a)["Status"] == "down", timeout=60, what="node-a down")
        new = running_on(c.api, "comeback", b, 2)
        assert sorted(x["PreviousAllocation"] for x in new) == sorted(x["ID"] for x in old)
        for x in old:
            lost = c.api.get(f"/v1/allocation/{x['ID']}").json()
            assert (lost["DesiredStatus"], lost["ClientStatus"]) == ("stop", "lost")
        assert len(job_processes("comeback")) == 4   # the frozen node's tasks still run
    finally:
        c.a.thaw()
    wait_for(lambda: c.node(a)["Status"] == "ready", timeout=60, what="node-a ready again")
    wait_for(lambda: len(job_processes("comeback")) == 2, timeout=60, what="the replaced tasks stopped")
    running_on(c.api, "comeback", b, 2)
    for x in old:
        assert c.api.get(f"/v1/allocation/{x['ID']}").json()["DesiredStatus"] == "stop"
