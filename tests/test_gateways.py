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
from .conftest import run_yurt

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")]


WEB_B = ("import http.server as h\n"
         "class H(h.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        b = ('web-b says hello to ' + self.headers.get('Host', '')).encode()\n"
         "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers()\n"
         "        self.wfile.write(b)\n"
         "h.HTTPServer(('127.0.0.1', 9003), H).serve_forever()\n")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "gateways"

# beside the README's example (examples/gateways/ingress.nomad): an http listener routing by
# Host to two services (and to one that does not exist), and TLS at the edge
INGRESS_JOB = """
job "gw-ingress" {
  datacenters = ["dc1"]
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

  group "web-gw" {
    network {
      mode = "bridge"
      port "http" {
        static = %(http)d
        to     = 8081
      }
    }
    service {
      name = "web-gw"
      port = "8081"
      connect {
        gateway {
          ingress {
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
              service {
                name  = "ghost"
                hosts = ["ghost.example.test"]
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
      port "tls" {
        static = %(tls)d
        to     = 8444
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
            listener {
              port     = 8444
              protocol = "tcp"
              service {
                name = "count-api"
              }
            }
          }
        }
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


def register(api, text: str, name: str) -> str:
    """Run a job file's text as `yurt job run` does; the run's warnings."""
    loaded = load(text, str(EXAMPLES / f"{name}.nomad"), base_dir=str(EXAMPLES))
    r = api.put("/v1/jobs", json=loaded.job.to_document())
    assert r.status_code == 200, r.text
    return r.json().get("Warnings") or ""


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
    for job in ("ingress-demo", "gw-ingress", "terminating-demo"):
        api.delete(f"/v1/job/{job}", params={"purge": "true"})
    api.close()
    agent.stop()


@pytest.fixture(scope="module")
def ingress(agent):
    _, api = agent
    ports = {"tcp": free_port(), "http": free_port(), "https": free_port(), "tls": free_port()}
    example = (EXAMPLES / "ingress.nomad").read_text()
    assert "static = 8080" in example
    assert register(api, example.replace("static = 8080", f"static = {ports['tcp']}"), "ingress") == ""
    warnings = register(api, INGRESS_JOB % {**ports, "web_b": json.dumps(WEB_B)}, "gw-ingress")
    # a listener routing to a service nobody registered: warned at job run
    assert 'routes to service "ghost", which the catalog does not know yet' in warnings, warnings
    assert "count-api" not in warnings and "web-b" not in warnings
    wait_for(lambda: running(api, "ingress-demo", 2) and running(api, "gw-ingress", 3), timeout=180,
             what="the ingress jobs running")
    return api, ports


def count_via(port: int) -> dict | None:
    r = curl(f"http://127.0.0.1:{port}/")
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None


def test_curl_through_an_ingress_gateway_reaches_count_api_until_an_intention_denies_it(ingress):
    """The README's example: curl on the host's port reaches count-api through ingress-gw."""
    api, ports = ingress
    first = wait_for(lambda: count_via(ports["tcp"]), timeout=60, what="count-api through the ingress gateway")
    assert set(first) == {"count", "hostname"} and first["count"] >= 1
    # the gateways registered as Consul's do, and say what they carry
    (gw,) = api.get("/v1/catalog/service/ingress-gw").json()
    assert gw["ServiceKind"] == "ingress-gateway"
    gateways = api.get("/v1/health/ingress/count-api").json()
    assert sorted(e["Service"]["Service"] for e in gateways) == ["edge-gw", "ingress-gw", "web-gw"]
    rows = api.get("/v1/catalog/gateway-services/web-gw").json()
    assert {(r["Service"]["Name"], r["Port"], r["Protocol"]) for r in rows} == {
        ("count-api", 8081, "http"), ("web-b", 8081, "http"), ("ghost", 8081, "http")}
    web = f"http://127.0.0.1:{ports['http']}/"
    wait_for(lambda: curl("-H", "Host: api.example.test", web).stdout.startswith("{"), timeout=60,
             what="count-api through web-gw")
    # web-b too, before the deny: its allocation running is not yet its sidecar registered and
    # passing (CI once asserted it below while it was not)
    wait_for(lambda: curl("-H", "Host: b.example.test", web).stdout == "web-b says hello to b.example.test",
             timeout=60, what="web-b through web-gw")
    try:
        intention(api, "ingress-gw", "count-api", "deny")
        intention(api, "web-gw", "count-api", "deny")
        # the user sees the connection closed with nothing answered: curl fails (exit 52/56)
        wait_for(lambda: curl(f"http://127.0.0.1:{ports['tcp']}/").returncode in (52, 56), timeout=30,
                 what="curl refused once ingress-gw -> count-api is denied")
        r = curl(f"http://127.0.0.1:{ports['tcp']}/")
        assert r.returncode in (52, 56) and r.stdout == "", r
        # the http listener answers 503 naming the service and the intention
        r = wait_for(lambda: (lambda r: r if r.stdout.endswith("\n503") else None)(
            curl("-H", "Host: api.example.test", "-w", "\n%{http_code}", web)), timeout=30, what="503")
        assert 'service "count-api"' in r.stdout and "web-gw -> count-api" in r.stdout, r.stdout
        # another service on the same listener is not concerned
        assert curl("-H", "Host: b.example.test", web).stdout == "web-b says hello to b.example.test"
    finally:
        intention(api, "ingress-gw", "count-api", None)
        intention(api, "web-gw", "count-api", None)
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
    r = curl("-H", "Host: nope.example.test", "-w", "\n%{http_code}", url)
    assert r.stdout.endswith("\n404") and 'serves host "nope.example.test"' in r.stdout, r.stdout
    assert "api.example.test" in r.stdout and "b.example.test" in r.stdout
    # a service that does not exist: 503 naming it
    r = curl("-H", "Host: ghost.example.test", "-w", "\n%{http_code}", url)
    assert r.stdout.endswith("\n503") and 'no healthy instance of service "ghost"' in r.stdout, r.stdout


def test_tls_at_the_edge_with_a_certificate_from_the_cluster_ca(ingress, tmp_path):
    api, ports = ingress
    root = next(r["RootCert"] for r in api.get("/v1/agent/connect/ca/roots").json()["Roots"] if r["Active"])
    ca = tmp_path / "root.pem"
    ca.write_text(root)
    url = f"https://api.example.test:{ports['https']}/"
    resolve = f"api.example.test:{ports['https']}:127.0.0.1"

    def fetch(*args: str) -> dict | None:
        r = curl("--cacert", str(ca), *args)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.startswith("{") else None

    got = wait_for(lambda: fetch("--resolve", resolve, url), timeout=60, what="count-api over TLS at the edge")
    assert set(got) == {"count", "hostname"}
    # a tcp listener of the same gateway: TLS ends at the gateway, the bytes go on over mTLS
    tls_url = f"https://api.example.test:{ports['tls']}/"
    got = wait_for(lambda: fetch("--resolve", f"api.example.test:{ports['tls']}:127.0.0.1", tls_url), timeout=30,
                   what="count-api through the TLS tcp listener")
    assert set(got) == {"count", "hostname"}
    # a client that does not trust the cluster's CA refuses the certificate, and so does one
    # asking for a name the certificate does not carry (curl exit 60)
    r = curl("--resolve", resolve, url)
    assert r.returncode == 60, r
    r = curl("--cacert", str(ca), "--resolve", f"other.example.test:{ports['https']}:127.0.0.1",
             f"https://other.example.test:{ports['https']}/")
    assert r.returncode == 60 and "other.example.test" in r.stderr, r


# inside the client's namespace: one request on a kept-alive connection through the gateway,
# "answered" once the body is in, then "closed" when the connection ends
HOLD = """
import socket
s = socket.create_connection(("127.0.0.1", 19090), timeout=60)
s.sendall(b"GET /hello.txt HTTP/1.1\\r\\nHost: legacy\\r\\n\\r\\n")
got = b""
while not got.endswith(b"hello from outside the mesh\\n"):
    got += s.recv(4096)
