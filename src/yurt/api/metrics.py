"""/v1/metrics: this agent's metrics (the registry the agent assembles, `agent/metrics.py`).

`?format=prometheus` answers Prometheus' text format (what a scrape job reads); without it,
Nomad's JSON shape: {"Timestamp", "Gauges": [{"Name", "Value", "Labels"}], "Counters": [{"Name",
"Count", "Sum", "Labels"}], "Samples": [{"Name", "Count", "Sum", "Mean", "Labels"}]}, histograms
going to Samples. As in Nomad, no ACL token is needed (a scraper has none); it is answered by the
agent asked, never forwarded: each agent reports its own work and its own tasks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput

from .common import reply

router = APIRouter()
# The classic text format (0.0.4), which every Prometheus reads; the names need no escaping.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/v1/metrics")
async def metrics(request: Request):
    fmt = request.query_params.get("format", "")
    registry: CollectorRegistry = request.app.state.agent.metrics
    if fmt == "prometheus":
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=TEXT_FORMAT)
    if fmt not in ("", "json"):
        raise InvalidInput(f'unknown metrics format "{fmt}": use ?format=prometheus for Prometheus\' text '
                           "format, or leave it out for JSON")
    return reply(await run_in_threadpool(as_json, registry))


def as_json(registry: CollectorRegistry) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    gauges: list[dict[str, Any]] = []
    counters: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for family in registry.collect():
        if family.type == "histogram":
            parts: dict[tuple, dict[str, float]] = {}
            for s in family.samples:
                labels = {k: v for k, v in s.labels.items() if k != "le"}
                key = tuple(sorted(labels.items()))
                entry = parts.setdefault(key, {})
                if s.name.endswith("_count"):
                    entry["Count"] = s.value
                elif s.name.endswith("_sum"):
                    entry["Sum"] = s.value
            for key, entry in parts.items():
                count, total = entry.get("Count", 0.0), entry.get("Sum", 0.0)
                samples.append({"Name": family.name, "Count": int(count), "Sum": total,
                                "Mean": total / count if count else 0.0, "Labels": dict(key)})
            continue
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            if family.type == "counter":
                counters.append({"Name": s.name, "Count": s.value, "Sum": s.value, "Labels": dict(s.labels)})
            else:
                gauges.append({"Name": s.name, "Value": s.value, "Labels": dict(s.labels)})
    return {"Timestamp": now.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"), "Gauges": gauges, "Counters": counters,
            "Samples": samples, "Points": []}
