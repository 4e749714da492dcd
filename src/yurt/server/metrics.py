"""The server's metrics (`/v1/metrics`): counters and histograms the scheduler workers, the plan
applier, heartbeats and the CA move as they work, and gauges read from live state at scrape time
(the eval broker's depth, allocations by client status, nodes by status, the CA root's expiry).

One `CollectorRegistry` per server, never prometheus_client's global one: tests run several
agents in one process, and each must count only its own work. The API renders the registry
(`api/metrics.py`); the agent adds its own collectors to it (the client's tasks, leaf certs).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .server import Server

# No `<name>_created` series next to each counter and histogram: they double the output for a
# figure (the process's start) nobody scrapes Yurt for. prometheus_client's switch is per process.
disable_created_metrics()

# Always reported, at 0 when no allocation has them (a missing series reads as "no data").
CLIENT_STATUSES = ("pending", "running", "complete", "failed", "lost")
# Placement (one schedule() call) and plan-apply times: from a millisecond to a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.evaluations = Counter(
            "yurt_scheduler_evaluations", "Evaluations processed by the scheduler workers, by job type "
            "and outcome (complete, blocked, failed, nacked).", ["type", "outcome"], registry=r)
        self.placement_seconds = Histogram(
            "yurt_scheduler_placement_seconds", "Time to compute one plan (one schedule() call), by job type.",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.placement_failures = Counter(
            "yurt_scheduler_placement_failures", "Allocations the scheduler could not place (no node fits), "
            "by job type.", ["type"], registry=r)
        self.plan_apply_seconds = Histogram(
            "yurt_plan_apply_seconds", "Time to check and commit one plan (the plan applier).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.plan_rejected_nodes = Counter(
            "yurt_plan_rejected_nodes", "Nodes of a plan the applier rejected (they no longer fit: re-planned).",
            registry=r)
        self.heartbeats = Counter(
            "yurt_heartbeats_received", "Client heartbeats (and registrations) received.", registry=r)
        self.heartbeats_missed = Counter(
            "yurt_heartbeats_missed", "Nodes that missed their heartbeat TTL and were marked down.", registry=r)
        self.leaf_issued = Counter(
            "yurt_ca_leaf_certificates_issued", "Leaf certificates the Connect CA signed, by service.",
            ["service"], registry=r)

    def watch(self, server: Server) -> None:
        """Add the gauges read from `server`'s live state at each scrape."""
        self.registry.register(_LiveState(server))

    def evaluation(self, jtype: str, outcome: str) -> None:
        self.evaluations.labels(jtype or "service", outcome).inc()


class _LiveState(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        broker = GaugeMetricFamily("yurt_broker_evaluations", "Evaluations in the eval broker, by state "
                                   "(ready, unacked: being scheduled, blocked: waiting for capacity, "
                                   "waiting: behind their job's evaluation in flight, or delayed).",
                                   labels=["state"])
        if server.is_leader():
            stats = server.broker.stats()
            for state, key in (("ready", "TotalReady"), ("unacked", "TotalUnacked"),
                               ("blocked", "TotalBlocked"), ("waiting", "TotalWaiting")):
                broker.add_metric([state], stats.get(key, 0))
        yield broker
        allocs = GaugeMetricFamily("yurt_allocations", "Allocations in the state store, by client status.",
                                   labels=["client_status"])
        by_status = Tally(a.client_status or "pending" for a in server.reads.allocs())
        for status in sorted(set(CLIENT_STATUSES) | set(by_status)):
            allocs.add_metric([status], by_status.get(status, 0))
        yield allocs
        nodes = GaugeMetricFamily("yurt_nodes", "Client nodes, by status.", labels=["status"])
        for status, n in sorted(Tally(node.status for node in server.reads.nodes()).items()):
            nodes.add_metric([status], n)
        yield nodes
        root = GaugeMetricFamily("yurt_ca_root_expiry_seconds", "Seconds until the Connect CA's active root "
                                 "certificate expires.")
        ca = server.store.ca_state()
        active = ca.active_root() if ca is not None else None
        if active is not None and active.not_after:
            root.add_metric([], _epoch(active.not_after) - time.time())
        yield root


def _epoch(rfc3339: str) -> float:
    return dt.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
