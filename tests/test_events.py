"""The event stream (/v1/event/stream) and `yurt monitor` (/v1/agent/monitor) against one real
agent running a small raw_exec job, as a user (curl, python-nomad, the CLI) sees them."""

from __future__ import annotations

import base64
import json
import queue
import re
import signal
import subprocess
import threading
import time

import httpx
import pytest

from yurt.agent.config import AgentConfig, load_file
from yurt.errors import ConfigError
from yurt.state import StateStore
from yurt.state.events import EventBuffer

from . import mock
from .agent_util import AgentProcess, wait_for
from .conftest import YURT

JOB = "evjob"
JOB_DOC = {"Job": {
    "ID": JOB, "Name": JOB, "Type": "service", "Datacenters": ["dc1"],
    "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{
        "Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/sleep", "args": ["600"]},
        "Resources": {"CPU": 50, "MemoryMB": 32}}]}]}}


class Stream:
    """An open /v1/event/stream (or any NDJSON stream), read on a thread into a queue."""

    def __init__(self, url: str, params: list[tuple[str, str]], headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        self.lines: queue.Queue = queue.Queue()
        self.status: int | None = None
        self._opened = threading.Event()
        self.ended = threading.Event()
        self.error: httpx.HTTPError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, params), daemon=True)
        self._thread.start()
        assert self._opened.wait(30), "the stream did not open"

    def _run(self, url: str, params: list[tuple[str, str]]) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30.0)) as c, c.stream("GET", url, params=params,
                                                                                headers=self.headers) as resp:
                self.status = resp.status_code
                self._opened.set()
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if line:
                        self.lines.put(json.loads(line))
        except httpx.HTTPError as e:   # the agent went away while this stream was open
            self.error = e
        finally:
            self.ended.set()

    def frames(self, until, timeout: float = 90.0, fail: bool = True) -> list[dict]:
        """Frames (heartbeats left out) until `until(frames)` holds; fails at the deadline (or,
        with fail=False, returns what came)."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            left = deadline - time.monotonic()
            if left <= 0:
                if not fail:
                    return got
                raise AssertionError(f"the stream did not deliver what was expected; got {got!r}"[:3000])
            try:
                frame = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if frame:
                got.append(frame)
        return got

    def close(self) -> None:
        self._stop.set()


def events(frames: list[dict]) -> list[dict]:
    return [e for f in frames for e in f["Events"]]


def running_alloc(frames: list[dict]) -> bool:
    return any(e["Topic"] == "Allocation" and e["Type"] == "AllocationUpdated"
               and e["Payload"]["Allocation"]["ClientStatus"] == "running" for e in events(frames))


@pytest.fixture(scope="module")
def agent():
    a = AgentProcess().start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def api(agent):
    with agent.api() as c:
        yield c


@pytest.fixture(scope="module")
def registered(agent, api):
    """The job registered while a stream follows it: the frames it saw up to the allocation running."""
    stream = Stream(agent.url + "/v1/event/stream", [("topic", f"Job:{JOB}"), ("topic", f"Allocation:{JOB}")])
    try:
        r = api.put("/v1/jobs", json=JOB_DOC)
        assert r.status_code == 200, r.text
        return stream.frames(running_alloc)
    finally:
        stream.close()


def test_stream_delivers_registration_then_running_allocation(registered):
    frames = registered
    indexes = [f["Index"] for f in frames]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes), indexes
    evs = events(frames)
    assert {e["Topic"] for e in evs} <= {"Job", "Allocation"}
    first = frames[0]["Events"][0]
    assert (first["Topic"], first["Type"], first["Key"]) == ("Job", "JobRegistered", JOB)
    assert first["Payload"]["Job"]["ID"] == JOB and first["Index"] == frames[0]["Index"]
    running = next(e for e in evs if e["Topic"] == "Allocation" and e["Type"] == "AllocationUpdated"
                   and e["Payload"]["Allocation"]["ClientStatus"] == "running")
    assert running["Index"] > first["Index"]
    alloc = running["Payload"]["Allocation"]
    assert alloc["JobID"] == JOB and alloc["Job"] is None and JOB in running["FilterKeys"]
    assert running["Namespace"] == "default"
    # the scheduler's placement came between them, as Nomad's PlanResult
    placed = [e for e in evs if e["Topic"] == "Allocation" and e["Type"] == "PlanResult"]
    assert placed and first["Index"] < placed[0]["Index"] <= running["Index"]


def test_topic_filters(agent, registered):
    nodes = Stream(agent.url + "/v1/event/stream", [("topic", "Node"), ("index", "1")])
    try:
        got = nodes.frames(lambda f: len(f) >= 1)
    finally:
        nodes.close()
    assert all(e["Topic"] == "Node" for e in events(got))
    node = events(got)[0]
    assert node["Type"] == "NodeRegistration" and "SecretID" not in node["Payload"]["Node"]

    evals = Stream(agent.url + "/v1/event/stream", [("topic", f"Evaluation:{JOB}"), ("index", "1")])
    try:
        got = evals.frames(lambda f: any(e["Type"] == "JobRegistered" for e in events(f)))
    finally:
        evals.close()
    assert all(e["Topic"] == "Evaluation" and JOB in e["FilterKeys"] for e in events(got))
    assert events(got)[0]["Payload"]["Evaluation"]["JobID"] == JOB

    # `*:KEY`: whatever is filed under the job, in every topic (beside a topic of its own)
    anything = Stream(agent.url + "/v1/event/stream", [("topic", "Node:none"), ("topic", f"*:{JOB}"), ("index", "1")])
    try:
        got = anything.frames(running_alloc)
    finally:
        anything.close()
    assert {"Job", "Evaluation", "Allocation"} <= {e["Topic"] for e in events(got)}
    assert all(e["Key"] == JOB or JOB in (e["FilterKeys"] or ()) for e in events(got))


def test_service_registration_and_deregistration(agent, api):
    stream = Stream(agent.url + "/v1/event/stream", [("topic", "Service:evsvc")])
    try:
        assert api.put("/v1/agent/service/register", json={"Name": "evsvc", "ID": "evsvc-1", "Port": 4321}
                       ).status_code == 200
        assert api.put("/v1/agent/service/deregister/evsvc-1").status_code == 200
        got = stream.frames(lambda f: any(e["Type"] == "ServiceDeregistration" for e in events(f)))
    finally:
        stream.close()
    evs = events(got)
    assert [e["Type"] for e in evs] == ["ServiceRegistration", "ServiceDeregistration"]
    assert all(e["Key"] == "evsvc-1" and e["FilterKeys"] == ["evsvc"] and e["Topic"] == "Service" for e in evs)
    assert evs[0]["Payload"]["Service"]["Port"] == 4321


def test_index_replays_what_the_buffer_holds(agent, registered):
    registration = next(f["Index"] for f in registered if any(e["Type"] == "JobRegistered" for e in f["Events"]))
    replay = Stream(agent.url + "/v1/event/stream",
                    [("topic", f"Job:{JOB}"), ("topic", f"Allocation:{JOB}"), ("index", str(registration))])
    try:
        got = replay.frames(running_alloc)
    finally:
        replay.close()
    assert got[0]["Index"] == registration
    assert got[0]["Events"][0]["Type"] == "JobRegistered"
    assert [f["Index"] for f in got] == [f["Index"] for f in registered]

    # after that index: the registration is not replayed
    later = Stream(agent.url + "/v1/event/stream", [("topic", f"Job:{JOB}"), ("index", str(registration + 1))])
    try:
        got = later.frames(lambda f: len(f) >= 1)
    finally:
        later.close()
    assert all(f["Index"] > registration for f in got)


def test_bad_queries_are_refused(api):
    r = api.get("/v1/event/stream", params={"topic": "Jobs"})
    assert r.status_code == 400
    assert 'unknown topic "Jobs"' in r.text and "Job, Allocation, Evaluation, Node, Deployment, Service" in r.text
    r = api.get("/v1/event/stream", params={"index": "soon"})
    assert r.status_code == 400 and 'invalid index "soon"' in r.text
    r = api.get("/v1/event/stream", params={"topic": "Job:"})
    assert r.status_code == 400 and "empty key" in r.text
    r = api.get("/v1/event/stream", params={"topics": "Job"})
    assert r.status_code == 400 and '"topics"' in r.text
    r = api.get("/v1/event/stream", params={"region": "mars"})
    assert r.status_code == 400 and '"mars"' in r.text and '"global"' in r.text


def test_python_nomad_event_stream(agent, registered):
    import nomad
    n = nomad.Nomad(host="127.0.0.1", port=agent.port, timeout=30)
    thread, stop, q = n.event.stream.get_stream(index=1, topic={"Job": JOB})
    thread.daemon = True
    thread.start()
    try:
        deadline = time.monotonic() + 60
        frame = None
        while frame is None and time.monotonic() < deadline:
            try:
                got = q.get(timeout=1)
            except queue.Empty:
                continue
            if any(e["Topic"] == "Job" and e["Key"] == JOB for e in got.get("Events", [])):
                frame = got
        assert frame is not None, "python-nomad's event stream delivered no Job event"
        assert frame["Events"][0]["Type"] == "JobRegistered"
    finally:
        stop.set()


def test_monitor_follows_agent_logs_and_exits_0_on_sigint(agent, api):
    proc = subprocess.Popen([*YURT, "monitor", "-address", agent.url, "-log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(line.decode() for line in iter(proc.stdout.readline, b"")),
                              daemon=True)
    reader.start()
    try:
        def logged() -> bool:
            # each registration makes the agent log a line; registering again (same spec) is harmless
            assert api.put("/v1/jobs", json=JOB_DOC).status_code == 200
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            return any(f'job "{JOB}" registered' in line and "[INFO] yurt.server" in line for line in out)
        wait_for(logged, timeout=60, interval=1.0, what="yurt monitor printing the registration's log line")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_only_agent_streams_and_is_monitored_through_its_server(agent, api):
    """A client-only agent forwards the event stream to its server. The monitor of a client node (`node_id`, `yurt monitor -node-id`) asked of the server follows
    that node's own agent: when that agent stops, the monitor ends while the server runs on."""
    from .test_client_only import ClientAgent
    client = ClientAgent([f"127.0.0.1:{agent.port}"]).start()
    try:
        node = wait_for(lambda: next((n for n in api.get("/v1/nodes").json() if n["Name"] == "client-only"), None),
                        what="the client-only node registered")
        # a client-only agent answers the event stream through its server
        via_client = Stream(client.url + "/v1/event/stream", [("topic", f"Node:{node['ID']}"), ("index", "1")])
        try:
            got = via_client.frames(lambda f: len(f) >= 1)
        finally:
            via_client.close()
        assert events(got)[0]["Type"] == "NodeRegistration" and events(got)[0]["Key"] == node["ID"]

        stream = Stream(agent.url + "/v1/agent/monitor", [("node_id", node["ID"][:8])])
        try:
            assert stream.status == 200
            assert stream.lines.get(timeout=30) == {}   # the client agent's stream began
            client.stop()
            assert stream.ended.wait(60), "the forwarded monitor did not end with its agent"
            assert api.get("/v1/agent/health").status_code == 200   # while the server runs on
        finally:
            stream.close()
    finally:
        client.close()

    r = api.get("/v1/agent/monitor", params={"node_id": "ffffffff"})
    assert r.status_code == 404 and "ffffffff" in r.text


