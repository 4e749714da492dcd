"""The deployment watcher in process, its ticks driven by the test's clock: a deployment whose
allocations no client has started yet is decided at its allocations' healthy_deadline and at
its progress deadline, however many ticks see nothing change in between (the watcher keeps
such a deployment aside until then), and at once when the client reports."""

from __future__ import annotations

import time

from yurt.server.server import Server
from yurt.state import StateStore
from yurt.structs import Allocation, Deployment, TaskState, UpdateStrategy
from yurt.structs.deployment import DeploymentState
from yurt.structs.times import rfc3339

from .test_scheduler_helpers import make_job, make_node

S = 10**9


def _cluster(tmp_path, progress_deadline: int):
    store = StateStore(str(tmp_path / "state.db"))
    srv = Server(store)            # not started: the test drives the watcher's ticks itself
    node = make_node(1)
    srv.register_node(node)
    update = UpdateStrategy(max_parallel=1, health_check="task_states", min_healthy_time=1 * S,
                            healthy_deadline=60 * S, progress_deadline=progress_deadline)
    store.upsert_job(make_job("web", count=1, driver="raw_exec", config={"command": "/bin/sleep"},
                              group_kw={"update": update}))
    job = store.job("default", "web")
    t0 = time.time_ns()
    d = Deployment(id="dep-1", job_id="web", job_version=job.version, job_create_index=job.create_index,
                   task_groups={"g": DeploymentState(desired_total=1, progress_deadline=progress_deadline,
                                                     require_progress_by=rfc3339(t0 + progress_deadline))})
    alloc = Allocation(id="alloc-1", name="web.g[0]", node_id=node.id, job_id="web", job=job, task_group="g",
                       deployment_id=d.id, client_status="pending", create_time=t0)
    store.upsert_allocs([alloc], deployments=[d])
    return store, srv, t0


def _health(store):
    status = store.alloc("alloc-1").deployment_status
    return None if status is None else status.healthy


def test_an_allocation_no_client_started_is_unhealthy_at_its_healthy_deadline(tmp_path):
    store, srv, t0 = _cluster(tmp_path, progress_deadline=0)
    try:
        for k in range(5):             # ticks before the deadline: nothing is decided
            srv.deployments.tick(t0 + k * S)
            assert _health(store) is None and store.deployment("dep-1").status == "running"
        srv.deployments.tick(t0 + 61 * S)
        assert _health(store) is False
        d = store.deployment("dep-1")   # no progress deadline: an unhealthy allocation fails it
        assert d.status == "failed" and "unhealthy" in d.status_description.lower()
    finally:
        store.close()


def test_the_progress_deadline_is_kept_between_quiet_ticks(tmp_path):
    store, srv, t0 = _cluster(tmp_path, progress_deadline=30 * S)
    try:
        for k in range(3):
            srv.deployments.tick(t0 + k * S)
        assert store.deployment("dep-1").status == "running"
        srv.deployments.tick(t0 + 31 * S)   # before the healthy deadline, after the progress one
        d = store.deployment("dep-1")
        assert d.status == "failed" and "progress deadline" in d.status_description.lower(), d.status_description
    finally:
        store.close()


def test_a_report_from_the_client_is_looked_at_on_the_next_tick(tmp_path):
    store, srv, t0 = _cluster(tmp_path, progress_deadline=0)
    try:
        srv.deployments.tick(t0)
        srv.deployments.tick(t0 + S)
        a = store.alloc("alloc-1")
        store.update_allocs_from_client([a.model_copy(update={
            "client_status": "running",
            "task_states": {"app": TaskState(state="running", started_at=rfc3339(t0 + S))}})])
        srv.deployments.tick(t0 + 2 * S)   # running for 1 s: min_healthy_time met
        assert _health(store) is True
    finally:
        store.close()
