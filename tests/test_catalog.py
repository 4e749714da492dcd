"""The service catalog: Consul-style registration, sidecars, checks, health views, blocking, and
the server removing an allocation's services when it stops or its node goes down."""

from __future__ import annotations

import threading

import pytest

from yurt.server.catalog import Catalog, CatalogError
from yurt.server.server import Server
from yurt.state import NotFound, StateStore
from yurt.structs import Allocation

from . import mock

NODE = "node-1"


@pytest.fixture
def store():
    s = StateStore.temporary()
    yield s
    s.close()


@pytest.fixture
def cat(store):
    return Catalog(store)


def reg(cat, body, node=NODE):
    return cat.register(body, node, node, "10.0.0.1")


def test_lowercase_and_camelcase_keys(cat, store):
    reg(cat, {"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"], "meta": {"Team": "x"},
              "check": {"ttl": "10s"}})
    reg(cat, {"Name": "web", "ID": "web-2", "Port": 8081, "Tags": ["v2"]})
    assert cat.service_map() == {"web": ["v1", "v2"]}
    (one,) = [s for s in store.services("web") if s.id == "web-1"]
    assert (one.port, one.meta, one.node_address) == (8080, {"Team": "x"}, "10.0.0.1")
    (check,) = one.checks
    assert (check.check_id, check.type, check.ttl, check.status) == ("service:web-1", "ttl", "10s", "critical")


