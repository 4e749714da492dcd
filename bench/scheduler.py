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
store), in one run, with the ratio between them. The server path also reports what each stored
allocation holds alone in objects the cyclic GC walks (how many, their bytes); with
``--baseline-src`` it runs again in a process importing that src tree, side by side.

``http``: the whole path as a user's ``job run`` takes it, over HTTP, against a real server agent
process (``yurt agent -config``, server only): on SQLite, then on a 3-member loopback etcd
(tests/etcd_cluster.py), side by side with the ratio etcd / SQLite (``--http-stores sqlite``:
SQLite alone). ``--http-nodes`` nodes (5,000) register through the client agents' route (each
with its own SecretID), heartbeat at half the TTL the server answers and keep a blocking query on
their allocations open for the whole run, as the node agent does (bench/loadgen.py:
``--loadgen-procs`` asyncio processes play them). ``--http-clients`` threads then submit
``--http-jobs`` jobs of ``--http-count`` allocations (``PUT /v1/jobs``, the body ``job run``
sends) as fast as the server takes them. A job is placed when an evaluation of it is complete and
``/v1/job/<id>/allocations`` holds all its allocations (the bench follows evaluations with one
blocking query). Prints placements/s from the first registration until every allocation is
stored, and p50/p99 of each job's "register -> all placed" (under that full load, so queueing
included). With ``pure`` in the same run (``--only pure,http``) the ratio HTTP / pure scheduler
is printed.

``fleet`` (``--only fleet``): one server agent on SQLite holding ``--fleet-nodes`` nodes, played by
bench/loadgen.py as the http section's: RSS per node, server CPU while only heartbeats and watch
renewals flow, and the time from one job registration (an allocation on every node) until the
last node's watch saw its allocation.

``failover``: three server agents on one etcd; the leader (``/v1/status/leader``) is SIGKILLed,
and the time until a surviving server names a new leader and accepts a job registration is
printed; then the same for a graceful stop (SIGTERM: the leader revokes its lease).
``--server-profile DIR`` records the server agent processes of ``http`` with py-spy (if installed)
into DIR/sqlite, DIR/etcd (raw stacks; the top functions are printed).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import pstats
import queue
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

# YURT_BENCH_SRC: another src tree (the server section's --baseline-src run, in a process of its own)
sys.path.insert(0, os.environ.get("YURT_BENCH_SRC") or str(Path(__file__).resolve().parents[1] / "src"))
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
        nodes[-1].computed_class = nodes[-1].compute_class()   # as the store sets it on registration
    return nodes


def build_job(i: int, count: int, spread: bool, cpu: int = 500, memory_mb: int = 1024) -> Job:
    racks = ",".join(f"r{r}" for r in range(i % 2, RACKS, 2))     # half of the racks
    group = TaskGroup(
        name="web", count=count,
        tasks=[Task(name="app", driver="docker", config={"image": "nginx"},
                    resources=Resources(cpu=cpu, memory_mb=memory_mb))],
        networks=[NetworkResource(dynamic_ports=[Port(label="http", to=8080)])],
        ephemeral_disk=EphemeralDisk(size_mb=300),
        spreads=[Spread(attribute="${meta.rack}")] if spread else None)
    return canonicalize(Job(
        id=f"job-{i}", type="service", datacenters=["dc1", "dc2"], task_groups=[group],
        constraints=[Constraint(l_target="${meta.rack}", operand="set_contains_any", r_target=racks)]))


def _server_gc() -> None:
    """What a server agent does with the collector once its state is loaded."""
    try:
        from yurt.agent.agent import GC_THRESHOLDS
    except ImportError:   # a --baseline-src tree from before it had them
        GC_THRESHOLDS = (50_000, 20, 100)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def pure_scheduler(args) -> dict[str, float]:
    """Evaluations straight through ``schedule()`` on MemoryState, plans applied in memory."""
    state = MemoryState(nodes=build_nodes(args.nodes))
    jobs = [build_job(i, args.count, args.spread) for i in range(args.jobs)]
    # Long-lived state (5,000 nodes) out of the cyclic GC's way and the collector's thresholds
    # a server agent sets (yurt.agent.agent._server_gc), as a server holding its state does
    # after loading it; otherwise full collections rescan every node.
    _server_gc()
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


def _server_path(args) -> dict[str, float]:
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
        _server_gc()
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
        objects, size = _alloc_objects([a for j in jobs for a in store.allocs_by_job("default", j.id)])
        return {"evals": len(jobs), "placements": stored, "blocked evals": blocked,
                "seconds to all stored": round(elapsed, 3), "placements/s": round(stored / elapsed),
                "ms per eval": round(1000 * elapsed / len(jobs), 2),
                # what the cyclic collector walks for each allocation the store holds
                "GC-tracked objects a stored allocation": round(objects, 1),
                "their bytes a stored allocation": round(size)}
    finally:
        store.close()


