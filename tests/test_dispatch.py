"""Parameterized jobs and `job dispatch`: meta (required, optional, unknown refused), a payload
written to the task's dispatch_payload file, a payload too large, the idempotency token, and
`job status` listing the dispatched children."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from yurt.jobspec import JobspecError, load

from .agent_util import AgentProcess, allocs, register, wait_for

JOB = """
job "work" {
  type = "batch"
  meta { team = "a" }
  parameterized {
    payload       = "optional"
    meta_required = ["color"]
    meta_optional = ["size"]
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "cat ${NOMAD_TASK_DIR}/in/payload.txt; echo; echo color=$NOMAD_META_color parent=$NOMAD_JOB_PARENT_ID team=$NOMAD_META_team"]
      }
      dispatch_payload { file = "in/payload.txt" }
    }
  }
}
"""


def _cli(agent: AgentProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=120, env={"NOMAD_ADDR": agent.url, "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        with a.api() as api:
            resp = register(api, JOB)
            assert resp["EvalID"] == ""
        yield a


def _dispatch(api, body: dict):
    return api.put("/v1/job/work/dispatch", json=body)


def test_parent_is_running_and_not_evaluated(agent):
    with agent.api() as api:
        job = api.get("/v1/job/work").json()
        assert job["Status"] == "running" and job["ParameterizedJob"]["MetaRequired"] == ["color"]
        assert allocs(api, "work") == []
        assert api.get("/v1/job/work/evaluations").json() == []
        stub = next(j for j in api.get("/v1/jobs").json() if j["ID"] == "work")
        assert stub["ParameterizedJob"] is True and stub["Periodic"] is False


def test_dispatch_meta_checked(agent):
    with agent.api() as api:
        r = _dispatch(api, {"Meta": {"size": "L"}})
        assert r.status_code == 400 and "required meta keys: color" in r.text
        r = _dispatch(api, {"Meta": {"color": "red", "shape": "round"}})
        assert r.status_code == 400 and "unpermitted meta keys: shape" in r.text
        r = _dispatch(api, {"Meta": {"color": "red"}, "Payload": base64.b64encode(b"x" * (16 * 1024 + 1)).decode()})
        assert r.status_code == 400 and "payload exceeds maximum size" in r.text
        r = _dispatch(api, {"Meta": {"color": "red"}, "Payload": "not base64!"})
        assert r.status_code == 400 and "base64" in r.text
        r = api.put("/v1/job/nope/dispatch", json={})
        assert r.status_code == 404


def test_dispatch_with_meta_and_payload(agent, tmp_path):
    (tmp_path / "in.txt").write_text("hello payload")
    r = _cli(agent, "job", "dispatch", "-meta", "color=blue", "-meta", "size=S", "work", str(tmp_path / "in.txt"))
    assert r.returncode == 0, r.stdout + r.stderr
    child_id = next(line.split("=", 1)[1].strip() for line in r.stdout.splitlines()
                    if line.startswith("Dispatched Job ID"))
    assert child_id.startswith("work/dispatch-")
    with agent.api() as api:
        child = api.get(f"/v1/job/{child_id}").json()
        assert child["ParentID"] == "work" and child["Dispatched"] is True
        assert child["Meta"] == {"team": "a", "color": "blue", "size": "S"}
        assert base64.b64decode(child["Payload"]) == b"hello payload"
        (alloc,) = wait_for(lambda: [a for a in allocs(api, child_id) if a["ClientStatus"] == "complete"] or None,
                            60, what="the dispatched child completes")
        log = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "type": "stdout",
                                                                   "plain": "true"}).text
        assert "hello payload" in log and "color=blue parent=work team=a" in log, log
    r = _cli(agent, "job", "status", child_id)   # a child's ID has a slash: escaped by the client
    assert r.returncode == 0 and "Allocations" in r.stdout and "complete" in r.stdout, r.stdout + r.stderr


def test_dispatch_from_stdin_and_idempotency_token(agent):
    r1 = _cli(agent, "job", "dispatch", "-detach", "-idempotency-token", "once", "-meta", "color=red", "work", "-",
              stdin="from stdin")
    r2 = _cli(agent, "job", "dispatch", "-detach", "-idempotency-token", "once", "-meta", "color=red", "work", "-",
              stdin="from stdin")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    first = r1.stdout.splitlines()[0]
    assert first == r2.stdout.splitlines()[0]


def test_dispatch_refusals_on_the_cli(agent):
    r = _cli(agent, "job", "dispatch", "work")
    assert r.returncode == 1 and "required meta keys: color" in r.stderr and "Traceback" not in r.stderr
    r = _cli(agent, "job", "dispatch", "-meta", "nokey", "work")
    assert r.returncode == 1 and "KEY=VALUE" in r.stderr


def test_status_lists_dispatched_children(agent):
    r = _cli(agent, "job", "status", "work")
    assert r.returncode == 0, r.stderr
    assert "Parameterized" in r.stdout and "Dispatched Jobs" in r.stdout and "work/dispatch-" in r.stdout


def test_parameterized_validation():
    with pytest.raises(JobspecError, match="payload is \"forbidden\""):
        load('job "p" {\n type = "batch"\n parameterized {\n payload = "forbidden"\n }\n group "g" {\n'
             ' task "t" {\n driver = "raw_exec"\n config { command = "/bin/true" }\n'
             ' dispatch_payload { file = "x" }\n }\n }\n}\n')
    with pytest.raises(JobspecError, match="escapes"):
        load('job "p" {\n type = "batch"\n parameterized {}\n group "g" {\n'
             ' task "t" {\n driver = "raw_exec"\n config { command = "/bin/true" }\n'
             ' dispatch_payload { file = "../x" }\n }\n }\n}\n')
    with pytest.raises(JobspecError, match="both required and optional"):
        load('job "p" {\n type = "batch"\n parameterized {\n meta_required = ["a"]\n meta_optional = ["a"]\n }\n'
             ' group "g" {\n task "t" {\n driver = "raw_exec"\n config { command = "/bin/true" }\n }\n }\n}\n')
