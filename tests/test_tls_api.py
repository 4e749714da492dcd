"""TLS on the agents' HTTP API, as Nomad's `tls { http = true ... }`: `yurt tls ca/cert create`
make the certificates, real agents serve HTTPS with them (the unix socket stays plain), the CLI
and python-nomad talk to them with a CA (and a client certificate where verify_https_client asks
for one), a client-only agent registers over HTTPS and runs a job, and a plain-HTTP request or a
garbage handshake leaves the agent answering."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .agent_util import AgentProcess, free_port, purge_jobs, wait_for
from .conftest import run_yurt
from .test_agent_core import sh_job


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA and server, client and CLI certificates made by the real command, in one directory."""
    d = tmp_path_factory.mktemp("pki")
    for args in (["tls", "ca", "create"], ["tls", "cert", "create", "-server"],
                 ["tls", "cert", "create", "-client"], ["tls", "cert", "create", "-cli"]):
        r = run_yurt(*args, cwd=d)
        assert r.returncode == 0, r.stderr
    other = d / "other"   # a CA that signs nothing of this cluster's
    other.mkdir()
    assert run_yurt("tls", "ca", "create", cwd=other).returncode == 0
    return d


def tls_block(pki: Path, cert: str, verify_clients: bool) -> str:
    return (f'tls {{\n  http = true\n  ca_file = "{pki}/yurt-agent-ca.pem"\n'
            f'  cert_file = "{pki}/global-{cert}-yurt.pem"\n  key_file = "{pki}/global-{cert}-yurt-key.pem"\n'
            f'  verify_https_client = {str(verify_clients).lower()}\n}}\n')


