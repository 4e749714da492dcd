"""Node secrets and workload identity on a real -dev-connect agent.

A node's own routes (register, heartbeat, allocation updates) and certificate signing need the
node's SecretID, ACLs or not; each task gets a JWT in `secrets/nomad_token` that verifies
against the published JWKS, and a sidecar presenting it gets a leaf certificate only for its
group's services. The countdash apps run through the mesh with those identities.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from yurt.jobspec import load
from yurt.server.ca_x509 import make_csr
from yurt.structs.connect import service_uri

from .agent_util import AgentProcess, allocs, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

APPS = Path(__file__).resolve().parent.parent / "examples" / "countdash"

# countdash without a host port: the dashboard is asked from inside its own namespace
JOB = """
job "idcount" {
  group "api" {
    network { mode = "bridge" }
    service {
      name = "id-count-api"
      port = "9001"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", COUNTER]
      }
    }
  }
  group "dashboard" {
    network { mode = "bridge" }
    service {
      name = "id-count-dashboard"
      port = "9002"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "id-count-api"
              local_bind_port  = 8080
            }
          }
        }
      }
    }
    task "dashboard" {
      driver = "exec"
      env { COUNTING_SERVICE_URL = "http://${NOMAD_UPSTREAM_ADDR_id_count_api}" }
      config {
        command = "/usr/bin/python3"
        args    = ["-c", DASHBOARD]
      }
    }
  }
}
"""


def job_document() -> dict:
    text = JOB.replace("COUNTER", json.dumps((APPS / "counter_api.py").read_text())) \
              .replace("DASHBOARD", json.dumps((APPS / "dashboard.py").read_text()))
    return load(text, "idcount.nomad").job.to_document()


@pytest.fixture(scope="module")
def agent():
    data_dir = tempfile.mkdtemp(prefix="yurt-id-")   # short: <data dir>/yurt.sock must fit sun_path
    a = AgentProcess(data_dir=data_dir, extra=["-dev-connect"]).start()
    try:
        yield a
    finally:
        with a.api() as api:
            ids = [x["ID"] for x in api.get("/v1/allocations").json() if x["JobID"] == "idcount"]
            api.delete("/v1/job/idcount", params={"purge": "true"})
            # not a dev data dir: the agent leaves running tasks behind when it stops, so the
            # purge must have stopped them first (their sidecars wait out their shutdown delay)
            wait_for(lambda: all(api.get(f"/v1/allocation/{i}").json()["ClientStatus"] in ("complete", "failed")
                                 for i in ids), timeout=120, what="the purged allocations stopped")
        a.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(agent):
    with agent.api() as c:
        yield c


@pytest.fixture(scope="module")
def mesh(agent, api):
    assert api.put("/v1/jobs", json=job_document()).status_code == 200
    running = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
        [a for a in allocs(api, "idcount") if a["ClientStatus"] == "running"]), timeout=180, what="idcount running")
    by_group = {a["TaskGroup"]: a for a in running}
    wait_for(lambda: counting(by_group["dashboard"]["ID"]), timeout=90, what="the dashboard counting through the mesh")
    return by_group


def counting(dash_alloc: str) -> dict | None:
    code = ("import json, urllib.request; "
            "print(urllib.request.urlopen('http://127.0.0.1:9002/api/count', timeout=5).read().decode())")
    out = subprocess.run(["ip", "netns", "exec", dash_alloc, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        return None
    c = json.loads(out.stdout)
    return c if c["count"] > 0 else None


def token_path(agent: AgentProcess, alloc_id: str, task: str) -> Path:
    return Path(agent.data_dir) / "client" / "alloc" / alloc_id / task / "secrets" / "nomad_token"


def fake_node(api: httpx.Client) -> tuple[str, str]:
    """A node registered by hand (no drivers, its own pool: nothing is placed on it)."""
    node_id, secret = str(uuid.uuid4()), str(uuid.uuid4())
    node = {"ID": node_id, "SecretID": secret, "Name": "fake-" + node_id[:8], "Datacenter": "dc1",
            "NodePool": "identity-test"}
    r = api.put("/v1/internal/node/register", json={"Node": node}, headers={"X-Nomad-Token": secret})
    assert r.status_code == 200, r.text
    return node_id, secret


def node_status(api: httpx.Client, node_id: str) -> str:
    return api.get(f"/v1/node/{node_id}").json()["Status"]


# -- node secrets ------------------------------------------------------------------------------

def test_a_forged_heartbeat_is_refused_and_the_node_goes_down_on_time(api):
    node_id, secret = fake_node(api)
    assert node_status(api, node_id) == "ready"
    missing = api.put(f"/v1/internal/node/{node_id}/heartbeat")
    assert missing.status_code == 403
    assert "SecretID" in missing.text and "X-Nomad-Token" in missing.text and "none was given" in missing.text
    wrong = api.put(f"/v1/internal/node/{node_id}/heartbeat", headers={"X-Nomad-Token": "not-" + secret})
    assert wrong.status_code == 403 and "is not it" in wrong.text
    assert secret not in wrong.text
    assert api.put(f"/v1/internal/node/{node_id}/heartbeat", headers={"X-Nomad-Token": secret}).status_code == 200

    # someone keeps sending forged heartbeats: the node still goes down when its TTL passes
    stop = threading.Event()
    refused: list[int] = []

    def forge() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=10) as c:
            while not stop.wait(0.5):
                refused.append(c.put(f"/v1/internal/node/{node_id}/heartbeat",
                                     headers={"X-Nomad-Token": str(uuid.uuid4())}).status_code)

    t = threading.Thread(target=forge, daemon=True)
    t.start()
    try:
        wait_for(lambda: node_status(api, node_id) == "down", timeout=60, what="the fake node down")
    finally:
        stop.set()
        t.join(timeout=15)
    assert refused and set(refused) == {403}


def test_re_registering_a_node_needs_its_secret(api, agent):
    node_id, secret = fake_node(api)
    other = str(uuid.uuid4())
    node = {"ID": node_id, "SecretID": other, "Name": "taken-over", "Datacenter": "dc1", "NodePool": "identity-test"}
    for headers in ({}, {"X-Nomad-Token": other}):
        r = api.put("/v1/internal/node/register", json={"Node": node}, headers=headers)
        assert r.status_code == 403, r.text
        assert "re-registering node" in r.text and other not in r.text
    assert api.get(f"/v1/node/{node_id}").json()["Name"] == "fake-" + node_id[:8]
    # the agent's own node cannot be taken over either, and keeps its heartbeats
    (own,) = [n for n in api.get("/v1/nodes").json() if n["ID"] != node_id and n["NodePool"] != "identity-test"]
    r = api.put("/v1/internal/node/register", json={"Node": {**node, "ID": own["ID"]}}, headers={"X-Nomad-Token": other})
    assert r.status_code == 403
    assert node_status(api, own["ID"]) == "ready"
    # with its own secret, a node re-registers
    r = api.put("/v1/internal/node/register", json={"Node": {**node, "SecretID": secret}},
                headers={"X-Nomad-Token": secret})
    assert r.status_code == 200, r.text


def test_a_node_cannot_update_another_nodes_allocations(api, mesh):
    node_id, secret = fake_node(api)
    alloc = mesh["api"]
    update = {"Allocs": [{"ID": alloc["ID"], "ClientStatus": "failed", "ClientDescription": "forged"}]}
    r = api.put(f"/v1/internal/node/{node_id}/allocations", json=update, headers={"X-Nomad-Token": secret})
    assert r.status_code == 403, r.text
    assert f"node {node_id} may update only its own allocations" in r.text and alloc["ID"] in r.text
    # and the owning node's ID without its secret
    r = api.put(f"/v1/internal/node/{alloc['NodeID']}/allocations", json=update, headers={"X-Nomad-Token": secret})
    assert r.status_code == 403, r.text
    after = api.get(f"/v1/allocation/{alloc['ID']}").json()
    assert after["ClientStatus"] == "running" and after["ClientDescription"] != "forged"


def test_signing_a_csr_needs_a_node_secret_and_an_allocation_with_that_service(agent, api, mesh):
    _node_id, secret = fake_node(api)
    roots = api.get("/v1/agent/connect/ca/roots").json()

    def body(service: str) -> dict:
        csr = make_csr(ec.generate_private_key(ec.SECP256R1()), service_uri(roots["TrustDomain"], "dc1", service))
        return {"CSR": csr, "Service": service}
    missing = api.put("/v1/internal/connect/ca/sign", json=body("id-count-api"))
    assert missing.status_code == 403 and "SecretID" in missing.text and "none was given" in missing.text
    wrong = api.put("/v1/internal/connect/ca/sign", json=body("id-count-api"), headers={"X-Nomad-Token": "nope"})
    assert wrong.status_code == 403 and "nope" not in wrong.text
    # a registered node, but one that runs nothing: no certificate for a service it does not run
    fake = api.put("/v1/internal/connect/ca/sign", json=body("id-count-api"), headers={"X-Nomad-Token": secret})
    assert fake.status_code == 403, fake.text
    assert 'runs no allocation with service "id-count-api"' in fake.text and secret not in fake.text
    # the node that runs count-api's allocation has its certificate signed
    own = (Path(agent.data_dir) / "client" / "client" / "secret-id").read_text().strip()
    ok = api.put("/v1/internal/connect/ca/sign", json=body("id-count-api"), headers={"X-Nomad-Token": own})
    assert ok.status_code == 200, ok.text
    assert "BEGIN CERTIFICATE" in ok.json()["CertPEM"]
    other = api.put("/v1/internal/connect/ca/sign", json=body("billing"), headers={"X-Nomad-Token": own})
    assert other.status_code == 403 and 'runs no allocation with service "billing"' in other.text


# -- workload identity -------------------------------------------------------------------------

def test_each_task_gets_a_token_file_readable_only_by_it(agent, api, mesh):
    alloc = mesh["api"]
    for task in ("web", "connect-proxy-id-count-api"):
        st = token_path(agent, alloc["ID"], task).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, (task, oct(st.st_mode))
    import pwd
    assert token_path(agent, alloc["ID"], "web").stat().st_uid == pwd.getpwnam("nobody").pw_uid  # exec's user
    assert token_path(agent, alloc["ID"], "connect-proxy-id-count-api").stat().st_uid == 0
    # the sidecar is told to present it
    conf = json.loads((token_path(agent, alloc["ID"], "connect-proxy-id-count-api").parent / "proxy.json").read_text())
    assert conf["token_file"] == str(token_path(agent, alloc["ID"], "connect-proxy-id-count-api"))


def test_the_published_jwks_verifies_an_allocations_token(agent, api, mesh):
    alloc = mesh["api"]
    r = api.get("/.well-known/jwks.json")
    assert r.status_code == 200
    (key,) = r.json()["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig" and key["kid"]
    token = token_path(agent, alloc["ID"], "web").read_text()
    signing = jwt.PyJWKClient(f"{agent.url}/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing.key, algorithms=["RS256"], audience="nomadproject.io")
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
    assert claims["nomad_namespace"] == "default"
    assert claims["nomad_job_id"] == "idcount"
    assert claims["nomad_allocation_id"] == alloc["ID"]
    assert claims["nomad_task"] == "web"
    assert claims["sub"] == "global:default:idcount:api:web:default"
    assert claims["aud"] == ["nomadproject.io"]
    assert claims["iat"] == claims["nbf"] and claims["jti"]
    assert claims["yurt_services"] == ["id-count-api", "id-count-api-sidecar-proxy"]
    # a token signed by another key does not verify
    forged = jwt.encode({**claims, "nomad_allocation_id": "x"}, rsa.generate_private_key(65537, 2048),
                        algorithm="RS256", headers={"kid": key["kid"]})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, signing.key, algorithms=["RS256"], audience="nomadproject.io")


def test_an_identity_gets_its_own_services_leaf_and_not_anothers(agent, api, mesh):
    token = token_path(agent, mesh["api"]["ID"], "connect-proxy-id-count-api").read_text()
    own = api.get("/v1/agent/connect/ca/leaf/id-count-api", headers={"X-Consul-Token": token})
    assert own.status_code == 200, own.text
    assert own.json()["Service"] == "id-count-api"
    other = api.get("/v1/agent/connect/ca/leaf/id-count-dashboard", headers={"X-Consul-Token": token})
    assert other.status_code == 403
    assert other.text == ("this workload identity is for services id-count-api, id-count-api-sidecar-proxy; "
                          "not id-count-dashboard")
    # X-Nomad-Token works the same
    assert api.get("/v1/agent/connect/ca/leaf/id-count-dashboard", headers={"X-Nomad-Token": token}).status_code == 403
    # a JWT this cluster did not sign is refused
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, rsa.generate_private_key(65537, 2048), algorithm="RS256",
                        headers={"kid": jwt.get_unverified_header(token)["kid"]})
    r = api.get("/v1/agent/connect/ca/leaf/id-count-dashboard", headers={"X-Consul-Token": forged})
    assert r.status_code == 403 and "not valid" in r.text
    # no token: ACLs are off, the agent answers as before
    assert api.get("/v1/agent/connect/ca/leaf/id-count-dashboard").status_code == 200


def test_the_mesh_keeps_counting_with_identities(mesh):
    first = wait_for(lambda: counting(mesh["dashboard"]["ID"]), what="count")
    wait_for(lambda: (lambda c: c if c and c["count"] > first["count"] else None)(counting(mesh["dashboard"]["ID"])),
             what="the count growing")


# -- a client-only agent: its certificates are signed with its node secret, and it checks
# -- identities against its server's JWKS ---------------------------------------------------

CLIENT_JOB = """
job "idclient" {
  group "g" {
    service { name = "idc-web" }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "exec sleep 600"]
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def split():
    from .mesh_agent import MeshAgent
    from .test_client_only import ClientAgent
    server = MeshAgent().start()
    client = ClientAgent([f"127.0.0.1:{server.port}"]).start()
    try:
        yield server, client
    finally:
        with server.api() as api:
            api.delete("/v1/job/idclient", params={"purge": "true"})
            wait_for(lambda: all(a["ClientStatus"] != "running" for a in api.get("/v1/allocations").json()),
                     timeout=60, what="every allocation stopped")
        client.close()
        server.close()


def test_a_client_only_agent_checks_identities_with_its_servers_keys(split):
    server, client = split
    with client.api() as api:
        assert api.put("/v1/jobs", json=load(CLIENT_JOB, "idclient.nomad").job.to_document()).status_code == 200
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "idclient") if a["ClientStatus"] == "running"],
                            timeout=60, what="idclient running")
        token = wait_for(lambda: token_path(client, alloc["ID"], "t").read_text(), what="the token file")
        # the client agent makes the key and has the server sign it: with its node's secret
        own = api.get("/v1/agent/connect/ca/leaf/idc-web", headers={"X-Consul-Token": token})
        assert own.status_code == 200, own.text
        assert own.json()["Service"] == "idc-web"
        other = api.get("/v1/agent/connect/ca/leaf/idc-other", headers={"X-Consul-Token": token})
        assert other.status_code == 403
        assert other.text == "this workload identity is for services idc-web; not idc-other"
    # the server's JWKS verifies the token the client wrote
    signing = jwt.PyJWKClient(f"{server.url}/.well-known/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing.key, algorithms=["RS256"], audience="nomadproject.io")
    assert claims["nomad_allocation_id"] == alloc["ID"] and claims["nomad_task"] == "t"


def test_the_sidecars_client_presents_its_token_file(agent, mesh):
    """`mesh.agent_client` reads the token file and sends it: its own leaf comes, another's is
    refused with the agent's sentence; a missing file is named."""
    from yurt.errors import PermissionDenied, YurtError
    from yurt.mesh.agent_client import AgentClient

    path = token_path(agent, mesh["api"]["ID"], "connect-proxy-id-count-api")
    with AgentClient(f"unix://{agent.data_dir}/yurt.sock", token_file=str(path)) as c:
        cert, _ = c.leaf("id-count-api")
        assert cert["Service"] == "id-count-api"
        with pytest.raises(PermissionDenied, match="not id-count-dashboard"):
            c.leaf("id-count-dashboard")
    with AgentClient(agent.url, token_file=str(path) + ".missing") as c, \
            pytest.raises(YurtError, match=r"cannot read the token file .*nomad_token\.missing"):
        c.leaf("id-count-api")


def test_an_updated_job_gets_new_identities_for_its_new_services(split):
    _server, client = split
    with client.api() as api:
        assert api.put("/v1/jobs", json=load(CLIENT_JOB, "idclient.nomad").job.to_document()).status_code == 200
        wait_for(lambda: [a for a in allocs(api, "idclient") if a["ClientStatus"] == "running"],
                 timeout=60, what="idclient running")
        more = CLIENT_JOB.replace('service { name = "idc-web" }',
                                  'service { name = "idc-web" }\n    service { name = "idc-admin" }')
        assert api.put("/v1/jobs", json=load(more, "idclient.nomad").job.to_document()).status_code == 200

        def renewed() -> str | None:
            for a in allocs(api, "idclient"):
                if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run":
                    token = token_path(client, a["ID"], "t").read_text()
                    claims = jwt.decode(token, options={"verify_signature": False})
                    if claims["yurt_services"] == ["idc-web", "idc-admin"]:
                        return token
            return None
        token = wait_for(renewed, timeout=90, what="a token naming the new service")
        r = api.get("/v1/agent/connect/ca/leaf/idc-admin", headers={"X-Consul-Token": token})
        assert r.status_code == 200, r.text
