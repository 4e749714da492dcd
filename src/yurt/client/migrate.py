"""ephemeral_disk `migrate = true` across nodes (Nomad's client/allocwatcher remote watcher).

A replacement allocation whose previous allocation ran on another node waits, before its tasks
start, for that allocation to be terminal, then downloads its snapshot and unpacks it into its
own directory. Both through one route, `GET /v1/client/allocation/<id>/snapshot`, asked every
second up to `MIGRATE_WAIT`: the servers answer 409 while the allocation runs and 404 when it or
its node is gone, else forward it to the previous node's agent, which sends a tar of alloc/data
and each task's local/ (a node's secret is enough for it: it reads nothing else). A previous
allocation that is gone, or whose node is down, leaves the new one starting empty, with a task
event saying so; a failed download or unpack fails the allocation (as Nomad's migrate hook does).
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable

from yurt.errors import Conflict, NotFound, Unavailable, YurtError
from yurt.structs import TaskEvent

from . import task_events as ev
from .allocdir import AllocDir, restore_snapshot

log = logging.getLogger("yurt.client")
MIGRATE_WAIT = 300.0   # seconds a replacement waits for the previous allocation to be terminal
POLL = 1.0
MIGRATING = "Migrating"


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

    def _download(self, out) -> str:
        """The previous allocation's snapshot into ``out`` once it is terminal: "" when done, else
        why its data cannot be had. Only the snapshot route is asked (409 while the allocation
        runs, 404 when it or its node is gone): a node's secret is enough for it."""
        deadline = time.monotonic() + self.wait
        while True:
            out.seek(0)
            out.truncate()
            try:
                self.api.alloc_snapshot(self.prev_id, out)
                return ""
            except NotFound as e:
                return str(e)
            except YurtError as e:   # 409: still running; 5xx, unreachable: try again until the deadline
                if not isinstance(e, (Conflict, Unavailable)) and e.status < 500:
                    raise
                if time.monotonic() >= deadline:
                    return f"previous allocation {self.prev_id[:8]} gave no snapshot within {self.wait:.0f}s: {e}"
            if self.stop.wait(POLL):
                return "the client is stopping"

    def __call__(self, alloc_dir: AllocDir, tasks: list[str]) -> None:
        self._say("Migrating data from previous allocation")
        files = 0
        with tempfile.TemporaryFile() as tmp:
            try:
                why = self._download(tmp)
                if not why:
                    tmp.seek(0)
                    files = restore_snapshot(alloc_dir, tasks, tmp)
            except (YurtError, OSError, ValueError, tarfile.TarError) as e:
                raise RuntimeError(f"failed to migrate data from previous allocation {self.prev_id[:8]}: {e}") \
                    from None
        if why:
            self._say(f"Not migrating data from previous allocation: {why}; starting with an empty disk")
            log.warning("alloc %s: not migrating data: %s", alloc_dir.alloc_id[:8], why)
            return
        log.info("alloc %s: migrated %d files from allocation %s", alloc_dir.alloc_id[:8], files, self.prev_id[:8])
