"""Consul's KV store and sessions, driven by py-consul (the maintained Consul client) against a
real `yurt agent -dev`, through the Consul listener (`ports { consul = N }`, where
CONSUL_HTTP_ADDR points), raw HTTP where py-consul does not reach (status codes, ?raw)."""

from __future__ import annotations

import threading
import time

import consul
import httpx
import pytest

from .agent_util import AgentProcess, free_port, wait_for


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    port = free_port()
    conf = tmp_path_factory.mktemp("kv") / "agent.hcl"
    conf.write_text(f"ports {{\n  consul = {port}\n}}\n")
    with AgentProcess(extra=["-config", str(conf)]) as a:
        a.consul_port = port   # type: ignore[attr-defined]
        c = consul.Consul(host="127.0.0.1", port=port)
        # sessions name this agent's node: wait until its client has registered it
        wait_for(lambda: c.catalog.nodes()[1], 60, what="the agent's node in the catalog")
        yield a


@pytest.fixture
def c(agent, monkeypatch) -> consul.Consul:
    """py-consul as its users point it at Consul: CONSUL_HTTP_ADDR."""
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{agent.consul_port}")
    client = consul.Consul()
    assert client.http.base_uri == f"http://127.0.0.1:{agent.consul_port}"
    return client


@pytest.fixture
def api(agent):
    with httpx.Client(base_url=f"http://127.0.0.1:{agent.consul_port}", timeout=30) as client:
        yield client


def _node(c: consul.Consul) -> str:
    return str(c.agent.self()["Config"]["NodeName"])


