"""Consul's HTTP API on a real agent: python-consul against the catalog, intentions over raw
HTTP, authorize, leaf certificates (blocking across a root rotation), the unix socket, the CLI,
and a restart that keeps the CA."""

from __future__ import annotations

import threading

import consul
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from yurt.api.client import YurtClient

from .agent_util import AgentProcess
from .conftest import run_yurt


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


@pytest.fixture
def api(agent):
    with agent.api() as c:
        yield c


def test_python_consul_catalog_round_trip(agent):
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    assert c.agent.service.register("pyweb", service_id="pyweb-1", port=8080, tags=["v1"],
                                    check=consul.Check.ttl("30s"))
    assert c.agent.service.register("pyweb", service_id="pyweb-2", port=8081, tags=["v2"])
    index, services = c.catalog.services()
    assert int(index) > 0 and sorted(services["pyweb"]) == ["v1", "v2"]
    _, entries = c.catalog.service("pyweb")
    assert sorted((e["ServiceID"], e["ServicePort"]) for e in entries) == [("pyweb-1", 8080), ("pyweb-2", 8081)]
    _, healthy = c.health.service("pyweb", passing=True)
    assert [e["Service"]["ID"] for e in healthy] == ["pyweb-2"]  # pyweb-1's TTL check is critical
    assert c.agent.check.ttl_pass("service:pyweb-1")
    _, healthy = c.health.service("pyweb", passing=True)
    assert sorted(e["Service"]["ID"] for e in healthy) == ["pyweb-1", "pyweb-2"]
    assert "pyweb-1" in c.agent.services()
    assert c.agent.service.deregister("pyweb-1") and c.agent.service.deregister("pyweb-2")
    _, entries = c.catalog.service("pyweb")
    assert entries == []


def test_x_consul_index_on_every_answer_even_404(api):
    for path in ("/v1/agent/service/nope", "/v1/connect/intentions/exact?source=a&destination=b",
                 "/v1/catalog/services", "/v1/health/service/nope", "/v1/connect/ca/roots"):
        r = api.get(path)
        assert int(r.headers["X-Consul-Index"]) >= 1, path
        assert r.headers["X-Consul-Default-ACL-Policy"] == "allow"
    assert api.get("/v1/agent/service/nope").status_code == 404


def test_blocking_health_connect_wakes_on_register(api):
    r = api.get("/v1/health/connect/blk")
    index = int(r.headers["X-Consul-Index"])
    assert r.json() == []
    result = {}

    def watch():
        result["r"] = api.get("/v1/health/connect/blk", params={"index": index, "wait": "60s"}, timeout=90)

    t = threading.Thread(target=watch)
    t.start()
    reg = api.put("/v1/agent/service/register", json={
        "Name": "blk-sidecar-proxy", "Kind": "connect-proxy", "Port": 25000,
        "Proxy": {"DestinationServiceName": "blk", "LocalServicePort": 8080}})
    assert reg.status_code == 200, reg.text
    t.join(90)
    r = result["r"]
    assert int(r.headers["X-Consul-Index"]) > index
    (entry,) = r.json()
    assert (entry["Service"]["Service"], entry["Service"]["Port"]) == ("blk-sidecar-proxy", 25000)
    api.put("/v1/agent/service/deregister/blk-sidecar-proxy")


def test_intentions_over_http_and_authorize(api):
    r = api.put("/v1/connect/intentions/exact", params={"source": "web", "destination": "db"},
                json={"Action": "deny", "SourceType": "consul"})
    assert r.status_code == 200 and r.json() is True
    created = api.post("/v1/connect/intentions", json={"SourceName": "*", "DestinationName": "db",
                                                      "Action": "allow"})
    assert created.status_code == 200
    ix_id = created.json()["ID"]
    dup = api.post("/v1/connect/intentions", json={"SourceName": "*", "DestinationName": "db", "Action": "allow"})
    assert dup.status_code == 409
    listed = api.get("/v1/connect/intentions")
    assert [(i["SourceName"], i["Precedence"]) for i in listed.json()
            if i["DestinationName"] == "db"] == [("web", 9), ("*", 8)]
    matched = api.get("/v1/connect/intentions/match", params={"by": "destination", "name": "db"}).json()
    assert [i["SourceName"] for i in matched["db"]] == ["web", "*"]
    assert api.get("/v1/connect/intentions/check", params={"source": "web", "destination": "db"}).json()["Allowed"] is False
    assert api.get("/v1/connect/intentions/check", params={"source": "api", "destination": "db"}).json()["Allowed"] is True
    td = api.get("/v1/connect/ca/roots").json()["TrustDomain"]
    auth = api.post("/v1/agent/connect/authorize", json={
        "Target": "db", "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/web", "ClientCertSerial": "01"})
    assert auth.json() == {"Authorized": False, "Reason": "Matched L4 intention: web => db (deny)"}
    auth = api.post("/v1/agent/connect/authorize", json={
        "Target": "db", "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/api"})
    assert auth.json()["Authorized"] is True
    bad = api.post("/v1/agent/connect/authorize", json={"Target": "db", "ClientCertURI": "spiffe://x/agent/client/dc/dc1/id/n"})
    assert bad.status_code == 400
    assert api.get(f"/v1/connect/intentions/{ix_id}").json()["SourceName"] == "*"
    assert api.delete(f"/v1/connect/intentions/{ix_id}").status_code == 200
    assert api.delete("/v1/connect/intentions/exact", params={"source": "web", "destination": "db"}).status_code == 200
    assert api.get(f"/v1/connect/intentions/{ix_id}").status_code == 404


