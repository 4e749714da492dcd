"""A job's `connect { gateway {} }` block as Consul's config entry (what Nomad's servers write
with `PUT /v1/config` at job register, nomad/consul.go convertIngressCE / convertTerminatingCE).

The job keeps the block as opaque data (`ConsulConnect.gateway`): HCL-decoded (lowercase keys,
each block a list of maps: `ingress = [{listener = [...]}]`) or Nomad's JSON (`Ingress`,
`Listeners`, `Services`, ...). `gateway_entry` turns either into one shape, Consul's:

  {"Kind": "ingress-gateway", "Name": "<service>",
   "TLS": {"Enabled": false, "TLSMinVersion": ""},
   "Listeners": [{"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "count-api", "Hosts": []}]}]}
  {"Kind": "terminating-gateway", "Name": "<service>",
   "Services": [{"Name": "legacy", "CAFile": "", "CertFile": "", "KeyFile": "", "SNI": ""}]}

plus the gateway proxy's `connect_timeout` (Nomad's default 5s), and every problem found on the
way as (path under the gateway block, message, is_error). The gateway proxy (mesh/gateway.py)
reads this shape, and so will Consul's `/v1/config/ingress-gateway/<name>` entries.
"""

from __future__ import annotations

from typing import Any

from .duration import parse_duration

INGRESS, TERMINATING, MESH = "ingress-gateway", "terminating-gateway", "mesh-gateway"
LISTENER_PROTOCOLS = ("tcp", "http")
TLS_VERSIONS = ("", "TLSv1_2", "TLSv1_3")
DEFAULT_CONNECT_TIMEOUT_MS = 5000

Problem = tuple[tuple[Any, ...], str, bool]


def _fold(key: str) -> str:
    return key.replace("_", "").lower()


