"""Node liveness: a node that misses its heartbeat TTL is marked down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DEFAULT_TTL = 10.0      # seconds a client has between heartbeats
FAILOVER_GRACE = 10.0   # extra time given to every node when the server (re)starts


class Heartbeats(threading.Thread):
    def __init__(self, on_expire: Callable[[str], None], ttl: float = DEFAULT_TTL) -> None:
        super().__init__(name="yurt-heartbeats", daemon=True)
        self.ttl = ttl
        self._on_expire = on_expire
        self._deadlines: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def reset(self, node_id: str, grace: float = 0.0) -> float:
        """A heartbeat arrived: the node has `ttl` seconds more. Returns the TTL to advertise."""
        with self._lock:
            self._deadlines[node_id] = time.monotonic() + self.ttl + grace
        return self.ttl

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._deadlines.pop(node_id, None)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            now = time.monotonic()
            with self._lock:
                expired = [n for n, d in self._deadlines.items() if d < now]
                for n in expired:
                    del self._deadlines[n]
            for node_id in expired:
                self._on_expire(node_id)
