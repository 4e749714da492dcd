"""The cluster CLI against a real dev agent: run, status, plan, update, scale, alloc, logs, stop.

One `yurt agent -dev` process serves the whole module (raw_exec driver, no docker). Every command
runs the real CLI in a subprocess with YURT_ADDR pointing at it. Waits are for conditions, with
timeouts; nothing asserts how long anything took.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .agent_util import dev_agent, free_port, wait_for
from .conftest import run_yurt


@pytest.fixture(scope="module")
def agent():
    """A `yurt agent -dev` on a free port; yields its address; every job purged at the end."""
    with dev_agent() as proc:
        yield proc.url


@pytest.fixture
def cli(agent, tmp_path):
    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_yurt(*args, cwd=tmp_path, env={"YURT_ADDR": agent, "NO_COLOR": "1"}, timeout=timeout)
    return run


def web_job(name: str, count: int = 1, greeting: str = "hello", driver: str = "raw_exec") -> str:
    image = '\n        image   = "python:3.11"' if driver == "docker" else ""
    return f'''job "{name}" {{
  datacenters = ["dc1"]
  group "web" {{
    count = {count}
    network {{
      port "http" {{}}
    }}
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    task "server" {{
      driver = "{driver}"
      config {{{image}
        command = "{sys.executable}"
        args    = ["-u", "-m", "http.server", "--bind", "127.0.0.1", "${{NOMAD_PORT_http}}"]
      }}
      env {{
        GREETING = "{greeting}"
      }}
      resources {{
        cpu    = 50
        memory = 32
      }}
    }}
  }}
}}
'''


def failing_job(name: str, config: str, job_type: str = "service") -> str:
    """A job whose raw_exec task (its `config` lines) fails, neither restarted nor rescheduled."""
    return f'''job "{name}" {{
  type = "{job_type}"
  group "g" {{
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
        {config}
      }}
    }}
  }}
}}
'''


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def api(agent: str, path: str, **params):
    return httpx.get(f"{agent}{path}", params=params, timeout=10).json()


def running(agent: str, job: str) -> list[dict]:
    return [a for a in api(agent, f"/v1/job/{job}/allocations")
            if a["DesiredStatus"] == "run" and a["ClientStatus"] == "running"]


def port_of(agent: str, alloc_id: str) -> int:
    alloc = api(agent, f"/v1/allocation/{alloc_id}")
    return alloc["AllocatedResources"]["Shared"]["Ports"][0]["Value"]


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr


# -- the life of a service job ----------------------------------------------------------------
def test_run_status_plan_update_scale_stop(cli, agent, tmp_path):
    job_file = write(tmp_path, "web.nomad.hcl", web_job("web"))
    res = cli("job", "run", "-timeout", "90s", job_file)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'Monitoring evaluation "' in res.stdout
    assert 'Evaluation triggered by job "web"' in res.stdout
    assert "created: node" in res.stdout and 'group "web"' in res.stdout
    assert '-> "running"' in res.stdout

    allocs = running(agent, "web")
    assert len(allocs) == 1
    first = allocs[0]["ID"]
    port = port_of(agent, first)
    body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/"), 30, "the http server")
    assert body.status_code == 200

    # job status: the list, then the job
    res = cli("job", "status")
    assert res.returncode == 0 and "web" in res.stdout and "Submit Date" in res.stdout
    res = cli("job", "status", "web")
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    for text in ("ID            = web", "Type          = service", "Status        = running", "Summary",
                 "Task Group  Queued  Starting  Running", "Allocations", first[:8]):
        assert text in res.stdout, res.stdout
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith(first[:8]))
    assert "running" in row and " ago" in row
    assert first not in res.stdout  # short IDs unless -verbose
    assert first in cli("job", "status", "-verbose", "web").stdout
    res = cli("job", "status", "-json", "web")
    assert res.returncode == 0 and '"ID": "web"' in res.stdout

    # plan: unchanged -> 0, count changed -> 1 with the diff
    res = cli("job", "plan", job_file)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Scheduler dry-run:" in res.stdout and "- All tasks successfully allocated." in res.stdout
    assert "Job Modify Index: " in res.stdout and "-check-index" in res.stdout
    scaled = write(tmp_path, "web3.nomad.hcl", web_job("web", count=3))
    res = cli("job", "plan", scaled)
    assert res.returncode == 1, res.stdout + res.stderr
    assert '+/- Job: "web"' in res.stdout
    assert '+/- Task Group: "web" (2 create' in res.stdout
    assert '+/- Count: "1" => "3"' in res.stdout

    # update: a new env value -> new version, the old allocation stopped
    changed = write(tmp_path, "web-v2.nomad.hcl", web_job("web", greeting="bonjour"))
    res = cli("job", "run", "-timeout", "90s", changed)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    now = running(agent, "web")
    assert len(now) == 1 and now[0]["ID"] != first and now[0]["JobVersion"] == 1
    wait_for(lambda: next(a for a in api(agent, "/v1/job/web/allocations") if a["ID"] == first)["ClientStatus"]
             == "complete", 60, "the old allocation to stop")
    assert api(agent, "/v1/job/web")["Version"] == 1

    # scale 1 -> 3
    scaled = write(tmp_path, "web3.nomad.hcl", web_job("web", count=3, greeting="bonjour"))
    res = cli("job", "run", "-timeout", "90s", scaled)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("created: node") == 2
    assert len(running(agent, "web")) == 3
    res = cli("job", "status", "web")
    summary = res.stdout.split("Summary", 1)[1].splitlines()[2].split()
    assert summary[0] == "web" and summary[3] == "3", res.stdout

    # stop: every allocation complete, the job dead (stopped)
    res = cli("job", "stop", "web")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'All allocations of job "web" are stopped' in res.stdout, res.stdout
    stopped = api(agent, "/v1/job/web/allocations")
    assert len(stopped) == 4  # the first, its v2 replacement, two more from the scale-up
    assert [(a["DesiredStatus"], a["ClientStatus"]) for a in stopped] == [("stop", "complete")] * 4, stopped
    res = cli("job", "status", "web")
    assert "dead (stopped)" in res.stdout, res.stdout
    res = cli("job", "status")
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("web "))
    assert "dead (stopped)" in row


def _get(url: str):
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def test_alloc_status_and_logs(cli, agent, tmp_path):
    job_file = write(tmp_path, "logs.nomad.hcl", web_job("logsjob"))
    res = cli("job", "run", "-timeout", "90s", job_file)
    assert res.returncode == 0, res.stdout + res.stderr
    alloc = running(agent, "logsjob")[0]
    port = port_of(agent, alloc["ID"])
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/"), 30, "the http server")

    res = cli("alloc", "status", alloc["ID"][:8])
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    for text in (f"ID                  = {alloc['ID'][:8]}", "Job ID              = logsjob",
                 "Client Status       = running", "Desired Status      = run", 'Task "server" is "running"',
                 "Recent Events:", "Time", "Type", "Description", "Started", "Task started by client",
                 "Allocation Addresses:", f"127.0.0.1:{port}"):
        assert text in res.stdout, res.stdout
    events = res.stdout.split("Recent Events:", 1)[1].splitlines()
    assert events[2].split()[1] == "Started"  # newest first

    # stdout of the task (the task is the only one, so TASK may be left out)
    out = wait_for(lambda: (r := cli("alloc", "logs", alloc["ID"])).returncode == 0 and "Serving HTTP" in r.stdout
                   and r, 30, "the task's stdout")
    assert f"port {port}" in out.stdout
    res = cli("alloc", "logs", "-stderr", alloc["ID"], "server")
    assert res.returncode == 0 and "GET / " in res.stdout, res.stdout + res.stderr
    res = cli("alloc", "logs", "-tail", "-n", "1", "-stderr", alloc["ID"])
    assert res.returncode == 0 and len(res.stdout.strip().splitlines()) == 1
    res = cli("alloc", "logs", alloc["ID"], "nosuchtask")
    assert res.returncode == 1 and "nosuchtask" in res.stderr

    res = cli("alloc", "stop", alloc["ID"][:8])
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: running(agent, "logsjob") and running(agent, "logsjob")[0]["ID"] != alloc["ID"], 60,
             "the replacement allocation")
    assert cli("job", "stop", "-purge", "logsjob").returncode == 0


def test_missing_driver_is_a_placement_failure(cli, agent, tmp_path):
    job_file = write(tmp_path, "docker.nomad.hcl", web_job("dockerjob", count=2, driver="docker"))
    res = cli("job", "run", job_file)
    no_traceback(res)
    assert res.returncode == 2, res.stdout + res.stderr
    assert 'finished with status "complete" but failed to place all allocations:' in res.stdout
    assert 'Task Group "web" (failed to place 2 allocations):' in res.stdout
    assert "missing driver docker" in res.stdout and "      * " in res.stdout
    assert "waiting for additional capacity to place remainder" in res.stdout
    res = cli("job", "status", "dockerjob")
    assert res.returncode == 0 and "Placement Failure" in res.stdout and "missing driver docker" in res.stdout
    assert "No allocations placed" in res.stdout
    # the plan shows the same failure
    res = cli("job", "plan", job_file)
    assert "- WARNING: Failed to place all allocations." in res.stdout and "missing driver docker" in res.stdout


def test_batch_job_completes_and_failed_task_explained(cli, agent, tmp_path):
    batch = write(tmp_path, "batch.nomad.hcl", f'''job "hello" {{
  type = "batch"
  group "g" {{
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "{sys.executable}"
        args    = ["-c", "print('hello from batch')"]
      }}
    }}
  }}
}}
''')
    res = cli("job", "run", "-timeout", "90s", batch)
    assert res.returncode == 0, res.stdout + res.stderr
    alloc = api(agent, "/v1/job/hello/allocations")[0]
    assert cli("alloc", "logs", alloc["ID"]).stdout.strip() == "hello from batch"

    bad = write(tmp_path, "bad.nomad.hcl", failing_job("broken", 'command = "/nonexistent/program"'))
    res = cli("job", "run", "-timeout", "90s", bad)
    no_traceback(res)
    assert res.returncode == 1, res.stdout + res.stderr
    assert '-> "failed"' in res.stdout and "failed to start" in res.stdout, res.stdout


def test_detach_eval_status_and_prefixes(cli, agent, tmp_path):
    for name in ("multi-a", "multi-b"):
        res = cli("job", "run", "-detach", write(tmp_path, f"{name}.hcl", web_job(name, driver="docker")))
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("Job registration successful\nEvaluation ID: ")
    eval_id = res.stdout.split("Evaluation ID: ")[1].strip()
    res = cli("eval", "status", eval_id[:8])
    assert res.returncode == 0, res.stderr
    assert "Job ID             = multi-b" in res.stdout and "Placement Failures = true" in res.stdout
    assert "missing driver docker" in res.stdout

    res = cli("job", "status", "multi")
    assert res.returncode == 1 and "Prefix matched multiple jobs" in res.stdout
    assert "multi-a" in res.stdout and "multi-b" in res.stdout
    res = cli("job", "status", "multi-a")
    assert res.returncode == 0 and "ID            = multi-a" in res.stdout

    res = cli("job", "stop", "nosuchjob")
    assert res.returncode == 1 and 'No job(s) with prefix or ID "nosuchjob" found' in res.stderr
    res = cli("alloc", "status", "ffffffff")
    assert res.returncode == 1 and "No allocation(s)" in res.stderr


def test_stop_with_no_shutdown_delay(cli, agent, tmp_path):
    """A group with a ten-minute shutdown_delay: `alloc stop -no-shutdown-delay` and `job stop
    -no-shutdown-delay` (Nomad's flags) stop it without waiting it; the allocations carry
    DesiredTransition.NoShutdownDelay, and a bad value of the API's parameter is a 400 that
    stops nothing."""
    text = web_job("nodelay", count=2).replace('  group "web" {', '  group "web" {\n    shutdown_delay = "10m"', 1)
    res = cli("job", "run", write(tmp_path, "nodelay.hcl", text))
    assert res.returncode == 0, res.stdout + res.stderr
    first, _ = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(running(agent, "nodelay")),
                        what="two allocations running")
    res = cli("alloc", "stop", "-no-shutdown-delay", first["ID"])   # follows the replacement
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: api(agent, f"/v1/allocation/{first['ID']}")["ClientStatus"] == "complete", timeout=60,
             what="the stopped allocation complete without its ten minutes")
    assert api(agent, f"/v1/allocation/{first['ID']}")["DesiredTransition"]["NoShutdownDelay"] is True

    r = httpx.delete(f"{agent}/v1/job/nodelay", params={"no_shutdown_delay": "maybe"}, timeout=10)
    assert r.status_code == 400 and "no_shutdown_delay" in r.text and "true or" in r.text, r.text
    assert len(running(agent, "nodelay")) == 2
    res = cli("job", "stop", "-no-shutdown-delay", "nodelay")
    assert res.returncode == 0, res.stdout + res.stderr
    left = [a for a in api(agent, "/v1/job/nodelay/allocations") if a["ID"] != first["ID"]]
    assert left and all(a["DesiredTransition"]["NoShutdownDelay"] is True for a in left), left
    wait_for(lambda: all(api(agent, f"/v1/allocation/{a['ID']}")["ClientStatus"] == "complete" for a in left),
             timeout=60, what="every allocation complete without its ten minutes")
    res = cli("job", "stop", "-h")
    assert "-no-shutdown-delay" in res.stdout


def test_job_eval_and_force_reschedule(cli, agent, tmp_path):
    """`yurt job eval` (Nomad's): a new evaluation; -force-reschedule reschedules a failed
    allocation that its policy (no attempts) would leave alone; a periodic job is refused."""
    text = failing_job("evalme", 'command = "/bin/sh"\n        args    = ["-c", "exit 3"]', job_type="batch")
    res = cli("job", "run", "-detach", write(tmp_path, "evalme.hcl", text))
    assert res.returncode == 0, res.stdout + res.stderr
    (failed,) = wait_for(lambda: [a for a in api(agent, "/v1/job/evalme/allocations")
                                  if a["ClientStatus"] == "failed"] or None, timeout=60, what="the failed allocation")
    res = cli("job", "eval", "-detach", "-verbose", "evalme")   # a plain evaluation: the policy leaves it alone
    assert res.returncode == 0 and res.stdout.startswith('Created eval ID: "'), res.stdout + res.stderr
    eval_id = res.stdout.split('"')[1]
    wait_for(lambda: api(agent, f"/v1/evaluation/{eval_id}")["Status"] == "complete", what="the evaluation done")
    assert len(api(agent, "/v1/job/evalme/allocations")) == 1
    # followed, as `job run` is: the new allocation fails as the first did, and the exit code says so
    res = cli("job", "eval", "-force-reschedule", "evalme")
    assert res.returncode == 1 and "Evaluation triggered by job \"evalme\"" in res.stdout, res.stdout + res.stderr
    assert "created: node" in res.stdout and "failed: Failed tasks" in res.stdout, res.stdout
    allocs = wait_for(lambda: (lambda a: a if len(a) == 2 else None)(api(agent, "/v1/job/evalme/allocations")),
                      timeout=60, what="the rescheduled allocation")
    (new,) = [a for a in allocs if a["ID"] != failed["ID"]]
    assert api(agent, f"/v1/allocation/{new['ID']}")["PreviousAllocation"] == failed["ID"]
    r = httpx.put(f"{agent}/v1/job/evalme/evaluate", json={"EvalOptions": {"ForceReschedule": "yes"}}, timeout=10)
    assert r.status_code == 400 and "ForceReschedule" in r.text, r.text

    periodic = text.replace('job "evalme" {', 'job "evalper" {\n  periodic {\n    crons = ["0 0 1 1 *"]\n  }', 1)
    res = cli("job", "run", "-detach", write(tmp_path, "evalper.hcl", periodic))
    assert res.returncode == 0, res.stdout + res.stderr
    res = cli("job", "eval", "evalper")
    assert res.returncode == 1 and "can't evaluate periodic job 'evalper'" in res.stderr, res.stdout + res.stderr
    no_traceback(res)


def test_job_start_runs_a_stopped_job_again(cli, agent, tmp_path):
    """`yurt job start` (Nomad 1.9's): a stopped job's latest version runs again, followed as
    `job run` is; a job that runs is refused with exit 1."""
    res = cli("job", "run", write(tmp_path, "again.hcl", web_job("again")))
    assert res.returncode == 0, res.stdout + res.stderr
    res = cli("job", "start", "again")
    assert res.returncode == 1 and 'Job "again" has not been stopped' in res.stderr, res.stdout + res.stderr
    res = cli("job", "stop", "again")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not running(agent, "again")
    version = api(agent, "/v1/job/again")["Version"]
    res = cli("job", "start", "again")
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'Evaluation triggered by job "again"' in res.stdout and '-> "running"' in res.stdout, res.stdout
    job = api(agent, "/v1/job/again")
    assert job["Stop"] is False and job["Version"] == version + 1
    wait_for(lambda: len(running(agent, "again")) == 1, what="the job running again")
    res = cli("job", "stop", "-detach", "again")
    assert res.returncode == 0
    res = cli("job", "start", "-detach", "again")
    assert res.returncode == 0 and res.stdout.startswith("Job start successful\nEvaluation ID: "), res.stdout


def test_job_restart_in_place_then_rescheduled_in_batches(cli, agent, tmp_path):
    """`yurt job restart` (Nomad's): the running allocations' tasks restarted in place (a batch of
    two, despite `restart { attempts = 0 }`: a restart asked for is not a failure); with
    -reschedule -batch-size 50%, each stopped and replaced in turn; bad flags refused."""
    res = cli("job", "run", write(tmp_path, "rs.hcl", web_job("rs", count=2)))
    assert res.returncode == 0, res.stdout + res.stderr
    before = sorted(a["ID"] for a in running(agent, "rs"))
    assert len(before) == 2
    res = cli("job", "restart", "-yes", "-batch-size", "2", "rs")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Restarting 2 allocations" in res.stdout and "Restarting 1st batch of 2 allocations" in res.stdout
    assert res.stdout.count("Restarting running tasks in allocation") == 2, res.stdout
    assert res.stdout.rstrip().endswith("Job restarted successfully!"), res.stdout
    restarted = wait_for(lambda: all(api(agent, f"/v1/allocation/{a}")["TaskStates"]["server"]["Restarts"] >= 1
                                     for a in before), timeout=60, what="both tasks restarted in place")
    assert restarted and sorted(a["ID"] for a in running(agent, "rs")) == before

    # 50 % of 2: one at a time, the next once the replacement of the first runs
    res = cli("job", "restart", "-yes", "-reschedule", "-batch-size", "50%", "rs")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    said = [i for i, ln in enumerate(lines) if "Rescheduling allocation" in ln or '" is "running"' in ln]
    assert [("Rescheduling" in lines[i]) for i in said] == [True, False, True, False], res.stdout
    after = sorted(a["ID"] for a in running(agent, "rs"))
    assert len(after) == 2 and not set(after) & set(before)

    for args, words in ((["-batch-size", "0"], 'Invalid -batch-size value "0"'),
                        (["-reschedule", "-task", "server"], "-reschedule option cannot be used with -task"),
                        ([], "-on-error ask needs an interactive terminal: pass -yes")):
        res = cli("job", "restart", *args, "rs")
        assert res.returncode == 1 and words in res.stderr, (args, res.stdout, res.stderr)
    res = cli("job", "stop", "rs")
    assert res.returncode == 0


def test_node_status(cli, agent):
    res = cli("node", "status")
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()[:2]
    assert header.split() == ["ID", "DC", "Name", "Class", "Drain", "Eligibility", "Status"]
    assert row.split()[-1] == "ready" and "dc1" in row
    node_id = row.split()[0]
    res = cli("node", "status", node_id)
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for line in (f"ID            = {node_id}", "DC            = dc1", "Drain         = false",
                 "Eligibility   = eligible", "Status        = ready", "Allocated Resources", "Drivers",
                 "Allocations"):
        assert line in lines, res.stdout
    driver_status = next(ln for ln in lines if ln.startswith("Driver Status = "))
    healthy = driver_status.removeprefix("Driver Status = ").split(" (unhealthy: ")[0].split(",")
    assert "raw_exec" in healthy, driver_status
    assert ["raw_exec", "true", "true", "Healthy"] in [ln.split() for ln in lines], res.stdout


def test_unreachable_agent(tmp_path):
    port = free_port()
    for args in (["job", "status"], ["node", "status"], ["job", "run", write(tmp_path, "j.hcl", web_job("x"))]):
        res = run_yurt(*args, "-address", f"http://127.0.0.1:{port}", cwd=tmp_path)
        assert res.returncode == 1, res.stdout + res.stderr
        assert (f"Error: cannot reach the Yurt agent at http://127.0.0.1:{port}: connection refused; "
                "is `yurt agent` running?") in res.stderr
        no_traceback(res)
    res = run_yurt("job", "status", cwd=tmp_path, env={"YURT_ADDR": f"127.0.0.1:{port}"})
    assert res.returncode == 1 and "cannot reach the Yurt agent" in res.stderr
    res = run_yurt("job", "plan", write(tmp_path, "p.hcl", web_job("x")), "-address", f"http://127.0.0.1:{port}",
                   cwd=tmp_path)
    assert res.returncode == 255 and "cannot reach the Yurt agent" in res.stderr
