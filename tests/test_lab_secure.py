"""countdash with ACLs and TLS on, on a lab of one server and two clients: certificates made by
`yurt tls`, the management token by `yurt acl bootstrap`, every CLI call over verified HTTPS with
a client certificate and a token, sidecars authenticating to their agents with their workload
identities. Real namespaces, agents, TLS and mTLS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .agent_util import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a lab of hosts needs root (network namespaces)")

LAB = "s" + str(os.getpid() % 100000)
NET = f"10.{234 + os.getpid() % 10}.{os.getpid() % 250}"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "countdash"
PIN = """
    constraint {
      attribute = "${node.unique.name}"
      value     = "%s"
    }
"""


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yurt.cli.main", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, **(env or {})}, cwd=cwd)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("secure")
    ok(run("tls", "ca", "create", cwd=d))
    ips = [a for i in range(2, 5) for a in ("-additional-ipaddress", f"{NET}.{i}")]
    ok(run("tls", "cert", "create", "-server", *ips, cwd=d))
    ok(run("tls", "cert", "create", "-cli", cwd=d))
    (d / "secure.hcl").write_text(f"""acl {{ enabled = true }}
tls {{
  http                = true
  ca_file             = "{d}/yurt-agent-ca.pem"
  cert_file           = "{d}/global-server-yurt.pem"
  key_file            = "{d}/global-server-yurt-key.pem"
  verify_https_client = true
}}
""")
    up = run("lab", "up", "-name", LAB, "-clients", "2", "-subnet", f"{NET}.0/24", "-config", str(d / "secure.hcl"))
    try:
        out = ok(up)
        assert f"https://{NET}.2:4646" in out
        env = {"NOMAD_ADDR": f"https://{NET}.2:4646", "NOMAD_CACERT": str(d / "yurt-agent-ca.pem"),
               "NOMAD_CLIENT_CERT": str(d / "global-cli-yurt.pem"),
               "NOMAD_CLIENT_KEY": str(d / "global-cli-yurt-key.pem")}
        boot = ok(run("acl", "bootstrap", env=env))
        (secret,) = [line.split("=", 1)[1].strip() for line in boot.splitlines() if line.startswith("Secret ID")]
        yield d, env, secret
    finally:
        print(run("lab", "down", "-name", LAB).stdout)


def test_without_a_token_or_a_client_certificate_nothing_gets_in(secured):
    d, env, _ = secured
    for f in ("counter_api.py", "dashboard.py"):
        shutil.copy(EXAMPLES / f, d / f)
    shutil.copy(EXAMPLES / "countdash.nomad", d / "plain.nomad")
    anonymous = run("job", "run", str(d / "plain.nomad"), env=env, cwd=d)
    assert anonymous.returncode == 1
    assert 'Permission denied: this needs namespace "default" capability submit-job' in anonymous.stderr
    no_cert = run("job", "status", env={**env, "NOMAD_CLIENT_CERT": "", "NOMAD_CLIENT_KEY": ""})
    assert no_cert.returncode == 1 and "-client-cert" in no_cert.stderr
    assert ok(run("job", "status", env={**env, "NOMAD_TOKEN": secured[2]})).strip() == "No running jobs"


def test_countdash_counts_across_hosts_with_acls_and_tls_on(secured):
    d, env, secret = secured
    env = {**env, "NOMAD_TOKEN": secret}
    for f in ("counter_api.py", "dashboard.py"):
        shutil.copy(EXAMPLES / f, d / f)
    text = (EXAMPLES / "countdash.nomad").read_text()
    text = text.replace('group "api" {\n', 'group "api" {\n' + PIN % "client1", 1)
    text = text.replace('group "dashboard" {\n', 'group "dashboard" {\n' + PIN % "client2", 1)
    (d / "countdash.nomad").write_text(text)
    out = ok(run("job", "run", str(d / "countdash.nomad"), env=env, cwd=d))
    assert 'Allocations of job "countdash" ready: 2 running' in out

    def counting():
        try:
            with urllib.request.urlopen(f"http://{NET}.4:9002/api/count", timeout=5) as r:
                c = json.loads(r.read())
        except OSError:
            return None
        return c if c["count"] > 0 else None
    first = wait_for(counting, 60, what="the dashboard on client2 counting through the mesh")
    wait_for(lambda: (c := counting()) is not None and c["count"] > first["count"], 30, what="the count rising")
    # the sidecars got their certificates with their workload identities (no ACL token of theirs)
    status = ok(run("job", "status", "countdash", env=env))
    assert status.count("running") >= 2
    # alloc logs through the server, over HTTPS to the client agent, with the token checked there
    import httpx
    import ssl
    tls = ssl.create_default_context(cafile=env["NOMAD_CACERT"])
    tls.load_cert_chain(env["NOMAD_CLIENT_CERT"], env["NOMAD_CLIENT_KEY"])
    tls.check_hostname = False
    url = f"https://{NET}.2:4646/v1/job/countdash/allocations"
    with httpx.Client(verify=tls, timeout=30) as c:
        assert c.get(url).status_code == 403
        allocs = c.get(url, headers={"X-Nomad-Token": secret}).json()
    (dash,) = [a for a in allocs if a["TaskGroup"] == "dashboard"]
    logs = ok(run("alloc", "logs", dash["ID"], "dashboard", env=env))
    assert "counter-dashboard listening on :9002" in logs