def _pub(pem: str) -> bytes:
    return x509.load_pem_x509_certificates(pem.encode())[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_leaf_certificate_and_rotation(agent):
    sock = agent_socket(agent)
    with YurtClient(f"unix://{sock}") as client:  # as a sidecar inside an allocation would
        roots, _ = client.ca_roots()
        cert, index = client.leaf("web")
        assert index == cert["ModifyIndex"] > 0
        key = serialization.load_pem_private_key(cert["PrivateKeyPEM"].encode(), None)
        assert _pub(cert["CertPEM"]) == key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        uri = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/web"
        assert cert["ServiceURI"] == uri and cert["Service"] == "web"
        again, _ = client.leaf("web")
        assert again["SerialNumber"] == cert["SerialNumber"]  # cached
        result = {}

        def watch():
            result["r"] = client.leaf("web", index=index, wait="60s")

        t = threading.Thread(target=watch)
        t.start()
        client.set_ca_configuration({"ForceRotation": True})
        t.join(90)
        new, new_index = result["r"]
        assert new_index > index and new["SerialNumber"] != cert["SerialNumber"]
        _leaf, xsigned = x509.load_pem_x509_certificates(new["CertPEM"].encode())
        new_roots, _ = client.ca_roots()
        old_root = next(r for r in new_roots["Roots"] if r["ID"] == roots["ActiveRootID"])
        assert old_root["Active"] is False
        xsigned.verify_directly_issued_by(x509.load_pem_x509_certificate(old_root["RootCert"].encode()))


def agent_socket(agent) -> str:
    sock = httpx.get(agent.url + "/v1/agent/self").json()["config"]["data_dir"] + "/yurt.sock"
    return sock


def test_ca_configuration_endpoint(api):
    cfg = api.get("/v1/connect/ca/configuration").json()
    assert cfg["Provider"] == "yurt" and cfg["Config"]["LeafCertTTL"] == "72h"
    assert api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {"LeafCertTTL": "30s"}}).status_code == 400
    pem = api.get("/v1/connect/ca/roots", params={"pem": "true"})
    assert pem.headers["content-type"].startswith("application/pem-certificate-chain")
    assert pem.text.count("BEGIN CERTIFICATE") >= 1


def test_cli_intentions(agent):
    addr = ["-address", agent.url]
    r = run_yurt("intention", "create", "-deny", "-description", "no", "cli-web", "cli-db", *addr)
    assert r.returncode == 0 and "Created: cli-web => cli-db (deny)" in r.stdout, r.stderr
    assert run_yurt("intention", "create", "cli-web", "cli-db", *addr).returncode == 1
    assert run_yurt("intention", "create", "-allow", "-replace", "cli-web", "cli-db", *addr).returncode == 0
    listing = run_yurt("intention", "list", *addr)
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0].split() == ["Source", "Action", "Destination", "Precedence"]
    assert any(ln.split() == ["cli-web", "allow", "cli-db", "9"] for ln in listing.stdout.splitlines())
    assert run_yurt("intention", "check", "cli-web", "cli-db", *addr).stdout.strip() == "Allowed"
    assert run_yurt("intention", "create", "-deny", "*", "cli-db", *addr).returncode == 0
    denied = run_yurt("intention", "check", "other", "cli-db", *addr)
    assert (denied.returncode, denied.stdout.strip()) == (2, "Denied")
    assert "Precedence" in run_yurt("intention", "get", "cli-web", "cli-db", *addr).stdout
    assert run_yurt("intention", "delete", "cli-web", "cli-db", *addr).returncode == 0
    assert run_yurt("intention", "delete", "*", "cli-db", *addr).returncode == 0
    assert run_yurt("intention", "delete", "cli-web", "cli-db", *addr).returncode == 1


