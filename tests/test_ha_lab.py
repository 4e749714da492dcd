"""Highly available servers on the lab: three server hosts, each with an etcd member and a Yurt
server, and two client hosts running a real job. Faults, in order, on one lab:

* the leader killed (SIGKILL, its etcd member with it) while four clients register 200 jobs:
  every registration that got a 200 exists with exactly its allocations, a new leader leads,
  and a blocking query held on the old leader resumes on another server, missing nothing;
* one etcd member killed: still available;
* two of three killed: writes refused with "no quorum in the state store", stale reads answer,
  nothing half-written, and everything resumes when they return;
* the leader's host cut off: a new leader elsewhere, the old one commits nothing, and rejoins;
* the client's allocations keep running through all of it.

The 200 jobs are placed on simulated nodes (registered and heartbeating through the real API
from this process, as 5,000-node benchmarks do) so that 400 allocations need no processes; the
real job runs on the real client hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from yurt.api.client import YurtClient
from yurt.errors import YurtError
from yurt.jobspec import load
from yurt.structs import (DriverInfo, NodeCpuResources, NodeDiskResources, NodeMemoryResources,
                          NodeResources)

from . import mock
from .agent_util import wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="a lab of hosts needs root (network namespaces)"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed: apt-get install "
                                 "etcd-server etcd-client")]

LAB = "h" + str(os.getpid() % 100000)
SUBNET = f"10.212.{os.getpid() % 250}.0/24"   # test_lab*.py use 10.214-253
SERVERS = ["server1", "server2", "server3"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SIM_NODES = 4
JOBS = 200
CLIENTS = 4


def yurt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def lab_cmd(*args: str, timeout: float = 120) -> str:
    proc = yurt("lab", args[0], "-name", LAB, *args[1:], timeout=timeout)
    assert proc.returncode == 0, f"yurt lab {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


class Lab:
    def __init__(self) -> None:
        self.hosts = {h["name"]: h for h in json.loads(
            open(f"/var/lib/yurt/lab/{LAB}/lab.json").read())["hosts"]}

    def url(self, host: str) -> str:
        return f"http://{self.hosts[host]['address']}:4646"

    def host_of(self, addr: str) -> str:
        ip = addr.rsplit(":", 1)[0]
        return next((n for n, h in self.hosts.items() if h["address"] == ip), "")

    def call(self, host: str, method: str, path: str, body: object = None, timeout: float = 40) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(host) + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with NO_PROXY.open(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def leader(self, asked: list[str] | None = None) -> str:
        """The leader's host name, as the servers in `asked` agree (\"\" if they do not)."""
        seen = set()
        for h in asked or SERVERS:
            status, body = self.call(h, "GET", "/v1/status/leader", timeout=5)
            seen.add(self.host_of(json.loads(body)) if status == 200 and json.loads(body) else "")
        return seen.pop() if len(seen) == 1 else ""


def job_doc(job_id: str, count: int, sim: bool) -> dict:
    """A job for the simulated nodes (node class "sim") or for the real client hosts."""
    text = f'''job "{job_id}" {{
  datacenters = ["dc1"]
  constraint {{
    attribute = "${{node.class}}"
    operator  = "{'=' if sim else '!='}"
    value     = "sim"
  }}
  group "g" {{
    count = {count}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sleep"
        args    = ["3600"]
      }}
      resources {{
        cpu    = 10
        memory = 10
      }}
    }}
  }}
}}
'''
    return {"Job": load(text, f"{job_id}.nomad").job.to_json()}


