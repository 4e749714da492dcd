"""The lab: hosts made of network namespaces on one machine, each running its own Yurt agent.

```
machine (root namespace)                     lab "lab", subnet 10.213.0.0/24
  bridge ylab-lab 10.213.0.1 ──┬── veth ── [netns ylab-lab-server1]  eth0 10.213.0.2  yurt agent (server)
  (FORWARD accepted between    ├── veth ── [netns ylab-lab-client1]  eth0 10.213.0.3  yurt agent (client)
   its ports, one rule)        └── veth ── [netns ylab-lab-client2]  eth0 10.213.0.4  yurt agent (client)
```

With more than one server host (or ``-etcd``), every server host also runs an etcd member in its
namespace (client URL ``http://<address>:2379``, peer URL ``:2380``, data under the host's
directory), and the Yurt servers keep their state in that etcd cluster (``server { store { etcd
{ endpoints = [...] } } }``); ``up`` waits for the cluster to be healthy before it starts them.

A host is a network namespace with one interface on the lab bridge and a default route through
the bridge's address. Its agent runs in that namespace only (``nsenter --net``: the file system
and process table are the machine's), with its own data dir under ``/var/lib/yurt/lab/<lab>/<host>``.
So each host has its own "yurt" CNI bridge, IPAM leases (``bridge.ipam_data_dir``), iptables
and allocation namespaces; allocation namespaces are named by allocation ID and owned by the
data dir that made them, so no host's clean-up touches another's.

``lab.json`` in the lab's directory records the hosts; it is written before anything is made,
so ``down`` can undo a half-made lab. ``down`` finds leftovers by name even without it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from yurt.errors import YurtError

LAB_ROOT = Path("/var/lib/yurt/lab")
NETNS_DIR = Path("/var/run/netns")
IPAM_DIR = Path("/var/run/yurt/ipam")     # bridge.NETNS_IPAM_DIR: a host's leases, by namespace name
DEFAULT_LAB = "lab"
DEFAULT_SUBNET = "10.213.0.0/24"
HTTP_PORT = 4646
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ROLES = ("server", "client", "server+client")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
STOP_TIMEOUT = 15.0


class LabError(YurtError):
    """A lab cannot be made, found or changed; str() says why and what to do."""

    status = 400


@dataclass
class Host:
    name: str
    role: str
    address: str
    netns: str
    veth: str
    pid: int = 0
    start_time: int | None = None
    state: str = "new"          # new, running, stopped, killed
    etcd_pid: int = 0           # the host's etcd member (server hosts of a lab with etcd)
    etcd_start_time: int | None = None
    etcd_state: str = ""        # "" (no member), running, killed
    cut: bool = False           # its link is cut (yurt lab cut), its processes running

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    @property
    def is_server(self) -> bool:
        return "server" in self.role

    @property
    def is_client(self) -> bool:
        return "client" in self.role


@dataclass
class Lab:
    name: str
    subnet: str
    bridge: str
    gateway: str
    hosts: list[Host] = field(default_factory=list)
    extra_config: list[str] = field(default_factory=list)
    scheme: str = "http"        # "https" when a -config file turns on tls { http = true }
    etcd_client_port: int = 0   # 0: the lab runs no etcd (one server without -etcd)
    etcd_peer_port: int = 0
    etcd_token: str = ""        # --initial-cluster-token, unique per lab

    def url(self, host: Host) -> str:
        return f"{self.scheme}://{host.address}:{HTTP_PORT}"

    @property
    def has_etcd(self) -> bool:
        return self.etcd_client_port > 0

    def etcd_url(self, host: Host) -> str:
        return f"http://{host.address}:{self.etcd_client_port}"

    @property
    def etcd_endpoints(self) -> list[str]:
        return [self.etcd_url(h) for h in self.servers]

    def etcd_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "etcd"

    def etcd_log(self, host: Host) -> Path:
        return self.host_dir(host) / "etcd.log"

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.name

    def host_dir(self, host: Host) -> Path:
        return self.dir / host.name

    def data_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "data"

    def log_file(self, host: Host) -> Path:
        return self.host_dir(host) / "agent.log"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f'lab "{self.name}" has no host "{name}" (hosts: {", ".join(h.name for h in self.hosts)})')

    @property
    def servers(self) -> list[Host]:
        return [h for h in self.hosts if h.is_server]

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".lab.json.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, self.dir / "lab.json")


def load(name: str = DEFAULT_LAB) -> Lab:
    path = LAB_ROOT / name / "lab.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f'no lab "{name}" is up: start one with yurt lab up' +
                       ("" if name == DEFAULT_LAB else f" -name {name}")) from None
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read {path}: {e}; yurt lab down -name {name} removes what is left") from None
    hosts = [Host(**h) for h in data.pop("hosts", [])]
    return Lab(hosts=hosts, **data)


# --- plan -------------------------------------------------------------------------------------

def plan_hosts(servers: int, clients: int, named: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, role) of every host: ``-host NAME[:ROLE]`` ones, else server1.., client1..
    Refuses a bad or repeated name."""
    out: list[tuple[str, str]] = []
    for spec in named:
        name, _, role = spec.partition(":")
        role = role or "client"
        if role not in ROLES:
            raise LabError(f'-host {spec}: role "{role}" is not one of {", ".join(ROLES)}')
        out.append((name, role))
    if not out:
        if servers < 1:
            raise LabError("a lab needs a server: -servers 1")
        if clients < 0:
            raise LabError(f"-clients {clients}: give 0 or more")
        out = [(f"server{i}", "server") for i in range(1, servers + 1)]
        out += [(f"client{i}", "client") for i in range(1, clients + 1)]
    seen: set[str] = set()
    for name, _ in out:
        if not NAME_RE.match(name):
            raise LabError(f'host name "{name}" is not valid: a lowercase letter, then up to 19 lowercase '
                           "letters, digits or dashes")
        if name in seen:
            raise LabError(f'two lab hosts are named "{name}": give each host its own name')
        seen.add(name)
    n_servers = sum(1 for _, role in out if "server" in role)
    if n_servers == 0:
        raise LabError("a lab needs a server: give one host the role server (-host NAME:server)")
    return out


