"""The allocation and task runners with real processes: restarts, kills, lifecycle order."""

from __future__ import annotations

import signal
import time
from typing import ClassVar

from yurt.client.alloc_hooks import AllocHook, AllocHookContext, default_hooks
from yurt.client.alloc_state import load
from yurt.structs import TaskLifecycle
from yurt.structs.duration import SECOND

from .test_client_util import event_types, fast_restart, logs, make_alloc, sh, start_alloc, wait_for


def test_batch_task_exiting_zero_completes(tmp_path):
    alloc = make_alloc([sh("once", "echo hello from $NOMAD_TASK_NAME")], job_type="batch")
    runner, rec = start_alloc(alloc, tmp_path)
    assert runner.wait(30)
    status, description, states = rec.last
    assert (status, description) == ("complete", "All tasks have completed")
    st = states["once"]
    assert st.state == "dead" and not st.failed and st.restarts == 0
    assert event_types(st) == ["Received", "Task Setup", "Started", "Terminated"]
    assert st.events[-1].exit_code == 0 and st.events[-1].display_message == "Exit Code: 0"
    assert st.started_at and st.finished_at
    assert logs(runner, "once") == "hello from once\n"
    assert rec.statuses[0] == "pending" and "running" in rec.statuses


def test_crashing_task_restarts_attempts_times_then_fails(tmp_path):
    task = sh("crash", "echo run; exit 3", restart_policy=fast_restart(2))
    runner, rec = start_alloc(make_alloc([task]), tmp_path)
    assert runner.wait(60)
    status, _, states = rec.last
    assert status == "failed"
    st = states["crash"]
    assert st.state == "dead" and st.failed and st.restarts == 2
    types = event_types(st)
    assert types.count("Started") == 3 and types.count("Terminated") == 3
    assert types.count("Restarting") == 2
    assert types[-1] == "Not Restarting"
    last = st.events[-1]
    assert last.display_message == 'Exceeded allowed attempts 2 in interval 5s and mode is "fail"'
    assert last.fails_task
    restarting = next(e for e in st.events if e.type == "Restarting")
    assert restarting.display_message.startswith("Task restarting in ")
    assert restarting.restart_reason == "Restart within policy"
    assert all(e.exit_code == 3 for e in st.events if e.type == "Terminated")
    assert logs(runner, "crash") == "run\nrun\nrun\n"  # the same log file continues


def test_service_task_exiting_zero_is_restarted(tmp_path):
    task = sh("short", "exit 0", restart_policy=fast_restart(1))
    runner, rec = start_alloc(make_alloc([task], job_type="service"), tmp_path)
    assert runner.wait(60)
    st = rec.last[2]["short"]
    assert st.restarts == 1 and st.failed and rec.last[0] == "failed"


def test_delay_mode_waits_for_the_next_interval(tmp_path):
    task = sh("crash", "exit 1", restart_policy=fast_restart(1, mode="delay", interval_s=1.0))
    runner, _rec = start_alloc(make_alloc([task]), tmp_path)
    wait_for(lambda: any(e.restart_reason == "Exceeded allowed attempts, applying a delay"
                         for e in runner.task_states()["crash"].events), what="delay restart")
    wait_for(lambda: runner.task_states()["crash"].restarts >= 3, what="restarts past attempts")
    runner.stop()
    assert runner.wait(30)
    st = runner.task_states()["crash"]
    assert st.state == "dead" and not st.failed
    assert "Not Restarting" not in event_types(st)


def test_missing_command_fails_to_start_and_follows_policy(tmp_path):
    from yurt.structs import Task
    task = Task(name="bad", driver="raw_exec", config={"command": "nosuchcmd"},
                restart_policy=fast_restart(1))
    runner, rec = start_alloc(make_alloc([task]), tmp_path)
    assert runner.wait(60)
    status, _, states = rec.last
    st = states["bad"]
    assert status == "failed" and st.failed
    assert event_types(st) == ["Received", "Task Setup", "Driver Failure", "Restarting",
                               "Driver Failure", "Not Restarting"]
    failure = st.events[2]
    assert failure.driver_error == 'failed to start: exec: "nosuchcmd": executable file not found in $PATH'
    assert failure.display_message == failure.driver_error


