"""Agent configuration: Nomad's agent config file (HCL), flags, and the -dev presets."""

from __future__ import annotations

import re
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import hcl2

from yurt.client.template_settings import TemplateRetry, TemplateSettings
from yurt.errors import ConfigError

from . import addresses
from .addresses import WILDCARDS, HostNetwork


@dataclass
class TLSSettings:
    """Nomad's `tls { }` block, for the HTTP API (Yurt has no RPC): serve HTTPS on the TCP
    listener with cert_file/key_file; verify_https_client requires client certificates signed by
    ca_file; ca_file is also what this agent trusts when it dials its servers."""

    http: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_https_client: bool = False


@dataclass
class EtcdSettings:
    """`server { store { etcd { } } }`: keep the servers' state in etcd (several servers, one
    leader) instead of the SQLite file in the data dir (one server)."""

    endpoints: list[str] = field(default_factory=list)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    prefix: str = "/yurt/"          # where in etcd's keyspace this cluster's keys live
    lease_ttl: int = 10             # seconds a server may go without renewing its lease


_ETCD_KEYS = {"endpoints", "ca_file", "cert_file", "key_file", "prefix", "lease_ttl"}
_SERVER_KEYS = {"enabled", "num_schedulers", "min_heartbeat_ttl", "max_heartbeats_per_second", "store",
                "bootstrap_expect", "enable_event_broker", "event_buffer_size", "keystore_dir"}


