"""An agent that dies leaves its tasks running; a new one re-attaches instead of starting twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from yurt.client import AllocRunner
from yurt.client.alloc_state import load
from yurt.client.procs import is_alive

from .test_client_util import DRIVERS, Recorder, event_types, logs, make_alloc, sh, wait_for

AGENT = textwrap.dedent("""
    import json, sys, time
    from yurt.client import AllocRunner, RawExecDriver
    from yurt.client.alloc_state import load
    from yurt.structs import Allocation
    data_dir, alloc_file = sys.argv[1], sys.argv[2]
    alloc = Allocation.model_validate(json.load(open(alloc_file)))
    runner = AllocRunner(alloc, data_dir=data_dir, drivers={"raw_exec": RawExecDriver()})
    runner.run()
    deadline = time.monotonic() + 60
    # running, and its handles written (the state file is written just after the state changes)
    def recorded():
        saved = load(data_dir, alloc.id)
        return saved is not None and all(t.handle for t in saved.tasks.values())
    while runner.client_status != "running" or not recorded():
        if time.monotonic() > deadline:
            print("NOT RUNNING", runner.client_status, flush=True)
            sys.exit(1)
        time.sleep(0.05)
    print("RUNNING", flush=True)
    time.sleep(3600)  # until the test kills this agent
""")


def run_agent(tmp_path, alloc) -> subprocess.Popen:
    alloc_file = tmp_path / "alloc.json"
    alloc_file.write_text(json.dumps(alloc.to_json()))
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    agent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(alloc_file)],
                             stdout=subprocess.PIPE, text=True)
    assert agent.stdout.readline().strip() == "RUNNING"
    return agent


def kill_agent(agent: subprocess.Popen) -> None:
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(10)


def test_restored_runner_reattaches_to_the_running_task(tmp_path):
    script = ('echo $$ >> "$NOMAD_ALLOC_DIR/pids"; echo started; '
              "trap 'echo stopping; exit 0' INT; while true; do sleep 0.1; done")
    alloc = make_alloc([sh("web", script)])
    agent = run_agent(tmp_path, alloc)
    data = tmp_path / "data"
    saved = load(data, alloc.id)
    handle = saved.tasks["web"].handle
    assert handle is not None and saved.tasks["web"].state.state == "running"
    kill_agent(agent)

    assert is_alive(handle.pid, handle.pid_start), "the task must outlive its agent"
    assert is_alive(handle.executor_pid, handle.executor_start)

    rec = Recorder()
    runner = AllocRunner.restore(data, alloc.id, drivers=DRIVERS, on_update=rec)
    runner.run()
    wait_for(lambda: rec.updates and rec.last[0] == "running", what="running after restore")
    assert runner.task_runners["web"].handle.pid == handle.pid
    pids = (runner.alloc_dir.shared / "pids").read_text().split()
    assert pids == [str(handle.pid)], "no second copy was started"
    types = event_types(runner.task_states()["web"])
    assert types.count("Started") == 1 and types.count("Received") == 1

    runner.stop()
    assert runner.wait(30)
    status, _, states = rec.last
    assert status == "complete"
    assert event_types(states["web"])[-3:] == ["Killing", "Terminated", "Killed"]
    assert not is_alive(handle.pid, handle.pid_start)
    assert "stopping" in logs(runner, "web")
    wait_for(lambda: not is_alive(handle.executor_pid, handle.executor_start), what="executor exit")


def test_task_that_ended_while_the_agent_was_down_is_reported(tmp_path):
    script = 'echo working; while [ ! -e "$NOMAD_TASK_DIR/go" ]; do sleep 0.05; done; exit 0'
    alloc = make_alloc([sh("job", script)], job_type="batch")
    agent = run_agent(tmp_path, alloc)
    data = tmp_path / "data"
    handle = load(data, alloc.id).tasks["job"].handle
    kill_agent(agent)
    (data / "alloc" / alloc.id / "job" / "local" / "go").write_text("")
    wait_for(lambda: not is_alive(handle.executor_pid, handle.executor_start), what="task end")

    rec = Recorder()
    runner = AllocRunner.restore(data, alloc.id, drivers=DRIVERS, on_update=rec)
    runner.run()
    assert runner.wait(30)
    status, _, states = rec.last
    assert status == "complete"
    assert event_types(states["job"])[-1] == "Terminated"
    assert event_types(states["job"]).count("Started") == 1
