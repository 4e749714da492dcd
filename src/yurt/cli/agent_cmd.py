"""`yurt agent`: run a server and/or client (`-dev` for both in one process, state in a temp dir)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .output import fail, out


@click.command("agent")
@click.option("-dev", "--dev", is_flag=True, help="Server and client in one process; state in a temporary directory.")
@click.option("-dev-connect", "--dev-connect", "dev_connect", is_flag=True,
              help="Like -dev, for the service mesh (Connect): root, bridge networking.")
@click.option("-config", "--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="Agent config file (HCL or JSON); repeatable.")
@click.option("-data-dir", "--data-dir", "data_dir", type=click.Path(file_okay=False),
              help="Where state is kept across restarts.")
@click.option("-bind", "--bind", help="Address to listen on (default 127.0.0.1; -dev-connect: 0.0.0.0).")
@click.option("-network-interface", "--network-interface", "network_interface",
              help="Interface whose address the node advertises (default: the bound address, or the "
                   "default route's interface).")
@click.option("-http-port", "--http-port", "http_port", type=int, help="HTTP API port (default 4646).")
@click.option("-node", "--node", "node_name", help="Node name (default: the hostname).")
@click.option("-dc", "--dc", "datacenter", help="Datacenter (default dc1).")
@click.option("-region", "--region", help="Region (default global).")
@click.option("-server", "--server", "server_flag", is_flag=True, help="Enable the server.")
@click.option("-client", "--client", "client_flag", is_flag=True, help="Enable the client.")
@click.option("-servers", "--servers", help="Comma-separated server addresses for a client-only agent.")
@click.option("-log-level", "--log-level", "log_level", help="DEBUG, INFO, WARN or ERROR.")
@click.option("-default-intention-policy", "--default-intention-policy", "default_intention_policy",
              type=click.Choice(["allow", "deny"]),
              help="What service mesh intentions decide when none matches (default allow).")
@click.option("-leaf-cert-ttl", "--leaf-cert-ttl", "leaf_cert_ttl",
              help='Lifetime of Connect leaf certificates, e.g. "72h" (the default) or "2m".')
@click.option("-acl-enabled", "--acl-enabled", "acl_enabled", is_flag=True,
              help="Turn ACLs on (as acl { enabled = true }); with -dev, bootstrap at start.")
def agent_cmd(dev: bool, dev_connect: bool, config_files: tuple[str, ...], data_dir: str | None,
              bind: str | None, network_interface: str | None, http_port: int | None, node_name: str | None,
              datacenter: str | None,
              region: str | None, server_flag: bool, client_flag: bool, servers: str | None,
              log_level: str | None, default_intention_policy: str | None,
              leaf_cert_ttl: str | None, acl_enabled: bool = False) -> None:
    """Run a Yurt agent."""
    from yurt.agent.agent import Agent
    from yurt.agent.config import AgentConfig, dev_config, load_file
    from yurt.errors import ConfigError

    cfg = dev_config() if (dev or dev_connect) else AgentConfig(server=False, client=False)
    cfg.dev_connect = dev_connect
    if dev_connect:
        cfg.bind = "0.0.0.0"   # as Nomad's: the dashboard can be reached from other machines
    try:
        for path in config_files:
            cfg = load_file(path, cfg)
        if server_flag:
            cfg.server = True
        if client_flag:
            cfg.client = True
        if data_dir:
            cfg.data_dir = Path(data_dir)
            cfg.dev = False if not (dev or dev_connect) else cfg.dev
        for name, value in (("bind", bind), ("network_interface", network_interface), ("http_port", http_port),
                            ("name", node_name),
                            ("datacenter", datacenter), ("region", region), ("log_level", log_level),
                            ("default_intention_policy", default_intention_policy),
                            ("leaf_cert_ttl", leaf_cert_ttl)):
            if value is not None:
                setattr(cfg, name, value)
        if acl_enabled:
            cfg.acl_enabled = True
        if servers:
            cfg.servers = [s.strip() for s in servers.split(",") if s.strip()]
        if data_dir and (dev or dev_connect):
            cfg.dev = False  # -dev with -data-dir: dev presets, but keep the state
        agent = Agent(cfg)
    except ConfigError as e:
        fail(str(e))
    level = {"WARN": "WARNING"}.get(cfg.log_level.upper(), cfg.log_level.upper())
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn reports blocking queries still open at shutdown as an error; they are expected
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    for warning in cfg.warnings:
        logging.getLogger("yurt.agent").warning("%s", warning)
    if cfg.dev and not cfg.acl_enabled:
        logging.getLogger("yurt.agent").info("ACLs are disabled in -dev mode: every request may do "
                                             "everything (turn them on with -acl-enabled)")
    acl_line = ""
    if agent.bootstrap_secret:
        acl_line = f"   ACL Token: {agent.bootstrap_secret} (bootstrap, management)\n"
    out.print(f"==> Yurt agent configuration:\n\n"
              f"       Client: {str(cfg.client).lower()}\n"
              f"    Data Dir: {cfg.data_dir}{' (temporary)' if cfg.dev else ''}\n"
              f"   Datacenter: {cfg.datacenter}\n"
              f"        Region: {cfg.region}\n"
              f"       Server: {str(cfg.server).lower()}\n"
              f"      Address: {cfg.address}\n{acl_line}\n==> Yurt agent started! Log data will stream in below:\n")
    try:
        agent.run()
    except OSError as e:   # a sentence in strerror (agent._listen_tcp), else the error itself
        fail(e.strerror or str(e))
    out.print("==> Yurt agent stopped")
