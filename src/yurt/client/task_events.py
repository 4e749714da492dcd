"""Task events with Nomad's types and display messages (structs.TaskEvent constants)."""

from __future__ import annotations

import time

from yurt.structs import TaskEvent
from yurt.structs.duration import SECOND, format_duration

RECEIVED = "Received"
SETUP = "Task Setup"
SETUP_FAILURE = "Setup Failure"
STARTED = "Started"
TERMINATED = "Terminated"
RESTARTING = "Restarting"
NOT_RESTARTING = "Not Restarting"
KILLING = "Killing"
KILLED = "Killed"
DRIVER_FAILURE = "Driver Failure"
SIBLING_FAILED = "Sibling Task Failed"
LEADER_DEAD = "Leader Task Dead"
MAIN_DEAD = "Main Tasks Dead"
RESTORE_FAILED = "Failed Restoring Task"
WAITING_SHUTDOWN_DELAY = "Waiting for shutdown delay"
HOOK_FAILED = "Task hook failed"
TEMPLATE = "Template"
DOWNLOADING_ARTIFACTS = "Downloading Artifacts"
ARTIFACT_FAILED = "Failed Artifact Download"


def event(type_: str, display: str = "", **kw) -> TaskEvent:
    return TaskEvent(type=type_, time=time.time_ns(), display_message=display, **kw)


def received() -> TaskEvent:
    return event(RECEIVED, "Task received by client")


def setup() -> TaskEvent:
    return event(SETUP, "Building Task Directory", message="Building Task Directory")


def setup_failure(err: str) -> TaskEvent:
    return event(SETUP_FAILURE, err, message=err, fails_task=True,
                 details={"setup_error": err, "fails_task": "true"})


def started() -> TaskEvent:
    return event(STARTED, "Task started by client")


def terminated(exit_code: int, signal: int = 0, message: str = "") -> TaskEvent:
    display = f"Exit Code: {exit_code}"
    if signal:
        display += f", Signal: {signal}"
    if message:
        display += f", Exit Message: {message!r}"
    return event(TERMINATED, display, exit_code=exit_code, signal=signal, message=message,
                 details={"exit_code": str(exit_code), "signal": str(signal),
                          "exit_message": message, "oom_killed": str(message == "OOM Killed").lower()})


def restart_signaled(reason: str) -> TaskEvent:
    return event("Restart Signaled", reason, restart_reason=reason, details={"restart_reason": reason})


def signaling(signal: str, reason: str) -> TaskEvent:
    return event("Signaling", f"Task being sent signal {signal}: {reason}" if reason else
                 f"Task being sent signal {signal}", details={"signal": signal, "reason": reason})


def restarting(delay_seconds: float, reason: str) -> TaskEvent:
    ns = int(delay_seconds * SECOND)
    return event(RESTARTING, f"Task restarting in {format_duration(ns)}", restart_reason=reason,
                 details={"restart_reason": reason, "start_delay": str(ns)})


def not_restarting(reason: str, fails: bool = True) -> TaskEvent:
    return event(NOT_RESTARTING, reason, restart_reason=reason, fails_task=fails,
                 details={"restart_reason": reason, "fails_task": str(fails).lower()})


def driver_failure(err: str) -> TaskEvent:
    return event(DRIVER_FAILURE, err, driver_error=err, details={"driver_error": err})


def killing(kill_timeout_ns: int, signal: str = "") -> TaskEvent:
    """Nomad says "interrupt" whatever the kill signal is; the signal is in the details."""
    return event(KILLING, f"Sent interrupt. Waiting {format_duration(kill_timeout_ns)} before force killing",
                 kill_timeout=kill_timeout_ns,
                 details={"kill_timeout": str(kill_timeout_ns), "kill_signal": signal})


def killed(err: str = "") -> TaskEvent:
    return event(KILLED, err or "Task successfully killed", message=err,
                 details={"kill_error": err} if err else {})


def sibling_failed(sibling: str) -> TaskEvent:
    return event(SIBLING_FAILED, f'Task\'s sibling "{sibling}" failed',
                 details={"failed_sibling": sibling})


def leader_dead() -> TaskEvent:
    return event(LEADER_DEAD, "Leader Task in Group dead")


def disconnected(after: str) -> TaskEvent:
    """Nomad's: the client could not reach the servers for the group's stop_on_client_after."""
    return event("Killing", f"Client disconnected from the servers for {after} (stop_on_client_after): "
                            "stopping the allocation", details={"disconnected_for": after})


def main_dead() -> TaskEvent:
    return event(MAIN_DEAD, "Main tasks in the group died")


def restore_failed(err: str) -> TaskEvent:
    return event(RESTORE_FAILED, err, details={"restore_error": err})


def waiting_shutdown_delay(delay_ns: int) -> TaskEvent:
    return event(WAITING_SHUTDOWN_DELAY,
                 f"Waiting for shutdown_delay of {format_duration(delay_ns)} before killing the task.")


def hook_failed(err: str) -> TaskEvent:
    """A task hook refused the start (a template that cannot render): the task fails."""
    return event(HOOK_FAILED, err, message=err, fails_task=True, details={"message": err, "fails_task": "true"})


def template(message: str) -> TaskEvent:
    """What the template hook says while it waits (``Missing: kv.block(app/x)``)."""
    return event(TEMPLATE, message, message=message, details={"message": message})