@dataclass
class AgentConfig:
    name: str = field(default_factory=socket.gethostname)
    region: str = "global"
    datacenter: str = "dc1"
    data_dir: Path | None = None
    bind: str = "127.0.0.1"
    http_port: int = 4646
    # ports { consul = N }: the same API on a second port where the paths Nomad and Consul both
    # have (/v1/agent/self, /v1/status/*) answer as Consul's (CONSUL_HTTP_ADDR). None: 8500 with
    # -dev-connect, else off; 0: off
    consul_port: int | None = None
    advertise: str = ""                       # advertise { http }: the host other agents dial
    network_interface: str = ""               # client { network_interface }: the node address's interface
    host_networks: list[HostNetwork] = field(default_factory=list)
    # client { host_volume "name" { path, read_only } }: name -> (absolute path, read-only)
    host_volumes: dict[str, tuple[str, bool]] = field(default_factory=dict)
    template: TemplateSettings = field(default_factory=TemplateSettings)   # client { template { } }
    server: bool = True
    client: bool = True
    dev: bool = False
    dev_connect: bool = False
    raw_exec: bool = False
    servers: list[str] = field(default_factory=list)   # a client-only agent's server addresses
    node_class: str = ""
    node_pool: str = "default"
    meta: dict[str, str] = field(default_factory=dict)
    num_schedulers: int = 2
    heartbeat_ttl: float = 10.0
    max_heartbeats_per_second: float = 50.0   # server { max_heartbeats_per_second }: the TTL grows past it
    enable_event_broker: bool = True          # server { enable_event_broker }: /v1/event/stream
    event_buffer_size: int = 100              # server { event_buffer_size }: writes kept for ?index=
    log_level: str = "INFO"
    default_intention_policy: str = "allow"   # what intentions decide when none matches
    leaf_cert_ttl: str | None = None          # Connect leaf certificate TTL (CA default 72h)
    tls: TLSSettings = field(default_factory=TLSSettings)   # tls { http ca_file ... }
    acl_enabled: bool = False                 # acl { enabled = true } / -acl-enabled
    acl_token_min_ttl: str = "1m"             # acl { token_min_expiration_ttl }
    acl_token_max_ttl: str = "24h"            # acl { token_max_expiration_ttl }
    http_max_request_bytes: int = 16 * 1024 * 1024   # limits { http_max_request_bytes }
    etcd: EtcdSettings | None = None          # server { store { etcd { } } }; None: SQLite
    keystore_dir: str = ""                    # server { keystore_dir }: variables' root keys ("": data dir)
    virtual_ip_cidr: str = ""                 # connect { virtual_ip_cidr }: Connect services' VIPs ("": 240.0.0.0/4)
    # ports { dns = N }: the agent's DNS server (UDP and TCP) answering <svc>.virtual.yurt and
    # <svc>.service.yurt. None: 8600 with -dev-connect (a port taken is then only a warning), else off; 0: off
    dns_port: int | None = None
    dns_addr: str = ""                        # addresses { dns }: where it listens ("": 127.0.0.1)
    recursors: list[str] = field(default_factory=list)   # recursors: where other names are asked
    # found by resolve(): the node address and the HTTP host advertised to other hosts
    node_ip: str = ""
    http_host: str = ""
    host_network_ips: dict[str, str] = field(default_factory=dict)
    advertise_port: int = 0                   # advertise { http = "host:port" }
    warnings: list[str] = field(default_factory=list)   # settings read and ignored, for the log

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir) if self.data_dir else ""
        d["host_networks"] = [asdict(h) for h in self.host_networks]
        d["tls"] = asdict(self.tls)
        d["etcd"] = asdict(self.etcd) if self.etcd else None
        return d

    @property
    def consul_listener(self) -> int:
        """The Consul-shaped listener's port (0: none)."""
        if self.consul_port is None:
            return 8500 if self.dev_connect else 0
        return self.consul_port

    @property
    def dns_listener(self) -> int:
        """The DNS server's port (0: none)."""
        if self.dns_port is None:
            return 8600 if self.dev_connect else 0
        return self.dns_port

    @property
    def address(self) -> str:
        """The URL other agents reach this one at (``resolve()`` first; before it, a best guess)."""
        host = self.http_host or self.advertise or ("127.0.0.1" if self.bind in WILDCARDS else self.bind)
        scheme = "https" if self.tls.http else "http"
        return f"{scheme}://{host}:{self.advertise_port or self.http_port}"

    def resolve(self) -> None:
        """Find the node address, the advertised HTTP host and the host networks' addresses.
        Raises ConfigError naming the setting to fix (see ``addresses``). go-sockaddr templates
        in the addresses (``bind_addr = "{{ GetPrivateIP }}"``) are executed first (``sockaddr``)."""
        self._evaluate_templates()
        table = addresses.interfaces() if (self.network_interface or self.host_networks
                                           or self.bind in WILDCARDS) else {}
        self.node_ip = addresses.node_address(bind=self.bind, network_interface=self.network_interface,
                                              dev=self.dev or self.dev_connect, table=table)
        self.http_host = addresses.http_address(advertise=self.advertise, bind=self.bind, node_ip=self.node_ip,
                                                dev=self.dev or self.dev_connect)
        self.host_network_ips = addresses.host_network_addresses(self.host_networks, table)

    def _evaluate_templates(self) -> None:
        """go-sockaddr templates in the addresses, executed over this host's addresses."""
        if "{{" not in "".join((self.bind, self.advertise, self.network_interface, self.dns_addr)):
            return
        from yurt.gotemplate.sockaddr import SockaddrError, host_addresses
        try:
            table = host_addresses()
        except SockaddrError as e:
            raise ConfigError(str(e)) from None
        self.bind = _sockaddr(self.bind, "bind_addr", table)
        self.network_interface = _sockaddr(self.network_interface, "client.network_interface", table)
        self.dns_addr = _sockaddr(self.dns_addr, "addresses.dns", table)
        if "{{" in self.advertise:
            host, port = _host_port(_sockaddr(self.advertise, "advertise.http", table), "advertise.http")
            self.advertise, self.advertise_port = host, port or self.advertise_port

    def check(self) -> None:
        import os
        import sys
        if self.dev_connect and (sys.platform != "linux" or os.geteuid() != 0):
            raise ConfigError("-dev-connect needs root on Linux: the service mesh gives each task group a "
                              "network namespace and iptables rules; run it with sudo, or use -dev")
        if not (self.server or self.client):
            raise ConfigError("neither server nor client is enabled: set server { enabled = true } "
                              "and/or client { enabled = true }, or use -dev")
        if self.data_dir is None and not self.dev:
            raise ConfigError("no data directory: pass -data-dir DIR (or data_dir in the config file), "
                              "or run with -dev to keep state in a temporary directory")
        if not (0 < self.http_port < 65536):
            raise ConfigError(f"ports.http = {self.http_port} is not a TCP port (1-65535)")
        if self.default_intention_policy not in ("allow", "deny"):
            raise ConfigError(f'default_intention_policy "{self.default_intention_policy}" must be '
                              '"allow" or "deny"')
        if self.leaf_cert_ttl:
            from yurt.structs import parse_duration
            try:
                ttl = parse_duration(self.leaf_cert_ttl)
            except ValueError as e:
                raise ConfigError(f"leaf_cert_ttl: {e}") from None
            if ttl < 60 * 10**9:
                raise ConfigError(f'leaf_cert_ttl "{self.leaf_cert_ttl}" is too short: at least "1m"')
        check_tls(self.tls)
        if self.client and not self.server and not self.servers:
            raise ConfigError("a client-only agent needs its servers: client { servers = [\"host:4646\"] }")


