"""Exposed paths (`proxy { expose { path { ... } } }`) on a real `-dev-connect` agent: the sidecar
serves plain HTTP on the group's `expose` port for /metrics only; every other path of the app
stays behind the mesh (404 naming the exposed paths), and each request is in the sidecar's log.
"""

from __future__ import annotations

import http.client
import json
import os
import sys

import pytest

from .agent_util import AgentProcess, allocs, register, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root")

APP = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = {"/metrics": b"requests_total 7\\n", "/secret": b"the app's secret\\n"}.get(self.path.split("?")[0], b"?\\n")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9005), H).serve_forever()
"""

JOB = f"""
job "exposed" {{
  datacenters = ["dc1"]
  group "app" {{
    network {{
      mode = "bridge"
      port "expose" {{}}
    }}
    service {{
      name = "exposed-app"
      port = "9005"
      connect {{
        sidecar_service {{
          proxy {{
            expose {{
              path {{
                path            = "/metrics"
                protocol        = "http"
                local_path_port = 9005
                listener_port   = "expose"
              }}
            }}
          }}
        }}
      }}
    }}
    task "web" {{
      driver = "raw_exec"
      config {{
        command = {json.dumps(sys.executable)}
        args    = ["-c", {json.dumps(APP)}]
      }}
    }}
  }}
}}
"""


def test_only_the_exposed_path_is_served_outside_the_mesh():
    agent = AgentProcess(extra=["-dev-connect"]).start()
    api = agent.api()
    try:
        register(api, JOB)
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "exposed") if a["ClientStatus"] == "running"] or None,
                            timeout=120, what="the allocation running")
        full = api.get(f"/v1/allocation/{alloc['ID']}").json()
        (port,) = [p["Value"] for p in full["AllocatedResources"]["Shared"]["Ports"] if p["Label"] == "expose"]

        def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str]:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert wait_for(lambda: get(http.client.HTTPConnection("127.0.0.1", port, timeout=10), "/metrics")[0] == 200,
                        timeout=60, what="the exposed path answering")
        # one keep-alive connection: the exposed path (with a query), then another path of the app
        assert get(conn, "/metrics?format=text") == (200, "requests_total 7\n")
        status, body = get(conn, "/secret")
        assert status == 404 and body == 'path "/secret" is not exposed here (exposed: /metrics)\n', body
        assert get(conn, "/metrics") == (200, "requests_total 7\n")
        conn.close()

        def sidecar_log() -> list[dict]:
            text = api.get(f"/v1/client/fs/logs/{alloc['ID']}",
                           params={"task": "connect-proxy-exposed-app", "plain": "true"}).text
            return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
        log = wait_for(lambda: (lambda lines: lines if len(lines) >= 3 else None)(
            [e for e in sidecar_log() if e.get("dir") == "expose"]), what="the sidecar's log of the requests")
        assert [(e["path"], e["status"], e["verdict"]) for e in log[-3:]] == [
            ("/metrics", 200, "allowed"), ("/secret", 404, "refused"), ("/metrics", 200, "allowed")]
        assert next(e for e in sidecar_log() if e.get("event") == "expose")["paths"] == [
            {"path": "/metrics", "local_path_port": 9005, "listener_port": port}]
    finally:
        api.delete("/v1/job/exposed", params={"purge": "true"})
        api.close()
        agent.stop()
