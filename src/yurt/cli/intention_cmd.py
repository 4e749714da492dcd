"""`yurt intention create|list|get|check|delete`, as `consul intention ...`.

`check` exits 0 when the connection is allowed and 2 when it is denied (1 on errors), so
scripts can test it.
"""

from __future__ import annotations

import json

import click

from yurt.errors import NotFound

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo, kv, print_table
from .output import fail

EXIT_DENIED = 2


@click.group("intention", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def intention_group() -> None:
    """Service mesh intentions: which service may connect to which."""


def _action(ix: dict) -> str:
    return ix.get("Action") or ("L7 permissions" if ix.get("Permissions") else "")


@intention_group.command("create")
@click.argument("source")
@click.argument("destination")
@click.option("-allow", "--allow", "action", flag_value="allow", default=True, help="Allow (the default).")
@click.option("-deny", "--deny", "action", flag_value="deny", help="Deny.")
@click.option("-description", "--description", default="", help="A description.")
@click.option("-replace", "--replace", is_flag=True, help="Replace an existing intention for the pair.")
@address_option
@api_errors
def create_cmd(source: str, destination: str, action: str, description: str, replace: bool,
               address: str | None) -> None:
    """Create an intention SOURCE => DESTINATION (service names, or * for any)."""
    with connect(address) as client:
        if not replace:
            try:
                client.intention_get(source, destination)
            except NotFound:
                pass
            else:
                fail(f"an intention {source} => {destination} already exists; use -replace to replace it")
        client.intention_upsert(source, destination, action, description)
    echo(f"Created: {source} => {destination} ({action})")


@intention_group.command("list")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the intentions as JSON.")
@address_option
@api_errors
def list_cmd(as_json: bool, address: str | None) -> None:
    """List intentions in evaluation order (highest precedence first)."""
    with connect(address) as client:
        intentions, _ = client.intentions()
    if as_json:
        echo(json.dumps(intentions, indent=4))
    elif not intentions:
        echo("No intentions found")
    else:
        print_table(["Source", "Action", "Destination", "Precedence"],
                    [(i["SourceName"], _action(i), i["DestinationName"], i["Precedence"]) for i in intentions])


@intention_group.command("get")
@click.argument("source")
@click.argument("destination")
@address_option
@api_errors
def get_cmd(source: str, destination: str, address: str | None) -> None:
    """Show the intention SOURCE => DESTINATION."""
    with connect(address) as client:
        try:
            ix = client.intention_get(source, destination)
        except NotFound:
            fail(f"no intention {source} => {destination}")
    echo(kv([("Source", ix["SourceName"]), ("Destination", ix["DestinationName"]),
             ("Action", _action(ix)), ("Precedence", ix["Precedence"]),
             ("Description", ix.get("Description")), ("Created At", ix.get("CreatedAt")),
             ("Updated At", ix.get("UpdatedAt"))]))


@intention_group.command("check")
@click.argument("source")
@click.argument("destination")
@address_option
@api_errors
def check_cmd(source: str, destination: str, address: str | None) -> None:
    """Would SOURCE be allowed to connect to DESTINATION? Prints Allowed (exit 0) or Denied (exit 2)."""
    with connect(address) as client:
        result = client.intention_check(source, destination)
    if result.get("Allowed"):
        echo("Allowed")
        return
    echo("Denied")
    raise SystemExit(EXIT_DENIED)


@intention_group.command("delete")
@click.argument("source")
@click.argument("destination")
@address_option
@api_errors
def delete_cmd(source: str, destination: str, address: str | None) -> None:
    """Delete the intention SOURCE => DESTINATION."""
    with connect(address) as client:
        try:
            client.intention_get(source, destination)
        except NotFound:
            fail(f"no intention {source} => {destination}")
        client.intention_delete(source, destination)
    echo("Intention deleted.")
