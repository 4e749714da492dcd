"""`yurt mesh explain`: the probes only the node that runs an allocation can make.

Each probe (a dict whose "Kind" says which, sent by the server: `server/mesh_explain.py`) runs
from inside the allocation's network namespace when it has one (a thread that joined it, as
the check runner does: `127.0.0.1` there is the allocation itself), else from the node, and
answers {"Status": ok|wrong|skipped, "Detail", "Fix"}. Every network step has a short timeout.

- upstream: something listens on the source's `local_bind_port`, and it is the sidecar (the
  socket's owner, found through /proc, is `python -m yurt.mesh`), not another process;
- reach: a TCP connection to the destination sidecar's registered address and port;
- tls: a mutual TLS handshake with the destination sidecar, presenting the source's leaf (from
  the agent's cache, the one the source sidecar serves): both leaves unexpired and signed by the
  CA's active root, the served one naming the destination;
- firewall: the mesh-only inbound rules (`network/mesh_inbound.py`) in the namespace;
- app: the app answers a TCP connection on the port the sidecar forwards to.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yurt.structs import Allocation

from .network import netns as netns_mod
from .network.iptables import binary
from .network.mesh_inbound import CHAIN, alloc_open_ports, rules
from .procs import join_netns

OK, WRONG, SKIPPED = "ok", "wrong", "skipped"
TIMEOUT = 2.0          # seconds for a connect or a handshake
PROBE_TIMEOUT = 8.0    # seconds for one probe in all

LocalAlloc = Callable[[str], Allocation | None]
Leaf = Callable[[str], dict[str, Any]]


def answer(status: str, detail: str, fix: str = "") -> dict[str, str]:
    return {"Status": status, "Detail": detail, "Fix": fix}


def run_probes(probes: list[dict[str, Any]], local_alloc: LocalAlloc, leaf: Leaf) -> list[dict[str, str]]:
    return [_one(p, local_alloc, leaf) for p in probes]


def _one(p: dict[str, Any], local_alloc: LocalAlloc, leaf: Leaf) -> dict[str, str]:
    kind = str(p.get("Kind") or "")
    alloc_id = str(p.get("AllocID") or "")
    # an instance registered through the API, not by an allocation (`yurt connect proxy` run by
    # hand): probed from the node
    alloc = local_alloc(alloc_id) if alloc_id else None
    if alloc_id and alloc is None:
        return answer(WRONG, f"allocation {alloc_id[:8]} does not run on this node (any more)",
                      f"yurt alloc status {alloc_id[:8]}")
    ns = netns_mod.path(alloc_id) if alloc_id and netns_mod.exists(alloc_id) else ""
    probe = {"upstream": _upstream, "reach": _reach, "tls": _tls, "firewall": _firewall, "app": _app}.get(kind)
    if probe is None:
        return answer(WRONG, f'unknown probe "{kind}"')
    try:
        return probe(p, alloc, ns, leaf)
    except TimeoutError:
        return answer(WRONG, f"the {kind} probe did not finish in {PROBE_TIMEOUT:g}s")
    except OSError as e:
        return answer(WRONG, f"the {kind} probe failed: {e}")


# -- running inside a namespace ---------------------------------------------------------------
def in_netns(ns: str, fn: Callable[[], Any], timeout: float = PROBE_TIMEOUT) -> Any:
    """fn() on a new thread that joined the namespace `ns` (setns is per thread; the thread ends
    with it, so no other work runs in the namespace); "" runs it in the agent's own."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            if ns:
                join_netns(ns)
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=run, name="mesh-probe", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _listeners() -> list[tuple[str, int, int]]:
    """(address, port, socket inode) of the TCP listeners this thread's namespace has."""
    out = []
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":   # 0A: LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            out.append((_addr(addr_hex, v6), int(port_hex, 16), int(fields[9])))
    return out


