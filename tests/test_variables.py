"""Nomad's variables against a real agent: python-nomad's variables API (put, get, list, prefix,
check-and-set with Nomad's 409 carrying the current variable, delete with cas), bad paths and
sizes, a blocking read woken by a write, the items encrypted at rest with a key outside the
store (readable again after a restart; a clear error naming the key when its file is gone), the
`yurt var` commands with their exit codes, and ACLs: path capabilities in a policy, and a
workload identity reading its own job's variables but not another job's."""

from __future__ import annotations

import json
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import httpx
import nomad
import pytest
from nomad.api.exceptions import BaseNomadException, VariableConflict

from tests.agent_util import AgentProcess, allocs, register, wait_for
from tests.conftest import run_yurt
from tests.test_agent_core import sh_job
from yurt.errors import InvalidInput
from yurt.server.acl import ACL, parse_rules
from yurt.server.variables import Keyring, KeyMissing, Variables, check_path
from yurt.state import StateStore
from yurt.state.keyed import var_key

SECRET = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    data = tmp_path_factory.mktemp("vars") / "data"
    with AgentProcess(data_dir=str(data)) as a:
        yield a


@pytest.fixture(scope="module")
def n(agent) -> nomad.Nomad:
    return nomad.Nomad(host="127.0.0.1", port=agent.port, timeout=30)


def _data(agent) -> Path:
    return Path(agent.data_dir)


def test_put_get_list_with_python_nomad(n):
    out = n.variable.create_variable("app/db", {"Items": {"user": "alice", "password": SECRET}})
    assert out["Path"] == "app/db" and out["Namespace"] == "default"
    assert out["Items"] == {"user": "alice", "password": SECRET}
    assert out["CreateIndex"] == out["ModifyIndex"] > 0 and out["CreateTime"] > 0
    n.variable.create_variable("app/cache", {"Items": {"size": "10"}})
    # a variable lives in a namespace that exists (Nomad refuses a nonexistent one)
    with pytest.raises(nomad.api.exceptions.BadRequestNomadException) as err:
        n.variable.create_variable("other/x", {"Items": {"k": "v"}}, namespace="prod")
    assert 'nonexistent namespace "prod"' in err.value.nomad_resp.text
    n.namespace.create_namespace({"Name": "prod"})
    n.variable.create_variable("other/x", {"Items": {"k": "v"}}, namespace="prod")
    got = n.variable.get_variable("app/db")
    assert got["Items"] == {"user": "alice", "password": SECRET} and got["ModifyIndex"] == out["ModifyIndex"]
    listed = n.variables.get_variables(prefix="app/")
    assert [v["Path"] for v in listed] == ["app/cache", "app/db"]
    assert set(listed[0]) == {"Namespace", "Path", "CreateIndex", "ModifyIndex", "CreateTime", "ModifyTime"}
    assert [v["Path"] for v in n.variables.get_variables()] == ["app/cache", "app/db"]   # default namespace only
    with httpx.Client(base_url=f"http://127.0.0.1:{n.port}", timeout=30) as api:   # Nomad's pagination
        r = api.get("/v1/vars", params={"prefix": "app/", "per_page": 1})
        assert [v["Path"] for v in r.json()] == ["app/cache"] and r.headers["X-Nomad-NextToken"] == "default.app/db"
        r = api.get("/v1/vars", params={"prefix": "app/", "per_page": 1, "next_token": "default.app/db"})
        assert [v["Path"] for v in r.json()] == ["app/db"] and "X-Nomad-NextToken" not in r.headers
    everywhere = n.variables.get_variables(namespace="*")
    assert {(v["Namespace"], v["Path"]) for v in everywhere} >= {("default", "app/db"), ("prod", "other/x")}
    assert n.variable.get_variable("other/x", namespace="prod")["Items"] == {"k": "v"}
    with pytest.raises(BaseNomadException) as e:
        n.variable.get_variable("other/x")   # it is in prod, not default
    assert e.value.nomad_resp.status_code == 404 and "variable not found" in e.value.nomad_resp.text


