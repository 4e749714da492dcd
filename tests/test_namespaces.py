"""Nomad's namespaces against a real agent: python-nomad's namespace API (create, list, read,
update, delete, bad input), jobs isolated per namespace (one ID in two namespaces is two jobs,
lists are per namespace, `*` is every one), a job in a nonexistent namespace refused, a
namespace with live jobs kept until they are purged; the CLI's `yurt namespace ...` and
`-namespace` / $NOMAD_NAMESPACE on the job commands; and ACLs: a token sees the namespaces it
has a capability in, writes need management."""

from __future__ import annotations

import json
import re
import threading

import httpx
import nomad
import pytest

from tests.agent_util import AgentProcess, register, wait_for
from tests.conftest import run_yurt
from tests.test_agent_core import sh_job


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


@pytest.fixture
def api(agent):
    with agent.api() as c:
        yield c


def _nomad(agent, namespace: str | None = None) -> nomad.Nomad:
    return nomad.Nomad(host="127.0.0.1", port=agent.port, timeout=10, namespace=namespace)


def _running(api: httpx.Client, job_id: str, namespace: str) -> list[dict]:
    allocs = api.get(f"/v1/job/{job_id}/allocations", params={"namespace": namespace}).json()
    return [a for a in allocs if a["ClientStatus"] == "running"]


def test_python_nomad_creates_lists_reads_updates_and_deletes_namespaces(agent, api):
    n = _nomad(agent)
    default = n.namespace.get_namespace("default")
    assert default["Name"] == "default" and default["Description"] == "Default shared namespace"
    assert "default" in n.namespaces
    n.namespace.create_namespace({"Name": "prod", "Description": "Production", "Meta": {"owner": "ops"},
                                  "Hash": "ignored", "CreateIndex": 99})
    got = n.namespace.get_namespace("prod")
    assert (got["Name"], got["Description"], got["Meta"]) == ("prod", "Production", {"owner": "ops"})
    assert got["CreateIndex"] == got["ModifyIndex"] > 1
    names = [ns["Name"] for ns in n.namespaces.get_namespaces()]
    assert names == sorted(names) and {"default", "prod"} <= set(names)
    assert [ns["Name"] for ns in n.namespaces.get_namespaces(prefix="pr")] == ["prod"]
    n.namespace.update_namespace("prod", {"Name": "prod", "Description": "Production (eu)"})
    again = n.namespace.get_namespace("prod")
    assert again["Description"] == "Production (eu)" and again["CreateIndex"] == got["CreateIndex"]
    assert again["ModifyIndex"] > got["ModifyIndex"]
    # bad input: Nomad's words, the name named
    with pytest.raises(nomad.api.exceptions.BadRequestNomadException) as e:
        n.namespace.create_namespace({"Name": "bad name!"})
    assert 'Invalid namespace "bad name!": invalid name "bad name!". Must match regex ^[a-zA-Z0-9-]{1,128}$' \
        in e.value.nomad_resp.text
    with pytest.raises(nomad.api.exceptions.BadRequestNomadException) as e:
        n.namespace.update_namespace("prod", {"Name": "staging"})
    assert "Namespace name does not match request path" in e.value.nomad_resp.text
    with pytest.raises(nomad.api.exceptions.BadRequestNomadException) as e:
        n.namespace.create_namespace({"Name": "x", "Meta": {"n": 3}})
    assert "Meta must be an object of strings" in e.value.nomad_resp.text
    with pytest.raises(nomad.api.exceptions.URLNotFoundNomadException) as e:
        n.namespace.get_namespace("nope")
    assert e.value.nomad_resp.text == "Namespace not found"
    assert "nope" not in n.namespace
    with pytest.raises(nomad.api.exceptions.BadRequestNomadException) as e:
        n.namespace.delete_namespace("default")
    assert "can not delete default namespace" in e.value.nomad_resp.text
    # a blocking query on the namespaces wakes for a namespace write
    r = api.get("/v1/namespaces")
    index = int(r.headers["X-Nomad-Index"])
    woke: list[httpx.Response] = []
    t = threading.Thread(target=lambda: woke.append(
        httpx.get(agent.url + "/v1/namespaces", params={"index": index, "wait": "20s"}, timeout=30)))
    t.start()
    n.namespace.create_namespace({"Name": "blocking"})
    t.join(30)
    assert woke and int(woke[0].headers["X-Nomad-Index"]) > index
    assert "blocking" in [ns["Name"] for ns in woke[0].json()]
    n.namespace.delete_namespace("blocking")
    n.namespace.delete_namespace("blocking")   # deleting what is gone succeeds, as Nomad's
    assert "blocking" not in n.namespaces
    # the OpenAPI description declares the body
    doc = api.get("/openapi.json").json()
    assert doc["paths"]["/v1/namespace/{name}"]["put"]["requestBody"]["content"]["application/json"]


