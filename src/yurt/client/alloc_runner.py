"""Runs one allocation: hooks around task runners, in Nomad's lifecycle order.

Order: prerun hooks -> prestart tasks (ephemeral ones run to completion, sidecars until they
run) -> main tasks -> poststart tasks once every main task runs -> (main tasks end, a task
fails, the leader dies, or a stop is asked) -> prekill hooks (the services leave the catalog)
-> the group's shutdown_delay, the sidecars' own shutdown_delay -> while a main task still
runs, the sidecars that can drain (Connect proxies) refuse new inbound connections and finish
the open ones (up to their kill timeout) -> kill main tasks, then poststart tasks, then
prestart sidecars -> poststop tasks run to completion -> postrun hooks.

Hooks get the allocation's `AllocHookContext` (never the runner); the `AllocResources` they
fill in (environment, network namespace, resolv.conf, hostname) go to every task runner.

Every change is persisted to ``<data_dir>/client/state/<alloc_id>.json`` and reported through
``on_update(alloc_id, client_status, client_description, task_states)``, called on runner
threads (one call at a time).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from yurt.structs import Allocation, Node, TaskEvent, TaskState
from yurt.structs.duration import SECOND

from . import alloc_state, task_events as ev
from .alloc_hooks import AllocHook, AllocHookContext, AllocResources, default_hooks
from .alloc_status import client_status
from .allocdir import AllocDir
from .drivers.base import (BaseDriver, Driver, DriverError, DriverFingerprint, ExitResult, NetnsHolder, TaskConfig,
                           TaskHandle, TaskStats)
from .task_hooks import TaskHookFactory
from .task_runner import TaskRunner

log = logging.getLogger(__name__)

OnUpdate = Callable[[str, str, str, dict[str, TaskState]], None]
POLL = 0.5
DRAIN_POLL = 0.05  # seconds between two looks at draining sidecars


class MissingDriver(BaseDriver):
    """Stands in for a driver this node does not have: every start fails for good."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fingerprint(self) -> DriverFingerprint:
        return DriverFingerprint()

    def start(self, cfg: TaskConfig) -> TaskHandle:
        raise DriverError(f'failed to start: driver "{self.name}" is not available on this node',
                          recoverable=False)

    def recover(self, handle: TaskHandle) -> None:
        raise DriverError(f'driver "{self.name}" is not available on this node')

    def wait(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        return None

    def stop(self, handle: TaskHandle, signal: str, timeout: float) -> None:
        pass

    def signal(self, handle: TaskHandle, signal: str) -> None:
        pass

    def destroy(self, handle: TaskHandle) -> None:
        pass

    def stats(self, handle: TaskHandle) -> TaskStats:
        return TaskStats()


def _netns_holder(drivers: Iterable[Driver]) -> NetnsHolder | None:
    """The first of the group's drivers that creates its network namespace itself, if any."""
    for driver in drivers:
        if driver.capabilities.holds_network_namespace:
            return driver.netns_holder
    return None


class AllocRunner:
    """Runs ``alloc`` on this node.

    ``drivers`` maps driver names to drivers; ``hooks`` defaults to `default_hooks()`;
    ``region`` is the client's region (for NOMAD_REGION / ``${node.region}``).
    """

    def __init__(self, alloc: Allocation, *, data_dir: str | os.PathLike,
                 drivers: Mapping[str, Driver], node: Node | None = None,
                 on_update: OnUpdate | None = None, hooks: list[AllocHook] | None = None,
                 region: str | None = None,
                 task_hooks: Sequence[TaskHookFactory] = (),
                 _restored: alloc_state.PersistedAlloc | None = None) -> None:
        group = alloc.job.group(alloc.task_group) if alloc.job is not None else None
        if group is None:
            raise ValueError(f"allocation {alloc.id} has no job or no task group {alloc.task_group!r}")
        self.alloc_id = alloc.id
        self.data_dir = data_dir
        self.node = node
        self.region = region
        self.on_update = on_update
        self.hooks = list(default_hooks() if hooks is None else hooks)
        self.alloc_dir = AllocDir(data_dir, alloc.id)
        self.group = group
        self.tasks = list(self.group.tasks or [])
        task_drivers = {task.name: drivers.get(task.driver) or MissingDriver(task.driver) for task in self.tasks}
        self.context = AllocHookContext(
            alloc=alloc, group=self.group, node=node, region=region, data_dir=data_dir, alloc_dir=self.alloc_dir,
            restart_task=self._restart_task, netns_holder=_netns_holder(task_drivers.values()),
            ended=bool(_restored and _restored.done))
        self._cond = threading.Condition(threading.RLock())
        self._report_lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self._stopping = threading.Event()
        self._destroying = threading.Event()
        # set when the shutdown delays are cut short: destroying, or `-no-shutdown-delay`
        self._delays_cut = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = bool(_restored and _restored.done)
        self._kill_event: TaskEvent | None = None
        self._forced: tuple[str, str] | None = None
        self._last_report: tuple | None = None
        restored = _restored.tasks if _restored else {}
        self.task_runners: dict[str, TaskRunner] = {}
        for task in self.tasks:
            saved = restored.get(task.name)
            self.task_runners[task.name] = TaskRunner(
                alloc, task, self.alloc_dir, task_drivers[task.name], node, on_change=self._task_changed,
                resources=self.context.resources, region=region, state=saved.state if saved else None,
                handle=saved.handle if saved else None,
                hooks=[h for h in (make(task) for make in task_hooks) if h is not None])

    # --- construction from disk -------------------------------------------------------------

    @classmethod
    def restore(cls, data_dir: str | os.PathLike, alloc_id: str, *, drivers: Mapping[str, Driver],
                node: Node | None = None, on_update: OnUpdate | None = None,
                hooks: list[AllocHook] | None = None, region: str | None = None,
                task_hooks: Sequence[TaskHookFactory] = ()) -> AllocRunner:
        """A runner for an allocation an earlier agent ran; `run()` re-attaches its tasks."""
        persisted = alloc_state.load(data_dir, alloc_id)
        if persisted is None:
            raise FileNotFoundError(f"no local state for allocation {alloc_id} in {data_dir}")
        return cls(persisted.alloc, data_dir=data_dir, drivers=drivers, node=node,
                   on_update=on_update, hooks=hooks, region=region, task_hooks=task_hooks,
                   _restored=persisted)

    @staticmethod
    def persisted_ids(data_dir: str | os.PathLike) -> list[str]:
        return alloc_state.persisted_alloc_ids(data_dir)

    # --- what others see --------------------------------------------------------------------

    @property
    def alloc(self) -> Allocation:
        """The latest version of the allocation (the server's, with the job kept)."""
        return self.context.alloc

    @property
    def resources(self) -> AllocResources:
        """What the hooks set up for the tasks (the network's status among them)."""
        return self.context.resources

    def task_states(self) -> dict[str, TaskState]:
        return {name: tr.state for name, tr in self.task_runners.items()}

    def status(self) -> tuple[str, str]:
        if self._forced is not None:
            return self._forced
        # Main and prestart tasks always count; poststart/poststop helpers only once they run
        # (waiting for their turn, or starting late, does not make the allocation pending).
        counted = []
        for tr in self.task_runners.values():
            state = tr.state
            if tr.hook in ("", "prestart") or state.state != "pending":
                counted.append(state)
        return client_status(counted, finished=self._finished)

    @property
    def client_status(self) -> str:
        return self.status()[0]

    # --- control ----------------------------------------------------------------------------

    def run(self) -> None:
        """Start running the allocation on a thread of its own (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"alloc-{self.alloc_id[:8]}",
                                            daemon=True)
            self._thread.start()

    def update(self, alloc: Allocation) -> None:
        """A new version of the allocation from the server; a stopped one stops the tasks."""
        if alloc.job is None:  # keep the job we run when the server sends a stripped alloc
            alloc = alloc.model_copy(update={"job": self.alloc.job})
        self.context.alloc = alloc
        if alloc.desired_transition.no_shutdown_delay:   # a delay being waited ends now (Nomad's)
            self._delays_cut.set()
        for hook in self.hooks:
            try:
                hook.update(self.context)
            except Exception:
                log.exception("alloc %s: update hook %s failed", self.alloc_id, hook.name)
        for runner in self.task_runners.values():
            runner.update_hooks(alloc)
        self._persist()
        if alloc.server_terminal():
            self.stop()

    def stop(self, reason: TaskEvent | None = None) -> None:
        """Take the services out of the catalog, wait the shutdown delays, drain the sidecars,
        kill the tasks (main first, sidecars last); poststop tasks still run. Asynchronous.
        `reason`: the event the tasks get for it (a local decision, not the server's)."""
        if reason is not None and self._kill_event is None:
            self._kill_event = reason
        self._stopping.set()
        self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def wait_stopped(self, timeout: float) -> bool:
        """True once nothing of the allocation runs (at once when it never ran here)."""
        return self._finished or self._thread is None or self._done.wait(timeout)

    def destroy(self, timeout: float | None = None) -> None:
        """Stop everything (poststop tasks too), run destroy hooks, forget the allocation."""
        self._destroying.set()
        self._delays_cut.set()
        self.stop()
        if self._thread is None:
            for tr in self.task_runners.values():
                tr.kill()
        elif not self.wait(timeout):
            log.warning("alloc %s: destroy timed out waiting for tasks", self.alloc_id)
        for hook in reversed(self.hooks):
            try:
                hook.destroy(self.context)
            except Exception:
                log.exception("alloc %s: destroy hook %s failed", self.alloc_id, hook.name)
        alloc_state.delete(self.data_dir, self.alloc_id)

    # --- reporting --------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _restart_task(self, task: str, reason: str) -> bool:
        tr = self.task_runners.get(task)
        return tr is not None and tr.restart(reason)

    def _task_changed(self, _runner: TaskRunner) -> None:
        self._report()
        self._notify()

    def _persist(self) -> None:
        """Write the allocation's local state; writers take turns, so the file on disk is the
        state as of the latest write, never an older snapshot renamed over a newer one."""
        with self._persist_lock:
            persisted = alloc_state.PersistedAlloc(
                self.alloc, {name: alloc_state.PersistedTask(tr.state, tr.handle)
                             for name, tr in self.task_runners.items()}, self._finished)
            alloc_state.save(self.data_dir, persisted)

    def report(self) -> None:
        """Hand the allocation's status to `on_update` now, if it moved since the last report."""
        self._report()

    def _report(self) -> None:
        with self._report_lock:
            if self._destroying.is_set() and self._done.is_set():
                return
            self._persist()
            states = self.task_states()
            status, description = self.status()
            key = (status, description, tuple((n, s.state, s.failed, len(s.events), s.restarts)
                                              for n, s in states.items()))
            if key == self._last_report or self.on_update is None:
                self._last_report = key
                return
            self._last_report = key
            try:
                self.on_update(self.alloc_id, status, description, states)
            except Exception:
                log.exception("alloc %s: on_update failed", self.alloc_id)

    # --- the lifecycle ----------------------------------------------------------------------

    def _runners(self, hook: str, sidecar: bool | None = None) -> list[TaskRunner]:
        return [tr for tr in self.task_runners.values()
                if tr.hook == hook and (sidecar is None or tr.is_sidecar == sidecar)]

    def _check_failures(self) -> bool:
        """Note why the allocation must be brought down; True when it must."""
        if self._kill_event is not None:
            return True
        for tr in self.task_runners.values():
            if tr.failed():
                self._kill_event = ev.sibling_failed(tr.name)
                return True
            if tr.task.leader and tr.is_dead():
                self._kill_event = ev.leader_dead()
                return True
        return False

    def _wait_until(self, ready: Callable[[], bool], *, until_stop: bool = True) -> bool:
        """Wait for ``ready``; False when a failure or (if ``until_stop``) a stop came first."""
        with self._cond:
            while True:
                if self._check_failures() or (until_stop and self._stopping.is_set()):
                    return False
                if ready():
                    return True
                self._cond.wait(POLL)

    def _main(self) -> None:
        try:
            self._lifecycle()
        except Exception as e:
            log.exception("alloc %s: runner crashed", self.alloc_id)
            self._forced = ("failed", f"alloc runner error: {e}")
            for tr in self.task_runners.values():
                tr.kill()
        finally:
            self._finished = True
            self._report()
            self._done.set()

    def _prerun(self) -> bool:
        done: list[AllocHook] = []
        for hook in self.hooks:
            try:
                hook.prerun(self.context)
            except Exception as e:  # noqa: BLE001 - any hook failure fails the allocation, with its message
                message = f"prerun hook {hook.name!r} failed: {e}"
                log.warning("alloc %s: %s", self.alloc_id, message)
                for tr in self.task_runners.values():
                    tr.kill(ev.setup_failure(message))
                self._forced = ("failed", message)
                for earlier in reversed(done):  # undo what the hooks before it set up
                    try:
                        earlier.postrun(self.context)
                    except Exception:
                        log.exception("alloc %s: postrun hook %s failed", self.alloc_id, earlier.name)
                return False
            done.append(hook)
        return True

    def _lifecycle(self) -> None:
        self._report()
        if not self._prerun():
            return
        prestart = self._runners("prestart")
        ephemeral = [tr for tr in prestart if not tr.is_sidecar]
        sidecars = [tr for tr in prestart if tr.is_sidecar]
        main = self._runners("")
        poststart = self._runners("poststart")

        def started(runners: Iterable[TaskRunner]) -> None:
            for tr in runners:
                tr.run()

        if self.alloc.server_terminal():
            self._stopping.set()
        if not self._stopping.is_set():
            started(prestart)
            if self._wait_until(lambda: all(tr.is_dead() for tr in ephemeral)
                                and all(tr.is_running() or tr.is_dead() for tr in sidecars)):
                started(main)
                if self._wait_until(lambda: all(tr.is_running() or tr.is_dead() for tr in main)):
                    started(poststart)
                    self._wait_until(lambda: all(tr.is_dead() for tr in main))
        self._shutdown(main, poststart, sidecars, ephemeral)
        for hook in self.hooks:
            try:
                hook.postrun(self.context)
            except Exception:
                log.exception("alloc %s: postrun hook %s failed", self.alloc_id, hook.name)

    def _kill_all(self, runners: list[TaskRunner], event_for: Callable[[], TaskEvent | None]) -> None:
        for tr in runners:
            if not tr.is_dead():
                tr.kill(event_for())
        for tr in runners:
            while not tr.wait(POLL):
                pass

    def _prekill(self, main: list[TaskRunner], sidecars: list[TaskRunner]) -> None:
        """Before a task is killed: the prekill hooks take the allocation's services out of the
        catalog (callers' sidecars stop picking it). Unless the allocation is being destroyed:
        the group's shutdown_delay, then the sidecars' own (at once for all; as in Nomad, both
        are waited even when the application has already exited); then, while an application
        task still runs, the sidecars that can drain refuse new inbound connections and finish
        the open ones, which the application still answers, each up to its kill timeout.
        Nothing is dropped: a caller's new connection is refused and retried elsewhere, one
        already accepted goes through."""
        for hook in self.hooks:
            try:
                hook.prekill(self.context)
            except Exception:
                log.exception("alloc %s: prekill hook %s failed", self.alloc_id, hook.name)
        if self._destroying.is_set():
            return
        delay = (self.group.shutdown_delay or 0) / SECOND
        if delay > 0:
            self._delays_cut.wait(delay)   # at once when cut already
        waits = [threading.Thread(target=tr.shutdown_delay, args=(self._delays_cut,), daemon=True,
                                  name=f"delay-{tr.name}") for tr in sidecars if tr.is_running()]
        for t in waits:
            t.start()
        for t in waits:
            t.join()
        if not any(tr.is_running() for tr in main):
            return  # no application to finish the open connections
        start = time.monotonic()
        draining = {tr: start + tr.kill_timeout for tr in sidecars if tr.drain()}
        while draining and not self._destroying.is_set():
            now = time.monotonic()
            draining = {tr: end for tr, end in draining.items() if now < end and not tr.drained()}
            if draining:
                self._destroying.wait(DRAIN_POLL)

    def _shutdown(self, main: list[TaskRunner], poststart: list[TaskRunner], sidecars: list[TaskRunner],
                  ephemeral: list[TaskRunner]) -> None:
        self._check_failures()
        reason = self._kill_event

        def event() -> TaskEvent | None:
            return reason.model_copy(deep=True) if reason is not None else None

        self._prekill(main, sidecars)
        leaders = [tr for tr in main if tr.task.leader]
        self._kill_all(leaders, event)
        self._kill_all([tr for tr in main if not tr.task.leader], event)
        self._kill_all(list(reversed(poststart)), lambda: event() or ev.main_dead())
        self._kill_all(list(reversed(sidecars)), lambda: event() or ev.main_dead())
        self._kill_all(ephemeral, event)
        poststop = self._runners("poststop")
        if self._destroying.is_set():
            self._kill_all(poststop, event)
            return
        for tr in poststop:
            tr.run()
        with self._cond:
            while not all(tr.is_dead() for tr in poststop):
                if self._destroying.is_set():
                    break
                self._cond.wait(POLL)
        self._kill_all(poststop, event)
