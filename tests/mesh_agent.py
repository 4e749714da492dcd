"""A real server-only `yurt agent` as the sidecar proxies' source, for the mesh tests and
bench/proxy.py: leaf certificates, CA roots, intentions and mesh endpoints come from its
Consul-shaped API, and its intentions engine decides who may connect.

The proxies reach it as the product's connect-proxy driver makes them: through the agent's unix
socket (`<data dir>/yurt.sock`). The test sets the scene through the same API a user (or a
client agent) would: `PUT /v1/agent/service/register` for sidecar instances, `PUT
/v1/agent/check/<pass|fail>/<id>` for their health, `PUT /v1/connect/intentions/exact` for
intentions, `PUT /v1/connect/ca/configuration` to rotate the root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import httpx

from .agent_util import AgentProcess, wait_for


class MeshAgent(AgentProcess):
    """`yurt agent -server -data-dir <tmp>` on a free port (no client: needs no root)."""

    def __init__(self, extra: list[str] | None = None) -> None:
        # a short path: the API socket <data dir>/yurt.sock must fit in sun_path (~108 bytes)
        super().__init__(data_dir=tempfile.mkdtemp(prefix="yurt-mesh-"), extra=extra)
        self.socket_path = os.path.join(self.data_dir, "yurt.sock")
        self.address = f"unix://{self.socket_path}"  # what the connect-proxy driver gives a proxy
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> MeshAgent:
        args = [sys.executable, "-m", "yurt.cli.main", "agent", "-server", "-data-dir", self.data_dir,
                "-http-port", str(self.port), *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 60, what=f"agent on port {self.port} (log: {self.log_path})")
        wait_for(self._socket_serves, 30, interval=0.05, what=f"the agent's API on {self.socket_path}")
        return self

    def _socket_serves(self) -> bool:
        with httpx.Client(transport=httpx.HTTPTransport(uds=self.socket_path), base_url="http://agent",
                          timeout=2) as c:
            return c.get("/v1/agent/health").status_code == 200

    def close(self) -> None:
        """Stop the agent, remove its data directory and log."""
        self.stop()
        self.http.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    # -- the API, as a user or a client agent calls it --------------------------------------
    def _ok(self, r: httpx.Response) -> httpx.Response:
        assert r.status_code == 200, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
        return r

    def roots(self) -> dict:
        return self._ok(self.http.get("/v1/agent/connect/ca/roots")).json()

    @property
    def trust_domain(self) -> str:
        return self.roots()["TrustDomain"]

    def root_pems(self) -> list[str]:
        return [r["RootCert"] for r in self.roots()["Roots"]]

    def active_root_pem(self) -> str:
        return next(r["RootCert"] for r in self.roots()["Roots"] if r["Active"])

    def leaf(self, service: str) -> dict:
        """The agent's current leaf certificate (and key) for `service`, as a proxy gets it."""
        return self._ok(self.http.get(f"/v1/agent/connect/ca/leaf/{service}")).json()

    def register_sidecar(self, destination: str, port: int, instance: str = "", status: str = "passing") -> str:
        """A `<destination>-sidecar-proxy` instance at 127.0.0.1:port (Kind connect-proxy, as a
        client agent registers a sidecar) with a TTL check in `status`; returns the check's ID."""
        sid = f"{destination}-sidecar-proxy" + (f"-{instance}" if instance else "")
        check_id = f"{sid}:ttl"
        self._ok(self.http.put("/v1/agent/service/register", json={
            "ID": sid, "Name": f"{destination}-sidecar-proxy", "Kind": "connect-proxy",
            "Address": "127.0.0.1", "Port": port,
            "Proxy": {"DestinationServiceName": destination, "LocalServiceAddress": "127.0.0.1"},
            "Check": {"CheckID": check_id, "Name": "test TTL", "TTL": "1h", "Status": status}}))
        return check_id

    def set_check(self, check_id: str, status: str) -> None:
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        self._ok(self.http.put(f"/v1/agent/check/{verb}/{check_id}"))

    def intention(self, source: str, destination: str, action: str) -> None:
        self._ok(self.http.put("/v1/connect/intentions/exact", params={"source": source, "destination": destination},
                               json={"Action": action}))

    def rotate_root(self, private_key_pem: str | None = None) -> dict:
        """A new active root, cross-signed by the old one (which stays trusted); made for
        `private_key_pem` if given. Returns the new roots."""
        config = {"PrivateKey": private_key_pem} if private_key_pem else {"ForceRotation": True}
        before = self.roots()["ActiveRootID"]
        self._ok(self.http.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": config}))
        roots = self.roots()
        assert roots["ActiveRootID"] != before, roots
        return roots


class ProcessLines(threading.Thread):
    """Reads a process's output (a text stream) line by line as it comes, so a test can wait on
    what the process has said so far; `json()` gives the JSON lines (the proxy's access log)."""

    def __init__(self, stream) -> None:
        super().__init__(name="process-lines", daemon=True)
        self.stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.start()

    def run(self) -> None:
        for line in self.stream:
            with self._lock:
                self._lines.append(line)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def text(self) -> str:
        return "".join(self.lines())

    def json(self) -> list[dict]:
        return [json.loads(x) for x in self.lines() if x.startswith("{")]
