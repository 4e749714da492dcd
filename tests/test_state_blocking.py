"""Blocking queries: wait()/wait_async() wake on a change and time out otherwise.

Only returned indexes are asserted, never durations: a wake-up that does not happen shows as the
old index coming back after the (long) timeout.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from yurt.state import StateStore

from . import mock

LONG = 30.0


@pytest.fixture
def store():
    s = StateStore.temporary()
    yield s
    s.close()


def later(fn, delay: float = 0.05) -> threading.Timer:
    t = threading.Timer(delay, fn)
    t.start()
    return t


def test_wait_returns_at_once_when_the_index_is_past(store):
    store.upsert_node(mock.node())
    assert store.wait(0, LONG) == 1


def test_wait_times_out_with_the_same_index(store):
    store.upsert_node(mock.node())
    assert store.wait(1, 0.05) == 1
    assert store.wait(1, 0) == 1


def test_wait_wakes_on_a_write(store):
    store.upsert_node(mock.node())
    t = later(lambda: store.upsert_node(mock.node()))
    assert store.wait(1, LONG) == 2
    t.join()


def test_wait_on_a_table_ignores_other_tables(store):
    job = mock.job("web")
    store.upsert_job(job)
    job = store.job("default", "web")
    store.upsert_allocs([mock.alloc(job, "n1")])
    allocs_index = store.table_index("allocs")
    t = later(lambda: store.upsert_node(mock.node()))
    assert store.wait(allocs_index, 0.3, table="allocs") == allocs_index
    t.join()
    assert store.index() == allocs_index + 1
    t = later(lambda: store.upsert_allocs([mock.alloc(job, "n1")]))
    assert store.wait(allocs_index, LONG, table="allocs") == allocs_index + 2
    t.join()
    # several tables: the largest of their indexes
    assert store.wait(0, 0, table=("jobs", "nodes")) == allocs_index + 1


def test_wait_on_an_unknown_table_is_an_error(store):
    with pytest.raises(ValueError):
        store.wait(0, 0, table="nope")


def test_many_thread_waiters_all_wake(store):
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.wait(0, LONG))) for _ in range(8)]
    for t in threads:
        t.start()
    later(lambda: store.upsert_node(mock.node())).join()
    for t in threads:
        t.join()
    assert results == [1] * 8


def test_wait_async_wakes_without_blocking_the_loop(store):
    async def main():
        ticks = 0
        waiter = asyncio.create_task(store.wait_async(0, LONG))

        async def ticker():
            # Runs only while the loop is free. After a few turns of it with the wait still
            # pending, the write comes from here: a wait that blocked the loop never sees it.
            nonlocal ticks
            while ticks < 5:
                ticks += 1
                await asyncio.sleep(0)
            pending = not waiter.done()
            threading.Thread(target=store.upsert_node, args=(mock.node(),)).start()
            return pending

        pending = await asyncio.create_task(ticker())
        return await waiter, pending

    got, pending = asyncio.run(main())
    # the loop kept running while the wait was pending, and the write woke it
    assert pending, "wait_async returned (or held the loop) before anything was written"
    assert got == 1


def test_wait_async_times_out_and_on_table(store):
    async def main():
        store.upsert_node(mock.node())
        timed_out = await store.wait_async(1, 0.05)
        loop = asyncio.get_running_loop()
        # a write on another table does not wake an allocs waiter; an alloc write does
        loop.call_later(0.05, store.upsert_node, mock.node())
        not_woken = await store.wait_async(0, 0.3, table="allocs")
        job = mock.job("web")
        loop.call_later(0.05, store.upsert_job, job)
        woken = await store.wait_async(0, LONG, table="jobs")
        immediate = await store.wait_async(0, LONG)
        return timed_out, not_woken, woken, immediate

    assert asyncio.run(main()) == (1, 0, 3, 3)


def test_wait_async_many_waiters(store):
    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: threading.Thread(
            target=store.upsert_node, args=(mock.node(),)).start())
        return await asyncio.gather(*(store.wait_async(0, LONG) for _ in range(20)))

    assert asyncio.run(main()) == [1] * 20
    assert store._waiters._async == []


def test_a_node_allocations_watch_wakes_only_for_that_node(store):
    """The client agent's watch (GET /v1/node/<id>/allocations?index=): a write that changes
    allocations on other nodes leaves it waiting; one on its node (placed, updated, or
    collected) wakes it, with that write's index."""
    from yurt.state import NODE_ALLOCS
    job = mock.job("web")
    store.upsert_job(job)
    job = store.job("default", "web")
    n1, n2 = NODE_ALLOCS + "n1", NODE_ALLOCS + "n2"
    assert store.table_index(n1) == 0     # never changed since the store opened

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, store.upsert_allocs, [mock.alloc(job, "n2")])
        other = await store.wait_async(0, 0.3, table=n1)
        on_n2 = store.table_index(n2)
        placed = mock.alloc(job, "n1")
        loop.call_later(0.05, lambda: threading.Thread(target=store.upsert_allocs, args=([placed],)).start())
        mine = await store.wait_async(other, LONG, table=n1)
        return other, on_n2, mine

    other, on_n2, mine = asyncio.run(main())
    assert other == 0 and on_n2 == store.table_index("allocs") - 1
    assert mine == store.table_index("allocs") == store.table_index(n1)
    assert store._waiters._by_key == {}
    # thread waiters see the same index
    assert store.wait(mine, 0, table=n1) == mine
    assert store.wait(0, 0, table=n2) == on_n2