def test_jobs_are_isolated_per_namespace(agent, api):
    n = _nomad(agent)
    n.namespace.create_namespace({"Name": "iso"})
    iso = _nomad(agent, namespace="iso")
    register(api, sh_job("twin", "exec sleep 600"))
    from yurt.jobspec import load
    doc = load(sh_job("twin", "exec sleep 600"), "job.nomad").job.to_document()
    iso.jobs.register_job(doc)   # python-nomad sends ?namespace=iso: the job goes there
    iso.jobs.register_job(load(sh_job("only-iso", "exec sleep 600"), "job.nomad").job.to_document())
    (a_default,) = wait_for(lambda: _running(api, "twin", "default"), what="twin running in default")
    (a_iso,) = wait_for(lambda: _running(api, "twin", "iso"), what="twin running in iso")
    assert a_default["ID"] != a_iso["ID"] and a_iso["Namespace"] == "iso"
    # lists are per namespace: default without ?namespace=, every one with *
    assert [(j["ID"], j["Namespace"]) for j in n.jobs.get_jobs()] == [("twin", "default")]
    assert sorted(j["ID"] for j in iso.jobs.get_jobs()) == ["only-iso", "twin"]
    every = n.jobs.get_jobs(namespace="*")
    assert {(j["ID"], j["Namespace"]) for j in every} >= {("twin", "default"), ("twin", "iso"), ("only-iso", "iso")}
    assert {a["Namespace"] for a in api.get("/v1/allocations").json()} == {"default"}
    assert {a["Namespace"] for a in api.get("/v1/allocations", params={"namespace": "iso"}).json()} == {"iso"}
    assert {a["Namespace"] for a in api.get("/v1/allocations", params={"namespace": "*"}).json()} == {"default", "iso"}
    assert {e["Namespace"] for e in api.get("/v1/evaluations").json()} == {"default"}
    assert {e["Namespace"] for e in api.get("/v1/evaluations", params={"namespace": "*"}).json()} == {"default", "iso"}
    assert {d["Namespace"] for d in api.get("/v1/deployments", params={"namespace": "iso"}).json()} <= {"iso"}
    # the same ID read in each namespace is each namespace's job; the wrong namespace is 404
    assert iso.job.get_job("twin")["Namespace"] == "iso" and n.job.get_job("twin")["Namespace"] == "default"
    assert api.get("/v1/job/only-iso").status_code == 404
    assert api.get("/v1/job/only-iso", params={"namespace": "iso"}).status_code == 200
    search = api.post("/v1/search", json={"Prefix": "only", "Context": "jobs"}).json()
    assert search["Matches"]["jobs"] == []
    search = api.post("/v1/search", params={"namespace": "iso"}, json={"Prefix": "only", "Context": "jobs"}).json()
    assert search["Matches"]["jobs"] == ["only-iso"]
    found = api.post("/v1/search", json={"Prefix": "is", "Context": "namespaces"}).json()
    assert found["Matches"]["namespaces"] == ["iso"]
    # a job in a namespace that does not exist is refused, naming it
    r = api.put("/v1/jobs", params={"namespace": "nope"}, json=doc)
    assert r.status_code == 400 and 'job "twin" is in nonexistent namespace "nope"' in r.text
    r = api.put("/v1/jobs", json={"Job": {**doc["Job"], "Namespace": "ghost"}})
    assert r.status_code == 400 and 'nonexistent namespace "ghost"' in r.text
    assert api.get("/v1/job/twin", params={"namespace": "ghost"}).status_code == 404
    # a namespace with live jobs stays; once they are purged it may go
    r = api.delete("/v1/namespace/iso")
    assert r.status_code == 400 and 'namespace "iso" has non-terminal jobs in regions: [global]' in r.text
    iso.job.deregister_job("twin", purge=True)
    iso.job.deregister_job("only-iso", purge=True)
    assert _running(api, "twin", "default")   # the other namespace's twin is untouched
    wait_for(lambda: api.delete("/v1/namespace/iso").status_code == 200, 60,
             what="the namespace deletable once its allocations stopped")
    assert "iso" not in n.namespaces
    api.delete("/v1/job/twin", params={"purge": "true"})


