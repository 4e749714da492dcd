"""Allocation runner hooks: one class per concern of running an allocation.

The runner calls, in list order, ``prerun`` before any task starts (also after an agent
restart, so hooks must be idempotent), ``update`` when the server sends a new version of the
allocation, ``postrun`` after every task is dead, and ``destroy`` when the allocation is
garbage-collected. A hook may add variables to every task's environment through
``runner.hook_env`` and share anything else through ``runner.hook_resources``. Adding a concern
(bridge networking, service registration, sidecar identity) is adding a class here or next to
it, and putting it in the runner's hook list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yurt.structs import Allocation

if TYPE_CHECKING:
    from .alloc_runner import AllocRunner


class AllocHook:
    name = "hook"

    def prerun(self, runner: AllocRunner) -> None:
        pass

    def update(self, runner: AllocRunner, alloc: Allocation) -> None:
        pass

    def postrun(self, runner: AllocRunner) -> None:
        pass

    def destroy(self, runner: AllocRunner) -> None:
        pass


class AllocDirHook(AllocHook):
    """Builds the allocation directory before tasks run and removes it on destroy."""

    name = "alloc_dir"

    def prerun(self, runner: AllocRunner) -> None:
        runner.alloc_dir.build([t.name for t in runner.tasks])

    def destroy(self, runner: AllocRunner) -> None:
        runner.alloc_dir.destroy()


def default_hooks() -> list[AllocHook]:
    """The hooks every allocation runs with, in order."""
    from .network.mesh_inbound import MeshInboundHook
    from .network.network_hook import NetworkHook
    return [AllocDirHook(), NetworkHook(), MeshInboundHook()]
