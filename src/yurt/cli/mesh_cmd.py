"""`yurt mesh explain SOURCE DESTINATION`: is the mesh path from SOURCE to DESTINATION working,
and if not, which hop is wrong, why, and what fixes it.

The agent probes the path itself (`GET /v1/mesh/explain`): both services registered and
healthy, the intention that decides, the source sidecar's upstream listener, the destination
sidecar reachable from the source's namespace, a mutual TLS handshake with it (the leaves
unexpired and from the active root), the mesh-only firewall, the app listening. One row per
hop (per instance); `-json` prints the answer as the API gives it.

Exit codes: 0 the whole path works, 1 a hop is wrong (or the agent cannot be asked), 2 bad
usage, an unknown service name included (the message names it and suggests close names).
"""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from yurt.errors import InvalidInput, NotFound, Unreachable, YurtError

from .flags import NomadCommand, NomadGroup
from .format import address_option, api_message, connect, echo, out, render
from .output import EXIT_ERROR, fail

EXIT_BROKEN = 1
EXIT_USAGE = 2
STYLE = {"ok": "green", "wrong": "bold red", "skipped": "yellow"}


class _UsageExit2(NomadCommand):
    """A usage error exits 2, as the command's help says (the CLI's default is 1)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            e.show()
            raise SystemExit(EXIT_USAGE) from None


@click.group("mesh", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def mesh_group() -> None:
    """Service mesh diagnostics."""


@mesh_group.command("explain", cls=_UsageExit2)
@click.argument("source")
@click.argument("destination")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@address_option
def explain_cmd(source: str, destination: str, as_json: bool, address: str | None) -> None:
    """Check every hop from service SOURCE to service DESTINATION, live.

    Exits 0 when the whole path works, 1 when a hop is wrong, 2 on bad usage (an unknown
    service name included)."""
    try:
        with connect(address) as client:
            result, _ = client.get("/v1/mesh/explain", source=source, destination=destination)
    except Unreachable as e:
        fail(str(e))
    except (NotFound, InvalidInput) as e:
        fail(api_message(e), EXIT_USAGE)
    except YurtError as e:
        fail(api_message(e))
    if as_json:
        echo(json.dumps(result, indent=4))
    else:
        show(result)
    raise SystemExit(0 if result.get("OK") else EXIT_BROKEN)


def show(result: dict) -> None:
    """A table, one row per hop: wrapped to a terminal's width, one line per row otherwise (as
    the other tables, for grep)."""
    rows = result.get("Rows") or []
    term = out.is_terminal
    t = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    t.add_column("Hop", no_wrap=True)
    t.add_column("Status", no_wrap=True)
    t.add_column("Where", no_wrap=not term, overflow="fold" if term else "ignore")
    for name, ratio in (("Detail", 3), ("Fix", 2)):
        t.add_column(name, no_wrap=not term, overflow="fold" if term else "ignore", ratio=ratio if term else None)
    for r in rows:
        status = r.get("Status", "")
        t.add_row(Text(r.get("Hop", "")), Text(status, style=STYLE.get(status, "")), Text(r.get("Where", "")),
                  Text(r.get("Detail", "")), Text(r.get("Fix", "") or "-"))
    if term:
        out.print(t)
    else:
        echo(render(t))
    src, dst = result.get("Source", ""), result.get("Destination", "")
    wrong = [r for r in rows if r.get("Status") == "wrong"]
    echo()
    if result.get("OK"):
        echo(f"The path {src} -> {dst} works.")
    elif wrong:
        echo(f"The path {src} -> {dst} is broken: {len(wrong)} hop{'s' if len(wrong) != 1 else ''} wrong.")
    else:
        echo(f"The path {src} -> {dst} could not be checked to the end (see the skipped hops).")


__all__ = ["mesh_group", "EXIT_ERROR"]
