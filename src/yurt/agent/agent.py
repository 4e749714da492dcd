"""The agent: assembles the state store, server, HTTP API and client from a config, and runs them."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import ssl
import socket
import tempfile
import threading
from pathlib import Path

import uvicorn

from yurt.api.app import create_app
from yurt.api.client import TLSConfig, YurtClient
from yurt.structs import Allocation

from . import addresses
from .corked import http_protocol
from .config import AgentConfig

log = logging.getLogger("yurt.agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        config.check()
        config.resolve()
        self.config = config
        self._tmp: str | None = None
        if config.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="yurt-dev-")
            config.data_dir = Path(self._tmp)
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.data_dir, 0o700)  # state, keys and the API socket: this agent's user only
        if config.dev:
            (config.data_dir / "client").mkdir(exist_ok=True)
            (config.data_dir / "client" / "ephemeral").touch()  # networks die with this agent
        self.store = None
        self.server = None
        self.client = None
        if config.server:
            from yurt.server.server import Server
            (config.data_dir / "server").mkdir(mode=0o700, exist_ok=True)
            os.chmod(config.data_dir / "server", 0o700)
            self.store = _open_store(config)
            _server_gc()
            if config.enable_event_broker:   # /v1/event/stream's buffer, fed by every write
                from yurt.state.events import EventBuffer
                self.store.events = EventBuffer(config.event_buffer_size)
            self.server = Server(self.store, num_workers=config.num_schedulers,
                                 heartbeat_ttl=config.heartbeat_ttl,
                                 max_heartbeats_per_second=config.max_heartbeats_per_second,
                                 region=config.region,
                                 datacenter=config.datacenter,
                                 default_intention_policy=config.default_intention_policy,
                                 leaf_cert_ttl=config.leaf_cert_ttl,
                                 keystore_dir=config.keystore_dir or str(config.data_dir / "server" / "keystore"),
                                 virtual_ip_cidr=config.virtual_ip_cidr)
            self.server.catalog.servers = self._catalog_servers
        self.bootstrap_secret = ""   # -dev -acl-enabled: the bootstrap token's SecretID
        from .log_monitor import LogMonitor
        self.log_monitor = LogMonitor()   # the agent's log lines for /v1/agent/monitor
        self.internal_token = self._acl_setup()
        # the servers this agent talks to: itself, or its configured servers (the client fails
        # over between them; `server_address` is the one it talks to now)
        # with tls { }: HTTPS to them, trusting ca_file and presenting cert_file as a client certificate
        self.tls = _outgoing_tls(config)
        self.tls_context: ssl.SSLContext = self.tls.context()   # the forwarding proxy's too
        servers = [config.address] if config.server else [_http(s, config.tls.http) for s in config.servers]
        self.api_client = YurtClient(servers, tls=self.tls) if servers else None
        from .leaf_cert import LeafCerts, LocalCA, RemoteCA
        # a server on etcd signs through the API: only the leader writes (the CA's serial)
        local_ca = self.server is not None and not self.server.ha
        self.leaf_certs = LeafCerts(LocalCA(self.server) if local_ca else RemoteCA(self.api_client),
                                    config.datacenter)
        # the HTTP API on a unix socket too: a sidecar inside an allocation's network namespace
        # reaches its agent there (127.0.0.1:4646 in the namespace is not the agent)
        self.api_socket = str(config.data_dir / "yurt.sock")
        # the DNS server (agent/dns.py): ports { dns }, and 127.0.0.1:53 in transparent proxies' namespaces
        from .dns import Catalog, MeshDNS
        dns_api = _with_token(YurtClient(config.address, tls=self.tls), self.internal_token)
        self.dns = MeshDNS(Catalog(dns_api.get), config.recursors, config.datacenter)
        if config.client:
            from yurt.client.node_agent import ClientConfig, NodeAgent
            assert self.api_client is not None, "AgentConfig.validate: a client has servers"
            self.client = NodeAgent(ClientConfig(
                data_dir=config.data_dir / "client", node_name=config.name, datacenter=config.datacenter,
                region=config.region, node_class=config.node_class, node_pool=config.node_pool,
                meta=dict(config.meta), raw_exec_enabled=config.raw_exec,
                network_ip=config.node_ip, network_interface=config.network_interface,
                loopback_ports=(config.dev or config.dev_connect) and not addresses.is_loopback(config.node_ip),
                host_networks={hn.name: (config.host_network_ips[hn.name], hn.reserved_ports)
                               for hn in config.host_networks},
                host_volumes=dict(config.host_volumes), template=config.template,
                http_addr=config.address, api_socket=self.api_socket if len(self.api_socket) <= 100 else "",
                dns=self.dns),
                self.api_client)
        from .metrics import build_registry
        self.metrics = build_registry(self)   # /v1/metrics
        self.app = create_app(self)
        self._http: uvicorn.Server | None = None
        self._uds: uvicorn.Server | None = None
        self._consul: uvicorn.Server | None = None

    def _acl_setup(self) -> str:
        """ACLs on a server: this agent's own in-process callers (its checks, its client when it
        has one) get a secret only this process knows, with a node agent's rights; -dev bootstraps."""
        import uuid

        from yurt.server.acl import ACL, Identity, node_rules
        from yurt.structs import parse_duration
        secret = str(uuid.uuid4())
        if self.server is None:
            return secret   # a client-only agent knows its own secret (api/authz.py)
        self.server.acl.min_ttl = parse_duration(self.config.acl_token_min_ttl)
        self.server.acl.max_ttl = parse_duration(self.config.acl_token_max_ttl)
        ident = Identity("node", ACL(node_rules()))
        self.server.acl.resolver.add(lambda s: ident if s == secret else None)
        if self.config.acl_enabled and self.config.dev:
            try:
                self.bootstrap_secret = self.server.acl.bootstrap().secret_id
            except Exception as e:  # noqa: BLE001 - a -dev agent with -data-dir bootstrapped before
                log.warning("ACL bootstrap at start: %s", e)
        return secret

    def _catalog_servers(self) -> list[tuple[str, str]]:
        """(name, address) of every live server, for the catalog's "consul" service."""
        if self.server is not None and self.server.ha:
            return [(m["Name"], m.get("Addr", "")) for m in self.server.members() if m["Status"] == "alive"]
        me = self.member_info()
        return [(me["Name"], me["Addr"] or "127.0.0.1")]

    def member_info(self) -> dict:
        """What this server tells the others about itself (its member key on etcd)."""
        from yurt import __version__
        from urllib.parse import urlsplit
        u = urlsplit(self.config.address)
        return {"Name": self.config.name, "Addr": u.hostname or "", "Port": u.port or self.config.http_port,
                "HTTPAddr": self.config.address, "Region": self.config.region,
                "Datacenter": self.config.datacenter, "Build": __version__}

    @property
    def server_address(self) -> str:
        return self.api_client.address if self.api_client else ""

    @property
    def node_id(self) -> str:
        return self.client.node_id if self.client else ""

    def local_alloc(self, alloc_id: str) -> Allocation | None:
        """The allocation if this agent's client runs it; its logs are here."""
        return self.client.local_alloc(alloc_id) if self.client else None

    def alloc_logs_dir(self, alloc_id: str) -> Path | None:
        return self.client.logs_dir(alloc_id) if self.client else None

    def alloc_done(self, alloc_id: str) -> bool:
        return self.client.alloc_done(alloc_id) if self.client else True

    def report_alloc(self, alloc_id: str) -> None:
        """The allocation's status to the server now (this agent's client runs it)."""
        if self.client:
            self.client.report_now(alloc_id)

    def alloc_stats(self, alloc_id: str, task: str = "") -> dict:
        """/v1/client/allocation/<id>/stats for an allocation this agent's client runs."""
        from yurt.client.host_stats import alloc_usage
        assert self.client is not None
        return alloc_usage(self.client, alloc_id, task)

    def host_stats(self) -> dict:
        """/v1/client/stats: this node's host figures."""
        from yurt.client.host_stats import host_stats
        assert self.client is not None
        return host_stats(str(self.client.config.data_dir))

    def mesh_probe(self, probes: list[dict]) -> list[dict]:
        """`yurt mesh explain`'s probes of this node's allocations (client/mesh_probe.py); the
        source's leaf comes from this agent's cache, as its sidecar's does."""
        from yurt.client.mesh_probe import run_probes
        return run_probes(probes, self.local_alloc, self.leaf_certs.get)

    # -- running ----------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then shut down in order."""
        if self.server:
            self.server.start(self.member_info())
        # proxy_headers off: nothing reads a request's client address, so uvicorn's rewriting of it
        # from X-Forwarded-For is a layer on every request for nothing
        http_config = uvicorn.Config(self.app, host=self.config.bind, port=self.config.http_port, log_config=None,
                                     log_level="critical", access_log=False, lifespan="off",
                                     timeout_graceful_shutdown=2, http=http_protocol(), proxy_headers=False,
                                     **_serving_tls(self.config))
        self._http = _Server(http_config, on_exit=self._leave)
        if self.client:
            threading.Thread(target=self._start_client_when_serving, daemon=True).start()
        self.leaf_certs.start()
        from .agent_checks import AgentChecks
        self._checks = AgentChecks(_with_token(YurtClient(self.config.address, tls=self.tls), self.internal_token))
        self._checks.start()
        self._serve_socket()
        self._serve_consul()
        self._serve_dns()
        # uvicorn stops on SIGINT/SIGTERM and then re-raises the signal with the handler that was
        # there before it: with the default SIGTERM handler the process would die right there,
        # before shutdown() (a dev agent would leave its tasks running). Ours ends run() instead.
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            # bound here, as the Consul listener is: uvicorn, binding itself, would exit (3)
            # with its reason logged away
            sock = _listen_tcp(self.config.bind, self.config.http_port,
                               "pick another with -http-port or -bind (bind_addr)")
            self._http.run(sockets=[sock])
        except _Terminated:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.shutdown()

    def _leave(self) -> None:
        """A server on etcd that is told to stop hands leadership over first (its lease revoked,
        in the background), so another server leads while this one drains its requests."""
        if self.server is not None and self.server.ha:
            threading.Thread(target=self.store.leadership.stop, name="yurt-leave", daemon=True).start()

    def _serve_socket(self) -> None:
        """The same API on <data_dir>/yurt.sock, served from its own thread and event loop."""
        if len(self.api_socket) > 100:  # sun_path is ~108 bytes
            log.warning("not serving the API on %s: the path is too long for a unix socket", self.api_socket)
            return
        try:
            Path(self.api_socket).unlink(missing_ok=True)
        except OSError:
            pass
        # bound here, made 0600 before it listens (uvicorn's own `uds=` makes it 0666): the socket
        # answers every API call, so only this agent's user may connect
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.api_socket)
        os.chmod(self.api_socket, 0o600)
        sock.listen(2048)
        config = uvicorn.Config(self.app, log_config=None, log_level="critical", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2, http=http_protocol(), proxy_headers=False)
        self._uds = uvicorn.Server(config)  # off the main thread: it leaves signals alone
        threading.Thread(target=self._uds.run, kwargs={"sockets": [sock]}, name="yurt-api-socket",
                         daemon=True).start()

    def _serve_consul(self) -> None:
        """ports { consul }: the API again on Consul's port, from its own thread (the routes see
        which port a request came in on: api/agent_routes.py)."""
        port = self.config.consul_listener
        if not port:
            return
        try:
            sock = _listen_tcp(self.config.bind, port, "set ports { consul = N } to another port, or 0 for none",
                               what="serve Consul's API on")
        except OSError as e:
            if self.config.consul_port is None:   # -dev-connect's default: the Nomad API still serves
                log.warning("%s", e.strerror)
                return
            raise
        config = uvicorn.Config(self.app, log_config=None, log_level="critical", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2, http=http_protocol(), proxy_headers=False,
                                **_serving_tls(self.config))
        self._consul = uvicorn.Server(config)
        threading.Thread(target=self._consul.run, kwargs={"sockets": [sock]}, name="yurt-api-consul",
                         daemon=True).start()
        log.info("Consul's API on %s:%d (CONSUL_HTTP_ADDR)", self.config.bind, port)

    def _serve_dns(self) -> None:
        """ports { dns }: mesh names over UDP and TCP on addresses { dns } (agent/dns.py)."""
        port = self.config.dns_listener
        if not port:
            return
        host = self.config.dns_addr or "127.0.0.1"   # Consul's client_addr: never an open resolver by default
        try:
            self.dns.listen(host, port)
        except OSError as e:
            msg = (f"cannot serve DNS on {host}:{port}: {e.strerror}; set ports {{ dns = N }} to another "
                   "port, or 0 for none")
            if self.config.dns_port is None:   # -dev-connect's default: everything else still serves
                log.warning("%s", msg)
                return
            raise OSError(e.errno, msg) from None
        log.info("DNS on %s:%d (<service>.virtual.yurt, <service>.service.yurt)", host, port)

    def _start_client_when_serving(self) -> None:
        while self._http is not None and not self._http.started and not self._http.should_exit:
            threading.Event().wait(0.05)
        if self._http is not None and self._http.started:
            self.client.start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
        for side in (self._uds, self._consul):
            if side is not None:
                side.should_exit = True

    def shutdown(self) -> None:
        for side in (self._uds, self._consul):
            if side is not None:
                side.should_exit = True
        self.leaf_certs.stop()
        if getattr(self, "_checks", None) is not None:
            self._checks.stop()
        if self.client:
            # dev mode keeps nothing: its allocations go with it. Otherwise tasks keep running and a
            # restarted agent re-attaches to them.
            self.client.stop(destroy_allocs=self.config.dev)
        self.dns.close()
        if self.server:
            self.server.stop()
        if self.store is not None:
            self.store.close()
        self.log_monitor.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _listen_tcp(host: str, port: int, fix: str, what: str = "listen on") -> socket.socket:
    """A listening TCP socket on host:port for uvicorn (`sockets=`); OSError whose strerror is a
    sentence: what could not be done, why (the name does not resolve, the address is not this
    host's, the port is taken) and `fix`."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot {what} {host}:{port}: {str(e.strerror).lower()}; {fix}") from None
    sock.listen(2048)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_exit` the moment it is told to stop (SIGINT/SIGTERM)."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            self._on_exit()
        super().handle_exit(sig, frame)


class _Terminated(Exception):
    """SIGTERM: stop the agent in order."""


def _terminate(signum, frame) -> None:
    raise _Terminated()


GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic GC's thresholds in a server agent (CPython's: 700, 10, 10). A server holds a large
heap of long-lived rows (5,000 nodes, their allocations) and allocates fast while it schedules:
at 700 the collector ran ~900 times for 4,000 placements and took over half the scheduling time
(bench/scheduler.py, server path, 5,000 nodes: 1,000 -> 2,070 placements/s with these). The
rows have no cycles; what the GC finds is rare, and still found, only later."""