def test_monitor_refuses_unknown_level(agent, api):
    r = api.get("/v1/agent/monitor", params={"log_level": "loud"})
    assert r.status_code == 400 and "loud" in r.text and "trace, debug, info, warn, error" in r.text
    p = subprocess.run([*YURT, "monitor", "-address", agent.url, "-log-level", "loud"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "loud" in p.stderr and "trace, debug, info, warn, error" in p.stderr


def test_monitor_json_frames(agent, api):
    stream = Stream(agent.url + "/v1/agent/monitor", [("log_json", "true")])
    try:
        def line() -> list[dict]:
            assert api.put("/v1/jobs", json=JOB_DOC).status_code == 200
            return stream.frames(lambda f: len(f) >= 1, timeout=5, fail=False)
        frames = wait_for(line, timeout=60, what="a monitor frame")
    finally:
        stream.close()
    record = json.loads(base64.b64decode(frames[0]["Data"]).decode().splitlines()[0])
    assert {"@level", "@message", "@module", "@timestamp"} <= set(record)


def test_acl_filters_events_per_token(tmp_path):
    conf = tmp_path / "acl.hcl"
    conf.write_text("acl {\n  enabled = true\n}\n")
    with AgentProcess(extra=["-acl-enabled", "-config", str(conf)]) as a, a.api() as c:
        root = {"X-Nomad-Token": re.search(r"ACL Token: ([0-9a-f-]{36})", a.log()).group(1)}
        rules = 'namespace "default" {\n  policy = "read"\n}\n'
        assert c.put("/v1/acl/policy/jobs", json={"Name": "jobs", "Rules": rules}, headers=root).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "jobs", "Policies": ["jobs"]}, headers=root).json()["SecretID"]
        assert c.put("/v1/jobs", json=JOB_DOC, headers=root).status_code == 200

        r = c.get("/v1/event/stream", params={"topic": "Job"})
        assert r.status_code == 403 and r.text.startswith("Permission denied")
        r = c.get("/v1/event/stream", params={"topic": "Node"}, headers={"X-Nomad-Token": tok})
        assert r.status_code == 403 and "node:read" in r.text

        everything = Stream(a.url + "/v1/event/stream", [("index", "1")], {"X-Nomad-Token": tok})
        try:
            got = everything.frames(lambda f: any(e["Type"] == "JobRegistered" for e in events(f)))
        finally:
            everything.close()
        topics = {e["Topic"] for e in events(got)}
        assert "Job" in topics and "Node" not in topics, topics   # the node registered first: not shown