def test_check_and_set_answers_409_with_the_current_variable(n, agent):
    first = n.variable.create_variable("cas/one", {"Items": {"v": "1"}}, cas=0)
    with pytest.raises(VariableConflict) as e:
        n.variable.create_variable("cas/one", {"Items": {"v": "2"}}, cas=0)   # 0: must not exist
    resp = e.value.nomad_resp
    assert resp.status_code == 409
    current = resp.json()
    assert current["Items"] == {"v": "1"} and current["ModifyIndex"] == first["ModifyIndex"]
    assert resp.headers["X-Nomad-Index"] == str(first["ModifyIndex"])
    second = n.variable.create_variable("cas/one", {"Items": {"v": "2"}}, cas=first["ModifyIndex"])
    assert second["ModifyIndex"] > first["ModifyIndex"] and second["CreateIndex"] == first["CreateIndex"]
    with pytest.raises(VariableConflict):   # a stale index
        n.variable.create_variable("cas/one", {"Items": {"v": "3"}}, cas=first["ModifyIndex"])
    with pytest.raises(VariableConflict) as e:   # a variable that does not exist with an index
        n.variable.create_variable("cas/none", {"Items": {"v": "1"}}, cas=7)
    assert e.value.nomad_resp.json()["ModifyIndex"] == 0
    # delete with cas: a stale index is a 409 with the current, the right one deletes
    with pytest.raises(VariableConflict) as e:
        n.variable.delete_variable("cas/one", cas=first["ModifyIndex"])
    assert e.value.nomad_resp.json()["Items"] == {"v": "2"}
    r = n.variable.delete_variable("cas/one", cas=second["ModifyIndex"])
    assert r.status_code == 204 and int(r.headers["X-Nomad-Index"]) > second["ModifyIndex"]
    with agent.api() as api:
        assert api.get("/v1/var/cas/one").status_code == 404
        # a plain delete of what is not there is fine, as Nomad's
        assert api.delete("/v1/var/cas/one").status_code == 204


@pytest.mark.parametrize("path, needle", [
    ("a/%2E%2E/b", '".." is not allowed'),
    ("app/%2E%2E", '".." is not allowed'),
    ("a b", "only letters, digits and - _ ~ /"),
    ("app/x%21", "only letters, digits and - _ ~ /"),
    ("x" * 129, "at most 128 characters"),
    ("app/x/", 'cannot start or end with "/"'),
    ("nomad", "reserved top-level directory"),
    ("nomad/other", 'only paths at "nomad/jobs"'),
])
def test_a_bad_path_is_refused_naming_the_path_and_the_rule(agent, path, needle):
    with agent.api() as api:
        r = api.put(f"/v1/var/{path}", json={"Items": {"k": "v"}})
    assert r.status_code == 400, r.text
    assert needle in r.text and "path" in r.text


def test_bad_bodies_and_sizes(agent):
    with agent.api() as api:
        big = {"k": "x" * (64 * 1024)}
        r = api.put("/v1/var/too/big", json={"Items": big})
        assert r.status_code == 400 and "64KiB" in r.text and "too/big" in r.text
        r = api.put("/v1/var/empty", json={"Items": {}})
        assert r.status_code == 400 and "Items" in r.text
        r = api.put("/v1/var/typed", json={"Items": {"n": 1}})
        assert r.status_code == 400 and '"n"' in r.text and "string" in r.text
        r = api.put("/v1/var/wild", params={"namespace": "*"}, json={"Items": {"k": "v"}})
        assert r.status_code == 400 and "wildcard" in r.text
        r = api.put("/v1/var/casbad", params={"cas": "x"}, json={"Items": {"k": "v"}})
        assert r.status_code == 400 and "cas" in r.text
        assert api.get("/v1/var/too/big").status_code == 404
        # just under the limit is fine
        ok = {"k": "x" * (64 * 1024 - 1)}
        assert api.put("/v1/var/nearly/big", json={"Items": ok}).status_code == 200


def test_a_blocking_read_is_woken_by_a_write(agent):
    with agent.api() as api:
        api.put("/v1/var/block/me", json={"Items": {"v": "1"}}).raise_for_status()
        r = api.get("/v1/var/block/me")
        index = int(r.headers["X-Nomad-Index"])
        got: list[httpx.Response] = []
        t = threading.Thread(target=lambda: got.append(
            httpx.get(agent.url + "/v1/var/block/me", params={"index": index, "wait": "30s"}, timeout=60)))
        start = time.monotonic()
        t.start()
        time.sleep(0.5)
        assert not got
        api.put("/v1/var/block/me", json={"Items": {"v": "2"}}).raise_for_status()
        t.join(30)
        assert got and time.monotonic() - start < 20
        assert got[0].json()["Items"] == {"v": "2"} and int(got[0].headers["X-Nomad-Index"]) > index
        # the list blocks too
        r = httpx.get(agent.url + "/v1/vars", params={"index": index + 1000, "wait": "1s"}, timeout=30)
        assert r.status_code == 200


