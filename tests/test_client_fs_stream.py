"""Nomad's /v1/client/fs/stream/<alloc> (NDJSON frames or plain bytes, followed as the file grows,
truncation and deletion as FileEvents), `yurt alloc fs -f`, and the client's garbage collection
(/v1/client/gc, /v1/client/allocation/<id>/gc) removing finished allocations' directories, with
a real agent and real raw_exec tasks writing files."""

from __future__ import annotations

import base64
import json
import tempfile
import time
from pathlib import Path

import httpx
import nomad
import pytest

from .agent_util import AgentProcess, allocs, register, wait_for
from .conftest import run_yurt
from .test_agent_core import sh_job


@pytest.fixture(scope="module")
def agent():
    with tempfile.TemporaryDirectory(prefix="yurt-fs-stream-") as data_dir:
        with AgentProcess(data_dir=data_dir) as a:
            yield a


def _running(api: httpx.Client, job: str) -> dict:
    (alloc,) = wait_for(lambda: [a for a in allocs(api, job) if a["ClientStatus"] == "running"], timeout=60,
                        what=f"{job} running")
    return alloc


def _complete(api: httpx.Client, job: str) -> dict:
    (alloc,) = wait_for(lambda: [a for a in allocs(api, job) if a["ClientStatus"] == "complete"], timeout=60,
                        what=f"{job} complete")
    return alloc


def _frames(agent, alloc_id: str, params: dict, until, timeout: float = 30.0) -> list[dict]:
    """NDJSON frames of a followed stream, read until `until(frames)` holds; then the stream is
    closed by the reader (as a client that has seen enough)."""
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", f"{agent.url}/v1/client/fs/stream/{alloc_id}", params=params,
                      timeout=httpx.Timeout(timeout, read=timeout)) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("application/json")
        for line in resp.iter_lines():
            if line.strip():
                frames.append(json.loads(line))
            if until(frames) or time.monotonic() > deadline:
                break
    return frames


def _data(frames: list[dict]) -> bytes:
    return b"".join(base64.b64decode(f.get("Data") or "") for f in frames)


def test_a_growing_file_streamed_as_frames_and_followed(agent):
    script = ("f=$NOMAD_TASK_DIR/out.txt; for i in 1 2 3; do echo line$i >> $f; sleep 1; done; sleep 2; "
              ": > $f; sleep 2; echo again >> $f; exec sleep 600")
    with agent.api() as api:
        register(api, sh_job("streamer", script))
        try:
            aid = _running(api, "streamer")["ID"]
            wait_for(lambda: api.get(f"/v1/client/fs/stat/{aid}", params={"path": "/t/local/out.txt"})
                     .status_code == 200, what="the task's file")
            frames = _frames(agent, aid, {"path": "/t/local/out.txt", "offset": 0, "origin": "start"},
                             until=lambda fs: b"again" in _data(fs), timeout=40)
            data_frames = [f for f in frames if f.get("Data")]
            assert all(f["File"] == "t/local/out.txt" for f in data_frames)
            seen = _data(frames)
            # the three lines as they were written, then the truncation, then what came after it
            assert seen.startswith(b"line1\nline2\nline3\n") and seen.endswith(b"again\n"), seen
            events = [f.get("FileEvent") for f in frames if f.get("FileEvent")]
            assert events == ["file truncated"], frames
            before = [f for f in frames[:frames.index(next(f for f in frames if f.get("FileEvent")))] if f.get("Data")]
            assert [f["Offset"] for f in before] == sorted(f["Offset"] for f in before)
            assert before[-1]["Offset"] == len(b"line1\nline2\nline3\n")
            assert data_frames[-1]["Offset"] == len(b"again\n")

            # not followed: what is there now; plain: the bytes themselves; origin=end: the tail
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "t/local/out.txt", "follow": "false",
                                                              "plain": "true"})
            assert (r.status_code, r.text) == (200, "again\n")
            assert r.headers["content-type"].startswith("text/plain")
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "t/local/out.txt", "follow": "false",
                                                              "plain": "true", "origin": "end", "offset": 3})
            assert r.text == "in\n"
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "t/local/out.txt", "follow": "false"})
            (frame,) = [json.loads(line) for line in r.text.splitlines()]
            assert (base64.b64decode(frame["Data"]), frame["Offset"], frame["File"]) == (b"again\n", 6,
                                                                                        "t/local/out.txt")

            # what it refuses, naming why
            r = api.get(f"/v1/client/fs/stream/{aid}")
            assert r.status_code == 400 and "must provide a file path" in r.text
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "t/local/out.txt", "origin": "middle"})
            assert r.status_code == 400 and 'origin must be "start" or "end"' in r.text
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "t/local"})
            assert r.status_code == 400 and "is a directory" in r.text
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "/../../../etc/passwd"})
            assert r.status_code == 403 and "outside the allocation directory" in r.text
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "/t/secrets/x"})
            assert r.status_code == 403
            r = api.get("/v1/client/fs/stream/00000000-0000-0000-0000-000000000000", params={"path": "/x"})
            assert r.status_code == 404

            # a GC of one still running is refused: it runs
            r = api.put(f"/v1/client/allocation/{aid}/gc")
            assert r.status_code == 400 and "still running" in r.text
        finally:
            api.delete("/v1/job/streamer", params={"purge": "true"})