def test_event_broker_settings(tmp_path):
    conf = tmp_path / "agent.hcl"
    conf.write_text("server {\n  enabled = true\n  event_buffer_size = 5\n}\n")
    cfg = load_file(str(conf), AgentConfig(data_dir=tmp_path))
    assert (cfg.enable_event_broker, cfg.event_buffer_size) == (True, 5)
    for body, words in (("event_buffer_size = 0", ("event_buffer_size", "at least 1", "enable_event_broker")),
                        ('enable_event_broker = "maybe"', ("enable_event_broker", "true or false"))):
        conf.write_text(f"server {{\n  enabled = true\n  {body}\n}}\n")
        with pytest.raises(ConfigError) as e:
            load_file(str(conf), AgentConfig(data_dir=tmp_path))
        assert all(w in str(e.value) for w in words), str(e.value)

    conf.write_text("server {\n  enabled = true\n  enable_event_broker = false\n}\n")
    with AgentProcess(extra=["-config", str(conf)]) as a, a.api() as c:
        r = c.get("/v1/event/stream")
        assert r.status_code == 503 and "enable_event_broker = false" in r.text


# -- the buffer itself (in process: no agent needed) ------------------------------------------------

def test_buffer_keeps_the_last_writes_and_says_when_a_reader_fell_behind():
    store = StateStore.temporary()
    store.events = EventBuffer(size=3)
    indexes = [store.upsert_node(mock.node()) for _ in range(5)]
    got = store.events.since(0)
    assert [b.index for b in got.batches] == indexes[-3:]
    assert got.lost, "a reader at index 0 missed two writes the buffer dropped"
    assert not store.events.since(indexes[2]).lost
    assert store.events.start(0) == indexes[2] - 1   # ?index=0: from the oldest still kept
    ev = store.events.since(indexes[-2]).batches[0].events()[0]
    assert (ev.topic, ev.type, ev.index) == ("Node", "NodeRegistration", indexes[-1])
    store.close()