def test_items_are_encrypted_at_rest(agent, n):
    n.variable.create_variable("rest/secret", {"Items": {"token": SECRET + "-at-rest"}})
    server = _data(agent) / "server"
    stored = b"".join(p.read_bytes() for p in server.glob("state.db*"))
    assert b"rest/secret" in stored                      # the metadata is in the clear
    assert (SECRET + "-at-rest").encode() not in stored    # the items are not
    keys = list((server / "keystore").glob("*.json"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert all(k.read_bytes() not in stored for k in keys)


def test_a_restart_keeps_variables_readable_and_a_missing_key_is_named(tmp_path):
    data = tmp_path / "data"
    with AgentProcess(data_dir=str(data)) as a:
        with a.api() as api:
            api.put("/v1/var/keep/me", json={"Items": {"v": "kept"}}).raise_for_status()
    with AgentProcess(data_dir=str(data)) as a:   # the same data dir: the same keystore
        with a.api() as api:
            assert api.get("/v1/var/keep/me").json()["Items"] == {"v": "kept"}
    keystore = data / "server" / "keystore"
    (key_file,) = keystore.glob("*.json")
    away = tmp_path / "key-away"
    shutil.move(str(key_file), away)
    with AgentProcess(data_dir=str(data)) as a:
        with a.api() as api:
            r = api.get("/v1/var/keep/me")
            assert r.status_code == 500
            assert key_file.stem in r.text and str(key_file) in r.text and "keystore_dir" in r.text
            shutil.move(str(away), key_file)   # the key back: readable again, no restart needed
            assert api.get("/v1/var/keep/me").json()["Items"] == {"v": "kept"}


def test_a_row_moved_to_another_path_does_not_decrypt(tmp_path):
    store = StateStore(str(tmp_path / "state.db"))
    try:
        v = Variables(store, Keyring(tmp_path / "keystore"))
        v.put("default", "a/one", {"k": "v"})
        row = v.row("default", "a/one")
        assert row is not None and v.items("default", "a/one") == {"k": "v"}
        moved = row.model_copy(update={"path": "a/two"})
        store.keyed_write(lambda txn: txn.put_keyed("variables", var_key("default", "a/two"), moved))
        with pytest.raises(KeyMissing, match="does not decrypt"):
            v.items("default", "a/two")
        with pytest.raises(InvalidInput, match="at most 128"):
            check_path("a" * 129)
    finally:
        store.close()


def test_the_server_reads_items_and_the_keystore_setting(tmp_path):
    from yurt.agent.config import AgentConfig, load_file
    from yurt.server.server import Server
    (tmp_path / "server").mkdir()
    store = StateStore(str(tmp_path / "server" / "state.db"))
    try:
        server = Server(store, num_workers=0)
        server.variables.put("default", "nomad/jobs/web", {"greeting": "hi"})
        assert server.reads.variable("default", "nomad/jobs/web") == {"greeting": "hi"}
        assert server.reads.variable("default", "nomad/jobs/none") is None
        assert list((tmp_path / "server" / "keystore").glob("*.json"))   # next to the store by default
    finally:
        store.close()
    conf = tmp_path / "agent.hcl"
    conf.write_text('server {\n  enabled = true\n  keystore_dir = "/srv/yurt-keys"\n}\n')
    assert load_file(str(conf), AgentConfig()).keystore_dir == "/srv/yurt-keys"


def test_the_var_commands(agent):
    addr = ["-address", agent.url]
    r = run_yurt("var", "put", *addr, "-out", "none", "cli/one", "user=bob", f"pass={SECRET}")
    assert r.returncode == 0 and re.match(r'Created variable "cli/one" with modify index \d+', r.stdout), r.stderr
    r = run_yurt("var", "put", *addr, "cli/one", "user=carol")   # exists: a check-and-set conflict
    assert r.returncode == 1 and "Check-and-Set conflict" in r.stderr and "-force" in r.stderr
    r = run_yurt("var", "put", *addr, "-force", "-out", "json", "cli/one", "user=carol")
    assert r.returncode == 0 and json.loads(r.stdout)["Items"] == {"user": "carol"}
    index = json.loads(r.stdout)["ModifyIndex"]
    r = run_yurt("var", "put", *addr, "-check-index", str(index), "cli/one", "user=dave")
    assert r.returncode == 0, r.stderr
    r = run_yurt("var", "get", *addr, "cli/one")
    assert r.returncode == 0 and json.loads(r.stdout)["Items"] == {"user": "dave"}
    r = run_yurt("var", "get", *addr, "-item", "user", "cli/one")
    assert (r.returncode, r.stdout) == (0, "dave")   # no newline, as Nomad's: ready to pipe
    r = run_yurt("var", "get", *addr, "-item", "nope", "cli/one")
    assert r.returncode == 1 and '"nope"' in r.stderr
    r = run_yurt("var", "get", *addr, "cli/missing")
    assert r.returncode == 1 and "Variable not found" in r.stderr
    spec = json.dumps({"Path": "cli/spec", "Items": {"a": "1"}})
    r = run_yurt("var", "put", *addr, "-", "b=2", input=spec.encode())
    assert r.returncode == 0, r.stderr
    r = run_yurt("var", "get", *addr, "cli/spec")
    assert json.loads(r.stdout)["Items"] == {"a": "1", "b": "2"}
    r = run_yurt("var", "put", *addr, "-namespace", "team", "cli/ns", "k=v")   # no such namespace yet
    assert r.returncode == 1 and 'nonexistent namespace "team"' in r.stderr
    assert run_yurt("namespace", "apply", *addr, "team").returncode == 0
    r = run_yurt("var", "put", *addr, "-namespace", "team", "cli/ns", "k=v")
    assert r.returncode == 0, r.stderr
    r = run_yurt("var", "get", *addr, "-out", "hcl", "cli/spec")   # a specification put reads back
    assert r.returncode == 0 and 'path         = "cli/spec"' in r.stdout and 'b = "2"' in r.stdout
    spec_file = Path(agent.data_dir).parent / "spec.hcl"
    spec_file.write_text(r.stdout)
    r = run_yurt("var", "put", *addr, f"@{spec_file}", "b=3")   # its modify_index is the check index
    assert r.returncode == 0 and json.loads(r.stdout)["Items"] == {"a": "1", "b": "3"}, r.stderr
    r = run_yurt("var", "put", *addr, f"@{spec_file}")           # now stale
    assert r.returncode == 1 and "Check-and-Set conflict" in r.stderr
    r = run_yurt("var", "put", *addr, "cli/from-hcl", f"@{spec_file}")   # a copy to a new path
    assert r.returncode == 0, r.stderr
    assert json.loads(run_yurt("var", "get", *addr, "cli/from-hcl").stdout)["Items"] == {"a": "1", "b": "2"}
    r = run_yurt("var", "list", *addr, "-out", "table", "cli/")
    assert r.returncode == 0 and "cli/one" in r.stdout and "cli/spec" in r.stdout and "cli/ns" not in r.stdout
    r = run_yurt("var", "list", *addr, "-namespace", "*", "-out", "json", "cli/")
    assert {(v["Namespace"], v["Path"]) for v in json.loads(r.stdout)} >= {("team", "cli/ns"), ("default", "cli/one")}
    assert [v["Path"] for v in json.loads(run_yurt("var", "list", *addr, "cli/s").stdout)] == ["cli/spec"]
    r = run_yurt("var", "list", *addr, "-out", "table", "zzz-none")
    assert r.returncode == 0 and "No matching variables found" in r.stdout
    r = run_yurt("var", "put", *addr, "cli/../x", "k=v")
    assert r.returncode == 1 and '".." is not allowed' in r.stderr
    r = run_yurt("var", "purge", *addr, "-check-index", "1", "cli/one")
    assert r.returncode == 1 and "Check-and-Set conflict" in r.stderr
    r = run_yurt("var", "purge", *addr, "cli/one")
    assert r.returncode == 0 and 'Successfully purged variable "cli/one"!' in r.stdout
    assert run_yurt("var", "get", *addr, "cli/one").returncode == 1


# --- ACLs ------------------------------------------------------------------------------------

def test_variables_rules_in_a_policy():
    rules = parse_rules("p", '''
namespace "default" {
  policy = "read"
  variables {
    path "app/*" { capabilities = ["read"] }
    path "app/secret/*" { capabilities = ["deny"] }
    path "team/*" { capabilities = ["write", "list", "destroy"] }
  }
}''')
    acl = ACL(rules)
    assert acl.allow_variable("default", "app/x", "read") and acl.allow_variable("default", "app/x", "list")
    assert not acl.allow_variable("default", "app/x", "write")
    assert not acl.allow_variable("default", "app/secret/x", "read")   # the closer glob denies
    assert acl.allow_variable("default", "team/a", "write") and not acl.allow_variable("default", "team/a", "read")
    assert not acl.allow_variable("prod", "app/x", "read") and not acl.allow_variable("default", "other", "read")
    with pytest.raises(InvalidInput, match="not a variables capability"):
        parse_rules("p", 'namespace "default" {\n  variables {\n    path "*" { capabilities = ["nope"] }\n  }\n}')
    with pytest.raises(InvalidInput, match="leading '/'"):
        parse_rules("p", 'namespace "default" {\n  variables {\n    path "/x" { capabilities = ["read"] }\n  }\n}')


@pytest.fixture(scope="module")
def acl_agent():
    with AgentProcess(extra=["-acl-enabled"]) as a:
        m = re.search(r"ACL Token: ([0-9a-f-]{36})", a.log())
        assert m, a.log()[:2000]
        yield a, m.group(1)


def _h(token: str) -> dict[str, str]:
    return {"X-Nomad-Token": token}


def test_a_policy_grants_variable_paths(acl_agent):
    agent, root = acl_agent
    rules = 'namespace "default" {\n  variables {\n    path "app/*" { capabilities = ["read"] }\n  }\n}\n'
    with agent.api() as c:
        assert c.put("/v1/acl/policy/vars", json={"Name": "vars", "Rules": rules}, headers=_h(root)).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "v", "Policies": ["vars"]}, headers=_h(root)).json()["SecretID"]
        for path in ("app/a", "other/b"):
            c.put(f"/v1/var/{path}", json={"Items": {"k": "v"}}, headers=_h(root)).raise_for_status()
        assert c.get("/v1/var/app/a", headers=_h(tok)).json()["Items"] == {"k": "v"}
        r = c.get("/v1/var/other/b", headers=_h(tok))
        assert r.status_code == 403 and "other/b" in r.text
        r = c.put("/v1/var/app/a", json={"Items": {"k": "w"}}, headers=_h(tok))
        assert r.status_code == 403 and '"write"' in r.text
        assert c.delete("/v1/var/app/a", headers=_h(tok)).status_code == 403
        assert [v["Path"] for v in c.get("/v1/vars", headers=_h(tok)).json()] == ["app/a"]   # only what it may list
        assert c.get("/v1/var/app/a").status_code == 403   # anonymous
        assert c.get("/v1/vars").status_code == 403         # no variables rights at all: refused, not []
        assert c.get("/v1/vars", params={"namespace": "prod"}, headers=_h(tok)).status_code == 403