def _netns_name(lab: str, host: str) -> str:
    return f"ylab-{lab}-{host}"


def _veth_name(lab: str, host: str) -> str:
    import hashlib
    return "yl" + hashlib.sha1(f"{lab}/{host}".encode()).hexdigest()[:11]


# --- commands ---------------------------------------------------------------------------------

def _need_root() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        raise LabError("yurt lab needs root on Linux: it makes network namespaces, links and iptables rules")
    for tool in ("ip", "nsenter", "iptables"):
        if shutil.which(tool, path=SBIN + ":" + os.environ.get("PATH", "")) is None:
            raise LabError(f"the {tool} command is not installed: apt-get install iproute2 util-linux iptables")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(args[0], path=SBIN + ":" + os.environ.get("PATH", "")) or args[0]
    proc = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


Progress = Callable[[str], None]


def up(name: str = DEFAULT_LAB, *, servers: int = 1, clients: int = 3, hosts: Iterable[str] = (),
       subnet: str = DEFAULT_SUBNET, extra_config: Iterable[str] = (), wait: float = 60.0, etcd: bool = False,
       progress: Progress = lambda line: None) -> Lab:
    """Make the lab and start its agents; returns once every client node is ready (or raises).
    With more than one server host, or ``etcd``, every server host runs an etcd member first."""
    _need_root()
    if not LAB_NAME_RE.match(name):
        raise LabError(f'lab name "{name}" is not valid: a lowercase letter, then up to 9 lowercase letters or digits')
    if (LAB_ROOT / name / "lab.json").exists():
        flag = "" if name == DEFAULT_LAB else f" -name {name}"
        raise LabError(f'lab "{name}" is already up: yurt lab status{flag}; yurt lab down{flag} first to make '
                       "it anew, or name another with -name")
    planned = plan_hosts(servers, clients, hosts)
    etcd = etcd or sum(1 for _, role in planned if "server" in role) > 1
    if etcd and not Path(_etcd_binary()).exists():
        raise LabError(f"{_etcd_binary()} is not installed, and a lab with several servers (or -etcd) runs an "
                       "etcd member on each server host: apt-get install etcd-server etcd-client")
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError:
        raise LabError(f'-subnet "{subnet}" is not an IPv4 network like {DEFAULT_SUBNET}') from None
    addresses = list(net.hosts())
    if len(addresses) < len(planned) + 1:
        raise LabError(f"-subnet {subnet} has room for {max(len(addresses) - 1, 0)} hosts, not {len(planned)}")
    configs = []
    for path in extra_config:
        if not Path(path).is_file():
            raise LabError(f"-config {path}: no such file")
        configs.append(str(Path(path).resolve()))
    bridge = f"ylab-{name}"
    if _run("ip", "link", "show", bridge, check=False).returncode == 0:
        raise LabError(f'a link named {bridge} exists already (a lab left half-made?): yurt lab down'
                       + ("" if name == DEFAULT_LAB else f" -name {name}") + " removes it")
    _check_subnet_free(net)
    lab = Lab(name=name, subnet=str(net), bridge=bridge, gateway=f"{addresses[0]}/{net.prefixlen}",
              extra_config=configs, scheme="https" if any(_serves_https(c) for c in configs) else "http",
              hosts=[Host(name=h, role=role, address=str(addresses[i + 1]), netns=_netns_name(name, h),
                          veth=_veth_name(name, h)) for i, (h, role) in enumerate(planned)])
    if etcd:
        lab.etcd_client_port, lab.etcd_peer_port = ETCD_CLIENT_PORT, ETCD_PEER_PORT
        lab.etcd_token = f"ylab-{name}-{secrets.token_hex(6)}"
    lab.save()   # before anything exists: down can undo a half-made lab
    try:
        _make_bridge(lab)
        for host in lab.hosts:
            _make_host(lab, host)
            progress(f"host {host.name} ({host.role}) at {host.address}")
        if lab.has_etcd:
            for host in lab.servers:
                start_etcd(lab, host)
                progress(f"etcd member {host.name} at {lab.etcd_url(host)}")
            _wait_etcd(lab, wait, progress)
        for host in sorted(lab.hosts, key=lambda h: not h.is_server):
            _write_config(lab, host)
            start_agent(lab, host)
        _wait_ready(lab, wait, progress)
    except BaseException:
        down(name)
        raise
    return lab