def test_a_deleted_file_ends_the_stream(agent):
    script = "f=$NOMAD_TASK_DIR/gone.txt; echo here > $f; sleep 3; rm $f; exec sleep 600"
    with agent.api() as api:
        register(api, sh_job("deleter", script))
        try:
            aid = _running(api, "deleter")["ID"]
            wait_for(lambda: api.get(f"/v1/client/fs/stat/{aid}", params={"path": "/t/local/gone.txt"})
                     .status_code == 200, what="the task's file")
            frames = _frames(agent, aid, {"path": "/t/local/gone.txt"}, until=lambda fs: False, timeout=30)
            assert _data(frames) == b"here\n"
            assert frames[-1].get("FileEvent") == "file deleted", frames
        finally:
            api.delete("/v1/job/deleter", params={"purge": "true"})


def test_alloc_fs_follow_and_the_client_gc(agent):
    """`yurt alloc fs -f` prints the file as it grows and returns once the allocation has
    finished; then the client's GC removes finished allocations' directories on the node (one by
    its ID, or all of the node's), and leaves a running one alone."""
    data_dir = Path(agent.data_dir) / "client"
    with agent.api() as api:
        script = "for i in 1 2 3 4; do echo tick$i >> $NOMAD_ALLOC_DIR/ticks.txt; sleep 1; done"
        register(api, sh_job("ticker", script, kind="batch"))
        register(api, sh_job("ticker2", "echo done > $NOMAD_ALLOC_DIR/x.txt", kind="batch"))
        register(api, sh_job("keeper", "exec sleep 600"))
        try:
            aid = _running(api, "ticker")["ID"]
            wait_for(lambda: api.get(f"/v1/client/fs/stat/{aid}", params={"path": "/alloc/ticks.txt"})
                     .status_code == 200, what="the ticks file")
            res = run_yurt("alloc", "fs", "-f", "-address", agent.url, aid[:8], "alloc/ticks.txt", timeout=60)
            assert (res.returncode, res.stdout) == (0, "tick1\ntick2\ntick3\ntick4\n"), res.stderr
            assert api.get(f"/v1/allocation/{aid}").json()["ClientStatus"] == "complete"
            # python-nomad's stream_file, of a finished allocation's file: all of it
            n = nomad.Nomad(host="127.0.0.1", port=agent.port)
            text = n.client.stream_file.stream(aid, 6, "start", "alloc/ticks.txt")
            assert _data([json.loads(line) for line in text.splitlines() if line.strip()]) == b"tick2\ntick3\ntick4\n"

            # one allocation, by its ID (python-nomad, as Nomad's GET)
            assert (data_dir / "alloc" / aid / "alloc" / "ticks.txt").exists()
            n.client.gc_allocation.garbage_collect(aid)
            assert not (data_dir / "alloc" / aid).exists()
            r = api.get(f"/v1/client/fs/cat/{aid}", params={"path": "alloc/ticks.txt"})
            assert r.status_code == 404 and "garbage-collected" in r.text
            r = api.put(f"/v1/client/allocation/{aid}/gc")
            assert r.status_code == 404
            assert api.get(f"/v1/allocation/{aid}").status_code == 200   # the server keeps its record

            # the node's: the other finished one goes, the running one stays
            other = _complete(api, "ticker2")["ID"]
            keeper = _running(api, "keeper")["ID"]
            assert (data_dir / "alloc" / other).exists()
            node_id = api.get(f"/v1/allocation/{keeper}").json()["NodeID"]
            r = api.put("/v1/client/gc", params={"node_id": node_id})
            assert r.status_code == 200, r.text
            assert not (data_dir / "alloc" / other).exists()
            assert (data_dir / "alloc" / keeper).exists()
            assert api.get(f"/v1/allocation/{keeper}").json()["ClientStatus"] == "running"
            r = api.get(f"/v1/client/fs/ls/{keeper}", params={"path": "/"})
            assert r.status_code == 200
            # the allocations the node forgot are not started again, at the node's next changes
            # either (a job placed on it and running: its watch answered meanwhile)
            register(api, sh_job("nudge", "exec sleep 600"))
            _running(api, "nudge")
            assert not (data_dir / "alloc" / other).exists() and not (data_dir / "alloc" / aid).exists()
            assert api.get(f"/v1/allocation/{other}").json()["ClientStatus"] == "complete"
            r = api.get("/v1/client/gc", params={"node_id": "nope"})
            assert r.status_code == 404 and 'node "nope" not found' in r.text
        finally:
            for job in ("ticker", "ticker2", "keeper", "nudge"):
                api.delete(f"/v1/job/{job}", params={"purge": "true"})