def test_a_workload_identity_reads_its_own_jobs_variables(acl_agent):
    agent, root = acl_agent
    with agent.api() as c:
        c.headers["X-Nomad-Token"] = root
        c.put("/v1/var/nomad/jobs/wi-reader", json={"Items": {"mine": "yes"}}).raise_for_status()
        c.put("/v1/var/nomad/jobs/wi-reader/g/t", json={"Items": {"task": "yes"}}).raise_for_status()
        c.put("/v1/var/nomad/jobs/someone-else", json={"Items": {"theirs": "no"}}).raise_for_status()
        register(c, sh_job("wi-reader", 'cat "$NOMAD_SECRETS_DIR/nomad_token"', kind="batch"))
        (alloc,) = wait_for(lambda: [a for a in allocs(c, "wi-reader") if a["ClientStatus"] == "complete"],
                            timeout=60, what="the job that prints its token")
        token = c.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "t", "plain": "true"}).text.strip()
    assert token.count(".") == 2
    with httpx.Client(base_url=agent.url, timeout=30, headers=_h(token)) as w:
        assert w.get("/v1/var/nomad/jobs/wi-reader").json()["Items"] == {"mine": "yes"}
        assert w.get("/v1/var/nomad/jobs/wi-reader/g/t").json()["Items"] == {"task": "yes"}
        assert w.get("/v1/var/nomad/jobs/someone-else").status_code == 403
        assert w.put("/v1/var/nomad/jobs/wi-reader", json={"Items": {"k": "v"}}).status_code == 403
        listed = [v["Path"] for v in w.get("/v1/vars", params={"prefix": "nomad/jobs"}).json()]
        assert listed == ["nomad/jobs/wi-reader", "nomad/jobs/wi-reader/g/t"]