def test_put_get_recurse_keys_and_delete(c, api):
    assert c.kv.put("app/config/db", "postgres://x") is True
    assert c.kv.put("app/config/cache", b"\x00\x01binary", flags=42) is True
    assert c.kv.put("app/name", "web") is True
    index, entry = c.kv.get("app/config/db")
    assert entry["Value"] == b"postgres://x" and entry["Flags"] == 0 and entry["LockIndex"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"] and int(index) >= entry["ModifyIndex"]
    assert "Session" not in entry
    _, entry = c.kv.get("app/config/cache")
    assert (entry["Value"], entry["Flags"]) == (b"\x00\x01binary", 42)
    # an update keeps CreateIndex, moves ModifyIndex
    created = entry["CreateIndex"]
    assert c.kv.put("app/config/cache", "v2")
    _, entry = c.kv.get("app/config/cache")
    assert entry["CreateIndex"] == created < entry["ModifyIndex"] and entry["Flags"] == 0
    # recurse: every entry under the prefix, by key
    _, entries = c.kv.get("app/", recurse=True)
    assert [e["Key"] for e in entries] == ["app/config/cache", "app/config/db", "app/name"]
    # keys, and keys up to a separator
    _, keys = c.kv.get("app/", keys=True)
    assert keys == ["app/config/cache", "app/config/db", "app/name"]
    _, keys = c.kv.get("app/", keys=True, separator="/")
    assert keys == ["app/config/", "app/name"]
    # ?raw: the bytes themselves
    r = api.get("/v1/kv/app/config/db", params={"raw": ""})
    assert r.status_code == 200 and r.content == b"postgres://x" and r.headers["content-type"].startswith("text/plain")
    # a key with no value: Value null
    assert c.kv.put("app/empty", None)
    assert c.kv.get("app/empty")[1]["Value"] is None
    # missing: 404 with the index, py-consul's None
    index, missing = c.kv.get("app/nope")
    assert missing is None and int(index) > 0
    r = api.get("/v1/kv/app/nope")
    assert r.status_code == 404 and int(r.headers["X-Consul-Index"]) > 0
    assert api.get("/v1/kv/nothing/", params={"keys": ""}).status_code == 404
    # a leading "/" is not part of the key
    assert api.put("/v1/kv//slashed", content=b"s").json() is True
    assert c.kv.get("slashed")[1]["Value"] == b"s"
    # delete one key, then a tree
    assert c.kv.delete("app/name") is True
    assert c.kv.get("app/name")[1] is None
    assert c.kv.delete("app/", recurse=True) is True
    assert c.kv.get("app/", recurse=True)[1] is None
    assert c.kv.delete("slashed")


def test_cas_create_only_update_and_delete(c, api):
    assert c.kv.put("cas/k", "one", cas=0) is True
    assert c.kv.put("cas/k", "again", cas=0) is False          # exists: create-only refuses
    _, e = c.kv.get("cas/k")
    assert e["Value"] == b"one"
    assert c.kv.put("cas/k", "two", cas=e["ModifyIndex"] + 1000) is False   # a CAS conflict
    assert c.kv.put("cas/k", "two", cas=e["ModifyIndex"]) is True
    assert c.kv.put("cas/k", "three", cas=e["ModifyIndex"]) is False        # that index is gone now
    _, e2 = c.kv.get("cas/k")
    assert e2["Value"] == b"two"
    assert c.kv.delete("cas/k", cas=e["ModifyIndex"]) is False
    assert c.kv.get("cas/k")[1] is not None
    assert c.kv.delete("cas/k", cas=e2["ModifyIndex"]) is True
    assert c.kv.get("cas/k")[1] is None
    # bad input: Consul's status codes, a message naming the problem
    r = api.put("/v1/kv/cas/k", params={"cas": "0", "acquire": "x"}, content=b"v")
    assert r.status_code == 400 and "Conflicting flags" in r.text
    r = api.delete("/v1/kv/cas/", params={"recurse": "", "cas": "1"})
    assert r.status_code == 400 and "Conflicting flags" in r.text
    r = api.put("/v1/kv/cas/k", params={"cas": "abc"}, content=b"v")
    assert r.status_code == 400 and "cas" in r.text
    r = api.put("/v1/kv/", content=b"v")
    assert (r.status_code, r.text) == (400, "Missing key name")
    assert api.get("/v1/kv/cas/k").status_code == 404


def test_a_value_over_512_kib_is_refused_with_413(c, api):
    assert c.kv.put("big/ok", b"x" * (512 * 1024)) is True
    r = api.put("/v1/kv/big/too", content=b"x" * (512 * 1024 + 1))
    assert r.status_code == 413
    assert "too large" in r.text and str(512 * 1024) in r.text and "kv_max_value_size" in r.text
    assert c.kv.get("big/too")[1] is None
    with pytest.raises(consul.ConsulException, match="413"):
        c.kv.put("big/too", b"y" * (600 * 1024))
    c.kv.delete("big/", recurse=True)


def test_a_blocking_get_wakes_on_a_put(c):
    c.kv.put("watch/me", "before")
    index, _ = c.kv.get("watch/me")
    got: list = []
    started = time.monotonic()
    t = threading.Thread(target=lambda: got.append(c.kv.get("watch/me", index=index, wait="30s")))
    t.start()
    time.sleep(0.5)
    assert not got   # still waiting
    c.kv.put("watch/me", "after")
    t.join(20)
    assert got, "the blocking query did not return"
    new_index, entry = got[0]
    assert entry["Value"] == b"after" and int(new_index) > int(index)
    assert time.monotonic() - started < 15
    # with nothing changing, the wait runs out at ?wait= and answers the same index
    started = time.monotonic()
    again, _ = c.kv.get("watch/me", index=new_index, wait="1s")
    assert again == new_index and 0.8 < time.monotonic() - started < 10
    c.kv.delete("watch/me")


def test_sessions_create_info_list_node_renew_destroy(c, api):
    node = _node(c)
    sid = c.session.create(name="s1", ttl=30, lock_delay=5)
    _, info = c.session.info(sid)
    assert info["ID"] == sid and info["Name"] == "s1" and info["Node"] == node
    assert info["TTL"] == "30s" and info["Behavior"] == "release" and info["LockDelay"] == 5_000_000_000
    assert info["NodeChecks"] == ["serfHealth"] and info["CreateIndex"] > 0
    _, listed = c.session.list()
    assert sid in [s["ID"] for s in listed]
    _, on_node = c.session.node(node)
    assert sid in [s["ID"] for s in on_node]
    assert c.session.node("no-such-node")[1] == []
    renewed = c.session.renew(sid)
    assert renewed["ID"] == sid
    assert c.session.destroy(sid) is True
    assert c.session.info(sid)[1] is None
    assert api.get(f"/v1/session/info/{sid}").json() == []
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)
    r = api.put(f"/v1/session/renew/{sid}")
    assert (r.status_code, r.text) == (404, f"Session id '{sid}' not found")
    # bad input names the problem, with Consul's messages (Consul answers them 500, an RPC error;
    # Yurt 400: the request is at fault)
    r = api.put("/v1/session/create", json={"TTL": "5s"})
    assert r.status_code == 400 and "Invalid Session TTL '5s'" in r.text
    r = api.put("/v1/session/create", json={"Behavior": "explode"})
    assert r.status_code == 400 and "Invalid Behavior setting 'explode'" in r.text
    r = api.put("/v1/session/create", json={"Node": "ghost"})
    assert r.status_code == 400 and "Missing node registration" in r.text and "ghost" in r.text
    r = api.put("/v1/session/create", json={"NodeChecks": ["nope"]})
    assert r.status_code == 400 and "Missing check 'nope'" in r.text
    r = api.put("/v1/session/create", json={"Bogus": 1})
    assert r.status_code == 400 and "Bogus" in r.text
    for bad in (1.5, ["check-id"], {"ID": "x"}):   # the fuzzer's 1.5 was a 500 (TypeError)
        r = api.put("/v1/session/create", json={"ServiceChecks": bad})
        assert r.status_code == 400 and "ServiceChecks must be a list of objects" in r.text, r.text


