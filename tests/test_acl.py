"""ACLs in Nomad's shape, against real agents: every route closed without a token (but the
public ones), bootstrap once, policies and tokens through the CLI, capabilities, expiry, secrets
stored only hashed, and the agent's own client still working with ACLs on."""

from __future__ import annotations

import re
import socket
import sqlite3

import httpx
import pytest

from tests.agent_util import AgentProcess, register, wait_for
from tests.conftest import run_yurt
from yurt.api.authz import PUBLIC, REQUIREMENTS

JOB = '''job "sleepy" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
    }
  }
}
'''
READ_POLICY = 'namespace "default" {\n  policy = "read"\n}\nnode {\n  policy = "read"\n}\n'


@pytest.fixture(scope="module")
def acl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("acl")
    (d / "acl.hcl").write_text('acl {\n  enabled = true\n  token_min_expiration_ttl = "1s"\n}\n')
    return d


@pytest.fixture(scope="module")
def agent(acl_dir):
    """-dev with ACLs on: bootstrapped at start, the token in the banner."""
    with AgentProcess(extra=["-acl-enabled", "-config", str(acl_dir / "acl.hcl")]) as a:
        yield a


@pytest.fixture(scope="module")
def root(agent) -> str:
    m = re.search(r"ACL Token: ([0-9a-f-]{36})", agent.log())
    assert m, agent.log()[:2000]
    return m.group(1)


def h(token: str) -> dict[str, str]:
    return {"X-Nomad-Token": token}


def _routes() -> list[tuple[str, str]]:
    from yurt.agent.config import AgentConfig
    from yurt.api.app import create_app

    class Stub:   # the app's route table only: no agent behind it
        config = AgentConfig()
    schema = create_app(Stub()).openapi()
    return [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]


def test_every_route_needs_a_token_but_the_public_ones(agent, root):
    routes = _routes()
    assert len(routes) > 60
    checked = 0
    with agent.api() as c:
        for method, path in routes:
            url = re.sub(r"\{[^}]+\}", "x", path)
            if (method, path) in PUBLIC:
                continue
            r = c.request(method, url, json={} if method in ("PUT", "POST") else None,
                          params={"wait": "1s"})
            assert r.status_code == 403, f"{method} {path} answered {r.status_code} without a token: {r.text}"
            assert r.text.startswith("Permission denied"), (method, path, r.text)
            checked += 1
        # with ACLs on the app does not describe itself to strangers
        assert c.get("/openapi.json").status_code == 404 and c.get("/ui/api").status_code == 404
        # the public ones answer without one
        assert c.get("/v1/agent/health").status_code == 200
        assert c.get("/v1/connect/ca/roots").status_code == 200
        assert c.get("/v1/status/leader").status_code == 200
        # every route of the app declares what it needs (or is public): none is left to chance
        declared = {(m, p.replace(":path", "")) for m, p in REQUIREMENTS} | set(PUBLIC)
        assert [r for r in routes if r not in declared] == []
    assert checked > 50


def test_bootstrap_token_is_management_and_the_second_bootstrap_is_refused(agent, root):
    with agent.api() as c:
        me = c.get("/v1/acl/token/self", headers=h(root)).json()
        assert me["Type"] == "management" and me["Name"] == "Bootstrap Token" and "SecretID" not in me
        again = c.put("/v1/acl/bootstrap")
        assert again.status_code == 400
        assert again.text.startswith("ACL bootstrap already done (reset index: ")
        assert "acl-bootstrap-reset" in again.text