JOB = '''job "cli-job" {
  group "g" {
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
'''


def test_cli_namespace_commands_and_namespace_flag(agent, api, tmp_path):
    env = {"YURT_ADDR": agent.url, "NOMAD_ADDR": "", "NOMAD_NAMESPACE": "", "YURT_NAMESPACE": ""}
    res = run_yurt("namespace", "apply", "-description", "Staging area", "-meta", "owner=team-a", "staging", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 'Successfully applied namespace "staging"!'
    spec = tmp_path / "qa.hcl"
    spec.write_text('name = "qa"\ndescription = "Quality"\nmeta {\n  tier = "2"\n}\n'
                    'capabilities {\n  enabled_task_drivers = ["docker"]\n}\n')
    res = run_yurt("namespace", "apply", str(spec), env=env)
    assert res.returncode == 0 and 'Successfully applied namespace "qa"!' in res.stdout, res.stderr
    res = run_yurt("namespace", "list", env=env)
    assert res.returncode == 0, res.stderr
    assert re.search(r"staging\s+Staging area", res.stdout) and re.search(r"qa\s+Quality", res.stdout)
    assert re.search(r"default\s+Default shared namespace", res.stdout)
    listed = json.loads(run_yurt("namespace", "list", "-json", env=env).stdout)
    assert {"default", "qa", "staging"} <= {ns["Name"] for ns in listed}
    res = run_yurt("namespace", "status", "stag", env=env)   # a unique prefix
    assert res.returncode == 0, res.stderr
    assert re.search(r"Name\s+= staging", res.stdout) and re.search(r"Description\s+= Staging area", res.stdout)
    assert "Metadata" in res.stdout and re.search(r"owner\s+= team-a", res.stdout)
    res = run_yurt("namespace", "status", "qa", env=env)
    assert re.search(r"Enabled Drivers\s+= docker", res.stdout), res.stdout
    inspected = json.loads(run_yurt("namespace", "inspect", "qa", env=env).stdout)
    assert inspected["Meta"] == {"tier": "2"} and inspected["Capabilities"]["EnabledTaskDrivers"] == ["docker"]
    res = run_yurt("namespace", "status", "zzz", env=env)
    assert res.returncode == 1 and 'Namespace "zzz" matched no namespaces' in res.stderr
    # the namespace's capabilities are enforced: qa takes docker tasks only
    job_file = tmp_path / "job.nomad"
    job_file.write_text(JOB)
    res = run_yurt("job", "run", "-detach", "-namespace", "qa", str(job_file), env=env)
    assert res.returncode == 1 and 'used task driver "raw_exec" is not allowed in namespace "qa"' in res.stderr
    # -namespace on job run / status / stop; $NOMAD_NAMESPACE as well
    res = run_yurt("job", "run", "-detach", "-namespace", "nowhere", str(job_file), env=env)
    assert res.returncode == 1 and 'nonexistent namespace "nowhere"' in res.stderr
    res = run_yurt("job", "run", "-detach", "-namespace", "staging", str(job_file), env=env)
    assert res.returncode == 0 and "Job registration successful" in res.stdout, res.stderr
    wait_for(lambda: _running(api, "cli-job", "staging"), what="cli-job running in staging")
    assert api.get("/v1/job/cli-job").status_code == 404
    res = run_yurt("job", "status", "-namespace", "staging", env=env)
    assert res.returncode == 0 and re.search(r"cli-job\s+service", res.stdout), res.stdout
    res = run_yurt("job", "status", env=env)
    assert "cli-job" not in res.stdout
    res = run_yurt("job", "status", "cli-job", env={**env, "NOMAD_NAMESPACE": "staging"})
    assert res.returncode == 0 and re.search(r"Namespace\s+= staging", res.stdout), res.stderr
    res = run_yurt("job", "status", "-namespace", "*", env=env)
    assert re.search(r"cli-job\s+staging\s+service", res.stdout), res.stdout
    res = run_yurt("job", "status", "-namespace", "*", "cli-job", env=env)   # found in its namespace
    assert res.returncode == 0 and re.search(r"Namespace\s+= staging", res.stdout), res.stderr
    res = run_yurt("job", "status", "cli-job", env=env)
    assert res.returncode == 1 and 'No job(s) with prefix or ID "cli-job" found' in res.stderr
    # delete refused while the job lives there
    res = run_yurt("namespace", "delete", "staging", env=env)
    assert res.returncode == 1 and 'namespace "staging" has non-terminal jobs' in res.stderr
    res = run_yurt("job", "stop", "-detach", "-purge", "-namespace", "staging", "cli-job", env=env)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: run_yurt("namespace", "delete", "staging", env=env).returncode == 0, 60,
             what="staging deletable after the purge")
    assert "staging" not in [ns["Name"] for ns in api.get("/v1/namespaces").json()]
    res = run_yurt("namespace", "delete", "default", env=env)
    assert res.returncode == 1 and "can not delete default namespace" in res.stderr
    assert run_yurt("namespace", "delete", "qa", env=env).returncode == 0


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory):
    d = tmp_path_factory.mktemp("acl")
    (d / "acl.hcl").write_text('acl {\n  enabled = true\n}\n')
    with AgentProcess(extra=["-acl-enabled", "-config", str(d / "acl.hcl")]) as a:
        yield a


