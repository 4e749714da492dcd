"""Runs one task of an allocation: start through its driver, wait, restart per policy, kill.

One thread per task. The driver's calls block, so they run on that thread; everything the
outside sees (`state`, `handle`) changes under a lock and is announced through ``on_change``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from yurt.structs import Allocation, Node, RestartPolicy, Task, TaskEvent, TaskState
from yurt.structs.alloc import TASK_DEAD, TASK_PENDING, TASK_RUNNING
from yurt.structs.duration import SECOND

from . import task_events as ev
from .alloc_hooks import AllocResources
from .allocdir import AllocDir
from .drivers.base import Driver, DriverError, ExitResult, TaskConfig, TaskHandle
from .restarts import NOT_RESTARTING, RESTARTING, TERMINATED, Decision, RestartTracker
from .task_hooks import TaskHook, TaskHookContext, TaskHookError
from .taskenv import build_task_env, interpolate, native_services, native_vars, task_limits

log = logging.getLogger(__name__)

DEFAULT_KILL_SIGNAL = "SIGINT"  # Nomad's default for raw_exec/exec
DEFAULT_KILL_TIMEOUT = 5 * SECOND
MAX_KILL_TIMEOUT = 30 * SECOND  # Nomad's client max_kill_timeout default
WAIT_SLICE = 0.2
IDLE_WAIT_SLICE = 5.0   # seconds: with a driver whose wait a kill interrupts

OnChange = Callable[["TaskRunner"], None]


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class TaskRunner:
    """Runs ``task`` of ``alloc`` with ``driver``.

    ``on_change(runner)`` is called (on the runner's thread, or the caller's for `kill` before
    start) after every change of `state` or `handle`. ``resources`` is what the allocation's
    hooks set up for its tasks (environment variables, network namespace, resolv.conf,
    hostname), read at each start. ``state``/``handle`` restore a runner from persisted state:
    a live handle is re-attached instead of started again.
    """

    def __init__(self, alloc: Allocation, task: Task, alloc_dir: AllocDir, driver: Driver,
                 node: Node | None = None, *, on_change: OnChange | None = None,
                 resources: AllocResources | None = None,
                 region: str | None = None, state: TaskState | None = None,
                 handle: TaskHandle | None = None,
                 max_kill_timeout: int = MAX_KILL_TIMEOUT,
                 hooks: Sequence[TaskHook] = ()) -> None:
        self.alloc = alloc
        self.max_kill_timeout = max_kill_timeout
        self.task = task
        self.name = task.name
        self.alloc_dir = alloc_dir
        self.task_dir = alloc_dir.task_dir(task.name)
        self.driver = driver
        self.node = node
        self.region = region
        self.on_change = on_change
        self.resources = resources if resources is not None else AllocResources()
        job_type = (alloc.job.type if alloc.job else None) or "service"
        policy = task.restart_policy
        if policy is None:  # jobs arrive canonicalized; hand-built ones get the type's default
            policy = RestartPolicy.for_job_type(job_type)
        self.tracker = RestartTracker(policy, job_type, task.lifecycle)
        self._lock = threading.RLock()
        self._kill = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = handle
        self._restored = state is not None
        self._next_delay = 0.0
        self._delay_waited = False  # the task's shutdown_delay was waited (before a drain)
        self._state = state.model_copy(deep=True) if state is not None else TaskState()
        if not self._restored:
            self._state.events.append(ev.received())
        self.hooks = list(hooks)
        self.hook_context = TaskHookContext(self)
        self._requested_restart = ""   # a hook asked for a restart: not a failure, no delay
        self._hooks_stopped = False

    # --- what others see --------------------------------------------------------------------

    @property
    def state(self) -> TaskState:
        with self._lock:
            return self._state.model_copy(deep=True)

    @property
    def handle(self) -> TaskHandle | None:
        with self._lock:
            return self._handle

    @property
    def started(self) -> bool:
        return self._thread is not None

    def is_dead(self) -> bool:
        with self._lock:
            return self._state.state == TASK_DEAD

    def is_running(self) -> bool:
        with self._lock:
            return self._state.state == TASK_RUNNING

    def failed(self) -> bool:
        with self._lock:
            return self._state.state == TASK_DEAD and self._state.failed

    @property
    def is_sidecar(self) -> bool:
        return bool(self.task.lifecycle and self.task.lifecycle.sidecar)

    @property
    def hook(self) -> str:
        return self.task.lifecycle.hook if self.task.lifecycle else ""

    # --- control ----------------------------------------------------------------------------

    def run(self) -> None:
        """Start the runner's thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            if self._state.state == TASK_DEAD:
                self._thread = threading.Thread()  # marks "started"; nothing to do
                self._done.set()
                return
            self._thread = threading.Thread(target=self._main, name=f"task-{self.name}", daemon=True)
        self._thread.start()

    def kill(self, event: TaskEvent | None = None) -> None:
        """Ask the task to stop (asynchronously); ``event`` says why (e.g. Sibling Task Failed)."""
        with self._lock:
            if self._kill.is_set() or self._state.state == TASK_DEAD:
                self._kill.set()
                return
            if event is not None:
                self._state.events.append(event)
                if event.fails_task:
                    self._state.failed = True
            self._kill.set()
            handle = self._handle
            never_started = self._thread is None
            if never_started:
                self._thread = threading.Thread()
                self._set_dead(failed=False)
        if handle is not None:
            self.driver.interrupt(handle)   # the follower's wait ends now, not at its slice's end
        self._changed()
        if never_started:
            self._done.set()

    def restart(self, reason: str, requested: bool = False) -> bool:
        """Restart a running task (a failing health check asks for it): the task is stopped with
        its kill signal and comes back per its restart policy, as a crash would. ``requested``
        (a template's change_mode = "restart"): it comes back at once, not counted as a failure.
        False if the task is not running."""
        with self._lock:
            handle = self._handle
            if handle is None or self._kill.is_set() or self._state.state != TASK_RUNNING:
                return False
            self._state.events.append(ev.restart_signaled(reason))
            if requested:
                self._requested_restart = reason
        self._changed()
        timeout = min(self.task.kill_timeout or DEFAULT_KILL_TIMEOUT, self.max_kill_timeout) / SECOND
        signal = self.task.kill_signal or DEFAULT_KILL_SIGNAL

        def stop() -> None:
            try:
                self.driver.stop(handle, signal, timeout)
            except (DriverError, ValueError) as e:
                log.warning("task %s: restart: %s", self.name, e)
        threading.Thread(target=stop, name=f"restart-{self.name}", daemon=True).start()
        return True

    def send_signal(self, signal: str, reason: str = "") -> None:
        """`alloc signal`: the signal to the running task (its process group). Raises
        DriverError when the task is not running."""
        with self._lock:
            handle = self._handle
            if handle is None or self._state.state != TASK_RUNNING:
                raise DriverError(f'task "{self.name}" is not running')
            self._state.events.append(ev.signaling(signal, reason))
        self._changed()
        self.driver.signal(handle, signal)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the task is dead and its runner finished."""
        return self._done.wait(timeout)

    @property
    def kill_timeout(self) -> float:
        """Seconds between the kill signal and SIGKILL (the task's kill_timeout, capped)."""
        return min(self.task.kill_timeout or DEFAULT_KILL_TIMEOUT, self.max_kill_timeout) / SECOND

    def shutdown_delay(self, cancel: threading.Event | None = None) -> None:
        """Wait the task's shutdown_delay (once: the kill does not wait it again), as Nomad does
        between removing the services and signalling the task; ends early when the task exits
        or ``cancel`` is set."""
        with self._lock:
            if not self.task.shutdown_delay or self._delay_waited or self._state.state != TASK_RUNNING:
                return
            self._delay_waited = True
        if self.alloc.desired_transition.no_shutdown_delay or (cancel is not None and cancel.is_set()):
            return   # `-no-shutdown-delay`, or cut already
        delay = self.task.shutdown_delay
        self._emit(ev.waiting_shutdown_delay(delay))
        deadline = time.monotonic() + delay / SECOND
        while not self._done.is_set() and not (cancel is not None and cancel.is_set()):
            if self.alloc.desired_transition.no_shutdown_delay:   # came while waiting
                break
            left = deadline - time.monotonic()
            if left <= 0 or self._done.wait(min(left, WAIT_SLICE)):
                break

    def drain(self) -> bool:
        """Ask the running task to take no new work and finish what it has, when its driver can
        (a Connect sidecar refuses new inbound connections); False: nothing to wait for."""
        with self._lock:
            handle = self._handle
            if handle is None or self._kill.is_set() or self._state.state != TASK_RUNNING:
                return False
        if not self.driver.capabilities.drains:
            return False
        try:
            return self.driver.drain(handle)
        except (DriverError, OSError, ValueError) as e:
            log.warning("task %s: drain: %s", self.name, e)
            return False

    def drained(self) -> bool:
        """True once a drained task has finished its work (or is no longer running)."""
        handle = self.handle
        if handle is None or not self.is_running():
            return True
        try:
            return self.driver.drained(handle)
        except (DriverError, OSError, ValueError):
            return True

    # --- what task hooks use ------------------------------------------------------------------

    @property
    def kill_event(self) -> threading.Event:
        return self._kill

    def emit_event(self, event: TaskEvent) -> None:
        self._emit(event)

    def base_env(self) -> dict[str, str]:
        """The task's environment without what task hooks add (as the driver will see it)."""
        isolated = self.driver.capabilities.fs_isolation != "none"
        return build_task_env(self.alloc, self.task, self.task_dir, self.node,
                              hook_env=dict(self.resources.env), region=self.region, isolated=isolated)

    def _run_hooks(self, phase: str) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, phase)(self.hook_context)
            except Exception:
                log.exception("task %s: %s hook %s failed", self.name, phase, hook.name)

    def _prestart(self) -> bool:
        """Run the prestart hooks; False (and the task dead, failed) when one refuses."""
        for hook in self.hooks:
            try:
                hook.prestart(self.hook_context)
            except TaskHookError as e:
                self._dead(ev.hook_failed(str(e)))
                return False
            except Exception as e:  # a bug: report it, never a traceback in the events
                log.exception("task %s: prestart hook %s failed", self.name, hook.name)
                self._dead(ev.hook_failed(f"{hook.name} hook: {e}"))
                return False
            if self._kill.is_set():
                return True
        return True

    def update_hooks(self, alloc: Allocation) -> None:
        """The allocation changed (an in-place update)."""
        self.alloc = alloc
        self._run_hooks("update")

    def _stop_hooks(self) -> None:
        with self._lock:
            if self._hooks_stopped:
                return
            self._hooks_stopped = True
        self._run_hooks("stop")

    # --- the loop ---------------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # a broken observer must not kill the task runner
                log.exception("task %s: on_change failed", self.name)

    def _emit(self, event: TaskEvent, state: str | None = None, **changes: Any) -> None:
        with self._lock:
            self._state.events.append(event)
            if event.fails_task:
                self._state.failed = True
            if state is not None:
                self._state.state = state
            for k, v in changes.items():
                setattr(self._state, k, v)
        self._changed()

    def _set_dead(self, failed: bool | None = None) -> None:
        self._state.state = TASK_DEAD
        self._state.finished_at = now_rfc3339()
        if failed:
            self._state.failed = True

    def _dead(self, event: TaskEvent | None = None) -> None:
        with self._lock:
            if event is not None:
                self._state.events.append(event)
                if event.fails_task:
                    self._state.failed = True
            self._set_dead()
            self._handle = None
        self._changed()

    def _main(self) -> None:
        try:
            self._loop()
        except Exception as e:  # never leave a task runner hanging
            log.exception("task %s: runner crashed", self.name)
            self._dead(ev.driver_failure(f"task runner error: {e}") if not self.is_dead() else None)
        finally:
            self._stop_hooks()
            self._done.set()

    def _recover(self) -> TaskHandle | None:
        handle = self.handle
        if handle is None:
            return None
        try:
            self.driver.recover(handle)
        except DriverError as e:
            with self._lock:
                self._handle = None
            self._emit(ev.restore_failed(str(e)), TASK_PENDING)
            return None
        with self._lock:
            if self._state.state != TASK_RUNNING:
                self._state.state = TASK_RUNNING
        self._changed()
        return handle

    def _loop(self) -> None:
        handle = self._recover()
        if handle is None and not self._restored:
            self._emit(ev.setup())
        if handle is not None:   # re-attached after an agent restart: the hooks watch again
            self._run_hooks("poststart")
        while True:
            if handle is None:
                if self._kill.is_set():
                    self._dead()
                    return
                if not self._prestart():
                    return
                if self._kill.is_set():
                    self._dead()
                    return
                handle = self._start()
                if handle is None:  # start failed; the restart policy decided
                    if self.is_dead() or not self._delay_or_killed():
                        return
                    continue
            result = self._wait(handle)
            if result is None:  # killed while running
                self._stop(handle)
                return
            self.driver.destroy(handle)
            with self._lock:
                self._handle = None
            handle = None
            self._emit(ev.terminated(result.exit_code, result.signal,
                                     "OOM Killed" if result.oom_killed else result.err))
            self._run_hooks("exited")
            if self._kill.is_set():
                self._dead()
                return
            with self._lock:
                requested, self._requested_restart = self._requested_restart, ""
            if requested:
                decision = Decision(RESTARTING, 0.0, requested)
            else:
                decision = self.tracker.next(exit=result)
            if not self._apply(decision):
                return
            if not self._delay_or_killed():
                return

    def _apply(self, decision: Decision) -> bool:
        """Record a restart decision; False when the task is now dead."""
        if decision.state == TERMINATED:
            self._dead()
            return False
        if decision.state == NOT_RESTARTING:
            self._dead(ev.not_restarting(decision.reason))
            return False
        self._next_delay = decision.delay
        self._emit(ev.restarting(decision.delay, decision.reason), TASK_PENDING)
        return True

    def _delay_or_killed(self) -> bool:
        """Sleep the restart delay; False (and dead) when killed meanwhile."""
        if self._kill.wait(self._next_delay):
            self._dead()
            return False
        with self._lock:
            self._state.restarts += 1
            self._state.last_restart = now_rfc3339()
        return True

    def _config(self) -> TaskConfig:
        self.task_dir.build()
        self.task_dir.write_payload(self.task, self.alloc.job)   # a dispatched job's payload (local/<file>)
        resources = self.resources
        isolated = self.driver.capabilities.fs_isolation != "none"
        hook_env = dict(resources.env)
        native = native_services(self.alloc, self.task) if resources.agent_socket else []
        if native:
            # a Connect-native task: the agent's socket by its host path (raw_exec sees the host's
            # files), or its relay in the allocation's shared dir (exec's chroot, docker: /alloc)
            from .agent_relay import IN_TASK_PATH
            from .identity_hook import TOKEN_FILE
            token = ("/secrets/" + TOKEN_FILE if isolated else str(self.task_dir.secrets / TOKEN_FILE)) \
                if self.task.token_file else ""
            if not isolated:
                hook_env.update(native_vars(resources.agent_socket, native, token))
            elif resources.agent_relay:
                hook_env.update(native_vars(IN_TASK_PATH, native, token))
            else:
                log.warning("task %s: the agent's API is not relayed into the allocation: the Connect native "
                            "task gets no CONSUL_HTTP_ADDR", self.name)
        env = build_task_env(self.alloc, self.task, self.task_dir, self.node,
                             hook_env=hook_env, region=self.region, isolated=isolated)
        if self.task.token_env:   # identity { env = true }: the workload identity's JWT
            from .identity_hook import ENV_TOKEN_FILE
            try:
                env["NOMAD_TOKEN"] = (self.task_dir.root / ENV_TOKEN_FILE).read_text().strip()
            except OSError as e:
                raise DriverError(f"the task's workload identity is missing ({e}): NOMAD_TOKEN cannot be set") \
                    from None
        env.update(self.hook_context.env)   # the task hooks' (env templates): over the rest, as Nomad
        config = interpolate(dict(self.task.config or {}), env, self.node, self.region)
        logs = self.task.log_config
        cpu, memory, memory_max = task_limits(self.alloc, self.task)
        return TaskConfig(
            alloc_id=self.alloc.id, name=self.name, env=env, config=config,
            task_dir=self.task_dir.root, local_dir=self.task_dir.local,
            alloc_dir=self.task_dir.shared, logs_dir=self.task_dir.logs,
            user=interpolate(self.task.user, env, self.node, self.region),
            max_files=(logs.max_files if logs and logs.max_files else 10),
            max_file_size_mb=(logs.max_file_size_mb if logs and logs.max_file_size_mb else 10),
            logs_disabled=bool(logs and logs.disabled),
            netns=resources.netns,
            cpu_shares=cpu, memory_mb=memory, memory_max_mb=memory_max,
            resolv_conf=resources.resolv_conf, hostname=resources.hostname, kill_timeout=self.kill_timeout,
            mounts=self._volume_mounts())

    def _volume_mounts(self) -> list[tuple[str, str, bool]]:
        """The task's volume_mounts as (host path, destination, read-only), from the group's
        host volume requests and this node's host volumes (Nomad's volume_hook)."""
        if not self.task.volume_mounts:
            return []
        group = self.alloc.job.group(self.alloc.task_group) if self.alloc.job else None
        volumes = (group.volumes if group else None) or {}
        host_volumes = self.node.host_volumes if self.node else {}
        out = []
        for m in self.task.volume_mounts:
            req = volumes.get(m.volume)
            if req is None:
                raise DriverError(f'volume_mount names volume "{m.volume}", which the group does not declare',
                                  recoverable=False)
            hv = host_volumes.get(req.source)
            if hv is None:
                raise DriverError(f'host volume "{req.source}" (group volume "{m.volume}") is not configured '
                                  'on this client', recoverable=False)
            out.append((hv.path, m.destination, req.read_only or m.read_only or hv.read_only))
        return out

    def _start(self) -> TaskHandle | None:
        try:
            handle = self.driver.start(self._config())
        except DriverError as e:
            self._start_failed(str(e), e.recoverable)
            return None
        except Exception as e:  # a bug or a broken config: report it like a driver failure
            log.exception("task %s: start failed", self.name)
            self._start_failed(f"failed to start: {e}", True)
            return None
        with self._lock:
            self._handle = handle
            self._state.state = TASK_RUNNING
            if self._state.started_at is None:
                self._state.started_at = now_rfc3339()
            self._state.events.append(ev.started())
        self._changed()
        self._run_hooks("poststart")
        return handle

    def _start_failed(self, message: str, recoverable: bool) -> None:
        self._emit(ev.driver_failure(message))
        decision = self.tracker.next(start_error=DriverError(message), recoverable=recoverable)
        self._apply(decision)

    def _wait(self, handle: TaskHandle) -> ExitResult | None:
        slice_ = IDLE_WAIT_SLICE if self.driver.capabilities.interruptible_wait else WAIT_SLICE
        while not self._kill.is_set():
            result = self.driver.wait(handle, slice_)
            if result is not None:
                return result
        return None

    def _stop(self, handle: TaskHandle) -> None:
        timeout = min(self.task.kill_timeout or DEFAULT_KILL_TIMEOUT, self.max_kill_timeout)
        signal = self.task.kill_signal or DEFAULT_KILL_SIGNAL
        self.shutdown_delay()
        self._emit(ev.killing(timeout, signal))
        err = ""
        try:
            self.driver.stop(handle, signal, timeout / SECOND)
        except (DriverError, ValueError) as e:
            err = str(e)
        result = self.driver.wait(handle, 0)
        if result is not None:
            self._emit(ev.terminated(result.exit_code, result.signal,
                                     "OOM Killed" if result.oom_killed else result.err))
        self.driver.destroy(handle)
        self._dead(ev.killed(err))

