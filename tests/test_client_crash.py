"""A client agent that dies at the worst moment runs every task exactly once, and its watch of
the node's allocations never stops.

The kill lands during a burst of job registrations, at several points: while the first jobs
are still being placed, while the first tasks start, and while half of them run. The agent is
restarted on the same data dir; every job the server holds must then have one running
allocation with exactly one task process (counted in /proc, by the allocation's environment).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from .agent_util import AgentProcess, alloc_processes, allocs, free_port, register, wait_for
from .test_agent_core import sh_job

JOBS = 16


def _running(api, job_ids: list[str]) -> dict[str, list[dict]]:
    return {j: [a for a in allocs(api, j) if a["ClientStatus"] == "running"] for j in job_ids}


@pytest.mark.parametrize("kill_point", ["placing", "first-running", "half-running"])
def test_sigkill_during_a_burst_then_restart_runs_every_task_once(tmp_path, kill_point):
    data = str(tmp_path / "data")
    port = free_port()
    agent = AgentProcess(data_dir=data, port=port).start()
    names = [f"burst-{i:02d}" for i in range(JOBS)]
    acked: list[str] = []
    stop = threading.Event()

    def burst() -> None:
        with agent.api() as api:
            for name in names:
                if stop.is_set():
                    return
                try:
                    register(api, sh_job(name, "exec sleep 600"))
                except Exception:  # noqa: BLE001 - the agent is killed under us: later ones fail
                    return
                acked.append(name)

    def running_count() -> int:
        with agent.api() as api:
            return sum(1 for a in api.get("/v1/allocations").json() if a["ClientStatus"] == "running")

    t = threading.Thread(target=burst, daemon=True)
    try:
        t.start()
        if kill_point == "placing":
            wait_for(lambda: len(acked) >= 4, timeout=60, interval=0.01, what="four jobs acknowledged")
        elif kill_point == "first-running":
            wait_for(lambda: running_count() >= 1, timeout=60, interval=0.02, what="a first task running")
        else:
            wait_for(lambda: running_count() >= JOBS // 2, timeout=120, interval=0.05, what="half the tasks running")
        agent.kill(signal.SIGKILL)
        stop.set()
        t.join(30)

        agent = AgentProcess(data_dir=data, port=port).start()
        with agent.api() as api:
            jobs = sorted(j["ID"] for j in api.get("/v1/jobs").json())
            assert set(acked) <= set(jobs), "an acknowledged job was lost"
            try:
                running = wait_for(lambda: (r := _running(api, jobs)) and all(len(v) == 1 for v in r.values()) and r,
                                   timeout=120, what="every job's one allocation running")
            except AssertionError:
                states = {j: [(a["ID"][:8], a["DesiredStatus"], a["ClientStatus"], a["ClientDescription"])
                              for a in allocs(api, j)] for j in jobs}
                raise AssertionError(f"not every job runs one allocation: {states}\n"
                                     f"agent log:\n{agent.log()[-4000:]}") from None
            for job_id, (alloc,) in running.items():
                assert [a["ID"] for a in allocs(api, job_id) if a["DesiredStatus"] == "run"] == [alloc["ID"]]
                procs = alloc_processes(alloc["ID"])
                assert len(procs) == 1, f"{job_id}: {len(procs)} copies of its task run: pids {procs}"
    finally:
        stop.set()
        agent.stop()
        for pid in [p for d in Path(data, "client", "alloc").glob("*") for p in alloc_processes(d.name)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_watch_survives_a_failure_while_acting_on_allocations(tmp_path, monkeypatch, caplog):
    """An exception while the client acts on its allocations (here injected into the first
    `_reconcile`) is logged and retried: the node still starts what it is given."""
    from yurt.api.client import YurtClient
    from yurt.client.node_agent import ClientConfig, NodeAgent

    from .mesh_agent import MeshAgent

    calls: list[tuple[int, bool]] = []   # (allocations given, failed)
    original = NodeAgent._reconcile

    def flaky(self, allocations):
        fail = bool(allocations) and not any(failed for _, failed in calls)
        calls.append((len(allocations), fail))
        if fail:
            raise FileNotFoundError("injected: the state file vanished under us")
        return original(self, allocations)

    monkeypatch.setattr(NodeAgent, "_reconcile", flaky)
    server = MeshAgent().start()
    node = NodeAgent(ClientConfig(data_dir=tmp_path / "client", node_name="watcher", raw_exec_enabled=True),
                     YurtClient(server.url))
    try:
        node.start()
        wait_for(node.registered, timeout=30, what="node registered")
        with server.api() as api:
            register(api, sh_job("watched", "exec sleep 600"))
            (alloc,) = wait_for(lambda: [a for a in allocs(api, "watched") if a["ClientStatus"] == "running"],
                                timeout=60, what="the allocation running despite the failure")
        assert alloc["NodeID"] == node.node_id
        # it failed once, given the allocation, then was given it again and acted on it
        first_fail = [failed for _, failed in calls].index(True)
        assert calls[first_fail][0] == 1 and calls[first_fail + 1] == (1, False)
        assert "acting on this node's allocations failed; retrying" in caplog.text
        assert len(alloc_processes(alloc["ID"])) == 1
    finally:
        node.stop(destroy_allocs=True)
        server.close()
