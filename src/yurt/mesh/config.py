"""The proxy's configuration: flags of `yurt connect proxy`, or the JSON file the client agent
writes for the sidecar task (`-config FILE`; flags given as well override the file).

JSON (every key optional except service):
  {"service": "count-api",                 # the service this sidecar fronts = its identity
   "datacenter": "dc1",
   "listen": "0.0.0.0:21000",              # public mTLS listener; omit for an upstream-only proxy
   "local_addr": "127.0.0.1", "local_port": 9001,   # the app behind the public listener
   "upstreams": [{"destination_name": "count-api", "local_bind_address": "127.0.0.1",
                  "local_bind_port": 8080, "datacenter": "dc1"}],
   "address": "unix:///var/run/yurt/agent.sock",     # the agent's API (else YURT_ADDR)
   "token_file": "/secrets/nomad_token",   # the workload identity sent to the agent (else YURT_TOKEN_FILE)
   "ready_file": "/alloc/tmp/connect-proxy.ready", "ready_addr": "127.0.0.1:19001",
   "metrics_addr": "0.0.0.0:9102",         # GET /metrics: Prometheus' text format (omit: none)
   "drained_file": "/alloc/tmp/connect-proxy.drained",  # written once SIGUSR1's inbound drain is done
   "drain_timeout_ms": 5000,              # after SIGTERM/SIGINT, how long open connections may finish
   "handshake_timeout_ms": 10000,         # a TLS handshake, inbound or to an upstream instance
   "connect_timeout_ms": 3000,            # a TCP connect to an upstream instance
   "max_connections": 1024,               # open connections per listener; past it new ones are closed
   "idle_timeout_ms": 300000,             # an established connection with no bytes either way is closed
   "workers": 1,                           # >1: that many processes share the listeners (SO_REUSEPORT)
   "gateway": {"Kind": "ingress-gateway", ...},  # gateway mode: Consul's config entry (mesh/gateway.py)
   "transparent_proxy": {"outbound_port": 15001,        # the outbound listener on 127.0.0.1 that
                         "mark": 22869,                 # iptables redirects to; the SO_MARK of the
                         "mesh_destinations_only": false}}  # proxy's own sockets; passthrough or not

Identity, trust, intentions and endpoints always come from the agent at "address".
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

from yurt.errors import ConfigError


@dataclass
class UpstreamConfig:
    destination: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"
    datacenter: str = ""


@dataclass
class ExposePath:
    """`proxy { expose { path { ... } } }`: plain HTTP from outside the mesh to one path of the app."""
    path: str
    local_path_port: int
    listen_port: int
    listen_addr: str = "0.0.0.0"
    protocol: str = "http"


@dataclass
class ProxyConfig:
    service: str
    datacenter: str = "dc1"
    listen_addr: str = "0.0.0.0"
    listen_port: int | None = None  # None = no public listener (upstreams only); 0 = any port
    local_addr: str = "127.0.0.1"
    local_port: int = 0
    upstreams: list[UpstreamConfig] = field(default_factory=list)
    address: str = ""
    ready_file: str = ""
    ready_addr: str = ""
    metrics_addr: str = ""  # ADDR:PORT serving GET /metrics (the sidecar's Prometheus series)
    token_file: str = ""   # a file holding the token sent to the agent (the sidecar's workload identity)
    handshake_timeout: float = 10.0
    connect_timeout: float = 3.0
    max_connections: int = 1024  # per listener (public and each upstream); 0 = no cap
    idle_timeout: float = 300.0  # seconds without a byte either way before a connection is closed; 0 = never
    debug_modules: bool = False  # log the loaded Python modules once ready (footprint checks)
    workers: int = 1  # reactor processes sharing the listeners (SO_REUSEPORT); 1 = one process
    drained_file: str = ""  # written when the inbound drain (SIGUSR1) is done
    drain_timeout: float = 5.0  # seconds open connections may take to finish after SIGTERM/SIGINT
    worker_drained_files: list[str] = field(default_factory=list)  # -workers: set at fork, not configured
    gateway: dict | None = None  # an ingress or terminating gateway's config entry (mesh/gateway.py)
    # transparent proxy (mesh/transparent.py): 0 = none; else the outbound listener's port
    outbound_port: int = 0
    outbound_addr: str = "127.0.0.1"
    mark: int = 0                     # SO_MARK on every socket the proxy dials (0: none)
    mesh_destinations_only: bool = False   # redirected non-mesh destinations are closed, not passed
    expose: list[ExposePath] = field(default_factory=list)   # mesh/expose.py

    def validate(self) -> ProxyConfig:
        if not self.service:
            raise ConfigError("-service is required: the name of the service this sidecar fronts")
        if self.gateway is not None:
            from .gateway import GatewayConfig
            GatewayConfig.from_entry(self.gateway)   # raises ConfigError naming what is wrong
            if self.workers > 1:
                raise ConfigError("a gateway runs one worker: remove -workers")
            return self
        if self.listen_port is not None and not self.local_port:
            raise ConfigError("-local-port is required with -listen: the port of the app behind the proxy")
        if self.listen_port is None and not self.upstreams and not self.outbound_port:
            raise ConfigError("nothing to do: give -listen ADDR:PORT and/or -upstream DEST:PORT")
        if self.max_connections < 0:
            raise ConfigError(f"-max-connections {self.max_connections}: must be 0 (no cap) or more")
        if self.idle_timeout < 0 or self.handshake_timeout <= 0:
            raise ConfigError("-idle-timeout must be 0 (never) or more, and -handshake-timeout more than 0")
        if self.drain_timeout < 0:
            raise ConfigError("-drain-timeout must be 0 (stop at once) or more")
        if self.workers < 1:
            raise ConfigError("-workers must be at least 1")
        if self.workers > 1 and (self.listen_port == 0 or any(u.local_bind_port == 0 for u in self.upstreams)):
            raise ConfigError("-workers > 1 needs fixed listener ports (workers share them with SO_REUSEPORT)")
        seen = set()
        for u in self.upstreams:
            key = (u.local_bind_address, u.local_bind_port)
            if key in seen:
                raise ConfigError(f"upstream {u.destination}: {key[0]}:{key[1]} is bound twice")
            seen.add(key)
        return self


def _expose_path(e: Any, i: int) -> ExposePath:
    where = f"expose[{i}]"
    if not isinstance(e, dict):
        raise ConfigError(f'{where} must be an object: {{"path": "/metrics", "local_path_port": 9102, '
                          '"listen": "0.0.0.0:21500"}')
    path, protocol = str(e.get("path") or ""), str(e.get("protocol") or "http")
    if not path.startswith("/"):
        raise ConfigError(f'{where}: path "{path}" must start with "/"')
    if protocol != "http":
        raise ConfigError(f'{where}: protocol "{protocol}" is not served: exposed paths speak http')
    addr, port = split_hostport(str(e.get("listen") or ""), f"{where}.listen")
    return ExposePath(path, _whole(e.get("local_path_port"), f"{where}.local_path_port"), port, addr, protocol)


def split_hostport(s: str, what: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = "", s
    host = host.strip("[]") or "0.0.0.0"
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{what} {s!r}: expected ADDR:PORT") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{what} {s!r}: port out of range")
    return host, p


def parse_upstream(s: str) -> UpstreamConfig:
    """DEST:PORT or DEST:ADDR:PORT."""
    parts = s.split(":")
    try:
        if len(parts) == 2:
            return UpstreamConfig(parts[0], int(parts[1]))
        if len(parts) == 3:
            return UpstreamConfig(parts[0], int(parts[2]), parts[1])
    except ValueError:
        pass
    raise ConfigError(f"-upstream {s!r}: expected DEST:PORT or DEST:ADDR:PORT")


def from_dict(doc: dict, cfg: ProxyConfig | None = None) -> ProxyConfig:
    cfg = cfg or ProxyConfig(service="")
    cfg.service = doc.get("service", cfg.service)
    cfg.datacenter = doc.get("datacenter", cfg.datacenter)
    if doc.get("listen"):
        cfg.listen_addr, cfg.listen_port = split_hostport(doc["listen"], "listen")
    cfg.local_addr = doc.get("local_addr", cfg.local_addr)
    cfg.local_port = int(doc.get("local_port", cfg.local_port) or 0)
    for u in doc.get("upstreams") or []:
        cfg.upstreams.append(UpstreamConfig(u["destination_name"], int(u["local_bind_port"]),
                                            u.get("local_bind_address") or "127.0.0.1",
                                            u.get("datacenter") or ""))
    cfg.address = doc.get("address", cfg.address)
    cfg.ready_file = doc.get("ready_file", cfg.ready_file)
    cfg.token_file = doc.get("token_file", cfg.token_file)
    cfg.ready_addr = doc.get("ready_addr", cfg.ready_addr)
    cfg.metrics_addr = doc.get("metrics_addr", cfg.metrics_addr)
    cfg.drained_file = doc.get("drained_file", cfg.drained_file)
    if "drain_timeout_ms" in doc:
        cfg.drain_timeout = _whole(doc["drain_timeout_ms"], "drain_timeout_ms") / 1000
    if "handshake_timeout_ms" in doc:
        cfg.handshake_timeout = doc["handshake_timeout_ms"] / 1000
    if "connect_timeout_ms" in doc:
        cfg.connect_timeout = doc["connect_timeout_ms"] / 1000
    if "max_connections" in doc:
        cfg.max_connections = _whole(doc["max_connections"], "max_connections")
    if "idle_timeout_ms" in doc:
        cfg.idle_timeout = _whole(doc["idle_timeout_ms"], "idle_timeout_ms") / 1000
    tp = doc.get("transparent_proxy")
    if tp is not None:
        if not isinstance(tp, dict):
            raise ConfigError("transparent_proxy must be an object: {\"outbound_port\": 15001}")
        from .transparent import DEFAULT_OUTBOUND_PORT, MARK
        cfg.outbound_port = _whole(tp.get("outbound_port") or DEFAULT_OUTBOUND_PORT, "transparent_proxy.outbound_port")
        cfg.mark = _whole(tp.get("mark", MARK), "transparent_proxy.mark")
        cfg.mesh_destinations_only = bool(tp.get("mesh_destinations_only", False))
    for i, e in enumerate(doc.get("expose") or []):
        cfg.expose.append(_expose_path(e, i))
    cfg.debug_modules = bool(doc.get("debug_modules", cfg.debug_modules))
    cfg.workers = int(doc.get("workers", cfg.workers) or 1)
    if doc.get("gateway") is not None:
        if not isinstance(doc["gateway"], dict):
            raise ConfigError("gateway must be a config entry object: {\"Kind\": \"ingress-gateway\", ...}")
        cfg.gateway = doc["gateway"]
    return cfg


def _whole(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} = {value!r}: must be a whole number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yurt connect proxy", description=(
        "Run the Connect sidecar proxy: an mTLS public listener in front of a local app and plain "
        "TCP upstream listeners to other services. Access log: JSON lines on stdout."))
    a = p.add_argument
    a("-service", "--service", help="the service this proxy fronts (its identity)")
    a("-listen", "--listen", help="public mTLS listener ADDR:PORT (default address 0.0.0.0)")
    a("-local-addr", "--local-addr", help="the app's address (default 127.0.0.1)")
    a("-local-port", "--local-port", type=int, help="the app's port")
    a("-upstream", "--upstream", action="append", default=[], help="DEST:PORT or DEST:ADDR:PORT (repeatable)")
    a("-address", "--address", help="the agent's API, e.g. unix:///path/agent.sock (default $YURT_ADDR)")
    a("-dc", "--dc", help="datacenter (default dc1)")
    a("-ready-file", "--ready-file", help="file written once listeners are bound and a valid leaf is loaded")
    a("-ready-addr", "--ready-addr", help="ADDR:PORT answering HTTP 200 LIVE once ready (503 before)")
    a("-metrics-addr", "--metrics-addr", help=(
        "ADDR:PORT serving the proxy's metrics at GET /metrics in Prometheus' text format "
        "(connections, bytes, TLS failures, denials, upstream latency and errors)"))
    a("-token-file", "--token-file", help=(
        "a file holding the token sent to the agent as X-Consul-Token, e.g. the task's "
        "secrets/nomad_token (default $YURT_TOKEN_FILE)"))
    a("-config", "--config", help="JSON config file (what the client agent writes)")
    a("-workers", "--workers", type=int, help=(
        "proxy processes sharing the listeners through SO_REUSEPORT (default 1). Each worker has "
        "its own reactor, watches and agent connections; the first one owns the ready file and "
        "ready address"))
    a("-max-connections", "--max-connections", type=int, help=(
        "open connections per listener (public and each upstream; default 1024, 0 = no cap); "
        "past it a new connection is closed at once"))
    a("-idle-timeout", "--idle-timeout", type=float, help=(
        "seconds an established connection may pass no byte either way before it is closed "
        "(default 300, 0 = never)"))
    a("-handshake-timeout", "--handshake-timeout", type=float, help=(
        "seconds an inbound connection has to finish its TLS handshake (default 10)"))
    a("-drain-timeout", "--drain-timeout", type=float, help=(
        "seconds open connections may take to finish after SIGTERM or SIGINT (default 5); new "
        "ones are refused meanwhile. SIGUSR1 drains only the inbound side"))
    a("-debug-modules", "--debug-modules", action="store_true", help=argparse.SUPPRESS)
    return p


def from_args(argv: list[str]) -> ProxyConfig:
    ns = parser().parse_args(argv)
    cfg = ProxyConfig(service="")
    if ns.config:
        try:
            with open(ns.config) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"-config {ns.config}: {e}") from None
        from_dict(doc, cfg)
    if ns.service:
        cfg.service = ns.service
    if ns.listen:
        cfg.listen_addr, cfg.listen_port = split_hostport(ns.listen, "-listen")
    if ns.local_addr:
        cfg.local_addr = ns.local_addr
    if ns.local_port:
        cfg.local_port = ns.local_port
    cfg.upstreams.extend(parse_upstream(u) for u in ns.upstream)
    if ns.address:
        cfg.address = ns.address
    if ns.dc:
        cfg.datacenter = ns.dc
    if ns.ready_file:
        cfg.ready_file = ns.ready_file
    if ns.ready_addr:
        cfg.ready_addr = ns.ready_addr
    if ns.token_file:
        cfg.token_file = ns.token_file
    if ns.metrics_addr:
        cfg.metrics_addr = ns.metrics_addr
    if ns.debug_modules:
        cfg.debug_modules = True
    if ns.workers is not None:
        cfg.workers = ns.workers
    if ns.max_connections is not None:
        cfg.max_connections = ns.max_connections
    if ns.idle_timeout is not None:
        cfg.idle_timeout = ns.idle_timeout
    if ns.handshake_timeout is not None:
        cfg.handshake_timeout = ns.handshake_timeout
    if ns.drain_timeout is not None:
        cfg.drain_timeout = ns.drain_timeout
    cfg.address = cfg.address or os.environ.get("YURT_ADDR", "")
    cfg.token_file = cfg.token_file or os.environ.get("YURT_TOKEN_FILE", "")
    return cfg.validate()
