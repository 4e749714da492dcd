"""Scheduler throughput on a simulated cluster (after Nomad's scheduler/benchmarks).

    .venv/bin/python bench/scheduler.py [--nodes 5000] [--jobs 100] [--count 100] [--spread]
                                        [--profile]

5,000 nodes in 2 datacenters, 25 racks (``meta.rack``), 32,000 MB and 4,000-8,000 MHz each.
100 service jobs of 100 allocations (500 MHz / 1,024 MB, one dynamic port), each constrained
to half of the racks with ``set_contains_any`` as Nomad's benchmark does. Each job is one
evaluation; its plan is applied to the in-memory state before the next one, as a plan applier
would. Prints placements per second and milliseconds per evaluation.

Sections are listed in ``SECTIONS``: each is a function (args) -> dict of figures: the pure
scheduler, then the server path (eval broker -> scheduler workers -> plan applier -> SQLite
store), in one run, with the ratio between them.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import sys
import time
from pathlib import Path
from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/memory_state.py

from yurt.jobspec import canonicalize
from yurt.scheduler import schedule
from tests.memory_state import MemoryState
from yurt.structs import (Constraint, DriverInfo, EphemeralDisk, Evaluation, Job,
                          NetworkResource, Node, NodeCpuResources, NodeDiskResources,
                          NodeMemoryResources, NodeResources, Port, Resources, Spread, Task,
                          TaskGroup)

NOW = 1_700_000_000 * 1_000_000_000
RACKS = 25


def build_nodes(n: int, seed: int = 1) -> list[Node]:
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        nodes.append(Node.model_construct(
            id=f"{i:08x}-0000-4000-8000-{i:012x}", secret_id="", name=f"node-{i}",
            datacenter=f"dc{1 + i % 2}", node_pool="default", node_class="", http_addr="",
            attributes={"kernel.name": "linux", "cpu.arch": "amd64",
                        "unique.network.ip-address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                        "driver.docker": "1"},
            meta={"rack": f"r{i % RACKS}"},
            drivers={"docker": DriverInfo(detected=True, healthy=True)},
            node_resources=NodeResources(
                cpu=NodeCpuResources(cpu_shares=4000 + 1000 * rng.randrange(5)),
                memory=NodeMemoryResources(memory_mb=32000),
                disk=NodeDiskResources(disk_mb=100_000)),
            reserved_resources=Node().reserved_resources,
            status="ready", status_description="", status_updated_at=0,
            scheduling_eligibility="eligible", drain=False, computed_class="",
            create_index=0, modify_index=0))
    return nodes


def build_job(i: int, count: int, spread: bool) -> Job:
    racks = ",".join(f"r{r}" for r in range(i % 2, RACKS, 2))     # half of the racks
    group = TaskGroup(
        name="web", count=count,
        tasks=[Task(name="app", driver="docker", config={"image": "nginx"},
                    resources=Resources(cpu=500, memory_mb=1024))],
        networks=[NetworkResource(dynamic_ports=[Port(label="http", to=8080)])],
        ephemeral_disk=EphemeralDisk(size_mb=300),
        spreads=[Spread(attribute="${meta.rack}")] if spread else None)
    return canonicalize(Job(
        id=f"job-{i}", type="service", datacenters=["dc1", "dc2"], task_groups=[group],
        constraints=[Constraint(l_target="${meta.rack}", operand="set_contains_any", r_target=racks)]))


def pure_scheduler(args) -> dict[str, float]:
    """Evaluations straight through ``schedule()`` on MemoryState, plans applied in memory."""
    state = MemoryState(nodes=build_nodes(args.nodes))
    jobs = [build_job(i, args.count, args.spread) for i in range(args.jobs)]
    # Long-lived state (5,000 nodes) out of the cyclic GC's way, as a server holding its
    # state would do after loading it; otherwise full collections rescan every node.
    gc.collect()
    gc.freeze()
    placements = failed = 0
    sched_time = apply_time = sched_cpu = 0.0
    profiler = cProfile.Profile() if args.profile else None
    for i, job in enumerate(jobs):
        state.upsert_job(job)
        ev = Evaluation(id=f"eval-{i:06d}", namespace="default", job_id=job.id, type=job.type,
                        priority=job.priority, triggered_by="job-register")
        c0, t0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        res = schedule(ev, state, seed=i, now_ns=NOW)
        if profiler:
            profiler.disable()
        t1 = time.perf_counter()
        sched_cpu += time.process_time() - c0
        state.apply_plan(res.plan)
        apply_time += time.perf_counter() - t1
        sched_time += t1 - t0
        placements += sum(len(v) for v in res.plan.node_allocation.values())
        failed += sum(res.queued.values())
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(25)
    return {"evals": len(jobs), "placements": placements, "unplaced": failed,
            "seconds in schedule()": round(sched_time, 3),
            "seconds applying plans": round(apply_time, 3),
            "placements/s": round(placements / sched_time),
            "ms per eval": round(1000 * sched_time / len(jobs), 2),
            "placements/s (CPU time)": round(placements / sched_cpu)}


def server_path(args) -> dict[str, float]:
    """The whole control plane minus HTTP: register -> eval broker -> workers -> plan applier ->
    SQLite store, timed from the first registration until every allocation is stored."""
    from yurt.server.server import Server
    from yurt.state import StateStore

    store = StateStore.temporary()
    try:
        for node in build_nodes(args.nodes):
            store.upsert_node(node)
        jobs = [build_job(i, args.count, args.spread) for i in range(args.jobs)]
        server = Server(store, num_workers=args.workers, heartbeat_ttl=3600.0)
        gc.collect()
        gc.freeze()
        server.start()
        want = args.jobs * args.count
        t0 = time.perf_counter()
        for job in jobs:
            server.register_job(job)
        while True:
            stored = sum(len(store.allocs_by_job("default", j.id)) for j in jobs)
            if stored >= want or (server.broker.idle() and time.perf_counter() - t0 > 1):
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        server.stop()
        blocked = sum(1 for e in store.evals() if e.status == "blocked")
        return {"evals": len(jobs), "placements": stored, "blocked evals": blocked,
                "seconds to all stored": round(elapsed, 3), "placements/s": round(stored / elapsed),
                "ms per eval": round(1000 * elapsed / len(jobs), 2)}
    finally:
        store.close()


SECTIONS: list[tuple[str, Callable[[argparse.Namespace], dict[str, float]]]] = [
    ("pure scheduler (schedule() on MemoryState)", pure_scheduler),
    ("server path (register -> broker -> workers -> plan applier -> SQLite)", server_path),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--spread", action="store_true", help="add spread on ${meta.rack} to every job")
    p.add_argument("--profile", action="store_true", help="cProfile the schedule() calls")
    p.add_argument("--sort", default="tottime", help="profile sort key (tottime, cumulative)")
    p.add_argument("--workers", type=int, default=2, help="scheduler workers in the server path")
    p.add_argument("--only", choices=["pure", "server"], help="run one section")
    args = p.parse_args(argv)
    print(f"cluster: {args.nodes} nodes, 2 DCs, {RACKS} racks; {args.jobs} jobs x {args.count} allocs"
          f"{' with spread' if args.spread else ''}")
    results = {}
    for title, section in SECTIONS:
        if args.only and not title.startswith(args.only):
            continue
        print(f"\n== {title}", flush=True)
        results[section.__name__] = figures = section(args)
        for key, value in figures.items():
            print(f"  {key:<24} {value}", flush=True)
    if len(results) == 2:
        ratio = results["server_path"]["placements/s"] / results["pure_scheduler"]["placements/s"]
        print(f"\nserver path / pure scheduler: {ratio:.2f}x  "
              f"(goal: >= 1,000 placements/s through the server path; Nomad C2M ~1,500/s on 3 servers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
