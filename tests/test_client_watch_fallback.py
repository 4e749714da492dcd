"""A client agent on a server of an earlier release: that server has no
`GET /v1/internal/node/<id>/allocations` (it answers 405, as FastAPI answers a method a path does
not take), so the agent watches Nomad's `GET /v1/node/<id>/allocations` instead, and runs and stops
its allocations as before. Two real agents on loopback (a server-only one and a client-only one),
with a small HTTP proxy between them that plays the earlier release by refusing the one route."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .agent_util import allocs, purge_jobs, register, wait_for
from .mesh_agent import MeshAgent
from .test_client_only import ClientAgent

JOB = """
job "older" {
  constraint {
    attribute = "${node.unique.name}"
    value     = "client-only"
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["600"]
      }
      resources {
        memory = 32
      }
    }
  }
}
"""

_NEW_WATCH = re.compile(r"/v1/internal/node/[^/]+/allocations(\?.*)?")
_OLD_WATCH = re.compile(r"/v1/node/[^/]+/allocations(\?.*)?")
_HOP = {"host", "content-length", "connection", "transfer-encoding", "content-encoding", "keep-alive"}


class EarlierRelease:
    """A proxy to `upstream` that answers 405 to the new watch route and forwards the rest
    (blocking queries included: a thread a request), counting the watches of each kind."""

    def __init__(self, upstream: str) -> None:
        self.refused: list[str] = []
        self.legacy: list[str] = []
        proxy = self
        client = httpx.Client(base_url=upstream, timeout=None, trust_env=False)
        self._client = client

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "GET" and _NEW_WATCH.fullmatch(self.path):
                    proxy.refused.append(self.path)
                    self._send(405, {"Content-Type": "application/json"}, b'{"detail":"Method Not Allowed"}')
                    return
                if self.command == "GET" and _OLD_WATCH.fullmatch(self.path):
                    proxy.legacy.append(self.path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                try:
                    r = client.request(self.command, self.path, content=body, headers=headers)
                except httpx.HTTPError as e:
                    self._send(502, {"Content-Type": "text/plain"}, str(e).encode())
                    return
                self._send(r.status_code, {k: v for k, v in r.headers.items() if k.lower() not in _HOP}, r.content)

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()


@pytest.fixture(scope="module")
def cluster():
    server = MeshAgent().start()
    proxy = EarlierRelease(server.url)
    client = ClientAgent([proxy.address]).start()
    try:
        yield server, proxy, client
    finally:
        with server.api() as api:
            purge_jobs(api)
        client.close()
        proxy.close()
        server.close()


def test_a_client_on_an_earlier_server_watches_nomads_route_and_runs_its_allocations(cluster):
    server, proxy, client = cluster
    with server.api() as api:
        register(api, JOB)
        (alloc,) = wait_for(lambda: [a for a in allocs(api, "older") if a["ClientStatus"] == "running"],
                            timeout=90, what=f"the allocation running on the client (log: {client.log_path})")
        assert alloc["NodeName"] == "client-only"
        assert proxy.refused, "the client never asked for the new watch route"
        assert proxy.legacy, "the client did not fall back to GET /v1/node/<id>/allocations"
        assert "watching GET /v1/node/<id>/allocations instead" in client.log()
        # a stop reaches the client through the same watch
        api.delete("/v1/job/older")
        wait_for(lambda: api.get(f"/v1/allocation/{alloc['ID']}").json()["ClientStatus"] == "complete",
                 timeout=60, what="the stopped allocation complete on the client")
        asked = len(proxy.refused)
    # once fallen back, the client does not ask for the new route again
    assert len(proxy.refused) == asked == 1