def test_servers_on_etcd_sharing_a_keystore_read_each_others_variables(tmp_path):
    from tests.etcd_cluster import EtcdCluster
    from yurt.state.etcd_store import EtcdStateStore
    cluster = EtcdCluster(tmp_path / "etcd", members=1)
    try:
        cluster.wait_healthy(30)
        prefix = f"/vars-{time.monotonic_ns()}/"
        a = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
        won = threading.Event()
        a.leadership.join({"Name": "a", "HTTPAddr": "http://a:4646"}, won.set, lambda: None)
        assert won.wait(15)
        b = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
        try:
            shared = tmp_path / "keystore"
            Variables(a, Keyring(shared)).put("default", "ha/x", {"k": "v"})
            follower = Variables(b, Keyring(shared))
            wait_for(lambda: follower.row("default", "ha/x") is not None, 10, what="the follower to see the write")
            assert follower.items("default", "ha/x") == {"k": "v"}
            with pytest.raises(KeyMissing, match=str(tmp_path / "elsewhere")):   # a server without the key
                Variables(b, Keyring(tmp_path / "elsewhere")).items("default", "ha/x")
        finally:
            a.close()
            b.close()
    finally:
        cluster.stop()


def test_locks_acquire_renew_release_and_only_the_holder_changes_the_variable(agent):
    """Nomad's variable locks: ?lock-acquire (a lock ID in the answer), ?lock-renew and
    ?lock-release with it; only the holder changes or deletes a locked variable."""
    with agent.api() as api:
        url = "/v1/var/locks/a"
        r = api.put(url, params={"lock-acquire": ""}, json={"Items": {"k": "v"}, "Lock": {"TTL": "10s", "LockDelay": "1s"}})
        assert r.status_code == 200, r.text
        lock = r.json()["Lock"]
        assert lock["TTL"] == "10s" and lock["LockDelay"] == "1s" and lock["ID"] and r.json()["Items"] == {"k": "v"}
        other = api.put(url, params={"lock-acquire": ""}, json={})
        assert other.status_code == 409 and other.json() == {"Namespace": "default", "Path": "locks/a"}, other.text
        # only the holder writes or deletes it, and it stays locked
        assert api.put(url, json={"Items": {"k": "w"}}).status_code == 409
        assert api.request("DELETE", url).status_code == 409
        r = api.put(url, json={"Items": {"k": "w"}, "Lock": {"ID": lock["ID"]}})
        assert r.status_code == 200 and r.json()["Items"] == {"k": "w"}, r.text
        got = api.get(url).json()
        assert got["Items"] == {"k": "w"} and got["Lock"]["ID"] == lock["ID"]
        # renew and release need the lock's ID
        assert api.put(url, params={"lock-renew": ""}, json={"Lock": {"ID": "not-it"}}).status_code == 409
        assert api.put(url, params={"lock-renew": ""}, json={"Lock": {"ID": lock["ID"]}}).status_code == 200
        wrong = api.put(url, params={"lock-release": ""}, json={"Lock": {"ID": "not-it"}})
        assert wrong.status_code == 409 and wrong.json()["Lock"] == {}, wrong.text
        r = api.put(url, params={"lock-release": ""}, json={"Lock": {"ID": lock["ID"]}})
        assert r.status_code == 200 and "Lock" not in r.json(), r.text
        got = api.get(url).json()
        assert "Lock" not in got and got["Items"] == {"k": "w"}   # released, the items kept
        assert api.put(url, params={"lock-renew": ""}, json={"Lock": {"ID": lock["ID"]}}).status_code == 409
        # acquiring again without items keeps them; the holder deletes it
        again = api.put(url, params={"lock-acquire": ""}, json={}).json()
        assert again["Items"] == {"k": "w"} and again["Lock"]["TTL"] == "15s" and again["Lock"]["LockDelay"] == "15s"
        assert api.request("DELETE", url, json={"Lock": {"ID": again["Lock"]["ID"]}}).status_code == 204
        assert api.get(url).status_code == 404


