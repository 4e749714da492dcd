"""What each running task of this node uses, for `/v1/metrics`: CPU seconds and memory, as its
driver measures them (`Driver.stats`: the task's cgroup for `exec`, /proc for `raw_exec` and the
connect-proxy, the container's process for docker). Read at scrape time, nothing kept between
scrapes but the last CPU reading of each task (for the usage ratio since the previous scrape).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node_agent import NodeAgent

log = logging.getLogger("yurt.client.metrics")


@dataclass
class TaskUsage:
    alloc_id: str
    namespace: str
    job: str
    group: str
    task: str
    cpu_user_seconds: float
    cpu_system_seconds: float
    memory_bytes: int
    cpu_ratio: float | None  # CPU seconds per second since the previous scrape (None on the first)


class TaskMeter:
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self._last: dict[tuple[str, str], tuple[float, float]] = {}   # (alloc, task) -> (when, cpu s)
        self._lock = threading.Lock()

    def usage(self) -> list[TaskUsage]:
        out: list[TaskUsage] = []
        seen: set[tuple[str, str]] = set()
        for runner in list(self.agent.runners.values()):
            alloc = runner.alloc
            for name, tr in list(runner.task_runners.items()):
                handle = tr.handle
                if handle is None or not tr.is_running():
                    continue
                try:
                    st = tr.driver.stats(handle)
                except Exception as e:  # noqa: BLE001 - a task that just went away has no figures
                    log.debug("stats of %s/%s: %s", alloc.id[:8], name, e)
                    continue
                key = (alloc.id, name)
                seen.add(key)
                now, cpu = time.monotonic(), st.cpu_user_seconds + st.cpu_system_seconds
                with self._lock:
                    last = self._last.get(key)
                    self._last[key] = (now, cpu)
                ratio = (max(cpu - last[1], 0.0) / (now - last[0])) if last and now > last[0] else None
                out.append(TaskUsage(alloc.id, alloc.namespace or "default", alloc.job_id, alloc.task_group, name,
                                     st.cpu_user_seconds,
                                     st.cpu_system_seconds, st.rss_bytes, ratio))
        with self._lock:
            for key in [k for k in self._last if k not in seen]:
                del self._last[key]
        return out