print("answered", flush=True)
try:
    while s.recv(4096):
        pass
except ConnectionResetError:
    pass
print("closed", flush=True)
"""


def http_server(text: str):
    """A plain HTTP server outside the mesh: python -m http.server on the host, on a free port,
    serving hello.txt."""
    root = tempfile.mkdtemp(prefix="yurt-legacy-")
    Path(root, "hello.txt").write_text(text)
    port = free_port()
    # HTTP/1.1: a client may keep its connection open after an answer
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0",
                             "--protocol", "HTTP/1.1"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, root


HTTPS = """
import http.server, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""


def https_server(name: str):
    """An HTTPS server outside the mesh, its certificate for `name` from a CA of its own (not the
    cluster's): the gateway must be given that CA (ca_file) and the name (sni)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = tempfile.mkdtemp(prefix="yurt-legacy-tls-")
    Path(root, "hello.txt").write_text("hello over TLS\n")
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pems = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM),
            "cert.pem": cert.public_bytes(serialization.Encoding.PEM),
            "key.pem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())}
    for file, data in pems.items():
        Path(root, file).write_bytes(data)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", HTTPS, str(port), f"{root}/cert.pem", f"{root}/key.pem"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, root


@pytest.fixture
def outside():
    servers = [http_server("hello from outside the mesh\n"), http_server("hello from legacy-b\n"),
               https_server("legacy-tls.internal")]
    yield [(port, root) for _, port, root in servers]
    for proc, _, root in servers:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_a_terminating_gateway_lets_a_mesh_service_reach_an_outside_http_server(agent, outside):
    _, api = agent
    (node,) = api.get("/v1/nodes").json()
    for name, (port, _) in zip(("legacy", "legacy-b", "legacy-tls"), outside, strict=True):
        r = api.put("/v1/catalog/register", json={"Node": f"{name}-host", "Address": node["Address"],
                                                  "Service": {"Service": name, "Port": port}})
        assert r.status_code == 200, r.text
    # the README's example, with a second linked service (the client picks it by SNI), one the
    # gateway reaches over TLS (its CA and name given), and one nobody registered (warned at job run)
    text = (EXAMPLES / "terminating.nomad").read_text()
    linked = 'service {\n              name = "legacy"\n            }'
    upstream = 'upstreams {\n              destination_name = "legacy"\n              local_bind_port  = 19090\n            }'
    assert linked in text and upstream in text
    tls_dir = outside[2][1]
    tls_linked = linked.replace('"legacy"', f'"legacy-tls"\n              ca_file = "{tls_dir}/ca.pem"\n'
                                            '              sni     = "legacy-tls.internal"')
    text = text.replace(linked, linked + "\n" + linked.replace('"legacy"', '"legacy-b"') + "\n"
                        + linked.replace('"legacy"', '"nowhere"') + "\n" + tls_linked)
    text = text.replace(upstream, upstream + "\n" + upstream.replace('"legacy"', '"legacy-b"').replace("19090", "19091")
                        + "\n" + upstream.replace('"legacy"', '"legacy-tls"').replace("19090", "19092"))
    warnings = register(api, text, "terminating")
    assert 'service "nowhere" is not registered in the catalog' in warnings and "legacy-b" not in warnings, warnings
    wait_for(lambda: running(api, "terminating-demo", 2), timeout=180, what="terminating-demo running")
    # the catalog lists the gateway as the external service's mesh endpoint
    (entry,) = wait_for(lambda: api.get("/v1/health/connect/legacy", params={"passing": "1"}).json(), timeout=30,
                        what="legacy's connect endpoint")
    assert entry["Service"]["Kind"] == "terminating-gateway" and entry["Service"]["Service"] == "legacy-gw"
    rows = api.get("/v1/catalog/gateway-services/legacy-gw").json()
    assert sorted(r["Service"]["Name"] for r in rows) == ["legacy", "legacy-b", "legacy-tls", "nowhere"]
    assert next(r for r in rows if r["Service"]["Name"] == "legacy-tls")["SNI"] == "legacy-tls.internal"
    assert {r["GatewayKind"] for r in rows} == {"terminating-gateway"}
    (client,) = [a for a in allocs(api, "terminating-demo") if a["TaskGroup"] == "client"
                 and a["ClientStatus"] == "running"]

    def fetch(port: int = 19090) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", client["ID"], "curl", "-sS", "--max-time", "10",
                               f"http://127.0.0.1:{port}/hello.txt"], capture_output=True, text=True, timeout=30)

    got = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(fetch()), timeout=60,
                   what="the outside server through the terminating gateway")
    assert got.stdout == "hello from outside the mesh\n"
    got = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(fetch(19091)), timeout=60,
                   what="the second outside server through the same gateway")
    assert got.stdout == "hello from legacy-b\n"
    # plain HTTP from the client, TLS from the gateway to the outside server (its name checked)
    got = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(fetch(19092)), timeout=60,
                   what="the outside HTTPS server through the gateway")
    assert got.stdout == "hello over TLS\n"
    # a connection that stays open (keep-alive, after one answer) ...
    held = subprocess.Popen(["ip", "netns", "exec", client["ID"], sys.executable, "-c", HOLD], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert held.stdout is not None and held.stdout.readline() == "answered\n"
        intention(api, "legacy-client", "legacy", "deny")
        # ... is closed by the gateway once the intention denies it
        held.wait(timeout=30)
        assert held.stdout.read() == "closed\n"
        wait_for(lambda: fetch().returncode in (52, 56), timeout=30, what="denied by the intention")
        r = fetch()
        assert r.returncode in (52, 56) and r.stdout == "", r
        # the intention is per external service: legacy-b is still reachable
        assert fetch(19091).stdout == "hello from legacy-b\n"
    finally:
        held.kill()
        held.wait()
        intention(api, "legacy-client", "legacy", None)


def test_job_run_warns_about_a_gateway_service_nobody_knows(agent, tmp_path):
    """`yurt job run` prints the file's warnings at their line, then the server's: the
    listener's service that neither the catalog nor any job knows."""
    ag, api = agent
    port = free_port()
    job = tmp_path / "lonely.nomad"
    job.write_text(f"""job "lonely-gw" {{
  datacenters = ["dc1"]
  group "gw" {{
    network {{
      mode = "bridge"
      port "in" {{
        static = {port}
        to     = 7070
      }}
    }}
    service {{
      name = "lonely-gw"
      port = "7070"
      connect {{
        gateway {{
          proxy {{
            envoy_gateway_no_default_bind = true
          }}
          ingress {{
            listener {{
              port = 7070
              service {{
                name = "nobody-home"
              }}
            }}
          }}
        }}
      }}
    }}
  }}
}}
""")
    try:
        r = run_yurt("job", "run", "-detach", str(job), env={"YURT_ADDR": ag.url})
        assert r.returncode == 0, r.stderr
        # the file's own warning, with its position
        assert f"{job}:17:13:" in r.stderr and "envoy_gateway_no_default_bind has no effect in Yurt" in r.stderr
        # and the server's, once
        assert r.stderr.count('routes to service "nobody-home", which the catalog does not know yet') == 1, r.stderr
    finally:
        api.delete("/v1/job/lonely-gw", params={"purge": "true"})