def test_missing_driver_is_not_restarted(tmp_path):
    from yurt.structs import Task
    task = Task(name="dock", driver="docker", config={"image": "x"}, restart_policy=fast_restart(2))
    runner, rec = start_alloc(make_alloc([task]), tmp_path)
    assert runner.wait(30)
    st = rec.last[2]["dock"]
    assert st.failed and event_types(st)[-1] == "Not Restarting"
    assert st.events[-1].restart_reason == "Error was unrecoverable"


def test_stop_sends_kill_signal_and_the_trapping_task_exits(tmp_path):
    script = "trap 'echo got INT; exit 0' INT; echo ready; while true; do sleep 0.1; done"
    alloc = make_alloc([sh("trapper", script)])  # default kill_signal: SIGINT
    runner, rec = start_alloc(alloc, tmp_path)
    wait_for(lambda: runner.client_status == "running" and "ready" in logs(runner, "trapper"),
             what="running")
    runner.stop()
    assert runner.wait(30)
    status, _, states = rec.last
    st = states["trapper"]
    assert status == "complete" and st.state == "dead" and not st.failed
    assert event_types(st)[-3:] == ["Killing", "Terminated", "Killed"]
    assert st.events[-3].display_message == "Sent interrupt. Waiting 5s before force killing"
    assert st.events[-2].exit_code == 0
    assert st.events[-1].display_message == "Task successfully killed"
    assert "got INT" in logs(runner, "trapper")


def test_custom_kill_signal_and_sigkill_after_kill_timeout(tmp_path):
    term = sh("term", "trap 'echo got TERM; exit 2' TERM; echo ready; while true; do sleep 0.1; done",
              kill_signal="SIGTERM")
    stubborn = sh("stubborn", "trap '' INT TERM; echo ready; while true; do sleep 0.1; done",
                  kill_timeout=1 * SECOND)
    runner, rec = start_alloc(make_alloc([term, stubborn]), tmp_path)
    wait_for(lambda: all("ready" in logs(runner, t) for t in ("term", "stubborn")), what="ready")
    runner.stop()
    assert runner.wait(30)
    states = rec.last[2]
    term_exit = [e for e in states["term"].events if e.type == "Terminated"][-1]
    assert term_exit.exit_code == 2 and "got TERM" in logs(runner, "term")
    killing = next(e for e in states["term"].events if e.type == "Killing")
    assert killing.display_message == "Sent interrupt. Waiting 5s before force killing"
    assert killing.details["kill_signal"] == "SIGTERM"
    stub_exit = [e for e in states["stubborn"].events if e.type == "Terminated"][-1]
    assert stub_exit.signal == signal.SIGKILL
    assert event_types(states["stubborn"])[-1] == "Killed"


def test_failed_task_kills_its_siblings(tmp_path):
    bad = sh("bad", "sleep 0.5; exit 1", restart_policy=fast_restart(0))
    good = sh("good", "while true; do sleep 0.1; done")
    runner, rec = start_alloc(make_alloc([bad, good]), tmp_path)
    assert runner.wait(60)
    status, _, states = rec.last
    assert status == "failed"
    assert states["bad"].failed
    assert states["bad"].events[-1].display_message == "Policy allows no restarts"
    good_types = event_types(states["good"])
    assert good_types[-4:] == ["Sibling Task Failed", "Killing", "Terminated", "Killed"]
    assert states["good"].events[-4].display_message == 'Task\'s sibling "bad" failed'
    assert not states["good"].failed


def test_lifecycle_order(tmp_path):
    log = 'echo "$NOMAD_TASK_NAME" >> "$NOMAD_ALLOC_DIR/order"'
    tasks = [
        sh("main", f"{log}; sleep 1"),
        sh("init", f"sleep 0.5; {log}", lifecycle=TaskLifecycle(hook="prestart")),
        sh("sidecar", f"{log}; while true; do sleep 0.1; done",
           lifecycle=TaskLifecycle(hook="prestart", sidecar=True)),
        sh("after", log, lifecycle=TaskLifecycle(hook="poststart")),
        sh("cleanup", log, lifecycle=TaskLifecycle(hook="poststop")),
    ]
    runner, rec = start_alloc(make_alloc(tasks, job_type="batch"), tmp_path)
    assert runner.wait(60)
    order = (runner.alloc_dir.shared / "order").read_text().split()
    assert set(order[:2]) == {"init", "sidecar"}
    assert order[2:] == ["main", "after", "cleanup"]
    status, _, states = rec.last
    assert status == "complete"
    assert all(s.state == "dead" and not s.failed for s in states.values())
    assert event_types(states["sidecar"])[-4:] == ["Main Tasks Dead", "Killing", "Terminated", "Killed"]
    assert "pending" not in rec.statuses[rec.statuses.index("running"):]


