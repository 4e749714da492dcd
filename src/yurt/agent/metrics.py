"""The agent's metrics registry, what `/v1/metrics` renders: the server's (`server/metrics.py`)
when this agent is a server, the client's running tasks (CPU, memory) when it is a client, and
the leaf certificates this agent holds for its sidecars (seconds to expiry). One registry per
agent, so agents sharing a process (the tests) never mix their figures."""

from __future__ import annotations

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