def test_acquire_and_release_with_two_sessions(c, api):
    a = c.session.create(name="a", lock_delay=0)
    b = c.session.create(name="b", lock_delay=0)
    try:
        assert c.kv.put("lock/leader", "a", acquire=a) is True
        _, e = c.kv.get("lock/leader")
        assert e["Session"] == a and e["LockIndex"] == 1 and e["Value"] == b"a"
        assert c.kv.put("lock/leader", "b", acquire=b) is False      # held by a
        assert c.kv.put("lock/leader", "a2", acquire=a) is True      # the holder again: LockIndex stays
        _, e = c.kv.get("lock/leader")
        assert (e["Session"], e["LockIndex"], e["Value"]) == (a, 1, b"a2")
        assert c.kv.put("lock/leader", "x", release=b) is False      # b does not hold it
        # a plain put keeps the lock
        assert c.kv.put("lock/leader", "plain") is True
        assert c.kv.get("lock/leader")[1]["Session"] == a
        assert c.kv.put("lock/leader", "released", release=a) is True
        _, e = c.kv.get("lock/leader")
        assert "Session" not in e and e["LockIndex"] == 1
        assert c.kv.put("lock/leader", "b", acquire=b) is True
        _, e = c.kv.get("lock/leader")
        assert (e["Session"], e["LockIndex"]) == (b, 2)
        # destroying b (lock-delay 0) releases its lock: a takes it at once
        assert c.session.destroy(b)
        _, e = c.kv.get("lock/leader")
        assert "Session" not in e and e["LockIndex"] == 2 and e["Value"] == b"b"
        assert c.kv.put("lock/leader", "a", acquire=a) is True
        # acquiring with a session that does not exist: 400 (Consul's 500), naming it
        r = api.put("/v1/kv/lock/other", params={"acquire": "00000000-0000-0000-0000-000000000000"}, content=b"v")
        assert r.status_code == 400 and "invalid session" in r.text
        assert c.kv.get("lock/other")[1] is None
    finally:
        c.session.destroy(a)
        c.session.destroy(b)
        c.kv.delete("lock/", recurse=True)


