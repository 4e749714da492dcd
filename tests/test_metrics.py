"""Metrics: the agent's `/v1/metrics` (Prometheus text and Nomad's JSON) and every sidecar's own
`GET /metrics`, found the way Prometheus' `consul_sd_configs` finds them: through the
Consul-shaped catalog (`/v1/catalog/services`, `/v1/health/service/<name>` with `?stale` and
blocking `?index=`), the address built from the sidecar's Meta `metrics_port` as the README's
relabeling does.

One -dev-connect agent for the module (real bridge namespaces, sidecars, mTLS);
the job is ours, on dynamic ports: an app behind a sidecar (raw_exec), and a caller (exec: its
figures come from its cgroup) whose sidecar has it as an upstream. Every figure asserted is one a user would read, and moves because traffic flowed."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .agent_util import AgentProcess, allocs, register, wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

APP = r'''
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + os.environ["NOMAD_ALLOC_ID"] + "\n").encode() * 50
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", 9001), Handler).serve_forever()
'''

# N requests through the caller's upstream (127.0.0.1:8080 in the caller's namespace), each on
# its own connection; prints how many were answered.
CALLS = r'''
import socket, sys
ok = 0
for _ in range(int(sys.argv[1])):
    try:
        with socket.create_connection(("127.0.0.1", 8080), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        ok += data.startswith(b"HTTP/1.0 200")
    except OSError:
        pass
print(ok)
'''

JOB = '''
job "metrics" {
  datacenters = ["dc1"]
  group "api" {
    network {
      mode = "bridge"
    }
    service {
      name = "metrics-api"
      port = "9001"
      connect {
        sidecar_service {}
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = "%(python)s"
        args    = ["%(app)s"]
      }
    }
  }
  group "caller" {
    network {
      mode = "bridge"
    }
    service {
      name = "metrics-caller"
      port = "9002"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "metrics-api"
              local_bind_port  = 8080
            }
          }
        }
      }
    }
    task "idle" {
      driver = "exec"
      config {
        command = "/bin/sleep"
        args    = ["86400"]
      }
    }
  }
}
'''


class Scrape:
    """One scrape, parsed with prometheus_client's own parser: families by name, and the value
    of a sample by its name and labels (the labels given must match; others are ignored)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list:
        return [s for f in self.families.values() for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert found, f"no sample {name}{labels} in:\n{self.text}"
        return sum(s.value for s in found)


def agent_scrape(api: httpx.Client) -> Scrape:
    r = api.get("/v1/metrics", params={"format": "prometheus"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(r.text)


def running(api: httpx.Client, group: str) -> list[dict]:
    return [a for a in allocs(api, "metrics") if a["TaskGroup"] == group and a["ClientStatus"] == "running"]


def in_netns(alloc_id: str, script: str, *args: str) -> str:
    res = subprocess.run(["ip", "netns", "exec", alloc_id, sys.executable, "-c", script, *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


class ConsulSD:
    """What Prometheus' consul_sd_configs does against the agent (its Consul API client): watch
    the service list and each service's health with `?stale` and blocking `?index=&wait=`, and
    turn each entry into a target's meta labels; the README's relabel_configs then keep the
    sidecars with a `metrics_port` and build the address from it."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.index: dict[str, int] = {}

    def _get(self, path: str, key: str) -> list | dict:
        params = {"stale": ""}
        if key in self.index:   # a blocking query: the answer comes at once or when wait passes
            params |= {"index": str(self.index[key]), "wait": "500ms"}
        r = self.api.get(path, params=params)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
        index = int(r.headers["X-Consul-Index"])
        assert index > 0 and index >= self.index.get(key, 0)
        self.index[key] = index
        return r.json()

    def targets(self) -> dict[str, list[str]]:
        """service name -> the scrape addresses (host:port) of its instances with metrics."""
        services = self._get("/v1/catalog/services", "services")
        assert isinstance(services, dict)
        out: dict[str, list[str]] = {}
        for name, tags in services.items():
            assert isinstance(tags, list)
            for entry in self._get(f"/v1/health/service/{name}", name):
                node, svc = entry["Node"], entry["Service"]
                # the labels Prometheus makes (__meta_consul_*) come from these fields
                meta = {"address": node["Address"], "node": node["Node"], "dc": node["Datacenter"],
                        "service": svc["Service"], "service_id": svc["ID"], "service_address": svc["Address"],
                        "service_port": svc["Port"], "tags": svc["Tags"],
                        **{f"service_metadata_{k}": v for k, v in (svc.get("Meta") or {}).items()}}
                assert isinstance(entry["Checks"], list)
                if not meta.get("service_metadata_metrics_port"):   # relabel: action keep
                    continue
                host = meta["service_address"] or meta["address"]
                out.setdefault(meta["service"], []).append(f"{host}:{meta['service_metadata_metrics_port']}")
                assert meta["service_metadata_metrics_path"] == "/metrics"
        return out


def sidecar_scrape(address: str) -> Scrape:
    r = httpx.get(f"http://{address}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(r.text)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    app = tmp / "app.py"
    app.write_text(APP)
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        register(api, JOB % {"python": sys.executable, "app": app})
        wait_for(lambda: running(api, "api") and running(api, "caller"), timeout=120,
                 what="the api and the caller running")
        wait_for(lambda: api.get("/v1/health/connect/metrics-api", params={"passing": "1"}).json(), timeout=60,
                 what="the api's sidecar passing")
        yield api
    finally:
        ids = [a["ID"] for a in allocs(api, "metrics")]
        api.delete("/v1/job/metrics")
        wait_for(lambda: all(api.get(f"/v1/allocation/{i}").json()["ClientStatus"] != "running" for i in ids),
                 timeout=60, what="the job's allocations stopped")
        api.delete("/v1/job/metrics", params={"purge": "true"})
        api.close()
        agent.stop()


def sidecars(api: httpx.Client) -> tuple[str, str]:
    """The scrape addresses of the api's and the caller's sidecars, found as Prometheus does."""
    sd = ConsulSD(api)
    first = sd.targets()
    assert sd.targets() == first   # the blocking round (index, wait) answers the same
    assert set(first) == {"metrics-api-sidecar-proxy", "metrics-caller-sidecar-proxy"}, first  # only sidecars
    (api_sidecar,) = first["metrics-api-sidecar-proxy"]
    (caller_sidecar,) = first["metrics-caller-sidecar-proxy"]
    return api_sidecar, caller_sidecar


@needs_root
def test_agent_metrics_hold_the_server_and_client_series(cluster):
    api = cluster
    m = agent_scrape(api)
    assert m.value("yurt_scheduler_evaluations_total", type="service", outcome="complete") >= 1
    assert m.value("yurt_scheduler_placement_seconds_count", type="service") >= 1
    assert m.value("yurt_plan_apply_seconds_count") >= 1
    assert {s.labels["state"] for s in m.samples("yurt_broker_evaluations")} == {"ready", "unacked", "blocked",
                                                                                 "waiting"}
    assert m.value("yurt_allocations", client_status="running") == 2
    assert m.value("yurt_nodes", status="ready") == 1
    assert m.value("yurt_heartbeats_received_total") >= 1
    assert m.value("yurt_heartbeats_missed_total") == 0
    assert m.value("yurt_ca_leaf_certificates_issued_total", service="metrics-api") >= 1
    assert m.value("yurt_ca_root_expiry_seconds") > 365 * 86400     # a 10-year root
    assert 0 < m.value("yurt_ca_leaf_expiry_seconds", service="metrics-api") <= 72 * 3600
    # the process's time in Python's cyclic garbage collector, per generation
    assert {s.labels["generation"] for s in m.samples("yurt_gc_pause_seconds_total")} == {"0", "1", "2"}
    assert {s.labels["generation"] for s in m.samples("yurt_gc_collections_total")} == {"0", "1", "2"}
    # per task: memory and CPU of the running app, labelled with its allocation, job, group, task
    (web,) = running(api, "api")
    labels = {"alloc_id": web["ID"], "namespace": "default", "job": "metrics", "task_group": "api", "task": "web"}
    assert m.value("yurt_client_task_memory_bytes", **labels) > 1024 * 1024
    assert m.value("yurt_client_task_cpu_seconds_total", **labels, mode="user") > 0
    assert m.value("yurt_client_task_memory_bytes", task="connect-proxy-metrics-api") > 0
    # an exec task: its figures come from its own cgroup
    (caller,) = running(api, "caller")
    idle = {"alloc_id": caller["ID"], "job": "metrics", "task_group": "caller", "task": "idle"}
    assert m.value("yurt_client_task_memory_bytes", **idle) > 0
    assert len(m.samples("yurt_client_task_cpu_seconds_total", **idle)) == 2   # user and system
    # a second scrape has the CPU used since the first: the app answered 200 requests meanwhile
    assert in_netns(caller["ID"], CALLS, "200") == "200"
    assert agent_scrape(api).value("yurt_client_task_cpu_usage_ratio", **labels) > 0

    # a new evaluation of the job moves the scheduler's counters
    before = m.value("yurt_scheduler_evaluations_total")
    r = api.put("/v1/job/metrics/evaluate", json={})
    assert r.status_code == 200, r.text
    wait_for(lambda: agent_scrape(api).value("yurt_scheduler_evaluations_total") > before, timeout=30,
             what="the evaluation counted")
    after = agent_scrape(api)
    assert after.value("yurt_scheduler_placement_seconds_count") > m.value("yurt_scheduler_placement_seconds_count")


@needs_root
def test_agent_metrics_as_nomad_json(cluster):
    api = cluster
    r = api.get("/v1/metrics")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"Timestamp", "Gauges", "Counters", "Samples"}
    gauges = {(g["Name"], tuple(sorted(g["Labels"].items()))): g["Value"] for g in body["Gauges"]}
    assert gauges[("yurt_allocations", (("client_status", "running"),))] == 2
    counters = [c for c in body["Counters"] if c["Name"] == "yurt_scheduler_evaluations_total"]
    assert counters and all(c["Count"] >= 1 and set(c["Labels"]) == {"type", "outcome"} for c in counters)
    placement = [s for s in body["Samples"] if s["Name"] == "yurt_scheduler_placement_seconds"]
    assert placement and placement[0]["Count"] >= 1 and placement[0]["Sum"] > 0
    # python-nomad reads the same document
    import nomad
    n = nomad.Nomad(host="127.0.0.1", port=int(str(api.base_url).rsplit(":", 1)[1].rstrip("/")), timeout=10)
    assert {g["Name"] for g in n.metrics.get_metrics()["Gauges"]} >= {"yurt_allocations", "yurt_broker_evaluations"}
    bad = api.get("/v1/metrics", params={"format": "openmetrics"})
    assert bad.status_code == 400 and 'unknown metrics format "openmetrics"' in bad.text
    assert "?format=prometheus" in bad.text


@needs_root
def test_sidecars_are_found_through_the_catalog_and_count_traffic(cluster):
    api = cluster
    api_sidecar, caller_sidecar = sidecars(api)
    before_api, before_caller = sidecar_scrape(api_sidecar), sidecar_scrape(caller_sidecar)
    for m in (before_api, before_caller):
        assert m.value("yurt_sidecar_ready") == 1
    assert before_api.value("yurt_sidecar_ready", service="metrics-api") == 1
    (caller,) = running(api, "caller")
    assert in_netns(caller["ID"], CALLS, "20") == "20"

    def moved() -> tuple[Scrape, Scrape] | None:
        a, c = sidecar_scrape(api_sidecar), sidecar_scrape(caller_sidecar)
        done = (a.value("yurt_sidecar_inbound_connections_total")
                >= before_api.value("yurt_sidecar_inbound_connections_total") + 20
                and a.value("yurt_sidecar_inbound_connections_active") == 0)
        return (a, c) if done else None

    a, c = wait_for(moved, timeout=30, what="20 inbound connections counted and closed")
    # the app's answers: 50 lines each, sent back to the caller through the api's sidecar
    sent = a.value("yurt_sidecar_inbound_bytes_total", direction="sent")
    assert sent - before_api.value("yurt_sidecar_inbound_bytes_total", direction="sent") > 20 * 50 * 40
    assert a.value("yurt_sidecar_inbound_bytes_total", direction="received") > before_api.value(
        "yurt_sidecar_inbound_bytes_total", direction="received")
    up = {"upstream": "metrics-api"}
    assert c.value("yurt_sidecar_upstream_connections_total", **up) >= before_caller.value(
        "yurt_sidecar_upstream_connections_total", **up) + 20
    assert c.value("yurt_sidecar_upstream_connect_seconds_count", **up) >= before_caller.value(
        "yurt_sidecar_upstream_connect_seconds_count", **up) + 20
    assert c.value("yurt_sidecar_upstream_connect_seconds_sum", **up) > 0
    assert c.value("yurt_sidecar_upstream_bytes_total", direction="received", **up) - before_caller.value(
        "yurt_sidecar_upstream_bytes_total", direction="received", **up) > 20 * 50 * 40
    assert c.value("yurt_sidecar_upstream_connections_active", **up) == 0
    histogram = c.families["yurt_sidecar_upstream_connect_seconds"]
    assert histogram.type == "histogram"
    other = httpx.get(f"http://{api_sidecar}/stats", timeout=10)
    assert other.status_code == 404 and "GET /metrics" in other.text


@needs_root
def test_denials_and_tls_failures_are_counted(cluster):
    api = cluster
    api_sidecar, _ = sidecars(api)
    before = sidecar_scrape(api_sidecar)
    denied = before.samples("yurt_sidecar_authz_denials_total", source="metrics-caller")
    base = denied[0].value if denied else 0
    r = api.put("/v1/connect/intentions/exact", params={"source": "metrics-caller", "destination": "metrics-api"},
                json={"Action": "deny"})
    assert r.status_code == 200, r.text
    (caller,) = running(api, "caller")
    try:
        wait_for(lambda: in_netns(caller["ID"], CALLS, "1") == "0", timeout=30, what="the caller denied")
    finally:
        api.delete("/v1/connect/intentions/exact", params={"source": "metrics-caller", "destination": "metrics-api"})
    after = sidecar_scrape(api_sidecar)
    assert after.value("yurt_sidecar_authz_denials_total", source="metrics-caller") > base
    wait_for(lambda: in_netns(caller["ID"], CALLS, "1") == "1", timeout=30, what="the caller allowed again")

    # a client without a certificate: its TLS handshake fails at the api's sidecar
    entry = api.get("/v1/health/service/metrics-api-sidecar-proxy").json()[0]["Service"]
    tls_before = sum(s.value for s in after.samples("yurt_sidecar_tls_handshake_failures_total", side="inbound"))
    with httpx.Client(verify=False, timeout=5) as plain:
        with pytest.raises(httpx.HTTPError):
            plain.get(f"https://{entry['Address']}:{entry['Port']}/")
    wait_for(lambda: sidecar_scrape(api_sidecar).value("yurt_sidecar_tls_handshake_failures_total",
                                                       side="inbound") > tls_before,
             timeout=30, what="the failed handshake counted")


@needs_root
def test_upstream_errors_name_the_instance(cluster):
    """An instance that refuses connections: the caller's sidecar retries on the good one (the
    request is answered) and counts the failed attempt under that instance's address."""
    api = cluster
    _, caller_sidecar = sidecars(api)
    r = api.put("/v1/agent/service/register", json={
        "ID": "metrics-api-sidecar-proxy-dead", "Name": "metrics-api-sidecar-proxy", "Kind": "connect-proxy",
        "Address": "127.0.0.1", "Port": 9,
        "Proxy": {"DestinationServiceName": "metrics-api", "LocalServiceAddress": "127.0.0.1"},
        "Check": {"CheckID": "dead:ttl", "Name": "test TTL", "TTL": "1h", "Status": "passing"}})
    assert r.status_code == 200, r.text
    (caller,) = running(api, "caller")
    try:
        def counted() -> bool:
            assert in_netns(caller["ID"], CALLS, "4") == "4"   # every request answered, retried if need be
            return bool(sidecar_scrape(caller_sidecar).samples(
                "yurt_sidecar_upstream_errors_total", upstream="metrics-api", address="127.0.0.1:9", kind="connect"))
        wait_for(counted, timeout=60, what="the dead instance's refused connection counted")
    finally:
        api.put("/v1/agent/service/deregister/metrics-api-sidecar-proxy-dead")


def test_sidecar_text_format_parses_with_odd_label_values():
    """The sidecar writes the text format itself (no third-party package): it must parse, with
    cumulative histogram buckets and label values escaped."""
    from types import SimpleNamespace

    from yurt.mesh.config import from_args
    from yurt.mesh.metrics import MeshMetrics

    cfg = from_args(["-service", "web", "-upstream", 'api:8080', "-metrics-addr", "127.0.0.1:0"])
    assert cfg.metrics_addr == "127.0.0.1:0"
    m = MeshMetrics()
    for seconds in (0.0004, 0.003, 0.003, 7.0):
        m.upstream_connected("api", seconds)
    m.upstream_error("api", "10.0.0.5:21000", "tls")
    m.upstream_error("api", "", "no_instance")
    m.denied('we"ird\\name')
    proxy = SimpleNamespace(cfg=cfg, inbound={}, upstream_pipes=set(), upstream_ports={"api": 8080},
                            ready=SimpleNamespace(is_set=lambda: True))
    scrape = Scrape(m.render(proxy))
    buckets = {s.labels["le"]: s.value for s in scrape.samples("yurt_sidecar_upstream_connect_seconds_bucket")}
    assert buckets["0.0005"] == 1 and buckets["0.005"] == 3 and buckets["5.0"] == 3 and buckets["+Inf"] == 4
    assert scrape.value("yurt_sidecar_upstream_connect_seconds_count", upstream="api", service="web") == 4
    assert scrape.value("yurt_sidecar_authz_denials_total", source='we"ird\\name') == 1
    assert scrape.value("yurt_sidecar_tls_handshake_failures_total", side="upstream", upstream="api") == 1
    assert scrape.value("yurt_sidecar_upstream_errors_total", address="", kind="no_instance") == 1
    assert scrape.value("yurt_sidecar_upstream_connections_total", upstream="api") == 4


def test_gc_pauses_count_the_collectors_collections_and_time():
    """`yurt_gc_pause_seconds` and `yurt_gc_collections` follow the collector of the agent's
    process (gc.callbacks), generation by generation."""
    import gc

    from yurt.agent.metrics import _GCPauses, gc_pauses
    pauses = gc_pauses()
    assert gc_pauses() is pauses          # one timer per process, however many agents
    count, seconds = pauses.collections[1], pauses.seconds[1]
    gc.collect(1)
    assert pauses.collections[1] == count + 1 and pauses.seconds[1] > seconds
    samples = {(s.name, s.labels["generation"]): s.value for f in _GCPauses(pauses).collect() for s in f.samples}
    assert samples[("yurt_gc_collections_total", "1")] == pauses.collections[1]
    assert samples[("yurt_gc_pause_seconds_total", "1")] == pauses.seconds[1]
