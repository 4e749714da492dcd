"""A failing health check restarts its task: check_restart, and a sidecar whose own check fails."""

from __future__ import annotations

from yurt.client.checks import CRITICAL, PASSING
from yurt.client.service_hook import _RestartTracker
from yurt.structs import CheckRestart

from .test_client_util import event_types, fast_restart, make_alloc, sh, start_alloc, wait_for


def test_check_restart_restarts_the_task_after_limit_failures(tmp_path):
    task = sh("app", "echo started; exec sleep 600", restart_policy=fast_restart(3))
    runner, _ = start_alloc(make_alloc([task]), tmp_path)
    try:
        wait_for(lambda: runner.task_runners["app"].is_running(), what="app running")
        tracker = _RestartTracker(runner.context, {"c1": ("app", CheckRestart(limit=2, grace=0))})
        tracker.observe("c1", CRITICAL)
        tracker.observe("c1", PASSING)   # a pass resets the count
        tracker.observe("c1", CRITICAL)
        assert "Restart Signaled" not in event_types(runner.task_runners["app"].state)
        tracker.observe("c1", CRITICAL)  # the second failure in a row
        tr = runner.task_runners["app"]
        wait_for(lambda: tr.state.restarts == 1 and tr.is_running(), what="restarted and running again")
        types = event_types(tr.state)
        assert types.count("Restart Signaled") == 1 and types.count("Started") == 2
        signaled = next(e for e in tr.state.events if e.type == "Restart Signaled")
        assert "healthcheck" in signaled.display_message and "c1" in signaled.display_message
    finally:
        runner.destroy(30)


def test_sidecar_check_restarts_the_sidecar_after_three_failures_past_grace(tmp_path):
    task = sh("proxy", "exec sleep 600", restart_policy=fast_restart(3))
    runner, _ = start_alloc(make_alloc([task]), tmp_path)
    try:
        wait_for(lambda: runner.task_runners["proxy"].is_running(), what="running")
        tracker = _RestartTracker(runner.context, {"listening": ("proxy", None)})
        for _ in range(5):
            tracker.observe("listening", CRITICAL)  # within the grace period: not counted
        assert runner.task_runners["proxy"].state.restarts == 0
        tracker.since["listening"] -= 60  # the grace period is over
        for _ in range(3):
            tracker.observe("listening", CRITICAL)
        wait_for(lambda: runner.task_runners["proxy"].state.restarts == 1, what="sidecar restarted")
    finally:
        runner.destroy(30)