def test_lock_delay_blocks_reacquiring_after_invalidation(c):
    a = c.session.create(name="holder", lock_delay=2)
    b = c.session.create(name="waiter", lock_delay=0)
    try:
        assert c.kv.put("delay/k", "a", acquire=a)
        assert c.session.destroy(a)
        assert "Session" not in c.kv.get("delay/k")[1]
        destroyed = time.monotonic()
        assert c.kv.put("delay/k", "b", acquire=b) is False   # within a's lock-delay
        wait_for(lambda: c.kv.put("delay/k", "b", acquire=b), 10, interval=0.2, what="the lock-delay to pass")
        assert time.monotonic() - destroyed >= 1.5
        assert c.kv.get("delay/k")[1]["Session"] == b
    finally:
        c.session.destroy(b)
        c.kv.delete("delay/", recurse=True)


def test_behavior_delete_removes_the_keys_its_session_held(c):
    s = c.session.create(name="ephemeral", behavior="delete", lock_delay=0)
    assert c.kv.put("eph/a", "1", acquire=s)
    assert c.kv.put("eph/b", "2", acquire=s)
    assert c.kv.put("eph/keep", "3")
    assert c.session.destroy(s)
    _, keys = c.kv.get("eph/", keys=True)
    assert keys == ["eph/keep"]
    c.kv.delete("eph/", recurse=True)


def test_a_ttl_session_that_is_not_renewed_is_invalidated_and_its_lock_released(c):
    """Consul invalidates a TTL session 2 x TTL after its last renew (TTL at least 10s)."""
    s = c.session.create(name="ttl", ttl=10, lock_delay=0)
    assert c.kv.put("ttl/lock", "held", acquire=s)
    created = time.monotonic()
    time.sleep(12)
    c.session.renew(s)   # a renew after the TTL, within 2 x TTL, keeps it
    renewed = time.monotonic()
    assert c.session.info(s)[1] is not None
    wait_for(lambda: c.session.info(s)[1] is None, 40, interval=0.5, what="the session's TTL to run out")
    assert time.monotonic() - renewed >= 19 and time.monotonic() - created > 25
    _, e = c.kv.get("ttl/lock")
    assert "Session" not in e and e["Value"] == b"held" and e["LockIndex"] == 1
    c.kv.delete("ttl/", recurse=True)


def test_a_session_on_a_critical_service_check_is_invalidated(c):
    assert c.agent.service.register("kvweb", service_id="kvweb-1", port=80, check=consul.Check.ttl("60s"))
    try:
        assert c.agent.check.ttl_pass("service:kvweb-1")
        s = c.session.create(name="on-check", checks=["serfHealth", "service:kvweb-1"], lock_delay=0)
        assert c.session.info(s)[1]["NodeChecks"] == ["serfHealth", "service:kvweb-1"]
        assert c.kv.put("chk/lock", "x", acquire=s)
        assert c.agent.check.ttl_fail("service:kvweb-1")
        wait_for(lambda: c.session.info(s)[1] is None, 20, what="the session to go with its critical check")
        assert "Session" not in c.kv.get("chk/lock")[1]
    finally:
        c.agent.service.deregister("kvweb-1")
        c.kv.delete("chk/", recurse=True)


def test_a_session_on_a_critical_node_level_check_is_invalidated(c):
    """Consul's common lock pattern: a session tied to a node check (no ServiceID)."""
    assert c.agent.check.register("node-alive", check=consul.Check.ttl("60s"))
    try:
        assert c.agent.check.ttl_pass("node-alive")
        s = c.session.create(name="on-node-check", checks=["serfHealth", "node-alive"], lock_delay=0)
        assert c.kv.put("nodechk/lock", "x", acquire=s)
        assert c.agent.check.ttl_fail("node-alive")
        wait_for(lambda: c.session.info(s)[1] is None, 20, what="the session to go with its node's critical check")
        assert "Session" not in c.kv.get("nodechk/lock")[1]
    finally:
        c.agent.check.deregister("node-alive")
        c.kv.delete("nodechk/", recurse=True)