class TLSAgent(AgentProcess):
    """A real agent started with -config files that turn on HTTPS; `client_cert` is what the
    test presents when the agent verifies clients."""

    def __init__(self, pki: Path, config: str, args: list[str], client_cert: str | None = None) -> None:
        super().__init__(data_dir=tempfile.mkdtemp(prefix="yurt-tls-"))
        self.pki = pki
        self.url = f"https://127.0.0.1:{self.port}"
        self.config = f"{self.data_dir}.hcl"
        Path(self.config).write_text(config)
        self.args = args
        self.client_cert = client_cert

    def ssl_context(self, ca: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca or self.pki / "yurt-agent-ca.pem"))
        if self.client_cert:
            ctx.load_cert_chain(self.pki / f"global-{self.client_cert}-yurt.pem",
                                self.pki / f"global-{self.client_cert}-yurt-key.pem")
        return ctx

    def start(self, wait: bool = True) -> TLSAgent:
        args = [sys.executable, "-m", "yurt.cli.main", "agent", "-config", self.config, "-data-dir", self.data_dir,
                "-http-port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd="/")
        if wait:
            wait_for(self._healthy, 60, what=f"agent on port {self.port} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        with self.api() as api:
            return api.get("/v1/agent/health", timeout=2).status_code == 200

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, verify=self.ssl_context())

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        Path(self.config).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def https_agent(pki):
    """A server agent serving HTTPS, client certificates not asked for."""
    agent = TLSAgent(pki, tls_block(pki, "server", verify_clients=False), ["-server"]).start()
    yield agent
    agent.close()


@pytest.fixture(scope="module")
def mtls_cluster(pki):
    """A server-only agent that requires client certificates, and a client-only agent (raw_exec)
    that reaches it over HTTPS with the client certificate."""
    server = TLSAgent(pki, tls_block(pki, "server", verify_clients=True), ["-server"], client_cert="cli").start()
    client_conf = (f'name = "tls-client"\nclient {{\n  enabled = true\n  servers = ["127.0.0.1:{server.port}"]\n}}\n'
                   'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\n'
                   + tls_block(pki, "client", verify_clients=True))
    client = TLSAgent(pki, client_conf, [], client_cert="cli").start()
    try:
        yield server, client
    finally:
        with server.api() as api:
            purge_jobs(api)
        client.close()
        server.close()


# -- yurt tls ---------------------------------------------------------------------------------
def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_tls_create_writes_nomads_files_with_a_valid_chain(pki):
    ca = _load(pki / "yurt-agent-ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for kind in ("server", "client", "cli"):
        cert = _load(pki / f"global-{kind}-yurt.pem")
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [f"{kind}.global.yurt", "localhost"]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert usages == ({ExtendedKeyUsageOID.CLIENT_AUTH} if kind == "cli"
                          else {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH})
    r = subprocess.run(["openssl", "verify", "-CAfile", "yurt-agent-ca.pem", "global-server-yurt.pem",
                        "global-client-yurt.pem", "global-cli-yurt.pem"], cwd=pki, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(": OK") == 3, r.stdout + r.stderr
    for key in ("yurt-agent-ca-key.pem", "global-server-yurt-key.pem", "global-client-yurt-key.pem",
                "global-cli-yurt-key.pem"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600, key


def test_tls_create_extra_names_and_refusals(tmp_path, pki):
    shutil.copy(pki / "yurt-agent-ca.pem", tmp_path)
    shutil.copy(pki / "yurt-agent-ca-key.pem", tmp_path)
    r = run_yurt("tls", "cert", "create", "-server", "-region", "eu", "-additional-dnsname", "yurt.example.com",
                 "-additional-ipaddress", "10.0.0.7", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Server Certificate saved to eu-server-yurt.pem" in r.stdout
    sans = _load(tmp_path / "eu-server-yurt.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["server.eu.yurt", "localhost", "yurt.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.7"]
    r = run_yurt("tls", "cert", "create", "-server", "-region", "eu", cwd=tmp_path)
    assert r.returncode == 1 and "eu-server-yurt.pem already exists" in r.stderr
    r = run_yurt("tls", "ca", "create", cwd=tmp_path)
    assert r.returncode == 1 and "yurt-agent-ca.pem already exists" in r.stderr
    r = run_yurt("tls", "cert", "create", "-client", "-additional-ipaddress", "nope", cwd=tmp_path)
    assert r.returncode == 1 and '-additional-ipaddress "nope" is not an IP address' in r.stderr
    r = run_yurt("tls", "cert", "create", "-client", "-ca", "missing.pem", cwd=tmp_path)
    assert r.returncode == 1 and "missing.pem (-ca)" in r.stderr
    r = run_yurt("tls", "cert", "create", cwd=tmp_path)
    assert r.returncode == 1 and "-server, -client or -cli" in r.stderr


# -- the agent's config -----------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ('tls {\n  http = true\n  rpc = true\n}\n', 'tls: unknown setting "rpc"'),
    ('tls {\n  http = true\n  cert_file = "/nonexistent/c.pem"\n  key_file = "/nonexistent/k.pem"\n}\n',
     'tls.cert_file = "/nonexistent/c.pem": cannot read the file'),
    ('tls {\n  http = true\n}\n', "tls.cert_file is not set"),
    ('tls {\n  http = "yes"\n}\n', "tls.http must be true or false"),
])
def test_bad_tls_settings_are_refused_naming_them(tmp_path, body, message):
    conf = tmp_path / "agent.hcl"
    conf.write_text(body)
    r = run_yurt("agent", "-server", "-data-dir", str(tmp_path / "data"), "-http-port", str(free_port()),
                 "-config", str(conf), timeout=60)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path, pki):
    conf = tmp_path / "agent.hcl"
    conf.write_text(f'tls {{\n  http = true\n  cert_file = "{pki}/global-server-yurt.pem"\n'
                    f'  key_file = "{pki}/global-cli-yurt-key.pem"\n}}\n')
    r = run_yurt("agent", "-server", "-data-dir", str(tmp_path / "data"), "-http-port", str(free_port()),
                 "-config", str(conf), timeout=60)
    assert r.returncode == 1 and "is key_file the key of cert_file?" in r.stderr, r.stderr


# -- an HTTPS agent -----------------------------------------------------------------------------
def test_the_agent_serves_https_and_advertises_it(https_agent):
    with https_agent.api() as api:
        me = api.get("/v1/agent/self").json()
    assert me["config"]["tls"]["http"] is True
    r = run_yurt("status", "-address", https_agent.url, "-ca-cert", str(https_agent.pki / "yurt-agent-ca.pem"))
    assert r.returncode == 0 and "No running jobs" in r.stdout, r.stderr
    # the unix socket stays plain HTTP
    sock = os.path.join(https_agent.data_dir, "yurt.sock")
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://agent") as c:
        assert c.get("/v1/agent/health").status_code == 200


def test_cli_with_the_ca_from_the_environment(https_agent):
    r = run_yurt("status", env={"NOMAD_ADDR": https_agent.url,
                                "NOMAD_CACERT": str(https_agent.pki / "yurt-agent-ca.pem")})
    assert r.returncode == 0 and "No running jobs" in r.stdout, r.stderr


def test_cli_without_the_ca_says_how_to_give_it(https_agent):
    env = {k: "" for k in ("NOMAD_CACERT", "YURT_CACERT", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    r = run_yurt("status", "-address", https_agent.url, env=env)
    assert r.returncode == 1
    assert "not signed by a CA this machine trusts" in r.stderr and "-ca-cert" in r.stderr \
        and "NOMAD_CACERT" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    other = https_agent.pki / "other" / "yurt-agent-ca.pem"
    r = run_yurt("status", "-address", https_agent.url, "-ca-cert", str(other))
    assert r.returncode == 1 and f"the server's certificate is not signed by -ca-cert {other}" in r.stderr, r.stderr


def test_cli_server_name_and_skip_verify(https_agent):
    ca = str(https_agent.pki / "yurt-agent-ca.pem")
    r = run_yurt("status", "-address", https_agent.url, "-ca-cert", ca, "-tls-server-name", "server.global.yurt")
    assert r.returncode == 0 and "No running jobs" in r.stdout, r.stderr
    r = run_yurt("status", "-address", https_agent.url, "-ca-cert", ca, "-tls-server-name", "server.eu.yurt")
    assert r.returncode == 1 and "does not name the address dialled" in r.stderr \
        and "-tls-server-name" in r.stderr, r.stderr
    r = run_yurt("status", "-address", https_agent.url, "-tls-skip-verify")
    assert r.returncode == 0 and "No running jobs" in r.stdout, r.stderr
    r = run_yurt("status", "-address", https_agent.url, env={"NOMAD_SKIP_VERIFY": "true"})
    assert r.returncode == 0 and "No running jobs" in r.stdout, r.stderr


def test_plain_http_to_the_https_agent_is_explained_and_harmless(https_agent):
    plain = f"http://127.0.0.1:{https_agent.port}"
    r = run_yurt("status", "-address", plain)
    assert r.returncode == 1 and "use an https:// address" in r.stderr, r.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/v1/agent/health", timeout=10)
    with https_agent.api() as api:
        assert api.get("/v1/agent/health").status_code == 200


def test_garbage_handshakes_do_not_hurt_the_agent(https_agent):
    port = https_agent.port
    idle = socket.create_connection(("127.0.0.1", port))   # says nothing at all, stays open
    try:
        for junk in (b"\x16\x03\x01\x00\x05hello-not-tls" * 20, os.urandom(4096), b"GET / HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(junk)
                try:
                    while s.recv(4096):
                        pass
                except (ConnectionResetError, TimeoutError):
                    pass
        half = socket.create_connection(("127.0.0.1", port))  # a handshake cut in the middle
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        try:
            with https_agent.api() as api:
                for _ in range(5):
                    assert api.get("/v1/agent/health").status_code == 200
        finally:
            half.close()
    finally:
        idle.close()
    assert https_agent.proc.poll() is None


def test_python_nomad_over_https(https_agent):
    import nomad

    n = nomad.Nomad(host="127.0.0.1", port=https_agent.port, secure=True,
                    verify=str(https_agent.pki / "yurt-agent-ca.pem"), timeout=10)
    from yurt.jobspec import load
    doc = load(sh_job("over-tls", "sleep 600"), "job.nomad").job.to_document()
    n.jobs.register_job(doc)
    assert [j["ID"] for j in n.jobs.get_jobs()] == ["over-tls"]
    assert n.job.get_job("over-tls")["TaskGroups"][0]["Tasks"][0]["Driver"] == "raw_exec"
    assert n.agent.get_agent()["config"]["tls"]["http"] is True
    n.job.deregister_job("over-tls", purge=True)


# -- verify_https_client, and a client-only agent over HTTPS -----------------------------------
def test_verify_https_client_refuses_a_client_without_certificate(mtls_cluster, pki):
    server, _client = mtls_cluster
    ca = str(pki / "yurt-agent-ca.pem")
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/v1/agent/health", verify=ssl.create_default_context(cafile=ca), timeout=10)
    r = run_yurt("node", "status", "-address", server.url, "-ca-cert", ca)
    assert r.returncode == 1 and "-client-cert" in r.stderr and "verify_https_client" in r.stderr, r.stderr
    r = run_yurt("node", "status", "-address", server.url, "-ca-cert", ca,
                 "-client-cert", str(pki / "global-cli-yurt.pem"), "-client-key", str(pki / "global-cli-yurt-key.pem"))
    assert r.returncode == 0, r.stderr
    r = run_yurt("node", "status", "-address", server.url,
                 env={"NOMAD_CACERT": ca, "NOMAD_CLIENT_CERT": str(pki / "global-cli-yurt.pem"),
                      "NOMAD_CLIENT_KEY": str(pki / "global-cli-yurt-key.pem")})
    assert r.returncode == 0, r.stderr
    with server.api() as api:
        assert api.get("/v1/agent/health").status_code == 200


def test_a_client_only_agent_over_https_registers_and_runs_a_job(mtls_cluster, pki, tmp_path):
    server, client = mtls_cluster
    flags = ["-address", server.url, "-ca-cert", str(pki / "yurt-agent-ca.pem"),
             "-client-cert", str(pki / "global-cli-yurt.pem"), "-client-key", str(pki / "global-cli-yurt-key.pem")]
    with server.api() as api:
        (node,) = wait_for(lambda: [n for n in api.get("/v1/nodes").json() if n["Status"] == "ready"],
                           what="the TLS client's node ready")
        assert node["Name"] == "tls-client"
        assert api.get(f"/v1/node/{node['ID']}").json()["HTTPAddr"].startswith("https://")
    job = tmp_path / "hello.nomad"
    job.write_text(sh_job("tls-hello", "echo hello over tls", kind="batch"))
    r = run_yurt("job", "run", "-detach", *flags, str(job))
    assert r.returncode == 0, r.stderr
    with server.api() as api:
        (alloc,) = wait_for(lambda: [a for a in api.get("/v1/job/tls-hello/allocations").json()
                                     if a["ClientStatus"] == "complete"], what="the batch job complete")
    assert alloc["NodeID"] == node["ID"]
    # the server reads the logs from the client agent, over HTTPS with its own certificate
    r = run_yurt("alloc", "logs", *flags, alloc["ID"], "t")
    assert r.returncode == 0 and r.stdout == "hello over tls\n", r.stderr
    # and the client agent forwards to its server over HTTPS
    r = run_yurt("job", "status", "-address", client.url, *flags[2:], "tls-hello")
    assert r.returncode == 0 and "tls-hello" in r.stdout, r.stderr


def test_a_client_agent_with_the_wrong_ca_says_so(mtls_cluster, pki):
    server, _client = mtls_cluster
    other = pki / "other" / "yurt-agent-ca.pem"
    conf = (f'name = "wrong-ca"\nclient {{\n  enabled = true\n  servers = ["127.0.0.1:{server.port}"]\n}}\n'
            + tls_block(pki, "client", verify_clients=False).replace(f"{pki}/yurt-agent-ca.pem", str(other)))
    agent = TLSAgent(pki, conf, [])
    try:
        agent.start(wait=False)
        wait_for(lambda: f"the server's certificate is not signed by ca_file {other}" in agent.log(),
                 30, what="the wrong CA reported in the agent's log")
        assert agent.proc.poll() is None and "Traceback" not in agent.log()
    finally:
        agent.close()