SLOW_APP = ("import http.server as h, threading\n"
            "release = threading.Event()\n"
            "class H(h.BaseHTTPRequestHandler):\n"
            "    protocol_version = 'HTTP/1.1'\n"
            "    def do_GET(self):\n"
            "        if self.path == '/release':\n"
            "            release.set()\n"
            "        if self.path == '/slow':\n"
            "            print('holding /slow', flush=True)\n"
            "            release.wait(60)\n"
            "        b = ('done ' + self.path).encode()\n"
            "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers()\n"
            "        self.wfile.write(b)\n"
            "    def log_message(self, *a):\n"
            "        pass\n"
            "h.ThreadingHTTPServer(('127.0.0.1', 9004), H).serve_forever()\n")

SLOW_JOBS = ("""
job "gw-slow-app" {
  datacenters = ["dc1"]
  group "slow" {
    network { mode = "bridge" }
    service {
      name = "slow-app"
      port = "9004"
      connect { sidecar_service {} }
    }
    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", %(app)s]
      }
    }
  }
}
""", """
job "gw-drain" {
  datacenters = ["dc1"]
  group "gw" {
    network {
      mode = "bridge"
      port "http" {
        static = %(http)d
        to     = 8085
      }
    }
    service {
      name = "drain-gw"
      port = "8085"
      connect {
        gateway {
          ingress {
            listener {
              port     = 8085
              protocol = "http"
              service {
                name  = "slow-app"
                hosts = ["slow.example.test"]
              }
            }
          }
        }
      }
    }
  }
}
""")