def test_the_nomad_port_serves_kv_too(agent, c):
    assert c.kv.put("both/k", "v")
    other = consul.Consul(host="127.0.0.1", port=agent.port)
    assert other.kv.get("both/k")[1]["Value"] == b"v"
    c.kv.delete("both/k")


# -- the server side alone: invalidation by node health, and the leader's timers -------------------
def _kv_server(path):
    from yurt.server.catalog import Catalog
    from yurt.server.kv import ConsulKV
    from yurt.state import StateStore
    from yurt.structs import Node
    store = StateStore(str(path / "state.db"))
    for i in (1, 2):
        store.upsert_node(Node(id=f"node-{i}", name=f"n{i}", status="ready"))
    return store, ConsulKV(store, Catalog(store), lambda: True)


def test_a_session_goes_when_its_node_goes_down_or_away(tmp_path):
    store, kv = _kv_server(tmp_path)
    try:
        down = kv.create_session({"Name": "on-n1", "LockDelay": 0}, "n1")
        gone = kv.create_session({"Node": "n2", "Behavior": "delete", "LockDelay": "0s"}, "n1")
        fine = kv.create_session({"Checks": []}, "n1")   # no checks: only destroy or a TTL ends it
        assert kv.put("held/by-down", b"v", acquire=down.id) and kv.put("held/by-gone", b"v", acquire=gone.id)
        assert kv.sweep() == []
        store.update_node_status("node-1", "down", "missed heartbeats")
        assert kv.sweep() == [down.id]
        e = store.keyed_get("kv", "held/by-down")
        assert e is not None and e.session == "" and e.lock_index == 1
        store.delete_node("node-2")
        assert kv.sweep() == [gone.id]
        assert store.keyed_get("kv", "held/by-gone") is None          # behavior delete
        assert [s.id for _, s in store.keyed_list("sessions")] == [fine.id]
        # a down node takes no new sessions on its serfHealth
        with pytest.raises(Exception, match="Check 'serfHealth' is in critical state"):
            kv.create_session({}, "n1")
        # a server agent that is no client node is a node too, while it is a live server
        servers = [("srv1", "10.0.0.1")]
        kv.catalog.servers = lambda: list(servers)
        on_server = kv.create_session({"Node": "srv1"}, "n1")
        assert kv.sweep() == []
        servers.clear()
        assert kv.sweep() == [on_server.id]
    finally:
        store.close()


def test_a_new_leader_gives_every_ttl_session_two_ttls_afresh(tmp_path):
    store, kv = _kv_server(tmp_path)
    try:
        with_ttl = kv.create_session({"TTL": "15s"}, "n1")
        kv.create_session({}, "n1")   # no TTL: no timer
        kv.lead()
        try:
            deadlines = dict(kv.ttls._deadlines)
            assert list(deadlines) == [with_ttl.id]
            assert 25 < deadlines[with_ttl.id] - time.monotonic() <= 30
        finally:
            kv.step_down()
    finally:
        store.close()