def test_acl_a_token_sees_its_namespaces_and_only_management_writes(acl_agent):
    m = re.search(r"ACL Token: ([0-9a-f-]{36})", acl_agent.log())
    assert m, acl_agent.log()[:2000]
    root = {"X-Nomad-Token": m.group(1)}
    with acl_agent.api() as c:
        for name in ("team-a", "team-b"):
            assert c.put(f"/v1/namespace/{name}", json={"Name": name}, headers=root).status_code == 200
        rules = 'namespace "team-a" {\n  policy = "read"\n}\n'
        assert c.put("/v1/acl/policy/a", json={"Name": "a", "Rules": rules}, headers=root).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "a", "Policies": ["a"]}, headers=root).json()
        mine = {"X-Nomad-Token": tok["SecretID"]}
        assert [ns["Name"] for ns in c.get("/v1/namespaces", headers=mine).json()] == ["team-a"]
        assert {"default", "team-a", "team-b"} <= {ns["Name"] for ns in c.get("/v1/namespaces", headers=root).json()}
        assert c.get("/v1/namespace/team-a", headers=mine).status_code == 200
        r = c.get("/v1/namespaces")   # the anonymous token has no capability anywhere
        assert r.status_code == 403 and "a capability in some namespace" in r.text
        r = c.get("/v1/namespace/team-b", headers=mine)
        assert r.status_code == 403 and 'a capability in namespace "team-b"' in r.text
        r = c.put("/v1/namespace/team-c", json={"Name": "team-c"}, headers=mine)
        assert r.status_code == 403 and "management token" in r.text
        assert c.delete("/v1/namespace/team-a", headers=mine).status_code == 403
        assert c.delete("/v1/namespace/team-b", headers=root).status_code == 200


