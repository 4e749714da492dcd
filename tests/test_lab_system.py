"""System and sysbatch jobs on a lab of hosts (`yurt lab`): a system job lands on every client
host, and on a host that joins later; a sysbatch job completes once on each host and is not run
again. One small lab (a server, two clients), shared by the tests, which run in order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .agent_util import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a lab of hosts needs root (network namespaces)")

LAB = "s" + str(os.getpid() % 100000)
SUBNET = f"10.{234 + os.getpid() % 20}.{os.getpid() % 250}.0/24"

SYSTEM_JOB = """
job "sys" {
  type = "system"
  group "agent" {
    task "sleep" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"""

SYSBATCH_JOB = """
job "once" {
  type = "sysbatch"
  group "setup" {
    task "hello" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo done on $(hostname)"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"""


def yurt(*args: str, host: str | None = None, timeout: float = 120, cwd: Path | None = None
         ) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "yurt.cli.main"]
    cmd = base + (["lab", "exec", "-name", LAB, host, "--", "yurt", *args] if host else list(args))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def address(host: str) -> str:
    lab = json.loads(Path(f"/var/lib/yurt/lab/{LAB}/lab.json").read_text())
    return next(h["address"] for h in lab["hosts"] if h["name"] == host)


def api(path: str, method: str = "GET"):
    req = urllib.request.Request(f"http://{address('server1')}:4646{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def by_node(job: str, status: str) -> list[str]:
    names = {n["ID"]: n["Name"] for n in api("/v1/nodes")}
    return sorted(names.get(a["NodeID"], a["NodeID"]) for a in api(f"/v1/job/{job}/allocations")
                  if a["ClientStatus"] == status)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    shutil.rmtree(f"/var/lib/yurt/lab/{LAB}", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "yurt.cli.main", "lab", "up", "-name", LAB, "-servers", "1",
                           "-clients", "2", "-subnet", SUBNET], capture_output=True, text=True, timeout=180)
    d = tmp_path_factory.mktemp("jobs")
    (d / "sys.nomad").write_text(SYSTEM_JOB)
    (d / "once.nomad").write_text(SYSBATCH_JOB)
    try:
        ok(proc)
        yield d
    finally:
        down = subprocess.run([sys.executable, "-m", "yurt.cli.main", "lab", "down", "-name", LAB],
                              capture_output=True, text=True, timeout=300)
        print(down.stdout, down.stderr)


def test_a_system_job_lands_on_every_host_and_on_one_that_joins_later(lab):
    # client2 leaves the cluster first (its agent stopped, its node purged) ...
    ok(yurt("lab", "stop", "-name", LAB, "client2"))
    c2 = next(n["ID"] for n in api("/v1/nodes") if n["Name"] == "client2")
    api(f"/v1/node/{c2}/purge", method="PUT")
    out = ok(yurt("job", "run", str(lab / "sys.nomad"), host="server1", cwd=lab))
    assert 'Evaluation "' in out and "finished with status \"complete\"" in out, out
    wait_for(lambda: by_node("sys", "running") == ["client1"], 60, what="the system job running on client1")
    # ... and joins later: it gets its allocation too
    ok(yurt("lab", "start", "-name", LAB, "client2"))
    wait_for(lambda: by_node("sys", "running") == ["client1", "client2"], 90,
             what="the system job running on client2 after it joined")
    status = ok(yurt("job", "status", "sys", host="server1"))
    print(status)
    lines = status.splitlines()
    assert any(line.split() == ["Type", "=", "system"] for line in lines), status
    # the summary per group, and one allocation per node in the allocations table
    assert any(line.split()[:4] == ["agent", "0", "0", "2"] for line in lines), status
    assert len([line for line in lines if " agent " in f" {line} " and "running" in line]) == 2, status
    summary = api("/v1/job/sys/summary")["Summary"]["agent"]
    assert summary["Running"] == 2
    # draining a host with -ignore-system leaves the system allocation there
    out = ok(yurt("node", "drain", "-enable", "-yes", "-ignore-system", "-detach", c2, host="server1"))
    time.sleep(3)
    assert by_node("sys", "running") == ["client1", "client2"], out
    ok(yurt("node", "drain", "-disable", "-yes", c2, host="server1"))


def test_sysbatch_completes_once_per_host(lab):
    ok(yurt("job", "run", "-detach", str(lab / "once.nomad"), host="server1", cwd=lab))
    wait_for(lambda: by_node("once", "complete") == ["client1", "client2"], 90,
             what="the sysbatch job complete on each host")
    time.sleep(3)     # nothing runs it again
    allocs = api("/v1/job/once/allocations")
    assert len(allocs) == 2 and all(a["ClientStatus"] == "complete" for a in allocs)
    assert api("/v1/job/once")["Status"] == "dead"
