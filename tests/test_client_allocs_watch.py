"""A client agent's watch of its allocations (`GET /v1/internal/node/<id>/allocations`): every
allocation's AllocModifyIndex, and whole only those the servers changed past `?since=`, so a
node holding many allocations reads what moved, not its whole list with the jobs, at each change.
On a real dev agent, with a node of the test's own (its SecretID known), and the node agent's
view of the answers (`AllocView`)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from yurt.client.node_agent import AllocView

from .agent_util import dev_agent, register, wait_for

NODE_ID = "00000000-0000-4000-8000-0000000a11c5"
SECRET = "00000000-0000-4000-8000-00000005ec7e"

JOB = """
job "watched" {
  type = "batch"
  constraint {
    attribute = "${node.unique.name}"
    value     = "watch-node"
  }
  group "g" {
    count = 2
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["600"]
      }
      resources {
        memory = 32
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def agent():
    with dev_agent() as a:
        yield a


def _node(api: httpx.Client) -> None:
    """The test's node: registered with its own SecretID beside the agent's (it runs nothing)."""
    real = api.get("/v1/nodes").json()[0]
    node = api.get(f"/v1/node/{real['ID']}").json()
    node.update({"ID": NODE_ID, "SecretID": SECRET, "Name": "watch-node", "Status": "initializing"})
    node["Attributes"] = {**node["Attributes"], "unique.hostname": "watch-node"}
    r = api.put("/v1/internal/node/register", json={"Node": node})
    assert r.status_code == 200, r.text


def _watch(api: httpx.Client, since: int, index: int = 0, wait: str = "20s") -> httpx.Response:
    api.put(f"/v1/internal/node/{NODE_ID}/heartbeat", headers={"X-Nomad-Token": SECRET})
    params = {"since": since, **({"index": index, "wait": wait} if index else {})}
    return api.get(f"/v1/internal/node/{NODE_ID}/allocations", params=params,
                   headers={"X-Nomad-Token": SECRET}, timeout=60)


def _in_background(fn):
    """Run `fn` in a thread; the returned callable joins it and gives its result."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()

    def result(timeout: float = 60.0):
        t.join(timeout)
        assert out, "the watch did not answer"
        return out[0]
    return result


def test_the_watch_answers_indexes_and_only_what_the_servers_changed(agent):
    with agent.api() as api:
        _node(api)
        # the node's own secret only, ACLs or not (as the other /v1/internal/node routes)
        path = f"/v1/internal/node/{NODE_ID}/allocations"
        assert api.get(path).status_code == 403
        assert api.get(path, headers={"X-Nomad-Token": "not-the-secret"}).status_code == 403
        bad = api.get(path, params={"since": "abc"}, headers={"X-Nomad-Token": SECRET})
        assert bad.status_code == 400 and "invalid since" in bad.text and "whole number" in bad.text
        for odd in ("-1", "1.5", "²"):   # (a superscript is a digit to str.isdigit, not to int)
            r = api.get(path, params={"since": odd}, headers={"X-Nomad-Token": SECRET})
            assert r.status_code == 400 and "invalid since" in r.text, (odd, r.text)

        register(api, JOB)
        placed = wait_for(lambda: (lambda b: b if len(b["Allocs"]) == 2 else None)(_watch(api, 0).json()),
                          what="two allocations placed on the test's node")
        full = _watch(api, 0)
        body, index = full.json(), int(full.headers["X-Nomad-Index"])
        assert set(body["Allocs"]) == {a["ID"] for a in body["Changed"]}
        for a in body["Changed"]:   # whole: the job with it, as /v1/node/<id>/allocations gives it
            assert a["Job"]["ID"] == "watched" and a["NodeID"] == NODE_ID
            assert body["Allocs"][a["ID"]] == a["AllocModifyIndex"] > 0
        assert placed["Allocs"] == body["Allocs"]
        since = max(body["Allocs"].values())
        same = _watch(api, since).json()
        assert same == {"Allocs": body["Allocs"], "Changed": []}

        # what the node reports moves the watch, not AllocModifyIndex: nothing to read again
        first = sorted(body["Allocs"])[0]
        waiting = _in_background(lambda: _watch(api, since, index))
        r = api.put(f"/v1/internal/node/{NODE_ID}/allocations", headers={"X-Nomad-Token": SECRET},
                    json={"Allocs": [{"ID": first, "ClientStatus": "running"}]})
        assert r.status_code == 200, r.text
        moved = waiting()
        assert int(moved.headers["X-Nomad-Index"]) > index
        assert moved.json() == {"Allocs": body["Allocs"], "Changed": []}
        assert api.get(f"/v1/allocation/{first}").json()["ClientStatus"] == "running"

        # the servers stopping one move its index: that one comes whole (and a replacement, new,
        # when the scheduler has placed it by then); the untouched one does not
        index = int(moved.headers["X-Nomad-Index"])
        gone_id = sorted(body["Allocs"])[1]
        waiting = _in_background(lambda: _watch(api, since, index))
        assert api.put(f"/v1/allocation/{gone_id}/stop").status_code == 200
        answer = waiting()
        # `alloc stop` marks the allocation to migrate (its ModifyIndex only), then the scheduler
        # stops it: the watch may wake once in between with nothing changed for the client; it
        # watches again from there, as the node agent does
        deadline = time.monotonic() + 60
        while gone_id not in {a["ID"] for a in answer.json()["Changed"]} and time.monotonic() < deadline:
            answer = _watch(api, since, int(answer.headers["X-Nomad-Index"]))
        stopped = answer.json()
        changed = {a["ID"]: a for a in stopped["Changed"]}
        gone = changed.pop(gone_id)
        assert gone["DesiredStatus"] == "stop"
        assert stopped["Allocs"][gone_id] == gone["AllocModifyIndex"] > since
        assert first not in changed and stopped["Allocs"][first] == body["Allocs"][first]
        assert not set(changed) & set(body["Allocs"])   # only a new one besides
        kept = first

        # the view the node agent keeps from these answers is the node's whole list
        view = AllocView()
        allocs, whole = view.apply(full.json())
        assert whole and {a.id for a in allocs} == set(body["Allocs"]) and view.since == since
        allocs, whole = view.apply(stopped)
        assert whole and view.since == max(stopped["Allocs"].values())
        by_id = {a.id: a for a in allocs}
        assert by_id[gone_id].desired_status == "stop" and by_id[kept].desired_status == "run"
        assert by_id[kept].job is not None and by_id[kept].job.id == "watched"
        # the job purged: its running allocation is stopped by the servers, and comes again
        api.delete("/v1/job/watched", params={"purge": "true"})
        def kept_stopped() -> dict | None:   # (the stopped one's replacement may come first)
            b = _watch(api, view.since).json()
            return b if any(a["ID"] == kept and a["DesiredStatus"] == "stop" for a in b["Changed"]) else None
        purged = wait_for(kept_stopped, what="the purged job's allocation stopped")
        assert (kept, "stop") in [(a["ID"], a["DesiredStatus"]) for a in purged["Changed"]]
        assert gone_id not in [a["ID"] for a in purged["Changed"]]
        allocs, whole = view.apply(purged)
        assert whole and {a.desired_status for a in allocs} == {"stop"}


def _doc(alloc_id: str, index: int, desired: str = "run") -> dict:
    return {"ID": alloc_id, "NodeID": NODE_ID, "JobID": "j", "TaskGroup": "g", "DesiredStatus": desired,
            "ClientStatus": "pending", "AllocModifyIndex": index, "ModifyIndex": index}


def test_the_view_keeps_what_it_holds_and_asks_again_for_what_it_misses():
    view = AllocView()
    allocs, whole = view.apply({"Allocs": {"a": 5, "b": 7}, "Changed": [_doc("a", 5), _doc("b", 7)]})
    assert whole and [a.id for a in allocs] == ["a", "b"] and view.since == 7
    kept = view.allocs["a"]
    # only b changed: a is the same object, b the new version
    allocs, whole = view.apply({"Allocs": {"a": 5, "b": 9}, "Changed": [_doc("b", 9, "stop")]})
    assert whole and view.since == 9 and allocs[0] is kept and allocs[1].desired_status == "stop"
    # one gone from the node: gone from the view
    allocs, whole = view.apply({"Allocs": {"b": 9}, "Changed": []})
    assert whole and [a.id for a in allocs] == ["b"] and set(view.allocs) == {"b"}
    # one it never got (or behind its index): not whole, everything asked for again (since 0)
    allocs, whole = view.apply({"Allocs": {"b": 9, "c": 4}, "Changed": []})
    assert not whole and [a.id for a in allocs] == ["b"] and view.since == 0
    allocs, whole = view.apply({"Allocs": {"b": 11}, "Changed": []})
    assert not whole and allocs[0].alloc_modify_index == 9 and view.since == 0
    allocs, whole = view.apply({"Allocs": {"b": 11, "c": 4}, "Changed": [_doc("b", 11), _doc("c", 4)]})
    assert whole and [a.alloc_modify_index for a in allocs] == [11, 4] and view.since == 11


def test_the_node_agent_runs_from_the_view_and_stops_what_the_servers_stop(agent):
    """The dev agent's own node agent watches through the view: a job runs, a stop reaches it."""
    with agent.api() as api:
        local = next(n["Name"] for n in api.get("/v1/nodes").json() if n["ID"] != NODE_ID)
        register(api, JOB.replace("watch-node", local).replace('"watched"', '"local"').replace("batch", "service"))

        def running() -> list[dict]:
            return [a for a in api.get("/v1/job/local/allocations").json() if a["ClientStatus"] == "running"]
        both = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(running()), what="both running")
        victim = both[0]["ID"]
        assert api.put(f"/v1/allocation/{victim}/stop").status_code == 200
        wait_for(lambda: api.get(f"/v1/allocation/{victim}").json()["ClientStatus"] == "complete",
                 what="the stopped allocation's tasks stopped by its node")
        ids = [a["ID"] for a in running()]
        assert both[1]["ID"] in ids and victim not in ids   # (and its replacement, placed by the servers)
        api.delete("/v1/job/local", params={"purge": "true"})