@pytest.mark.parametrize("params, body, message", [
    ({"lock-acquire": ""}, {"Lock": {"TTL": "5s"}}, "TTL must be between 10 seconds and 24 hours"),
    ({"lock-acquire": ""}, {"Lock": {"TTL": "ten"}}, "Lock.TTL"),
    ({"lock-acquire": ""}, {"Lock": {"Holder": "me"}}, "Lock.Holder is not a lock field"),
    ({"lock-acquire": "", "lock-release": ""}, {}, "multiple lock operations"),
    ({"lock-acquire": "", "cas": "0"}, {}, "CAS can't be used with lock operations"),
    ({"lock-release": ""}, {"Lock": {"ID": "x"}, "Items": {"a": "b"}}, "doesn't take variable items"),
    ({"lock-release": ""}, {}, "missing lock information"),
    ({}, {"Items": {"a": "b"}, "Lock": {"TTL": "15s"}}, "should not contain lock definition"),
    ({}, {"Items": {"a": "b"}, "Lock": "x"}, "Lock takes only the holder's ID"),
    ({}, {"Items": {"a": "b"}, "Lock": {"Holder": "me"}}, "Lock takes only the holder's ID"),
])
def test_bad_lock_requests_are_400s_naming_the_fix(agent, params, body, message):
    with agent.api() as api:
        r = api.put("/v1/var/locks/bad", params=params, json=body)
        assert r.status_code == 400 and message in r.text, r.text
        assert api.get("/v1/var/locks/bad").status_code == 404   # nothing written