def test_cas_locks_and_invalidation_on_etcd(tmp_path):
    """The same writes on etcd (HA): the checks run inside the write, the indexes are the commit's."""
    from tests.etcd_cluster import EtcdCluster
    from yurt.server.catalog import Catalog
    from yurt.server.kv import ConsulKV
    from yurt.state.etcd_store import EtcdStateStore
    from yurt.structs import Node
    cluster = EtcdCluster(tmp_path / "etcd", members=1)
    try:
        cluster.wait_healthy(30)
        store = EtcdStateStore(cluster.endpoints, prefix=f"/kv-{time.monotonic_ns()}/", lease_ttl=5)
        won = threading.Event()
        store.leadership.join({"Name": "a", "HTTPAddr": "http://a:4646"}, won.set, lambda: None)
        assert won.wait(15)
        try:
            store.upsert_node(Node(id="node-1", name="n1", status="ready"))
            kv = ConsulKV(store, Catalog(store), lambda: True)
            assert kv.put("k", b"one", cas=0) and not kv.put("k", b"two", cas=0)
            e = store.keyed_get("kv", "k")
            assert e.create_index == e.modify_index == store.table_index("kv") > 0
            assert not kv.put("k", b"two", cas=e.modify_index + 1) and kv.put("k", b"two", cas=e.modify_index)
            a = kv.create_session({"LockDelay": 0}, "n1")
            b = kv.create_session({"LockDelay": 0}, "n1")
            assert a.create_index > 0 and kv.put("k", b"a", acquire=a.id) and not kv.put("k", b"b", acquire=b.id)
            assert store.keyed_get("kv", "k").lock_index == 1
            assert kv.invalidate(a.id) and not kv.invalidate(a.id)
            e = store.keyed_get("kv", "k")
            assert (e.session, e.lock_index) == ("", 1)
            assert kv.put("k", b"b", acquire=b.id) and store.keyed_get("kv", "k").lock_index == 2
            assert not kv.delete("k", cas=1) and kv.delete("k")
            assert store.keyed_get("kv", "k") is None
        finally:
            store.close()
    finally:
        cluster.stop()


def test_a_client_only_agent_forwards_kv_and_its_sessions_name_its_node(agent):
    from tests.test_client_only import ClientAgent
    client = ClientAgent([f"127.0.0.1:{agent.port}"])
    client.start()
    try:
        c = consul.Consul(host="127.0.0.1", port=client.port)
        wait_for(lambda: "client-only" in [n["Node"] for n in c.catalog.nodes()[1]], 60,
                 what="the client-only node registered")
        assert c.kv.put("via-client/k", "v") is True
        assert c.kv.get("via-client/k")[1]["Value"] == b"v"
        sid = c.session.create(name="from-client", lock_delay=0)
        assert c.session.info(sid)[1]["Node"] == "client-only"   # this agent's node, not the server's
        assert c.kv.put("via-client/k", "locked", acquire=sid) is True
        assert c.session.destroy(sid) is True
        assert "Session" not in c.kv.get("via-client/k")[1]
        assert c.kv.delete("via-client/", recurse=True)
    finally:
        client.close()


def test_with_acls_kv_and_sessions_need_operator_read_and_write(tmp_path):
    import re
    conf = tmp_path / "acl.hcl"
    conf.write_text('acl {\n  enabled = true\n}\n')
    with AgentProcess(extra=["-acl-enabled", "-config", str(conf)]) as a:
        m = re.search(r"ACL Token: ([0-9a-f-]{36})", a.log())
        assert m, a.log()[:2000]
        root = consul.Consul(host="127.0.0.1", port=a.port, token=m.group(1))
        with a.api() as api:
            pol = {"Name": "kvread", "Rules": 'operator {\n  policy = "read"\n}\n'}
            assert api.put("/v1/acl/policy/kvread", json=pol, headers={"X-Nomad-Token": m.group(1)}).status_code == 200
            tok = api.put("/v1/acl/token", json={"Name": "kv", "Policies": ["kvread"]},
                          headers={"X-Nomad-Token": m.group(1)}).json()["SecretID"]
        reader = consul.Consul(host="127.0.0.1", port=a.port, token=tok)
        anonymous = consul.Consul(host="127.0.0.1", port=a.port)
        assert root.kv.put("acl/k", "v") is True
        assert reader.kv.get("acl/k")[1]["Value"] == b"v"
        with pytest.raises(consul.ACLPermissionDenied, match="operator:write"):
            reader.kv.put("acl/k", "w")
        with pytest.raises(consul.ACLPermissionDenied, match="operator:write"):
            reader.session.create()
        with pytest.raises(consul.ACLPermissionDenied, match="operator:read"):
            anonymous.kv.get("acl/k")
        assert reader.session.list()[1] == []
        assert root.kv.get("acl/k")[1]["Value"] == b"v"