def test_a_server_forwards_stream_and_gc_to_the_node_that_runs_the_allocation():
    """A server-only agent and a client-only one: the stream and the client GC asked of the
    server are answered by the client's agent (as Nomad's servers forward them)."""
    from .mesh_agent import MeshAgent
    from .test_client_only import ClientAgent

    server = MeshAgent().start()
    client = ClientAgent([f"127.0.0.1:{server.port}"]).start()
    try:
        with server.api() as api:
            wait_for(lambda: api.get("/v1/nodes").json(), timeout=60, what="the client's node")
            register(api, sh_job("remote", "echo far away > $NOMAD_ALLOC_DIR/far.txt", kind="batch"))
            alloc = _complete(api, "remote")
            aid, node_id = alloc["ID"], alloc["NodeID"]
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "alloc/far.txt", "plain": "true"})
            assert (r.status_code, r.text) == (200, "far away\n")
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "alloc/far.txt"})
            (frame,) = [json.loads(line) for line in r.text.splitlines()]
            assert base64.b64decode(frame["Data"]) == b"far away\n"
            alloc_dir = Path(client.data_dir) / "client" / "alloc" / aid
            assert alloc_dir.exists()
            r = api.put("/v1/client/gc", params={"node_id": node_id})
            assert r.status_code == 200, r.text
            assert not alloc_dir.exists()
            r = api.get(f"/v1/client/fs/stream/{aid}", params={"path": "alloc/far.txt", "plain": "true"})
            assert r.status_code == 404, r.text
            assert "garbage-collected" in r.text   # said by the client's agent, the server passing it on
            api.delete("/v1/job/remote", params={"purge": "true"})
    finally:
        client.close()
        server.close()
