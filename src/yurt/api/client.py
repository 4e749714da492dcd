"""The HTTP client for Yurt's API, used by the CLI and the client agent. (The sidecar proxy has
its own stdlib client, `mesh.agent_client`, so that it never imports httpx or pydantic.)

An error answer comes back as the `yurt.errors` class the server raised (`NotFound` for a 404,
`InvalidInput` for a 400, ...) carrying the server's text and `.status`; connection problems as
`Unreachable` with the address, so a CLI can say "is the agent running?".
"""

from __future__ import annotations

import os
from urllib.parse import quote
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx
import orjson

from yurt.errors import InvalidInput, Unreachable, error_for_status


def _q(job_id: str) -> str:
    """A job ID in a path: a child's slash ("<parent>/periodic-<unix>") escaped, as Nomad's API does."""
    return quote(job_id, safe="")

DEFAULT_ADDRESS = "http://127.0.0.1:4646"

def default_address() -> str:
    return os.environ.get("YURT_ADDR") or os.environ.get("NOMAD_ADDR") or DEFAULT_ADDRESS


def _normal(address: str) -> str:
    address = address.rstrip("/")
    return address if "://" in address else "http://" + address


@dataclass(frozen=True)
class TLSConfig:
    """How to talk to an agent serving HTTPS: the CA that signs its certificate (`ca_cert`, a
    PEM file or directory; empty: the system's CAs), the client certificate it may require,
    the name to expect in its certificate, or no verification at all. `fix` names the settings
    a person changes when the server's certificate is not trusted (CLI flags or agent config)."""

    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    server_name: str = ""
    skip_verify: bool = False
    check_hostname: bool = True   # False: the CA's signature is enough (Nomad's verify_server_hostname = false)
    fix: str = "-ca-cert FILE (or NOMAD_CACERT)"
    ca_setting: str = "-ca-cert"
    cert_fix: str = "-client-cert and -client-key (or NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY)"

    @classmethod
    def from_env(cls) -> TLSConfig:
        """Nomad's environment variables (YURT_* first)."""
        env = os.environ.get
        return cls(ca_cert=env("YURT_CACERT") or env("NOMAD_CACERT") or "",
                   client_cert=env("YURT_CLIENT_CERT") or env("NOMAD_CLIENT_CERT") or "",
                   client_key=env("YURT_CLIENT_KEY") or env("NOMAD_CLIENT_KEY") or "",
                   server_name=env("YURT_TLS_SERVER_NAME") or env("NOMAD_TLS_SERVER_NAME") or "",
                   skip_verify=(env("YURT_SKIP_VERIFY") or env("NOMAD_SKIP_VERIFY") or "").lower()
                   in ("1", "true", "yes"))

    def context(self) -> ssl.SSLContext:
        """The client side's SSL context; a file that cannot be read raises InvalidInput naming it."""
        try:
            ctx = ssl.create_default_context(
                cafile=self.ca_cert if self.ca_cert and not os.path.isdir(self.ca_cert) else None,
                capath=self.ca_cert if self.ca_cert and os.path.isdir(self.ca_cert) else None)
        except (OSError, ssl.SSLError) as e:
            raise InvalidInput(f"{self.ca_setting} {self.ca_cert}: cannot read it as PEM CA certificates: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        if not self.check_hostname or self.skip_verify:
            ctx.check_hostname = False
        if self.skip_verify:
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert or self.client_key:
            if not (self.client_cert and self.client_key):
                raise InvalidInput(f"a client certificate needs both its files: {self.cert_fix}")
            try:
                ctx.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as e:
                raise InvalidInput(f"client certificate {self.client_cert} / key {self.client_key}: cannot "
                                   f"load them: {getattr(e, 'strerror', None) or e}") from None
        return ctx

    def reason(self, error: Exception) -> str | None:
        """A TLS failure explained with the setting to fix; None when it is not one."""
        text = str(error)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip()
            if "Hostname mismatch" in text or "IP address mismatch" in text:
                return (f"the server's certificate does not name the address dialled ({detail}); pass the "
                        "name it holds with -tls-server-name (or NOMAD_TLS_SERVER_NAME), e.g. "
                        "server.global.yurt")
            if self.ca_cert:
                return f"the server's certificate is not signed by {self.ca_setting} {self.ca_cert}: {detail}"
            return (f"the server's certificate is not signed by a CA this machine trusts: give its CA "
                    f"with {self.fix}: {detail}")
        if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
            return f"the agent requires a client certificate (verify_https_client): pass {self.cert_fix}"
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return "the agent does not speak HTTPS there: use an http:// address"
        return None


def _http_client(address: str, timeout: float, tls: TLSConfig | None = None) -> httpx.Client:
    if address.startswith("unix://"):
        transport = httpx.HTTPTransport(uds=address[len("unix://"):])
        return httpx.Client(base_url="http://localhost", timeout=timeout, transport=transport)
    if tls is None or not address.startswith("https://"):
        return httpx.Client(base_url=address, timeout=_timeouts(timeout))
    hooks: dict[str, list[Any]] = {}
    if tls.server_name:   # the name to verify (and send as SNI) instead of the address's host
        def sni(request: httpx.Request) -> None:
            request.extensions["sni_hostname"] = tls.server_name
        hooks["request"] = [sni]
    return httpx.Client(base_url=address, timeout=_timeouts(timeout), verify=tls.context(), event_hooks=hooks)


def _timeouts(timeout: float) -> httpx.Timeout:
    """A server that does not answer a connection within 5 s is taken for gone (the next one is
    tried); an answer may take `timeout`."""
    return httpx.Timeout(timeout, connect=min(timeout, 5.0))


class YurtClient:
    """`address` is http(s)://host:port, host:port, or unix:///path/to/yurt.sock (the agent's
    socket, which a sidecar inside an allocation's network namespace uses) -- or a list of them
    (a client agent's `servers`): a request that cannot connect to the current one goes to the
    next, which becomes the current one. A write is sent again only when it cannot have reached
    its agent (the connection failed); a read is asked of the next server also when the current
    one went away mid-answer, and after any failure the next request goes to the next server."""

    def __init__(self, address: str | Sequence[str] | None = None, timeout: float = 30.0,
                 tls: TLSConfig | None = None) -> None:
        self.tls = tls if tls is not None else TLSConfig.from_env()
        given = [address] if address is None or isinstance(address, str) else list(address)
        self.addresses = [_normal(a or default_address()) for a in given] or [_normal(default_address())]
        self._timeout = timeout
        self._current = 0
        self._clients: dict[str, httpx.Client] = {}
        self.token = ""   # sent as X-Nomad-Token (ACLs); a client agent sets its node SecretID
        self.namespace = ""   # sent as ?namespace= (the CLI's -namespace / $NOMAD_NAMESPACE) unless given

    @property
    def address(self) -> str:
        """The address requests go to now."""
        return self.addresses[self._current]

    @property
    def _http(self) -> httpx.Client:
        client = self._clients.get(self.address)
        if client is None:
            client = self._clients[self.address] = _http_client(self.address, self._timeout, self.tls)
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> YurtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _next(self) -> None:
        self._current = (self._current + 1) % len(self.addresses)

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Talk to these servers from now on (the first one first)."""
        new = [_normal(a) for a in addresses]
        if new:
            self.addresses = new
            self._current = 0

    def fail_over(self, failed: str) -> None:
        """`failed` could not be dialled (by another caller): if it is still the address in use,
        use the next one (callers that failed together move it once)."""
        if self.address == failed:
            self._next()

    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                timeout: float | None = None) -> httpx.Response:
        failed: list[str] = []
        if self.namespace and "namespace" not in (params or {}):
            params = {**(params or {}), "namespace": self.namespace}
        while True:
            try:
                resp = self._http.request(method, path, params=params, json=json,
                                          headers={"X-Nomad-Token": self.token} if self.token else None,
                                          timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:   # nothing was sent: the next may answer
                failed.append(self.address)
                if len(failed) < len(self.addresses):
                    self._next()
                    continue
                reason = "connection refused; is `yurt agent` running?" if "refused" in str(e) else (
                    str(e) or "the connection timed out")
                raise Unreachable(", ".join(failed), self.tls.reason(e) or reason) from None
            except httpx.HTTPError as e:
                # the server went away mid-request (killed, or its host cut off): the next request
                # goes to the next server; a read (idempotent) is asked there again at once
                where = self.address
                reason = ("the request timed out" if isinstance(e, httpx.TimeoutException)
                          else self.tls.reason(e) or _hung_up(where, self.tls, e))
                failed.append(where)
                if len(self.addresses) > 1:
                    self._next()
                    if method in ("GET", "HEAD") and len(failed) < len(self.addresses):
                        continue
                raise Unreachable(where, reason) from None
        if resp.status_code >= 400:
            raise error_for_status(resp.status_code, resp.text.strip())
        return resp

    def get(self, path: str, *, index: int = 0, wait: str | None = None, **params: Any) -> tuple[Any, int]:
        """GET with an optional blocking query; returns (body, X-Nomad-Index)."""
        q = {k: v for k, v in params.items() if v is not None}
        timeout = None
        if index:
            q["index"] = index
            q["wait"] = wait or "5m"
            timeout = _seconds(q["wait"]) + 15
        resp = self.request("GET", path, params=q, timeout=timeout)
        new_index = resp.headers.get("X-Nomad-Index") or resp.headers.get("X-Consul-Index") or "0"
        # orjson: ~2.5 x less CPU than the json module to read an answer (allocations carry their jobs)
        return orjson.loads(resp.content), int(new_index)

    def put(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("PUT", path, json=body, params={k: v for k, v in params.items() if v is not None}).json()

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: v for k, v in params.items() if v is not None}).json()

    # -- jobs -------------------------------------------------------------------------------
    def register_job(self, job_doc: dict) -> dict:
        return self.put("/v1/jobs", job_doc)

    def plan_job(self, job_doc: dict, diff: bool = True) -> dict:
        return self.put(f"/v1/job/{_q(job_doc['Job']['ID'])}/plan", {**job_doc, "Diff": diff})

    def jobs(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/jobs", prefix=prefix or None)[0]

    def job(self, job_id: str) -> dict:
        return self.get(f"/v1/job/{_q(job_id)}")[0]

    def job_allocations(self, job_id: str, all_: bool = False) -> list[dict]:
        return self.get(f"/v1/job/{_q(job_id)}/allocations", all="true" if all_ else None)[0]

    def job_evaluations(self, job_id: str) -> list[dict]:
        return self.get(f"/v1/job/{_q(job_id)}/evaluations")[0]

    def job_summary(self, job_id: str) -> dict:
        return self.get(f"/v1/job/{_q(job_id)}/summary")[0]

    def job_versions(self, job_id: str) -> list[dict]:
        return self.get(f"/v1/job/{_q(job_id)}/versions")[0]["Versions"]

    def stop_job(self, job_id: str, purge: bool = False, no_shutdown_delay: bool = False) -> dict:
        return self.delete(f"/v1/job/{_q(job_id)}", purge="true" if purge else None,
                           no_shutdown_delay="true" if no_shutdown_delay else None)

    def job_versions_diffs(self, job_id: str) -> tuple[list[dict], list[dict] | None]:
        """(versions newest first, diffs: each version against the one before it, or None)."""
        body = self.get(f"/v1/job/{_q(job_id)}/versions", diffs="true")[0]
        return body["Versions"], body.get("Diffs")

    def revert_job(self, job_id: str, version: int, enforce_prior_version: int | None = None) -> dict:
        body: dict[str, Any] = {"JobID": job_id, "JobVersion": version}
        if enforce_prior_version is not None:
            body["EnforcePriorVersion"] = enforce_prior_version
        return self.put(f"/v1/job/{_q(job_id)}/revert", body)

    def set_job_stable(self, job_id: str, version: int, stable: bool) -> dict:
        return self.put(f"/v1/job/{_q(job_id)}/stable", {"JobID": job_id, "JobVersion": version, "Stable": stable})

    def scale_status(self, job_id: str) -> dict:
        return self.get(f"/v1/job/{_q(job_id)}/scale")[0]

    def scale_job(self, job_id: str, group: str, count: int | None, message: str = "") -> dict:
        return self.put(f"/v1/job/{_q(job_id)}/scale", {"JobID": job_id, "Count": count, "Target": {"Group": group},
                                                    "Message": message})

    # -- deployments ------------------------------------------------------------------------
    def deployments(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/deployments", prefix=prefix or None)[0]

    def deployment(self, deployment_id: str, index: int = 0, wait: str | None = None) -> tuple[dict, int]:
        """The deployment, blocking on ?index= when given; returns (deployment, index)."""
        return self.get(f"/v1/deployment/{deployment_id}", index=index, wait=wait)

    def deployment_allocations(self, deployment_id: str) -> list[dict]:
        return self.get(f"/v1/deployment/allocations/{deployment_id}")[0]

    def job_deployment(self, job_id: str, index: int = 0, wait: str | None = None) -> tuple[dict | None, int]:
        """The job's latest deployment (None if it has none), blocking on ?index= when given."""
        return self.get(f"/v1/job/{_q(job_id)}/deployment", index=index, wait=wait)

    def job_deployments(self, job_id: str, all_: bool = False) -> list[dict]:
        return self.get(f"/v1/job/{_q(job_id)}/deployments", all="true" if all_ else None)[0]

    def promote_deployment(self, deployment_id: str, groups: Sequence[str] = ()) -> dict:
        """Promote the canaries of `groups`, or of every group when none is named."""
        body: dict[str, Any] = {"DeploymentID": deployment_id}
        if groups:
            body["Groups"] = list(groups)
        else:
            body["All"] = True
        return self.put(f"/v1/deployment/promote/{deployment_id}", body)

    def fail_deployment(self, deployment_id: str) -> dict:
        return self.put(f"/v1/deployment/fail/{deployment_id}", {"DeploymentID": deployment_id})

    def pause_deployment(self, deployment_id: str, pause: bool) -> dict:
        """pause=False resumes it."""
        return self.put(f"/v1/deployment/pause/{deployment_id}", {"DeploymentID": deployment_id, "Pause": pause})

    # -- evals, allocs, nodes ---------------------------------------------------------------
    def evaluation(self, eval_id: str, index: int = 0, wait: str | None = None) -> tuple[dict, int]:
        return self.get(f"/v1/evaluation/{eval_id}", index=index, wait=wait)

    def evaluations(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/evaluations", prefix=prefix or None)[0]

    def eval_allocations(self, eval_id: str) -> list[dict]:
        return self.get(f"/v1/evaluation/{eval_id}/allocations")[0]

    def allocations(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/allocations", prefix=prefix or None)[0]

    def allocation(self, alloc_id: str) -> dict:
        return self.get(f"/v1/allocation/{alloc_id}")[0]

    def stop_allocation(self, alloc_id: str, no_shutdown_delay: bool = False) -> dict:
        return self.put(f"/v1/allocation/{alloc_id}/stop", no_shutdown_delay="true" if no_shutdown_delay else None)

    def nodes(self, prefix: str = "") -> list[dict]:
        return self.get("/v1/nodes", prefix=prefix or None)[0]

    def node(self, node_id: str) -> dict:
        return self.get(f"/v1/node/{node_id}")[0]

    def node_allocations(self, node_id: str, index: int = 0, wait: str | None = None) -> tuple[list[dict], int]:
        return self.get(f"/v1/node/{node_id}/allocations", index=index, wait=wait)

    def client_allocations(self, node_id: str, since: int, index: int = 0,
                           wait: str | None = None) -> tuple[dict[str, Any], int]:
        """A client agent's watch of its node (`GET /v1/internal/node/<id>/allocations`):
        ({"Allocs": {id: AllocModifyIndex}, "Changed": [allocations past `since`]}, index)."""
        return self.get(f"/v1/internal/node/{node_id}/allocations", index=index, wait=wait, since=since)

    def node_drain(self, node_id: str, spec: dict | None, mark_eligible: bool = False,
                   meta: dict[str, str] | None = None) -> dict:
        """Set (`spec` = {"Deadline": ns, "IgnoreSystemJobs": bool}) or cancel (None) a drain."""
        body: dict[str, Any] = {"DrainSpec": spec, "MarkEligible": mark_eligible}
        if meta:
            body["Meta"] = meta
        return self.put(f"/v1/node/{node_id}/drain", body)

    def node_eligibility(self, node_id: str, eligible: bool) -> dict:
        return self.put(f"/v1/node/{node_id}/eligibility",
                        {"Eligibility": "eligible" if eligible else "ineligible"})

    def node_purge(self, node_id: str) -> dict:
        return self.put(f"/v1/node/{node_id}/purge")

    def logs(self, alloc_id: str, task: str, *, stderr: bool = False, follow: bool = False,
             origin: str = "start", offset: int = 0) -> Iterator[bytes]:
        params = {"task": task, "type": "stderr" if stderr else "stdout", "plain": "true",
                  **({"namespace": self.namespace} if self.namespace else {}),
                  "follow": "true" if follow else "false", "origin": origin, "offset": offset}
        yield from self._stream(f"/v1/client/fs/logs/{alloc_id}", params)

    def _stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """A GET whose answer is read as it comes (no read timeout); an error status raised."""
        try:
            with self._http.stream("GET", path, params=params, timeout=httpx.Timeout(30.0, read=None),
                                   headers={"X-Nomad-Token": self.token} if self.token else None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_for_status(resp.status_code, resp.text.strip())
                yield from resp.iter_bytes()
        except httpx.ConnectError as e:
            raise Unreachable(self.address, self.tls.reason(e) or str(e)) from None

    def fs_stream(self, alloc_id: str, path: str, *, follow: bool = True, origin: str = "start",
                  offset: int = 0) -> Iterator[bytes]:
        """A file of an allocation's directory as it grows (`/v1/client/fs/stream`, plain)."""
        params = {"path": path, "plain": "true", "follow": "true" if follow else "false",
                  "origin": origin, "offset": offset}
        yield from self._stream(f"/v1/client/fs/stream/{alloc_id}", params)

    def alloc_snapshot(self, alloc_id: str, out: BinaryIO) -> None:
        """A terminal allocation's snapshot (`/v1/client/allocation/<id>/snapshot`: a tar of its
        alloc/data and tasks' local/), written to ``out`` (ephemeral_disk migrate)."""
        try:
            with self._http.stream("GET", f"/v1/client/allocation/{alloc_id}/snapshot",
                                   timeout=httpx.Timeout(30.0, read=300.0),
                                   headers={"X-Nomad-Token": self.token} if self.token else None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_for_status(resp.status_code, resp.text.strip())
                for chunk in resp.iter_bytes():
                    out.write(chunk)
        except httpx.ConnectError as e:
            raise Unreachable(self.address, self.tls.reason(e) or str(e)) from None
        except httpx.HTTPError as e:
            raise Unreachable(self.address, str(e) or type(e).__name__) from None

    def agent_monitor(self, *, log_level: str = "info", log_json: bool = False, node_id: str = "",
                      server_id: str = "", include_location: bool = False) -> Iterator[bytes]:
        """The agent's log lines as it writes them (`/v1/agent/monitor`, plain text), until the
        agent stops (the iterator ends) or the caller stops reading."""
        params = {"log_level": log_level, "plain": "true", "log_json": "true" if log_json else "false"}
        if include_location:
            params["log_include_location"] = "true"
        if node_id:
            params["node_id"] = node_id
        if server_id:
            params["server_id"] = server_id
        try:
            with self._http.stream("GET", "/v1/agent/monitor", params=params, timeout=httpx.Timeout(30.0, read=None),
                                   headers={"X-Nomad-Token": self.token} if self.token else None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_for_status(resp.status_code, resp.text.strip())
                try:
                    yield from resp.iter_bytes()
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    return   # the agent went away mid-stream: the stream has ended
        except httpx.ConnectError as e:
            raise Unreachable(self.address, self.tls.reason(e) or str(e)) from None

    # -- agent ------------------------------------------------------------------------------
    def agent_self(self) -> dict:
        return self.get("/v1/agent/self")[0]

    def agent_health(self) -> dict:
        return self.request("GET", "/v1/agent/health").json()

    # -- the client agent's calls -----------------------------------------------------------
    def register_node(self, node: dict) -> dict:
        return self.put("/v1/internal/node/register", {"Node": node})

    def heartbeat(self, node_id: str) -> dict:
        # short: a heartbeat that hangs (its server cut off) must leave time for the next server
        return self.request("PUT", f"/v1/internal/node/{node_id}/heartbeat", timeout=5.0).json()

    def update_allocations(self, node_id: str, updates: list[dict]) -> dict:
        return self.put(f"/v1/internal/node/{node_id}/allocations", {"Allocs": updates})

    def alloc_identity(self, alloc_id: str, node_id: str) -> dict[str, str]:
        """{task: workload identity JWT} of an allocation placed on node `node_id`."""
        tokens: dict[str, str] = self.put(f"/v1/internal/alloc/{alloc_id}/identity", node=node_id)["Tokens"]
        return tokens

    # -- service mesh: CA, leaf certificates, intentions (Consul's API) -----------------------
    def ca_roots(self, index: int = 0, wait: str | None = None) -> tuple[dict, int]:
        """{ActiveRootID, TrustDomain, Roots: [...]}, blocking on ?index= when given."""
        return self.get("/v1/agent/connect/ca/roots", index=index, wait=wait)

    def set_ca_configuration(self, config: dict, provider: str = "yurt") -> None:
        """A new Config; {"ForceRotation": true} (or a new PrivateKey) rotates the root."""
        self.request("PUT", "/v1/connect/ca/configuration", json={"Provider": provider, "Config": config})

    def leaf(self, service: str, index: int = 0, wait: str | None = None) -> tuple[dict, int]:
        """This agent's IssuedCert for `service` (CertPEM = leaf + intermediates, PrivateKeyPEM);
        with `index`, returns when a newer certificate was issued (renewal, root rotation)."""
        return self.get(f"/v1/agent/connect/ca/leaf/{service}", index=index, wait=wait)

    def ca_sign(self, csr_pem: str, service: str) -> dict:
        return self.put("/v1/internal/connect/ca/sign", {"CSR": csr_pem, "Service": service})

    def authorize(self, target: str, client_cert_uri: str, client_cert_serial: str = "") -> dict:
        """{Authorized, Reason}: may the holder of that SPIFFE ID connect to `target`?"""
        return self.request("POST", "/v1/agent/connect/authorize", json={
            "Target": target, "ClientCertURI": client_cert_uri,
            "ClientCertSerial": client_cert_serial}).json()

    def intentions(self, index: int = 0, wait: str | None = None) -> tuple[list[dict], int]:
        return self.get("/v1/connect/intentions", index=index, wait=wait)

    def intention_match(self, destination: str, index: int = 0, wait: str | None = None) -> tuple[list[dict], int]:
        """The intentions for `destination`, in evaluation order."""
        body, idx = self.get("/v1/connect/intentions/match", index=index, wait=wait, by="destination",
                             name=destination)
        return body.get(destination, []), idx

    def intention_check(self, source: str, destination: str) -> dict:
        return self.get("/v1/connect/intentions/check", source=source, destination=destination)[0]

    def intention_get(self, source: str, destination: str) -> dict:
        return self.get("/v1/connect/intentions/exact", source=source, destination=destination)[0]

    def intention_upsert(self, source: str, destination: str, action: str = "allow",
                         description: str = "") -> None:
        self.request("PUT", "/v1/connect/intentions/exact",
                     params={"source": source, "destination": destination},
                     json={"Action": action, "Description": description, "SourceType": "consul"})

    def intention_delete(self, source: str, destination: str) -> None:
        self.request("DELETE", "/v1/connect/intentions/exact",
                     params={"source": source, "destination": destination})

    # -- service mesh: catalog (Consul's API) ---------------------------------------------------
    def health_connect(self, name: str, passing: bool = True, index: int = 0,
                       wait: str | None = None) -> tuple[list[dict], int]:
        """The mesh endpoints (sidecars) of service `name`: [{Node, Service, Checks}]."""
        return self.get(f"/v1/health/connect/{name}", index=index, wait=wait,
                        passing="1" if passing else None)

    def health_service(self, name: str, passing: bool = False, index: int = 0,
                       wait: str | None = None) -> tuple[list[dict], int]:
        return self.get(f"/v1/health/service/{name}", index=index, wait=wait,
                        passing="1" if passing else None)

    def agent_service(self, service_id: str, node: str | None = None) -> dict:
        return self.get(f"/v1/agent/service/{service_id}", node=node)[0]

    def register_service(self, registration: dict) -> None:
        """PUT /v1/agent/service/register. Yurt's client adds NodeID, Node and AllocID so the
        server can remove the service when the allocation stops."""
        self.request("PUT", "/v1/agent/service/register", json=registration)

    def deregister_service(self, service_id: str, node: str | None = None) -> None:
        """Also deregisters `<service_id>-sidecar-proxy`. `node` (ID or name) when calling a
        server for another node's service."""
        self.request("PUT", f"/v1/agent/service/deregister/{service_id}",
                     params={"node": node} if node else None)

    def update_check(self, check_id: str, status: str, output: str = "", node: str | None = None) -> None:
        """Report a check result: status passing, warning or critical."""
        self.request("PUT", f"/v1/agent/check/update/{check_id}", params={"node": node} if node else None,
                     json={"Status": status, "Output": output})


def _hung_up(address: str, tls: TLSConfig, e: Exception) -> str:
    """Why an agent may hang up without an answer: an http:// request to an HTTPS agent, or an
    HTTPS one without the client certificate it requires (TLS 1.3 reports that only then)."""
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
        if address.startswith("http://"):
            return (f"{e}; if the agent serves HTTPS (tls {{ http = true }}), use an https:// address "
                    "with -ca-cert")
        if address.startswith("https://") and not tls.client_cert:
            return (f"{e}; if the agent verifies client certificates (verify_https_client), pass "
                    f"{tls.cert_fix}")
    return str(e)


_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(wait: str) -> float:
    """A blocking-query wait ("30s", "5m", "250ms") in seconds. Parsed here rather than with
    yurt.structs so that the sidecar proxy, which uses this client, never imports pydantic."""
    import re
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", wait.strip())
    if not m:
        return 300.0
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