def _blocks(value: Any) -> list[dict[str, Any]]:
    """An HCL block (a list of maps) or a JSON object/list -> a list of maps."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _get(d: dict[str, Any], *names: str) -> tuple[str, Any]:
    """The key (as written) and value of the first of `names` present, compared folded."""
    want = {_fold(n) for n in names}
    for k, v in d.items():
        if _fold(k) in want:
            return k, v
    return "", None


# Nomad's JSON names the repeated blocks in the plural
_PLURALS = {"listener": "listeners", "service": "services"}


def _unknown(d: dict[str, Any], known: tuple[str, ...], path: tuple[Any, ...], what: str,
             out: list[Problem]) -> None:
    allowed = {_fold(k) for k in known} | {_PLURALS[k] for k in known if k in _PLURALS}
    for k in d:
        if _fold(k) not in allowed:
            out.append((path + (k,), f'{what} has no "{k}": write only {", ".join(known)}', True))


def gateway_kind(gateway: dict[str, Any] | None) -> str:
    """ingress-gateway, terminating-gateway, mesh-gateway or "" (none of them written)."""
    if not gateway:
        return ""
    for name, kind in (("ingress", INGRESS), ("terminating", TERMINATING), ("mesh", MESH)):
        if _get(gateway, name)[0]:
            return kind
    return ""


def gateway_entry(service: str, gateway: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """(the config entry, problems). An entry with no Kind means no usable gateway was written."""
    problems: list[Problem] = []
    _unknown(gateway, ("proxy", "ingress", "terminating", "mesh"), (), "gateway", problems)
    kinds = [n for n in ("ingress", "terminating", "mesh") if _get(gateway, n)[0]]
    entry: dict[str, Any] = {"Kind": "", "Name": service, "ConnectTimeoutMs": DEFAULT_CONNECT_TIMEOUT_MS}
    if len(kinds) != 1:
        problems.append(((), "a gateway needs exactly one of ingress {}, terminating {} or mesh {}"
                             f"{' (found ' + ' and '.join(kinds) + ')' if kinds else ''}: keep one", True))
        return entry, problems
    pkey, proxy = _get(gateway, "proxy")
    for pi, p in enumerate(_blocks(proxy)):
        _, timeout = _get(p, "connect_timeout")
        if timeout is not None and timeout != "":
            try:
                ns = timeout if isinstance(timeout, int) else parse_duration(str(timeout))
                entry["ConnectTimeoutMs"] = max(1, ns // 1_000_000)
            except ValueError:
                problems.append(((pkey, pi, "connect_timeout"), f'connect_timeout "{timeout}" is not a '
                                 'duration: write it like "5s" or "500ms"', True))
        for k in p:
            if _fold(k) not in ("connecttimeout",):
                problems.append(((pkey, pi, k), f'gateway proxy {k} has no effect in Yurt: its gateway proxy '
                                 'is not Envoy and binds the listeners itself', False))
    key, body = _get(gateway, kinds[0])
    base: tuple[Any, ...] = (key, 0) if isinstance(body, list) else (key,)
    block = (_blocks(body) or [{}])[0]
    if kinds[0] == "ingress":
        entry["Kind"] = INGRESS
        _ingress(entry, block, base, problems)
    elif kinds[0] == "terminating":
        entry["Kind"] = TERMINATING
        _terminating(entry, block, base, problems)
    else:
        entry["Kind"] = MESH
    return entry, problems


def _ingress(entry: dict[str, Any], block: dict[str, Any], base: tuple[Any, ...], out: list[Problem]) -> None:
    _unknown(block, ("tls", "listener"), base, "ingress", out)
    tkey, tls_raw = _get(block, "tls")
    tls = {"Enabled": False, "TLSMinVersion": ""}
    for ti, t in enumerate(_blocks(tls_raw)):
        tpath = base + ((tkey, ti) if isinstance(tls_raw, list) else (tkey,))
        _unknown(t, ("enabled", "tls_min_version", "tls_max_version", "cipher_suites", "sds"), tpath,
                 "ingress tls", out)
        _, enabled = _get(t, "enabled")
        tls["Enabled"] = bool(enabled)
        vkey, version = _get(t, "tls_min_version")
        if version not in (None, ""):
            if version not in TLS_VERSIONS:
                out.append((tpath + (vkey,), f'tls_min_version "{version}" is not known: use "TLSv1_2" or '
                            '"TLSv1_3"', True))
            else:
                tls["TLSMinVersion"] = version
        for name in ("tls_max_version", "cipher_suites", "sds"):
            k, v = _get(t, name)
            if k and v not in (None, "", [], {}):
                out.append((tpath + (k,), f"{name} cannot be honoured: Yurt's ingress gateway serves "
                            "TLS 1.2 and 1.3 with OpenSSL's default ciphers and the cluster CA's "
                            f"certificate; remove {name}", True))
    entry["TLS"] = tls
    lkey, listeners = _get(block, "listener", "listeners")
    entry["Listeners"] = []
    ports: dict[int, int] = {}
    if not _blocks(listeners):
        out.append((base, "an ingress gateway needs at least one listener "
                          '{ port = ..., service { name = "..." } }', True))
    for li, lst in enumerate(_blocks(listeners)):
        lpath = base + (lkey, li)
        _unknown(lst, ("port", "protocol", "service"), lpath, "listener", out)
        _, port = _get(lst, "port")
        _, protocol = _get(lst, "protocol")
        protocol = protocol or "tcp"
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            out.append((lpath + ("port",), f"listener port {port!r} is not a port: give a number "
                        "from 1 to 65535", True))
            port = 0
        elif port in ports:
            out.append((lpath + ("port",), f"listener port {port} is already used by listener {ports[port] + 1} "
                        "of this gateway: give each listener its own port, and put several services "
                        'on one port with protocol = "http" and hosts', True))
        else:
            ports[port] = li
        if protocol not in LISTENER_PROTOCOLS:
            out.append((lpath + ("protocol",), f'listener protocol "{protocol}" is not supported: use "tcp" '
                        'or "http" (http2 and grpc listeners are not served by Yurt\'s gateway)', True))
        skey, svcs = _get(lst, "service", "services")
        services = []
        for si, s in enumerate(_blocks(svcs)):
            spath = lpath + (skey, si)
            _unknown(s, ("name", "hosts"), spath, "listener service", out)
            _, name = _get(s, "name")
            hkey, hosts = _get(s, "hosts")
            if not name or not isinstance(name, str):
                out.append((spath + ("name",), "listener service has no name: name the mesh service to reach", True))
                continue
            if name == "*":
                out.append((spath + ("name",), 'the wildcard service "*" is not supported: name each service', True))
            hosts = [str(h) for h in hosts or []] if isinstance(hosts, list) else []
            if hosts and protocol == "tcp":
                out.append((spath + (hkey,), 'hosts only apply to protocol = "http" listeners: remove them or '
                            'set protocol = "http"', True))
            services.append({"Name": name, "Hosts": hosts})
        if not services:
            out.append((lpath, f"listener on port {port} has no service: add "
                        'service { name = "..." }', True))
        if protocol == "tcp" and len(services) > 1:
            out.append((lpath + (skey,), f"tcp listener on port {port} has {len(services)} services, but a tcp "
                        'listener carries exactly one: give each its own listener, or use protocol = "http" '
                        "with hosts", True))
        if protocol == "http" and len(services) > 1:
            no_hosts = [s["Name"] for s in services if not s["Hosts"]]
            if no_hosts:
                out.append((lpath + (skey,), f"http listener on port {port} carries {len(services)} services, and "
                            f'{", ".join(no_hosts)} has no hosts: give each service hosts = ["..."] so requests '
                            f"can be told apart by their Host header (the default, <service>.ingress.*, "
                            "is only used for a single service)", True))
        entry["Listeners"].append({"Port": port, "Protocol": protocol, "Services": services})


def _terminating(entry: dict[str, Any], block: dict[str, Any], base: tuple[Any, ...], out: list[Problem]) -> None:
    _unknown(block, ("service",), base, "terminating", out)
    skey, svcs = _get(block, "service", "services")
    entry["Services"] = []
    if not _blocks(svcs):
        out.append((base, 'a terminating gateway needs at least one service { name = "..." }', True))
    seen: set[str] = set()
    for si, s in enumerate(_blocks(svcs)):
        spath = base + (skey, si)
        _unknown(s, ("name", "ca_file", "cert_file", "key_file", "sni"), spath, "terminating service", out)
        row = {"Name": "", "CAFile": "", "CertFile": "", "KeyFile": "", "SNI": ""}
        for field, key in (("Name", "name"), ("CAFile", "ca_file"), ("CertFile", "cert_file"),
                           ("KeyFile", "key_file"), ("SNI", "sni")):
            _, v = _get(s, key)
            row[field] = str(v) if v not in (None,) else ""
        if not row["Name"]:
            out.append((spath, "terminating service has no name: name the external service", True))
            continue
        if row["Name"] == "*":
            out.append((spath + ("name",), 'the wildcard service "*" is not supported: name each service', True))
        if row["Name"] in seen:
            out.append((spath + ("name",), f'service "{row["Name"]}" is linked twice: remove one', True))
        seen.add(row["Name"])
        if bool(row["CertFile"]) != bool(row["KeyFile"]):
            out.append((spath,
                        "cert_file and key_file go together: give both (or neither) for the external "
                        f'service "{row["Name"]}"', True))
        entry["Services"].append(row)


def linked_services(gateway: dict[str, Any] | None) -> list[str]:
    """The external services a terminating gateway block links (their leafs are the gateway's)."""
    if gateway_kind(gateway) != TERMINATING:
        return []
    entry, _ = gateway_entry("", gateway or {})
    return [s["Name"] for s in entry.get("Services") or [] if s.get("Name")]
