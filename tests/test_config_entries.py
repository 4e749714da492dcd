"""Consul's config entries on a real server agent: CRUD, ?cas, blocking queries, both listeners
(Yurt's API and the Consul-shaped one), service-intentions as the intentions themselves, each
bad input refused with its message, the sidecar's compiled chain, and `yurt config ...`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .agent_util import free_port, wait_for
from .mesh_agent import MeshAgent


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    port = free_port()
    conf = tmp_path_factory.mktemp("ce") / "agent.hcl"
    conf.write_text(f"ports {{\n  consul = {port}\n}}\n")
    a = MeshAgent(extra=["-config", str(conf)]).start()
    a.consul_port = port   # type: ignore[attr-defined]
    for svc in ("api", "api-v2", "web", "tcpsvc"):
        a.register_sidecar(svc, free_port())
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def api(agent):
    with httpx.Client(base_url=f"http://127.0.0.1:{agent.consul_port}", timeout=30) as c:
        yield c


def put(c: httpx.Client, entry: dict, **params) -> httpx.Response:
    return c.put("/v1/config", json=entry, params=params)


def refused(c: httpx.Client, entry: dict) -> str:
    r = put(c, entry)
    assert r.status_code == 400, (r.status_code, r.text)
    return r.text


def http_service(c: httpx.Client, name: str) -> None:
    assert put(c, {"Kind": "service-defaults", "Name": name, "Protocol": "http"}).json() is True


def test_crud_cas_and_both_listeners(agent, api):
    entry = {"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Meta": {"owner": "team-a"}}
    assert put(api, entry).json() is True
    got = api.get("/v1/config/service-defaults/web")
    assert got.status_code == 200
    body = got.json()
    assert (body["Kind"], body["Name"], body["Protocol"], body["Meta"]) == ("service-defaults", "web", "http",
                                                                           {"owner": "team-a"})
    assert body["CreateIndex"] == body["ModifyIndex"] > 0
    assert int(got.headers["X-Consul-Index"]) >= body["ModifyIndex"]
    # the same entry on Yurt's own listener
    assert agent.http.get("/v1/config/service-defaults/web").json()["ModifyIndex"] == body["ModifyIndex"]
    # snake_case keys as Consul accepts them
    assert put(api, {"kind": "service-defaults", "name": "api", "protocol": "http"}).json() is True
    names = [e["Name"] for e in api.get("/v1/config/service-defaults").json()]
    assert "api" in names and "web" in names
    # cas: a stale index answers false and writes nothing; the current one writes
    assert put(api, {**entry, "Protocol": "tcp"}, cas=body["ModifyIndex"] + 1000).json() is False
    assert api.get("/v1/config/service-defaults/web").json()["Protocol"] == "http"
    assert put(api, {**entry, "Meta": {"owner": "team-b"}}, cas=body["ModifyIndex"]).json() is True
    after = api.get("/v1/config/service-defaults/web").json()
    assert after["Meta"] == {"owner": "team-b"} and after["CreateIndex"] == body["CreateIndex"]
    assert after["ModifyIndex"] > body["ModifyIndex"]
    # cas=0: create only
    assert put(api, {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}, cas=0).json() is False
    assert put(api, {"Kind": "service-defaults", "Name": "tcpsvc", "Protocol": "tcp"}, cas=0).json() is True
    # delete with cas, then plain
    assert api.delete("/v1/config/service-defaults/tcpsvc", params={"cas": 1}).json() is False
    assert api.delete("/v1/config/service-defaults/tcpsvc").json() is True
    missing = api.get("/v1/config/service-defaults/tcpsvc")
    assert missing.status_code == 404
    assert 'Config entry not found for "service-defaults" / "tcpsvc"' in missing.text
    assert api.get("/v1/config/service-router").json() == []


def test_blocking_query_returns_when_the_entry_changes(api):
    http_service(api, "api")
    r = api.get("/v1/config/service-defaults/api")
    index = int(r.headers["X-Consul-Index"])
    out: dict = {}

    def block() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=30) as c:
            resp = c.get("/v1/config/service-defaults/api", params={"index": index, "wait": "20s"})
            out["index"], out["meta"] = int(resp.headers["X-Consul-Index"]), resp.json().get("Meta")
    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.5)
    assert not out, "the blocking query answered before anything changed"
    assert put(api, {"Kind": "service-defaults", "Name": "api", "Protocol": "http", "Meta": {"v": "2"}}).json()
    t.join(25)
    assert out["index"] > index and out["meta"] == {"v": "2"}


def test_bad_input_is_refused_naming_the_fix(api):
    assert "invalid config entry kind \"service-splitters\"" in api.get("/v1/config/service-splitters").text
    assert 'did you mean "service-splitter"' in refused(api, {"Kind": "service-splitters", "Name": "api"})
    assert 'it must be "global"' in refused(api, {"Kind": "proxy-defaults", "Name": "mine"})
    assert 'unknown or unsupported field "Protocl"' in refused(api, {"Kind": "service-defaults", "Name": "api",
                                                                     "Protocl": "http"})
    assert '"grpc" is not supported' in refused(api, {"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"})
    http_service(api, "api")
    http_service(api, "api-v2")
    # weights that do not add up
    text = refused(api, {"Kind": "service-splitter", "Name": "api",
                         "Splits": [{"Weight": 90}, {"Weight": 5, "Service": "api-v2"}]})
    assert "the sum of all split weights must be 100, not 95" in text
    # a route to a service nobody defines
    text = refused(api, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"Service": "api-v3"}}]})
    assert 'service "api-v3" does not exist' in text and "Routes[1]" in text and '"api-v2"' in text
    text = refused(api, {"Kind": "service-splitter", "Name": "api",
                         "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "nope"}]})
    assert 'service "nope" does not exist' in text
    # a subset no resolver defines
    text = refused(api, {"Kind": "service-splitter", "Name": "api",
                         "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}]})
    assert 'has no subset "v1"' in text and "service-resolver" in text
    # a router or splitter on a tcp service
    text = refused(api, {"Kind": "service-router", "Name": "tcpsvc", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/x"}}, "Destination": {"Service": "api"}}]})
    assert 'discovery chain "tcpsvc" uses a protocol "tcp"' in text and 'Protocol = "http"' in text
    text = refused(api, {"Kind": "service-splitter", "Name": "tcpsvc", "Splits": [{"Weight": 100}]})
    assert 'uses a protocol "tcp"' in text
    # an L7 intention on a tcp service: through config entries and through the intentions API
    l7 = [{"Action": "deny", "HTTP": {"PathPrefix": "/admin", "Methods": ["POST"]}}]
    text = refused(api, {"Kind": "service-intentions", "Name": "tcpsvc",
                         "Sources": [{"Name": "web", "Permissions": l7}]})
    assert 'service "tcpsvc" has protocol "tcp", which is incompatible with L7 intentions permissions' in text
    assert 'service-defaults entry for "tcpsvc" with Protocol = "http"' in text
    r = api.put("/v1/connect/intentions/exact", params={"source": "web", "destination": "tcpsvc"},
                json={"Permissions": l7})
    assert r.status_code == 400 and "incompatible with L7 intentions permissions" in r.text
    # a bad resolver filter, a bad regex, a bad duration
    text = refused(api, {"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {"Filter": "Service.Meta.version =="}}})
    assert 'Subsets "v1": Filter' in text
    text = refused(api, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathRegex": "(["}}, "Destination": {"Service": "api-v2"}}]})
    assert "invalid regular expression" in text
    text = refused(api, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/a"}}, "Destination": {"Service": "api-v2", "RequestTimeout": "5 parsecs"}}]})
    assert "RequestTimeout" in text
    # gateways in Consul's shape
    text = refused(api, {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "api"}, {"Name": "web"}]}]})
    assert "a tcp listener takes exactly one service" in text
    text = refused(api, {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [
        {"Port": 8080, "Protocol": "http", "Services": [{"Name": "tcpsvc"}]}]})
    assert 'does not match defined listener protocol "http"' in text
    text = refused(api, {"Kind": "terminating-gateway", "Name": "tg", "Services": [{"Name": "ext", "CertFile": "/c"}]})
    assert "CertFile and KeyFile go together" in text
    # a protocol change that would strand a router is refused too
    assert put(api, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"Service": "api-v2"}}]}).json() is True
    text = refused(api, {"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"})
    assert 'service-router "api" needs service "api" to speak http' in text
    assert api.delete("/v1/config/service-router/api").json() is True
    # junk bodies
    assert put(api, [1, 2]).status_code == 400   # type: ignore[arg-type]
    assert api.put("/v1/config", params={"cas": "x"}, json={"Kind": "service-defaults", "Name": "a"}).status_code == 400


def test_gateways_are_stored_in_consuls_shape(api):
    http_service(api, "api")
    ig = {"Kind": "ingress-gateway", "Name": "ig", "TLS": {"Enabled": False}, "Listeners": [
        {"Port": 8080, "Protocol": "http", "Services": [{"Name": "api", "Hosts": ["api.example.com"]}]}]}
    assert put(api, ig).json() is True
    got = api.get("/v1/config/ingress-gateway/ig").json()
    assert got["Listeners"] == ig["Listeners"] and got["TLS"] == {"Enabled": False}
    tg = {"Kind": "terminating-gateway", "Name": "tg", "Services": [{"Name": "ext", "CAFile": "/etc/ca.pem",
                                                                    "SNI": "ext.example.com"}]}
    assert put(api, tg).json() is True
    assert api.get("/v1/config/terminating-gateway/tg").json()["Services"] == tg["Services"]


def test_service_intentions_and_intentions_are_one_store(api):
    http_service(api, "api")
    # an intention made through the old API is a source of the entry
    r = api.put("/v1/connect/intentions/exact", params={"source": "web", "destination": "api"}, json={"Action": "allow"})
    assert r.status_code == 200
    entry = api.get("/v1/config/service-intentions/api").json()
    assert entry["Kind"] == "service-intentions" and entry["Name"] == "api"
    assert [(s["Name"], s["Action"]) for s in entry["Sources"]] == [("web", "allow")]
    # the entry written replaces the destination's intentions: web gets L7 permissions, * is denied
    perms = [{"Action": "allow", "HTTP": {"PathPrefix": "/api", "Methods": ["GET"]}},
             {"Action": "deny", "HTTP": {"PathPrefix": "/api"}}]
    assert put(api, {"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "web", "Permissions": perms}, {"Name": "*", "Action": "deny"}]}).json() is True
    ixs = {(i["SourceName"], i["DestinationName"]): i for i in api.get("/v1/connect/intentions").json()}
    assert ixs[("web", "api")]["Permissions"] == perms and ixs[("*", "api")]["Action"] == "deny"
    listed = [e for e in api.get("/v1/config/service-intentions").json() if e["Name"] == "api"]
    assert [s["Name"] for s in listed[0]["Sources"]] == ["web", "*"]   # by precedence
    # deleting the entry deletes the intentions
    assert api.delete("/v1/config/service-intentions/api").json() is True
    assert not [i for i in api.get("/v1/connect/intentions").json() if i["DestinationName"] == "api"]
    assert api.get("/v1/config/service-intentions/api").status_code == 404


def test_the_sidecars_chain_compiles_router_splitter_resolver(api):
    http_service(api, "api")
    http_service(api, "api-v2")
    assert put(api, {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "ConnectTimeout": "2s",
                     "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                                 "v2": {"Filter": "Service.Meta.version == v2"}}}).json() is True
    assert put(api, {"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}).json() is True
    assert put(api, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/two"}}, "Destination": {"Service": "api-v2", "PrefixRewrite": "/",
                                                                   "NumRetries": 2, "RetryOnStatusCodes": [503]}}]}
               ).json() is True
    chain = api.get("/v1/agent/connect/chain/api").json()
    assert chain["Protocol"] == "http"
    first, last = chain["Routes"]
    assert first["Match"] == {"PathPrefix": "/two"} and first["Splits"] == [{"Weight": 100.0, "Target": "api-v2"}]
    assert first["Destination"]["NumRetries"] == 2 and first["Destination"]["RetryOnStatusCodes"] == [503]
    assert last["Match"] is None
    assert last["Splits"] == [{"Weight": 90.0, "Target": "v1.api"}, {"Weight": 10.0, "Target": "v2.api"}]
    assert chain["Targets"]["v1.api"]["Filter"] == "Service.Meta.version == v1"
    assert chain["Targets"]["v1.api"]["ConnectTimeout"] == 2.0
    for kind in ("service-router", "service-splitter", "service-resolver"):
        assert api.delete(f"/v1/config/{kind}/api").json() is True


def test_the_mesh_entry_and_what_it_refuses(agent, api, tmp_path):
    assert api.get("/v1/config/mesh/mesh").status_code == 404
    assert api.get("/v1/agent/connect/chain/api").json()["MeshDestinationsOnly"] is False
    # snake_case as Consul's HCL writes it; the chain of every service carries the setting
    entry = {"kind": "mesh", "name": "mesh", "transparent_proxy": {"mesh_destinations_only": True},
             "tls": {"incoming": {"tls_min_version": "TLSv1_3"}, "outgoing": {"tls_max_version": "TLS_AUTO"}}}
    assert put(api, entry).json() is True
    try:
        got = api.get("/v1/config/mesh/mesh").json()
        assert (got["Kind"], got["Name"], got["TransparentProxy"]) == ("mesh", "mesh", {"MeshDestinationsOnly": True})
        assert got["TLS"] == {"Incoming": {"TLSMinVersion": "TLSv1_3"}, "Outgoing": {"TLSMaxVersion": "TLS_AUTO"}}
        assert [e["Name"] for e in api.get("/v1/config/mesh").json()] == ["mesh"]
        assert agent.http.get("/v1/config/mesh/mesh").json()["ModifyIndex"] == got["ModifyIndex"]
        for svc in ("api", "web"):
            assert api.get(f"/v1/agent/connect/chain/{svc}").json()["MeshDestinationsOnly"] is True
        # Name may be left out (there is one mesh entry)
        assert put(api, {"Kind": "mesh", "TransparentProxy": {"MeshDestinationsOnly": False}}).json() is True
        assert api.get("/v1/agent/connect/chain/api").json()["MeshDestinationsOnly"] is False
    finally:
        assert api.delete("/v1/config/mesh/mesh").json() is True
    assert api.get("/v1/config/mesh/mesh").status_code == 404
    # what Yurt's sidecars cannot do is refused, naming the field and the fix
    assert 'it must be "mesh"' in refused(api, {"Kind": "mesh", "Name": "global"})
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "TransparentProxy": {"MeshDestinationsOnly": "yes"}})
    assert "TransparentProxy.MeshDestinationsOnly must be true or false" in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "AllowEnablingPermissiveMutualTLS": True})
    assert "AllowEnablingPermissiveMutualTLS" in text and "mutual TLS only" in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "HTTP": {"SanitizeXForwardedClientCert": True}})
    assert "HTTP.SanitizeXForwardedClientCert is not supported" in text and "leave HTTP out" in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2"}}})
    assert 'TLS.Incoming.TLSMinVersion "TLSv1_2"' in text and "TLS 1.3 only" in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "TLS": {"Outgoing": {"TLSMaxVersion": "TLS13"}}})
    assert 'TLS.Outgoing.TLSMaxVersion "TLS13" is not a TLS version' in text and "TLSv1_3" in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "TLS": {"Incoming": {
        "CipherSuites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]}}})
    assert "TLS.Incoming.CipherSuites" in text and "TLS 1.2 or earlier" in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "Peering": {"PeerThroughMeshGateways": True}})
    assert 'unknown or unsupported field "Peering"' in text
    text = refused(api, {"Kind": "mesh", "Name": "mesh", "TransparentProxy": {"MeshDestinationOnly": True}})
    assert 'did you mean "MeshDestinationsOnly"' in text
    assert api.get("/v1/config/mesh/mesh").status_code == 404
    # the HCL Consul's docs show, through `yurt config write`
    hcl = tmp_path / "mesh.hcl"
    hcl.write_text('Kind = "mesh"\nTransparentProxy {\n  MeshDestinationsOnly = true\n}\n'
                   'TLS {\n  Incoming {\n    TLSMinVersion = "TLSv1_3"\n  }\n}\n')
    r = subprocess.run([sys.executable, "-m", "yurt.cli.main", "config", "write", "-address", agent.url, str(hcl)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Config entry written: mesh/mesh" in r.stdout, (r.stdout, r.stderr)
    try:
        got = api.get("/v1/config/mesh/mesh").json()
        assert got["TransparentProxy"] == {"MeshDestinationsOnly": True}
        assert got["TLS"] == {"Incoming": {"TLSMinVersion": "TLSv1_3"}}
    finally:
        assert api.delete("/v1/config/mesh/mesh").json() is True


def test_cli_write_read_list_delete(agent, tmp_path):
    env_addr = ["-address", agent.url]
    hcl = tmp_path / "web.hcl"
    hcl.write_text('Kind = "service-defaults"\nName = "web"\nProtocol = "http"\n')

    def yurt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "yurt.cli.main", "config", *args], capture_output=True,
                              text=True, timeout=60)
    r = yurt("write", *env_addr, str(hcl))
    assert r.returncode == 0, r.stderr
    assert 'Config entry written: service-defaults/web' in r.stdout
    r = yurt("read", *env_addr, "-kind", "service-defaults", "-name", "web")
    assert r.returncode == 0 and json.loads(r.stdout)["Protocol"] == "http"
    js = tmp_path / "api.json"
    js.write_text(json.dumps({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}))
    assert yurt("write", *env_addr, str(js)).returncode == 0
    r = yurt("list", *env_addr, "-kind", "service-defaults")
    assert r.returncode == 0 and {"api", "web"} <= set(r.stdout.split())
    bad = tmp_path / "bad.hcl"
    bad.write_text('Kind = "service-splitter"\nName = "web"\nSplits = [{ Weight = 60 }, { Weight = 30, Service = "api" }]\n')
    r = yurt("write", *env_addr, str(bad))
    assert r.returncode == 1 and "the sum of all split weights must be 100, not 90" in r.stderr
    r = yurt("write", *env_addr, "-cas", "-modify-index", "1", str(js))
    assert r.returncode == 1 and "Config entry not updated: service-defaults/api" in r.stderr
    index = json.loads(yurt("read", *env_addr, "-kind", "service-defaults", "-name", "api").stdout)["ModifyIndex"]
    assert yurt("write", *env_addr, "-cas", "-modify-index", str(index), str(js)).returncode == 0
    r = yurt("delete", *env_addr, "-kind", "service-defaults", "-name", "tcpsvc-none")
    assert r.returncode == 0
    r = yurt("read", *env_addr, "-kind", "service-defaults", "-name", "tcpsvc-none")
    assert r.returncode == 1 and "Config entry not found" in r.stderr


def test_config_entries_on_etcd(tmp_path):
    """The same entries on the etcd store: written by the leader, read by a follower through its
    watch, with the indexes the commit gave them; service-intentions in the same write as well."""
    from tests.etcd_cluster import EtcdCluster
    from yurt.server.config_entries import ConfigEntries
    from yurt.server.intentions import Intentions
    from yurt.state.etcd_store import EtcdStateStore

    cluster = EtcdCluster(tmp_path / "etcd", members=1)
    try:
        cluster.wait_healthy(30)
        prefix = f"/ce-{time.monotonic_ns()}/"
        a = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
        won = threading.Event()
        a.leadership.join({"Name": "a", "HTTPAddr": "http://a:4646"}, won.set, lambda: None)
        assert won.wait(15)
        b = EtcdStateStore(cluster.endpoints, prefix=prefix, lease_ttl=5)
        try:
            leader, follower = ConfigEntries(a, Intentions(a)), ConfigEntries(b, Intentions(b))
            ok, index = leader.apply({"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
            assert ok
            leader.apply({"Kind": "service-resolver", "Name": "api", "Subsets": {
                "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})
            ok, _ = leader.apply({"Kind": "service-splitter", "Name": "api", "Splits": [
                {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})
            assert ok
            assert leader.apply({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}, cas=index)[0]
            assert not leader.apply({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}, cas=index)[0]
            leader.apply({"Kind": "service-intentions", "Name": "api", "Sources": [
                {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"]}}]}]})
            wait_for(lambda: follower.entry("service-intentions", "api") is not None, 15,
                     what="the follower to see the writes")
            got = follower.get("service-defaults", "api")
            assert got["Protocol"] == "http" and got["ModifyIndex"] > index
            assert got == leader.get("service-defaults", "api")
            chain = follower.chain("api")
            assert chain["Routes"][-1]["Splits"] == [{"Weight": 90.0, "Target": "v1.api"},
                                                     {"Weight": 10.0, "Target": "v2.api"}]
            assert chain["Intentions"][0]["Permissions"][0]["HTTP"]["Methods"] == ["GET"]
        finally:
            a.close()
            b.close()
    finally:
        cluster.stop()


def test_acls_guard_the_entries_and_the_chain():
    a = MeshAgent(extra=["-acl-enabled"]).start()
    try:
        root = a.http.put("/v1/acl/bootstrap").json()["SecretID"]

        def token(name: str, rules: str) -> dict[str, str]:
            assert a.http.put(f"/v1/acl/policy/{name}", json={"Name": name, "Rules": rules},
                              headers={"X-Nomad-Token": root}).status_code == 200
            tok = a.http.put("/v1/acl/token", json={"Name": name, "Policies": [name]},
                             headers={"X-Nomad-Token": root}).json()
            return {"X-Consul-Token": tok["SecretID"]}
        entry = {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
        r = a.http.put("/v1/config", json=entry)
        assert r.status_code == 403 and "operator:write" in r.text
        reader = token("opread", 'operator {\n  policy = "read"\n}\n')
        r = a.http.put("/v1/config", json=entry, headers=reader)
        assert r.status_code == 403 and "operator:write" in r.text
        writer = token("opwrite", 'operator {\n  policy = "write"\n}\n')
        assert a.http.put("/v1/config", json=entry, headers=writer).json() is True
        assert a.http.get("/v1/config/service-defaults/api", headers=reader).json()["Protocol"] == "http"
        assert a.http.get("/v1/config/service-defaults", headers={}).status_code == 403
        assert a.http.delete("/v1/config/service-defaults/api", headers=reader).status_code == 403
        # a sidecar reads its services' chains with service read
        svc = token("apiread", 'service "api" {\n  policy = "read"\n}\n')
        assert a.http.get("/v1/agent/connect/chain/api", headers=svc).json()["Protocol"] == "http"
        r = a.http.get("/v1/agent/connect/chain/web", headers=svc)
        assert r.status_code == 403 and 'service "web" read' in r.text
    finally:
        a.close()


def test_the_chain_blocks_until_the_chain_itself_changes(agent, api):
    """A sidecar's chain query waits past registrations that leave its chain as it was."""
    r = api.get("/v1/agent/connect/chain/chained")
    assert r.json()["Protocol"] == "tcp"
    index = int(r.headers["X-Consul-Index"])
    out: dict = {}

    def block() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=30) as c:
            resp = c.get("/v1/agent/connect/chain/chained", params={"index": index, "wait": "20s"})
            out["index"], out["protocol"] = int(resp.headers["X-Consul-Index"]), resp.json()["Protocol"]
    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.5)   # the query is waiting (one sent after the registration would answer at once)
    agent.register_sidecar("unrelated", free_port())   # the services table moves, the chain does not
    time.sleep(0.5)
    assert not out, "the chain query answered though the chain had not changed"
    assert put(api, {"Kind": "service-defaults", "Name": "chained", "Protocol": "http"}).json() is True
    t.join(25)
    assert out["protocol"] == "http" and out["index"] > index