def _store(block: dict[str, Any], path: str) -> EtcdSettings | None:
    unknown = sorted(set(block) - {"etcd", "sqlite"})
    if unknown:
        raise ConfigError(f'{path}: server {{ store {{ {unknown[0]} }} }} is not a store Yurt knows; write '
                          'store { etcd { endpoints = [...] } }, or leave store out for SQLite')
    if "etcd" not in block:
        return None
    etcd = _first(block["etcd"]) or {}
    unknown = sorted(set(etcd) - _ETCD_KEYS)
    if unknown:
        raise ConfigError(f'{path}: server {{ store {{ etcd {{ {unknown[0]} }} }} }} is not a setting Yurt reads; '
                          f'etcd takes {", ".join(sorted(_ETCD_KEYS))}')
    endpoints = etcd.get("endpoints", [])
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not endpoints:
        raise ConfigError(f'{path}: server {{ store {{ etcd {{ endpoints }} }} }} is empty: list the etcd '
                          'members\' client URLs, e.g. endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]')
    out = EtcdSettings(endpoints=[str(e) for e in endpoints])
    for key in ("ca_file", "cert_file", "key_file", "prefix"):
        if key in etcd:
            setattr(out, key, str(etcd[key]))
    if "lease_ttl" in etcd:
        out.lease_ttl = int(_seconds(etcd["lease_ttl"], path, "server.store.etcd.lease_ttl"))
        if out.lease_ttl < 3:
            raise ConfigError(f'{path}: server {{ store {{ etcd {{ lease_ttl }} }} }} must be at least "3s"')
    if bool(out.cert_file) != bool(out.key_file):
        raise ConfigError(f"{path}: server {{ store {{ etcd }} }}: cert_file and key_file go together")
    if not out.prefix.startswith("/"):
        raise ConfigError(f'{path}: server {{ store {{ etcd {{ prefix }} }} }} "{out.prefix}" must start with "/"')
    return out


def _events(server: dict[str, Any], path: str, cfg: AgentConfig) -> None:
    """server { enable_event_broker = true  event_buffer_size = 100 } (Nomad's keys and defaults)."""
    if "enable_event_broker" in server:
        value = server["enable_event_broker"]
        if value not in (True, False, "true", "false"):
            raise ConfigError(f'{path}: server {{ enable_event_broker = {value!r} }} must be true or false')
        cfg.enable_event_broker = value in (True, "true")
    if "event_buffer_size" in server:
        cfg.event_buffer_size = _int(server["event_buffer_size"], path, "server.event_buffer_size")
        if cfg.event_buffer_size < 1:
            raise ConfigError(f"{path}: server {{ event_buffer_size = {cfg.event_buffer_size} }} must be at least 1 "
                              "(to keep no events, set enable_event_broker = false)")


def dev_config() -> AgentConfig:
    """`-dev`: server and client in one process, state in a temporary directory, raw_exec on."""
    return AgentConfig(dev=True, raw_exec=True, log_level="DEBUG", heartbeat_ttl=10.0)


