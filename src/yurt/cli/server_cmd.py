"""`yurt server members` (command/server_members.go): every server, its address, whether it
leads and whether it is alive."""

from __future__ import annotations

import json

import click

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo, print_table

HEADERS = ["Name", "Address", "Port", "Status", "Leader", "Build", "Datacenter", "Region"]


@click.group("server", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def server_group() -> None:
    """The cluster's servers."""


@server_group.command("members")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the members as JSON.")
@click.option("-verbose", "--verbose", is_flag=True, help="Also each member's tags.")
@address_option
@api_errors
def server_members_cmd(as_json: bool, verbose: bool, address: str | None) -> None:
    """List the servers: name, address, alive or failed, and which one leads."""
    with connect(address) as client:
        members = client.get("/v1/agent/members")[0].get("Members") or []
    if as_json:
        echo(json.dumps(members, indent=4))
        return
    headers = HEADERS + (["Tags"] if verbose else [])
    rows = []
    for m in members:
        tags = m.get("Tags") or {}
        row = [m.get("Name", ""), m.get("Addr", ""), m.get("Port", ""), m.get("Status", ""),
               str(bool(m.get("Leader"))).lower(), tags.get("build", ""), tags.get("dc", ""), tags.get("region", "")]
        if verbose:
            row.append(",".join(f"{k}={v}" for k, v in sorted(tags.items())))
        rows.append(row)
    print_table(headers, rows)
