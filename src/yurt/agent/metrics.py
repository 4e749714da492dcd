"""The agent's metrics registry, what `/v1/metrics` renders: the server's (`server/metrics.py`)
when this agent is a server, the client's running tasks (CPU, memory) when it is a client, the
leaf certificates this agent holds for its sidecars (seconds to expiry), and the time the
process spent in Python's cyclic garbage collector. One registry per agent, so agents sharing a
process (the tests) never mix their figures (the collector's time is the process's)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

TASK_LABELS = ["alloc_id", "namespace", "job", "task_group", "task"]   # Nomad's allocation labels


def build_registry(agent: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if agent.server is not None:
        registry.register(_Delegate(agent.server.metrics.registry))
    if agent.client is not None:
        from yurt.client.task_metrics import TaskMeter
        registry.register(_Tasks(TaskMeter(agent.client)))
    registry.register(_LeafCerts(agent.leaf_certs))
    registry.register(_GCPauses(gc_pauses()))
    return registry


class _Delegate(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class _Tasks(Collector):
    def __init__(self, meter: Any) -> None:
        self.meter = meter

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("yurt_client_task_cpu_seconds", "CPU time a running task used, by mode "
                                  "(user, system): its cgroup (exec) or its process (raw_exec, connect-proxy).",
                                  labels=[*TASK_LABELS, "mode"])
        ratio = GaugeMetricFamily("yurt_client_task_cpu_usage_ratio", "CPU seconds per second a running task "
                                  "used since the previous scrape (1 = one core).", labels=TASK_LABELS)
        mem = GaugeMetricFamily("yurt_client_task_memory_bytes", "Resident memory of a running task "
                                "(its cgroup's anonymous memory for exec, the process's RSS otherwise).",
                                labels=TASK_LABELS)
        for u in self.meter.usage():
            labels = [u.alloc_id, u.namespace, u.job, u.group, u.task]
            cpu.add_metric([*labels, "user"], u.cpu_user_seconds)
            cpu.add_metric([*labels, "system"], u.cpu_system_seconds)
            if u.cpu_ratio is not None:
                ratio.add_metric(labels, u.cpu_ratio)
            mem.add_metric(labels, u.memory_bytes)
        yield cpu
        yield ratio
        yield mem


class _LeafCerts(Collector):
    def __init__(self, leaf_certs: Any) -> None:
        self.leaf_certs = leaf_certs

    def collect(self) -> Iterator[Metric]:
        leaf = GaugeMetricFamily("yurt_ca_leaf_expiry_seconds", "Seconds until the leaf certificate this "
                                 "agent holds for a service (its sidecars' identity) expires.", labels=["service"])
        now = time.time()
        for service, expires in sorted(self.leaf_certs.expiries().items()):
            leaf.add_metric([service], expires - now)
        yield leaf


class GCPauses:
    """The time this process spent in the cyclic garbage collector, and its collections, per
    generation (a `gc.callbacks` timer; one per process). Every thread stops while it runs: on a
    server with thousands of nodes it is a share of the CPU worth watching (bench/scheduler.py)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        # the collector runs with the GIL held, one collection at a time
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info.get("generation", 2)
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1


_pauses: GCPauses | None = None
_pauses_lock = threading.Lock()


def gc_pauses() -> GCPauses:
    global _pauses
    with _pauses_lock:
        if _pauses is None:
            _pauses = GCPauses()
        return _pauses


class _GCPauses(Collector):
    def __init__(self, pauses: GCPauses) -> None:
        self.pauses = pauses

    def collect(self) -> Iterator[Metric]:
        seconds = CounterMetricFamily("yurt_gc_pause_seconds", "Seconds this agent's process spent in Python's "
                                      "cyclic garbage collector (every thread waits meanwhile), by generation.",
                                      labels=["generation"])
        count = CounterMetricFamily("yurt_gc_collections", "Collections of Python's cyclic garbage collector in "
                                    "this agent's process, by generation.", labels=["generation"])
        for g in range(3):
            seconds.add_metric([str(g)], self.pauses.seconds[g])
            count.add_metric([str(g)], self.pauses.collections[g])
        yield seconds
        yield count
