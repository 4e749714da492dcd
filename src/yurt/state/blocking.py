"""Blocking queries: wait until an index passes a value, from threads or from asyncio.

The store calls `notify()` with its memory lock held after every committed write. Thread
waiters sleep on a Condition sharing that lock; asyncio waiters register a Future that the
writing thread resolves through `loop.call_soon_threadsafe`, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable

Target = str | Iterable[str] | None


class Waiters:
    def __init__(self, lock: threading.Lock, current: Callable[[Target], int]) -> None:
        self._cond = threading.Condition(lock)
        self._lock = lock
        self._current = current  # called with the lock held
        self._async: list[tuple[int, Target, asyncio.AbstractEventLoop, asyncio.Future]] = []

    def notify(self) -> None:
        """Wake waiters whose index moved; call with the lock held."""
        self._cond.notify_all()
        if not self._async:
            return
        keep = []
        for w in self._async:
            min_index, target, loop, fut = w
            if self._current(target) > min_index:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            else:
                keep.append(w)
        self._async = keep

    def wait(self, min_index: int, timeout_s: float, target: Target = None) -> int:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while True:
                now = self._current(target)
                remaining = deadline - time.monotonic()
                if now > min_index or remaining <= 0:
                    return now
                self._cond.wait(remaining)

    async def wait_async(self, min_index: int, timeout_s: float, target: Target = None) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        entry = (min_index, target, loop, fut)
        with self._lock:
            if self._current(target) > min_index:
                return self._current(target)
            self._async.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, timeout_s))
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if entry in self._async:
                    self._async.remove(entry)
        with self._lock:
            return self._current(target)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
