"""Garbage collection as Nomad's: `PUT /v1/system/gc` and `yurt system gc` collect terminal
evaluations with their allocations and stopped jobs whose evaluations and allocations are all
terminal; a running job and anything not yet terminal stay. The periodic pass's thresholds are
checked on the collector with explicit clocks."""

from __future__ import annotations

import pytest

from yurt.server.gc import EVAL_GC_THRESHOLD, JOB_GC_THRESHOLD, GarbageCollector

from .agent_util import AgentProcess, allocs, register, wait_for
from .conftest import run_yurt
from .test_agent_core import sh_job


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


def test_forced_gc_collects_what_is_done_and_keeps_what_runs(agent):
    with agent.api() as api:
        register(api, sh_job("gc-batch", "echo done", kind="batch"))
        register(api, sh_job("gc-stopped", "exec sleep 600"))
        register(api, sh_job("gc-running", "exec sleep 600"))
        wait_for(lambda: [a for a in allocs(api, "gc-batch") if a["ClientStatus"] == "complete"], timeout=60,
                 what="the batch job complete")
        wait_for(lambda: [a for a in allocs(api, "gc-stopped") if a["ClientStatus"] == "running"], timeout=60,
                 what="gc-stopped running")
        (running,) = wait_for(lambda: [a for a in allocs(api, "gc-running") if a["ClientStatus"] == "running"],
                              timeout=60, what="gc-running running")
        api.delete("/v1/job/gc-stopped")
        wait_for(lambda: all(a["ClientStatus"] == "complete" for a in allocs(api, "gc-stopped")), timeout=60,
                 what="gc-stopped's allocation stopped")
        res = run_yurt("system", "gc", "-address", agent.url)
        assert res.returncode == 0 and res.stdout.startswith("Collected "), res.stderr
        assert api.get("/v1/job/gc-stopped").status_code == 404          # the stopped job, gone
        assert api.get("/v1/job/gc-batch").status_code == 404          # a dead batch job too, as Nomad's
        assert [a["ID"] for a in allocs(api, "gc-running")] == [running["ID"]]   # what runs, untouched
        assert api.get(f"/v1/allocation/{running['ID']}").json()["ClientStatus"] == "running"
        api.delete("/v1/job/gc-running", params={"purge": "true"})


def test_the_periodic_pass_waits_for_the_thresholds():
    """An evaluation is collected an hour after its last change (with its allocations), a batch
    job's after a day, a stopped job four hours after; never while an allocation still runs."""
    from yurt.state import StateStore

    from . import mock
    store = StateStore.temporary()
    try:
        node = mock.node()
        store.upsert_node(node)
        store.upsert_job(mock.job("svc"))
        svc = store.job("default", "svc")
        ev = mock.evaluation(svc)
        store.upsert_evals([ev.model_copy(update={"status": "complete"})])
        done = mock.alloc(svc, node.id, index=0, eval_id=ev.id)
        live = mock.alloc(svc, node.id, index=1, eval_id=ev.id)
        store.upsert_allocs([done, live])
        store.update_allocs_from_client([store.alloc(done.id).model_copy(update={"client_status": "complete"}),
                                         store.alloc(live.id).model_copy(update={"client_status": "running"})])
        gc = GarbageCollector(store)
        changed = max(store.eval(ev.id).modify_time, *(a.modify_time for a in store.allocs()))
        # one allocation still runs: its evaluation stays, however old
        assert gc.collect(now=changed + 10 * JOB_GC_THRESHOLD).evals == 0
        store.update_allocs_from_client([store.alloc(live.id).model_copy(update={"client_status": "complete"})])
        changed = max(store.eval(ev.id).modify_time, *(a.modify_time for a in store.allocs()))
        assert gc.collect(now=changed + EVAL_GC_THRESHOLD // 2).evals == 0      # too young
        got = gc.collect(now=changed + EVAL_GC_THRESHOLD + 1)
        assert (got.jobs, got.evals, got.allocs) == (0, 1, 2)
        assert store.eval(ev.id) is None and store.allocs() == []
        assert store.job("default", "svc") is not None                           # not stopped: the job stays
        # a stopped job with nothing left: four hours after
        store.stop_job("default", "svc")
        stopped = store.job("default", "svc")
        assert gc.collect(now=stopped.submit_time + JOB_GC_THRESHOLD // 2).jobs == 0
        assert gc.collect(now=stopped.submit_time + JOB_GC_THRESHOLD + 1).jobs == 1
        assert store.job("default", "svc") is None
    finally:
        store.close()


def test_finished_deployments_and_long_down_nodes_are_collected():
    """Nomad's deployment GC (an hour after a deployment finished, never while one of its
    allocations lives) and node GC (a node down for a day with nothing live on it)."""
    from yurt.state import StateStore
    from yurt.structs import Deployment

    from . import mock
    from yurt.server.gc import DEPLOYMENT_GC_THRESHOLD, NODE_GC_THRESHOLD
    store = StateStore.temporary()
    try:
        up, down, busy = mock.node(), mock.node(), mock.node()
        for n in (up, down, busy):
            store.upsert_node(n)
        store.upsert_job(mock.job("svc"))
        svc = store.job("default", "svc")
        running = Deployment(id=mock.new_id(), job_id="svc", status="running")
        finished = Deployment(id=mock.new_id(), job_id="svc", status="successful")
        held = Deployment(id=mock.new_id(), job_id="svc", status="failed")
        live = mock.alloc(svc, busy.id, index=0).model_copy(update={"deployment_id": held.id})
        store.upsert_allocs([live], deployments=[running, finished, held])
        store.update_allocs_from_client([store.alloc(live.id).model_copy(update={"client_status": "running"})])
        for n in (down, busy):
            store.update_node_status(n.id, "down")
        gc = GarbageCollector(store)
        t = max(d.modify_time for d in store.deployments())
        assert gc.collect(now=t + DEPLOYMENT_GC_THRESHOLD // 2).deployments == 0     # too young
        got = gc.collect(now=t + DEPLOYMENT_GC_THRESHOLD + 1)
        # the running one stays; the failed one stays while its allocation lives
        assert got.deployments == 1 and store.deployment(finished.id) is None
        assert {d.id for d in store.deployments()} == {running.id, held.id}
        went_down = store.node(down.id).status_updated_at * 10**9
        assert gc.collect(now=went_down + NODE_GC_THRESHOLD // 2).nodes == 0
        got = gc.collect(now=went_down + NODE_GC_THRESHOLD + 1)
        # the down node with nothing on it goes; the one still holding a live allocation stays
        assert got.nodes == 1 and store.node(down.id) is None
        assert store.node(busy.id) is not None and store.node(up.id) is not None
    finally:
        store.close()