def test_key_and_session_rules_decide_per_key_and_node_and_lists_are_filtered(tmp_path):
    """Consul's key, key_prefix (list, read, write, deny) and session, session_prefix rules: the
    exact key rule, else the longest prefix rule, else operator; a recursive read and a key
    listing show only what the token may see; a tree delete needs write on all of it."""
    import re
    conf = tmp_path / "acl.hcl"
    conf.write_text('acl {\n  enabled = true\n}\n')
    rules = ('key_prefix "" {\n  policy = "list"\n}\n'
             'key_prefix "app/" {\n  policy = "write"\n}\n'
             'key "app/secret" {\n  policy = "deny"\n}\n'
             'key_prefix "app/ro/" {\n  policy = "read"\n}\n'
             'session_prefix "" {\n  policy = "read"\n}\n'
             'session "web-node" {\n  policy = "write"\n}\n')
    with AgentProcess(extra=["-acl-enabled", "-config", str(conf)]) as a:
        m = re.search(r"ACL Token: ([0-9a-f-]{36})", a.log())
        assert m, a.log()[:2000]
        root = consul.Consul(host="127.0.0.1", port=a.port, token=m.group(1))
        with a.api() as api:
            mgmt = {"X-Nomad-Token": m.group(1)}
            assert api.put("/v1/acl/policy/app", json={"Name": "app", "Rules": rules}, headers=mgmt).status_code == 200
            tok = api.put("/v1/acl/token", json={"Name": "app", "Policies": ["app"]}, headers=mgmt).json()["SecretID"]
            other = 'session "elsewhere" {\n  policy = "read"\n}\n'
            assert api.put("/v1/acl/policy/other", json={"Name": "other", "Rules": other}, headers=mgmt).status_code == 200
            tok2 = api.put("/v1/acl/token", json={"Name": "o", "Policies": ["other"]}, headers=mgmt).json()["SecretID"]
            bad = api.put("/v1/acl/policy/bad", json={"Name": "bad", "Rules": 'session "n" {\n  policy = "list"\n}\n'},
                          headers=mgmt)
            assert bad.status_code == 400 and '"list" is not a policy' in bad.text, bad.text
        app = consul.Consul(host="127.0.0.1", port=a.port, token=tok)
        for key in ("app/a", "app/secret", "app/ro/x", "other/x"):
            assert root.kv.put(key, "v-" + key) is True
        # writes: the longest prefix rule, an exact key rule over it
        assert app.kv.put("app/a", "mine") is True
        with pytest.raises(consul.ACLPermissionDenied, match='key "other/x" write'):
            app.kv.put("other/x", "no")
        with pytest.raises(consul.ACLPermissionDenied, match='key "app/ro/x" write'):
            app.kv.put("app/ro/x", "no")
        # reads: list is not read; an exact deny beats its prefix's write
        assert app.kv.get("app/ro/x")[1]["Value"] == b"v-app/ro/x"
        with pytest.raises(consul.ACLPermissionDenied, match='key "other/x" read'):
            app.kv.get("other/x")
        with pytest.raises(consul.ACLPermissionDenied, match='key "app/secret" read'):
            app.kv.get("app/secret")
        # lists: filtered by what the token may see
        assert [e["Key"] for e in app.kv.get("app/", recurse=True)[1]] == ["app/a", "app/ro/x"]
        assert app.kv.get("", keys=True)[1] == ["app/a", "app/ro/x", "other/x"]
        with pytest.raises(consul.ACLPermissionDenied, match='key_prefix "other/" read'):
            app.kv.get("other/", recurse=True)   # nothing under it could be read: refused, not filtered
        assert app.kv.get("app/ro/none/", recurse=True)[1] is None   # could be: nothing there is a 404
        assert sorted(e["Key"] for e in root.kv.get("", recurse=True)[1]) == ["app/a", "app/ro/x", "app/secret", "other/x"]
        # a tree delete: refused while a rule under it gives less, and nothing is deleted
        with pytest.raises(consul.ACLPermissionDenied, match='every key under "app/"'):
            app.kv.delete("app/", recurse=True)
        assert root.kv.get("app/a")[1]["Value"] == b"mine"
        assert app.kv.delete("app/a") is True
        assert root.kv.get("app/a")[1] is None
        # sessions: write on the session's node, lists filtered by read
        with pytest.raises(consul.ACLPermissionDenied, match='session "other-node" write'):
            app.session.create(node="other-node")
        assert root.kv.get("app/ro/x")[1]["Value"] == b"v-app/ro/x"
        anonymous = consul.Consul(host="127.0.0.1", port=a.port)
        with pytest.raises(consul.ACLPermissionDenied, match="key list or read on some key"):
            anonymous.kv.get("", keys=True)
        with pytest.raises(consul.ACLPermissionDenied, match="session read on some node"):
            anonymous.session.list()
        assert app.session.list()[1] == []
        sid = root.session.create(name="root's", lock_delay=0)   # on the agent's own node
        node = root.session.info(sid)[1]["Node"]
        assert [s["ID"] for s in app.session.list()[1]] == [sid]   # session_prefix "" read
        elsewhere = consul.Consul(host="127.0.0.1", port=a.port, token=tok2)
        assert elsewhere.session.list()[1] == [] and elsewhere.session.info(sid)[1] is None   # filtered
        with pytest.raises(consul.ACLPermissionDenied, match=f'session "{node}" write'):
            app.session.destroy(sid)
        assert root.session.info(sid)[1]["ID"] == sid   # refused: nothing destroyed
        assert root.session.destroy(sid) is True


