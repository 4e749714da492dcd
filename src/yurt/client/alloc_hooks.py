"""Allocation runner hooks: one class per concern of running an allocation, in one list.

The runner calls, in list order, ``prerun`` before any task starts (also after an agent
restart, so hooks must be idempotent), ``update`` when the server sends a new version of the
allocation, ``postrun`` after every task is dead, and ``destroy`` (in reverse order) when the
allocation is garbage-collected. Every call gets the allocation's `AllocHookContext`: what the
hook may read (the allocation, its group, the node, the directories, the driver that holds the
group's network namespace if one does) and do (restart a task), and the `AllocResources` it
fills in for the tasks (environment variables, the network namespace, resolv.conf, hostname,
the network status). Hooks see the runner only through it. Adding a concern (bridge
networking, service registration, sidecar identity) is adding a class here or next to it, and
putting it in `default_hooks`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yurt.structs import Allocation, Node, Task, TaskGroup

from .allocdir import AllocDir, TaskDir
from .drivers.base import NetnsHolder

if TYPE_CHECKING:
    from .agent_relay import AgentRelay
    from .service_hook import ServiceHook

log = logging.getLogger("yurt.client")
STICKY_WAIT = 300   # seconds a replacement waits for the allocation it takes the disk of to stop

# restart_task(task name, reason) -> True when the task was running and is being restarted
RestartTask = Callable[[str, str], bool]


@dataclass
class AllocResources:
    """What the hooks set up for the allocation's tasks; each task reads it when it starts."""

    env: dict[str, str] = field(default_factory=dict)   # added to every task's environment
    netns: str = ""              # the group's network namespace (/var/run/netns/<alloc id>); "" = the host's
    network_status: dict[str, Any] | None = None   # the allocation's NetworkStatus; None in host mode
    resolv_conf: str = ""        # the text of the namespace's /etc/resolv.conf ("" = not set)
    hostname: str = ""           # the group's hostname ("" = not set)
    agent_socket: str = ""       # the agent's API socket, for Connect-native tasks ("" = none served)
    agent_relay: bool = False    # the agent's API is relayed at alloc/tmp/yurt_http.sock (isolated drivers)


@dataclass
class PreviousAlloc:
    alloc_dir: AllocDir
    wait: Callable[[float], bool] | None = None
    # on another node (ephemeral_disk migrate): waits for it to be terminal and unpacks its
    # snapshot into the new allocation's directory (client/migrate.py), given the task names
    fetch: Callable[[AllocDir, list[str]], None] | None = None


@dataclass
class AllocHookContext:
    """One allocation, as its hooks see it."""

    alloc: Allocation            # the current version: `update` replaces it before the hooks run
    group: TaskGroup             # the allocation's task group, as the runner runs it
    node: Node | None
    region: str | None           # the client's region (NOMAD_REGION)
    data_dir: str | os.PathLike[str]   # the client's data dir (the network state lives under it)
    alloc_dir: AllocDir
    restart_task: RestartTask
    # the driver that creates the group's network namespace, when a task's driver declares
    # `holds_network_namespace` (docker's pause container); None: `ip netns add`
    netns_holder: NetnsHolder | None = None
    ended: bool = False          # restored after it ended: nothing will run in it
    resources: AllocResources = field(default_factory=AllocResources)
    # the allocation this one replaces on this node (its directory, and a wait for its tasks to
    # stop: None when it no longer runs here): ephemeral_disk sticky/migrate moves its data over
    previous: PreviousAlloc | None = None

    @property
    def alloc_id(self) -> str:
        return self.alloc.id

    @property
    def tasks(self) -> list[Task]:
        return list(self.group.tasks or [])

    def task_dir(self, task: str) -> TaskDir | None:
        """The directory of the group's task ``task``; None when the group has no such task."""
        if any(t.name == task for t in self.group.tasks or []):
            return self.alloc_dir.task_dir(task)
        return None


class AllocHook:
    """The hook protocol; every call is a no-op unless the hook overrides it."""

    name = "hook"

    def prerun(self, ctx: AllocHookContext) -> None:
        pass

    def update(self, ctx: AllocHookContext) -> None:
        pass

    def prekill(self, ctx: AllocHookContext) -> None:
        pass

    def postrun(self, ctx: AllocHookContext) -> None:
        pass

    def destroy(self, ctx: AllocHookContext) -> None:
        pass