def _alloc_objects(allocs: list[Any]) -> tuple[float, float]:
    """The objects the cyclic GC tracks that each allocation holds alone (not shared with another
    allocation: its job, a template's parts, classes), on average: how many, and their bytes."""
    owners: dict[int, int] = {}
    held: list[list[Any]] = []
    for a in allocs:
        seen: set[int] = set()
        mine: list[Any] = []
        stack: list[Any] = [a]
        while stack:
            o = stack.pop()
            if id(o) in seen or not gc.is_tracked(o) or isinstance(o, type) or o is a.job:
                continue
            seen.add(id(o))
            mine.append(o)
            stack.extend(gc.get_referents(o))
        held.append(mine)
        for o in mine:
            owners[id(o)] = owners.get(id(o), 0) + 1
    alone = [[o for o in mine if owners[id(o)] == 1] for mine in held]
    n = max(len(allocs), 1)
    return sum(map(len, alone)) / n, sum(sys.getsizeof(o) for mine in alone for o in mine) / n


def server_path(args) -> dict[str, Any]:
    """The server section, and with --baseline-src the same in a process running that src tree,
    side by side."""
    now = _server_path(args)
    if not args.baseline_src:
        return now
    out = Path(args._root) / "server-baseline.json"
    cmd = [sys.executable, __file__, "--only", "server", "--nodes", str(args.nodes), "--jobs", str(args.jobs),
           "--count", str(args.count), "--workers", str(args.workers), "--figures-json", str(out)]
    env = {**os.environ, "YURT_BENCH_SRC": str(Path(args.baseline_src).resolve())}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    before = json.loads(out.read_text())["server_path"]
    return {k: {"now": v, "baseline": before.get(k, math.nan),
                "now/baseline": round(v / before[k], 2) if before.get(k) else ""}
            for k, v in now.items()}


# --- over HTTP, against real server agent processes ------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
HTTP_CPU, HTTP_MEMORY_MB = 100, 256     # small allocations: --http-nodes nodes hold every job
FOLLOW_EVERY = 0.05                     # seconds between two reads of the evaluations (http)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