def test_key_rules_exact_prefix_operator_and_merged_policies():
    from yurt.server.acl import ACL, parse_rules
    r = parse_rules("a", 'operator {\n  policy = "read"\n}\nkey_prefix "a/" {\n  policy = "write"\n}\n'
                         'key_prefix "a/b/" {\n  policy = "list"\n}\nkey "a/b/c" {\n  policy = "read"\n}\n'
                         'session_prefix "web" {\n  policy = "write"\n}\n')
    acl = ACL(r)
    assert acl.allow_key("a/x", "write") and not acl.allow_key("z", "write") and acl.allow_key("z", "read")
    assert acl.allow_key("a/b/d", "list") and not acl.allow_key("a/b/d", "read")   # the longest prefix
    assert acl.allow_key("a/b/c", "read") and not acl.allow_key("a/b/c", "write")  # the exact key
    assert not acl.allow_key_tree("a/") and acl.allow_key_tree("a/x/") and not acl.allow_key_tree("")
    assert acl.allow_session("web-1", "write") and acl.allow_session("db", "read") and not acl.allow_session("db", "write")
    assert acl.may_use("key", "write") and acl.may_use("session", "write")
    r.merge(parse_rules("b", 'key_prefix "a/" {\n  policy = "deny"\n}\n'))
    assert not ACL(r).allow_key("a/x", "list")   # deny wins a merge
    assert ACL(parse_rules("c", 'key "k" {\n  policy = "write"\n}\n')).may_use("key", "write")
    assert not ACL(parse_rules("d", 'node {\n  policy = "write"\n}\n')).may_use("key", "list")
    under = ACL(parse_rules("e", 'key_prefix "" {\n  policy = "deny"\n}\nkey "a/b/c" {\n  policy = "read"\n}\n'
                                 'key_prefix "x/" {\n  policy = "list"\n}\n'))
    assert under.may_see_under("a/", "read") and under.may_see_under("a/b/c", "read")   # a rule under it
    assert not under.may_see_under("b/", "list") and not under.may_see_under("a/b/d", "read")
    assert under.may_see_under("x/y/", "list") and not under.may_see_under("x/y/", "read")   # the prefix rule