def _serves_https(path: str) -> bool:
    """Whether an agent config file turns on tls { http = true }."""
    import hcl2
    try:
        text = Path(path).read_text()
        raw = json.loads(text) if path.endswith(".json") else hcl2.loads(text)
    except Exception as e:  # noqa: BLE001 - every parse error becomes one message
        raise LabError(f"-config {path}: not a valid agent config file: {str(e).splitlines()[0]}") from None
    tls = raw.get("tls")
    tls = tls[0] if isinstance(tls, list) and tls else tls
    return isinstance(tls, dict) and tls.get("http") in (True, "true")


def _check_subnet_free(net: ipaddress.IPv4Network) -> None:
    proc = _run("ip", "-j", "-4", "addr", "show", check=False)
    try:
        links = json.loads(proc.stdout or "[]")
    except ValueError:
        return
    for link in links:
        for a in link.get("addr_info") or []:
            if a.get("local") and ipaddress.IPv4Network(f"{a['local']}/{a.get('prefixlen', 32)}",
                                                        strict=False).overlaps(net):
                raise LabError(f"-subnet {net} overlaps {a['local']}/{a.get('prefixlen')} on {link.get('ifname')}: "
                               "choose another subnet with -subnet")


def _make_bridge(lab: Lab) -> None:
    _run("ip", "link", "add", lab.bridge, "type", "bridge")
    _run("ip", "addr", "add", lab.gateway, "dev", lab.bridge)
    _run("ip", "link", "set", lab.bridge, "up")
    # traffic between lab hosts crosses the bridge; with br_netfilter it meets FORWARD, where
    # another tool's policy could drop it
    _run("iptables", "-I", "FORWARD", *_forward_rule(lab))


def _forward_rule(lab: Lab) -> list[str]:
    return ["-i", lab.bridge, "-o", lab.bridge, "-m", "comment", "--comment", f"yurt lab {lab.name}", "-j", "ACCEPT"]