def test_every_server_on_etcd_sees_the_same_events(tmp_path):
    """On etcd the events come from each server's watch: leader and follower buffer the same
    writes, at the same indexes, with the same Types."""
    from yurt.state.etcd_store import EtcdStateStore

    from .etcd_cluster import EtcdCluster
    cluster = EtcdCluster(tmp_path / "etcd", members=1)
    stores: list[EtcdStateStore] = []
    try:
        cluster.wait_healthy(30)
        for name in ("a", "b"):
            s = EtcdStateStore(cluster.endpoints, prefix="/events/", lease_ttl=5)
            s.events = EventBuffer(size=50)
            stores.append(s)
            won = threading.Event()
            s.leadership.join({"Name": name, "HTTPAddr": f"http://{name}:4646"}, won.set, lambda: None)
            if name == "a":
                assert won.wait(15), "the first store did not lead"
        leader, follower = stores
        node = mock.node()
        leader.upsert_node(node)
        job = mock.job("web")
        index, _ = leader.register_job(job, mock.evaluation(job))

        def seen(store: EtcdStateStore) -> list[tuple[int, list[tuple[str, str, str]]]]:
            assert store.events is not None
            return [(b.index, [(e.topic, e.type, e.key) for e in b.events()]) for b in store.events.since(0).batches]
        wait_for(lambda: seen(follower) and seen(follower)[-1][0] == index, what="the follower's watch")
        assert seen(follower) == seen(leader)
        assert (index, [("Job", "JobRegistered", "web")]) == (seen(leader)[-1][0], [
            t for t in seen(leader)[-1][1] if t[0] == "Job"])
        assert ("Node", "NodeRegistration", node.id) in seen(leader)[0][1]
    finally:
        for s in stores:
            s.close()
        cluster.stop()


