"""Periodic jobs: next launch times (pure), and a real agent launching children on a
seconds cron with prohibit_overlap, `job periodic force` and `job status` listing children."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from yurt.jobspec import JobspecError, load
from yurt.structs.cron import cron_problem, next_launch, next_time

from .agent_util import AgentProcess, register, wait_for

B = datetime(2026, 1, 1, tzinfo=UTC)


def test_next_launch_fields_macros_and_zones():
    assert next_time("*/5 * * * * * *", B) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)   # 7 fields: seconds
    assert next_time("30 * * * *", B) == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    assert next_time("0 0 1 1 * 2028", B) == datetime(2028, 1, 1, tzinfo=UTC)   # 6 fields: a year
    assert next_time("@daily", B) == datetime(2026, 1, 2, tzinfo=UTC)
    paris = next_time("0 9 * * *", B, "Europe/Paris")
    assert paris is not None and paris.astimezone(UTC) == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    ny = next_launch(["0 9 * * *", "0 3 * * *"], B, "America/New_York")
    assert ny is not None and ny.astimezone(UTC) == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    summer = next_time("0 9 * * *", datetime(2026, 7, 1, tzinfo=UTC), "Europe/Paris")
    assert summer is not None and summer.astimezone(UTC).hour == 7


def test_bad_crons_are_refused_at_validation():
    assert "never fires" in (cron_problem("0 0 30 2 *") or "")
    assert "fields" in (cron_problem("every day") or "")
    assert "time zone" in (cron_problem("@daily", "Mars/Olympus") or "")
    with pytest.raises(JobspecError, match='cron "0 0 30 2 \\*" never fires'):
        load('job "p" {\n type = "batch"\n periodic {\n cron = "0 0 30 2 *"\n }\n'
             ' group "g" {\n task "t" {\n driver = "raw_exec"\n config { command = "/bin/true" }\n }\n }\n}\n')
    with pytest.raises(JobspecError, match="periodic job must be of type"):
        load('job "p" {\n periodic {\n cron = "@daily"\n }\n'
             ' group "g" {\n task "t" {\n driver = "raw_exec"\n config { command = "/bin/true" }\n }\n }\n}\n')


PERIODIC = """
job "tick" {
  type = "batch"
  periodic {
    crons            = ["*/5 * * * * * *"]
    prohibit_overlap = true
    time_zone        = "Europe/Paris"
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "sleep 12"]
      }
    }
  }
}
"""


def _cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env={"NOMAD_ADDR": agent.url, "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


def _children(api, parent: str) -> list[dict]:
    return [j for j in api.get("/v1/jobs", params={"prefix": parent + "/"}).json() if j["ParentID"] == parent]


def test_periodic_launches_children_with_prohibit_overlap(agent):
    with agent.api() as api:
        resp = register(api, PERIODIC)
        assert resp["EvalID"] == ""   # the parent itself is never evaluated
        parent = api.get("/v1/job/tick").json()
        assert parent["Status"] == "running" and parent["Periodic"]["ProhibitOverlap"]
        first = wait_for(lambda: _children(api, "tick"), 30, what="a first periodic child")
        assert first[0]["ID"].startswith("tick/periodic-")
        # the child sleeps 12s: the launches 5s and 10s later are skipped (prohibit_overlap)
        wait_for(lambda: any(j["Status"] == "running" for j in _children(api, "tick")), 30, what="child running")
        time.sleep(9)
        assert len(_children(api, "tick")) == 1, _children(api, "tick")
        assert "prohibit_overlap" in agent.log()
        # then a next one once the first is dead
        wait_for(lambda: len(_children(api, "tick")) >= 2, 40, what="a second periodic child")
        assert api.get("/v1/job/tick/allocations").json() == []


def test_periodic_force_and_status(agent):
    r = _cli(agent, "job", "periodic", "force", "-detach", "tick")
    assert r.returncode == 0, r.stderr
    assert "Evaluation ID" in r.stdout
    r = _cli(agent, "job", "status", "tick")
    assert r.returncode == 0, r.stderr
    assert "Next Periodic Launch" in r.stdout and "Previously Launched Jobs" in r.stdout
    assert "tick/periodic-" in r.stdout
    r = _cli(agent, "job", "periodic", "force", "nope")
    assert r.returncode != 0 and "Traceback" not in r.stderr


class _FakeStore:
    def __init__(self, jobs: list) -> None:
        self._jobs = {j.id: j for j in jobs}

    def jobs(self, namespace=None, prefix=""):
        return [j for i, j in sorted(self._jobs.items()) if i.startswith(prefix)]

    def job(self, namespace, job_id):
        return self._jobs.get(job_id)


class _FakeServer:
    def __init__(self, jobs: list) -> None:
        self.store = _FakeStore(jobs)
        self.launched: list[str] = []

    def register_job(self, job, trigger=""):
        assert trigger == "periodic-job" and job.parent_id and job.periodic is None
        self.launched.append(job.id)
        self.store._jobs[job.id] = job.model_copy(update={"status": "running"})
        return {"EvalID": "e", "EvalCreateIndex": 1, "Index": 1}


def _parent(cron: str = "0 * * * *", overlap: bool = False):
    from yurt.structs.job import Job, PeriodicConfig
    return Job(id="p", namespace="default", type="batch", job_modify_index=7,
               periodic=PeriodicConfig(spec=cron, prohibit_overlap=overlap))


def test_a_new_leader_recomputes_from_the_store_and_catches_up_once():
    from yurt.server.periodic import PeriodicLauncher
    last = _parent().model_copy(update={"id": "p/periodic-1767225600", "parent_id": "p", "periodic": None,
                                        "status": "dead"})   # 2026-01-01T00:00Z
    server = _FakeServer([_parent(), last])
    launcher = PeriodicLauncher(server)   # type: ignore[arg-type]
    now = datetime(2026, 1, 1, 3, 30, tzinfo=UTC)   # 01:00, 02:00 and 03:00 were missed
    launcher.tick(now)
    assert server.launched == ["p/periodic-1767229200"]   # the first missed one, once
    launcher.tick(now)
    assert len(server.launched) == 1
    launcher.tick(datetime(2026, 1, 1, 4, 0, 1, tzinfo=UTC))
    assert server.launched[-1] == "p/periodic-1767240000"   # 04:00


def test_prohibit_overlap_skips_while_a_child_runs():
    from yurt.server.periodic import PeriodicLauncher
    server = _FakeServer([_parent("*/10 * * * * * *", overlap=True)])
    launcher = PeriodicLauncher(server)   # type: ignore[arg-type]
    launcher.tick(B)
    launcher.tick(datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC))
    assert server.launched == ["p/periodic-1767225610"]
    launcher.tick(datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC))   # the child still runs: skipped
    assert len(server.launched) == 1
    server.store._jobs["p/periodic-1767225610"] = server.store._jobs["p/periodic-1767225610"].model_copy(
        update={"status": "dead"})
    launcher.tick(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    assert server.launched[-1] == "p/periodic-1767225630"
    assert launcher.force("default", "p") and server.launched[-1].startswith("p/periodic-")


def test_run_plan_and_stop_of_a_periodic_job(agent, tmp_path):
    f = tmp_path / "hourly.nomad"
    f.write_text(PERIODIC.replace('"tick"', '"hourly"').replace('["*/5 * * * * * *"]', '["@hourly"]'))
    r = _cli(agent, "job", "run", str(f))
    assert r.returncode == 0 and "Approximate next launch time" in r.stdout, r.stdout + r.stderr
    with agent.api() as api:
        from yurt.jobspec import load_file
        plan = api.put("/v1/job/hourly/plan", json=load_file(str(f)).job.to_document()).json()
        assert plan["NextPeriodicLaunch"].endswith(":00:00Z")
        r = _cli(agent, "job", "plan", str(f))
        assert "next periodic launch would be at" in r.stdout, r.stdout + r.stderr
        listed = _cli(agent, "job", "status")
        assert "batch/periodic" in listed.stdout
        r = _cli(agent, "job", "stop", "-detach", "tick")
        assert r.returncode == 0, r.stderr
        before = len(_children(api, "tick"))
        time.sleep(6)
        assert len(_children(api, "tick")) == before
