"""ephemeral_disk `migrate = true` across nodes (Nomad's client/allocwatcher remote watcher).

A replacement allocation whose previous allocation ran on another node waits, before its tasks
start, for that allocation to be terminal (asking the servers, up to `MIGRATE_WAIT`), then
downloads its snapshot (`GET /v1/client/allocation/<id>/snapshot`, which the servers forward to
the previous node's agent: a tar of alloc/data and each task's local/) and unpacks it into its
own directory. A previous allocation that is gone, or whose node is down, leaves the new one
starting empty, with a task event saying so; a failed download or unpack fails the allocation
(as Nomad's migrate hook does).
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable

from yurt.errors import NotFound, YurtError
from yurt.structs import TaskEvent

from . import task_events as ev
from .allocdir import AllocDir, restore_snapshot

log = logging.getLogger("yurt.client")
MIGRATE_WAIT = 300.0   # seconds a replacement waits for the previous allocation to be terminal
POLL = 1.0
MIGRATING = "Migrating"
TERMINAL = ("complete", "failed", "lost")


class RemoteMigration:
    """Called by the alloc dir hook with the new allocation's directory and task names."""

    def __init__(self, api, prev_id: str, emit: Callable[[TaskEvent], None], stop: threading.Event,
                 wait: float = MIGRATE_WAIT) -> None:
        self.api = api
        self.prev_id = prev_id
        self.emit = emit
        self.stop = stop
        self.wait = wait

    def _say(self, message: str) -> None:
        self.emit(ev.event(MIGRATING, message, message=message))

    def _terminal(self) -> str:
        """"" once the previous allocation is terminal, else why its data cannot be had."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                prev = self.api.allocation(self.prev_id)
            except NotFound:
                return f"previous allocation {self.prev_id[:8]} is gone"
            if prev.get("ClientStatus") in TERMINAL:
                return ""
            node_id = prev.get("NodeID") or ""
            try:
                node = self.api.node(node_id) if node_id else None
            except NotFound:
                node = None
            if node is None or node.get("Status") == "down":
                return f"the node {node_id[:8]} of previous allocation {self.prev_id[:8]} is gone or down"
            if time.monotonic() >= deadline:
                return f"previous allocation {self.prev_id[:8]} did not stop within {self.wait:.0f}s"
            if self.stop.wait(POLL):
                return "the allocation is stopping"

    def __call__(self, alloc_dir: AllocDir, tasks: list[str]) -> None:
        try:
            why = self._terminal()
        except YurtError as e:
            why = f"the servers could not be asked about previous allocation {self.prev_id[:8]}: {e}"
        if why:
            self._say(f"Not migrating data from previous allocation: {why}; starting with an empty disk")
            log.warning("alloc %s: not migrating data: %s", alloc_dir.alloc_id[:8], why)
            return
        self._say("Migrating data from previous allocation")
        with tempfile.TemporaryFile() as tmp:
            try:
                self.api.alloc_snapshot(self.prev_id, tmp)
                tmp.seek(0)
                files = restore_snapshot(alloc_dir, tasks, tmp)
            except (YurtError, OSError, ValueError, tarfile.TarError) as e:
                raise RuntimeError(f"failed to migrate data from previous allocation {self.prev_id[:8]}: {e}") \
                    from None
        log.info("alloc %s: migrated %d files from allocation %s", alloc_dir.alloc_id[:8], files, self.prev_id[:8])