def _addr(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _covers(listen_addr: str, addr: str) -> bool:
    return listen_addr in (addr, "0.0.0.0", "::") or (addr == "127.0.0.1" and listen_addr == "::ffff:127.0.0.1")


def _owners(inodes: set[int]) -> dict[int, int]:
    """socket inode -> pid of a process holding it."""
    found: dict[int, int] = {}
    wanted = {f"socket:[{i}]": i for i in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target in wanted:
                    found.setdefault(wanted[target], int(entry.name))
        if len(found) == len(wanted):
            break
    return found


def _describe(pid: int) -> tuple[str, bool]:
    """('pid N (task "x": cmdline)', is the sidecar)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    task = ""
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"NOMAD_TASK_NAME="):
                task = item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    sidecar = "-m yurt.mesh" in cmd
    cmd = " ".join(cmd.split())   # a `python3 -c SCRIPT` has newlines in its command line
    short = cmd if len(cmd) <= 60 else cmd[:57] + "..."
    return (f'pid {pid} (task "{task}": {short})' if task else f"pid {pid} ({short})"), sidecar


def _where(alloc: Allocation | None, ns: str) -> str:
    return f"allocation {alloc.id[:8]}'s namespace" if alloc is not None and ns else "the node"


def _logs(alloc: Allocation | None, task: str, stderr: bool = False) -> str:
    if alloc is None:
        return "the log of the process that registered it"
    return f"yurt alloc logs {'-stderr ' if stderr else ''}{alloc.id[:8]} {task}"


# -- the probes -------------------------------------------------------------------------------
def _upstream(p: dict[str, Any], alloc: Allocation | None, ns: str, leaf: Leaf) -> dict[str, str]:
    address, port, dest = str(p.get("Address") or "127.0.0.1"), int(p.get("Port") or 0), str(p.get("Destination"))
    sidecar_task = next((t.name for t in _tasks(alloc) if t.kind.startswith("connect-proxy:")), "the sidecar")
    if port <= 0:
        return answer(WRONG, f"the upstream for {dest} has no local_bind_port",
                      f'set local_bind_port in the upstreams block for "{dest}"')
    listening = [(a, i) for a, prt, i in in_netns(ns, _listeners) if prt == port and _covers(a, address)]
    if not listening:
        return answer(WRONG, f"nothing listens on {address}:{port} in {_where(alloc, ns)}: the sidecar "
                      f"({sidecar_task}) is not serving its upstream for {dest}",
                      _logs(alloc, sidecar_task, stderr=True))
    owners = _owners({i for _, i in listening})
    described = [_describe(pid) for pid in sorted(set(owners.values()))]
    others = [d for d, is_sidecar in described if not is_sidecar]
    if others:
        return answer(WRONG, f"{address}:{port} in {_where(alloc, ns)} is taken by {', '.join(others)}, not the "
                      f"sidecar: the sidecar cannot bind its upstream for {dest}",
                      f"give the upstream a local_bind_port nothing else in the group binds, or move "
                      f"that process off port {port}")
    if not described:
        return answer(WRONG, f"{address}:{port} in {_where(alloc, ns)} is held by a socket no process owns any more",
                      _logs(alloc, sidecar_task, stderr=True))
    return answer(OK, f"the sidecar ({described[0][0].split(' (')[0]}) listens on {address}:{port} for {dest}")


def _connect(address: str, port: int) -> socket.socket:
    return socket.create_connection((address, port), timeout=TIMEOUT)


def _reach(p: dict[str, Any], alloc: Allocation | None, ns: str, leaf: Leaf) -> dict[str, str]:
    address, port, target = str(p.get("Address") or ""), int(p.get("Port") or 0), str(p.get("Target") or "")
    if not address or port <= 0:
        return answer(WRONG, f"the destination sidecar ({target}) is registered without an address and port",
                      "yurt alloc status of the destination; the client registers its sidecar's host port")
    try:
        in_netns(ns, lambda: _connect(address, port).close())
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError | socket.timeout) else (e.strerror or str(e))
        return answer(WRONG, f"TCP connect from {_where(alloc, ns)} to the destination sidecar at {address}:{port} "
                      f"({target}): {reason}",
                      "the destination sidecar is not listening on its host port, or a firewall between "
                      "the nodes drops it: yurt alloc status / logs of the destination's connect-proxy task")
    return answer(OK, f"TCP connect from {_where(alloc, ns)} succeeded ({target})")


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    fd = os.memfd_create("yurt-probe-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, (cert_pem.strip() + "\n" + key_pem.strip() + "\n").encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _not_after(info: dict[str, Any]) -> dt.datetime | None:
    raw = info.get("notAfter")
    if not raw:
        return None
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(raw), dt.UTC)


def _tls(p: dict[str, Any], alloc: Allocation | None, ns: str, leaf: Leaf) -> dict[str, str]:
    from cryptography import x509

    address, port = str(p.get("Address") or ""), int(p.get("Port") or 0)
    source, dest, root_id = str(p.get("Source")), str(p.get("Destination")), str(p.get("ActiveRootID") or "")
    roots_pem = str(p.get("RootsPEM") or "")
    if not roots_pem:
        return answer(WRONG, "the CA has no active root", "yurt: GET /v1/connect/ca/roots; the server bootstraps one")
    # the source's leaf, as its sidecar gets it from this agent: unexpired, from the active root
    try:
        mine = leaf(source)
    except Exception as e:  # noqa: BLE001 - the agent's leaf cache says why
        return answer(WRONG, f"no leaf certificate for {source} from this node's agent: {e}",
                      "the agent signs leaves through its server: yurt doctor; the agent's log")
    cert = x509.load_pem_x509_certificate(mine["CertPEM"].encode())
    now = dt.datetime.now(dt.UTC)
    roots = x509.load_pem_x509_certificates(roots_pem.encode())
    if cert.not_valid_after_utc <= now:
        return answer(WRONG, f"the leaf of {source} expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                      "the agent renews leaves before they expire: is its server reachable? yurt doctor")
    if not any(_issued_by(cert, r) for r in roots):
        return answer(WRONG, f"the leaf of {source} is not signed by the active root {root_id[:8]}",
                      "the agent renews leaves when the root rotates: see its log; restarting the source's "
                      "sidecar makes it ask again")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots_pem)   # the active root only: an old root's leaf fails
    _load_chain(ctx, mine["CertPEM"], mine["PrivateKeyPEM"])

    def handshake() -> tuple[dict[str, Any], bytes]:
        with _connect(address, port) as raw:
            raw.settimeout(TIMEOUT)
            with ctx.wrap_socket(raw, server_hostname=None) as tls:
                return tls.getpeercert() or {}, tls.getpeercert(binary_form=True) or b""

    try:
        info, der = in_netns(ns, handshake)
    except ssl.SSLCertVerificationError as e:
        return answer(WRONG, f"the destination sidecar at {address}:{port} serves a certificate that does not "
                      f"verify against the active root {root_id[:8]}: {e.verify_message}",
                      "the destination's agent renews its leaf when the root rotates; restart the destination's "
                      "sidecar (its connect-proxy task) to make it fetch the current one")
    except (ssl.SSLError, OSError) as e:
        return answer(WRONG, f"mutual TLS handshake with the destination sidecar at {address}:{port} failed: "
                      f"{getattr(e, 'reason', None) or e}",
                      "the destination sidecar refused our certificate or is not a Yurt sidecar: its log "
                      "(yurt alloc logs -stderr <alloc> connect-proxy-<service>)")
    uri = next((v for k, v in info.get("subjectAltName", ()) if k == "URI"), "")
    served = x509.load_der_x509_certificate(der) if der else None
    if not uri.endswith(f"/svc/{dest}"):
        return answer(WRONG, f"the sidecar at {address}:{port} presents {uri or 'no SPIFFE ID'}, not {dest}",
                      f"the catalog points at a sidecar of another service: check {dest}'s registrations")
    until = served.not_valid_after_utc if served else _not_after(info)
    path = uri.split("://", 1)[-1].split("/", 1)[-1]
    return answer(OK, f"mutual TLS handshake done: {source}'s leaf (serial {_serial(cert)}) and the served one "
                  f"(/{path}, serial {_serial(served) if served else '?'}, valid until "
                  f"{until:%Y-%m-%dT%H:%M:%SZ}) both from the active root {root_id[:8]}")


def _issued_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, InvalidSignature: not this issuer
        return False
    return True


def _serial(cert: Any) -> str:
    h = f"{cert.serial_number:x}"
    h = "0" * (len(h) % 2) + h
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))[:23]


def _firewall(p: dict[str, Any], alloc: Allocation | None, ns: str, leaf: Leaf) -> dict[str, str]:
    if alloc is None:
        return answer(SKIPPED, "registered through the API, not by an allocation: no mesh-only firewall to check")
    if not ns:
        return answer(SKIPPED, "the allocation has no network namespace (host networking): there is no "
                      "mesh-only firewall, its ports are open on the node")
    ports = alloc_open_ports(alloc)
    missing = []
    for name, v6 in (("iptables", False), ("ip6tables", True)):
        exe = binary(name)
        if exe is None:
            return answer(WRONG, f"{name} is not installed on this node", "apt-get install iptables")

        def ipt(*args: str, exe: str = exe) -> int:
            return subprocess.run(["ip", "netns", "exec", ns.rsplit("/", 1)[-1], exe, "-w", *args],
                                  capture_output=True, timeout=PROBE_TIMEOUT).returncode

        if ipt("-C", "INPUT", "-j", CHAIN) != 0:
            missing.append(f"{name}: INPUT does not jump to {CHAIN}")
            continue
        for rule in rules(ports, v6):
            if ipt("-C", CHAIN, *rule) != 0:
                missing.append(f"{name}: -A {CHAIN} {' '.join(rule)}")
    if missing:
        return answer(WRONG, f"mesh-only inbound rules missing in {_where(alloc, ns)}: {'; '.join(missing[:3])}"
                      + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
                      + ": the app's port is open to the bridge, around the mesh",
                      f"restart the allocation so its client writes them again (yurt alloc stop {alloc.id[:8]}); "
                      "the agent's log says why iptables failed")
    return answer(OK, f"{CHAIN} admits only ports {', '.join(map(str, ports)) or 'none'} (the sidecar's and "
                  "those mapped explicitly)")


def _app(p: dict[str, Any], alloc: Allocation | None, ns: str, leaf: Leaf) -> dict[str, str]:
    address, port, service = str(p.get("Address") or "127.0.0.1"), int(p.get("Port") or 0), str(p.get("Service"))
    if port <= 0:
        return answer(WRONG, f"the sidecar of {service} has no local service port to forward to",
                      "give the service a port (port = \"<label or number>\") or proxy { local_service_port }")

    def probe() -> tuple[str, list[tuple[str, int, int]]]:
        try:
            _connect(address, port).close()
            return "", []
        except OSError as e:
            return ("timed out" if isinstance(e, TimeoutError | socket.timeout) else (e.strerror or str(e))), \
                _listeners()

    error, listeners = in_netns(ns, probe)
    if error:
        others = sorted({prt for _, prt, _ in listeners})
        seen = f"; ports listening there: {', '.join(map(str, others))}" if others else "; nothing listens there"
        tasks = [t.name for t in _tasks(alloc) if not t.kind.startswith("connect-proxy:")]
        return answer(WRONG, f"the app of {service} does not accept connections on {address}:{port} in "
                      f"{_where(alloc, ns)} ({error}){seen}",
                      f"make the app listen on port {port}, or point the service's port (or proxy "
                      f"local_service_port) at the port it listens on; {_logs(alloc, tasks[0] if tasks else '<task>')}")
    return answer(OK, f"the app accepts connections on {address}:{port}")


def _tasks(alloc: Allocation | None) -> list[Any]:
    tg = alloc.job.group(alloc.task_group) if alloc is not None and alloc.job else None
    return list(tg.tasks or []) if tg else []