def test_a_stopping_ingress_gateway_finishes_the_request_in_flight_and_closes_idle_connections(agent):
    """The gateway's connections are served on threads of their own. When its task is stopped
    (SIGTERM), a request in flight still gets its whole answer, marked `Connection: close`; a
    keep-alive connection waiting for its next request is closed at once; and the proxy stops
    as soon as both are done ("drained"), not at the drain deadline with connections cut."""
    import http.client
    import threading
    _, api = agent
    port = free_port()
    app_job, gw_job = SLOW_JOBS
    register(api, app_job % {"app": json.dumps(SLOW_APP)}, "gw-slow-app")
    register(api, gw_job % {"http": port}, "gw-drain")
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        wait_for(lambda: running(api, "gw-slow-app", 1) and running(api, "gw-drain", 1), timeout=180,
                 what="the slow app and its gateway running")
        (gw_alloc,) = [a for a in allocs(api, "gw-drain") if a["ClientStatus"] == "running"]
        (app_alloc,) = [a for a in allocs(api, "gw-slow-app") if a["ClientStatus"] == "running"]
        wait_for(lambda: curl("-H", "Host: slow.example.test", f"http://127.0.0.1:{port}/fast").stdout == "done /fast",
                 timeout=60, what="the slow app through the gateway")

        def log(alloc: dict, task: str) -> str:
            return api.get(f"/v1/client/fs/logs/{alloc['ID']}", params={"task": task, "plain": "true"}).text

        def gateway_log() -> list[dict]:
            return [json.loads(ln) for ln in log(gw_alloc, "connect-ingress-drain-gw").splitlines()
                    if ln.startswith("{")]

        idle.request("GET", "/fast", headers={"Host": "slow.example.test"})   # keep-alive, then idle
        first = idle.getresponse()
        assert first.status == 200 and first.read() == b"done /fast"
        answers: list = []

        def slow() -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                c.request("GET", "/slow", headers={"Host": "slow.example.test"})
                r = c.getresponse()
                answers.append((r.status, r.read(), r.getheader("connection")))
            except Exception as e:  # noqa: BLE001 - what the user would see, for the assertion below
                answers.append(e)
            finally:
                c.close()
        in_flight = threading.Thread(target=slow)
        in_flight.start()
        wait_for(lambda: "holding /slow" in log(app_alloc, "web"), timeout=30, what="the request in flight")
        r = api.delete("/v1/job/gw-drain")
        assert r.status_code == 200, r.text
        wait_for(lambda: [e for e in gateway_log() if e.get("event") == "draining"], timeout=60,
                 what="the gateway draining")
        # the app answers now (asked in its own namespace, not through the gateway)
        rel = subprocess.run(["ip", "netns", "exec", app_alloc["ID"], "curl", "-sS", "--max-time", "10",
                              "http://127.0.0.1:9004/release"], capture_output=True, text=True, timeout=30)
        assert rel.stdout == "done /release", rel
        in_flight.join(timeout=60)
        assert answers == [(200, b"done /slow", "close")], answers
        # the idle keep-alive connection was closed by the gateway: its socket reads end of file
        assert idle.sock is not None
        idle.sock.settimeout(30)
        assert idle.sock.recv(100) == b""
        stopping = wait_for(lambda: [e for e in gateway_log() if e.get("event") == "stopping"], timeout=60,
                            what="the gateway's stopping record")
        assert stopping[-1]["reason"] == "drained", stopping
    finally:
        idle.close()
        for job in ("gw-drain", "gw-slow-app"):
            api.delete(f"/v1/job/{job}", params={"purge": "true"})
