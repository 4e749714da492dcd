"""Answers that must be Consul's and Nomad's own (issue 17's list of differences), each test
naming the documented behaviour it checks, against a real `yurt agent -dev`, through python-consul
and python-nomad where they reach the call, raw HTTP where they do not."""

from __future__ import annotations

import consul
import httpx
import nomad
import pytest

from .agent_util import AgentProcess, wait_for


@pytest.fixture(scope="module")
def agent():
    with AgentProcess() as a:
        yield a


@pytest.fixture
def api(agent):
    with agent.api() as c:
        yield c


def _check(api: httpx.Client, service: str, check_id: str) -> dict:
    return next(c for c in api.get(f"/v1/health/checks/{service}").json() if c["CheckID"] == check_id)


def test_a_ttl_check_not_updated_within_its_ttl_goes_critical(agent, api):
    """Consul: "If the check is not set to passing within the TTL, it is marked critical"."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    assert c.agent.service.register("ttlweb", service_id="ttlweb-1", port=80, check=consul.Check.ttl("1s"))
    try:
        assert _check(api, "ttlweb", "service:ttlweb-1")["Status"] == "critical"   # a TTL check starts critical
        assert c.agent.check.ttl_pass("service:ttlweb-1", notes="alive")
        assert _check(api, "ttlweb", "service:ttlweb-1")["Status"] == "passing"
        index = int(api.get("/v1/health/service/ttlweb", params={"passing": "1"}).headers["X-Consul-Index"])
        # a blocking query on the passing instances wakes when the TTL runs out
        r = api.get("/v1/health/service/ttlweb", params={"passing": "1", "index": index, "wait": "30s"})
        assert r.json() == [] and int(r.headers["X-Consul-Index"]) > index
        check = _check(api, "ttlweb", "service:ttlweb-1")
        assert check["Status"] == "critical" and "TTL expired" in check["Output"]
        # passing again brings it back, until the TTL runs out again
        assert c.agent.check.ttl_pass("service:ttlweb-1")
        assert _check(api, "ttlweb", "service:ttlweb-1")["Status"] == "passing"
        wait_for(lambda: _check(api, "ttlweb", "service:ttlweb-1")["Status"] == "critical", timeout=30,
                 what="the TTL check to expire a second time")
    finally:
        c.agent.service.deregister("ttlweb-1")


def test_check_register_and_deregister_on_a_service(agent, api):
    """Consul's `PUT /v1/agent/check/register` (ServiceID, TTL) and
    `PUT /v1/agent/check/deregister/:id`, answered directly (no redirect to follow)."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    assert c.agent.service.register("chkweb", service_id="chkweb-1", port=80)
    try:
        r = api.put("/v1/agent/check/register", json={"Name": "extra", "ServiceID": "chkweb-1", "TTL": "30s"})
        assert r.status_code == 200, r.text
        checks = c.agent.checks()
        assert checks["extra"]["ServiceID"] == "chkweb-1" and checks["extra"]["Status"] == "critical"
        assert c.agent.check.ttl_pass("extra")
        assert c.agent.checks()["extra"]["Status"] == "passing"
        # python-consul's own call, an HTTP check with an explicit ID
        assert c.agent.check.register("web-http", check=consul.Check.http("http://127.0.0.1:1/", "10s"),
                                      check_id="web-http", service_id="chkweb-1")
        assert c.agent.checks()["web-http"]["Type"] == "http"
        # bad input: the reason, and nothing stored
        r = api.put("/v1/agent/check/register", json={"Name": "orphan", "ServiceID": "nope", "TTL": "1s"})
        assert (r.status_code, r.text) == (400, 'ServiceID "nope" does not exist')
        r = api.put("/v1/agent/check/register", json={"Name": "script", "ServiceID": "chkweb-1",
                                                       "Args": ["/bin/true"], "Interval": "10s"})
        assert r.status_code == 400 and "enable_script_checks" in r.text
        assert set(c.agent.checks()) == {"extra", "web-http"}
        assert c.agent.check.deregister("extra")
        assert set(c.agent.checks()) == {"web-http"}
        r = api.put("/v1/agent/check/deregister/extra")
        assert r.status_code == 404 and 'Unknown check ID "extra"' in r.text
    finally:
        c.agent.service.deregister("chkweb-1")


