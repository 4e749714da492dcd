"""Transparent proxy and mesh DNS on a real agent: real namespaces, real iptables, real TLS.

A group with `transparent_proxy {}` and no upstream block runs an app that dials
`count-api.virtual.yurt:9001`: the name comes from the agent's DNS (served in the allocation's
namespace), the connection is redirected by iptables to the group's sidecar, which dials
count-api's sidecar over mTLS (intentions decide there). Excluded ports and CIDRs go around the
sidecar; other destinations pass through it; an unknown virtual IP is closed and logged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from yurt.errors import Conflict
from yurt.jobspec import JobspecError, load

from .agent_util import AgentProcess, allocs, free_port, register, wait_for

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="bridge networking and iptables need root")

API_APP = """
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"service": "count-api", "count": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9001), H).serve_forever()
"""

# the transparent-proxied app: no upstream block, it dials the service's virtual name
CLIENT_APP = """
import sys, time, urllib.request
n = 0
while True:
    n += 1
    try:
        with urllib.request.urlopen("http://count-api.virtual.yurt:9001/", timeout=3) as r:
            print(n, "OK", r.read().decode(), flush=True)
    except Exception as e:
        print(n, "ERR", type(e).__name__, e, flush=True)
    time.sleep(0.3)
"""


# plain listeners in the transparent-proxied group: its service port and an excluded inbound port
PLAIN_APP = """
import socket, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    while True:
        c, _ = s.accept()
        c.sendall(b"plain\\n")
        c.close()
threading.Thread(target=serve, args=(9100,), daemon=True).start()
serve(9191)
"""


def job_hcl(excluded_port: int, excluded_cidr: str) -> str:
    return f"""
job "tproxy" {{
  datacenters = ["dc1"]
  group "api" {{
    network {{ mode = "bridge" }}
    service {{
      name = "count-api"
      port = "9001"
      connect {{ sidecar_service {{}} }}
    }}
    task "web" {{
      driver = "raw_exec"
      config {{
        command = {json.dumps(sys.executable)}
        args    = ["-c", {json.dumps(API_APP)}]
      }}
    }}
  }}
  group "client" {{
    network {{ mode = "bridge" }}
    service {{
      name = "tp-client"
      port = "9100"
      connect {{
        sidecar_service {{
          proxy {{
            transparent_proxy {{
              exclude_outbound_ports = [{excluded_port}]
              exclude_outbound_cidrs = ["{excluded_cidr}"]
              exclude_inbound_ports  = ["9191"]
            }}
          }}
        }}
      }}
    }}
    task "app" {{
      driver = "exec"
      config {{
        command = "/usr/bin/python3"
        args    = ["-c", {json.dumps(CLIENT_APP)}]
      }}
    }}
    task "plain" {{
      driver = "raw_exec"
      config {{
        command = {json.dumps(sys.executable)}
        args    = ["-c", {json.dumps(PLAIN_APP)}]
      }}
    }}
    task "app-raw" {{
      driver = "raw_exec"
      config {{
        command = {json.dumps(sys.executable)}
        args    = ["-c", {json.dumps(CLIENT_APP)}]
      }}
    }}
  }}
}}
"""


class LineServer:
    """A plain TCP server on the host (0.0.0.0:port) that answers each connection with a line;
    with `hold`, it keeps the connection open until the other side closes it."""

    def __init__(self, line: bytes, hold: bool = False) -> None:
        self.line, self.hold = line, hold
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(c,), daemon=True).start()

    def _answer(self, c: socket.socket) -> None:
        with c:
            c.sendall(self.line)
            while self.hold and c.recv(100):
                pass

    def close(self) -> None:
        self.sock.close()



# in the namespace: one connection that waits for the other side to close it
HOLD_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(120)
print(c.recv(100).decode().strip(), flush=True)
while c.recv(100):
    pass
print("closed", flush=True)
"""


