"""Authorization cache: one decision per source identity (SPIFFE URI), kept until the
intentions for our service change.

The agent is asked (`MeshSource.authorize`) off the reactor thread, once per source identity,
however many connections arrive meanwhile. When the intentions index moves, every cached
identity is re-asked; the old decision serves new connections until the new one arrives
(milliseconds), and an identity that is now denied gets its open connections closed through
`on_denied`. Errors from the agent deny the waiting connections but are not cached
(fail closed, retry on the next connection).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from .pump import Reactor

Decision = tuple[bool, str]
MAX_ENTRIES = 10000


class Authorizer:
    def __init__(self, reactor: Reactor, ask: Callable[[str, str], Decision],
                 on_denied: Callable[[str, str], None], workers: int = 2) -> None:
        self.reactor = reactor
        self._ask_fn = ask
        self.on_denied = on_denied
        self.decisions: dict[str, Decision] = {}
        self.waiters: dict[str, list[Callable[[bool, str], None]]] = {}
        self.serials: dict[str, str] = {}
        self.gen = 0
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"yurt-authz-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # -- reactor thread -------------------------------------------------------------------------
    def check(self, uri: str, serial: str, cb: Callable[[bool, str], None]) -> None:
        d = self.decisions.get(uri)
        if d is not None:
            cb(*d)
            return
        w = self.waiters.get(uri)
        if w is not None:
            w.append(cb)
            return
        self.waiters[uri] = [cb]
        self.serials[uri] = serial
        self._q.put((uri, serial, self.gen))

    def invalidate(self) -> None:
        """The intentions changed: re-ask every identity we know."""
        self.gen += 1
        for uri in list(self.decisions):
            self._q.put((uri, self.serials.get(uri, ""), self.gen))

    def _answer(self, uri: str, gen: int, decision: Decision, failed: bool) -> None:
        if gen != self.gen and not failed:
            self._q.put((uri, self.serials.get(uri, ""), self.gen))  # stale: ask again
            return
        if not failed:
            if len(self.decisions) >= MAX_ENTRIES and uri not in self.decisions:
                self.decisions.clear()
            previous = self.decisions.get(uri)
            self.decisions[uri] = decision
            if previous is not None and previous[0] and not decision[0]:
                self.on_denied(uri, decision[1])
        for cb in self.waiters.pop(uri, ()):
            cb(*decision)

    # -- worker threads -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            uri, serial, gen = item
            try:
                allowed, reason = self._ask_fn(uri, serial)
                decision, failed = (bool(allowed), str(reason or "")), False
            except Exception as e:  # noqa: BLE001 - whatever went wrong, fail closed
                decision, failed = (False, f"authorization unavailable: {e}"), True
            self.reactor.call_soon_threadsafe(self._answer, uri, gen, decision, failed)

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(None)