def _make_host(lab: Lab, host: Host) -> None:
    ns = host.netns
    _run("ip", "netns", "add", ns)
    _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", f"{host.veth}p")
    _run("ip", "link", "set", f"{host.veth}p", "netns", ns)
    _run("ip", "link", "set", host.veth, "master", lab.bridge)
    _run("ip", "link", "set", host.veth, "up")
    prefix = ipaddress.IPv4Network(lab.subnet).prefixlen
    for cmd in (["link", "set", "lo", "up"], ["link", "set", f"{host.veth}p", "name", "eth0"],
                ["addr", "add", f"{host.address}/{prefix}", "dev", "eth0"], ["link", "set", "eth0", "up"],
                ["route", "add", "default", "via", lab.gateway.split("/")[0]]):
        _run("ip", "-n", ns, *cmd)
    lab.host_dir(host).mkdir(parents=True, exist_ok=True)


def _write_config(lab: Lab, host: Host) -> None:
    servers = ", ".join(f'"{s.address}:{HTTP_PORT}"' for s in lab.servers)
    text = [f'name = "{host.name}"', f'data_dir = "{lab.data_dir(host)}"', f'bind_addr = "{host.address}"',
            f"ports {{ http = {HTTP_PORT} }}",
            _server_block(lab, host)]
    if host.is_client:
        text.append(f'client {{\n  enabled = true\n  servers = [{servers}]\n  network_interface = "eth0"\n}}')
    else:
        text.append("client { enabled = false }")
    text.append('plugin "raw_exec" {\n  config { enabled = true }\n}')
    (lab.host_dir(host) / "agent.hcl").write_text("\n".join(text) + "\n")


def _server_block(lab: Lab, host: Host) -> str:
    if not (host.is_server and lab.has_etcd):
        return f"server {{ enabled = {str(host.is_server).lower()} }}"
    endpoints = ", ".join(f'"{e}"' for e in lab.etcd_endpoints)
    # the servers share one keystore (variables' root keys): every one decrypts what another wrote
    return ("server {\n  enabled = true\n"
            f'  keystore_dir = "{lab.dir / "keystore"}"\n  store {{\n    etcd {{\n'
            f"      endpoints = [{endpoints}]\n    }}\n  }}\n}}")