class Recursor:
    """A small real DNS server on the host for the agent's `recursors`: it answers
    example.test A 192.0.2.77 and NXDOMAIN for anything else, over UDP."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from dnslib import QTYPE, RCODE, RR, A, DNSRecord
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            q = DNSRecord.parse(data)
            r = q.reply()
            if str(q.q.qname).rstrip(".") == "example.test" and q.q.qtype == QTYPE.A:
                r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.77"), ttl=5))
            else:
                r.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(r.pack(), peer)

    def close(self) -> None:
        self.sock.close()


class Scene:
    def __init__(self, agent: AgentProcess, api, dns_port: int, node_ip: str, echo_p: LineServer,
                 echo_q: LineServer) -> None:
        self.agent, self.api, self.dns_port, self.node_ip = agent, api, dns_port, node_ip
        self.echo_p, self.echo_q = echo_p, echo_q
        self.register_warnings: list[str] = []

    def alloc(self, group: str) -> dict:
        (a,) = [a for a in allocs(self.api, "tproxy") if a["TaskGroup"] == group and a["ClientStatus"] == "running"]
        return a

    def log(self, group: str, task: str) -> str:
        return self.api.get(f"/v1/client/fs/logs/{self.alloc(group)['ID']}",
                            params={"task": task, "plain": "true"}).text

    def sidecar_log(self, group: str = "client") -> list[dict]:
        service = "tp-client" if group == "client" else "count-api"
        return [json.loads(ln) for ln in self.log(group, f"connect-proxy-{service}").splitlines()
                if ln.startswith("{")]

    def app_lines(self, task: str = "app") -> list[str]:
        return self.log("client", task).splitlines()

    def in_netns(self, code: str) -> subprocess.CompletedProcess:
        """Python run inside the client group's namespace (as `ip netns exec` runs it: with the
        namespace's resolv.conf)."""
        return subprocess.run(["ip", "netns", "exec", self.alloc("client")["ID"], sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=60)

    def resolver(self):
        import dns.resolver
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.dns_port
        r.lifetime = 10
        return r


@pytest.fixture(scope="module")
def scene():
    dns_port, consul_port = free_port(), free_port()
    recursor = Recursor()
    conf = Path(tempfile.mkstemp(prefix="yurt-tp-", suffix=".hcl")[1])
    conf.write_text(f"ports {{\n  dns = {dns_port}\n  consul = {consul_port}\n}}\n"
                    f'recursors = ["127.0.0.1:{recursor.port}"]\n')
    agent = AgentProcess(extra=["-dev-connect", "-config", str(conf)]).start()
    api = agent.api()
    echo_p, echo_q = LineServer(b"echo\n"), LineServer(b"echo\n")
    try:
        node_ip = wait_for(lambda: api.get("/v1/nodes").json()[0]["Address"], what="the node registered")
        s = Scene(agent, api, dns_port, node_ip, echo_p, echo_q)
        out = register(api, job_hcl(echo_q.port, f"{node_ip}/32"))
        s.register_warnings = [w for w in (out.get("Warnings") or "").splitlines() if w]
        wait_for(lambda: len([a for a in allocs(api, "tproxy") if a["ClientStatus"] == "running"]) == 2,
                 timeout=120, what="both groups running")
        yield s
    finally:
        api.delete("/v1/job/tproxy", params={"purge": "true"})
        api.close()
        agent.stop()
        echo_p.close()
        echo_q.close()
        recursor.close()
        conf.unlink(missing_ok=True)


def ok_after(s: Scene, n: int) -> bool:
    return any(ln.split(" ", 2)[1] == "OK" and int(ln.split(" ", 1)[0]) > n
               for ln in s.app_lines() if " " in ln)


def last_n(s: Scene) -> int:
    lines = [ln for ln in s.app_lines() if ln.split(" ", 1)[0].isdigit()]
    return int(lines[-1].split(" ", 1)[0]) if lines else 0


@needs_root
def test_app_reaches_count_api_by_its_virtual_name(scene):
    s = scene
    assert not any("transparent_proxy" in w for w in s.register_warnings), s.register_warnings
    # exec (a chroot whose resolv.conf is the allocation's) and raw_exec (the host's resolv.conf,
    # its nameserver's port 53 redirected to the agent's DNS in the namespace)
    for task in ("app", "app-raw"):
        line = wait_for(lambda t=task: next((ln for ln in s.app_lines(t) if " OK " in ln), None), timeout=60,
                        what=f"{task}'s request to count-api.virtual.yurt answered")
        assert json.loads(line.split(" OK ", 1)[1]) == {"service": "count-api", "count": 1}
    # it went through the sidecar: an upstream connection to count-api, over mTLS to its sidecar
    entries = wait_for(lambda: [e for e in s.sidecar_log() if e.get("dir") == "upstream"
                                and e.get("dst") == "count-api" and e.get("verdict") == "allowed"],
                       what="the sidecar's log of the redirected connection")
    (count_api_sidecar,) = s.api.get("/v1/health/connect/count-api").json()
    svc = count_api_sidecar["Service"]
    assert entries[0]["upstream"] == f"{svc['Address']}:{svc['Port']}"
    # the name is the service's virtual IP, as the catalog shows it (Consul's tagged address)
    vip = svc["TaggedAddresses"]["consul-virtual"]["Address"]
    assert vip.startswith("240.")
    got = s.in_netns("import socket; print(socket.gethostbyname('count-api.virtual.yurt'))")
    assert got.returncode == 0 and got.stdout.strip() == vip, got.stderr
    assert s.api.get("/v1/agent/connect/virtual-ips").json()["Services"]["count-api"] == vip
    (client_sidecar,) = s.api.get("/v1/health/connect/tp-client").json()
    assert client_sidecar["Service"]["Proxy"]["Mode"] == "transparent"
    assert client_sidecar["Service"]["Proxy"]["TransparentProxy"] == {"OutboundListenerPort": 15001}
    assert svc["Proxy"]["Mode"] == ""


@needs_root
def test_dns_answers_virtual_and_service_names(scene):
    import dns.rdatatype
    import dns.resolver
    s = scene
    r = s.resolver()
    (count_api_sidecar,) = s.api.get("/v1/health/connect/count-api").json()
    vip = count_api_sidecar["Service"]["TaggedAddresses"]["consul-virtual"]["Address"]
    for domain in ("yurt", "consul"):
        assert [a.address for a in r.resolve(f"count-api.virtual.{domain}", "A")] == [vip]
    instances = s.api.get("/v1/health/service/count-api", params={"passing": "true"}).json()
    want = {e["Service"]["Address"] or e["Node"]["Address"] for e in instances}
    assert {a.address for a in r.resolve("count-api.service.yurt", "A")} == want
    srv = r.resolve("count-api.service.consul", "SRV")
    assert {rr.port for rr in srv} == {e["Service"]["Port"] for e in instances}
    assert any(rrset.rdtype == dns.rdatatype.A for rrset in srv.response.additional), srv.response
    for unknown in ("no-such-service.virtual.yurt", "no-such-service.service.yurt", "count-api.what.yurt"):
        with pytest.raises(dns.resolver.NXDOMAIN):
            r.resolve(unknown, "A")
    # over TCP as well
    assert [a.address for a in r.resolve("count-api.virtual.yurt", "A", tcp=True)] == [vip]
    # other names go to the recursors, from the agent's port and from inside the namespace
    assert [a.address for a in r.resolve("example.test", "A")] == ["192.0.2.77"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nothing.test", "A")
    got = s.in_netns("import socket; print(socket.gethostbyname('example.test'))")
    assert got.returncode == 0 and got.stdout.strip() == "192.0.2.77", got.stderr


@needs_root
def test_deny_intention_stops_it_and_deleting_it_restores(scene):
    s = scene
    wait_for(lambda: ok_after(s, 0), timeout=60, what="the app reaching count-api")
    cli = [sys.executable, "-m", "yurt.cli.main", "intention"]
    env = {**os.environ, "YURT_ADDR": s.agent.url}
    res = subprocess.run([*cli, "create", "-deny", "tp-client", "count-api"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        wait_for(lambda: [e for e in s.sidecar_log("api") if e.get("dir") == "inbound"
                          and e.get("verdict") == "denied" and e.get("src") == "tp-client"],
                 what="count-api's sidecar denying tp-client")
        n = last_n(s)
        wait_for(lambda: last_n(s) > n + 3, what="more attempts after the denial")
        later = [ln for ln in s.app_lines() if ln.split(" ", 1)[0].isdigit() and int(ln.split(" ", 1)[0]) > n]
        assert later and all(" ERR " in ln for ln in later), later
    finally:
        res = subprocess.run([*cli, "delete", "tp-client", "count-api"], capture_output=True, text=True,
                             env=env, timeout=60)
        assert res.returncode == 0, res.stderr
    n = last_n(s)
    wait_for(lambda: ok_after(s, n), what="the app reaching count-api again")


def _dial(s: Scene, host: str, port: int) -> str:
    got = s.in_netns(f"import socket; c = socket.create_connection(({host!r}, {port}), timeout=5); "
                     "print(c.recv(100).decode().strip())")
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


@needs_root
def test_excluded_port_and_cidr_go_around_the_sidecar(scene):
    from yurt.client.network import bridge
    s = scene
    gw = bridge.gateway()
    passed = [f"{gw}:{s.echo_q.port}", f"{s.node_ip}:{s.echo_p.port}"]
    # excluded port (echo_q) and excluded CIDR (the node's address): answered, not through the sidecar
    assert _dial(s, gw, s.echo_q.port) == "echo"
    assert _dial(s, s.node_ip, s.echo_p.port) == "echo"
    # not excluded: passed through the sidecar to where it was going (Consul's default)
    assert _dial(s, gw, s.echo_p.port) == "echo"
    marker = f"{gw}:{s.echo_p.port}"
    log = wait_for(lambda: (lambda entries: entries if any(e.get("dir") == "passthrough" and e.get("dst") == marker
                                                           for e in entries) else None)(s.sidecar_log()),
                   what="the passthrough logged by the sidecar")
    assert not [e for e in log if e.get("dst") in passed], log


@needs_root
def test_mesh_entry_mesh_destinations_only_closes_passthrough_live(scene):
    from yurt.client.network import bridge
    s = scene
    gw = bridge.gateway()
    dst = f"{gw}:{s.echo_p.port}"
    sidecar = "connect-proxy-tp-client"

    def sidecar_state() -> tuple:
        st = s.api.get(f"/v1/allocation/{s.alloc('client')['ID']}").json()["TaskStates"][sidecar]
        return st["State"], st["Restarts"], st["StartedAt"]
    before = sidecar_state()
    assert before[0] == "running"
    wait_for(lambda: ok_after(s, 0), timeout=60, what="the app reaching count-api")
    # passthrough to a destination outside the mesh, by default; one of them stays open
    assert _dial(s, gw, s.echo_p.port) == "echo"
    hold = LineServer(b"hold\n", hold=True)
    held = subprocess.Popen(["ip", "netns", "exec", s.alloc("client")["ID"], sys.executable, "-c", HOLD_CLIENT, gw,
                             str(hold.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "hold"
    except BaseException:
        held.kill()
        hold.close()
        raise
    r = s.api.put("/v1/config", json={"Kind": "mesh", "Name": "mesh", "TransparentProxy": {"MeshDestinationsOnly": True}})
    assert r.status_code == 200 and r.json() is True, r.text
    try:
        # the running sidecar follows the entry: the same connection is now closed unanswered
        wait_for(lambda: _dial(s, gw, s.echo_p.port) == "", what="the passthrough closed by the mesh entry")
        refusals = wait_for(lambda: [e for e in s.sidecar_log() if e.get("event") == "outbound-refused"
                                     and e.get("destination") == dst], what="the refusal logged")
        assert "TransparentProxy.MeshDestinationsOnly" in refusals[-1]["reason"], refusals[-1]
        assert "not a mesh destination" in refusals[-1]["reason"], refusals[-1]
        assert [e for e in s.sidecar_log() if e.get("event") == "mesh-config" and e.get("value") is True]
        # the passthrough that was open when the entry came is closed by the sidecar too
        out, err = held.communicate(timeout=60)
        assert held.returncode == 0 and out.strip() == "closed", (out, err)
        wait_for(lambda: [e for e in s.sidecar_log() if e.get("dir") == "passthrough"
                          and e.get("dst") == f"{gw}:{hold.port}" and "MeshDestinationsOnly" in e.get("reason", "")],
                 what="the closed passthrough logged naming the setting")
        # not restarted, and the mesh service still answers through it
        assert sidecar_state() == before
        n = last_n(s)
        wait_for(lambda: ok_after(s, n), what="the app reaching count-api with the mesh entry set")
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
        hold.close()
        assert s.api.delete("/v1/config/mesh/mesh").json() is True
    # deleting the entry lets the passthrough through again
    wait_for(lambda: _dial(s, gw, s.echo_p.port) == "echo", what="the passthrough back after deleting the entry")
    assert sidecar_state() == before


@needs_root
def test_inbound_goes_to_the_sidecar_except_excluded_ports(scene):
    s = scene
    ip = s.api.get(f"/v1/allocation/{s.alloc('client')['ID']}").json()["NetworkStatus"]["Address"]
    # exclude_inbound_ports: reached directly (the mesh-only firewall opens it)
    got = wait_for(lambda: _recv_from(ip, 9191), what="the excluded inbound port answering")
    assert got == b"plain\n"
    # the service's own port: redirected to the sidecar's public listener, which wants mTLS
    got = _recv_from(ip, 9100, send=b"GET / HTTP/1.0\r\n\r\n")
    assert got in (b"", None), got   # closed (or reset) by the sidecar; never the app's bytes
    wait_for(lambda: [e for e in s.sidecar_log() if e.get("dir") == "inbound" and e.get("verdict") == "refused"
                      and e.get("reason", "").startswith("tls handshake")
                      and not e.get("peer", "").startswith("127.")],
             what="the sidecar refusing the plain connection redirected to it")


def _recv_from(host: str, port: int, send: bytes = b"") -> bytes | None:
    """What a plain TCP client reads (None: the connection was reset)."""
    with socket.create_connection((host, port), timeout=5) as c:
        c.settimeout(5)
        if send:
            c.sendall(send)
        try:
            return c.recv(100)
        except ConnectionResetError:
            return None


@needs_root
def test_mesh_explain_checks_the_outbound_listener(scene):
    s = scene
    res = subprocess.run([sys.executable, "-m", "yurt.cli.main", "mesh", "explain", "tp-client", "count-api"],
                         capture_output=True, text=True, env={**os.environ, "YURT_ADDR": s.agent.url}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "listens on 127.0.0.1:15001 for count-api" in res.stdout, res.stdout


@needs_root
def test_unknown_virtual_ip_is_closed_and_logged(scene):
    s = scene
    got = s.in_netns("import socket; c = socket.create_connection(('240.0.0.250', 80), timeout=5); "
                     "c.settimeout(5); print(repr(c.recv(100)))")
    assert got.returncode == 0 and got.stdout.strip() == "b''", (got.stdout, got.stderr)
    wait_for(lambda: [e for e in s.sidecar_log() if e.get("event") == "outbound-refused"
                      and e.get("reason") == "no service has the virtual IP 240.0.0.250"],
             what="the refusal logged, naming the IP")


# -- without root: the rules, the validation, the virtual IP table ----------------------------

def test_nat_rules_exclude_before_redirecting():
    from yurt.client.network.tproxy import nat_rules
    from yurt.structs import ConsulTransparentProxy
    tp = ConsulTransparentProxy(outbound_port=15555, exclude_outbound_ports=[5432],
                                exclude_outbound_cidrs=["10.0.0.0/8"], exclude_uids=["1000"])
    rules = [" ".join(r) for r in nat_rules(tp, dns=True, inbound=(21000, [9102, 9191]))]
    out = [r for r in rules if r.startswith("-A YURT_PROXY_OUTPUT")]
    assert out == ["-A YURT_PROXY_OUTPUT -m mark --mark 0x5955 -j RETURN",
                   "-A YURT_PROXY_OUTPUT -o lo -j RETURN",
                   "-A YURT_PROXY_OUTPUT -p tcp --dport 5432 -j RETURN",
                   "-A YURT_PROXY_OUTPUT -d 10.0.0.0/8 -j RETURN",
                   "-A YURT_PROXY_OUTPUT -m owner --uid-owner 1000 -j RETURN",
                   "-A YURT_PROXY_OUTPUT -j YURT_PROXY_REDIRECT"]
    assert "-A YURT_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15555" in rules
    # DNS first, so TCP port 53 goes to the agent's DNS, not to the sidecar
    assert rules.index("-A OUTPUT -p tcp --dport 53 -j YURT_DNS_REDIRECT") < rules.index(
        "-A OUTPUT -p tcp -j YURT_PROXY_OUTPUT")
    assert [r for r in rules if "INBOUND" in r or "IN_REDIRECT" in r] == [
        "-N YURT_PROXY_INBOUND", "-N YURT_PROXY_IN_REDIRECT",
        "-A YURT_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 21000",
        "-A YURT_PROXY_INBOUND -p tcp --dport 9102 -j RETURN",
        "-A YURT_PROXY_INBOUND -p tcp --dport 9191 -j RETURN",
        "-A YURT_PROXY_INBOUND -p tcp -j YURT_PROXY_IN_REDIRECT",
        "-A PREROUTING -p tcp -j YURT_PROXY_INBOUND"]
    no_dns = [" ".join(r) for r in nat_rules(tp, dns=False)]
    assert not [r for r in no_dns if "DNS" in r]


BAD = """
job "bad" {
  group "g" {
    network { mode = "%s" }
    service {
      name = "web"
      port = "8080"
      connect {
        sidecar_service {
          proxy {
            transparent_proxy {
              %s
            }
          }
        }
      }
    }
    task "t" {
      driver = "raw_exec"
      config { command = "/bin/true" }
    }
  }
}
"""


@pytest.mark.parametrize("mode,body,where,words", [
    ("bridge", 'exclude_outbound_cidrs = ["10.0.0.0/33"]', "exclude_outbound_cidrs",
     'exclude_outbound_cidrs entry "10.0.0.0/33" is not an IPv4 CIDR'),
    ("bridge", 'exclude_outbound_cidrs = ["not-a-cidr"]', "exclude_outbound_cidrs", '"not-a-cidr" is not an IPv4 CIDR'),
    ("bridge", 'exclude_uids = ["root"]', "exclude_uids", 'exclude_uids entry "root" is not a user ID'),
    ("bridge", "exclude_outbound_ports = [70000]", "exclude_outbound_ports", "70000 is not a port"),
    ("host", "", "mode", 'network mode "host" cannot carry connect service "web"'),
])
def test_bad_transparent_proxy_input_is_refused_naming_it(mode, body, where, words):
    with pytest.raises(JobspecError) as e:
        load(BAD % (mode, body), "bad.nomad")
    text = str(e.value)
    assert words in text and where in text, text


def test_virtual_ips_are_stable_across_a_reopen():
    from yurt.server.virtual_ips import VirtualIPs
    from yurt.state import StateStore
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state.db")
        store = StateStore(path)
        vips = VirtualIPs(store)
        assert vips.assign("count-api") == "240.0.0.1"
        assert vips.assign("count-dashboard") == "240.0.0.2"
        assert vips.assign("count-api") == "240.0.0.1"
        store.close()
        store = StateStore(path)
        again = VirtualIPs(store)
        assert again.table() == {"count-api": "240.0.0.1", "count-dashboard": "240.0.0.2"}
        assert again.assign("third") == "240.0.0.3"
        small = VirtualIPs(store, "10.99.0.0/30")   # offsets 1 and 2 only
        assert [small.assign("svc-0"), small.assign("svc-1")] == ["10.99.0.1", "10.99.0.2"]
        with pytest.raises(Conflict) as e:
            small.assign("svc-2")
        assert "cannot allocate any more unique service virtual IPs in 10.99.0.0/30" in str(e.value)
        store.close()


def test_agent_config_dns_and_virtual_ip_settings(tmp_path):
    from yurt.agent.config import AgentConfig, load_file
    from yurt.errors import ConfigError
    conf = tmp_path / "agent.hcl"
    conf.write_text('ports {\n  dns = 8653\n}\naddresses {\n  dns = "127.0.0.2"\n}\n'
                    'recursors = ["1.1.1.1"]\nconnect {\n  virtual_ip_cidr = "10.240.0.0/16"\n}\n')
    cfg = load_file(str(conf), AgentConfig())
    assert (cfg.dns_listener, cfg.dns_addr, cfg.recursors, cfg.virtual_ip_cidr) == (
        8653, "127.0.0.2", ["1.1.1.1"], "10.240.0.0/16")
    assert AgentConfig().dns_listener == 0 and AgentConfig(dev_connect=True).dns_listener == 8600
    conf.write_text('connect {\n  virtual_ip_cidr = "240.0.0.0/40"\n}\n')
    with pytest.raises(ConfigError) as e:
        load_file(str(conf), AgentConfig())
    assert 'connect { virtual_ip_cidr } = "240.0.0.0/40" is not an IPv4 CIDR' in str(e.value)
    conf.write_text('recursors = "1.1.1.1"\n')
    with pytest.raises(ConfigError) as e:
        load_file(str(conf), AgentConfig())
    assert "recursors must be a list of DNS server addresses" in str(e.value)