class SimNodes:
    """Nodes registered and heartbeating through the API (any server: the client fails over)."""

    def __init__(self, servers: list[str], n: int) -> None:
        self.client = YurtClient(servers, timeout=10)
        self.nodes = []
        for i in range(n):
            node = mock.node().model_copy(update={
                "name": f"sim{i}", "node_class": "sim", "secret_id": str(uuid.uuid4()),
                "node_resources": NodeResources(cpu=NodeCpuResources(cpu_shares=8000),
                                                memory=NodeMemoryResources(memory_mb=16384),
                                                disk=NodeDiskResources(disk_mb=100_000)),
                "drivers": {"raw_exec": DriverInfo(detected=True, healthy=True)},
                "attributes": {"kernel.name": "linux", "driver.raw_exec": "1"}})
            self.nodes.append(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for node in self.nodes:
            self.client.token = node.secret_id
            wait_for(lambda node=node: self.client.register_node(node.to_json()), 60, 1.0,
                     what=f"sim node {node.name} to register")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            for node in self.nodes:
                try:
                    self.client.token = node.secret_id
                    self.client.heartbeat(node.id)
                except YurtError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def lab():
    proc = yurt("lab", "up", "-name", LAB, "-servers", "3", "-clients", "2", "-subnet", SUBNET, timeout=300)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lab = Lab()
        wait_for(lambda: lab.leader(), 60, 0.5, what="a leader the three servers agree on")
        sims = SimNodes([lab.url(s) for s in SERVERS], SIM_NODES)
        sims.start()
        lab.sims = sims
        # the real job, on the real clients: it must run through every fault
        status, body = lab.call("server1", "PUT", "/v1/jobs", job_doc("real", 2, sim=False))
        assert status == 200, body
        lab.real = wait_for(lambda: _running(lab, "real", 2), 120, 1.0, what="the real job's 2 allocations running")
        yield lab
        sims.stop()
    finally:
        down = yurt("lab", "down", "-name", LAB, timeout=300)
        print(down.stdout, down.stderr)


def _allocs(lab: Lab, job_id: str, via: list[str] | None = None) -> list[dict] | None:
    for h in via or SERVERS:
        status, body = lab.call(h, "GET", f"/v1/job/{job_id}/allocations", timeout=10)
        if status == 200:
            return json.loads(body)
    return None


def _running(lab: Lab, job_id: str, count: int) -> set[str] | None:
    allocs = _allocs(lab, job_id) or []
    ids = {a["ID"] for a in allocs if a["ClientStatus"] == "running"}
    return ids if len(ids) == count else None


def _live(servers: list[str]) -> list[str]:
    return [s for s in SERVERS if s in servers]


def test_three_servers_one_leader(lab):
    out = yurt("server", "members", "-address", lab.url("server2"))
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if line.strip()]
    assert sorted(r[0] for r in rows) == [f"{s}.global" for s in SERVERS]
    assert [r[3] for r in rows] == ["alive"] * 3
    assert sum(r[4] == "true" for r in rows) == 1, out.stdout
    leader = lab.leader()
    assert leader in SERVERS
    assert next(r for r in rows if r[4] == "true")[0] == f"{leader}.global"


def test_leader_killed_while_clients_register_jobs(lab):
    old = lab.leader()
    acked: set[str] = set()
    lock = threading.Lock()
    errors: list[str] = []

    def register(t: int) -> None:
        client = YurtClient([lab.url(s) for s in SERVERS], timeout=30)
        for i in range(JOBS // CLIENTS):
            job_id = f"sim-{t}-{i}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.register_job(job_doc(job_id, 2, sim=True))
                except YurtError as e:       # refused or unreachable: the job may or may not exist
                    if time.monotonic() > deadline:
                        errors.append(f"{job_id}: {e}")
                        break
                    time.sleep(0.5)
                    continue
                with lock:
                    acked.add(job_id)
                break

    # a blocking query held on the leader: killed under it, it resumes on another server
    watched: dict[str, set[str]] = {"jobs": set()}
    watch_stop = threading.Event()

    def watch() -> None:
        client = YurtClient([lab.url(old)] + [lab.url(s) for s in SERVERS if s != old], timeout=30)
        index = 1
        while not watch_stop.is_set():
            try:
                jobs, index = client.get("/v1/jobs", index=index, wait="5s")
            except YurtError:
                time.sleep(0.2)
                continue
            watched["jobs"] = {j["ID"] for j in jobs}
            watched["server"] = client.address

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=register, args=(t,)) for t in range(CLIENTS)]
    for th in threads:
        th.start()
    wait_for(lambda: len(acked) >= 40, 120, 0.1, what="40 registrations before the kill")
    killed_at = time.monotonic()
    lab_cmd("kill", old)
    others = [s for s in SERVERS if s != old]
    new = wait_for(lambda: (lab.leader(others) or None) if lab.leader(others) != old else None, 60, 0.1,
                   what="a new leader")
    elected = time.monotonic() - killed_at
    for th in threads:
        th.join(300)
    print(f"\nfailover: a new leader ({new}) {elected:.1f} s after the leader ({old}) was killed")
    assert not errors, errors[:5]
    assert new in others
    # every acknowledged registration exists, with exactly its 2 allocations: none lost, none twice
    def placed(job_id: str) -> list[dict] | None:
        allocs = _allocs(lab, job_id, others)
        return allocs if allocs is not None and len(allocs) >= 2 else None

    for job_id in sorted(acked):
        allocs = wait_for(lambda job_id=job_id: placed(job_id), 120, 0.5, what=f"{job_id}'s allocations")
        names = sorted(a["Name"] for a in allocs)
        assert names == [f"{job_id}.g[0]", f"{job_id}.g[1]"], (job_id, names)
    wait_for(lambda: acked <= watched["jobs"], 60, 0.5, what="the blocking query to have seen every job")
    watch_stop.set()
    assert watched["server"] != lab.url(old), "the blocking query moved to another server"
    out = yurt("server", "members", "-address", lab.url(new)).stdout
    dead = next(line for line in out.splitlines() if line.startswith(f"{old}.global"))
    assert " failed " in f" {dead} ", out
    lab_cmd("start", old)
    wait_for(lambda: lab.leader() == new, 90, 0.5, what=f"{old} back, following {new}")


