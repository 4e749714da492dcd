"""Deployments from the command line, against a real dev agent: `yurt job run` following a
deployment (success, canaries awaiting promotion, failure with auto_revert), `yurt deployment
list|status|promote|fail|pause|resume|unblock`, `yurt job promote|history|revert|inspect|scale|allocs`,
bad input (a clear error, exit 1, nothing changed), and python-nomad's deployment calls.

Jobs are raw_exec `/bin/sleep` with `min_healthy_time = "1s"` so deployments end quickly. Waits
are for conditions with deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import httpx
import nomad
import pytest

from .agent_util import dev_agent, wait_for
from .conftest import YURT, run_yurt


@pytest.fixture(scope="module")
def agent():
    with dev_agent() as proc:
        yield proc


@pytest.fixture
def cli(agent, tmp_path):
    def run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
        res = run_yurt(*args, cwd=tmp_path, env={"YURT_ADDR": agent.url, "NO_COLOR": "1"}, timeout=timeout)
        assert "Traceback" not in res.stderr + res.stdout, res.stderr
        return res
    return run


def job_hcl(name: str, *, update: str = 'min_healthy_time = "1s"', count: int = 2, command: str = "/bin/sleep",
            value: str = "1", extra_group: str = "") -> str:
    return f'''job "{name}" {{
  datacenters = ["dc1"]
  update {{
    {update}
  }}
  group "g" {{
    count = {count}
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "{command}"
        args    = ["600"]
      }}
      env {{
        VALUE = "{value}"
      }}
      resources {{
        cpu    = 20
        memory = 16
      }}
    }}
  }}
{extra_group}}}
'''


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def api(agent, path: str, **params):
    return httpx.get(f"{agent.url}{path}", params=params, timeout=10).json()


def running(agent, job: str) -> list[dict]:
    return [a for a in api(agent, f"/v1/job/{job}/allocations")
            if a["DesiredStatus"] == "run" and a["ClientStatus"] == "running"]


def deployed_row(text: str, group: str = "g") -> list[str]:
    """The row of group `group` in the last "Deployed" table of `text` (or in `text`, a table)."""
    block = text.rsplit("Deployed\n", 1)[-1].splitlines()
    return next(ln for ln in block[1:] if ln.split()[:1] == [group]).split()


def kv_value(text: str, key: str) -> str:
    line = next(ln for ln in reversed(text.splitlines()) if ln.strip().startswith(key + " ") and "=" in ln)
    return line.split("=", 1)[1].strip()


# -- job run follows the deployment to success; history, inspect, allocs, revert -----------------
def test_run_follows_deployment_history_revert(cli, agent, tmp_path):
    res = cli("job", "run", write(tmp_path, "v0.hcl", job_hcl("roll")))
    assert res.returncode == 0, res.stdout + res.stderr
    first = api(agent, "/v1/job/roll/deployment")
    assert first["Status"] == "successful"
    out = res.stdout
    assert re.search(rf'^==> \S+: Monitoring deployment "{first["ID"][:8]}"$', out, re.M), out
    assert f'  ✓ Deployment "{first["ID"][:8]}" successful' in out
    final = out.split("✓ Deployment", 1)[1]
    assert kv_value(final, "ID") == first["ID"][:8]
    assert kv_value(final, "Job ID") == "roll" and kv_value(final, "Job Version") == "0"
    assert kv_value(final, "Status") == "successful"
    assert kv_value(final, "Description") == "Deployment completed successfully"
    header = final.split("Deployed\n", 1)[1].splitlines()[0].split()
    assert header == ["Task", "Group", "Desired", "Placed", "Healthy", "Unhealthy", "Progress", "Deadline"], final
    assert deployed_row(final)[:5] == ["g", "2", "2", "2", "0"]
    # the evaluation part is unchanged: it comes first
    assert out.index('Monitoring evaluation "') < out.index("Monitoring deployment")

    # a new version rolls out (max_parallel 1) and is followed to the end
    res = cli("job", "run", write(tmp_path, "v1.hcl", job_hcl("roll", value="2")))
    assert res.returncode == 0, res.stdout + res.stderr
    second = api(agent, "/v1/job/roll/deployment")
    assert second["ID"] != first["ID"] and second["JobVersion"] == 1 and second["Status"] == "successful"
    assert f'✓ Deployment "{second["ID"][:8]}" successful' in res.stdout
    # not a TTY: the block is printed again on each change, with the healthy count going up
    healthy = [int(deployed_row(part)[3]) for part in res.stdout.split("Deployed\n")[1:]]
    assert healthy == sorted(healthy) and healthy[-1] == 2 and len(healthy) >= 2, res.stdout
    assert len(running(agent, "roll")) == 2

    # job status shows the latest deployment, as Nomad's does
    res = cli("job", "status", "roll")
    assert res.returncode == 0
    assert (f"Latest Deployment\nID          = {second['ID'][:8]}\nStatus      = successful\n"
            "Description = Deployment completed successfully\n\nDeployed\n") in res.stdout, res.stdout
    assert res.stdout.index("Summary") < res.stdout.index("Latest Deployment") < res.stdout.index("Allocations")

    # deployment list / status
    res = cli("deployment", "list")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["ID", "Job", "ID", "Job", "Version", "Status", "Description"]
    assert lines[1].split()[:4] == [second["ID"][:8], "roll", "1", "successful"]  # newest first
    assert any(ln.split()[:4] == [first["ID"][:8], "roll", "0", "successful"] for ln in lines[2:])
    res = cli("deployment", "status", second["ID"][:5])
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"ID          = {second['ID'][:8]}\nJob ID      = roll\nJob Version = 1\n"
                                 "Status      = successful\nDescription = Deployment completed successfully\n\n"
                                 "Deployed\n"), res.stdout
    assert deployed_row(res.stdout)[:5] == ["g", "2", "2", "2", "0"]
    assert kv_value(cli("deployment", "status", "-verbose", second["ID"]).stdout, "ID") == second["ID"]
    as_json = json.loads(cli("deployment", "status", "-json", second["ID"][:6]).stdout)
    assert as_json["ID"] == second["ID"] and as_json["TaskGroups"]["g"]["HealthyAllocs"] == 2

    # history: newest first, both stable; -p shows what changed
    res = cli("job", "history", "roll")
    assert res.returncode == 0, res.stderr
    blocks = res.stdout.strip().split("\n\n")
    assert [kv_value(b, "Version") for b in blocks] == ["1", "0"]
    assert [kv_value(b, "Stable") for b in blocks] == ["true", "true"]
    assert "Diff" not in res.stdout
    res = cli("job", "history", "-p", "roll")
    assert res.returncode == 0
    assert 'Diff        =\n+/- Job: "roll"\n+/- Task Group: "g"\n  +/- Task: "t"' in res.stdout, res.stdout
    assert '+/- VALUE: "1" => "2"' in res.stdout
    versions = json.loads(cli("job", "history", "-json", "roll").stdout)
    assert [v["Version"] for v in versions] == [1, 0]

    # inspect: Nomad's {"Job": ...}
    doc = json.loads(cli("job", "inspect", "roll").stdout)
    assert list(doc) == ["Job"] and doc["Job"]["ID"] == "roll" and doc["Job"]["Version"] == 1
    old = json.loads(cli("job", "inspect", "-version", "0", "roll").stdout)
    assert old["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["VALUE"] == "1"

    # allocs: the table, newest first
    res = cli("job", "allocs", "roll")
    assert res.returncode == 0
    rows = [ln.split() for ln in res.stdout.splitlines()[1:]]
    assert res.stdout.splitlines()[0].split()[:6] == ["ID", "Node", "ID", "Task", "Group", "Version"]
    assert [(r[3], r[4], r[5]) for r in rows[:2]] == [("1", "run", "running")] * 2
    assert sorted((r[3], r[4]) for r in rows[2:]) == [("0", "stop")] * 2

    # revert: the current version and a missing one are refused, nothing changes
    res = cli("job", "revert", "roll", "1")
    assert res.returncode == 1
    assert 'job "roll" is at version 1 already; give an earlier version (`yurt job history roll`' in res.stderr
    res = cli("job", "revert", "roll", "7")
    assert res.returncode == 1 and 'job "roll" has no version 7; its versions: 0, 1' in res.stderr
    res = cli("job", "revert", "roll", "latest")
    assert res.returncode == 1 and 'version "latest" is not a number' in res.stderr
    assert api(agent, "/v1/job/roll")["Version"] == 1
    # revert to 0: a new version 2 with version 0's spec, followed to a successful deployment
    res = cli("job", "revert", "roll", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    job = api(agent, "/v1/job/roll")
    assert job["Version"] == 2 and job["TaskGroups"][0]["Tasks"][0]["Env"]["VALUE"] == "1"
    third = api(agent, "/v1/job/roll/deployment")
    assert third["JobVersion"] == 2 and f'✓ Deployment "{third["ID"][:8]}" successful' in res.stdout

    # a finished deployment can be neither failed nor promoted; nothing changes
    res = cli("deployment", "fail", first["ID"][:8])
    assert res.returncode == 1
    assert f'deployment "{first["ID"][:8]}" is already successful; only a running or paused deployment' in res.stderr
    res = cli("job", "promote", "roll")
    assert res.returncode == 1
    assert f'deployment "{third["ID"][:8]}" is successful: only a running deployment can be promoted' in res.stderr
    assert api(agent, f"/v1/deployment/{first['ID']}")["Status"] == "successful"
    assert api(agent, "/v1/job/roll")["Version"] == 2


# -- canaries wait for promotion; job promote ------------------------------------------------------
def test_canary_waits_for_promotion_then_job_promote(cli, agent, tmp_path):
    update = 'canary = 1\n    min_healthy_time = "1s"'
    res = cli("job", "run", write(tmp_path, "c0.hcl", job_hcl("canary", update=update)))
    assert res.returncode == 0, res.stdout + res.stderr      # the first version has no canaries
    res = cli("job", "run", write(tmp_path, "c1.hcl", job_hcl("canary", update=update, value="2")))
    assert res.returncode == 0, res.stdout + res.stderr
    d = api(agent, "/v1/job/canary/deployment")
    assert d["Status"] == "running" and d["JobVersion"] == 1
    name = d["ID"][:8]
    assert f'  ! Deployment "{name}" needs manual promotion of its canaries' in res.stdout
    assert 'Promote it with "yurt job promote canary"' in res.stdout
    final = res.stdout.split("needs manual promotion", 1)[1]
    assert kv_value(final, "Description") == "Deployment is running but requires manual promotion"
    header = final.split("Deployed\n", 1)[1].splitlines()[0]
    assert header.split() == ["Task", "Group", "Promoted", "Desired", "Canaries", "Placed", "Healthy", "Unhealthy",
                              "Progress", "Deadline"]
    assert deployed_row(final)[:7] == ["g", "false", "2", "1", "1", "1", "0"]
    # the old version still runs beside the canary
    versions = sorted(a["JobVersion"] for a in running(agent, "canary"))
    assert versions == [0, 0, 1]

    # scaling is refused while the deployment is active; nothing changes
    res = cli("job", "scale", "canary", "5")
    assert res.returncode == 1
    assert f"job scaling blocked due to active deployment {name}" in res.stderr
    assert api(agent, "/v1/job/canary")["TaskGroups"][0]["Count"] == 2

    # pause / resume
    res = cli("deployment", "pause", name)
    assert res.returncode == 0 and res.stdout.strip() == f'Deployment "{name}" paused'
    assert api(agent, f"/v1/deployment/{d['ID']}")["Status"] == "paused"
    res = cli("deployment", "pause", name)
    assert res.returncode == 1 and f"deployment \"{name}\" is already paused; `yurt deployment resume {name}`" in res.stderr
    res = cli("deployment", "resume", name)
    assert res.returncode == 0 and res.stdout.strip() == f'Deployment "{name}" resumed'
    assert api(agent, f"/v1/deployment/{d['ID']}")["Status"] == "running"

    # a group that is not in the deployment is refused
    res = cli("job", "promote", "-group", "nope", "canary")
    assert res.returncode == 1 and f'deployment "{name}" has no group nope; its groups with canaries to promote: g' \
        in res.stderr
    res = cli("job", "promote", "canary")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f'Deployment "{name}" promoted\n')
    assert f'✓ Deployment "{name}" successful' in res.stdout
    assert deployed_row(res.stdout)[:7] == ["g", "true", "2", "1", "2", "2", "0"]
    assert api(agent, f"/v1/deployment/{d['ID']}")["Status"] == "successful"
    wait_for(lambda: sorted(a["JobVersion"] for a in running(agent, "canary")) == [1, 1], 60,
             what="only version 1 running")

    # the next version: promoted by group, through `yurt deployment promote`
    res = cli("job", "run", write(tmp_path, "c2.hcl", job_hcl("canary", update=update, value="3")))
    assert res.returncode == 0 and "needs manual promotion" in res.stdout, res.stdout + res.stderr
    d = api(agent, "/v1/job/canary/deployment")
    assert d["JobVersion"] == 2
    res = cli("deployment", "promote", "-group", "g", d["ID"][:6])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f'Deployment "{d["ID"][:8]}" promoted (groups: g)\n')
    assert f'✓ Deployment "{d["ID"][:8]}" successful' in res.stdout


# -- a failing version: the deployment fails, auto_revert runs the stable version again -----------
def test_failed_deployment_auto_reverts(cli, agent, tmp_path):
    update = 'min_healthy_time = "1s"\n    healthy_deadline = "5s"\n    progress_deadline = "10s"\n' \
             '    auto_revert = true'
    res = cli("job", "run", write(tmp_path, "r0.hcl", job_hcl("revert", update=update)))
    assert res.returncode == 0, res.stdout + res.stderr
    res = cli("job", "run", write(tmp_path, "r1.hcl", job_hcl("revert", update=update, command="/bin/false")))
    assert res.returncode == 1, res.stdout + res.stderr
    ds = sorted(api(agent, "/v1/job/revert/deployments"), key=lambda d: d["CreateIndex"])
    failed, rollback = ds[1], ds[2]
    assert failed["Status"] == "failed" and failed["JobVersion"] == 1
    assert failed["StatusDescription"].endswith(" - rolling back to job version 0")
    out = res.stdout
    assert f'  ! Deployment "{failed["ID"][:8]}" failed' in out
    assert f'Deployment "{failed["ID"][:8]}" failed; job "revert" is rolling back to job version 0' in out
    assert f'Monitoring deployment "{rollback["ID"][:8]}"' in out
    assert out.index("rolling back to job version 0") < out.index(f'Monitoring deployment "{rollback["ID"][:8]}"')
    header = out.split("Deployed\n", 1)[1].splitlines()[0].split()
    assert header[:4] == ["Task", "Group", "Auto", "Revert"]
    # the rollback was followed to its end, and the stable version runs again
    assert rollback["JobVersion"] == 2
    wait_for(lambda: api(agent, f"/v1/deployment/{rollback['ID']}")["Status"] == "successful", 60,
             what="the rollback deployment to succeed")
    job = api(agent, "/v1/job/revert")
    assert job["Version"] == 2 and job["TaskGroups"][0]["Tasks"][0]["Config"]["command"] == "/bin/sleep"
    wait_for(lambda: len(running(agent, "revert")) == 2, 60, what="two allocations of version 2 running")
    assert {a["JobVersion"] for a in running(agent, "revert")} == {2}
    assert f'✓ Deployment "{rollback["ID"][:8]}" successful' in out
    history = cli("job", "history", "revert").stdout.strip().split("\n\n")
    assert [(kv_value(b, "Version"), kv_value(b, "Stable")) for b in history] == [
        ("2", "true"), ("1", "false"), ("0", "true")]


# -- deployment fail by hand; promote without canaries --------------------------------------------
def test_fail_a_running_deployment_and_promote_without_canaries(cli, agent, tmp_path):
    # healthy only after a minute: the deployment stays running while we look at it; following it
    # gives up at -timeout (exit 1), saying that it carries on
    update = 'min_healthy_time = "60s"'
    res = cli("job", "run", "-timeout", "5s", write(tmp_path, "s0.hcl", job_hcl("slow", update=update, count=1)))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Error: timed out after 5s following" in res.stderr, res.stderr
    assert re.search(r"carr(y|ies) on in the cluster \(see `yurt (job|deployment) status", res.stderr), res.stderr
    d = wait_for(lambda: api(agent, "/v1/job/slow/deployment"), 60, what="the deployment")
    name = d["ID"][:8]
    res = cli("deployment", "promote", name)
    assert res.returncode == 1
    assert f'deployment "{name}" of job "slow" has no canaries to promote; promotion is for groups with ' \
           "`update { canary = N }`" in res.stderr
    assert api(agent, f"/v1/deployment/{d['ID']}")["Status"] == "running"
    res = cli("deployment", "fail", name)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f'Deployment "{name}" failed'
    after = api(agent, f"/v1/deployment/{d['ID']}")
    assert (after["Status"], after["StatusDescription"]) == ("failed", "Deployment marked as failed")
    res = cli("deployment", "fail", name)
    assert res.returncode == 1 and "is already failed" in res.stderr
    res = cli("deployment", "resume", name)
    assert res.returncode == 1 and f'deployment "{name}" is failed; only a paused deployment can be resumed' \
        in res.stderr


# -- job scale -------------------------------------------------------------------------------------
def test_job_scale(cli, agent, tmp_path):
    res = cli("job", "run", write(tmp_path, "sc.hcl", job_hcl("scaler", count=1)))
    assert res.returncode == 0, res.stdout + res.stderr
    res = cli("job", "scale", "scaler", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'Monitoring evaluation "' in res.stdout and "✓ Deployment" in res.stdout
    assert api(agent, "/v1/job/scaler")["TaskGroups"][0]["Count"] == 3
    assert len(running(agent, "scaler")) == 3
    res = cli("job", "scale", "scaler", "g", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: len(running(agent, "scaler")) == 2, 60, what="two running")
    version = api(agent, "/v1/job/scaler")["Version"]

    # bad input: a clear error, exit 1, nothing changed
    for args, message in (
            (("scaler", "nope", "2"), 'job "scaler" has no group "nope"; its groups: g'),
            (("scaler", "many"), 'count "many" is not a whole number'),
            (("scaler",), "give JOB [GROUP] COUNT"),
            (("scaler", "-1"), "count -1 for group 'g' is negative: give 0 or more"),
            (("nosuchjob", "2"), 'No job(s) with prefix or ID "nosuchjob" found')):
        res = cli("job", "scale", *args)
        assert res.returncode == 1, (args, res.stdout)
        assert message in res.stderr, (args, res.stderr)
    job = api(agent, "/v1/job/scaler")
    assert job["Version"] == version and job["TaskGroups"][0]["Count"] == 2

    # with two groups, the group must be named
    two = job_hcl("twogroups", count=1, extra_group='''  group "h" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["600"]
      }
      resources {
        cpu    = 20
        memory = 16
      }
    }
  }
''')
    res = cli("job", "run", "-detach", write(tmp_path, "two.hcl", two))
    assert res.returncode == 0, res.stderr
    res = cli("job", "scale", "twogroups", "2")
    assert res.returncode == 1
    assert 'job "twogroups" has 2 groups (g, h): name the one to scale, e.g. `yurt job scale twogroups g 2`' \
        in res.stderr
    assert api(agent, "/v1/job/twogroups")["Version"] == 0


# -- unblock, unknown IDs --------------------------------------------------------------------------
def test_unblock_and_unknown_deployments(cli):
    res = cli("deployment", "unblock", "abcd")
    assert res.returncode == 1
    assert "is for multiregion deployments, and Yurt has one region" in res.stderr
    for verb in ("status", "promote", "fail", "pause", "resume"):
        res = cli("deployment", verb, "ffffffff")
        assert res.returncode == 1, verb
        assert 'No deployment(s) with prefix or ID "ffffffff" found' in res.stderr, (verb, res.stderr)
    res = cli("job", "promote", "nosuchjob")
    assert res.returncode == 1 and 'No job(s) with prefix or ID "nosuchjob" found' in res.stderr


# -- python-nomad --------------------------------------------------------------------------------
def test_python_nomad_deployment_calls(cli, agent, tmp_path):
    res = cli("job", "run", write(tmp_path, "pn.hcl", job_hcl("pyn", count=1)))
    assert res.returncode == 0, res.stdout + res.stderr
    n = nomad.Nomad(host="127.0.0.1", port=agent.port, timeout=10)
    latest = n.job.get_deployment("pyn")
    assert latest["JobID"] == "pyn" and latest["Status"] == "successful"
    assert [d["ID"] for d in n.job.get_deployments("pyn")] == [latest["ID"]]
    assert latest["ID"] in [d["ID"] for d in n.deployments.get_deployments()]
    assert n.deployment.get_deployment(latest["ID"])["TaskGroups"]["g"]["HealthyAllocs"] == 1
    allocs = n.deployment.get_deployment_allocations(latest["ID"])
    assert len(allocs) == 1 and allocs[0]["JobID"] == "pyn"
    with pytest.raises(nomad.api.exceptions.BaseNomadException):
        n.deployment.fail_deployment(latest["ID"])


# -- on a terminal the table updates in place ------------------------------------------------------
def run_on_tty(agent, cwd: Path, *args: str, timeout: float = 150) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its stdout and stderr; (exit code, everything written)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*YURT, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd,
                            env={**os.environ, "YURT_ADDR": agent.url, "COLUMNS": "200", "TERM": "xterm"})
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:      # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise AssertionError(f"yurt {' '.join(args)} still running after {timeout}s")
        return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)


def test_run_on_a_terminal_updates_the_deployment_in_place(agent, tmp_path):
    path = write(tmp_path, "tty.hcl", job_hcl("ttyjob", update='min_healthy_time = "2s"'))
    code, text = run_on_tty(agent, tmp_path, "job", "run", path)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
    assert code == 0, plain
    d = api(agent, "/v1/job/ttyjob/deployment")
    assert d["Status"] == "successful"
    name = d["ID"][:8]
    assert f'Deployment "{name}" in progress...' in plain       # the spinner's line
    assert "\x1b[2K" in text and "\x1b[1A" in text                # lines erased and rewritten in place
    # what stays on the screen: the status line and the final block, once
    assert plain.count(f'✓ Deployment "{name}" successful') == 1, plain
    final = plain.split(f'✓ Deployment "{name}" successful', 1)[1]
    assert kv_value(final, "Status") == "successful"
    assert deployed_row(final)[:5] == ["g", "2", "2", "2", "0"]
    assert "Traceback" not in plain
