"""The HTTP-aware mesh end to end through real jobs: a `-dev-connect` agent, bridge namespaces,
the sidecars the server injects, config entries written through the API, and the real `curl`
run inside the caller's namespace against its upstream's local port.

Two groups serve service `l7-api` (their sidecars tagged `version = v1` / `v2`, protocol http
from the job's `proxy { config { protocol = "http" } }`); a third group, `l7-web`, has an
upstream to it. A `service-intentions` entry allows `GET /api/` and denies `POST` on it; a
resolver + splitter send 90 % of requests to v1 and 10 % to v2. Every host port is a free one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from .agent_util import AgentProcess, allocs, register, wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")]

API_APP = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
VERSION = sys.argv[1]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16   # the head and the body in one write (unbuffered, Nagle holds the body ~40 ms)
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        got = self.rfile.read(n).decode() if n else ""
        body = json.dumps({"version": VERSION, "method": self.command, "path": self.path, "body": got}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", 9001), H).serve_forever()
'''

API_GROUP = """
  group "api-%(version)s" {
    network { mode = "bridge" }
    service {
      name = "l7-api"
      port = "9001"
      connect {
        sidecar_service {
          meta { version = "%(version)s" }
          proxy {
            config { protocol = "http" }
          }
        }
      }
    }
    task "web" {
      driver = "raw_exec"
      config {
        command = %(python)s
        args    = ["-c", %(app)s, "%(version)s"]
      }
    }
  }