def start_agent(lab: Lab, host: Host) -> None:
    """Start the host's agent in its namespace, on its data dir (again, after stop or kill)."""
    if host.state == "running" and _alive(host):
        raise LabError(f"the agent of {host.name} is running already (pid {host.pid})")
    _run("ip", "link", "set", host.veth, "up")
    args = [sys.executable, "-m", "yurt.cli.main", "agent", "-config", str(lab.host_dir(host) / "agent.hcl")]
    for extra in lab.extra_config:
        args += ["-config", extra]
    nsenter = shutil.which("nsenter", path=SBIN) or "nsenter"
    with open(lab.log_file(host), "ab") as log:
        proc = subprocess.Popen([nsenter, f"--net={host.netns_path}", "--", *args], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
    host.pid, host.start_time, host.state = proc.pid, _start_time(proc.pid), "running"
    lab.save()


# --- etcd members ----------------------------------------------------------------------------

def _etcd_binary() -> str:
    return shutil.which("etcd", path=SBIN + ":" + os.environ.get("PATH", "")) or "/usr/bin/etcd"


def _need_etcd_member(lab: Lab, host: Host) -> None:
    flag = "" if lab.name == DEFAULT_LAB else f" -name {lab.name}"
    if not lab.has_etcd:
        raise LabError(f'lab "{lab.name}" runs no etcd: a lab has etcd members with more than one server, or '
                       f"with -etcd (yurt lab down{flag}; yurt lab up{flag} -etcd ...)")
    if not host.is_server:
        raise LabError(f"{host.name} runs no etcd member: only server hosts do "
                       f"({', '.join(h.name for h in lab.servers)})")


def etcd_args(lab: Lab, host: Host) -> list[str]:
    """The etcd member's command line: the same on every start (on an existing data dir etcd
    ignores the initial-* flags, so a restarted member rejoins)."""
    client, peer = lab.etcd_url(host), f"http://{host.address}:{lab.etcd_peer_port}"
    cluster = ",".join(f"{h.name}=http://{h.address}:{lab.etcd_peer_port}" for h in lab.servers)
    return [_etcd_binary(), "--name", host.name, "--data-dir", str(lab.etcd_dir(host)),
            # also on the host's loopback: etcdctl inside the host works without --endpoints
            "--listen-client-urls", f"{client},http://127.0.0.1:{lab.etcd_client_port}",
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-token", lab.etcd_token,
            "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", str(lab.etcd_log(host))]


def etcd_alive(host: Host) -> bool:
    return _pid_alive(host.etcd_pid, host.etcd_start_time)


def start_etcd(lab: Lab, host: Host) -> None:
    """Start the host's etcd member in its namespace, on its data dir (again, after a kill)."""
    _need_etcd_member(lab, host)
    if etcd_alive(host):
        raise LabError(f"the etcd member of {host.name} is running already (pid {host.etcd_pid})")
    nsenter = shutil.which("nsenter", path=SBIN) or "nsenter"
    with open(lab.etcd_log(host), "ab") as log:   # etcd's own errors before its logger starts
        proc = subprocess.Popen([nsenter, f"--net={host.netns_path}", "--", *etcd_args(lab, host)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/")
    host.etcd_pid, host.etcd_start_time, host.etcd_state = proc.pid, _start_time(proc.pid), "running"
    lab.save()


def kill_etcd(lab: Lab, host: Host) -> int:
    """SIGKILL the host's etcd member only (its agent keeps running); its pid."""
    _need_etcd_member(lab, host)
    if not etcd_alive(host):
        flag = "" if lab.name == DEFAULT_LAB else f" -name {lab.name}"
        raise LabError(f"the etcd member of {host.name} is not running: yurt lab start{flag} {host.name} -etcd "
                       "starts it")
    pid = host.etcd_pid
    _kill_pids([pid], f"the etcd member of {host.name}")
    host.etcd_pid, host.etcd_start_time, host.etcd_state = 0, None, "killed"
    lab.save()
    return pid


def etcd_health(lab: Lab, host: Host, timeout: float = 2.0) -> bool | None:
    """What the member's /health says (asked from this namespace, over the lab bridge): True, False
    (no quorum), None (no answer)."""
    import httpx
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as c:
            return c.get(f"{lab.etcd_url(host)}/health").json().get("health") == "true"
    except (httpx.HTTPError, OSError, ValueError, AttributeError):
        return None


def _wait_etcd(lab: Lab, wait: float, progress: Progress) -> None:
    """Until every member says the cluster is healthy; a dead member or the deadline is an error
    naming its log."""
    deadline = time.monotonic() + wait
    while True:
        for host in lab.servers:
            if not etcd_alive(host):
                raise LabError(f"the etcd member of {host.name} exited; the end of {lab.etcd_log(host)}:\n"
                               f"{_etcd_tail(lab.etcd_log(host))}")
        sick = [h for h in lab.servers if etcd_health(lab, h) is not True]
        if not sick:
            n = len(lab.servers)
            progress(f"etcd cluster healthy ({n} member{'s' if n > 1 else ''})")
            return
        if time.monotonic() > deadline:
            log = lab.etcd_log(sick[0])
            raise LabError(f"the lab's etcd cluster was not healthy within {wait:.0f}s (waiting for "
                           f"{', '.join(h.name for h in sick)}); the end of {log}:\n{_etcd_tail(log)}")
        time.sleep(0.2)


def _etcd_tail(path: Path, lines: int = 8) -> str:
    """The end of a member's log, its zap JSON lines as "level: msg (error)" without stack traces."""
    out = []
    for line in _tail(path, lines).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if not isinstance(entry, dict):
            out.append(line)
            continue
        extra = "; ".join(f"{k}={entry[k]}" for k in ("error", "dir", "address", "url") if k in entry)
        out.append(f"{entry.get('level', '?')}: {entry.get('msg', line)}" + (f" ({extra})" if extra else ""))
    return "\n".join(out)


# --- faults -----------------------------------------------------------------------------------

def _set_link(lab: Lab, host: Host, up: bool) -> None:
    """Both ends of the host's veth up or down; up again, its default route comes back."""
    state = "up" if up else "down"
    _run("ip", "link", "set", host.veth, state)
    _run("ip", "-n", host.netns, "link", "set", "eth0", state)
    if up:
        _run("ip", "-n", host.netns, "route", "replace", "default", "via", lab.gateway.split("/")[0])


def cut(lab: Lab, host: Host) -> None:
    """The host's link is cut (both ends of its veth down): it reaches no other host and none
    reaches it; its processes keep running."""
    flag = "" if lab.name == DEFAULT_LAB else f" -name {lab.name}"
    if host.cut:
        raise LabError(f"{host.name} is cut already: yurt lab heal{flag} {host.name} restores its link")
    if host.state == "killed":
        raise LabError(f"{host.name} is killed, its link is down already: yurt lab start{flag} {host.name} "
                       "brings it back")
    _set_link(lab, host, up=False)
    host.cut = True
    lab.save()


def heal(lab: Lab, host: Host) -> None:
    """The cut host's link is back."""
    if not host.cut:
        flag = "" if lab.name == DEFAULT_LAB else f" -name {lab.name}"
        raise LabError(f"{host.name} is not cut (yurt lab cut{flag} {host.name} cuts it)")
    _set_link(lab, host, up=True)
    host.cut = False
    lab.save()


def start_host(lab: Lab, host: Host) -> list[str]:
    """The host comes back: its link up (healed too), its etcd member (if it has one) and its
    agent, each on its data dir, whichever is not running; what was started."""
    member = lab.has_etcd and host.is_server
    if _alive(host) and (not member or etcd_alive(host)) and not host.cut:
        raise LabError(f"{host.name} is running already (agent pid {host.pid}"
                       + (f", etcd member pid {host.etcd_pid})" if member else ")"))
    _set_link(lab, host, up=True)
    host.cut = False
    lab.save()
    started = []
    if member and not etcd_alive(host):
        start_etcd(lab, host)
        started.append(f"etcd member (pid {host.etcd_pid})")
    if not _alive(host):
        start_agent(lab, host)
        started.append(f"agent (pid {host.pid})")
    return started


def _wait_ready(lab: Lab, wait: float, progress: Progress) -> None:
    """Until every agent is healthy: a server answers, a client has registered its node. Asked on
    each agent's unix socket (plain HTTP, and public with ACLs on), so a lab with TLS and ACLs in
    its `-config` is waited for the same way."""
    import httpx
    deadline = time.monotonic() + wait
    ready: set[str] = set()
    while True:
        for host in lab.hosts:
            if not _alive(host):
                tail = _tail(lab.log_file(host))
                raise LabError(f"the agent of {host.name} exited; the end of {lab.log_file(host)}:\n{tail}")
        for host in lab.hosts:
            if host.name in ready:
                continue
            sock = lab.data_dir(host) / "yurt.sock"
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2) as c:
                    ok = c.get("http://agent/v1/agent/health").status_code == 200
            except (httpx.HTTPError, OSError):
                ok = False
            if ok:
                ready.add(host.name)
                progress(f"{'node' if host.is_client else 'server'} {host.name} ready")
        if len(ready) == len(lab.hosts):
            return
        if time.monotonic() > deadline:
            missing = ", ".join(sorted({h.name for h in lab.hosts} - ready))
            raise LabError(f"the lab's agents were not all ready within {wait:.0f}s (waiting for {missing}); "
                           f"see the agents' logs under {lab.dir}")
        time.sleep(0.2)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- processes --------------------------------------------------------------------------------

def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(host: Host) -> bool:
    return _pid_alive(host.pid, host.start_time)


def _pid_alive(pid: int, start_time: int | None) -> bool:
    """The process we started (same start time: not a recycled pid) is alive."""
    return bool(pid) and start_time is not None and _start_time(pid) == start_time and not _zombie(pid)


def _kill_pids(pids: list[int], what: str, timeout: float = 10.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while [p for p in pids if not _zombie(p)]:
        if time.monotonic() > deadline:
            raise LabError(f"{what} would not die: {', '.join(map(str, pids))}")
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return None


def host_namespaces(lab: Lab, host: Host) -> set[tuple[int, int]]:
    """The host's namespace and those of the allocations its agent made (by their state files
    and by the owner records that point into its data dir)."""
    out = {i for i in [_ns_id(host.netns_path)] if i}
    data = lab.data_dir(host)
    for state in data.glob("**/network/*.json"):
        try:
            netns = json.loads(state.read_text()).get("netns", "")
        except (OSError, ValueError):
            continue
        ns = _ns_id(netns) if netns else None
        if ns:
            out.add(ns)
    owners = Path("/var/run/yurt/networks")
    if owners.is_dir():
        for record in owners.iterdir():
            try:
                first = record.read_text().splitlines()[0]
            except (OSError, IndexError):
                continue
            if first.startswith(str(data) + "/"):
                ns = _ns_id(str(NETNS_DIR / record.name))
                if ns:
                    out.add(ns)
    return out


def host_processes(lab: Lab, host: Host) -> list[int]:
    """Every process of the host: its agent and whatever runs in its namespaces."""
    namespaces = host_namespaces(lab, host)
    me = os.getpid()
    pids = set()
    if _alive(host):
        pids.add(host.pid)
    if etcd_alive(host):
        pids.add(host.etcd_pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        ns = _ns_id(str(entry / "ns" / "net"))
        if ns is not None and ns in namespaces:
            pids.add(int(entry.name))
    return sorted(pids)


def _kill_all(lab: Lab, host: Host, timeout: float = 10.0) -> None:
    """SIGKILL every process of the host until none is left (a dying agent may still fork)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = host_processes(lab, host)
        pids = [p for p in pids if not _zombie(p)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise LabError(f"processes of {host.name} would not die: {', '.join(map(str, pids))}")
        time.sleep(0.1)


def kill(lab: Lab, host: Host) -> list[int]:
    """A host dies: SIGKILL its agent, its etcd member and every process it started, and its link goes down.
    Its namespaces, data dir and whatever it set up stay, as after a power cut."""
    pids = host_processes(lab, host)
    _kill_all(lab, host)
    _run("ip", "link", "set", host.veth, "down", check=False)
    host.pid, host.start_time, host.state, host.cut = 0, None, "killed", False
    if host.etcd_state:
        host.etcd_pid, host.etcd_start_time, host.etcd_state = 0, None, "killed"
    lab.save()
    return pids


def stop_agent(lab: Lab, host: Host, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the agent and wait for it (its tasks keep running, as with any agent)."""
    if _alive(host):
        os.kill(host.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(host) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(host):
            os.kill(host.pid, signal.SIGKILL)
    host.pid, host.start_time, host.state = 0, None, "stopped"
    lab.save()


# --- down -------------------------------------------------------------------------------------

def down(name: str = DEFAULT_LAB, progress: Progress = lambda line: None) -> list[str]:
    """Remove the lab and everything in it; what was removed. Works on a half-made lab too."""
    _need_root()
    try:
        lab: Lab | None = load(name)
    except LabError:
        lab = None
    done: list[str] = []
    hosts = list(lab.hosts) if lab else []
    if lab is None:   # leftovers, found by name
        lab = Lab(name=name, subnet="", bridge=f"ylab-{name}", gateway="")
        prefix = f"ylab-{name}-"
        for entry in sorted(NETNS_DIR.glob(f"{prefix}*")) if NETNS_DIR.is_dir() else []:
            hname = entry.name[len(prefix):]
            hosts.append(Host(name=hname, role="client", address="", netns=entry.name, veth=_veth_name(name, hname)))
        # and by their directories (a host whose namespace is gone may still have its veth)
        for entry in sorted(lab.dir.iterdir()) if lab.dir.is_dir() else []:
            if entry.is_dir() and NAME_RE.match(entry.name) and entry.name not in {h.name for h in hosts}:
                hosts.append(Host(name=entry.name, role="client", address="", netns=_netns_name(name, entry.name),
                                  veth=_veth_name(name, entry.name)))
        lab.hosts = hosts
        if not hosts and not (LAB_ROOT / name).exists() and \
                _run("ip", "link", "show", lab.bridge, check=False).returncode != 0:
            raise LabError(f'no lab "{name}" is up, and nothing of one is left')
    for host in hosts:   # every agent first, while the etcd members still serve them
        if _alive(host):
            stop_agent(lab, host, timeout=5.0)
    for host in hosts:
        _kill_all(lab, host)   # first: the network state files say which namespaces are the host's
        _sweep(lab, host)
        if _ns_id(host.netns_path) is not None:
            _run("ip", "netns", "delete", host.netns, check=False)
        shutil.rmtree(Path("/etc/netns") / host.netns, ignore_errors=True)
        _run("ip", "link", "delete", host.veth, check=False)   # gone with its peer, unless half-made
        shutil.rmtree(IPAM_DIR / host.netns, ignore_errors=True)
        done.append(f"host {host.name} removed")
        progress(done[-1])
    strays = _lab_dir_processes(lab.dir)   # agents or etcd members whose namespace is gone already
    if strays:
        _kill_pids(strays, f'processes of lab "{name}"')
        done.append(f"{len(strays)} stray processes killed")
        progress(done[-1])
    while _run("iptables", "-D", "FORWARD", *_forward_rule(lab), check=False).returncode == 0:
        pass
    if _run("ip", "link", "show", lab.bridge, check=False).returncode == 0:
        _run("ip", "link", "delete", lab.bridge, check=False)
        done.append(f"bridge {lab.bridge} removed")
    shutil.rmtree(lab.dir, ignore_errors=True)
    return done


def _lab_dir_processes(lab_dir: Path) -> list[int]:
    """Agents and etcd members of the lab, by their command line (an agent's -config, a member's
    --data-dir in the lab's directory): down finds them without lab.json or namespace."""
    prefix = str(lab_dir) + "/"
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        files = [argv[i + 1].decode(errors="replace") for i in range(len(argv) - 1)
                 if argv[i] in (b"-config", b"--data-dir")]
        if any(f.startswith(prefix) for f in files) and not _zombie(int(entry.name)):
            out.append(int(entry.name))
    return out


def _sweep(lab: Lab, host: Host) -> None:
    """Inside the host's namespace: tear down its allocations' networks, containers and cgroups
    with the client's own clean-up code (``yurt.lab.sweep``)."""
    data = lab.data_dir(host)
    if not data.is_dir() or _ns_id(host.netns_path) is None:
        return
    nsenter = shutil.which("nsenter", path=SBIN) or "nsenter"
    proc = subprocess.run([nsenter, f"--net={host.netns_path}", "--", sys.executable, "-m", "yurt.lab.sweep",
                           str(data)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise LabError(f"cleaning up {host.name} failed: {proc.stderr.strip()[-2000:]}")


def status(lab: Lab) -> list[dict[str, str]]:
    rows = []
    for h in lab.hosts:
        state = h.state
        if state == "running" and not _alive(h):
            state = "exited"
        row = {"Host": h.name, "Role": h.role, "Address": h.address, "Link": _link_state(h), "Agent": state,
               "PID": str(h.pid) if state == "running" else "", "HTTP": lab.url(h)}
        if lab.has_etcd:
            alive = h.is_server and etcd_alive(h)
            row["Etcd"] = ("running" if alive else "dead") if h.is_server else ""
            row["Etcd PID"] = str(h.etcd_pid) if alive else ""
        rows.append(row)
    return rows


def _link_state(host: Host) -> str:
    return "cut" if host.cut else "down" if host.state == "killed" else "up"


def exec_env(lab: Lab, host: Host) -> dict[str, str]:
    """What a command run in the host sees: NOMAD_ADDR for its agent. (No ETCDCTL_ENDPOINTS:
    etcdctl refuses it with --endpoints; in a server host, etcdctl finds its member on loopback.)"""
    return {"NOMAD_ADDR": lab.url(host), "YURT_ADDR": lab.url(host)}


def exec_args(lab: Lab, host: Host, command: list[str]) -> list[str]:
    """The command line that runs ``command`` inside the host's namespace."""
    nsenter = shutil.which("nsenter", path=SBIN) or "nsenter"
    return [nsenter, f"--net={host.netns_path}", "--", *command]
