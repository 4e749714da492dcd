"""Blocking queries: wait until an index passes a value, from threads or from asyncio.

The store calls `notify()` with its memory lock held after every committed write. Thread
waiters sleep on an Event of their own, set only when their target's index moved (waking every
sleeping thread at every write cost a futex wake each, and each woken thread the GIL, for
nothing); asyncio waiters register a Future that the writing thread resolves through
`loop.call_soon_threadsafe`, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable

Target = str | Iterable[str] | None


Entry = tuple[int, Target, asyncio.AbstractEventLoop, asyncio.Future]


class Waiters:
    """`current(target)` is the index a waiter compares with its own. Targets that start with
    `keyed` (one node's allocations: a fleet keeps one such query open per node) are kept by
    target and checked only when a write names them in `notify(keys)`; the others are checked
    at every write."""

    def __init__(self, lock: threading.Lock, current: Callable[[Target], int], keyed: str = "") -> None:
        self._lock = lock
        self._threads: list[tuple[int, Target, threading.Event]] = []
        self._current = current  # called with the lock held
        self._keyed = keyed
        self._async: list[Entry] = []
        self._by_key: dict[str, list[Entry]] = {}

    def _is_keyed(self, target: Target) -> bool:
        return bool(self._keyed) and isinstance(target, str) and target.startswith(self._keyed)

    def notify(self, keys: Iterable[str] | None = None) -> None:
        """Wake waiters whose index moved; call with the lock held. `keys`: the keyed targets
        (without the prefix) this write changed; None checks every keyed waiter too."""
        if self._threads:
            keep = []
            for w in self._threads:
                if self._current(w[1]) > w[0]:
                    w[2].set()
                else:
                    keep.append(w)
            self._threads = keep
        if self._async:
            self._async = self._wake(self._async)
        if not self._by_key:
            return
        targets = list(self._by_key) if keys is None else [self._keyed + k for k in keys]
        for target in targets:
            waiting = self._by_key.get(target)
            if waiting:
                left = self._wake(waiting)
                if left:
                    self._by_key[target] = left
                else:
                    del self._by_key[target]

    def _wake(self, entries: list[Entry]) -> list[Entry]:
        keep = []
        for w in entries:
            min_index, target, loop, fut = w
            if self._current(target) > min_index:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            else:
                keep.append(w)
        return keep

    def wait(self, min_index: int, timeout_s: float, target: Target = None) -> int:
        with self._lock:
            now = self._current(target)
            if now > min_index or timeout_s <= 0:
                return now
            entry = (min_index, target, threading.Event())
            self._threads.append(entry)
        try:
            entry[2].wait(timeout_s)
        finally:
            with self._lock:
                if entry in self._threads:
                    self._threads.remove(entry)
        with self._lock:
            return self._current(target)

    def park(self, min_index: int, target: Target, loop: asyncio.AbstractEventLoop) -> Entry | None:
        """Register an asyncio waiter: its Future (the entry's last item) is resolved on `loop`
        once `target` moves past `min_index`. None when it already has (nothing registered).
        The caller unparks the entry when it stops waiting, resolved or not."""
        entry: Entry = (min_index, target, loop, loop.create_future())
        with self._lock:
            if self._current(target) > min_index:
                return None
            if self._is_keyed(target):
                self._by_key.setdefault(str(target), []).append(entry)
            else:
                self._async.append(entry)
        return entry

    def unpark(self, entry: Entry) -> None:
        with self._lock:
            target = entry[1]
            if self._is_keyed(target):
                waiting = self._by_key.get(str(target))
                if waiting is not None and entry in waiting:
                    waiting.remove(entry)
                    if not waiting:
                        del self._by_key[str(target)]
            elif entry in self._async:
                self._async.remove(entry)

    def current(self, target: Target = None) -> int:
        with self._lock:
            return self._current(target)

    def watch(self, min_index: int, timeout_s: float, target: Target,
              done: Callable[[int], None]) -> Callable[[bool], None] | None:
        """`wait_async` without a coroutine, on the running event loop (the client agents'
        watches: thousands parked at once, each without a task): `done(index)` is called on the
        loop once `target` moves past `min_index` or `timeout_s` passes, with its index (never
        below 1, as a blocking query answers); at once, before this returns None, when it
        already has. Otherwise returns `end(answer)`, which stops the wait: `done` is then called
        at once with the current index if `answer`, never if not (the caller went away)."""
        loop = asyncio.get_running_loop()
        entry = self.park(min_index, target, loop)
        if entry is None:
            done(max(self.current(target), 1))
            return None
        return _Watch(self, entry, loop.call_later(max(0.0, timeout_s), _resolve, entry[3]), done).end

    async def wait_async(self, min_index: int, timeout_s: float, target: Target = None) -> int:
        loop = asyncio.get_running_loop()
        entry = self.park(min_index, target, loop)
        if entry is None:
            return self.current(target)
        # the deadline resolves the future as a write would (cheaper than wait_for + shield,
        # which wrap it in two more futures and a task for each of thousands of watches)
        deadline = loop.call_later(max(0.0, timeout_s), _resolve, entry[3])
        try:
            await entry[3]
        finally:
            deadline.cancel()
            self.unpark(entry)
        return self.current(target)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _Watch:
    """One parked `Waiters.watch`: its entry, its deadline, and whether it is over (a resolved
    Future's callback may already be scheduled when `end` is called)."""

    __slots__ = ("waiters", "entry", "deadline", "done", "over")

    def __init__(self, waiters: Waiters, entry: Entry, deadline: asyncio.TimerHandle,
                 done: Callable[[int], None]) -> None:
        self.waiters, self.entry, self.deadline, self.done = waiters, entry, deadline, done
        self.over = False
        entry[3].add_done_callback(self._resolved)

    def _resolved(self, _fut: asyncio.Future) -> None:
        self.end(True)

    def end(self, answer: bool) -> None:
        if self.over:
            return
        self.over = True
        self.deadline.cancel()
        self.waiters.unpark(self.entry)
        if answer:
            self.done(max(self.waiters.current(self.entry[1]), 1))