def test_tagged_addresses_and_locality_are_kept(api):
    """Consul's service definition: TaggedAddresses and Locality come back as registered."""
    body = {"Name": "tagged", "Port": 80,
            "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80},
                                "wan": {"Address": "198.51.100.1", "Port": 8080}},
            "Locality": {"Region": "us-west-1", "Zone": "us-west-1a"}}
    assert api.put("/v1/agent/service/register", json=body).status_code == 200
    try:
        svc = api.get("/v1/agent/services").json()["tagged"]
        assert svc["TaggedAddresses"] == body["TaggedAddresses"] and svc["Locality"] == body["Locality"]
        (entry,) = api.get("/v1/catalog/service/tagged").json()
        assert entry["ServiceTaggedAddresses"] == body["TaggedAddresses"]
        r = api.put("/v1/agent/service/register", json={"Name": "bad", "Locality": {"Planet": "mars"}})
        assert (r.status_code, r.text) == (400, 'service "bad": Locality takes Region and Zone, not Planet')
    finally:
        api.put("/v1/agent/service/deregister/tagged")


def test_agent_services_leave_out_what_consul_leaves_out_when_empty(api):
    """Consul's AgentService: Kind, Proxy, Connect, Namespace (Enterprise), the indexes and
    ContentHash are omitted when empty; Yurt's AllocID too."""
    assert api.put("/v1/agent/service/register", json={"Name": "plain", "Port": 81}).status_code == 200
    try:
        svc = api.get("/v1/agent/services").json()["plain"]
        assert set(svc) == {"ID", "Service", "Tags", "Meta", "Port", "Address", "TaggedAddresses", "Weights",
                            "EnableTagOverride", "Datacenter"}
        assert (svc["ID"], svc["Service"], svc["Port"]) == ("plain", "plain", 81)
    finally:
        api.put("/v1/agent/service/deregister/plain")


def test_an_unknown_path_answers_404_with_the_consul_index(api):
    r = api.get("/v1/no/such/path")
    assert r.status_code == 404 and int(r.headers["X-Consul-Index"]) >= 1


JOB = '''job "parsed" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config { command = "sleep" }
    }
  }
}
'''


def test_nomad_job_answers(agent, api):
    """Nomad: /v1/jobs/parse names the job after its label even without Canonicalize;
    /v1/validate/job without a job is a 400 "Job must be specified"; deregistering a job that
    does not exist succeeds (no evaluation)."""
    n = nomad.Nomad(host="127.0.0.1", port=agent.port)
    parsed = n.jobs.parse(JOB, canonicalize=False)
    assert (parsed["ID"], parsed["Name"]) == ("parsed", "parsed")
    r = api.put("/v1/validate/job", json={})
    assert (r.status_code, r.text) == (400, "Job must be specified")
    r = api.delete("/v1/job/never-registered")
    assert r.status_code == 200 and r.json()["EvalID"] == ""
    assert n.job.deregister_job("never-registered")["EvalID"] == ""


def test_a_service_registered_while_the_agent_starts_is_filed_under_its_node(tmp_path):
    """The agent answers as soon as its HTTP port is up; an agent route that needs its own node
    waits for the node's registration instead of filing the service under the node's name (where
    `check/pass` and deregistration by node ID could not find it)."""
    import subprocess
    import sys

    from .agent_util import free_port
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "yurt.cli.main", "agent", "-dev", "-http-port", str(port),
                             "-data-dir", str(tmp_path / "data")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def answers() -> bool:
        try:
            return httpx.get(url + "/v1/status/leader", timeout=1).status_code > 0
        except httpx.HTTPError:
            return False
    try:
        wait_for(answers, timeout=60, what="the agent's HTTP port")
        with httpx.Client(base_url=url, timeout=60) as api:
            r = api.put("/v1/agent/service/register", json={"Name": "early", "ID": "early-1",
                                                            "Check": {"TTL": "30s"}})
            assert r.status_code == 200, r.text
            assert api.put("/v1/agent/check/pass/service:early-1").status_code == 200
            (node,) = api.get("/v1/nodes").json()
            (entry,) = api.get("/v1/catalog/service/early").json()
            assert entry["ID"] == node["ID"] and entry["Node"] == node["Name"]
            assert _check(api, "early", "service:early-1")["Status"] == "passing"
            assert api.put("/v1/agent/service/deregister/early-1").status_code == 200
            assert api.get("/v1/catalog/service/early").json() == []
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