def load_file(path: str, cfg: AgentConfig) -> AgentConfig:
    """Merge a Nomad-style agent config file (HCL or JSON) into `cfg`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e.strerror}") from None
    try:
        raw = hcl2.loads(text) if not path.endswith(".json") else __import__("json").loads(text)
    except Exception as e:  # noqa: BLE001 - parse errors of every kind become one message
        raise ConfigError(f"{path}: not a valid agent config file: {str(e).splitlines()[0]}") from None
    raw = _unwrap(raw)
    known = {"name", "region", "datacenter", "data_dir", "bind_addr", "ports", "server", "client",
             "plugin", "log_level", "advertise", "leave_on_interrupt", "leave_on_terminate",
             "connect", "tls", "acl", "limits", "addresses", "recursors"}
    for key in raw:
        if key not in known:
            raise ConfigError(f'{path}: unknown setting "{key}"; Yurt reads: {", ".join(sorted(known))}')
    for key in ("name", "region", "datacenter", "log_level"):
        if key in raw:
            setattr(cfg, key, str(raw[key]))
    if "data_dir" in raw:
        cfg.data_dir = Path(raw["data_dir"])
    if "bind_addr" in raw:
        cfg.bind = str(raw["bind_addr"])
    ports = _first(raw.get("ports"))
    if ports and "http" in ports:
        cfg.http_port = _int(ports["http"], path, "ports.http")
    if ports and "consul" in ports:
        cfg.consul_port = _int(ports["consul"], path, "ports.consul")
        if not (0 <= cfg.consul_port < 65536):
            raise ConfigError(f"{path}: ports.consul = {cfg.consul_port} is not a TCP port (1-65535, or 0 for none)")
    if ports and "dns" in ports:
        cfg.dns_port = _int(ports["dns"], path, "ports.dns")
        if not (0 <= cfg.dns_port < 65536):
            raise ConfigError(f"{path}: ports.dns = {cfg.dns_port} is not a port (1-65535, or 0 for none)")
    for key in sorted(set(ports or {}) - {"http", "consul", "dns"}):
        cfg.warnings.append(f'{path}: ports {{ {key} }} is ignored: Yurt agents talk over HTTP only '
                            '(ports { http, consul, dns })')
    addrs = _first(raw.get("addresses"))
    for key in sorted(set(addrs or {}) - {"dns"}):
        cfg.warnings.append(f'{path}: addresses {{ {key} }} is ignored: Yurt binds its HTTP listeners to '
                            'bind_addr; only addresses { dns } is read')
    if addrs and "dns" in addrs:
        cfg.dns_addr = str(addrs["dns"])
    if "recursors" in raw:
        rec = raw["recursors"]
        if not isinstance(rec, list) or not all(isinstance(r, str) and r for r in rec):
            raise ConfigError(f'{path}: recursors must be a list of DNS server addresses, e.g. ["1.1.1.1"]')
        cfg.recursors = list(rec)
    advertise = _first(raw.get("advertise"))
    if advertise:
        for key in advertise:
            if key != "http":  # Nomad's rpc and serf: Yurt has one HTTP address for everything
                cfg.warnings.append(f'{path}: advertise {{ {key} }} is ignored: Yurt agents talk over HTTP '
                                    'only (advertise { http })')
        if "http" in advertise:
            if "{{" in str(advertise["http"]):   # a go-sockaddr template: found by resolve()
                cfg.advertise = str(advertise["http"])
            else:
                host, port = _host_port(str(advertise["http"]), f"{path}: advertise.http")
                cfg.advertise, cfg.advertise_port = host, port
    server = _first(raw.get("server"))
    if server is not None:
        cfg.server = bool(server.get("enabled", False))
        unknown = sorted(set(server) - _SERVER_KEYS)
        if unknown:
            raise ConfigError(f'{path}: server {{ {unknown[0]} }} is not a setting Yurt reads; server takes '
                              f'{", ".join(sorted(_SERVER_KEYS))}')
        if "bootstrap_expect" in server:
            cfg.warnings.append(f"{path}: server {{ bootstrap_expect }} is ignored: Yurt servers agree through "
                                "etcd (server { store { etcd { endpoints } } }), not among themselves")
        if "store" in server:
            cfg.etcd = _store(_first(server["store"]) or {}, path)
        if "num_schedulers" in server:
            cfg.num_schedulers = _int(server["num_schedulers"], path, "server.num_schedulers")
        if "min_heartbeat_ttl" in server:   # how long a client may go without a heartbeat
            cfg.heartbeat_ttl = _seconds(server["min_heartbeat_ttl"], path, "server.min_heartbeat_ttl")
        if "max_heartbeats_per_second" in server:   # Nomad's: larger fleets get a longer TTL
            cfg.max_heartbeats_per_second = _positive(server["max_heartbeats_per_second"], path,
                                                      "server.max_heartbeats_per_second")
        _events(server, path, cfg)
        if "keystore_dir" in server:   # the variables' root keys (servers on etcd share one)
            value = server["keystore_dir"]
            if not isinstance(value, str) or not value:
                raise ConfigError(f'{path}: server {{ keystore_dir = {value!r} }} must be a directory path')
            cfg.keystore_dir = value
    client = _first(raw.get("client"))
    if client is not None:
        cfg.client = bool(client.get("enabled", False))
        cfg.servers = [str(s) for s in client.get("servers", [])]
        cfg.network_interface = str(client.get("network_interface", cfg.network_interface))
        for block in client.get("host_network", []) or []:
            for name, body in (block or {}).items():
                body = _first(body) or {}
                unknown = set(body) - {"cidr", "interface", "reserved_ports"}
                if unknown:
                    raise ConfigError(f'{path}: client.host_network "{name}": unknown setting '
                                      f'"{sorted(unknown)[0]}"; it takes cidr, interface and reserved_ports')
                if any(h.name == name for h in cfg.host_networks):
                    raise ConfigError(f'{path}: client.host_network "{name}" is declared twice')
                cfg.host_networks.append(HostNetwork(name=name, cidr=str(body.get("cidr", "")),
                                                     interface=str(body.get("interface", "")),
                                                     reserved_ports=str(body.get("reserved_ports", ""))))
        for block in client.get("host_volume", []) or []:
            for name, body in (block or {}).items():
                _host_volume(cfg, path, name, _first(body) or {})
        if client.get("template") is not None:
            cfg.template = _template_block(cfg, path, _first(client["template"]) or {})
        cfg.node_class = str(client.get("node_class", cfg.node_class))
        cfg.node_pool = str(client.get("node_pool", cfg.node_pool))
        cfg.meta.update({k: str(v) for k, v in (_first(client.get("meta")) or {}).items()})
        options = _first(client.get("options")) or {}
        if str(options.get("driver.raw_exec.enable", "")).lower() in ("1", "true"):
            cfg.raw_exec = True
    connect = _first(raw.get("connect"))
    if connect is not None:  # connect { default_intention_policy = "deny"  leaf_cert_ttl = "1h" }
        if "default_intention_policy" in connect:
            cfg.default_intention_policy = str(connect["default_intention_policy"])
        if "leaf_cert_ttl" in connect:
            cfg.leaf_cert_ttl = str(connect["leaf_cert_ttl"])
        if "virtual_ip_cidr" in connect:   # checked here, so a typo stops the agent with its name
            from yurt.server.virtual_ips import parse_cidr
            parse_cidr(str(connect["virtual_ip_cidr"]), f"{path}: connect {{ virtual_ip_cidr }}")
            cfg.virtual_ip_cidr = str(connect["virtual_ip_cidr"])
    tls = _first(raw.get("tls"))
    if tls is not None:
        _load_tls(tls, path, cfg.tls)
    acl = _first(raw.get("acl"))
    if acl is not None:  # acl { enabled = true }
        ttls = {"token_min_expiration_ttl": "acl_token_min_ttl", "token_max_expiration_ttl": "acl_token_max_ttl"}
        unknown = sorted(set(acl) - {"enabled", *ttls})
        if unknown:
            raise ConfigError(f'{path}: acl {{ {unknown[0]} }} is not a setting Yurt reads; acl takes '
                              '"enabled", "token_min_expiration_ttl" and "token_max_expiration_ttl"')
        cfg.acl_enabled = acl.get("enabled") in (True, "true", 1)
        for key, attr in ttls.items():
            if key in acl:
                _seconds(acl[key], path, f"acl.{key}")
                setattr(cfg, attr, str(acl[key]))
    _limits(_first(raw.get("limits")), path, cfg)
    for plugin in raw.get("plugin", []) or []:
        for name, body in (plugin or {}).items():
            conf = _first((_first(body) or {}).get("config")) or {}
            if name == "raw_exec" and conf.get("enabled") in (True, "true", 1):
                cfg.raw_exec = True
    return cfg


_TLS_KEYS = {"http", "ca_file", "cert_file", "key_file", "verify_https_client"}


def _load_tls(block: Any, path: str, tls: TLSSettings) -> None:
    """tls { http = true  ca_file = "..."  cert_file = "..."  key_file = "..."  verify_https_client = true }"""
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: tls must be a block: tls {{ http = true ... }}")
    unknown = sorted(set(block) - _TLS_KEYS)
    if unknown:
        raise ConfigError(f'{path}: tls: unknown setting "{unknown[0]}"; Yurt reads: {", ".join(sorted(_TLS_KEYS))} '
                          "(Yurt agents talk over HTTP only: there is no rpc to secure)")
    for key in ("http", "verify_https_client"):
        if key in block:
            value = block[key]
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: tls.{key} must be true or false, not {value!r}")
            setattr(tls, key, value)
    for key in ("ca_file", "cert_file", "key_file"):
        if key in block:
            setattr(tls, key, str(block[key]))


def check_tls(tls: TLSSettings) -> None:
    """The files tls { } names exist and are readable, and what http/verify_https_client need is set."""
    needed = []
    if tls.http:
        needed += ["cert_file", "key_file"]
    if tls.verify_https_client:
        needed += ["ca_file"]
        if not tls.http:
            raise ConfigError("tls.verify_https_client = true needs tls.http = true: only an HTTPS "
                              "listener can ask for client certificates")
    for key in needed:
        if not getattr(tls, key):
            raise ConfigError(f"tls.{key} is not set: " +
                              ("tls.http = true serves HTTPS with cert_file and key_file" if key != "ca_file"
                               else "tls.verify_https_client = true checks client certificates against ca_file"))
    for key in ("ca_file", "cert_file", "key_file"):
        name = getattr(tls, key)
        if not name:
            continue
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(f'tls.{key} = "{name}": cannot read the file: {e.strerror}') from None
        if b"-----BEGIN" not in data:
            raise ConfigError(f'tls.{key} = "{name}": not a PEM file (no "-----BEGIN" line); make one '
                              "with `yurt tls ca create` / `yurt tls cert create`")
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:
            ctx.load_verify_locations(tls.ca_file)
    except ssl.SSLError as e:
        raise ConfigError(f'tls: cert_file "{tls.cert_file}", key_file "{tls.key_file}", ca_file '
                          f'"{tls.ca_file}": {e.reason or e} (is key_file the key of cert_file?)') from None


LIMITS = ("http_max_request_bytes",)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000**2, "mib": 1 << 20,
               "gb": 1000**3, "gib": 1 << 30}


def _limits(block: Any, path: str, cfg: AgentConfig) -> None:
    """limits { http_max_request_bytes = "16MiB" }: the largest request body the HTTP API takes."""
    if block is None:
        return
    for key in block:
        if key not in LIMITS:
            raise ConfigError(f'{path}: limits {{ {key} }} is not supported; Yurt reads limits '
                              f'{{ {", ".join(LIMITS)} }}')
    if "http_max_request_bytes" in block:
        cfg.http_max_request_bytes = _size(block["http_max_request_bytes"], path,
                                           "limits.http_max_request_bytes")


def _size(value: Any, path: str, name: str) -> int:
    import re
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ConfigError(f'{path}: {name} = "{value}" is not a size: write bytes or e.g. "16MiB", "10MB"')
    n = int(m.group(1)) * _SIZE_UNITS[unit]
    if n < 1024:
        raise ConfigError(f'{path}: {name} = "{value}" is too small: at least "1KiB" (job bodies must fit)')
    return n


def _sockaddr(value: str, setting: str, table: list[Any]) -> str:
    """`value`, or what its go-sockaddr template gives on this host; ConfigError naming `setting`
    for a template that fails or gives no address."""
    if "{{" not in value:
        return value
    from yurt.gotemplate import TemplateError
    from yurt.gotemplate.sockaddr import SockaddrError, execute_sockaddr
    try:
        out = execute_sockaddr(value, setting, table)
    except (TemplateError, SockaddrError) as e:
        raise ConfigError(f'{setting} = "{value}": {e}') from None
    if not out:
        have = ", ".join(f"{a.name} {a.iface}" for a in table) or "none"
        raise ConfigError(f'{setting} = "{value}" gives no address on this host (its addresses: {have}); '
                          "write the address, or a template that finds one")
    return out


def _unwrap(raw: Any) -> Any:
    """python-hcl2 marks blocks and keeps comments; drop its bookkeeping keys."""
    if isinstance(raw, dict):
        return {k.strip('"'): _unwrap(v) for k, v in raw.items() if not k.startswith("__")}
    if isinstance(raw, list):
        return [_unwrap(v) for v in raw]
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return _HCL_ESCAPE.sub(_unescape_one, raw[1:-1])   # python-hcl2 keeps a string's quotes and escapes
    return raw


_HCL_ESCAPE = re.compile(r'\\(["\\nrt]|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})')


def _unescape_one(m: re.Match[str]) -> str:
    c = m.group(1)
    if c[0] in "uU":
        return chr(int(c[1:], 16))
    return {"n": "\n", "r": "\r", "t": "\t"}.get(c, c)


def _host_port(value: str, setting: str) -> tuple[str, int]:
    """``"10.0.0.5"``, ``"10.0.0.5:4646"`` or ``"[::1]:4646"`` -> (host, port or 0)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if not host:
        raise ConfigError(f'{setting} = "{value}" has no host: write "ADDRESS" or "ADDRESS:PORT"')
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f'{setting} = "{value}": "{port}" is not a TCP port (1-65535)')
    return host, int(port) if port else 0


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _seconds(value: Any, path: str, name: str) -> float:
    from yurt.structs import parse_duration
    try:
        ns = parse_duration(str(value))
    except ValueError as e:
        raise ConfigError(f"{path}: {name}: {e}") from None
    if ns < 10**9:
        raise ConfigError(f'{path}: {name} = "{value}" is too short: at least "1s"')
    return ns / 1e9