def test_one_etcd_member_killed_the_cluster_stays_available(lab):
    leader = lab.leader()
    lab_cmd("kill", leader, "-etcd")    # the leader's own member: it goes on through the others
    try:
        status, body = lab.call(leader, "PUT", "/v1/jobs", job_doc("one-member-down", 1, sim=True), timeout=60)
        assert status == 200, body
        wait_for(lambda: len(_allocs(lab, "one-member-down") or []) == 1, 60, 0.5, what="its allocation")
    finally:
        lab_cmd("start", leader, "-etcd")


def test_two_etcd_members_killed_writes_refused_reads_stale_then_resumed(lab):
    down = SERVERS[:2]
    for h in down:
        lab_cmd("kill", h, "-etcd")
    try:
        status, body = lab.call("server3", "PUT", "/v1/jobs", job_doc("during-outage", 1, sim=True), timeout=90)
        assert status == 503, (status, body)
        assert "no quorum in the state store" in body, body
        status, body = lab.call("server3", "GET", "/v1/jobs?stale", timeout=30)
        assert status == 200, body
        assert "real" in {j["ID"] for j in json.loads(body)}
    finally:
        for h in down:
            lab_cmd("start", h, "-etcd")

    def register_after() -> bool:
        status, _ = lab.call("server3", "PUT", "/v1/jobs", job_doc("after-outage", 1, sim=True), timeout=30)
        return status == 200
    wait_for(register_after, 120, 1.0, what="writes accepted again")
    status, _ = lab.call("server3", "GET", "/v1/job/during-outage")
    assert status == 404, "the write refused during the outage left nothing behind"


def test_leader_cut_off_a_new_leader_elsewhere_and_the_old_commits_nothing(lab):
    old = lab.leader()
    others = [s for s in SERVERS if s != old]
    lab_cmd("cut", old)
    try:
        new = wait_for(lambda: (lab.leader(others) or None) if lab.leader(others) != old else None, 60, 0.2,
                       what="a new leader on the other side")
        assert new in others
        # the old leader, still running on its island, cannot commit: asked from inside its host
        body = f"/tmp/yurt-{LAB}-island.json"
        with open(body, "w") as f:
            json.dump(job_doc("island", 1, sim=True), f)
        code = (f"import urllib.request as u\nr = u.Request('http://{lab.hosts[old]['address']}:4646/v1/jobs', "
                f"data=open('{body}', 'rb').read(), method='PUT', headers={{'Content-Type': 'application/json'}})\n"
                "try:\n print(u.urlopen(r, timeout=60).status)\nexcept Exception as e:\n print(getattr(e, 'code', e))")
        proc = subprocess.run(["nsenter", f"--net=/var/run/netns/ylab-{LAB}-{old}", "--", sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=120)
        os.unlink(body)
        assert proc.stdout.strip() == "503", f"a write on the cut-off old leader answered {proc.stdout!r} {proc.stderr}"
    finally:
        lab_cmd("heal", old)
    wait_for(lambda: lab.leader() == new, 90, 0.5, what=f"{old} following {new} again")
    status, _ = lab.call(new, "GET", "/v1/job/island")
    assert status == 404, "nothing the cut-off leader was asked to write exists"


def test_the_real_allocations_kept_running_through_every_fault(lab):
    assert _running(lab, "real", 2) == lab.real, "the same two allocations, still running"
