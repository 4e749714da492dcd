"""Following a node drain as `nomad node drain` does: a line per change of the node's
allocations (marked for migration, draining, status changes, replaced elsewhere, blocked), then
`Drain complete for node ...` and `All allocations on node ... have stopped`.

`monitor_drain` returns the exit code: 0 the drain completed and everything it migrated runs
elsewhere (or was a batch allocation left to finish), 1 the drain was canceled or the node
vanished, 2 the drain completed but some migrated allocations could not be placed anywhere
(their jobs have blocked evaluations; `yurt job status JOB` shows the placement failures).
"""

from __future__ import annotations

import time
from typing import Any

from yurt.api.client import YurtClient
from yurt.errors import NotFound
from yurt.structs.times import parse_rfc3339

from .format import echo, fmt_clock, short
from .output import EXIT_ERROR, EXIT_OK, EXIT_PLACEMENT

POLL_WAIT = "1s"        # each blocking query on the node's allocations waits at most this long
SETTLE_SECONDS = 15.0   # after completion, how long to wait for the scheduler to place or block


def say(message: str) -> None:
    echo(f"{fmt_clock()}: {message}")


def _migrating(a: dict) -> bool:
    return bool((a.get("DesiredTransition") or {}).get("Migrate"))


def _job_type(a: dict) -> str:
    return str((a.get("Job") or {}).get("Type") or a.get("JobType") or "service")


def _client_terminal(a: dict) -> bool:
    return a.get("ClientStatus") in ("complete", "failed", "lost")


class DrainMonitor:
    def __init__(self, client: YurtClient, node_id: str, before: list[dict] | None = None,
                 ignore_system: bool = False) -> None:
        self.client = client
        self.ignore_system = ignore_system
        self.node_id = node_id
        self.seen: dict[str, dict] = {a["ID"]: a for a in before or []}
        # allocations that had finished before this drain: history, not part of it
        self.history: set[str] = {a["ID"] for a in before or [] if _client_terminal(a)}
        self.started = before is not None
        self.replaced: set[str] = set()
        self.blocked: dict[str, str] = {}     # alloc ID -> job ID whose placement is blocked
        self.index = 0
        self.complete_said = False

    def run(self) -> int:
        say("Ctrl-C to stop monitoring: will not cancel the node drain")
        while True:
            try:
                node = self.client.node(self.node_id)
                allocs, self.index = self.client.node_allocations(self.node_id, index=self.index, wait=POLL_WAIT)
            except NotFound:
                say(f'Node "{self.node_id}" no longer exists (purged); stopped monitoring')
                return EXIT_ERROR
            strategy, last = node.get("DrainStrategy"), node.get("LastDrain") or {}
            if not self.started:   # -monitor: what finished before the drain started is history
                self.started = True
                since = parse_rfc3339(last.get("StartedAt")) or 0
                self.history = {a["ID"] for a in allocs if _client_terminal(a) and a.get("ModifyTime", 0) < since}
            self._allocs(allocs)
            if strategy is not None:
                self.ignore_system = bool(strategy.get("IgnoreSystemJobs"))
                continue
            status = last.get("Status")
            if status == "canceled":
                say(f"Drain canceled for node {self.node_id}")
                return EXIT_ERROR
            if status != "complete":
                say(f'Node "{self.node_id}" is not draining')
                return EXIT_ERROR
            if not self.complete_said:
                self.complete_said = True
                done = [e for e in node.get("Events") or [] if e.get("Message") == "Node drain complete"]
                forced = bool(done) and (done[-1].get("Details") or {}).get("deadline_reached") == "true"
                say(f"Drain complete for node {self.node_id}" +
                    (" (deadline reached: what was left was stopped at once)" if forced else ""))
            left = [a for a in allocs if not _client_terminal(a)
                    and not (self.ignore_system and _job_type(a) == "system")]
            if not left:
                say(f'All allocations on node "{self.node_id}" have stopped')
                return self._settle()

    def _allocs(self, allocs: list[dict]) -> None:
        for a in sorted(allocs, key=lambda a: a.get("CreateIndex", 0)):
            if a["ID"] in self.history:
                continue
            prev = self.seen.get(a["ID"])
            aid = short(a["ID"])
            if _migrating(a) and not (prev is not None and _migrating(prev)):
                say(f'Alloc "{aid}" marked for migration')
            if (a.get("DesiredStatus") == "stop" and _migrating(a)
                    and not (prev is not None and prev.get("DesiredStatus") == "stop")):
                say(f'Alloc "{aid}" draining')
            if prev is not None and prev.get("ClientStatus") != a.get("ClientStatus"):
                say(f'Alloc "{aid}" status {prev.get("ClientStatus")} -> {a.get("ClientStatus")}')
            if _migrating(a) and a.get("DesiredStatus") == "stop":
                self._replacement(a)
            self.seen[a["ID"]] = a

    def _replacement(self, a: dict) -> str:
        """"replaced", "blocked" or "pending" (the scheduler has not decided yet); says it once."""
        if a["ID"] in self.replaced:
            return "replaced"
        if a["ID"] in self.blocked:
            return "blocked"
        aid = short(a["ID"])
        nxt = a.get("NextAllocation")
        if nxt:
            self.replaced.add(a["ID"])
            try:
                new = self.client.allocation(nxt)
                where = f' on node "{new.get("NodeName") or short(new.get("NodeID"))}"'
            except NotFound:
                where = ""
            say(f'Alloc "{aid}" replaced by "{short(nxt)}"{where}')
            return "replaced"
        job = a.get("JobID", "")
        try:
            evals = self.client.job_evaluations(job) if job else []
        except NotFound:     # the job was purged: nothing will replace it
            self.replaced.add(a["ID"])
            return "replaced"
        if any(e.get("Status") == "blocked" for e in evals):
            self.blocked[a["ID"]] = job
            say(f'Alloc "{aid}" was stopped, but no node can take its replacement: job "{job}" is blocked '
                f"waiting for capacity (see `yurt job status {job}`)")
            return "blocked"
        return "pending"

    def _settle(self) -> int:
        """Wait (briefly) until every migrated allocation is either replaced or known blocked."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            pending = []
            for a in self.seen.values():
                if a["ID"] not in self.history and _migrating(a) and a.get("DesiredStatus") == "stop":
                    try:
                        current = self.client.allocation(a["ID"])
                    except NotFound:
                        continue
                    if self._replacement(current) == "pending":
                        pending.append(a["ID"])
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if self.blocked:
            jobs = sorted(set(self.blocked.values()))
            say(f"{len(self.blocked)} migrated allocation(s) could not be placed on another node; "
                f"blocked job(s): {', '.join(jobs)}")
            return EXIT_PLACEMENT
        return EXIT_OK


def monitor_drain(client: YurtClient, node_id: str, before: list[dict[str, Any]] | None = None,
                  ignore_system: bool = False) -> int:
    return DrainMonitor(client, node_id, before, ignore_system).run()