def test_a_lock_not_renewed_is_lost_after_twice_its_ttl_and_its_delay(agent):
    with agent.api() as api:
        url = "/v1/var/locks/lost"
        r = api.put(url, params={"lock-acquire": ""}, json={"Items": {"x": "1"}, "Lock": {"TTL": "10s", "LockDelay": "1s"}})
        assert r.status_code == 200, r.text
        first = r.json()["Lock"]["ID"]
        wait_for(lambda: "Lock" not in api.get(url).json(), timeout=60, what="the lock removed (2 x 10 s + 1 s)")
        assert api.get(url).json()["Items"] == {"x": "1"}
        assert api.put(url, params={"lock-renew": ""}, json={"Lock": {"ID": first}}).status_code == 409
        taken = api.put(url, params={"lock-acquire": ""}, json={})
        assert taken.status_code == 200 and taken.json()["Lock"]["ID"] != first, taken.text
        assert api.put(url, params={"lock-release": ""}, json={"Lock": {"ID": taken.json()["Lock"]["ID"]}}).status_code == 200


def test_with_acls_a_locks_id_shows_only_to_its_holder_and_management(acl_agent):
    agent, root = acl_agent
    rules = ('namespace "default" {\n  variables {\n    path "lk/*" { capabilities = ["read", "list", "write"] }\n'
             '  }\n}\n')
    with agent.api() as c:
        assert c.put("/v1/acl/policy/lk", json={"Name": "lk", "Rules": rules}, headers=_h(root)).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "lk", "Policies": ["lk"]}, headers=_h(root)).json()["SecretID"]
        got = c.put("/v1/var/lk/a", params={"lock-acquire": ""}, json={"Items": {"k": "v"}}, headers=_h(tok))
        assert got.status_code == 200 and got.json()["Lock"]["ID"], got.text   # the holder gets its ID
        lock_id = got.json()["Lock"]["ID"]
        assert "Lock" not in c.get("/v1/var/lk/a", headers=_h(tok)).json()           # a read: not shown
        assert all("Lock" not in v for v in c.get("/v1/vars", headers=_h(tok)).json())
        assert c.get("/v1/var/lk/a", headers=_h(root)).json()["Lock"]["ID"] == lock_id   # management sees it
        assert c.put("/v1/var/other/x", params={"lock-acquire": ""}, json={}, headers=_h(tok)).status_code == 403
        cas = c.put("/v1/var/lk/a", params={"cas": "1"}, json={"Items": {"k": "w"}}, headers=_h(tok))
        assert cas.status_code == 409 and "Lock" not in cas.json(), cas.text   # a CAS conflict hides it too
        r = c.put("/v1/var/lk/a", params={"lock-release": ""}, json={"Lock": {"ID": lock_id}}, headers=_h(tok))
        assert r.status_code == 200, r.text


