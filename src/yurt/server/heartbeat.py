"""Node liveness: a node that misses its heartbeat TTL is marked down. The same deadline
tracker expires Consul TTL checks that were not updated within their TTL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DEFAULT_TTL = 10.0      # seconds a client has between heartbeats (at least: see MAX_PER_SECOND)
MAX_PER_SECOND = 50.0   # Nomad's max_heartbeats_per_second: the TTL grows with the fleet to hold this
FAILOVER_GRACE = 10.0   # extra time given to every node when the server (re)starts


class Heartbeats(threading.Thread):
    def __init__(self, on_expire: Callable[[str], None], ttl: float = DEFAULT_TTL,
                 max_per_second: float = MAX_PER_SECOND, every: float = 0.5, name: str = "yurt-heartbeats") -> None:
        super().__init__(name=name, daemon=True)
        self.ttl = ttl
        self.max_per_second = max_per_second
        self.every = every
        self._on_expire = on_expire
        self._deadlines: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def reset(self, node_id: str, grace: float = 0.0, ttl: float | None = None) -> float:
        """A heartbeat arrived: the node has the TTL more. Returns the TTL to advertise: the
        minimum TTL, or (as Nomad's rate-scaled interval) longer when the fleet is larger, so
        the server answers at most `max_per_second` heartbeats a second whatever its size. A
        client heartbeats at half its TTL: the TTL is 2 x nodes / max_per_second (5,000 nodes
        at 50/s: 200 s, a heartbeat from each every 100 s). With `ttl` (the TTL checks' tracker)
        that TTL exactly."""
        with self._lock:
            if ttl is None:
                ttl = max(self.ttl, 2 * len(self._deadlines) / self.max_per_second)
            self._deadlines[node_id] = time.monotonic() + ttl + grace
        return ttl

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._deadlines.pop(node_id, None)

    def holds(self, node_id: str) -> bool:
        """Whether `node_id` has a deadline that has not run out yet."""
        with self._lock:
            return node_id in self._deadlines

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            now = time.monotonic()
            with self._lock:
                expired = [n for n, d in self._deadlines.items() if d < now]
                for n in expired:
                    del self._deadlines[n]
            for node_id in expired:
                self._on_expire(node_id)