class ServerAgent:
    """`yurt agent -config FILE -data-dir DIR`, a server only (no client), on a free loopback port;
    on SQLite in its data dir, or on etcd (`server { store { etcd } }`). Its log is a file."""

    def __init__(self, root: Path, name: str, *, workers: int, etcd: list[str] | None = None,
                 prefix: str = "/yurt/", lease_ttl: int | None = None, src: Path | None = None) -> None:
        import httpx
        self.name = name
        self.src = src or ROOT / "src"
        self.port = _free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.addr}"
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "agent.log"
        store = ""
        if etcd is not None:
            ttl = f'\n      lease_ttl = "{lease_ttl}s"' if lease_ttl else ""
            store = ("\n  store {\n    etcd {\n      endpoints = [" + ", ".join(f'"{e}"' for e in etcd) +
                     f']\n      prefix = "{prefix}"{ttl}\n    }}\n  }}')
        self.config = self.dir / "agent.hcl"
        self.config.write_text(f'name = "{name}"\nbind_addr = "127.0.0.1"\nlog_level = "WARN"\n'
                               f"ports {{\n  http = {self.port}\n}}\n"
                               f"server {{\n  enabled = true\n  num_schedulers = {workers}{store}\n}}\n"
                               "client {\n  enabled = false\n}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30, trust_env=False)

    def start(self) -> ServerAgent:
        env = dict(os.environ, PYTHONPATH=str(self.src))
        with open(self.log_path, "ab") as log:
            # cwd: the worktree, never the temporary directory the bench removes
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "yurt.cli.main", "agent", "-config", str(self.config),
                 "-data-dir", str(self.dir / "data")], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def leader(self, timeout: float = 2.0) -> str:
        """What this server says about the leader ("host:port", "" while none leads)."""
        return str(self.http.get("/v1/status/leader", timeout=timeout).json())

    def wait_ready(self, timeout: float = 60.0, *, leader: bool = False) -> None:
        """Until it answers (and, with `leader`, names a leader); RuntimeError with its log otherwise."""
        import httpx
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"server agent {self.name} exited; the end of {self.log_path}:\n{self.tail()}")
            try:
                if self.http.get("/v1/agent/health", timeout=2).status_code == 200 and \
                        (not leader or self.leader()):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server agent {self.name} not ready within {timeout:.0f} s; the end of "
                                   f"{self.log_path}:\n{self.tail()}")
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the agent stops in order; on etcd it revokes its lease), SIGKILL if it lingers."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.http.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Nodes:
    """Client nodes as the client agents are to the server, played by `parts` load generator
    processes (bench/loadgen.py, asyncio): each node registers through
    `PUT /v1/internal/node/register` with its own SecretID, heartbeats at half the TTL the server
    answers and keeps a blocking query on its allocations open, as the node agent does."""

    def __init__(self, url: str, count: int, parts: int = 2, max_seconds: float = 900.0) -> None:
        self.url, self.count, self.parts, self.max_seconds = url, count, max(1, min(parts, count)), max_seconds
        self.procs: list[subprocess.Popen[str]] = []
        self.ttl = 10.0
        self.sent = self.failed = 0
        self.final: list[dict[str, Any]] = []

    def register(self) -> None:
        """Start the generators; return when every node is registered (RuntimeError otherwise)."""
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        for k in range(self.parts):
            self.procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "loadgen.py"), self.url, "--nodes", str(self.count),
                 "--part", str(k), "--parts", str(self.parts), "--max-seconds", str(self.max_seconds)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True))
        failed = 0
        for proc in self.procs:
            first = self._line(proc, 600)
            if "error" in first:
                raise RuntimeError(f"node registration failed: {first['error']}")
            failed += first["register failed"]
            self.ttl = first["ttl"]
        if failed:
            raise RuntimeError(f"{failed} node registrations failed")

    @staticmethod
    def _line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"the load generator (pid {proc.pid}) answered nothing within {timeout:.0f} s")
        return dict(json.loads(result[0]))

    def ask(self, command: str) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            out.append(self._line(proc, 60))
        return out

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in self.ask("stats"):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        return total

    def seen(self) -> dict[str, tuple[int, float]]:
        """Per job: allocations the nodes saw, and when the last of them first saw one (monotonic)."""
        total: dict[str, tuple[int, float]] = {}
        for part in self.ask("seen"):
            for job, (n, last) in part.items():
                m, t = total.get(job, (0, 0.0))
                total[job] = (m + n, max(t, last))
        return total

    def start_heartbeats(self) -> None:
        """The generators heartbeat from their registration on (kept for the callers' order)."""

    def stop(self) -> None:
        if not self.procs:
            return
        try:
            self.final = self.ask("stop")
        except (RuntimeError, OSError, ValueError):
            self.final = []
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self.sent = sum(f.get("heartbeats", 0) for f in self.final)
        self.failed = sum(f.get("heartbeats failed", 0) for f in self.final)
        self.procs = []


