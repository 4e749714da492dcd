"""SIGKILL a process writing to the store at random moments; the reopened store must hold
exactly the committed writes: no index lost or repeated, no half-written plan, no orphan.

The child prints the index after every commit. A kill can land after a COMMIT but before the
print, so the reopened index is the last printed one or one more -- never less, never beyond.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter

import pytest

from yurt.state import StateStore

CHILD = r"""
import sys
from yurt.state import StateStore
from tests import mock
from yurt.structs import TaskState

s = StateStore(sys.argv[1])
out = sys.stdout
def done(index):
    out.write(f"{index}\n"); out.flush()

done(s.upsert_node(mock.node("node-1")))
i = 0
while True:
    name = f"job-{i:05d}"
    done(s.upsert_job(mock.job(name, groups={"web": 5})))
    job = s.job("default", name)
    ev = mock.evaluation(job)
    done(s.upsert_evals([ev]))
    allocs = [mock.alloc(job, "node-1", index=k, eval_id=ev.id) for k in range(5)]
    done(s.apply_plan_result(allocs, [ev.model_copy(update={"status": "complete"})]))
    if i % 2 == 0:
        done(s.update_allocs_from_client([a.model_copy(update={
            "client_status": "running", "task_states": {"app": TaskState(state="running")}})
            for a in allocs]))
    if i % 3 == 0:
        done(s.upsert_job(mock.job(name, groups={"web": 5}, meta={"v": "2"})))
    i += 1
"""


def run_and_kill(path: str, rng: random.Random) -> list[int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    printed: list[int] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) >= 20:
                started.set()
        started.set()

    reader = threading.Thread(target=read)
    reader.start()
    started.wait(60)
    assert proc.poll() is None, proc.stderr.read().decode()
    threading.Event().wait(rng.uniform(0.0, 0.4))  # a random moment in the write loop
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return printed


def check(path: str, printed: list[int]) -> None:
    assert printed == list(range(1, len(printed) + 1)), "indexes are consecutive"
    last = printed[-1]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for table in ("allocs", "evals", "nodes"):
        dup = db.execute(f"SELECT id FROM {table} GROUP BY id HAVING count(*) > 1").fetchall()
        assert dup == [], f"duplicate IDs in {table}"
    rows = db.execute("SELECT count(*) FROM allocs").fetchone()[0]
    db.close()

    with StateStore(path) as s:
        index = s.index()
        assert last <= index <= last + 1
        allocs, evals, jobs = s.allocs(), s.evals(), s.jobs()
        assert len(allocs) == rows
        # every object was stamped by a committed write, indexes in the order of the writes
        for obj in [*allocs, *evals, *jobs, *s.nodes()]:
            assert 0 < obj.create_index <= obj.modify_index <= index
        creates = [j.create_index for j in sorted(jobs, key=lambda j: j.id)]
        assert creates == sorted(set(creates))
        # no orphans and no half-written plan: a plan's 5 allocs and its eval update are one write
        per_eval = Counter(a.eval_id for a in allocs)
        for a in allocs:
            assert a.job is not None and s.job("default", a.job_id) is not None
            assert s.eval(a.eval_id) is not None
            assert a.create_index == s.eval(a.eval_id).modify_index
        for ev in evals:
            assert per_eval[ev.id] == (5 if ev.status == "complete" else 0)
            assert ev.status in ("pending", "complete")
        for job in jobs:
            versions = s.job_versions("default", job.id)
            assert [v.version for v in versions] == list(range(job.version, -1, -1))
            assert s.job_summary("default", job.id) is not None
        # and the store goes on from there
        assert s.upsert_node(s.node("node-1")) == index + 1


@pytest.mark.parametrize("seed", range(5))
def test_sigkill_mid_write_loses_and_duplicates_nothing(tmp_path, seed):
    rng = random.Random(seed)
    path = str(tmp_path / "state.db")
    printed = run_and_kill(path, rng)
    check(path, printed)


def test_killed_twice_continues_the_same_index(tmp_path):
    rng = random.Random(42)
    path = str(tmp_path / "state.db")
    first = run_and_kill(path, rng)
    with StateStore(path) as s:
        reopened = s.index()
    assert first[-1] <= reopened <= first[-1] + 1
    second = run_and_kill(path, rng)  # the child re-registers node-1 and job-00000... again
    assert second[0] == reopened + 1
    assert second == list(range(reopened + 1, reopened + 1 + len(second)))