class AllocDirHook(AllocHook):
    """Builds the allocation directory before tasks run and removes it on destroy."""

    name = "alloc_dir"

    def prerun(self, ctx: AllocHookContext) -> None:
        fresh = not ctx.alloc_dir.exists()
        ctx.alloc_dir.build([t.name for t in ctx.tasks])
        disk = ctx.group.ephemeral_disk
        if fresh and ctx.previous is not None and disk is not None and (disk.sticky or disk.migrate):
            self._take_over(ctx, ctx.previous)

    @staticmethod
    def _take_over(ctx: AllocHookContext, prev: PreviousAlloc) -> None:
        """ephemeral_disk sticky (Nomad's allocwatcher): once the previous allocation's tasks have
        stopped, its alloc/data and its tasks' local/ are moved into this allocation's directory;
        migrate from another node: its snapshot is downloaded and unpacked here."""
        if prev.fetch is not None:
            prev.fetch(ctx.alloc_dir, [t.name for t in ctx.tasks])
            return
        if prev.wait is not None and not prev.wait(STICKY_WAIT):
            log.warning("alloc %s: the previous allocation %s did not stop within %ds; its data is not "
                        "moved", ctx.alloc_id[:8], prev.alloc_dir.alloc_id[:8], STICKY_WAIT)
            return
        moves = [(prev.alloc_dir.shared / "data", ctx.alloc_dir.shared / "data")]
        for t in ctx.tasks:
            try:
                moves.append((prev.alloc_dir.task_dir(t.name).local, ctx.alloc_dir.task_dir(t.name).local))
            except ValueError:
                continue
        for src, dst in moves:
            if not src.is_dir():
                continue
            try:
                shutil.rmtree(dst, ignore_errors=True)
                os.rename(src, dst)
            except OSError as e:
                log.warning("alloc %s: could not move %s from the previous allocation: %s", ctx.alloc_id[:8],
                            src, e)
                dst.mkdir(parents=True, exist_ok=True)
        log.info("alloc %s: took over the ephemeral disk of allocation %s", ctx.alloc_id[:8],
                 prev.alloc_dir.alloc_id[:8])

    def destroy(self, ctx: AllocHookContext) -> None:
        ctx.alloc_dir.destroy()


class ConnectNativeHook(AllocHook):
    """A group with a `connect { native = true }` service: its task is given the agent's API
    (`AllocResources.agent_socket`; the task runner sets CONSUL_HTTP_ADDR and YURT_ADDR from it,
    see taskenv.native_vars), so `yurt.connect` in the task gets its leaf and roots. raw_exec
    uses the agent's socket by its host path; for drivers with filesystem isolation (exec,
    docker) the agent relays its API from the allocation's `alloc/tmp/yurt_http.sock`
    (agent_relay.py), which they see as /alloc/tmp/yurt_http.sock."""
    name = "connect_native"

    def __init__(self, agent_socket: str = "") -> None:
        self.agent_socket = agent_socket
        self._relay: AgentRelay | None = None

    def prerun(self, ctx: AllocHookContext) -> None:
        if not self.agent_socket or not any(s.is_native for s in ctx.group.services or []):
            return
        ctx.resources.agent_socket = self.agent_socket
        if ctx.ended or self._relay is not None:
            return
        from .agent_relay import SOCKET_NAME
        from .agent_relay import AgentRelay as Relay
        relay = Relay(ctx.alloc_dir.shared / "tmp" / SOCKET_NAME, self.agent_socket)
        try:
            started = relay.start()
        except OSError as e:
            log.warning("allocation %s: cannot relay the agent's API into it: %s", ctx.alloc_id[:8], e)
            started = False
        if started:
            self._relay = relay
            ctx.resources.agent_relay = True

    def postrun(self, ctx: AllocHookContext) -> None:
        self._close()

    def destroy(self, ctx: AllocHookContext) -> None:
        self._close()

    def _close(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.stop()


def default_hooks(services: ServiceHook | None = None, *, loopback_ports: bool = False,
                  identity: AllocHook | None = None, agent_socket: str = "",
                  dns: Any = None) -> list[AllocHook]:
    """The hooks an allocation runs with, in order: alloc dir, network (namespace + CNI), mesh
    inbound (the namespace's firewall), then ``services`` (catalog registration and checks: one
    hook for all of a client's allocations, as it talks to the server) when given.
    ``loopback_ports``: host ports are mapped on 127.0.0.1 too (a -dev-connect node).
    ``identity`` (the node agent's `IdentityHook`: each task's workload identity token) comes
    right after the alloc dir. ``agent_socket``: the agent's API socket, handed to Connect-native
    tasks (`ConnectNativeHook`). ``dns``: the agent's DNS server, served inside the namespace of a
    group with a transparent proxy (`network.tproxy.TransparentProxyHook`, after mesh inbound)."""
    from .network.mesh_inbound import MeshInboundHook
    from .network.network_hook import NetworkHook
    from .network.tproxy import TransparentProxyHook
    hooks: list[AllocHook] = [AllocDirHook(), *([identity] if identity is not None else []),
                              NetworkHook(loopback_too=loopback_ports), MeshInboundHook(),
                              TransparentProxyHook(dns), ConnectNativeHook(agent_socket)]
    if services is not None:
        hooks.append(services)
    return hooks