def _server_gc() -> None:
    """The state just loaded stays: out of the collector's way (gc.freeze), and collections rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _open_store(config: AgentConfig):
    """SQLite in the data dir (one server), or etcd (`server { store { etcd { } } }`)."""
    if config.etcd is None:
        from yurt.state import StateStore
        return StateStore(str(config.data_dir / "server" / "state.db"))
    from yurt.state.etcd_store import EtcdStateStore
    e = config.etcd
    return EtcdStateStore(e.endpoints, prefix=e.prefix, ca_file=e.ca_file, cert_file=e.cert_file,
                          key_file=e.key_file, lease_ttl=e.lease_ttl)


def _http(address: str, tls: bool = False) -> str:
    return address if "://" in address else f"{'https' if tls else 'http'}://{address}"


def _outgoing_tls(config: AgentConfig) -> TLSConfig:
    t = config.tls
    return TLSConfig(ca_cert=t.ca_file, client_cert=t.cert_file if t.key_file else "",
                     client_key=t.key_file if t.cert_file else "",
                     check_hostname=False,   # as Nomad's verify_server_hostname = false: ca_file signs it
                     fix="tls { ca_file } in the agent's config", ca_setting="ca_file",
                     cert_fix="tls { cert_file  key_file } in the agent's config")


def _serving_tls(config: AgentConfig) -> dict:
    """uvicorn's ssl options for the TCP listener (the unix socket stays plain HTTP: it is local
    and its file permissions guard it)."""
    t = config.tls
    if not t.http:
        return {}
    options: dict = {"ssl_certfile": t.cert_file, "ssl_keyfile": t.key_file}
    if t.ca_file:
        options["ssl_ca_certs"] = t.ca_file
    if t.verify_https_client:
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def _with_token(client: YurtClient, token: str) -> YurtClient:
    client.token = token
    return client