def _positive(value: Any, path: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {name} must be a number, not {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{path}: {name} = {value!r} must be more than 0 (Nomad's default: 50)")
    return number


def _int(value: Any, path: str, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {name} must be a whole number, not {value!r}") from None


_TEMPLATE_KEYS = {"function_denylist", "disable_file_sandbox", "block_query_wait", "wait", "wait_bounds",
                  "consul_retry", "nomad_retry", "vault_retry", "max_stale"}


def _duration_s(value: Any, where: str) -> float:
    from yurt.structs import parse_duration
    try:
        return parse_duration(str(value)) / 1e9
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _template_block(cfg: AgentConfig, path: Any, body: dict[str, Any]) -> TemplateSettings:
    """client { template { ... } }: Nomad's client template settings (see TemplateSettings)."""
    where = f"{path}: client {{ template"
    unknown = sorted(set(body) - _TEMPLATE_KEYS)
    if unknown:
        raise ConfigError(f'{where} {{ {unknown[0]} }} }} is not a setting Yurt reads; template takes '
                          f'{", ".join(sorted(_TEMPLATE_KEYS))}')
    out = TemplateSettings()
    if "function_denylist" in body:
        deny = body["function_denylist"]
        if not isinstance(deny, list) or not all(isinstance(f, str) for f in deny):
            raise ConfigError(f'{where} {{ function_denylist }} }} must be a list of function names, like '
                              '["plugin", "writeToFile"]')
        out = replace(out, function_denylist=tuple(deny))
    if "disable_file_sandbox" in body:
        value = body["disable_file_sandbox"]
        if not isinstance(value, bool):
            raise ConfigError(f"{where} {{ disable_file_sandbox }} }} must be true or false, not {value!r}")
        out = replace(out, disable_file_sandbox=value)
    if "block_query_wait" in body:
        out = replace(out, block_query_wait=_seconds(body["block_query_wait"], path,
                                                     "client { template { block_query_wait } }"))
    for key in ("wait", "wait_bounds"):
        if key not in body:
            continue
        block = _first(body[key]) or {}
        bad = sorted(set(block) - {"min", "max"})
        if bad:
            raise ConfigError(f"{where} {{ {key} {{ {bad[0]} }} }} }} is not a setting; {key} takes min and max")
        lo = _duration_s(block["min"], f"{where} {{ {key} {{ min }} }} }}") if "min" in block else None
        hi = _duration_s(block["max"], f"{where} {{ {key} {{ max }} }} }}") if "max" in block else None
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{where} {{ {key} }} }}: min ({block['min']}) is greater than max ({block['max']})")
        if key == "wait":
            out = replace(out, wait_min=out.wait_min if lo is None else lo, wait_max=out.wait_max if hi is None else hi)
        else:
            out = replace(out, bounds_min=lo, bounds_max=hi)
    retries = {}
    for key in ("nomad_retry", "consul_retry"):   # one agent answers both: one retry setting
        if key in body:
            retries[key] = _retry(_first(body[key]) or {}, f"{where} {{ {key}")
    if len(set(retries.values())) > 1:
        raise ConfigError(f"{where} }}: nomad_retry and consul_retry differ, but Yurt's templates read the catalog "
                          "and Nomad's data from one agent: give one of them (or the same values)")
    if retries:
        out = replace(out, retry=next(iter(retries.values())))
    for key, why in (("vault_retry", "Yurt has no Vault integration"),
                     ("max_stale", "Yurt's agent answers template reads from the leader's state, never stale")):
        if key in body:
            cfg.warnings.append(f"{where} {{ {key} }} }} is ignored: {why}")
    return out


def _retry(block: dict[str, Any], where: str) -> TemplateRetry:
    bad = sorted(set(block) - {"attempts", "backoff", "max_backoff"})
    if bad:
        raise ConfigError(f"{where} {{ {bad[0]} }} }} }} is not a setting; it takes attempts, backoff and max_backoff")
    default = TemplateRetry()
    attempts = block.get("attempts", default.attempts)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise ConfigError(f"{where} {{ attempts }} }} }} = {attempts} must be 0 (retry without end) or more")
    backoff = _duration_s(block["backoff"], f"{where} {{ backoff }} }} }}") if "backoff" in block else default.backoff
    top = (_duration_s(block["max_backoff"], f"{where} {{ max_backoff }} }} }}") if "max_backoff" in block
           else default.max_backoff)
    if backoff <= 0 or top < backoff:
        raise ConfigError(f"{where} }} }} }}: backoff must be more than 0 and max_backoff at least backoff")
    return TemplateRetry(attempts, backoff, top)


def _host_volume(cfg: AgentConfig, path: Any, name: str, body: dict[str, Any]) -> None:
    """client { host_volume "name" { path = "/abs/dir", read_only = false } }: the directory must exist."""
    import os
    where = f'{path}: client.host_volume "{name}"'
    unknown = set(body) - {"path", "read_only"}
    if unknown:
        raise ConfigError(f'{where}: unknown setting "{sorted(unknown)[0]}"; it takes path and read_only')
    if name in cfg.host_volumes:
        raise ConfigError(f"{where} is declared twice")
    host_path = body.get("path")
    if not isinstance(host_path, str) or not host_path:
        raise ConfigError(f'{where} has no path: set path = "/an/existing/directory"')
    if not os.path.isabs(host_path):
        raise ConfigError(f'{where}: path "{host_path}" is not absolute')
    if not os.path.isdir(host_path):
        raise ConfigError(f'{where}: path "{host_path}" does not exist or is not a directory; create it first')
    read_only = body.get("read_only", False)
    if read_only in ("true", "false"):
        read_only = read_only == "true"
    if not isinstance(read_only, bool):
        raise ConfigError(f"{where}: read_only must be true or false")
    cfg.host_volumes[name] = (os.path.realpath(host_path), read_only)