def test_default_deny_and_a_restart_keeps_the_ca(tmp_path):
    data = str(tmp_path / "data")
    with AgentProcess(data_dir=data, extra=["-default-intention-policy", "deny", "-leaf-cert-ttl", "2m"]) as a:
        with a.api() as api:
            roots = api.get("/v1/connect/ca/roots").json()
            r = api.get("/v1/connect/intentions/check", params={"source": "a", "destination": "b"})
            assert r.json()["Allowed"] is False and r.headers["X-Consul-Default-ACL-Policy"] == "deny"
            cert = api.get("/v1/agent/connect/ca/leaf/web").json()
            leaf = x509.load_pem_x509_certificates(cert["CertPEM"].encode())[0]
            assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 120
            api.put("/v1/agent/service/register", json={"Name": "kept", "Port": 1})
    with AgentProcess(data_dir=data) as a:
        with a.api() as api:
            again = api.get("/v1/connect/ca/roots").json()
            assert (again["TrustDomain"], again["ActiveRootID"]) == (roots["TrustDomain"], roots["ActiveRootID"])
            assert "kept" in api.get("/v1/catalog/services").json()
            r = api.get("/v1/connect/intentions/check", params={"source": "a", "destination": "b"})
            assert r.json()["Allowed"] is True  # this agent runs with the default policy, allow


def test_the_agent_runs_tcp_checks_of_api_registered_services(api):
    """A nested SidecarService's "Connect Sidecar Listening" TCP check is run by the agent."""
    import socket as so

    from .agent_util import wait_for
    listener = so.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        api.put("/v1/agent/service/register", json={
            "Name": "tcpweb", "Port": 1, "Connect": {"SidecarService": {"Port": port}}})
        wait_for(lambda: any(c["Name"] == "Connect Sidecar Listening" and c["Status"] == "passing"
                             for c in api.get("/v1/health/checks/tcpweb-sidecar-proxy").json()),
                 timeout=30, what="the sidecar's TCP check to pass")
        (entry,) = api.get("/v1/health/connect/tcpweb", params={"passing": "1"}).json()
        assert entry["Service"]["Port"] == port
    finally:
        listener.close()
        api.put("/v1/agent/service/deregister/tcpweb")


def test_the_agent_runs_http_checks_of_api_registered_services(api):
    """An HTTP check registered through Consul's agent API passes while the endpoint answers
    2xx and turns critical, with the answer in its output, when it answers 500."""
    import http.server
    import threading

    from .agent_util import wait_for

    answer = {"code": 200}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(answer["code"])
            self.end_headers()
            self.wfile.write(b"db ok" if answer["code"] == 200 else b"db down")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/health?deep=1"
    try:
        api.put("/v1/agent/service/register", json={
            "Name": "httpweb", "Port": httpd.server_address[1],
            "Check": {"HTTP": url, "Interval": "1s", "Timeout": "1s"}})

        def check():
            (c,) = api.get("/v1/health/checks/httpweb").json()
            return c
        passing = wait_for(lambda: (c := check())["Status"] == "passing" and c, timeout=30,
                           what="the HTTP check to pass")
        assert passing["Output"] == f"HTTP GET {url}: 200 OK Output: db ok"
        answer["code"] = 500
        critical = wait_for(lambda: (c := check())["Status"] == "critical" and c, timeout=30,
                            what="the HTTP check to turn critical")
        assert critical["Output"] == f"HTTP GET {url}: 500 Internal Server Error Output: db down"
    finally:
        httpd.shutdown()
        api.put("/v1/agent/service/deregister/httpweb")


def test_errors_are_answered_in_the_shape_of_their_route(api):
    """One mapping for every error: the status says the kind, the text says what and how to fix;
    a Consul-shaped route adds its X-Consul-* headers (python-consul reads them on errors), a
    Nomad-shaped route answers as Nomad does, without them."""
    r = api.get("/v1/connect/intentions/exact", params={"source": "web", "destination": "nowhere"})
    assert (r.status_code, r.text) == (404, "intention not found: web => nowhere")
    assert int(r.headers["X-Consul-Index"]) >= 1 and r.headers["X-Consul-KnownLeader"] == "true"
    r = api.get("/v1/connect/intentions/exact", params={"source": "web"})
    assert (r.status_code, r.text) == (400, "source and destination are required query parameters")
    assert "X-Consul-Index" in r.headers
    r = api.put("/v1/agent/service/register", content=b"{not json")
    assert r.status_code == 400 and r.text.startswith("request body is not valid JSON: ")
    assert "X-Consul-Index" in r.headers
    r = api.put("/v1/connect/intentions/exact", params={"source": "a", "destination": "b"},
                json={"Action": "maybe"})
    assert (r.status_code, r.text) == (400, 'Action must be "allow" or "deny", not "maybe"')
    r = api.get("/v1/job/nope")
    assert (r.status_code, r.text) == (404, "job not found")
    assert "X-Consul-Index" not in r.headers
    r = api.get("/v1/jobs", params={"index": "abc"})
    assert (r.status_code, r.text) == (400, 'invalid index "abc": must be a whole number')
    assert "X-Consul-Index" not in r.headers