def test_failing_prestart_task_fails_the_allocation(tmp_path):
    tasks = [sh("main", "echo main"),
             sh("init", "exit 4", lifecycle=TaskLifecycle(hook="prestart"), restart_policy=fast_restart(0))]
    runner, rec = start_alloc(make_alloc(tasks, job_type="batch"), tmp_path)
    assert runner.wait(30)
    status, _, states = rec.last
    assert status == "failed"
    assert "Started" not in event_types(states["main"])
    assert event_types(states["main"])[-1] == "Sibling Task Failed"
    assert logs(runner, "main") == ""


def test_leader_death_stops_the_others(tmp_path):
    leader = sh("leader", "sleep 0.5", leader=True)
    follower = sh("follower", "while true; do sleep 0.1; done")
    runner, rec = start_alloc(make_alloc([leader, follower], job_type="batch"), tmp_path)
    assert runner.wait(30)
    status, _, states = rec.last
    assert status == "complete"
    assert "Leader Task Dead" in event_types(states["follower"])


def test_state_is_persisted_and_destroy_removes_everything(tmp_path):
    runner, _rec = start_alloc(make_alloc([sh("t", "echo hi")], job_type="batch"), tmp_path)
    assert runner.wait(30)
    saved = load(tmp_path, runner.alloc_id)
    assert saved is not None and saved.done and saved.tasks["t"].state.state == "dead"
    assert runner.alloc_dir.exists()
    runner.destroy(30)
    assert not runner.alloc_dir.exists()
    assert load(tmp_path, runner.alloc_id) is None


def test_server_stop_through_update(tmp_path):
    alloc = make_alloc([sh("web", "while true; do sleep 0.1; done")])
    runner, rec = start_alloc(alloc, tmp_path)
    wait_for(lambda: runner.client_status == "running", what="running")
    stopped = alloc.model_copy(update={"desired_status": "stop", "job": None})
    runner.update(stopped)
    assert runner.wait(30)
    assert rec.last[0] == "complete"
    assert runner.alloc.job is not None  # the job is kept for the local state
    assert event_types(rec.last[2]["web"])[-1] == "Killed"


def test_hooks_add_env_and_a_failing_prerun_fails_the_allocation(tmp_path):
    import os

    from yurt.client import AllocHook, default_hooks

    class EnvHook(AllocHook):
        name = "env"
        calls: ClassVar[list[str]] = []

        def prerun(self, ctx):
            ctx.resources.env["FROM_HOOK"] = "hooked"
            self.calls.append("prerun")

        def postrun(self, ctx):
            self.calls.append("postrun")

    hook = EnvHook()
    task = sh("t", 'echo "$FROM_HOOK"')
    runner, rec = start_alloc(make_alloc([task], job_type="batch"), tmp_path / "a",
                              hooks=[*default_hooks(), hook])
    assert runner.wait(30)
    assert logs(runner, "t") == "hooked\n" and hook.calls == ["prerun", "postrun"]

    class Broken(AllocHook):
        name = "network"

        def prerun(self, ctx):
            raise RuntimeError("no bridge")

    runner, rec = start_alloc(make_alloc([sh("t", "echo never")], job_type="batch"), tmp_path / "b",
                              hooks=[*default_hooks(), Broken()])
    assert runner.wait(30)
    status, description, states = rec.last
    assert status == "failed" and description == "prerun hook 'network' failed: no bridge"
    assert event_types(states["t"])[-1] == "Setup Failure" and states["t"].failed
    assert not os.path.exists(runner.alloc_dir.logs / "t.stdout.0")


class _PrekillMark(AllocHook):
    """Notes in the allocation's order file, and the time, when the runner calls prekill."""

    name = "prekill-mark"

    def __init__(self) -> None:
        self.at = 0

    def prekill(self, ctx: AllocHookContext) -> None:
        self.at = time.time_ns()
        with open(ctx.alloc_dir.shared / "order", "a") as f:
            f.write("prekill\n")


