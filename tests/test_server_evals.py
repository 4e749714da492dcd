"""The control plane's evaluation life cycle on a real store: blocked evals built once, by the
scheduler, and re-blocked as themselves; failed processing nacked, retried, then failed."""

from __future__ import annotations

import threading

import pytest

from yurt.server.server import Server
from yurt.server.broker import EvalBroker
from yurt.state import StateStore

from .agent_util import wait_for
from .test_scheduler_helpers import make_eval, make_job, make_node


@pytest.fixture
def server(tmp_path):
    store = StateStore(str(tmp_path / "state.db"))
    srv = Server(store, num_workers=2)
    srv.start()
    yield srv
    srv.stop()
    store.close()


def _evals(server: Server, job_id: str):
    return sorted(server.store.evals_by_job("default", job_id), key=lambda e: e.create_index)


def _settled(server: Server) -> bool:
    return server.broker.idle()


def test_a_blocked_eval_that_still_cannot_place_is_blocked_again_as_itself(server):
    job = make_job("big", driver="raw_exec", config={"command": "/bin/true"}, cpu=3000)
    server.register_job(job)
    first = wait_for(lambda: [e for e in _evals(server, "big") if e.status == "complete"],
                     what="the register eval done")[0]
    (blocked,) = [e for e in _evals(server, "big") if e.status == "blocked"]
    assert first.blocked_eval == blocked.id
    assert blocked.triggered_by == "queued-allocs" and blocked.previous_eval == first.id
    assert blocked.queued_allocations == {"g": 1}
    assert server.broker.stats()["TotalBlocked"] == 1

    # A node joins that is too small: capacity changed, the blocked eval runs again, and stays
    # blocked as the same eval (no second blocked eval, no random new ID).
    server.register_node(make_node(1, cpu=1000))
    wait_for(lambda: server.store.eval(blocked.id).modify_time > blocked.modify_time,
             what="the blocked eval re-evaluated")
    wait_for(lambda: _settled(server), what="the broker idle")
    evals = _evals(server, "big")
    assert [e.id for e in evals if e.status == "blocked"] == [blocked.id]
    assert len(evals) == 2
    assert server.broker.stats()["TotalBlocked"] == 1

    # A node that fits: the same blocked eval places the allocation and completes.
    server.register_node(make_node(2, cpu=4000))
    wait_for(lambda: server.store.eval(blocked.id).status == "complete", what="blocked eval complete")
    (alloc,) = server.store.allocs_by_job("default", "big")
    assert alloc.eval_id == blocked.id and alloc.node_name == "node2"
    assert server.broker.stats()["TotalBlocked"] == 0


def test_an_eval_whose_processing_keeps_failing_is_retried_then_failed(tmp_path, monkeypatch):
    store = StateStore(str(tmp_path / "state.db"))
    srv = Server(store, num_workers=1)
    srv.broker = EvalBroker(nack_delays=(0, 0))
    srv.workers = [type(w)(srv, i) for i, w in enumerate(srv.workers)]
    calls: list[str] = []
    lock = threading.Lock()

    def broken_schedule(ev, state, *, seed, now_ns):
        with lock:
            calls.append(ev.id)
        raise RuntimeError("a scheduler bug")

    monkeypatch.setattr("yurt.server.worker.schedule", broken_schedule)
    srv.start()
    try:
        srv.register_node(make_node(1))
        result = srv.register_job(make_job("doomed", driver="raw_exec", config={"command": "/bin/true"}))
        ev = wait_for(lambda: (e := store.eval(result["EvalID"])) and e.status == "failed" and e,
                      what="the eval failed")
        assert calls.count(result["EvalID"]) == 3   # delivered three times, as Nomad's limit
        assert ev.status_description == "scheduling failed 3 times with an internal error; see the agent log"
        assert srv.broker.idle()
    finally:
        srv.stop()
        store.close()


def test_broker_nack_redelivers_after_a_delay_then_gives_up():
    now = [0]
    broker = EvalBroker(clock=lambda: now[0], delivery_limit=3, nack_delays=(1_000, 20_000))
    job = make_job("j")
    ev, later = make_eval(job), make_eval(job)
    broker.enqueue(ev)
    broker.enqueue(later)

    assert broker.dequeue(0) is ev and broker.deliveries(ev.id) == 1
    assert broker.nack(ev.id) is True
    # the nacked eval waits its delay, and the job's later eval waits behind it (one eval per
    # job in flight, in order)
    assert broker.dequeue(0) is None
    now[0] = 1_000
    assert broker.dequeue(0) is ev and broker.deliveries(ev.id) == 2
    assert broker.nack(ev.id) is True
    now[0] = 1_000 + 19_999
    assert broker.dequeue(0) is None          # the second delay is the longer one
    now[0] = 1_000 + 20_000
    assert broker.dequeue(0) is ev and broker.deliveries(ev.id) == 3
    assert broker.nack(ev.id) is False        # the limit: it leaves the broker
    assert broker.deliveries(ev.id) == 0
    assert broker.nack(ev.id) is False        # unknown now: nothing to redeliver
    assert broker.dequeue(0) is later         # and the job's next eval goes
    broker.ack(later.id)
    assert broker.idle()