def test_each_kind_of_write_has_nomads_type():
    """In process, one store: every kind of write the server makes, and the Types its events get
    (built, payloads and all, as a subscriber would read them)."""
    from yurt.structs import AllocDeploymentStatus, Deployment, DesiredTransition, DrainStrategy
    from yurt.structs.catalog import ServiceRegistration
    from yurt.structs.deployment import DeploymentState

    store = StateStore.temporary()
    store.events = EventBuffer(size=100)

    def last(index: int) -> list[tuple[str, str, str]]:
        assert store.events is not None
        batch = store.events.since(index - 1).batches[0]
        assert batch.index == index
        out = [(e.topic, e.type, e.key) for e in batch.events()]
        for e in batch.events():
            json.dumps(e.to_json())   # every payload serializes
        return out

    node = mock.node()
    assert last(store.upsert_node(node)) == [("Node", "NodeRegistration", node.id)]
    job = mock.job("web", groups={"g": 2})
    ev = mock.evaluation(job)
    index, _ = store.register_job(job, ev)
    assert last(index) == [("Job", "JobRegistered", "web"), ("Evaluation", "JobRegistered", ev.id)]
    stored = store.job("default", "web")
    d = Deployment(id=mock.new_id(), job_id="web", namespace="default",
                   task_groups={"g": DeploymentState(desired_canaries=1, desired_total=2)})
    a1, a2 = (mock.alloc(stored, node.id, index=i, deployment_id=d.id) for i in range(2))
    index = store.apply_plan_result([a1, a2], [ev.model_copy(update={"status": "complete"})])
    assert ("Allocation", "PlanResult", a1.id) in last(index) and ("Evaluation", "PlanResult", ev.id) in last(index)
    index = store.upsert_allocs([], [d])
    assert last(index) == [("Deployment", "DeploymentStatusUpdate", d.id)]
    running = store.alloc(a1.id).model_copy(update={"client_status": "running"})
    assert last(store.update_allocs_from_client([running])) == [("Allocation", "AllocationUpdated", a1.id)]
    healthy = AllocDeploymentStatus(healthy=True)
    index = store.update_deployment(d, health={a1.id: healthy})
    assert ("Allocation", "DeploymentAllocHealth", a1.id) in last(index)
    promoted = d.model_copy(update={"task_groups": {"g": DeploymentState(desired_canaries=1, desired_total=2,
                                                                          promoted=True)}})
    index = store.update_deployment(promoted, canaries_promoted=[a1.id])
    assert ("Deployment", "DeploymentPromotion", d.id) in last(index)
    index = store.update_alloc_transitions({a2.id: DesiredTransition(migrate=True)})
    assert last(index) == [("Allocation", "AllocationUpdateDesiredStatus", a2.id)]
    index = store.modify_node(node.id, lambda n, i: {"drain_strategy": DrainStrategy(), "drain": True})
    assert last(index) == [("Node", "NodeDrain", node.id)]
    index = store.update_node_eligibility(node.id, "ineligible")
    assert last(index) == [("Node", "NodeEligibility", node.id)]
    index = store.update_node_status(node.id, "down")
    assert last(index) == [("Node", "NodeStreamEvent", node.id)]
    svc = ServiceRegistration(id="web-1", service="web", node_id=node.id, alloc_id=a1.id, port=80)
    index = store.upsert_services([svc])
    assert last(index) == [("Service", "ServiceRegistration", "web-1")]
    assert store.events.since(index - 1).batches[0].events()[0].filter_keys == ["web", "web"]
    index = store.delete_services([svc.key])
    assert last(index) == [("Service", "ServiceDeregistration", "web-1")]
    index = store.stop_job("default", "web")
    assert last(index) == [("Job", "JobDeregistered", "web")]
    index = store.delete_node(node.id)
    assert last(index) == [("Node", "NodeDeregistration", node.id)]
    index = store.delete_job("default", "web")
    assert last(index) == [("Job", "JobDeregistered", "web")]
    store.close()