def test_var_lock_runs_the_command_while_holding_the_lock_and_releases_it(agent, tmp_path):
    import sys
    addr = ("-address", agent.url)
    seen = tmp_path / "seen.json"
    probe = (f"{sys.executable} -c \"import httpx, sys; open('{seen}', 'w').write(httpx.get('{agent.url}"
             f"/v1/var/locks/cli', timeout=10).text); sys.exit(3)\"")
    r = run_yurt("var", "lock", *addr, "-ttl", "10s", "-delay", "1s", "-verbose", "locks/cli", probe, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr   # the command's exit code
    held = json.loads(seen.read_text())
    assert held["Lock"]["TTL"] == "10s" and held["Lock"]["LockDelay"] == "1s"   # locked while it ran
    assert "released" in r.stderr, r.stderr
    with agent.api() as api:
        assert "Lock" not in api.get("/v1/var/locks/cli").json()   # released after
        taken = api.put("/v1/var/locks/cli", params={"lock-acquire": ""}, json={}).json()["Lock"]["ID"]
        r = run_yurt("var", "lock", *addr, "-early-return", "locks/cli", "true")
        assert r.returncode == 1 and "locked by another holder" in r.stderr, r.stdout + r.stderr
        api.put("/v1/var/locks/cli", params={"lock-release": ""}, json={"Lock": {"ID": taken}}).raise_for_status()
    r = run_yurt("var", "lock", *addr, "-ttl", "5s", "locks/cli", "true")
    assert r.returncode == 1 and "TTL must be between 10 seconds and 24 hours" in r.stderr, r.stderr
    r = run_yurt("var", "lock", *addr, "-shell=false", "locks/cli", "/bin/sh", "-c", "exit 4")
    assert r.returncode == 4, r.stdout + r.stderr


def test_a_restarted_server_arms_the_locks_it_holds_again(tmp_path):
    """The lock timers are the leader's, in memory: a server that starts again on its data gives
    every stored lock 2 x its TTL afresh, and one nobody renews is then removed."""
    data_dir = str(tmp_path / "data")
    first = AgentProcess(data_dir=data_dir).start()
    try:
        with first.api() as api:
            r = api.put("/v1/var/locks/restart", params={"lock-acquire": ""},
                        json={"Items": {"a": "1"}, "Lock": {"TTL": "10s", "LockDelay": "0s"}})
            assert r.status_code == 200, r.text
            lock_id = r.json()["Lock"]["ID"]
    finally:
        first.stop()
    second = AgentProcess(data_dir=data_dir, port=first.port).start()
    try:
        with second.api() as api:
            assert api.get("/v1/var/locks/restart").json()["Lock"]["ID"] == lock_id   # still held after the restart
            wait_for(lambda: "Lock" not in api.get("/v1/var/locks/restart").json(), timeout=60,
                     what="the lock removed by the restarted server (2 x 10 s)")
            assert api.get("/v1/var/locks/restart").json()["Items"] == {"a": "1"}
    finally:
        second.stop()


def test_var_lock_in_a_terminal_gives_the_command_the_terminal(tmp_path):
    """Run from a terminal, the command (in a process group of its own) is made the terminal's
    foreground group: it can read what the user types instead of being stopped by SIGTTIN."""
    import os
    import pty
    import select
    import signal
    import sys
    import time
    server = AgentProcess().start()
    status = None
    try:
        pid, fd = pty.fork()
        if pid == 0:   # the child: `yurt var lock` on the terminal
            os.execv(sys.executable, [sys.executable, "-m", "yurt.cli.main", "var", "lock", "-address", server.url,
                                      "locks/tty", "read answer; echo got:$answer"])
        with server.api() as api:
            wait_for(lambda: api.get("/v1/var/locks/tty").status_code == 200, timeout=60, what="the lock taken")
        os.write(fd, b"yurt\n")
        out, deadline = b"", time.monotonic() + 30
        while b"got:yurt" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:   # the terminal closed: the child exited
                    break
        while time.monotonic() < deadline + 10:
            done, exited = os.waitpid(pid, os.WNOHANG)
            if done:
                status = exited
                break
            time.sleep(0.1)
    finally:
        if status is None:   # stopped or hung: stop it, and its command, for good
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        server.stop()
    assert b"got:yurt" in out, out
    assert status is not None and os.waitstatus_to_exitcode(status) == 0


def _lock_then_lose_the_server(path: str, command: str) -> tuple[int, str]:
    """`yurt var lock -max-retry 0 PATH COMMAND` (dash as $SHELL), the server stopped once the
    lock is taken; (its exit code, its output) once it has exited, within a minute."""
    import os
    import subprocess
    import sys
    server = AgentProcess().start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "yurt.cli.main", "var", "lock", "-address", server.url,
                                 "-ttl", "10s", "-max-retry", "0", path, command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "SHELL": "/bin/sh"})
        with server.api() as api:
            wait_for(lambda: api.get(f"/v1/var/{path}").status_code == 200 and
                     "Lock" in api.get(f"/v1/var/{path}").json(), timeout=60, what="the lock taken")
    finally:
        server.stop()
    try:
        out, err = proc.communicate(timeout=60)   # the renewal, every 5 s, fails at once
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out + err


def test_var_lock_kills_a_command_that_ignores_sigterm_after_its_lock_is_lost(tmp_path):
    """A command that ignores SIGTERM is killed once the grace after a lost lock is over (10 s),
    and `var lock` exits 1 (not left running without its lock)."""
    rc, output = _lock_then_lose_the_server("locks/stubborn", "trap '' TERM; sleep 600")
    assert rc == 1 and 'the lock on "locks/stubborn" was lost' in output, output


def test_var_lock_stops_the_command_when_the_lock_cannot_be_renewed(tmp_path):
    """The server gone: with -max-retry 0 the first failed renewal is a lost lock; the command
    is stopped and `var lock` exits 1 saying so. The shell is dash, which does not exec its last
    command: its child `sleep` must be stopped too (it holds the pipes `communicate` waits on)."""
    rc, output = _lock_then_lose_the_server("locks/gone", "sleep 600")
    assert rc == 1 and 'the lock on "locks/gone" was lost' in output, output