"""

JOB = """
job "l7job" {
  datacenters = ["dc1"]
%(v1)s
%(v2)s
  group "web" {
    network { mode = "bridge" }
    service {
      name = "l7-web"
      port = "9100"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "l7-api"
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
"""

# N GET requests on one kept-alive connection to the upstream's local port; prints the answers'
# versions and statuses as JSON
MANY = r'''
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
out = {}
for i in range(int(sys.argv[1])):
    c.request("GET", f"/api/n/{i}")
    r = c.getresponse()
    body = r.read()
    key = json.loads(body)["version"] if r.status == 200 else str(r.status)
    out[key] = out.get(key, 0) + 1
print(json.dumps(out))
'''


def job_hcl() -> str:
    groups = {v: API_GROUP % {"version": v, "python": json.dumps(sys.executable), "app": json.dumps(API_APP)}
              for v in ("v1", "v2")}
    return JOB % groups


class Scene:
    def __init__(self, agent: AgentProcess, api: httpx.Client) -> None:
        self.agent, self.api = agent, api

    def alloc(self, group: str) -> dict:
        (a,) = [a for a in allocs(self.api, "l7job") if a["TaskGroup"] == group and a["ClientStatus"] == "running"]
        return a

    def curl(self, method: str, path: str) -> tuple[int, str]:
        """curl from inside the web group's namespace to its upstream's local port."""
        res = subprocess.run(["ip", "netns", "exec", self.alloc("web")["ID"], "curl", "-s", "-m", "20", "-X", method,
                              "-w", "\n%{http_code}", *(["-d", "hello"] if method == "POST" else []),
                              f"http://127.0.0.1:8080{path}"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
        body, _, code = res.stdout.rpartition("\n")
        return int(code), body

    def in_netns(self, code: str, *args: str) -> str:
        res = subprocess.run(["ip", "netns", "exec", self.alloc("web")["ID"], sys.executable, "-c", code, *args],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def sidecar_log(self, group: str, service: str) -> list[dict]:
        text = self.api.get(f"/v1/client/fs/logs/{self.alloc(group)['ID']}",
                            params={"task": f"connect-proxy-{service}", "plain": "true"}).text
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

    def config(self, entry: dict) -> None:
        r = self.api.put("/v1/config", json=entry)
        assert r.status_code == 200 and r.json() is True, (entry["Kind"], r.status_code, r.text)


@pytest.fixture(scope="module")
def scene():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        register(api, job_hcl())
        wait_for(lambda: len([a for a in allocs(api, "l7job") if a["ClientStatus"] == "running"]) == 3,
                 timeout=180, what="the three groups running")
        wait_for(lambda: len(api.get("/v1/health/connect/l7-api", params={"passing": "1"}).json()) == 2,
                 timeout=90, what="both l7-api sidecars passing")
        wait_for(lambda: api.get("/v1/health/connect/l7-web", params={"passing": "1"}).json(),
                 timeout=90, what="the l7-web sidecar passing")
        s = Scene(agent, api)
        # the split: subsets by the sidecars' meta, 90 % v1 and 10 % v2
        s.config({"Kind": "service-resolver", "Name": "l7-api", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})
        s.config({"Kind": "service-splitter", "Name": "l7-api", "Splits": [
            {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})
        # L7 intentions: GET under /api/ allowed, POST on it denied
        s.config({"Kind": "service-intentions", "Name": "l7-api", "Sources": [{"Name": "l7-web", "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/api/", "Methods": ["GET"]}},
            {"Action": "deny", "HTTP": {"PathPrefix": "/api/", "Methods": ["POST"]}}]}]})
        yield s
    finally:
        ids = [a["ID"] for a in allocs(api, "l7job")]
        api.delete("/v1/job/l7job")
        try:
            wait_for(lambda: all(api.get(f"/v1/allocation/{i}").json()["ClientStatus"] != "running" for i in ids),
                     timeout=60, what="the job's allocations stopped")
        finally:
            api.delete("/v1/job/l7job", params={"purge": "true"})
            api.close()
            agent.stop()


def test_l7_intentions_allow_get_and_deny_post_through_the_jobs_sidecars(scene):
    s = scene
    # the chain reaches both sidecars asynchronously: wait until POST is refused by the intention
    code, body = wait_for(lambda: (lambda r: r if r[0] == 403 else None)(s.curl("POST", "/api/items")),
                          timeout=60, what="POST /api/items refused by the L7 intention")
    assert "RBAC: access denied" in body and "intention l7-web => l7-api" in body, body
    assert "deny" in body and "POST" in body, body
    code, body = s.curl("GET", "/api/items")
    assert code == 200, body
    got = json.loads(body)
    assert (got["method"], got["path"]) == ("GET", "/api/items") and got["version"] in ("v1", "v2")
    # outside /api/ no permission matches: the default policy (-dev-connect: allow) decides
    code, body = s.curl("GET", "/health")
    assert code == 200, body
    # the access logs: one line per request with method, path and status, on both sides
    up = wait_for(lambda: [e for e in s.sidecar_log("web", "l7-web") if e.get("type") == "request"
                           and e.get("dir") == "upstream" and e.get("path") == "/api/items"],
                  what="the caller's sidecar logging its requests")
    assert {(e["method"], e["status"]) for e in up} >= {("POST", 403), ("GET", 200)}, up
    assert all(e["dst"] == "l7-api" for e in up), up
    denied = wait_for(lambda: [e for v in ("v1", "v2") for e in s.sidecar_log(f"api-{v}", "l7-api")
                               if e.get("type") == "request" and e.get("dir") == "inbound"
                               and e.get("method") == "POST" and e.get("status") == 403],
                      what="the api sidecar logging the denied POST")
    assert denied[0]["verdict"] == "denied" and denied[0]["src"] == "l7-web", denied
    assert "l7-web => l7-api" in denied[0]["reason"] and "deny" in denied[0]["reason"], denied
    # the same lines as a user reads them: `yurt alloc logs <alloc> connect-proxy-l7-web`
    res = subprocess.run([sys.executable, "-m", "yurt.cli.main", "alloc", "logs", s.alloc("web")["ID"],
                          "connect-proxy-l7-web"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "YURT_ADDR": s.agent.url})
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith('{"type":"request"')]
    assert {(e["method"], e["path"], e["status"]) for e in lines} >= {("POST", "/api/items", 403),
                                                                      ("GET", "/api/items", 200)}, res.stdout[-2000:]


def test_an_l4_check_of_an_l7_intention_says_so(scene):
    s = scene
    td = s.api.get("/v1/agent/connect/ca/roots").json()["TrustDomain"]
    # Consul's /v1/agent/connect/authorize is an L4 check: an L7 intention answers false, naming it
    r = s.api.post("/v1/agent/connect/authorize", json={
        "Target": "l7-api", "ClientCertURI": f"spiffe://{td}/ns/default/dc/dc1/svc/l7-web"})
    assert r.status_code == 200, r.text
    assert r.json()["Authorized"] is False and r.json()["Reason"].startswith("Matched L7 intention: l7-web => l7-api")
    # mesh explain: the connection is let through and the requests are decided by the permissions
    r = s.api.get("/v1/mesh/explain", params={"source": "l7-web", "destination": "l7-api"})
    assert r.status_code == 200, r.text
    (row,) = [x for x in r.json()["Rows"] if x["Hop"] == "intention"]
    assert row["Status"] == "ok", row
    assert row["Detail"].startswith("allowed for some requests (L7 permissions of l7-web => l7-api"), row
    assert "GET /api/* allow; POST /api/* deny; else allow (default policy)" in row["Detail"], row


def test_the_splitter_sends_90_10_and_the_sidecar_counts_it(scene):
    s = scene
    wait_for(lambda: s.curl("GET", "/api/warm")[0] == 200, timeout=60, what="GET answered")
    # both subsets known to the caller's sidecar before counting
    wait_for(lambda: set(json.loads(s.in_netns(MANY, "40"))) == {"v1", "v2"}, timeout=60,
             what="requests reaching both v1 and v2")
    sidecar = s.api.get("/v1/health/service/l7-web-sidecar-proxy").json()[0]["Service"]
    metrics_url = f"http://{sidecar['Address']}:{sidecar['Meta']['metrics_port']}/metrics"
    before = _http_2xx(metrics_url)
    t0 = time.monotonic()
    counts = json.loads(s.in_netns(MANY, "1000"))
    took = time.monotonic() - t0
    assert sum(counts.values()) == 1000 and set(counts) == {"v1", "v2"}, counts
    assert abs(counts["v1"] - 900) <= 30 and abs(counts["v2"] - 100) <= 30, counts   # within ±3 % of 1,000
    print(f"1000 requests through the split in {took:.1f}s: {counts}")
    # the caller's sidecar counted every one of them (Prometheus text on its metrics port)
    assert _http_2xx(metrics_url) - before >= 1000
    logged = [e for e in s.sidecar_log("web", "l7-web") if e.get("type") == "request" and
              e.get("path", "").startswith("/api/n/") and e.get("status") == 200]
    assert len(logged) >= 1000 + 40, len(logged)


def _http_2xx(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return sum(smp.value for fam in text_string_to_metric_families(r.text) for smp in fam.samples
               if smp.name == "yurt_sidecar_http_requests_total" and smp.labels.get("direction") == "upstream"
               and smp.labels.get("peer") == "l7-api" and smp.labels.get("code") == "2xx")
