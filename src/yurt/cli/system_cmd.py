"""`yurt system gc`: Nomad's forced garbage collection."""

from __future__ import annotations

import click

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo


@click.group("system", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def system_group() -> None:
    """Cluster-wide maintenance."""


@system_group.command("gc")
@address_option
@api_errors
def system_gc_cmd(address: str | None) -> None:
    """Collect every terminal evaluation and allocation and every finished stopped job now."""
    with connect(address) as client:
        res = client.put("/v1/system/gc")
    echo(f"Collected {res['Jobs']} jobs, {res['Evals']} evaluations, {res['Allocs']} allocations, "
         f"{res.get('Deployments', 0)} deployments and {res.get('Nodes', 0)} nodes")