INIT_STYLE = '''
job "example" {
  datacenters = ["*"]
  type        = "service"

  update {
    max_parallel      = 1
    min_healthy_time  = "1s"
    healthy_deadline  = "1m"
    progress_deadline = "2m"
    auto_revert       = false
    canary            = 0
  }

  migrate {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "1s"
    healthy_deadline = "1m"
  }

  ui {
    description = "An **example** job, as `job init` writes them"
    link {
      label = "Docs"
      url   = "https://example.invalid/docs"
    }
  }

  group "cache" {
    count = 1
    network {
      port "db" {}
    }
    service {
      name     = "init-cache"
      tags     = ["global", "cache"]
      port     = "db"
      provider = "nomad"
    }
    restart {
      attempts = 2
      interval = "30m"
      delay    = "15s"
      mode     = "fail"
    }
    ephemeral_disk {
      size = 300
    }
    task "worker" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo token=$${#NOMAD_TOKEN}; ls $${NOMAD_SECRETS_DIR}; exec sleep 600"]
      }
      identity {
        env  = true
        file = true
      }
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
'''


def test_a_job_in_the_style_of_nomad_job_init_runs_with_its_ui_and_identity_blocks(agent, api):
    """Nomad 1.9's `job init` example has a job-level `ui` block and a task `identity { env,
    file }`: the job is accepted; `ui` is kept (and warned about: Yurt's UI does not show it);
    the task gets its identity token in NOMAD_TOKEN and in secrets/nomad_token."""
    from .agent_util import allocs, register
    r = api.put("/v1/validate/job", json={"Job": _parse(api, INIT_STYLE)})
    assert r.status_code == 200 and r.json()["Error"] == "", r.text
    assert "ui is kept with the job" in r.json()["Warnings"]
    res = register(api, INIT_STYLE)
    assert "ui is kept with the job" in res["Warnings"]
    try:
        job = api.get("/v1/job/example").json()
        assert job["UI"] == {"Description": "An **example** job, as `job init` writes them",
                             "Links": [{"Label": "Docs", "Url": "https://example.invalid/docs"}]}
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "example") if a["ClientStatus"] == "running"],
                            timeout=60, what="the example job running")

        def logged() -> str:
            r = api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": "worker", "type": "stdout",
                                                                      "plain": "true"})
            return r.text if "nomad_token" in r.text else ""
        out = wait_for(logged, timeout=30, what="the task's first lines")
        token_len = int(out.split("token=")[1].split()[0])
        assert token_len > 100   # a JWT
    finally:
        api.delete("/v1/job/example", params={"purge": "true"})


def test_identity_fields_yurt_does_not_issue_are_refused_naming_them(api):
    bad = INIT_STYLE.replace("env  = true", 'env  = true\n        aud  = ["vault.io"]')
    r = api.put("/v1/jobs/parse", json={"JobHCL": bad, "Canonicalize": True})
    assert r.status_code == 400 and ('task "worker" > identity > aud: aud is not supported: Yurt issues the '
                                     "task's default workload identity only") in r.text, r.text


def _parse(api: httpx.Client, hcl: str) -> dict:
    r = api.put("/v1/jobs/parse", json={"JobHCL": hcl, "Canonicalize": True})
    assert r.status_code == 200, r.text
    return r.json()


