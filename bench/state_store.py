"""Write throughput of the state store, against SQLite alone doing the same writes.

    .venv/bin/python bench/state_store.py [--synchronous FULL] [--batches 100] [--batch-size 100]
                                          [--nodes 5000]

Places allocations in batches as a plan applier would (one eval ID per batch, 5,000 nodes):
  - reference: the least any store has to do -- each allocation serialized to its JSON and
    INSERTed, one SQLite transaction (WAL, same `synchronous`) per batch, with the same table and
    indexes as the store's allocs table and an index counter;
  - `upsert_allocs` on a real `StateStore`;
  - snapshot before each batch + `apply_plan_result` (the scheduler's pattern, which also pays
    the copy-on-write of the in-memory model);
then the time to reopen the store. Ratios are store / reference (1.0 = no overhead over SQLite).
The allocations come from the tests' factories (tests/mock.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # for tests/mock.py, the factories the tests use

from tests import mock  # noqa: E402
from yurt.state import StateStore  # noqa: E402

REFERENCE_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE allocs (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, job_id TEXT NOT NULL,
    job_version INTEGER NOT NULL, job_modify_index INTEGER NOT NULL,
    node_id TEXT NOT NULL, eval_id TEXT NOT NULL, client_status TEXT NOT NULL,
    desired_status TEXT NOT NULL, modify_index INTEGER NOT NULL,
    job_body TEXT, body TEXT NOT NULL);
CREATE INDEX allocs_job ON allocs (namespace, job_id);
CREATE INDEX allocs_node ON allocs (node_id);
CREATE INDEX allocs_eval ON allocs (eval_id);
"""


def make_batches(job, nodes: list[str], batches: int, size: int) -> list[list]:
    out = []
    for b in range(batches):
        ev = mock.new_id()
        out.append([mock.alloc(job, nodes[(b * size + i) % len(nodes)], index=b * size + i, eval_id=ev)
                    for i in range(size)])
    return out


def reference(batches: list[list], synchronous: str) -> float:
    """Seconds for plain sqlite3 to serialize and insert the batches, one transaction each."""
    d = tempfile.mkdtemp(prefix="yurt-bench-sqlite-")
    try:
        c = sqlite3.connect(os.path.join(d, "ref.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={synchronous}")
        c.execute("PRAGMA wal_autocheckpoint=10000")
        c.executescript(REFERENCE_SCHEMA)
        index = 0
        t = time.perf_counter()
        for batch in batches:
            index += 1
            rows = [(a.id, a.namespace, a.job_id, a.job.version, a.job.job_modify_index, a.node_id,
                     a.eval_id, a.client_status, a.desired_status, index, None,
                     a.model_dump_json(by_alias=True, exclude={"job"})) for a in batch]
            c.execute("BEGIN")
            c.executemany("INSERT OR REPLACE INTO allocs (id, namespace, job_id, job_version,"
                          " job_modify_index, node_id, eval_id, client_status, desired_status,"
                          " modify_index, job_body, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('index', ?)", (index,))
            c.execute("COMMIT")
        elapsed = time.perf_counter() - t
        c.close()
        return elapsed
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL", "EXTRA"])
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--nodes", type=int, default=5000)
    args = p.parse_args()
    n = args.batches * args.batch_size
    nodes = [mock.new_id() for _ in range(args.nodes)]
    sync = args.synchronous
    with StateStore.temporary(synchronous=sync) as s:
        ref_s = None
        for label, use_plan in (("upsert_allocs", False), ("snapshot + apply_plan_result", True)):
            name = f"bench-{int(use_plan)}"
            s.upsert_job(mock.job(name, groups={"web": n}))
            job = s.job("default", name)
            batches = make_batches(job, nodes, args.batches, args.batch_size)
            if ref_s is None:
                ref_s = reference(batches, sync)
                print(f"reference (sqlite3 alone): {args.batches} x {args.batch_size} allocs in {ref_s:.3f}s = "
                      f"{n / ref_s:,.0f} allocs/s (synchronous={sync})")
            t = time.perf_counter()
            for batch in batches:
                if use_plan:
                    s.snapshot()
                    s.apply_plan_result(batch)
                else:
                    s.upsert_allocs(batch)
            dt = time.perf_counter() - t
            print(f"{label}: {args.batches} x {args.batch_size} allocs in {dt:.3f}s = "
                  f"{n / dt:,.0f} allocs/s = {ref_s / dt:.2f}x the reference "
                  f"({len(s.allocs())} allocs in the store at the end)")
        t = time.perf_counter()
        with StateStore(s.path) as again:
            count = len(again.allocs())
        print(f"reopen: {count} allocs loaded in {time.perf_counter() - t:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