def _submit_and_wait(url: str, jobs: list[Job], count: int, clients: int,
                     timeout: float) -> dict[str, Any]:
    """`clients` threads register the jobs (as `job run` sends them) as fast as the server takes
    them; one thread follows the evaluations (a blocking query) and, when a job's evaluation is
    complete, reads its allocations until all `count` are stored. Returns the timings."""
    import httpx
    docs: queue.Queue[tuple[str, bytes]] = queue.Queue()
    for job in jobs:
        docs.put((job.id, json.dumps(job.to_document()).encode()))
    started: dict[str, float] = {}
    register_s: list[float] = []
    placed_at: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    submitted = threading.Event()

    def submit() -> None:
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as c:
            while True:
                try:
                    job_id, body = docs.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                with lock:
                    started[job_id] = t0
                r = c.put("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
                with lock:
                    register_s.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{job_id}: HTTP {r.status_code}: {r.text[:300]}")

    def follow() -> None:
        want = {j.id for j in jobs}
        evaluated: set[str] = set()
        index = 0
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            while len(placed_at) < len(want) and time.monotonic() < deadline and not errors:
                r = c.get("/v1/evaluations", params={"index": index, "wait": "5s"} if index else None)
                index = int(r.headers.get("X-Nomad-Index", index))
                for ev in r.json():
                    if ev["JobID"] in want and ev["Status"] == "complete":
                        evaluated.add(ev["JobID"])
                for job_id in sorted(evaluated - placed_at.keys()):
                    allocs = c.get(f"/v1/job/{job_id}/allocations").json()
                    if sum(1 for a in allocs if a["DesiredStatus"] == "run") >= count:
                        placed_at[job_id] = time.perf_counter()
                # at most FOLLOW_EVERY between reads of the whole evaluation list: changes coalesce
                # (the list grows with the jobs; answering it at every change costs the server
                # more than what is measured). Adds at most that much to each job's time.
                time.sleep(FOLLOW_EVERY)

    submitters = [threading.Thread(target=submit, name=f"submit-{k}") for k in range(clients)]
    follower = threading.Thread(target=follow, name="follow")
    follower.start()
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    submitted.set()
    follower.join()
    if errors:
        raise RuntimeError(f"{len(errors)} job registrations failed; the first: {errors[0]}")
    first = min(started.values())
    latencies = [placed_at[j] - started[j] for j in placed_at]
    last = max(placed_at.values()) if placed_at else time.perf_counter()
    return {"jobs placed": len(placed_at), "jobs": len(jobs), "seconds": last - first,
            "latencies": latencies, "register_s": register_s}


def _http_run(root: Path, args, cluster, src: Path | None = None) -> dict[str, float]:
    etcd = cluster.endpoints if cluster is not None else None
    label = ("etcd" if etcd is not None else "sqlite") + ("-baseline" if src else "")
    members = [cluster.pid(i) for i in range(len(cluster.procs))] if cluster is not None else []
    # each run its own key prefix: a fresh state on the same etcd
    args._runs += 1   # a data dir of its own
    server = ServerAgent(root, f"http-{label}-{args._runs}", workers=args.workers, etcd=etcd,
                         prefix=f"/bench-{label}/", src=src).start()
    nodes = Nodes(server.url, args.http_nodes, parts=args.loadgen_procs)
    spy = None
    try:
        server.wait_ready(leader=etcd is not None)
        t0 = time.perf_counter()
        nodes.register()
        register_nodes_s = time.perf_counter() - t0
        nodes.start_heartbeats()
        jobs = [build_job(i, args.http_count, False, HTTP_CPU, HTTP_MEMORY_MB) for i in range(args.http_jobs)]
        if args.server_profile and src is None:
            spy = _start_py_spy(server.pid, Path(args.server_profile) / label)
        gen_pids = [p.pid for p in nodes.procs]
        cpu0, etcd0, own0 = _cpu_seconds(server.pid), sum(map(_cpu_seconds, members)), time.process_time()
        gen0 = sum(map(_cpu_seconds, gen_pids))
        gc0 = _gc_pause_seconds(server)
        run = _submit_and_wait(server.url, jobs, args.http_count, args.http_clients, args.http_timeout)
        cpu = _cpu_seconds(server.pid) - cpu0
        gc_s = _gc_pause_seconds(server) - gc0
        etcd_cpu = sum(map(_cpu_seconds, members)) - etcd0
        own_cpu = time.process_time() - own0
        gen_cpu = sum(map(_cpu_seconds, gen_pids)) - gen0
        if spy is not None:
            _stop_py_spy(spy, Path(args.server_profile) / label)
        nodes.stop()
        down = sum(1 for n in server.http.get("/v1/nodes").json() if n["Status"] != "ready")
        placements = run["jobs placed"] * args.http_count
        lat = run["latencies"]
        return {"nodes registered in (s)": round(register_nodes_s, 2),
                "heartbeats sent": nodes.sent, "heartbeats failed": nodes.failed, "nodes not ready": down,
                "jobs placed": run["jobs placed"], "placements": placements,
                "seconds to all stored": round(run["seconds"], 3),
                "placements/s": round(placements / run["seconds"]) if run["seconds"] else 0,
                "register p50 ms": round(1000 * statistics.median(run["register_s"]), 1),
                "register->placed p50 ms": round(1000 * _percentile(lat, 0.5), 1),
                "register->placed p99 ms": round(1000 * _percentile(lat, 0.99), 1),
                "server CPU s": round(cpu, 2),
                "server CPU ms/placement": round(1000 * cpu / placements, 3) if placements else 0,
                # Python's cyclic collector in the server: every thread waits while it runs
                "server GC pauses s": round(gc_s, 2),
                "server GC share of CPU %": round(100 * gc_s / cpu, 1) if cpu else 0.0,
                "etcd members CPU s": round(etcd_cpu, 2), "bench (clients) CPU s": round(own_cpu, 2),
                "load generator CPU s": round(gen_cpu, 2),
                # every process of the run shares this machine's cores: the rate they allow at most
                "all processes CPU ms/placement": round(1000 * (cpu + etcd_cpu + own_cpu + gen_cpu) / placements, 3)
                if placements else 0,
                f"ceiling on {os.cpu_count()} cores (placements/s)":
                round(os.cpu_count() * placements / (cpu + etcd_cpu + own_cpu + gen_cpu)) if placements else 0}
    except Exception:
        print(f"  ({label} server log, the end:)\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        nodes.stop()
        if spy is not None and spy.poll() is None:
            spy.kill()
        server.stop()
        if cluster is not None:
            cluster.stop()


def _gc_pause_seconds(server: ServerAgent) -> float:
    """The server's seconds in Python's cyclic garbage collector so far (its
    `yurt_gc_pause_seconds` metric); NaN from a server without the metric (an earlier release)."""
    try:
        text = server.http.get("/v1/metrics", params={"format": "prometheus"}).text
    except Exception:   # noqa: BLE001 - a figure missing, not a failed run
        return math.nan
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("yurt_gc_pause_seconds_total{")]
    return sum(found) if found else math.nan


def _py_spy() -> str | None:
    return shutil.which("py-spy") or next((str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()),
                                          None)


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = _py_spy()
    if exe is None:
        print("  (--server-profile: py-spy is not installed: .venv/bin/python -m pip install py-spy)")
        return None
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([exe, "record", "--gil", "--nonblocking", "-p", str(pid), "-r", "400", "-f", "raw", "-o",
                             str(out / "server.txt")], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_py_spy(spy: subprocess.Popen[bytes], out: Path, top: int = 25) -> None:
    """Stop recording and print the functions with the most samples: own (the innermost frame)
    and inclusive (anywhere in the stack)."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        lines = (out / "server.txt").read_text(errors="replace").splitlines()
    except OSError:
        print("  (py-spy wrote no profile)")
        return
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] = own.get(frames[-1], 0) + int(n)
        for f in set(frames):
            incl[f] = incl.get(f, 0) + int(n)
    print(f"  py-spy: {total} samples of the {out.name} server process, the GIL holder's (raw stacks: "
          f"{out / 'server.txt'})")
    for title, table in (("own", own), ("inclusive", incl)):
        print(f"  top {top} by {title} samples:")
        for f, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * n / max(total, 1):5.1f}%  {f}")


def _etcd_cluster(args, name: str):
    """A fresh 3-member loopback etcd (each run its own: one run's history never slows the next);
    stopped by the caller, or by main at the end."""
    from tests.etcd_cluster import EtcdCluster
    cluster = EtcdCluster(Path(args._root) / name, members=3)
    args._etcds.append(cluster)
    cluster.wait_healthy(60)
    return cluster


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in runs[0]:
        m = statistics.median(r[k] for r in runs)
        out[k] = round(m) if all(isinstance(r[k], int) for r in runs) else round(m, 3)
    return out


def http_path(args) -> dict[str, dict[str, float]]:
    """The same load over HTTP on one server agent: SQLite, then a 3-member etcd."""
    root = Path(args._root)
    print(f"  {args.http_nodes} nodes heartbeating, {args.http_jobs} jobs x {args.http_count} allocs "
          f"({HTTP_CPU} MHz / {HTTP_MEMORY_MB} MB), {args.http_clients} clients", flush=True)
    runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "baseline": [], "etcd": []}
    etcd_missing = "--http-stores sqlite" if args.http_stores == "sqlite" else _etcd_missing()
    if etcd_missing:
        print(f"  (no etcd column: {etcd_missing})")
    for r in range(args.repeat):   # interleaved, so a slow moment of the machine hits every store
        runs["sqlite"].append(_http_run(root, args, None))
        if etcd_missing:
            if args.baseline_src:   # SQLite only: the baseline's server on SQLite beside it
                runs["baseline"].append(_http_run(root, args, None, Path(args.baseline_src)))
            continue
        if args.baseline_src:
            runs["baseline"].append(_http_run(root, args, _etcd_cluster(args, f"etcd-baseline-{r}"),
                                              Path(args.baseline_src)))
        runs["etcd"].append(_http_run(root, args, _etcd_cluster(args, f"etcd-http-{r}")))
    if etcd_missing:
        if args.repeat > 1 or runs["baseline"]:
            print("  (placements/s of every run: "
                  + "; ".join(f"{k} {[x['placements/s'] for x in v]}" for k, v in runs.items() if v) + ")")
        sqlite_only = _median(runs["sqlite"])
        if not runs["baseline"]:
            return {k: {"sqlite": v} for k, v in sqlite_only.items()}
        base_sqlite = _median(runs["baseline"])
        return {k: {"sqlite": v, "sqlite baseline": base_sqlite[k],
                    **({"sqlite/baseline": round(v / base_sqlite[k], 2)}
                       if k in ("placements/s", "server CPU ms/placement", "register->placed p50 ms",
                                "register->placed p99 ms", "seconds to all stored") and base_sqlite[k] else {})}
                for k, v in sqlite_only.items()}
    if args.repeat > 1:
        print(f"  (medians of {args.repeat} runs each; placements/s of every run: "
              + "; ".join(f"{k} {[x['placements/s'] for x in v]}" for k, v in runs.items() if v) + ")")
    sqlite, etcd = _median(runs["sqlite"]), _median(runs["etcd"])
    base = _median(runs["baseline"]) if runs["baseline"] else None
    out: dict[str, dict[str, float]] = {}
    ratios = ("placements/s", "seconds to all stored", "register->placed p50 ms", "register->placed p99 ms",
              "register p50 ms", "server CPU ms/placement")
    for key in sqlite:
        a, b = sqlite[key], etcd[key]
        row: dict[str, float] = {"sqlite": a}
        if base is not None:
            row["etcd baseline"] = base[key]
        row["etcd (3 members)"] = b
        if key in ratios and a:
            row["etcd/sqlite"] = round(b / a, 2)
        if base is not None and key in ratios and base[key]:
            row["etcd/baseline"] = round(b / base[key], 2)
        out[key] = row
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fleet(args) -> dict[str, Any]:
    """A server agent (SQLite) holding --fleet-nodes nodes that heartbeat at their TTL, each with a
    blocking query on its allocations open: server RSS per node, server CPU while only heartbeats
    and the watches' renewals flow (a watch waits 30 s, then asks again, as the node agent's),
    and the time from one job registration (an allocation on every node: count = nodes,
    distinct_hosts) until the last node saw its allocation."""
    import httpx
    root = Path(args._root)
    args._runs += 1
    server = ServerAgent(root, f"fleet-{args._runs}", workers=args.workers).start()
    nodes = Nodes(server.url, args.fleet_nodes, parts=args.loadgen_procs)
    try:
        server.wait_ready()
        time.sleep(1.0)
        rss0 = _rss_mb(server.pid)
        t0 = time.perf_counter()
        nodes.register()
        registered_s = time.perf_counter() - t0
        # a node heartbeats half a TTL after its registration: wait until every node beats, then
        # measure over a window while only heartbeats flow (the watches are open and quiet)
        time.sleep(max(0.0, t0 + nodes.ttl / 2 + 2 - time.perf_counter()))
        window = min(max(10.0, nodes.ttl / 2), args.fleet_window)
        hb0, cpu0, gen0 = nodes.stats(), _cpu_seconds(server.pid), sum(map(_cpu_seconds, (p.pid for p in nodes.procs)))
        time.sleep(window)
        hb1, cpu1, gen1 = nodes.stats(), _cpu_seconds(server.pid), sum(map(_cpu_seconds, (p.pid for p in nodes.procs)))
        rss1 = _rss_mb(server.pid)
        beats = hb1["heartbeats"] - hb0["heartbeats"]
        renewals = hb1["watch answers"] - hb0["watch answers"]
        job = build_job(0, args.fleet_nodes, False, HTTP_CPU, HTTP_MEMORY_MB)
        job.id = "fleet"
        job.constraints = [Constraint(operand="distinct_hosts", r_target="true")]
        body = json.dumps(job.to_document()).encode()
        c0 = _cpu_seconds(server.pid)
        t_reg = time.monotonic()
        r = server.http.put("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"registering the fleet job failed: HTTP {r.status_code}: {r.text[:300]}")
        deadline = time.monotonic() + args.http_timeout
        seen: tuple[int, float] = (0, 0.0)
        while time.monotonic() < deadline:
            seen = nodes.seen().get("fleet", (0, 0.0))
            if seen[0] >= args.fleet_nodes:
                break
            time.sleep(0.2)
        cpu_job = _cpu_seconds(server.pid) - c0
        stored = len(server.http.get("/v1/job/fleet/allocations", timeout=60).json())
        stats = nodes.stats()
        nodes.stop()
        down = sum(1 for n in server.http.get("/v1/nodes").json() if n["Status"] != "ready")
        return {"nodes": args.fleet_nodes, "load generator processes": len(nodes.final) or args.loadgen_procs,
                "nodes registered in (s)": round(registered_s, 2), "heartbeat TTL (s)": nodes.ttl,
                "server RSS before nodes (MB)": round(rss0, 1), "server RSS with nodes (MB)": round(rss1, 1),
                "server RSS per node (KB)": round(1024 * (rss1 - rss0) / args.fleet_nodes, 1),
                "heartbeats/s (measured)": round(beats / window),
                "watch renewals/s (30 s waits)": round(renewals / window),
                "server CPU, idle fleet (% of a core)": round(100 * (cpu1 - cpu0) / window, 1),
                "server CPU per node (ms/s)": round(1000 * (cpu1 - cpu0) / window / args.fleet_nodes, 4),
                "load generator CPU (% of a core)": round(100 * (gen1 - gen0) / window, 1),
                "job allocations stored": stored, "nodes that saw theirs": seen[0],
                "register -> last node saw its alloc (s)": round(seen[1] - t_reg, 2) if seen[0] else None,
                "server CPU for that job (s)": round(cpu_job, 2),
                "watch answers": stats.get("watch answers", 0), "watch failed": stats.get("watch failed", 0),
                "heartbeats failed": stats.get("heartbeats failed", 0), "nodes not ready": down}
    except (Exception, httpx.HTTPError):
        print(f"  (fleet server log, the end:)\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        nodes.stop()
        server.stop()


def _until_new_leader_writes(servers: list[ServerAgent], old: str, job: bytes,
                             timeout: float = 120.0) -> tuple[float, float]:
    """Poll the surviving servers: (seconds until one names a leader other than `old`, seconds
    until one also accepts a job registration), from now."""
    import httpx
    t0 = time.perf_counter()
    seen = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in servers:
            try:
                leader = s.leader(timeout=1.0)
                if not leader or leader == old:
                    continue
                seen = seen or time.perf_counter() - t0
                r = s.http.put("/v1/jobs", content=job, headers={"Content-Type": "application/json"}, timeout=5.0)
                if r.status_code == 200:
                    return seen, time.perf_counter() - t0
            except (httpx.HTTPError, ValueError):
                continue
        time.sleep(0.02)
    raise RuntimeError(f"no new leader accepted a write within {timeout:.0f} s")


def _etcd_missing() -> str:
    """Why the etcd parts cannot run ("" when they can)."""
    from tests.etcd_cluster import ETCD
    return "" if Path(ETCD).exists() else f"{ETCD} is not installed: apt-get install etcd-server etcd-client"


def failover(args) -> dict[str, Any]:
    """Three server agents on one etcd: the leader SIGKILLed, then (of the two left) SIGTERMed."""
    if _etcd_missing():
        return {"skipped": _etcd_missing()}
    root = Path(args._root)
    endpoints = _etcd_cluster(args, "etcd-failover").endpoints
    servers = [ServerAgent(root, f"failover-s{i}", workers=args.workers, etcd=endpoints,
                           prefix="/bench-failover/", lease_ttl=args.lease_ttl).start() for i in range(3)]
    job = json.dumps(build_job(0, 1, False, HTTP_CPU, HTTP_MEMORY_MB).to_document()).encode()
    out: dict[str, float] = {}
    try:
        for s in servers:
            s.wait_ready(leader=True)
        r = servers[0].http.put("/v1/jobs", content=job, headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"the first job registration failed: HTTP {r.status_code}: {r.text}")
        for sig, name in ((signal.SIGKILL, "SIGKILL"), (signal.SIGTERM, "SIGTERM")):
            alive = [s for s in servers if s.alive()]
            old = alive[0].leader()
            leader = next(s for s in alive if s.addr == old)
            survivors = [s for s in alive if s is not leader]
            leader.signal(sig)
            seen, wrote = _until_new_leader_writes(survivors, old, job)
            assert leader.proc is not None
            leader.proc.wait(timeout=60)
            out[f"{name} leader: new leader named (s)"] = round(seen, 2)
            out[f"{name} leader: new leader writes (s)"] = round(wrote, 2)
        out["lease TTL (s)"] = args.lease_ttl or 10
        return out
    except Exception:
        for s in servers:
            print(f"  ({s.name} log, the end:)\n{s.tail()}", file=sys.stderr)
        raise
    finally:
        for s in servers:
            s.stop()


SECTIONS: list[tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = [
    ("pure scheduler (schedule() on MemoryState)", pure_scheduler),
    ("server path (register -> broker -> workers -> plan applier -> SQLite)", server_path),
    ("http path (a server agent process: PUT /v1/jobs -> eval -> plan -> stored allocs), SQLite and etcd",
     http_path),
    ("failover (3 server agents on a 3-member etcd)", failover),
    ("fleet (a server agent, SQLite, holding --fleet-nodes heartbeating nodes with their watches open)", fleet),
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
    p.add_argument("--only", metavar="SECTIONS", help="run these sections only, comma-separated: "
                   "pure, server, http, failover, fleet (e.g. --only pure,http)")
    p.add_argument("--http-nodes", type=int, default=5000, help="nodes registered, heartbeating and watching "
                   "their allocations (http)")
    p.add_argument("--fleet-nodes", type=int, default=5000, help="nodes of the fleet section")
    p.add_argument("--fleet-window", type=float, default=30.0, help="seconds the heartbeat CPU is measured over")
    p.add_argument("--loadgen-procs", type=int, default=2, help="load generator processes playing the nodes")
    p.add_argument("--http-jobs", type=int, default=100, help="jobs submitted over HTTP")
    p.add_argument("--http-count", type=int, default=40, help="allocations per job over HTTP")
    p.add_argument("--http-clients", type=int, default=4, help="concurrent HTTP clients submitting jobs")
    p.add_argument("--http-stores", choices=["both", "sqlite"], default="both",
                   help="http: SQLite and a 3-member etcd side by side, or SQLite alone")
    p.add_argument("--http-timeout", type=float, default=300.0, help="seconds to wait for every placement")
    p.add_argument("--repeat", type=int, default=1, help="http: run each store this many times (interleaved) "
                   "and print the medians")
    p.add_argument("--lease-ttl", type=int, default=None, help="the servers' etcd lease TTL in failover "
                   "(default: the agent's, 10 s)")
    p.add_argument("--server-profile", metavar="DIR", help="py-spy the server agents of the http section into "
                   "DIR/<store> (the thread holding the GIL: what the server spends its one core on)")
    p.add_argument("--baseline-src", metavar="DIR",
                   help="http: also run the server (etcd, or SQLite with --http-stores sqlite) from this src directory "
                   "(e.g. `git archive HEAD src | tar -x -C /tmp/base` then /tmp/base/src), before the current one; "
                   "server: the same section in a process importing that src, side by side")
    p.add_argument("--figures-json", metavar="FILE", help="also write every section's figures to FILE as JSON")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else []
    bad = [s for s in only if s not in ("pure", "server", "http", "failover", "fleet")]
    if bad:
        p.error(f"--only {bad[0]!r}: the sections are pure, server, http, failover, fleet")
    print(f"cluster: {args.nodes} nodes, 2 DCs, {RACKS} racks; {args.jobs} jobs x {args.count} allocs"
          f"{' with spread' if args.spread else ''}")
    args._root = tempfile.mkdtemp(prefix="yurt-bench-")
    args._etcds = []
    args._runs = 0
    results: dict[str, dict[str, Any]] = {}
    try:
        for title, section in SECTIONS:
            if only and not any(title.startswith(s) for s in only):
                continue
            print(f"\n== {title}", flush=True)
            results[section.__name__] = figures = section(args)
            _print_figures(figures)
    finally:
        for cluster in args._etcds:
            cluster.stop()
        shutil.rmtree(args._root, ignore_errors=True)
    if args.figures_json:
        Path(args.figures_json).write_text(json.dumps(results, default=str))
    if "server_path" in results and "pure_scheduler" in results:
        server = results["server_path"]["placements/s"]
        server = server["now"] if isinstance(server, dict) else server
        ratio = server / results["pure_scheduler"]["placements/s"]
        print(f"\nserver path / pure scheduler: {ratio:.2f}x  "
              f"(goal: >= 1,000 placements/s through the server path; Nomad C2M ~1,500/s on 3 servers)")
    if "http_path" in results and "pure_scheduler" in results:
        http = results["http_path"]["placements/s"]["sqlite"]
        pure = results["pure_scheduler"]["placements/s"]
        print(f"\nhttp path (SQLite, {args.http_nodes} nodes heartbeating and watching) / pure scheduler: "
              f"{http / pure:.2f}x  ({http} vs {pure} placements/s; goal: >= 3,750 over HTTP)")
    if "http_path" in results and "etcd (3 members)" in results["http_path"]["placements/s"]:
        row = results["http_path"]["placements/s"]
        print(f"http path, etcd / SQLite: {row.get('etcd/sqlite', 0):.2f}x  "
              f"({row['etcd (3 members)']} vs {row['sqlite']} placements/s; goal: >= 1,000 on etcd)")
    return 0


def _print_figures(figures: dict[str, Any]) -> None:
    """Figures one per line; a figure per store (a dict) as a row of columns."""
    columns: list[str] = []
    for value in figures.values():
        if isinstance(value, dict):
            columns += [c for c in value if c not in columns]
    w = max([26, *map(len, figures)])
    if columns:
        print(f"  {'':<{w}}" + "".join(f"{c:>18}" for c in columns))
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"  {key:<{w}}" + "".join(f"{value.get(c, ''):>18}" for c in columns), flush=True)
        else:
            print(f"  {key:<{w}} {value}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
