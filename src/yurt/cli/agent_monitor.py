"""`yurt monitor`: follow an agent's log lines as it writes them (Nomad's `nomad monitor`,
command/agent_monitor.go), over `/v1/agent/monitor`. Ctrl-C ends it with exit 0."""

from __future__ import annotations

import sys

import click

from .flags import NomadCommand
from .format import address_option, api_errors, connect
from .output import fail

LEVELS = ("trace", "debug", "info", "warn", "error")


@click.command("monitor", cls=NomadCommand, context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.option("-log-level", "--log-level", "log_level", default="info", metavar="LEVEL",
              help="The lowest level of the lines shown: trace, debug, info, warn or error (default info).")
@click.option("-json", "--json", "as_json", is_flag=True, help="One JSON object per line (@level, @message, "
              "@module, @timestamp).")
@click.option("-log-include-location", "--log-include-location", "location", is_flag=True,
              help="Add the source file and line of each log call.")
@click.option("-node-id", "--node-id", "node_id", default="", metavar="ID",
              help="Follow the agent of this client node instead (the server forwards there).")
@click.option("-server-id", "--server-id", "server_id", default="", metavar="NAME",
              help='The server to follow: its name, or "leader"; the agent asked must be that server.')
@address_option
@api_errors
def monitor_cmd(log_level: str, as_json: bool, location: bool, node_id: str, server_id: str,
                address: str | None) -> None:
    """Stream the log lines of a running agent until interrupted (Ctrl-C: exit 0) or the agent
    stops (exit 1, as Nomad's)."""
    if log_level.strip().lower() not in LEVELS + ("warning",):
        fail(f'Unknown log level "{log_level}": use one of {", ".join(LEVELS)}')
    if node_id and server_id:
        fail("-node-id and -server-id cannot be used together: pick the one agent to follow")
    out = sys.stdout.buffer
    try:
        with connect(address) as client:
            for chunk in client.agent_monitor(log_level=log_level, log_json=as_json, node_id=node_id,
                                              server_id=server_id, include_location=location):
                out.write(chunk)
                out.flush()
    except KeyboardInterrupt:
        raise SystemExit(0) from None
    except BrokenPipeError:
        raise SystemExit(0) from None
    fail("Remote side ended the monitor! This usually means that the remote side has exited or crashed.")