JOB_HTTP = '''job "proto" {
  datacenters = ["dc1"]
  group "g" {
    network {
      mode = "bridge"
    }
    service {
      name = "job-declared"
      port = "9001"
      connect {
        sidecar_service {
          proxy {
            config {
              protocol = "http"
            }
          }
        }
      }
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
'''


def test_a_jobs_sidecar_protocol_makes_its_service_http(agent, api, tmp_path):
    """`proxy { config { protocol = "http" } }` in a registered job: its service's chain says
    http (its sidecars and their callers take the HTTP-aware path), and L7 entries are accepted."""
    assert api.get("/v1/agent/connect/chain/job-declared").json()["Protocol"] == "tcp"
    job = tmp_path / "proto.nomad"
    job.write_text(JOB_HTTP)
    r = subprocess.run([sys.executable, "-m", "yurt.cli.main", "job", "run", "-detach", "-address", agent.url,
                        str(job)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert api.get("/v1/agent/connect/chain/job-declared").json()["Protocol"] == "http"
    assert put(api, {"Kind": "service-intentions", "Name": "job-declared", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["GET"]}}]}]}).json() is True


def test_config_write_names_the_line_of_an_hcl_syntax_error(tmp_path):
    from tests.conftest import run_yurt
    bad = tmp_path / "defaults.hcl"
    bad.write_text('Kind = "service-defaults"\nName =\n')
    res = run_yurt("config", "write", str(bad), env={"YURT_ADDR": "http://127.0.0.1:9"})
    assert res.returncode == 1
    assert res.stderr.strip() == f'Error: {bad}:2:7: invalid HCL: unexpected line break; "Name =" needs a value after "="'