def test_node_allocations_index_survives_a_reopen(tmp_path):
    """After a restart a node's watch index is the allocs index at load: a client's next
    ?index= from before the restart still blocks until its allocations change."""
    from yurt.state import NODE_ALLOCS
    s = StateStore(str(tmp_path / "state.db"))
    job = mock.job("web")
    s.upsert_job(job)
    s.upsert_allocs([mock.alloc(s.job("default", "web"), "n1")])
    allocs = s.table_index("allocs")
    s.close()
    s = StateStore(str(tmp_path / "state.db"))
    try:
        assert s.table_index(NODE_ALLOCS + "n1") == allocs
        assert s.wait(allocs, 0.05, table=NODE_ALLOCS + "n1") == allocs
    finally:
        s.close()


def test_reads_watch_calls_back_without_a_coroutine(store):
    """`Reads.watch` (the hot path's blocking query, api/hot.py): `done` at once when nothing is
    to wait for; once, with the write's index, when the node's allocations change; with the
    same index when the wait ends; never after `end(False)` (the client went), at once after
    `end(True)` (the server stops). Every parked entry is given back to the store."""
    from yurt.server.reads import Reads
    from yurt.state import NODE_ALLOCS
    reads = Reads(store)
    job = mock.job("web")
    store.upsert_job(job)
    job = store.job("default", "web")
    target = NODE_ALLOCS + "n1"

    async def main():
        got: dict[str, list[int]] = {k: [] for k in ("now", "write", "deadline", "gone", "stop")}
        assert reads.watch(target, 0, LONG, got["now"].append) is None      # no ?index=: at once
        store.upsert_allocs([mock.alloc(job, "n1")])
        mine = store.table_index(target)
        assert reads.watch(target, mine - 1, LONG, got["now"].append) is None   # already past
        wrote = asyncio.Event()
        write = reads.watch(target, mine, LONG, lambda i: (got["write"].append(i), wrote.set()))
        deadline = reads.watch(target, mine, 0.05, got["deadline"].append)
        gone = reads.watch(target, mine, LONG, got["gone"].append)
        stop = reads.watch(target, mine, LONG, got["stop"].append)
        assert None not in (write, deadline, gone, stop)
        assert len(store._waiters._by_key[target]) == 4
        await asyncio.sleep(0.2)                 # the short wait ends; the others still wait
        assert got["deadline"] == [mine] and got["write"] == []
        gone(False)
        stop(True)
        assert got["stop"] == [mine]
        await asyncio.to_thread(store.upsert_allocs, [mock.alloc(job, "n1")])
        await asyncio.wait_for(wrote.wait(), LONG)
        write(True)                              # after its answer: nothing more
        gone(True)
        await asyncio.sleep(0.05)
        return got, mine

    got, mine = asyncio.run(main())
    assert got["now"] == [1, mine]               # never 0, as Nomad's
    assert got["write"] == [store.table_index(target)] and got["write"][0] > mine
    assert got["deadline"] == [mine] and got["gone"] == [] and got["stop"] == [mine]
    assert store._waiters._by_key == {}