def test_stop_order_prekill_shutdown_delays_then_main_then_sidecar(tmp_path):
    """A stop: prekill hooks first (the services leave the catalog there), the group's
    shutdown_delay, the sidecar's own (Nomad's "Waiting for shutdown delay", waited once), then
    the main task is killed, the sidecar last."""
    trap = "trap 'echo $NOMAD_TASK_NAME >> $NOMAD_ALLOC_DIR/order; exit 0' INT; echo ready; " \
           "while true; do sleep 0.1; done"
    sidecar = sh("sidecar", trap, lifecycle=TaskLifecycle(hook="prestart", sidecar=True),
                 shutdown_delay=1 * SECOND)
    main = sh("main", trap)
    mark = _PrekillMark()
    runner, rec = start_alloc(make_alloc([sidecar, main], shutdown_delay=1 * SECOND), tmp_path,
                              hooks=[*default_hooks(), mark])
    wait_for(lambda: runner.client_status == "running" and "ready" in logs(runner, "main"), what="running")
    runner.stop()
    assert runner.wait(30)
    assert (runner.alloc_dir.shared / "order").read_text().split() == ["prekill", "main", "sidecar"]
    states = rec.last[2]
    waiting = [e for e in states["sidecar"].events if e.type == "Waiting for shutdown delay"]
    assert [e.display_message for e in waiting] == ["Waiting for shutdown_delay of 1s before killing the task."]
    main_killing = next(e for e in states["main"].events if e.type == "Killing")
    sidecar_killing = next(e for e in states["sidecar"].events if e.type == "Killing")
    assert mark.at < waiting[0].time < main_killing.time < sidecar_killing.time
    assert waiting[0].time - mark.at >= 1 * SECOND  # the group's shutdown_delay came first
    assert "Waiting for shutdown delay" not in event_types(states["main"])  # main has none
    assert rec.last[0] == "complete"


def _delayed_alloc():
    """A sidecar and a main task that each have a minute of shutdown_delay, in a group that has
    one too: three minutes of delays when stopped plainly."""
    trap = "trap 'exit 0' INT; echo ready; while true; do sleep 0.1; done"
    sidecar = sh("sidecar", trap, lifecycle=TaskLifecycle(hook="prestart", sidecar=True),
                 shutdown_delay=60 * SECOND)
    main = sh("main", trap, shutdown_delay=60 * SECOND)
    return make_alloc([sidecar, main], shutdown_delay=60 * SECOND)


def test_a_stop_with_no_shutdown_delay_skips_the_group_and_task_delays(tmp_path):
    """`job stop` / `alloc stop -no-shutdown-delay`: the server's stop carries
    DesiredTransition.NoShutdownDelay, and the client waits none of the delays (Nomad's)."""
    from yurt.structs.alloc import DesiredTransition
    runner, rec = start_alloc(_delayed_alloc(), tmp_path)
    wait_for(lambda: runner.client_status == "running" and "ready" in logs(runner, "main"), what="running")
    runner.update(runner.alloc.model_copy(update={
        "desired_status": "stop", "desired_transition": DesiredTransition(no_shutdown_delay=True)}))
    assert runner.wait(30), "the delays were waited"
    states = rec.last[2]
    for task in ("sidecar", "main"):
        assert "Waiting for shutdown delay" not in event_types(states[task]), event_types(states[task])
    assert rec.last[0] == "complete"


def test_no_shutdown_delay_arriving_during_a_delay_ends_it(tmp_path):
    """A plain stop waits the group's delay; the same stop marked NoShutdownDelay while it waits
    ends the wait, and the tasks' delays are not waited either."""
    from yurt.structs.alloc import DesiredTransition
    mark = _PrekillMark()
    runner, rec = start_alloc(_delayed_alloc(), tmp_path, hooks=[*default_hooks(), mark])
    wait_for(lambda: runner.client_status == "running" and "ready" in logs(runner, "main"), what="running")
    stopped = runner.alloc.model_copy(update={"desired_status": "stop"})
    runner.update(stopped)
    wait_for(lambda: mark.at, what="the stop begun (prekill), the group's delay being waited")
    assert not runner.wait(1)   # still waiting the group's minute
    runner.update(stopped.model_copy(update={"desired_transition": DesiredTransition(no_shutdown_delay=True)}))
    assert runner.wait(30), "the delay went on"
    states = rec.last[2]
    for task in ("sidecar", "main"):
        assert "Waiting for shutdown delay" not in event_types(states[task]), event_types(states[task])

