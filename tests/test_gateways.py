"""Ingress and terminating gateways on a real agent: bridge namespaces, the gateway proxy task the
server injects, mTLS into the mesh, intentions, TLS at the edge, and the real `curl`.

Every host port is a free one (no fixed ports: other tests run beside these).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from yurt.jobspec import load

from .agent_util import AgentProcess, allocs, free_port, wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root"),
              pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")]

COUNTDASH = Path(__file__).resolve().parent.parent / "examples" / "countdash"

WEB_B = ("import http.server as h\n"
         "class H(h.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        b = ('web-b says hello to ' + self.headers.get('Host', '')).encode()\n"
         "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers()\n"
         "        self.wfile.write(b)\n"
         "h.HTTPServer(('127.0.0.1', 9003), H).serve_forever()\n")

INGRESS_JOB = """
job "gw-ingress" {
  datacenters = ["dc1"]
  group "api" {
    network { mode = "bridge" }
    service {
      name = "count-api"
      port = "9001"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", file("counter_api.py")]
      }
    }
  }

  group "web-b" {
    network { mode = "bridge" }
    service {
      name = "web-b"
      port = "9003"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", %(web_b)s]
      }
    }
  }

  group "ingress" {
    network {
      mode = "bridge"
      port "tcp" {
        static = %(tcp)d
        to     = 8080
      }
      port "http" {
        static = %(http)d
        to     = 8081
      }
    }
    service {
      name = "ingress-gw"
      port = "8080"
      connect {
        gateway {
          ingress {
            listener {
              port     = 8080
              protocol = "tcp"
              service {
                name = "count-api"
              }
            }
            listener {
              port     = 8081
              protocol = "http"
              service {
                name  = "count-api"
                hosts = ["api.example.test"]
              }
              service {
                name  = "web-b"
                hosts = ["b.example.test", "*.b.example.test"]
              }
            }
          }
        }
      }
    }
  }

  group "edge" {
    network {
      mode = "bridge"
      port "https" {
        static = %(https)d
        to     = 8443
      }
    }
    service {
      name = "edge-gw"
      port = "8443"
      connect {
        gateway {
          ingress {
            tls {
              enabled = true
            }
            listener {
              port     = 8443
              protocol = "http"
              service {
                name  = "count-api"
                hosts = ["api.example.test"]
              }
            }
          }
        }
      }
    }
  }
}
"""

TERMINATING_JOB = """
job "gw-terminating" {
  datacenters = ["dc1"]
  group "gateway" {
    network { mode = "bridge" }
    service {
      name = "legacy-gw"
      connect {
        gateway {
          terminating {
            service {
              name = "legacy"
            }
          }
        }
      }
    }
  }

  group "client" {
    network { mode = "bridge" }
    service {
      name = "legacy-client"
      port = "9999"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "legacy"
              local_bind_port  = 19090
            }
          }
        }
      }
    }
    task "idle" {
      driver = "exec"
      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }
    }
  }
}
"""


def curl(*args: str) -> subprocess.CompletedProcess:
    """The real curl: -s quiet, -S errors, at most 10 s; its output and exit code as a user sees."""
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30)


def running(api, job: str, n: int) -> bool:
    return len([a for a in allocs(api, job) if a["ClientStatus"] == "running"]) == n


def register(api, text: str, name: str) -> None:
    loaded = load(text, str(COUNTDASH / f"{name}.nomad"), base_dir=str(COUNTDASH))
    r = api.put("/v1/jobs", json=loaded.job.to_document())
    assert r.status_code == 200, r.text


def intention(api, source: str, destination: str, action: str | None) -> None:
    params = {"source": source, "destination": destination}
    if action is None:
        api.delete("/v1/connect/intentions/exact", params=params)
        return
    r = api.put("/v1/connect/intentions/exact", params=params, json={"Action": action})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def agent():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    yield agent, api
    for job in ("gw-ingress", "gw-terminating"):
        api.delete(f"/v1/job/{job}", params={"purge": "true"})
    api.close()
    agent.stop()


@pytest.fixture(scope="module")
def ingress(agent):
    _, api = agent
    ports = {"tcp": free_port(), "http": free_port(), "https": free_port()}
    register(api, INGRESS_JOB % {**ports, "web_b": json.dumps(WEB_B)}, "gw-ingress")
    wait_for(lambda: running(api, "gw-ingress", 4), timeout=180, what="gw-ingress running")
    return api, ports


def count_via(port: int) -> dict | None:
    r = curl(f"http://127.0.0.1:{port}/")
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None


def test_curl_through_an_ingress_gateway_reaches_count_api_until_an_intention_denies_it(ingress):
    api, ports = ingress
    first = wait_for(lambda: count_via(ports["tcp"]), timeout=60, what="count-api through the ingress gateway")
    assert set(first) == {"count", "hostname"} and first["count"] >= 1
    # the gateway registered as Consul's do, and says what it carries
    (gw,) = api.get("/v1/catalog/service/ingress-gw").json()
    assert gw["ServiceKind"] == "ingress-gateway"
    gateways = api.get("/v1/health/ingress/count-api").json()
    assert sorted(e["Service"]["Service"] for e in gateways) == ["edge-gw", "ingress-gw"]
    rows = api.get("/v1/catalog/gateway-services/ingress-gw").json()
    assert {(r["Service"]["Name"], r["Port"], r["Protocol"]) for r in rows} == {
        ("count-api", 8080, "tcp"), ("count-api", 8081, "http"), ("web-b", 8081, "http")}
    try:
        intention(api, "ingress-gw", "count-api", "deny")
        # the user sees the connection closed with nothing answered: curl fails (exit 52/56)
        wait_for(lambda: curl(f"http://127.0.0.1:{ports['tcp']}/").returncode in (52, 56), timeout=30,
                 what="curl refused once ingress-gw -> count-api is denied")
        r = curl(f"http://127.0.0.1:{ports['tcp']}/")
        assert r.returncode in (52, 56) and r.stdout == "", r
        # the http listener answers 503 naming the service and the intention
        r = curl("-H", "Host: api.example.test", "-w", "\\n%{http_code}", f"http://127.0.0.1:{ports['http']}/")
        assert r.stdout.endswith("\n503"), r
        assert 'service "count-api"' in r.stdout and "ingress-gw -> count-api" in r.stdout, r.stdout
    finally:
        intention(api, "ingress-gw", "count-api", None)
    wait_for(lambda: count_via(ports["tcp"]), timeout=30, what="count-api again once the deny is gone")


def test_an_http_listener_routes_two_hosts_to_two_services(ingress):
    _, ports = ingress
    url = f"http://127.0.0.1:{ports['http']}/"

    def via(host: str) -> str | None:
        r = curl("-H", f"Host: {host}", url)
        return r.stdout if r.returncode == 0 and r.stdout else None

    a = wait_for(lambda: (lambda t: t if t and t.startswith("{") else None)(via("api.example.test")), timeout=60,
                 what="count-api by its host")
    assert set(json.loads(a)) == {"count", "hostname"}
    assert wait_for(lambda: via("b.example.test:80"), timeout=60, what="web-b by its host") == \
        "web-b says hello to b.example.test:80"
    assert via("x.b.example.test") == "web-b says hello to x.b.example.test"
    # several requests on one connection, each routed by its own Host header
    r = curl("-H", "Host: api.example.test", url, "--next", "-H", "Host: b.example.test", url)
    assert r.returncode == 0 and r.stdout.startswith("{") and r.stdout.endswith("web-b says hello to b.example.test")
    # a host no service serves: 404 naming the listener's hosts
    r = curl("-H", "Host: nope.example.test", "-w", "\\n%{http_code}", url)
    assert r.stdout.endswith("\n404") and 'serves host "nope.example.test"' in r.stdout, r.stdout
    assert "api.example.test" in r.stdout and "b.example.test" in r.stdout


def test_tls_at_the_edge_with_a_certificate_from_the_cluster_ca(ingress, tmp_path):
    api, ports = ingress
    root = next(r["RootCert"] for r in api.get("/v1/agent/connect/ca/roots").json()["Roots"] if r["Active"])
    ca = tmp_path / "root.pem"
    ca.write_text(root)
    url = f"https://api.example.test:{ports['https']}/"
    resolve = f"api.example.test:{ports['https']}:127.0.0.1"

    def fetch() -> dict | None:
        r = curl("--cacert", str(ca), "--resolve", resolve, url)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None

    got = wait_for(fetch, timeout=60, what="count-api over TLS at the edge")
    assert set(got) == {"count", "hostname"}
    # the certificate names the host (SNI and the DNS SAN), and a client that does not trust the
    # cluster's CA refuses it
    r = curl("--resolve", resolve, url)
    assert r.returncode == 60, r   # curl: peer certificate cannot be authenticated with known CA certificates
    r = curl("--cacert", str(ca), "--resolve", f"other.example.test:{ports['https']}:127.0.0.1",
             f"https://other.example.test:{ports['https']}/")
    assert r.returncode == 60 and "other.example.test" in r.stderr, r


@pytest.fixture
def external_http():
    """A plain HTTP server outside the mesh: python -m http.server on the host, on a free port."""
    root = tempfile.mkdtemp(prefix="yurt-legacy-")
    Path(root, "hello.txt").write_text("hello from outside the mesh\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_a_terminating_gateway_lets_a_mesh_service_reach_an_outside_http_server(agent, external_http):
    _, api = agent
    (node,) = api.get("/v1/nodes").json()
    r = api.put("/v1/catalog/register", json={"Node": "legacy-host", "Address": node["Address"],
                                              "Service": {"Service": "legacy", "Port": external_http}})
    assert r.status_code == 200, r.text
    register(api, TERMINATING_JOB, "gw-terminating")
    wait_for(lambda: running(api, "gw-terminating", 2), timeout=180, what="gw-terminating running")
    # the catalog lists the gateway as the external service's mesh endpoint
    (entry,) = wait_for(lambda: api.get("/v1/health/connect/legacy", params={"passing": "1"}).json(), timeout=30,
                        what="legacy's connect endpoint")
    assert entry["Service"]["Kind"] == "terminating-gateway" and entry["Service"]["Service"] == "legacy-gw"
    (client,) = [a for a in allocs(api, "gw-terminating") if a["TaskGroup"] == "client"
                 and a["ClientStatus"] == "running"]

    def fetch() -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", client["ID"], "curl", "-sS", "--max-time", "10",
                               "http://127.0.0.1:19090/hello.txt"], capture_output=True, text=True, timeout=30)

    got = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(fetch()), timeout=60,
                   what="the outside server through the terminating gateway")
    assert got.stdout == "hello from outside the mesh\n"
    try:
        intention(api, "legacy-client", "legacy", "deny")
        wait_for(lambda: fetch().returncode in (52, 56), timeout=30, what="denied by the intention")
        r = fetch()
        assert r.returncode in (52, 56) and r.stdout == "", r
    finally:
        intention(api, "legacy-client", "legacy", None)