def test_filter_expressions_on_services_health_and_checks(agent, api):
    """Consul's ?filter= (go-bexpr grammar) on /v1/agent/services, /v1/health/service/:n,
    /v1/health/checks/:n, /v1/health/state/:s and /v1/catalog/service/:n."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    assert api.put("/v1/agent/service/register", json={
        "Name": "flt", "ID": "flt-1", "Port": 8001, "Tags": ["v1", "blue"], "Meta": {"env": "prod"},
        "Check": {"TTL": "60s"}}).status_code == 200
    assert api.put("/v1/agent/service/register", json={
        "Name": "flt", "ID": "flt-2", "Port": 8002, "Tags": ["v2"], "Meta": {"env": "dev"}}).status_code == 200
    try:
        assert c.agent.check.ttl_pass("service:flt-1")
        services = c.agent.services()
        assert set(api.get("/v1/agent/services", params={"filter": 'Service == flt and "v1" in Tags'}).json()) \
            == {"flt-1"}
        assert set(api.get("/v1/agent/services", params={"filter": 'Meta.env != prod and Service == "flt"'})
                   .json()) == {"flt-2"}
        assert "flt-1" in services and "flt-2" in services
        ids = lambda r: sorted(e["Service"]["ID"] for e in r.json())   # noqa: E731
        assert ids(api.get("/v1/health/service/flt", params={"filter": "Service.Port == 8002"})) == ["flt-2"]
        assert ids(api.get("/v1/health/service/flt", params={"filter": "Checks.Status contains passing"})) \
            == ["flt-1", "flt-2"]
        assert ids(api.get("/v1/health/service/flt", params={"filter": "not (Service.Tags is empty) and "
                                                                       "Service.Tags not contains v2"})) == ["flt-1"]
        assert ids(api.get("/v1/health/service/flt", params={"filter": 'Service.Meta.env matches "^pr"'})) \
            == ["flt-1"]
        (check,) = api.get("/v1/health/checks/flt", params={"filter": "ServiceID == flt-1"}).json()
        assert check["CheckID"] == "service:flt-1"
        assert [x["ServiceID"] for x in api.get("/v1/health/state/passing",
                                                params={"filter": 'ServiceName == "flt"'}).json()] == ["flt-1"]
        assert [e["ServiceID"] for e in api.get("/v1/catalog/service/flt",
                                                params={"filter": "ServicePort == 8001"}).json()] == ["flt-1"]
        # bad input: where the expression went wrong, before any blocking wait
        r = api.get("/v1/health/service/flt", params={"filter": "Service.Port ==", "index": "1", "wait": "60s"})
        assert r.status_code == 400 and "1:16: expected a value, found the end" in r.text
        r = api.get("/v1/agent/services", params={"filter": "Service = web"})
        assert r.status_code == 400 and "1:9: unexpected '='" in r.text
        r = api.get("/v1/agent/services", params={"filter": "Service web"})
        assert r.status_code == 400 and "1:9: expected a match operator" in r.text
        # ?peer= is not silently ignored: there is no peering
        r = api.get("/v1/health/service/flt", params={"peer": "other"})
        assert r.status_code == 400 and "Yurt has no cluster peering" in r.text
    finally:
        c.agent.service.deregister("flt-1")
        c.agent.service.deregister("flt-2")


def test_node_list_with_resources_and_os(api):
    """Nomad: `/v1/nodes?resources=true` adds NodeResources and ReservedResources to each row,
    `?os=true` the os.name attribute; neither is there without them."""
    (plain,) = api.get("/v1/nodes").json()
    assert "NodeResources" not in plain and "Attributes" not in plain
    (row,) = api.get("/v1/nodes", params={"resources": "true", "os": "true"}).json()
    assert row["NodeResources"]["Memory"]["MemoryMB"] > 0 and "ReservedResources" in row
    assert row["Attributes"] == {"os.name": api.get(f"/v1/node/{row['ID']}").json()["Attributes"]["os.name"]}


def test_the_consul_listener_answers_as_consul_and_the_http_port_as_nomad(tmp_path):
    """ports { consul = N }: the API on a second port where /v1/agent/self and /v1/status/*
    are Consul's shapes (CONSUL_HTTP_ADDR points there); the HTTP port keeps Nomad's."""
    from .agent_util import free_port
    port = free_port()
    conf = tmp_path / "agent.hcl"
    conf.write_text(f"ports {{\n  consul = {port}\n}}\n")
    with AgentProcess(extra=["-config", str(conf)]) as a:
        c = consul.Consul(host="127.0.0.1", port=port)
        me = c.agent.self()
        assert me["Config"]["NodeName"] and me["Config"]["Datacenter"] == "dc1" and me["Config"]["Server"] is True
        assert me["Stats"]["consul"]["leader"] == "true"
        assert me["Stats"]["consul"]["leader_addr"] == c.status.leader() == "127.0.0.1:8300"
        assert c.status.peers() == ["127.0.0.1:8300"]
        # Consul's members: a list; a dev agent is one member, a server (its client node has its name)
        (m,) = c.agent.members()
        assert (m["Name"], m["Tags"]["role"], m["Status"], m["Port"], m["Addr"]) == \
            (me["Config"]["NodeName"], "consul", 1, 8301, "127.0.0.1")
        assert c.agent.service.register("via8500", service_id="via8500-1", port=9)
        with a.api() as api:   # the same catalog, and Nomad's shapes on the HTTP port
            assert [e["ServiceID"] for e in api.get("/v1/catalog/service/via8500").json()] == ["via8500-1"]
            assert set(api.get("/v1/agent/self").json()) == {"config", "member", "stats"}
            assert set(api.get("/v1/agent/members").json()) == {"ServerName", "ServerRegion", "ServerDC", "Members"}
            assert api.get("/v1/status/leader").json() == f"127.0.0.1:{a.port}"
        n = nomad.Nomad(host="127.0.0.1", port=a.port)
        assert n.status.leader.get_leader() == f"127.0.0.1:{a.port}"


def test_the_catalog_lists_the_servers_as_the_consul_service(agent, api):
    """Consul's catalog always has a "consul" service: its servers (on port 8300)."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    _, services = c.catalog.services()
    assert services["consul"] == []
    _, entries = c.catalog.service("consul")
    assert [(e["ServiceID"], e["ServicePort"], e["Address"]) for e in entries] == [("consul", 8300, "127.0.0.1")]
    _, healthy = c.health.service("consul", passing=True)
    assert [e["Checks"][0]["CheckID"] for e in healthy] == ["serfHealth"]


def test_service_maintenance_and_the_node_views(agent, api):
    """Consul: maintenance mode adds a critical `_service_maintenance:<id>` check (the instance
    leaves ?passing answers) until it is disabled; /v1/catalog/datacenters, /v1/catalog/nodes,
    /v1/catalog/node/:n and /v1/health/node/:n."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    assert c.agent.service.register("mnt", service_id="mnt-1", port=7)
    try:
        _, healthy = c.health.service("mnt", passing=True)
        assert [e["Service"]["ID"] for e in healthy] == ["mnt-1"]
        assert c.agent.service.maintenance("mnt-1", "true", reason="upgrading")
        check = c.agent.checks()["_service_maintenance:mnt-1"]
        assert (check["Status"], check["Notes"]) == ("critical", "upgrading")
        assert c.health.service("mnt", passing=True)[1] == []
        assert c.agent.service.maintenance("mnt-1", "false")
        assert "_service_maintenance:mnt-1" not in c.agent.checks()
        assert [e["Service"]["ID"] for e in c.health.service("mnt", passing=True)[1]] == ["mnt-1"]
        r = api.put("/v1/agent/service/maintenance/mnt-1", params={"enable": "maybe"})
        assert r.status_code == 400 and 'enable must be "true" or "false"' in r.text
        r = api.put("/v1/agent/service/maintenance/nope", params={"enable": "true"})
        assert (r.status_code, r.text) == (404, 'Unknown service ID "nope"')

        assert c.catalog.datacenters() == ["dc1"]
        _, nodes = c.catalog.nodes()
        (yurt_node,) = api.get("/v1/nodes").json()
        row = next(n for n in nodes if n["ID"] == yurt_node["ID"])
        assert row["Node"] == yurt_node["Name"] and row["Datacenter"] == "dc1"
        _, node = c.catalog.node(yurt_node["Name"])
        assert node["Node"]["ID"] == yurt_node["ID"] and "mnt-1" in node["Services"]
        assert c.catalog.node("no-such-node")[1] is None
        _, checks = c.health.node(yurt_node["Name"])
        assert checks[0]["CheckID"] == "serfHealth" and checks[0]["Status"] == "passing"
        # no gateway runs here: none exposes mnt, and an unknown gateway carries nothing (tests/test_gateways.py has real ones)
        assert api.get("/v1/health/ingress/mnt").json() == []
        assert api.get("/v1/catalog/gateway-services/ingress-gw").json() == []
    finally:
        c.agent.service.deregister("mnt-1")


def test_catalog_register_and_deregister_an_external_service(agent, api):
    """Consul's /v1/catalog/register files a service (and its checks) under a node no agent runs;
    /v1/catalog/deregister removes a check, a service, or the node's services."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    assert c.catalog.register("ext-db-host", "10.1.2.3", service={"Service": "extdb", "ID": "extdb-1", "Port": 5432,
                                                                    "Tags": ["primary"]},
                              check={"CheckID": "extdb-alive", "Name": "alive", "Status": "passing",
                                     "ServiceID": "extdb-1"})
    _, entries = c.catalog.service("extdb")
    assert [(e["Node"], e["Address"], e["ServicePort"], e["ServiceTags"]) for e in entries] == \
        [("ext-db-host", "10.1.2.3", 5432, ["primary"])]
    _, healthy = c.health.service("extdb", passing=True)
    assert [ch["CheckID"] for ch in healthy[0]["Checks"]][-1] == "extdb-alive"
    _, node = c.catalog.node("ext-db-host")
    assert list(node["Services"]) == ["extdb-1"]
    assert c.catalog.deregister("ext-db-host", check_id="extdb-alive")
    # an external node has no serfHealth (no agent runs it), as in Consul
    assert [ch["CheckID"] for ch in c.health.service("extdb")[1][0]["Checks"]] == []
    assert c.catalog.deregister("ext-db-host", service_id="extdb-1")
    assert c.catalog.service("extdb")[1] == []
    assert c.catalog.deregister("ext-db-host")
    assert "ext-db-host" not in [n["Node"] for n in c.catalog.nodes()[1]]


def test_external_nodes_and_node_level_checks(agent, api):
    """Consul's catalog takes a node with no service (an external node, as consul-esm
    registers them) and node-level checks (no ServiceID); a node's checks count in the health of
    its services (`?passing`), on external nodes and on the agent's own node."""
    c = consul.Consul(host="127.0.0.1", port=agent.port)
    r = api.put("/v1/catalog/register", json={"Node": "lonely", "Address": "10.0.0.9", "NodeMeta": {"rack": "r1"}})
    assert r.status_code == 200 and r.json() is True, r.text
    nodes = {n["Node"]: n for n in c.catalog.nodes()[1]}
    assert nodes["lonely"]["Address"] == "10.0.0.9" and nodes["lonely"]["Meta"] == {"rack": "r1"}
    # a node-level check on the external node, then a service on it
    r = api.put("/v1/catalog/register", json={
        "Node": "lonely", "Address": "10.0.0.9", "Service": {"Service": "legacy", "ID": "legacy-1", "Port": 80},
        "Checks": [{"CheckID": "lonely-ping", "Name": "ping", "Status": "critical"},
                   {"CheckID": "legacy-http", "Name": "http", "Status": "passing", "ServiceID": "legacy-1"}]})
    assert r.status_code == 200, r.text
    _, entries = c.health.service("legacy")
    assert [ch["CheckID"] for ch in entries[0]["Checks"]] == ["lonely-ping", "legacy-http"]
    assert c.health.service("legacy", passing=True)[1] == []       # the node's check is critical
    assert [ch["CheckID"] for ch in c.health.node("lonely")[1]] == ["lonely-ping", "legacy-http"]
    assert api.put("/v1/catalog/register", json={"Node": "lonely", "Address": "10.0.0.9", "SkipNodeUpdate": True,
                                                  "Check": {"CheckID": "lonely-ping", "Name": "ping",
                                                            "Status": "passing"}}).status_code == 200
    assert [e["Service"]["ID"] for e in c.health.service("legacy", passing=True)[1]] == ["legacy-1"]
    assert {n["Node"]: n for n in c.catalog.nodes()[1]}["lonely"]["Meta"] == {"rack": "r1"}   # kept
    critical = [ch["CheckID"] for ch in c.health.state("critical")[1]]
    assert "lonely-ping" not in critical
    # a check naming a service the registration does not carry is refused, naming it
    r = api.put("/v1/catalog/register", json={"Node": "lonely", "Address": "10.0.0.9",
                                               "Check": {"Name": "x", "ServiceID": "nope"}})
    assert r.status_code == 400 and 'ServiceID "nope" is not the service of this registration' in r.text
    # a Yurt node is its agent's, not the catalog's
    own = api.get("/v1/agent/self").json()["member"]["Name"]
    r = api.put("/v1/catalog/register", json={"Node": own, "Address": "10.0.0.1"})
    assert r.status_code == 400 and "is a Yurt node" in r.text
    assert c.catalog.deregister("lonely")
    assert "lonely" not in [n["Node"] for n in c.catalog.nodes()[1]]
    assert c.health.service("legacy")[1] == []

    # a node-level TTL check on the agent's own node: it holds every service of the node
    assert c.agent.service.register("nodechk-svc", service_id="nodechk-svc-1", port=7070)
    assert c.agent.check.register("node-ttl", check=consul.Check.ttl("1s"))
    assert "node-ttl" in c.agent.checks()
    assert c.agent.check.ttl_pass("node-ttl")
    assert [e["Service"]["ID"] for e in c.health.service("nodechk-svc", passing=True)[1]] == ["nodechk-svc-1"]
    assert "node-ttl" in [ch["CheckID"] for ch in c.health.service("nodechk-svc")[1][0]["Checks"]]
    # its TTL runs out: critical, and the node's services drop out of ?passing
    wait_for(lambda: c.health.service("nodechk-svc", passing=True)[1] == [], timeout=15,
             what="the node-level TTL check to expire")
    assert c.agent.checks()["node-ttl"]["Status"] == "critical"
    assert c.agent.check.deregister("node-ttl")
    assert "node-ttl" not in c.agent.checks()
    assert [e["Service"]["ID"] for e in c.health.service("nodechk-svc", passing=True)[1]] == ["nodechk-svc-1"]
    c.agent.service.deregister("nodechk-svc-1")
