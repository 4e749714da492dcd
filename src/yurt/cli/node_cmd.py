"""`yurt node status [NODE]` (command/node_status.go)."""

from __future__ import annotations

import json

import click

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo, heading, kv, print_table, resolve, short
from .status import alloc_rows

SUMMARY_ATTRIBUTES = ("kernel.name", "kernel.version", "os.name", "os.version", "cpu.arch", "cpu.numcores",
                      "memory.totalbytes", "unique.hostname", "unique.network.ip-address", "nomad.version")


@click.group("node", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def node_group() -> None:
    """Inspect client nodes."""


def _row(n: dict, verbose: bool) -> tuple:
    return (short(n["ID"], verbose), n.get("Datacenter"), n.get("Name"), n.get("NodeClass") or "<none>",
            bool(n.get("Drain")), n.get("SchedulingEligibility"), n.get("Status"))


HEADERS = ["ID", "DC", "Name", "Class", "Drain", "Eligibility", "Status"]


@node_group.command("status")
@click.argument("node_id", required=False, metavar="[NODE]")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs and every attribute.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the node(s) as JSON.")
@address_option
@api_errors
def node_status_cmd(node_id: str | None, verbose: bool, as_json: bool, address: str | None) -> None:
    """List client nodes, or show one (NODE may be a unique prefix of its ID)."""
    with connect(address) as client:
        if not node_id:
            nodes = client.nodes()
            if as_json:
                echo(json.dumps(nodes, indent=4))
            elif not nodes:
                echo("No nodes registered")
            else:
                print_table(HEADERS, [_row(n, verbose) for n in nodes])
            return
        stub = resolve("node", node_id, client.nodes(prefix=node_id), HEADERS, lambda n: _row(n, verbose),
                       missing=f'No node(s) with prefix "{node_id}" found')
        node = client.node(stub["ID"])
        allocs, _ = client.node_allocations(stub["ID"])
    if as_json:
        echo(json.dumps(node, indent=4))
        return
    drivers = node.get("Drivers") or {}
    healthy = sorted(d for d, info in drivers.items() if info.get("Detected") and info.get("Healthy"))
    unhealthy = sorted(d for d, info in drivers.items() if d not in healthy)
    res = node.get("NodeResources") or {}
    echo(kv([
        ("ID", short(node["ID"], verbose)), ("Name", node.get("Name")), ("Node Pool", node.get("NodePool")),
        ("Class", node.get("NodeClass")), ("DC", node.get("Datacenter")), ("Drain", bool(node.get("Drain"))),
        ("Eligibility", node.get("SchedulingEligibility")), ("Status", node.get("Status")),
        ("Address", node.get("HTTPAddr")),
        ("Driver Status", ",".join(healthy) + (f" (unhealthy: {','.join(unhealthy)})" if unhealthy else "")),
    ]))
    live = [a for a in allocs if a.get("DesiredStatus") == "run" and a.get("ClientStatus") in ("pending", "running")]
    cpu = sum(((t.get("Cpu") or {}).get("CpuShares", 0)) for a in live
              for t in ((a.get("AllocatedResources") or {}).get("Tasks") or {}).values())
    mem = sum(((t.get("Memory") or {}).get("MemoryMB", 0)) for a in live
              for t in ((a.get("AllocatedResources") or {}).get("Tasks") or {}).values())
    disk = sum(((a.get("AllocatedResources") or {}).get("Shared") or {}).get("DiskMB", 0) for a in live)
    echo()
    heading("Allocated Resources")
    print_table(["CPU", "Memory", "Disk"],
                [(f"{cpu}/{(res.get('Cpu') or {}).get('CpuShares', 0)} MHz",
                  f"{mem} MiB/{(res.get('Memory') or {}).get('MemoryMB', 0)} MiB",
                  f"{disk} MiB/{(res.get('Disk') or {}).get('DiskMB', 0)} MiB")])
    echo()
    heading("Drivers")
    print_table(["Driver", "Detected", "Healthy", "Description"],
                [(d, bool(i.get("Detected")), bool(i.get("Healthy")), i.get("HealthDescription"))
                 for d, i in sorted(drivers.items())])
    attrs = node.get("Attributes") or {}
    shown = sorted(attrs) if verbose else [k for k in SUMMARY_ATTRIBUTES if k in attrs]
    if shown:
        echo()
        heading("Attributes")
        echo(kv([(k, attrs[k]) for k in shown]))
    echo()
    heading("Allocations")
    if not allocs:
        echo("No allocations placed")
        return
    for a in allocs:
        a.setdefault("JobVersion", (a.get("Job") or {}).get("Version", 0))
    headers, rows = alloc_rows(allocs, verbose)
    print_table(headers, rows)


__all__ = ["node_group"]
