"""Write throughput of the store: `python -m yurt.state.bench [--synchronous FULL]`.

Places allocations in batches as a plan applier would (one eval ID per batch, 5,000 nodes):
plain upsert_allocs, then snapshot-before-each-batch + apply_plan_result (the scheduler's
pattern, which pays the copy-on-write), then the time to reopen the store.
"""

from __future__ import annotations

import argparse
import time

from . import mock
from .store import StateStore


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--synchronous", default="NORMAL")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--nodes", type=int, default=5000)
    args = p.parse_args()
    n = args.batches * args.batch_size
    nodes = [mock.new_id() for _ in range(args.nodes)]
    with StateStore.temporary(synchronous=args.synchronous) as s:
        for label, use_plan in (("upsert_allocs", False), ("snapshot + apply_plan_result", True)):
            name = f"bench-{int(use_plan)}"
            s.upsert_job(mock.job(name, groups={"web": n}))
            job = s.job("default", name)
            batches = []
            for b in range(args.batches):
                ev = mock.new_id()
                batches.append([mock.alloc(job, nodes[(b * args.batch_size + i) % len(nodes)],
                                           index=b * args.batch_size + i, eval_id=ev)
                                for i in range(args.batch_size)])
            t = time.perf_counter()
            for batch in batches:
                if use_plan:
                    s.snapshot()
                    s.apply_plan_result(batch)
                else:
                    s.upsert_allocs(batch)
            dt = time.perf_counter() - t
            print(f"{label}: {args.batches} x {args.batch_size} allocs in {dt:.3f}s = "
                  f"{n / dt:,.0f} allocs/s (synchronous={args.synchronous}, "
                  f"{len(s.allocs())} allocs in the store at the end)")
        t = time.perf_counter()
        with StateStore(s.path) as again:
            count = len(again.allocs())
        print(f"reopen: {count} allocs loaded in {time.perf_counter() - t:.3f}s")


if __name__ == "__main__":
    main()