def test_a_read_token_lists_jobs_but_cannot_submit(agent, root, tmp_path):
    pol = tmp_path / "read.hcl"
    pol.write_text(READ_POLICY)
    env = {"YURT_ADDR": agent.url, "NOMAD_TOKEN": root, "YURT_TOKEN": ""}
    res = run_yurt("acl", "policy", "apply", "-description", "read only", "readonly", str(pol), env=env)
    assert res.returncode == 0, res.stderr
    assert 'Successfully wrote "readonly" ACL policy!' in res.stdout
    res = run_yurt("acl", "token", "create", "-name", "reader", "-policy", "readonly", env=env)
    assert res.returncode == 0, res.stderr
    secret = re.search(r"Secret ID\s+= (\S+)", res.stdout).group(1)
    with agent.api() as c:
        r = c.get("/v1/jobs", headers=h(secret))
        assert r.status_code == 200 and r.json() == []
        assert c.get("/v1/jobs", params={"namespace": "*"}, headers=h(secret)).status_code == 200
        job_file = tmp_path / "job.nomad"
        job_file.write_text(JOB)
        # -token on the command line wins over $NOMAD_TOKEN
        res = run_yurt("job", "run", "-detach", "-token", secret, str(job_file), env=env)
        assert res.returncode == 1
        assert 'Permission denied: this needs namespace "default" capability submit-job' in res.stderr
        assert secret not in res.stderr
        assert c.get("/v1/jobs", headers=h(root)).json() == []
        # Authorization: Bearer works too; the node may be read (node { policy = "read" })
        assert c.get("/v1/nodes", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        r = c.put("/v1/node/x/eligibility", json={"Eligibility": "ineligible"}, headers=h(secret))
        assert r.status_code == 403 and "node:write" in r.text
        # token self through the CLI
        res = run_yurt("acl", "token", "self", env={**env, "NOMAD_TOKEN": secret})
        assert res.returncode == 0, res.stderr
        assert re.search(r"Name\s+= reader", res.stdout) and re.search(r"Policies\s+= readonly", res.stdout)
        assert "Secret ID    = <hidden>" in res.stdout


def test_anonymous_job_submission_is_refused_and_nothing_is_stored(agent, root):
    from yurt.jobspec import load
    doc = load(JOB, "job.nomad").job.to_document()
    with agent.api() as c:
        r = c.put("/v1/jobs", json=doc)
        assert r.status_code == 403
        assert r.text == 'Permission denied: this needs namespace "default" capability submit-job'
        # a job naming another namespace in its body is checked against that namespace
        r = c.put("/v1/jobs", json={"Job": {**doc["Job"], "Namespace": "prod"}})
        assert r.status_code == 403
        assert c.get("/v1/job/sleepy", headers=h(root)).status_code == 404


def test_unknown_and_expired_tokens(agent, root):
    with agent.api() as c:
        bogus = "00000000-1111-2222-3333-444444444444"
        r = c.get("/v1/jobs", headers=h(bogus))
        assert r.status_code == 403 and bogus not in r.text
        c.put("/v1/acl/policy/readonly", json={"Name": "readonly", "Rules": READ_POLICY}, headers=h(root))
        tok = c.put("/v1/acl/token", json={"Name": "brief", "Policies": ["readonly"], "ExpirationTTL": "2s"},
                    headers=h(root)).json()
        assert tok["ExpirationTTL"] == "2s" and tok["ExpirationTime"]
        assert c.get("/v1/jobs", headers=h(tok["SecretID"])).status_code == 200
        wait_for(lambda: c.get("/v1/jobs", headers=h(tok["SecretID"])).status_code == 403, 30,
                 what="the token to expire")
        r = c.get("/v1/jobs", headers=h(tok["SecretID"]))
        assert r.text == "ACL token expired" and tok["SecretID"] not in r.text
        r = c.put("/v1/acl/token", json={"Name": "long", "Policies": ["readonly"], "ExpirationTTL": "48h"},
                  headers=h(root))
        assert r.status_code == 400 and "ExpirationTTL" in r.text and "token_max_expiration_ttl" in r.text


def test_policy_and_token_lifecycle_with_the_cli(agent, root, tmp_path):
    env = {"YURT_ADDR": agent.url, "NOMAD_TOKEN": "", "YURT_TOKEN": root}
    pol = tmp_path / "ops.hcl"
    pol.write_text('namespace "*" {\n  policy = "write"\n}\nagent {\n  policy = "read"\n}\n')
    assert run_yurt("acl", "policy", "apply", "ops", str(pol), env=env).returncode == 0
    res = run_yurt("acl", "policy", "list", env=env)
    assert res.returncode == 0 and re.search(r"^ops\s", res.stdout, re.M), res.stdout
    res = run_yurt("acl", "policy", "info", "ops", env=env)
    assert res.returncode == 0 and re.search(r"Name\s+= ops", res.stdout) and 'policy = "write"' in res.stdout
    res = run_yurt("acl", "token", "create", "-name", "operator", "-policy", "ops", env=env)
    accessor = re.search(r"Accessor ID\s+= (\S+)", res.stdout).group(1)
    secret = re.search(r"Secret ID\s+= (\S+)", res.stdout).group(1)
    res = run_yurt("acl", "token", "list", env=env)
    assert accessor in res.stdout and secret not in res.stdout
    res = run_yurt("acl", "token", "info", accessor, env=env)
    assert re.search(r"Name\s+= operator", res.stdout) and secret not in res.stdout
    res = run_yurt("acl", "token", "update", accessor, "-name", "op2", env=env)
    assert res.returncode == 0 and re.search(r"Name\s+= op2", res.stdout), res.stderr
    # without a token the CLI is refused, naming what is missing
    res = run_yurt("acl", "token", "list", env={**env, "YURT_TOKEN": ""})
    assert res.returncode == 1 and "Permission denied: this needs a management token" in res.stderr
    assert run_yurt("acl", "token", "delete", accessor, env=env).returncode == 0
    with httpx.Client(base_url=agent.url) as c:
        assert c.get("/v1/agent/self", headers=h(secret)).status_code == 403
    assert run_yurt("acl", "policy", "delete", "ops", env=env).returncode == 0
    res = run_yurt("acl", "policy", "info", "ops", env=env)
    assert res.returncode == 1 and "ACL policy not found" in res.stderr


def test_malformed_policies_name_the_rule_and_line(agent, root, tmp_path):
    env = {"YURT_ADDR": agent.url, "YURT_TOKEN": root}
    bad = tmp_path / "bad.hcl"
    bad.write_text('namespace "default" {\n  policy = "read"\n}\nnamespace "prod" {\n  policy = "raed"\n}\n')
    res = run_yurt("acl", "policy", "apply", "bad", str(bad), env=env)
    assert res.returncode == 1
    assert (f'{bad}: ACL policy "bad": namespace "prod" > policy (line 5): "raed" is not a policy; '
            'use one of deny, read, write, scale') in res.stderr
    bad.write_text('namespace "default" {\n  policy = \n}\n')
    res = run_yurt("acl", "policy", "apply", "bad", str(bad), env=env)
    assert res.returncode == 1 and f'{bad}: ACL policy "bad": line 2' in res.stderr
    bad.write_text('service "web" {\n  policy = "write"\n  intentions = "read"\n}\n')
    res = run_yurt("acl", "policy", "apply", "bad", str(bad), env=env)
    assert res.returncode == 1 and 'service "web" > intentions (line 3): unknown key' in res.stderr


def test_mesh_rules_guard_the_catalog(agent, root):
    rules = 'service "web" {\n  policy = "write"\n}\nservice_prefix "" {\n  policy = "read"\n}\n'
    with agent.api() as c:
        assert c.put("/v1/acl/policy/web", json={"Name": "web", "Rules": rules}, headers=h(root)).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "web", "Policies": ["web"]}, headers=h(root)).json()
        s = h(tok["SecretID"])
        assert c.get("/v1/health/service/api", headers=s).status_code == 200
        assert c.get("/v1/agent/connect/ca/leaf/web", headers=s).status_code == 200
        r = c.get("/v1/agent/connect/ca/leaf/api", headers=s)
        assert r.status_code == 403 and r.text == 'Permission denied: this needs service "api" write'
        r = c.put("/v1/agent/service/register", json={"Name": "api", "Port": 1}, headers=s)
        assert r.status_code == 403