def test_nested_sidecar_gets_consul_defaults(cat, store):
    reg(cat, {"Name": "web", "Port": 8080, "Connect": {"SidecarService": {}}})
    reg(cat, {"Name": "api", "Port": 9090, "connect": {"sidecar_service": {
        "proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 5000}]}}}})
    web = store.service(NODE, "web-sidecar-proxy")
    assert (web.service, web.kind, web.port) == ("web-sidecar-proxy", "connect-proxy", 21000)
    p = web.proxy
    assert (p.destination_service_name, p.destination_service_id, p.local_service_address,
            p.local_service_port) == ("web", "web", "127.0.0.1", 8080)
    assert [c.name for c in web.checks] == ["Connect Sidecar Listening", "Connect Sidecar Aliasing web"]
    api = store.service(NODE, "api-sidecar-proxy")
    assert api.port == 21001
    assert (api.proxy.upstreams[0].destination_name, api.proxy.upstreams[0].local_bind_port,
            api.proxy.upstreams[0].local_bind_address) == ("db", 5000, "127.0.0.1")
    reg(cat, {"Name": "web", "Port": 8080, "Connect": {"SidecarService": {}}})
    assert store.service(NODE, "web-sidecar-proxy").port == 21000  # kept on re-registration
    reg(cat, {"Name": "web", "Port": 8080})  # the nested sidecar removed -> so is the sidecar
    assert store.service(NODE, "web-sidecar-proxy") is None


def test_explicit_sidecar_and_deregister(cat, store):
    reg(cat, {"Name": "web", "Port": 8080})
    reg(cat, {"Name": "web-sidecar-proxy", "ID": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 23456,
              "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080}})
    assert [s.id for s in cat.instances("web", connect=True)] == ["web-sidecar-proxy"]
    assert cat.deregister(NODE, "web") is not None
    assert store.services() == []
    assert cat.deregister(NODE, "web") is None  # nothing left: no write


def test_proxy_without_destination_is_refused(cat):
    with pytest.raises(CatalogError, match="DestinationServiceName"):
        reg(cat, {"Name": "p", "Kind": "connect-proxy", "Port": 1})
    with pytest.raises(CatalogError, match="Name"):
        reg(cat, {"Port": 1})


def test_checks_and_the_passing_filter(cat, store):
    reg(cat, {"Name": "web", "ID": "a", "Checks": [{"CheckID": "a-ttl", "TTL": "30s"}]})
    reg(cat, {"Name": "web", "ID": "b", "Check": {"CheckID": "b-ttl", "TTL": "30s", "Status": "passing"}})
    reg(cat, {"Name": "web", "ID": "c"})  # no checks: passing
    assert [s.id for s in cat.instances("web", passing=True)] == ["b", "c"]
    cat.update_check(NODE, "a-ttl", "pass", "ok")
    cat.update_check(NODE, "b-ttl", "warning")
    assert [s.id for s in cat.instances("web", passing=True)] == ["a", "c"]
    assert {c["CheckID"]: c["Status"] for c in cat.checks_in_state("warning")} == {"b-ttl": "warning"}
    entry = cat.health_entry(store.service(NODE, "a"))
    # Consul's node-level serfHealth check comes first, then the service's own
    assert [(c["CheckID"], c["Status"]) for c in entry["Checks"]] == [("serfHealth", "passing"), ("a-ttl", "passing")]
    assert entry["Checks"][1]["Output"] == "ok" and entry["Service"]["Service"] == "web"
    with pytest.raises(NotFound):
        cat.update_check(NODE, "nope", "passing")
    # re-registering keeps a check's status unless the definition sets one
    reg(cat, {"Name": "web", "ID": "a", "Checks": [{"CheckID": "a-ttl", "TTL": "30s"}]})
    assert store.service(NODE, "a").checks[0].status == "passing"


def test_alias_check_follows_the_parent(cat, store):
    reg(cat, {"Name": "web", "Port": 8080, "Check": {"CheckID": "web-ttl", "TTL": "9s"},
              "Connect": {"SidecarService": {"Checks": [{"Name": "alias", "AliasService": "web"}]}}})
    sidecar = store.service(NODE, "web-sidecar-proxy")
    assert cat.status(sidecar) == "critical"
    cat.update_check(NODE, "web-ttl", "passing")
    assert cat.status(store.service(NODE, "web-sidecar-proxy")) == "passing"
    assert [e.id for e in cat.instances("web", connect=True, passing=True)] == ["web-sidecar-proxy"]


def test_a_register_wakes_a_blocking_query(cat, store):
    reg(cat, {"Name": "web"})
    index = store.table_index("services")
    t = threading.Timer(0.05, lambda: reg(cat, {"Name": "db"}))
    t.start()
    woke = store.wait(index, 30.0, ("services",))
    t.join()
    assert woke == index + 1 and "db" in cat.service_map()
    from yurt.server.intentions import Intentions
    Intentions(store).upsert_exact("a", "b", {"Action": "allow"})  # another table's write
    assert store.wait(woke, 0, "services") == woke and store.index() == woke + 1


def test_services_survive_a_restart(tmp_path):
    path = str(tmp_path / "s.db")
    with StateStore(path) as s:
        reg(Catalog(s), {"Name": "web", "Port": 1, "Connect": {"SidecarService": {}}})
    with StateStore(path) as s:
        assert [x.id for x in Catalog(s).instances("web", connect=True)] == ["web-sidecar-proxy"]


def _running_alloc(store):
    node = mock.node()
    store.upsert_node(node)
    job = mock.job("countdash")
    store.upsert_job(job)
    alloc = mock.alloc(store.job("default", "countdash"), node.id)
    store.upsert_allocs([alloc])
    return node, alloc


def test_services_go_when_their_allocation_stops(store):
    server = Server(store)
    node, alloc = _running_alloc(store)
    server.catalog.register({"Name": "api", "AllocID": alloc.id}, node.id, node.name)
    server.catalog.register({"Name": "other"}, node.id, node.name)
    server.client_update_allocs(node.id, [Allocation(id=alloc.id, client_status="running")])
    assert [s.id for s in store.services()] == ["api", "other"]
    server.client_update_allocs(node.id, [Allocation(id=alloc.id, client_status="complete")])
    assert [s.id for s in store.services()] == ["other"]
    server.broker.close()


def test_services_go_when_their_node_goes_down(store):
    server = Server(store)
    node, alloc = _running_alloc(store)
    server.catalog.register({"Name": "api", "AllocID": alloc.id}, node.id, node.name)
    server.catalog.register({"Name": "elsewhere"}, "node-2", "node-2")
    server._node_expired(node.id)
    assert [s.id for s in store.services()] == ["elsewhere"]
    server.broker.close()
