"""The client agent: registers its node, heartbeats, watches its allocations, runs them.

Its calls carry the node's SecretID (X-Nomad-Token), which the server requires for them.

It reaches the server only through `api.client` over HTTP, so a client on another host works
exactly like the one inside a dev agent. Allocation runners report state changes; those are
batched and sent to the server a few times a second.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yurt.api.client import YurtClient
from yurt.errors import NotFound, Unreachable, YurtError
from yurt.structs import Allocation, Node, TaskState
from yurt.structs.duration import format_duration

from . import task_events
from .alloc_runner import AllocRunner
from .drivers.connect_proxy import ConnectProxyDriver
from .drivers.docker import DockerDriver
from .drivers.exec import ExecDriver
from .drivers.raw_exec import RawExecDriver
from .supervise import Supervisor
from .template_settings import TemplateSettings

log = logging.getLogger("yurt.client")

SYNC_INTERVAL = 0.2     # seconds between batches of allocation updates to the server
WATCH_WAIT = "30s"      # blocking-query wait for the node's allocations
WATCH_BACKOFF = (0.5, 10.0)   # seconds: first and longest wait before the watch retries
SAY_EVERY = 60.0        # seconds between two log lines about the same server problem


class AllocView:
    """This node's allocations as its watch holds them (`GET /v1/internal/node/<id>/allocations`).

    Each answer lists every allocation's AllocModifyIndex and carries whole only those past the
    highest index this view holds (`since`): the servers move that index when they change what
    the client acts on (placement, desired status, the job), never for what the client reports.
    A view that finds an allocation missing or behind its index (nothing a correct server
    sends) asks for everything again (`since` 0)."""

    def __init__(self) -> None:
        self.allocs: dict[str, Allocation] = {}
        self.since = 0

    def apply(self, answer: dict[str, Any]) -> tuple[list[Allocation], bool]:
        """Take one answer; (the node's allocations, whether the view is whole: False asks for
        everything at once)."""
        indexes: dict[str, int] = answer["Allocs"]
        for doc in answer["Changed"]:
            a = Allocation.model_validate(doc)
            self.allocs[a.id] = a
        for gone in [i for i in self.allocs if i not in indexes]:
            del self.allocs[gone]
        whole = all(i in self.allocs and self.allocs[i].alloc_modify_index == n for i, n in indexes.items())
        self.since = max(indexes.values(), default=self.since) if whole else 0
        return [self.allocs[i] for i in indexes if i in self.allocs], whole


@dataclass
class ClientConfig:
    data_dir: Path
    node_name: str
    datacenter: str = "dc1"
    region: str = "global"
    node_class: str = ""
    node_pool: str = "default"
    meta: dict[str, str] = field(default_factory=dict)
    raw_exec_enabled: bool = False
    network_ip: str = "127.0.0.1"
    network_interface: str = ""
    loopback_ports: bool = False   # host ports on 127.0.0.1 too (-dev-connect: the node address is public)
    host_networks: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (address, reserved ports)
    host_volumes: dict[str, tuple[str, bool]] = field(default_factory=dict)   # name -> (path, read-only)
    template: TemplateSettings = field(default_factory=TemplateSettings)     # client { template { } }
    http_addr: str = ""
    options: dict[str, str] = field(default_factory=dict)
    api_socket: str = ""   # the agent's API on a unix socket, for sidecar proxies in namespaces
    dns: Any = None        # the agent's DNS server (network.tproxy.DNSAttach), served in tproxy namespaces


class NodeAgent:
    def __init__(self, config: ClientConfig, api: YurtClient) -> None:
        self.config = config
        self.api = api
        # the compiled task supervisor, built into the data dir on first use (client/supervise.py)
        supervisor = Supervisor(config.data_dir / "bin")
        self.drivers = {"raw_exec": RawExecDriver(enabled=config.raw_exec_enabled, supervisor=supervisor),
                        "exec": ExecDriver(supervisor=supervisor),
                        "connect-proxy": ConnectProxyDriver(f"unix://{config.api_socket}" if config.api_socket else "",
                                                            supervisor=supervisor),
                        "docker": DockerDriver(config.options.get("docker.endpoint", ""), owner=str(config.data_dir))}
        self.node: Node | None = None
        self.runners: dict[str, AllocRunner] = {}
        # collected here (`gc`) while the server still lists them: never started again (the
        # watch's copy of one keeps the client status it had when the server last changed it)
        self._collected: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()   # one batch in flight: a newer status never overtaken
        self._registered = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._heartbeat_ttl = 10.0
        # the last time a heartbeat (or the registration) was answered; from the start until the
        # first one, the start itself (Nomad's startup grace for stop_on_client_after)
        self._last_ok = time.monotonic()
        self._stopped_disconnected: set[str] = set()
        self._said: dict[str, float] = {}
        self._service_hook = None
        self._identity_hook = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        from .fingerprint import fingerprint_node
        c = self.config
        from .network import reconcile_networks
        removed = reconcile_networks(c.data_dir, set(AllocRunner.persisted_ids(c.data_dir)))
        if removed:
            log.info("removed network leftovers of allocations this client no longer has: %s", ", ".join(removed))
        for driver in self.drivers.values():
            if driver.capabilities.removes_orphans:
                orphans = driver.remove_orphans(set(AllocRunner.persisted_ids(c.data_dir)))
                if orphans:
                    log.info("removed containers of allocations this client no longer has: %s", ", ".join(orphans))
        self.node = fingerprint_node(c.data_dir, drivers=self.drivers, name=c.node_name, datacenter=c.datacenter,
                                     region=c.region, node_class=c.node_class, node_pool=c.node_pool,
                                     address=c.network_ip, http_addr=c.http_addr, meta=c.meta,
                                     network_interface=c.network_interface, host_networks=c.host_networks,
                                     host_volumes=c.host_volumes)
        # the server takes this node's register, heartbeats and allocation updates only with its
        # SecretID (and signs certificates for a client-only agent only with it)
        self.api.token = self.node.secret_id
        self._restore_runners()
        for target, name in ((self._register_and_heartbeat, "heartbeat"), (self._watch, "watch"),
                             (self._sync, "sync")):
            t = threading.Thread(target=target, name=f"yurt-client-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def registered(self) -> bool:
        return self._registered.is_set()

    @property
    def node_id(self) -> str:
        return self.node.id if self.node else ""

    def stop(self, destroy_allocs: bool = False) -> None:
        """Stop the agent. Tasks keep running (a restarted agent re-attaches) unless destroy_allocs."""
        self._stop.set()
        if destroy_allocs:
            for runner in list(self.runners.values()):
                runner.destroy(timeout=60)
        self._flush()

    def _task_runners(self, alloc_id: str, task: str, all_tasks: bool = True) -> list:
        from yurt.errors import InvalidInput, NotFound
        runner = self.runners.get(alloc_id)
        if runner is None:
            raise NotFound(f"allocation {alloc_id[:8]} does not run on this node")
        if task:
            tr = runner.task_runners.get(task)
            if tr is None:
                raise NotFound(f'allocation {alloc_id[:8]} has no task "{task}" (its tasks: '
                               f'{", ".join(sorted(runner.task_runners))})')
            return [tr]
        if not all_tasks and len(runner.task_runners) > 1:
            raise InvalidInput(f"allocation {alloc_id[:8]} has {len(runner.task_runners)} tasks: name one")
        return list(runner.task_runners.values())

    def signal_alloc(self, alloc_id: str, task: str, signal: str) -> None:
        """`alloc signal`: the signal to the task named (or to every running task)."""
        from yurt.errors import Conflict
        from .drivers.base import DriverError
        from .procs import signal_number
        signal_number(signal)   # unknown names are a ValueError: the caller's 400
        sent = 0
        for tr in self._task_runners(alloc_id, task):
            try:
                tr.send_signal(signal, "signal sent by a user (alloc signal)")
                sent += 1
            except DriverError as e:
                if task:
                    raise Conflict(str(e)) from None
        if not sent:
            raise Conflict(f"allocation {alloc_id[:8]} has no running task to signal")

    def restart_alloc(self, alloc_id: str, task: str, all_tasks: bool) -> None:
        """`alloc restart` (and `job restart`): the task named, or every running task, stopped
        with its kill signal and started again at once. As in Nomad, a restart a user asks for
        is not a failure: the restart policy neither delays nor refuses it (with `attempts = 0`
        the task still comes back)."""
        from yurt.errors import Conflict
        restarted = [tr.restart("restart requested by a user (alloc restart)", requested=True)
                     for tr in self._task_runners(alloc_id, task)]
        if not any(restarted):
            raise Conflict(f"allocation {alloc_id[:8]}: {'task ' + task if task else 'no task'} is running")

    def exec_alloc(self, alloc_id: str, task: str, command: list[str], tty: bool):
        """`alloc exec`: the command started inside the running task (client/exec_session.py)."""
        from yurt.errors import Conflict, InvalidInput
        from .exec_session import ExecError, start
        runner = self.runners.get(alloc_id)
        if runner is not None and runner.client_status in ("complete", "failed", "lost"):
            raise Conflict(f"allocation {alloc_id[:8]} is {runner.client_status}: alloc exec needs a running task")
        tr = self._task_runners(alloc_id, task, all_tasks=False)[0]
        handle = tr.handle
        if handle is None or not tr.is_running():
            raise Conflict(f'task "{tr.name}" is not running: alloc exec needs a running task')
        docker = self.drivers.get("docker") if handle.driver == "docker" else None
        try:
            return start(handle, command, tty, docker.client() if docker is not None else None)
        except ExecError as e:
            raise InvalidInput(str(e)) from None

    def local_alloc(self, alloc_id: str) -> Allocation | None:
        """The allocation, if this node runs it (or ran it and still has it)."""
        runner = self.runners.get(alloc_id)
        return runner.alloc if runner is not None else None

    def alloc_done(self, alloc_id: str) -> bool:
        """True once the allocation's tasks have all finished here (or it is gone)."""
        runner = self.runners.get(alloc_id)
        return runner is None or runner.client_status in ("complete", "failed", "lost")

    def gc(self, alloc_id: str = "") -> list[str]:
        """Nomad's client garbage collection (`/v1/client/gc`, `/v1/client/allocation/<id>/gc`):
        the terminal allocations of this node (or the one named) destroyed here, their
        directories removed, as they would be once the server forgets them; the IDs collected.
        One still running is not collected (InvalidInput when it is the one named)."""
        from yurt.errors import InvalidInput
        ids = [alloc_id] if alloc_id else list(self.runners)
        done = []
        for aid in ids:
            runner = self.runners.get(aid)
            if runner is None:
                continue
            if not self.alloc_done(aid):
                if alloc_id:
                    raise InvalidInput(f"allocation {aid[:8]} is still running on this node: only a stopped or "
                                       "finished allocation is garbage-collected (yurt alloc stop first)")
                continue
            if self.runners.pop(aid, None) is runner:
                self._collected.add(aid)
                runner.destroy(timeout=60)
                done.append(aid)
                log.info("allocation %s garbage-collected: its directory is removed", aid[:8])
        return done

    def snapshot(self, alloc_id: str, out) -> None:
        """Nomad's alloc snapshot for ephemeral_disk migrate: a tar of the terminal allocation's
        alloc/data and tasks' local/ written to ``out`` (Conflict while it still runs)."""
        from yurt.errors import Conflict, NotFound

        from .allocdir import AllocDir, write_snapshot
        runner = self.runners.get(alloc_id)
        if runner is None:
            raise NotFound(f"allocation {alloc_id[:8]} is not on this node")
        if not self.alloc_done(alloc_id):
            raise Conflict(f"allocation {alloc_id[:8]} is still running: its snapshot is only taken once it "
                           "has stopped (stop it, or wait for it to finish)")
        tg = runner.alloc.job.group(runner.alloc.task_group) if runner.alloc.job else None
        write_snapshot(AllocDir(self.config.data_dir, alloc_id), [t.name for t in (tg.tasks if tg else [])], out)

    def logs_dir(self, alloc_id: str) -> Path:
        return self.config.data_dir / "alloc" / alloc_id / "alloc" / "logs"

    # -- registration and heartbeats --------------------------------------------------------
    def _register_and_heartbeat(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if not self._registered.is_set():
                    result = self.api.register_node(self.node.to_json())
                    self._registered.set()
                    log.info("node %s registered", self.node.id[:8])
                else:
                    result = self.api.heartbeat(self.node.id)
                self._heartbeat_ttl = max(1.0, result.get("HeartbeatTTL", 10e9) / 1e9)
                self._last_ok = time.monotonic()
                backoff = 0.2
                self._stop.wait(self._heartbeat_ttl / 2)
                continue
            except Unreachable as e:
                self._say("unreachable", logging.WARNING, "no server reachable (%s); retrying, and the "
                          "running tasks keep running", e)
            except NotFound as e:
                if self._registered.is_set():   # the server forgot us (new data dir): register again
                    self._registered.clear()
                else:
                    self._registration_failed(e)
            except (YurtError, ValueError, AttributeError) as e:   # an error answer, or not JSON
                if self._registered.is_set():
                    log.warning("heartbeat failed: %s", e)
                else:
                    self._registration_failed(e)
            self._stop_disconnected()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _stop_disconnected(self) -> None:
        """`disconnect { stop_on_client_after }` (or `stop_after_client_disconnect`): the
        allocations of such groups are stopped here once no heartbeat has been answered for that
        long; the servers, which marked them lost, place their replacements only after it."""
        silent = time.monotonic() - self._last_ok
        for runner in list(self.runners.values()):
            alloc = runner.alloc
            if alloc.id in self._stopped_disconnected or alloc.terminal() or alloc.job is None:
                continue
            tg = alloc.job.group(alloc.task_group)
            after = tg.stop_on_client_after() if tg is not None else 0
            if after and silent * 1e9 >= after:
                self._stopped_disconnected.add(alloc.id)
                said = format_duration(after)
                log.warning("alloc %s: no server answered for %s (stop_on_client_after): stopping it",
                            alloc.id[:8], said)
                runner.stop(task_events.disconnected(said))

    def _registration_failed(self, e: Exception) -> None:
        """Say why: a Yurt server that refused, or an address that is not a Yurt server."""
        try:
            me = self.api.agent_self()
            yurt = isinstance(me, dict) and "config" in me and "member" in me
        except (YurtError, ValueError):
            yurt = False
        if yurt:
            self._say("register", logging.WARNING, "registering with %s failed: %s", self.api.address, e)
        else:
            self._say("not-yurt", logging.ERROR, "%s answers, but is not a Yurt server (registering gave: %s); "
                      "check client { servers } in the agent's configuration", self.api.address, e)

    def _say(self, key: str, level: int, message: str, *args: object) -> None:
        """Log `message` at most once a minute for each `key` (a retry loop must not flood)."""
        now = time.monotonic()
        if now - self._said.get(key, -SAY_EVERY) >= SAY_EVERY:
            self._said[key] = now
            log.log(level, message, *args)

    # -- allocations ------------------------------------------------------------------------
    def _restore_runners(self) -> None:
        for alloc_id in AllocRunner.persisted_ids(self.config.data_dir):
            try:
                runner = AllocRunner.restore(self.config.data_dir, alloc_id, drivers=self.drivers,
                                             node=self.node, on_update=self._on_update, region=self.config.region,
                                             hooks=self._hooks(), task_hooks=self._task_hooks())
            except Exception as e:  # noqa: BLE001 - a corrupt state file must not stop the agent
                log.warning("cannot restore allocation %s: %s", alloc_id[:8], e)
                continue
            self.runners[alloc_id] = runner
            runner.run()
            log.info("re-attached to allocation %s", alloc_id[:8])

    def _watch(self) -> None:
        """Follow this node's allocations until the agent stops. Nothing else ends the loop:
        a failed query, or a failure while acting on its answer, is logged and retried with
        backoff from the last index that was fully acted on (so nothing given is skipped).
        Each answer carries whole only the allocations the servers changed (`AllocView`); a
        server of an earlier release is watched through Nomad's `/v1/node/<id>/allocations`."""
        self._registered.wait()
        index = 0
        backoff = WATCH_BACKOFF[0]
        view: AllocView | None = AllocView()
        while not self._stop.is_set():
            try:
                if view is not None:
                    try:
                        answer, new_index = self.api.client_allocations(self.node_id, view.since, index=index,
                                                                        wait=WATCH_WAIT)
                    except YurtError as e:
                        if e.status != 405:
                            raise
                        log.info("the server has no GET /v1/internal/node/<id>/allocations (an earlier "
                                 "release): watching GET /v1/node/<id>/allocations instead")
                        view = None
                        continue
                    allocs, whole = view.apply(answer)
                    if not whole:
                        new_index = 0   # everything again, at once
                else:
                    docs, new_index = self.api.node_allocations(self.node_id, index=index, wait=WATCH_WAIT)
                    allocs = [Allocation.model_validate(a) for a in docs]
                self._reconcile(allocs)
            except YurtError as e:
                log.debug("watching allocations failed: %s; retrying in %.1fs", e, backoff)
            except Exception:
                log.exception("acting on this node's allocations failed; retrying in %.1fs", backoff)
            else:
                index, backoff = new_index, WATCH_BACKOFF[0]
                continue
            self._stop.wait(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF[1])

    def _reconcile(self, allocs: list[Allocation]) -> None:
        seen = set()
        for alloc in allocs:
            seen.add(alloc.id)
            runner = self.runners.get(alloc.id)
            if runner is None:
                if alloc.server_terminal() or alloc.client_terminal() or alloc.id in self._collected:
                    continue
                try:
                    runner = AllocRunner(alloc, data_dir=self.config.data_dir, drivers=self.drivers,
                                         node=self.node, on_update=self._on_update, region=self.config.region,
                                         hooks=self._hooks(), task_hooks=self._task_hooks())
                except ValueError as e:
                    log.error("cannot run allocation %s: %s", alloc.id[:8], e)
                    continue
                self._previous(runner, alloc)
                self.runners[alloc.id] = runner
                runner.run()
            elif alloc.alloc_modify_index != runner.alloc.alloc_modify_index or \
                    alloc.desired_status != runner.alloc.desired_status:
                runner.update(alloc)
        self._collected.intersection_update(seen)
        for alloc_id in [a for a in list(self.runners) if a not in seen]:
            # garbage-collected on the server: nothing of it should stay here
            gone = self.runners.pop(alloc_id, None)   # (or collected here meanwhile: `gc`)
            if gone is not None:
                threading.Thread(target=gone.destroy, kwargs={"timeout": 60}, daemon=True).start()

    def _previous(self, runner: AllocRunner, alloc: Allocation) -> None:
        """The allocation a replacement takes the ephemeral disk of (sticky, migrate), on this node or
        (migrate) another."""
        from .alloc_hooks import PreviousAlloc
        from .allocdir import AllocDir
        prev_id = alloc.previous_allocation
        if not prev_id:
            return
        prev_runner = self.runners.get(prev_id)
        prev_dir = AllocDir(self.config.data_dir, prev_id)
        if prev_runner is None and not prev_dir.exists():
            # another node's: ephemeral_disk migrate downloads its snapshot (client/migrate.py)
            tg = alloc.job.group(alloc.task_group) if alloc.job else None
            disk = tg.ephemeral_disk if tg else None
            if disk is not None and disk.migrate:
                from .migrate import RemoteMigration

                def emit(event) -> None:
                    for tr in runner.task_runners.values():
                        tr.emit_event(event)
                runner.context.previous = PreviousAlloc(prev_dir, fetch=RemoteMigration(self.api, prev_id, emit,
                                                                                         self._stop))
            return
        runner.context.previous = PreviousAlloc(prev_dir, prev_runner.wait_stopped if prev_runner else None)

    def _hooks(self) -> list:
        """The allocation hooks, in order: alloc dir, identity, network, mesh inbound, service registration."""
        from .alloc_hooks import default_hooks
        from .identity_hook import IdentityHook
        from .service_hook import ServiceHook
        if self._service_hook is None:
            self._service_hook = ServiceHook(self.api, self.node.id if self.node else "")
        if self._identity_hook is None:
            self._identity_hook = IdentityHook(self.api, lambda: self.node_id, self._stop)
        return default_hooks(services=self._service_hook, loopback_ports=self.config.loopback_ports,
                             identity=self._identity_hook, agent_socket=self.config.api_socket,
                             dns=self.config.dns)

    def _task_hooks(self) -> list:
        """The task runner hooks each task gets, in Nomad's order: artifacts, then templates."""
        from .artifact_hook import artifact_hooks
        from .template_hook import template_hooks
        return [artifact_hooks(), template_hooks(self.api, self.config.template)]

    def _on_update(self, alloc_id: str, status: str, description: str, states: dict[str, TaskState]) -> None:
        from .network import network_status
        runner = self.runners.get(alloc_id)
        update = {"ID": alloc_id, "ClientStatus": status, "ClientDescription": description,
                  "TaskStates": {k: v.to_json() for k, v in states.items()}}
        net = network_status(runner.resources) if runner is not None else None
        if net:
            update["NetworkStatus"] = net
        with self._pending_lock:
            self._pending[alloc_id] = update

    def _sync(self) -> None:
        while not self._stop.wait(SYNC_INTERVAL):
            self._flush()

    def report_now(self, alloc_id: str) -> None:
        """Send the allocation's status to the server now, not at the batch's next turn: whoever
        saw it finish here (`alloc fs -f` ending) then finds the server knowing it too."""
        runner = self.runners.get(alloc_id)
        if runner is not None:
            runner.report()
        self._flush()

    def _flush(self) -> None:
        with self._flush_lock:
            self._send_pending()

    def _send_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, {}
        if not batch or not self._registered.is_set():
            with self._pending_lock:
                for k, v in batch.items():
                    self._pending.setdefault(k, v)
            return
        try:
            self.api.update_allocations(self.node.id, list(batch.values()))
        except YurtError as e:
            log.debug("sending allocation updates failed: %s; will retry", e)
            with self._pending_lock:
                for k, v in batch.items():
                    self._pending.setdefault(k, v)