def test_replacing_the_ca_needs_operator_write_and_a_refusal_changes_nothing(agent, root):
    """The attack: swap the Connect CA's root for one the attacker holds the key of."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import datetime as dt
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "evil root")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    body = {"Provider": "consul", "Config": {
        "PrivateKey": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode(),
        "RootCert": cert.public_bytes(serialization.Encoding.PEM).decode()}}
    with agent.api() as c:
        before = c.get("/v1/connect/ca/roots").json()
        r = c.put("/v1/connect/ca/configuration", json=body)
        assert r.status_code == 403 and r.text == "Permission denied: this needs operator:write"
        pol = {"Name": "meshread", "Rules": 'service_prefix "" {\n  policy = "write"\n}\noperator {\n  policy = "read"\n}\n'}
        assert c.put("/v1/acl/policy/meshread", json=pol, headers=h(root)).status_code == 200
        tok = c.put("/v1/acl/token", json={"Name": "mesh", "Policies": ["meshread"]}, headers=h(root)).json()
        r = c.put("/v1/connect/ca/configuration", json=body, headers=h(tok["SecretID"]))
        assert r.status_code == 403 and "operator:write" in r.text
        after = c.get("/v1/connect/ca/roots").json()
        assert after["ActiveRootID"] == before["ActiveRootID"]
        assert [x["ID"] for x in after["Roots"]] == [x["ID"] for x in before["Roots"]]


def test_the_agents_own_client_works_with_acls_on(agent, root):
    with agent.api() as c:
        c.headers.update(h(root))
        wait_for(lambda: any(n["Status"] == "ready" for n in c.get("/v1/nodes").json()), 60, what="node ready")
        register(c, JOB)
        wait_for(lambda: any(a["ClientStatus"] == "running" for a in c.get("/v1/job/sleepy/allocations").json()),
                 60, what="the allocation running")
        c.delete("/v1/job/sleepy", params={"purge": "true"})


def test_dev_without_acl_says_so_and_acl_routes_are_refused():
    with AgentProcess() as a, a.api() as c:
        assert "ACLs are disabled in -dev mode" in a.log()
        r = c.put("/v1/acl/bootstrap")
        assert r.status_code == 400 and r.text.startswith("ACL support disabled")
        assert c.get("/v1/jobs").status_code == 200


def test_secrets_are_stored_hashed_and_bootstrap_can_be_reset(tmp_path):
    data = tmp_path / "data"
    with AgentProcess(data_dir=str(data), extra=["-acl-enabled"]) as a:
        env = {"YURT_ADDR": a.url, "YURT_TOKEN": "", "NOMAD_TOKEN": ""}
        res = run_yurt("acl", "bootstrap", env=env)
        assert res.returncode == 0, res.stderr
        first = re.search(r"Secret ID\s+= (\S+)", res.stdout).group(1)
        assert re.search(r"Type\s+= management", res.stdout)
        again = run_yurt("acl", "bootstrap", env=env)
        assert again.returncode == 1 and "ACL bootstrap already done" in again.stderr
        index = re.search(r"reset index: (\d+)", again.stderr).group(1)
        created = run_yurt("acl", "token", "create", "-type", "management", "-token", first, env=env)
        second = re.search(r"Secret ID\s+= (\S+)", created.stdout).group(1)
        db = data / "server" / "state.db"
        (data / "server" / "acl-bootstrap-reset").write_text(index)
        res = run_yurt("acl", "bootstrap", env=env)
        assert res.returncode == 0, res.stderr
        third = re.search(r"Secret ID\s+= (\S+)", res.stdout).group(1)
        with sqlite3.connect(str(db)) as conn:
            dump = "\n".join(conn.iterdump())
        for secret in (first, second, third):
            assert secret not in dump
        import hashlib
        assert hashlib.sha256(first.encode()).hexdigest() in dump
        # the old token still works, the reset file is used up
        with a.api() as c:
            assert c.get("/v1/acl/tokens", headers=h(first)).status_code == 200
        assert not (data / "server" / "acl-bootstrap-reset").exists()


def test_a_client_only_agent_asks_its_server(agent, root, tmp_path):
    from tests.test_client_only import ClientAgent
    client = ClientAgent([f"127.0.0.1:{agent.port}"])
    with open(client.config, "a") as f:
        f.write("acl {\n  enabled = true\n}\n")
    client.start()
    try:
        with httpx.Client(base_url=client.url, timeout=30) as c:
            # its own routes and the forwarded ones alike are closed without a token
            r = c.get("/v1/agent/self")
            assert r.status_code == 403 and r.text == "Permission denied: this needs agent:read"
            assert c.get("/v1/jobs").status_code == 403
            assert c.get("/v1/agent/self", headers=h(root)).status_code == 200
            assert c.get("/v1/jobs", headers=h(root)).status_code == 200
            # it registered with its node secret, so the server knows it
            wait_for(lambda: any(n["Name"] == "client-only" and n["Status"] == "ready"
                                 for n in c.get("/v1/nodes", headers=h(root)).json()),
                     60, what="the client-only node ready")
    finally:
        client.close()


def test_rules_deny_wins_exact_beats_glob_and_prefixes_are_longest_first():
    from yurt.server.acl import ACL, parse_rules
    a = parse_rules("a", 'namespace "*" {\n  policy = "write"\n}\nnamespace "secret" {\n  policy = "deny"\n}\n'
                         'namespace "prod-*" {\n  policy = "read"\n}\n'
                         'service_prefix "" {\n  policy = "read"\n}\nservice_prefix "web" {\n  policy = "write"\n}\n'
                         'service "web-admin" {\n  policy = "deny"\n}\n')
    b = parse_rules("b", '{"namespace": {"default": {"capabilities": ["alloc-node-exec"]}}, '
                         '"operator": {"policy": "read"}}')
    a.merge(b)
    acl = ACL(a)
    # "default" has an exact rule (policy b's): it beats the "*" glob entirely
    assert acl.allow_namespace("default", "alloc-node-exec") and not acl.allow_namespace("default", "submit-job")
    assert acl.allow_namespace("staging", "submit-job")
    assert not acl.allow_namespace("secret", "read-job")
    # the closest glob: prod-* (read) over * (write)
    assert acl.allow_namespace("prod-eu", "read-job") and not acl.allow_namespace("prod-eu", "submit-job")
    assert acl.allow_mesh("service", "web-1", "write") and not acl.allow_mesh("service", "api", "write")
    assert acl.allow_mesh("service", "api", "read") and not acl.allow_mesh("service", "web-admin", "read")
    assert acl.allow("operator", "read") and not acl.allow("operator", "write") and not acl.allow("node", "read")
    deny = parse_rules("c", 'namespace "default" {\n  policy = "deny"\n}\n')
    deny.merge(parse_rules("d", 'namespace "default" {\n  policy = "write"\n}\n'))
    assert not ACL(deny).allow_namespace("default", "read-job")


def test_identities_tokens_nodes_and_workloads(tmp_path):
    from yurt.errors import PermissionDenied
    from yurt.server.acl import WorkloadClaims
    from yurt.server.acl_admin import ACLAdmin
    from yurt.state import StateStore
    from yurt.structs import Node

    class Verifier:   # a WorkloadVerifier: the real one signs and checks JWTs (server/identity.py)
        def verify(self, token: str) -> WorkloadClaims | None:
            if token != "workload-jwt":
                return None
            return WorkloadClaims(namespace="default", job_id="web", group="g", alloc_id="a1", task="t",
                                  services=["web"])

    store = StateStore(str(tmp_path / "state.db"))
    try:
        admin = ACLAdmin(store, Verifier())
        store.upsert_node(Node(id="n1", secret_id="node-secret", name="n1", datacenter="dc1"))
        resolver = admin.resolver
        node = resolver.resolve("node-secret")
        assert node.kind == "node" and node.acl.allow("node", "read") and not node.acl.allow("node", "write")
        assert node.acl.allow_namespace("default", "read-job") and not node.acl.allow_namespace("default", "submit-job")
        assert node.allow_mesh("service", "anything", "write") and not node.allow_mesh("intention", "x", "write")
        wl = resolver.resolve("workload-jwt")
        assert wl.kind == "workload" and wl.allow_mesh("service", "web", "write")
        assert not wl.allow_mesh("service", "api", "write") and wl.allow_mesh("intention", "api", "read")
        assert wl.allow_mesh("service", "api", "read")   # its upstreams' endpoints
        assert not wl.acl.allow_namespace("default", "read-job")
        anon = resolver.resolve("")
        assert anon.kind == "anonymous" and not anon.acl.allow_namespace("default", "list-jobs")
        admin.upsert_policy("anonymous", {"Name": "anonymous", "Rules": 'namespace "default" { policy = "read" }'})
        assert resolver.resolve(None).acl.allow_namespace("default", "list-jobs")
        with pytest.raises(PermissionDenied, match="ACL token not found"):
            resolver.resolve("nobody")
    finally:
        store.close()


def test_the_anonymous_policy_gives_requests_without_a_token_its_rights(agent, root):
    with agent.api() as c:
        assert c.get("/v1/jobs").status_code == 403
        rules = 'namespace "default" {\n  policy = "read"\n}\n'
        assert c.put("/v1/acl/policy/anonymous", json={"Name": "anonymous", "Rules": rules},
                     headers=h(root)).status_code == 200
        try:
            assert c.get("/v1/jobs").status_code == 200
            r = c.put("/v1/jobs", json={"Job": {"ID": "x"}})
            assert r.status_code == 403 and "submit-job" in r.text
        finally:
            assert c.delete("/v1/acl/policy/anonymous", headers=h(root)).status_code == 200
        assert c.get("/v1/jobs").status_code == 403


def test_acl_tables_survive_a_restart_of_the_store(tmp_path):
    from yurt.server.acl_admin import ACLAdmin
    from yurt.state import StateStore
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    admin = ACLAdmin(store)
    boot = admin.bootstrap()
    admin.upsert_policy("ro", {"Name": "ro", "Rules": 'namespace "default" { policy = "read" }'})
    tok = admin.create_token({"Name": "t", "Policies": ["ro"]})
    store.close()
    store = StateStore(path)
    try:
        admin = ACLAdmin(store)
        assert admin.resolver.resolve(boot.secret_id).management
        me = admin.resolver.resolve(tok.secret_id)
        assert me.token is not None and me.token.name == "t" and me.token.secret_id == ""
        assert me.acl.allow_namespace("default", "read-job")
        from yurt.errors import InvalidInput
        with pytest.raises(InvalidInput, match=r"ACL bootstrap already done \(reset index: 1\)"):
            admin.bootstrap()
    finally:
        store.close()


def test_the_client_agents_hot_routes_check_and_answer_as_every_route(agent, root):
    """A node's heartbeat and allocation watch are answered before FastAPI's routing (api/hot.py):
    the same ACL checks, the same errors, the same documents."""
    with agent.api() as c:
        c.headers.update(h(root))
        register(c, JOB.replace('"sleepy"', '"hot"'))
        (placed,) = wait_for(lambda: c.get("/v1/job/hot/allocations").json(), 60, what="the allocation placed")
        nid = placed["NodeID"]
        r = wait_for(lambda: (r := c.get(f"/v1/node/{nid}/allocations")).json() and r, 60,
                     what="the node's allocation")
        assert r.status_code == 200 and int(r.headers["X-Nomad-Index"]) > 0
        assert r.headers["content-type"] == "application/json"
        for a in r.json():   # the same document as the allocation's own route
            assert a == c.get(f"/v1/allocation/{a['ID']}", headers=h(root)).json() | {"Job": a["Job"]}
            assert a["Job"]["ID"] == a["JobID"]
        denied = c.get(f"/v1/node/{nid}/allocations", headers=h("00000000-0000-0000-0000-000000000000"))
        assert denied.status_code == 403 and denied.text.startswith("Permission denied")
        assert c.get("/v1/node/nope/allocations", headers=h(root)).status_code == 404
        beat = c.put(f"/v1/internal/node/{nid}/heartbeat", headers=h(root))
        assert beat.status_code == 403
        assert beat.text == (f"a heartbeat needs node {nid}'s SecretID in the X-Nomad-Token "
                             "header; the token given is not it")
        missing = c.put("/v1/internal/node/nope/heartbeat", headers=h(root))
        assert missing.status_code == 404 and missing.text == "node nope not found"
        # the client agents' watch, answered by the HTTP protocol itself (agent/corked.py): the
        # route's ACL check first, then the node's secret
        watch = f"/v1/internal/node/{nid}/allocations"
        anonymous = c.get(watch, headers=h("00000000-0000-0000-0000-000000000000"))
        assert anonymous.status_code == 403 and anonymous.text.startswith("Permission denied")
        not_its = c.get(watch, params={"index": 1, "wait": "30s"}, headers=h(root))
        assert not_its.status_code == 403 and not_its.text == (
            f"a watch of its allocations needs node {nid}'s SecretID in the X-Nomad-Token header; "
            "the token given is not it")
        assert c.get("/v1/internal/node/nope/allocations", headers=h(root)).text == "node nope not found"
        # what the request limits refuse by its headers is answered by them, as on every route
        form = c.put(f"/v1/internal/node/{nid}/heartbeat", content=b"a=1",
                     headers={**h(root), "Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415 and "takes a JSON body" in form.text
        with socket.create_connection((c.base_url.host, c.base_url.port), timeout=30) as raw:
            raw.sendall(f"PUT /v1/internal/node/{nid}/heartbeat HTTP/1.1\r\nHost: x\r\n"
                        f"X-Nomad-Token: {root}\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n{{}}".encode())
            answer = raw.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 413") and "request body too large" in answer
        c.delete("/v1/job/hot", params={"purge": "true"})