def test_the_server_side_on_a_store_and_the_spec_file_parser():
    """No agent: `Namespaces` on a temporary store (default implicit, in-use checks with Nomad's
    words, variables counted) and the CLI's HCL specification parser."""
    from yurt.cli.namespace_cmd import parse_spec
    from yurt.errors import InvalidInput
    from yurt.server.namespaces import Namespaces
    from yurt.state import StateStore
    from yurt.state.keyed import var_key
    from yurt.structs import Namespace, StoredVariable

    from . import mock
    store = StateStore.temporary()
    try:
        nss = Namespaces(store)
        assert [n.name for n in nss.by_prefix()] == ["default"] and nss.by_prefix("x") == []
        nss.upsert(Namespace(name="dev"))
        store.upsert_job(mock.job("web", namespace="dev"))
        with pytest.raises(InvalidInput, match='namespace "dev" has non-terminal jobs in regions: \\[global\\]'):
            nss.delete("dev")
        store.stop_job("dev", "web")
        store.delete_job("dev", "web")
        store.keyed_write(lambda txn: txn.put_keyed("variables", var_key("dev", "app/cfg"),
                                                    StoredVariable(namespace="dev", path="app/cfg")))
        with pytest.raises(InvalidInput, match='namespace "dev" has variables associated with it'):
            nss.delete("dev")
        store.keyed_write(lambda txn: txn.drop_keyed("variables", var_key("dev", "app/cfg")))
        nss.delete("dev")
        assert nss.get("dev") is None and nss.get("default") is not None
        with pytest.raises(InvalidInput, match='job "web" is in nonexistent namespace "dev"'):
            nss.admit(mock.job("web", namespace="dev"))
        nss.upsert(Namespace(name="dev", capabilities={"DisabledTaskDrivers": ["raw_exec"]}))
        with pytest.raises(InvalidInput, match='used task driver "raw_exec" is not allowed in namespace "dev"'):
            nss.admit(mock.job("web", namespace="dev"))
        with pytest.raises(InvalidInput, match="description longer than 256"):
            nss.upsert(Namespace(name="dev", description="x" * 300))
    finally:
        store.close()
    doc = parse_spec('name = "qa"\ndescription = "Q"\nmeta {\n  n = 3\n}\nnode_pool_config {\n  default = "x"\n}\n',
                     "qa.hcl")
    assert doc == {"Name": "qa", "Description": "Q", "Meta": {"n": "3"}, "NodePoolConfiguration": {"Default": "x"}}


def test_acl_an_allocation_evaluation_and_deployment_by_id_are_checked_in_their_own_namespace(acl_agent):
    """A token for namespace "default" cannot read another namespace's allocation by its ID by
    leaving ?namespace= out (or naming "default"): the object's own namespace is checked."""
    m = re.search(r"ACL Token: ([0-9a-f-]{36})", acl_agent.log())
    root = {"X-Nomad-Token": m.group(1)}
    with acl_agent.api() as c:
        assert c.put("/v1/namespace/secret", json={"Name": "secret"}, headers=root).status_code == 200
        rules = 'namespace "default" {\n  policy = "write"\n}\n'
        assert c.put("/v1/acl/policy/dflt", json={"Name": "dflt", "Rules": rules}, headers=root).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "dflt", "Policies": ["dflt"]}, headers=root).json()
        mine = {"X-Nomad-Token": tok["SecretID"]}
        from yurt.jobspec import load
        doc = load(JOB.replace('"cli-job"', '"hidden"'), "job.nomad").job.to_document()
        doc["Namespace"] = "secret"
        r = c.put("/v1/jobs", json=doc, params={"namespace": "secret"}, headers=root)
        assert r.status_code == 200, r.text
        eval_id = r.json()["EvalID"]
        (alloc,) = wait_for(lambda: c.get("/v1/job/hidden/allocations", params={"namespace": "secret"},
                                          headers=root).json(), 60, what="the allocation placed")
        assert alloc["Namespace"] == "secret"
        for path in (f"/v1/allocation/{alloc['ID']}", f"/v1/evaluation/{eval_id}",
                     f"/v1/evaluation/{eval_id}/allocations"):
            for params in ({}, {"namespace": "default"}):
                r = c.get(path, params=params, headers=mine)
                assert r.status_code == 403, (path, params, r.status_code, r.text)
                assert 'namespace "secret" capability read-job' in r.text
            assert c.get(path, headers=root).status_code == 200
        r = c.put(f"/v1/allocation/{alloc['ID']}/stop", headers=mine)
        assert r.status_code == 403 and 'namespace "secret" capability alloc-lifecycle' in r.text
        c.delete("/v1/job/hidden", params={"namespace": "secret", "purge": "true"}, headers=root)
