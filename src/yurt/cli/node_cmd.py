"""`yurt node status [NODE]`, `yurt node drain`, `yurt node eligibility` (command/node_status.go,
node_drain.go, node_eligibility.go).

NODE is a node ID, a unique prefix of one, or a node name; `-self` is the node of the agent the
command talks to.
"""

from __future__ import annotations

import json

import click

from yurt.api.client import YurtClient

from .flags import NomadGroup
from .format import (address_option, api_errors, connect, echo, fmt_iso, heading, kv, print_table, resolve,
                     short)
from .output import EXIT_ERROR, err, fail
from .status import alloc_rows

SUMMARY_ATTRIBUTES = ("kernel.name", "kernel.version", "os.name", "os.version", "cpu.arch", "cpu.numcores",
                      "memory.totalbytes", "unique.hostname", "unique.network.ip-address", "nomad.version")


@click.group("node", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def node_group() -> None:
    """Inspect client nodes, drain them, set their scheduling eligibility."""


def _row(n: dict, verbose: bool) -> tuple:
    return (short(n["ID"], verbose), n.get("Datacenter"), n.get("Name"), n.get("NodeClass") or "<none>",
            bool(n.get("Drain")), n.get("SchedulingEligibility"), n.get("Status"))


HEADERS = ["ID", "DC", "Name", "Class", "Drain", "Eligibility", "Status"]


@node_group.command("status")
@click.argument("node_id", required=False, metavar="[NODE]")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs and every attribute.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the node(s) as JSON.")
@click.option("-self", "--self", "self_", is_flag=True, help="Show the node of the agent the command talks to.")
@click.option("-stats", "--stats", "stats", is_flag=True, help="Also show the host's resource utilization.")
@address_option
@api_errors
def node_status_cmd(node_id: str | None, verbose: bool, as_json: bool, self_: bool, stats: bool,
                    address: str | None) -> None:
    """List client nodes, or show one (NODE may be a unique prefix of its ID)."""
    with connect(address) as client:
        if self_:
            node_id = find_node(client, node_id, True)["ID"]
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
        host = client.request("GET", "/v1/client/stats", params={"node_id": stub["ID"]}).json() if stats else None
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
        *_drain_rows(node),
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
    if host is not None:
        echo()
        heading("Host Resource Utilization")
        mem, disk = host["Memory"], (host.get("DiskStats") or [{}])[0]
        busy = sum(c["Total"] - c["Idle"] for c in host["CPU"])
        total = sum(c["Total"] for c in host["CPU"]) or 1
        print_table(["CPU", "Memory", "Disk"],
                    [(f"{100 * busy / total:.1f}% busy since boot ({len(host['CPU'])} CPUs)",
                      f"{mem['Used'] // 2**20} MiB/{mem['Total'] // 2**20} MiB",
                      f"{disk.get('Used', 0) // 2**20} MiB/{disk.get('Size', 0) // 2**20} MiB")])
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
    events = node.get("Events") or []
    if events:
        echo()
        heading("Node Events")
        print_table(["Time", "Subsystem", "Message", "Details"],
                    [(fmt_iso(e.get("Timestamp")), e.get("Subsystem"), e.get("Message"),
                      ", ".join(f"{k}: {v}" for k, v in sorted((e.get("Details") or {}).items())))
                     for e in reversed(events)])
    echo()
    heading("Allocations")
    if not allocs:
        echo("No allocations placed")
        return
    for a in allocs:
        a.setdefault("JobVersion", (a.get("Job") or {}).get("Version", 0))
    headers, rows = alloc_rows(allocs, verbose)
    print_table(headers, rows)


def _drain_rows(node: dict) -> list[tuple[str, object]]:
    strategy, last = node.get("DrainStrategy"), node.get("LastDrain")
    rows: list[tuple[str, object]] = []
    if strategy:
        deadline = strategy.get("ForceDeadline") or ""
        rows.append(("Drain Deadline", "none" if deadline.startswith("0001-") else fmt_iso(deadline)))
        rows.append(("Drain Ignore System Jobs", bool(strategy.get("IgnoreSystemJobs"))))
    if last:
        rows.append(("Last Drain", f'{last.get("Status")} (started {fmt_iso(last.get("StartedAt"))}, '
                                   f'updated {fmt_iso(last.get("UpdatedAt"))})'))
    return rows


# -- finding the node ---------------------------------------------------------------------------
def find_node(client: YurtClient, ident: str | None, self_: bool) -> dict:
    """The node named by `ident` (an ID, a unique ID prefix, or a node name), or with `-self` the
    node of the agent at the address. Exits 1 with a message when there is none or several."""
    if self_ and ident:
        fail("pass either NODE or -self, not both")
    if self_:
        me = client.agent_self()
        node_id = ((me.get("stats") or {}).get("client") or {}).get("node_id") or ""
        if not node_id:
            fail(f"-self: the agent at {client.address} runs no client, so it has no node of its own; "
                 "name the node instead (yurt node status lists them)")
        return client.node(node_id)
    if not ident:
        fail("a node is required: pass NODE (an ID, a unique ID prefix or a node name) or -self")
    nodes = client.nodes()
    rows = [n for n in nodes if n["ID"] == ident or n["ID"].startswith(ident)]
    if not rows:
        rows = [n for n in nodes if n.get("Name") == ident]
    if len(rows) > 1 and not any(n["ID"] == ident for n in rows):
        echo(f'Node "{ident}" matched multiple nodes; give more of the ID\n')
        print_table(HEADERS, [_row(n, True) for n in rows])
        raise SystemExit(EXIT_ERROR)
    if not rows:
        fail(f'No node with ID, ID prefix or name "{ident}" found (yurt node status lists the nodes)')
    stub = next((n for n in rows if n["ID"] == ident), rows[0])
    return client.node(stub["ID"])


def _confirm(question: str, refused: str, yes: bool) -> None:
    """Ask `question` on a terminal; without one, refuse unless -yes was given."""
    if yes:
        return
    if not click.get_text_stream("stdin").isatty():
        fail(f"{refused} without confirmation: the input is not a terminal to ask on; pass -yes to confirm")
    if not click.confirm(question, default=False):
        echo("Canceled: nothing changed")
        raise SystemExit(EXIT_ERROR)


def _last_eligible_warning(client: YurtClient, node: dict) -> str:
    """Why this node's allocations may have nowhere to go: no other ready, eligible, not draining
    node in its datacenter and node pool. "" when there is one (or nothing to move)."""
    allocs, _ = client.node_allocations(node["ID"])
    live = [a for a in allocs if a.get("DesiredStatus") == "run" and a.get("ClientStatus") in ("pending", "running")]
    if not live:
        return ""
    others = [n for n in client.nodes() if n["ID"] != node["ID"] and n.get("Status") == "ready"
              and n.get("SchedulingEligibility") == "eligible" and not n.get("Drain")
              and n.get("Datacenter") == node.get("Datacenter") and n.get("NodePool") == node.get("NodePool")]
    if others:
        return ""
    n = len(live)
    return (f'node "{node.get("Name")}" ({short(node["ID"])}) is the last eligible node in datacenter '
            f'"{node.get("Datacenter")}", node pool "{node.get("NodePool")}": no other node can take its {n} '
            f"running allocation{'s' if n != 1 else ''}. Migrated allocations will stay blocked (and stopped) "
            "until another node becomes eligible; the drain then exits 2.")


# -- yurt node drain ----------------------------------------------------------------------------
DRAIN_HELP = """Drain a node (-enable) or cancel its drain (-disable).

NODE is a node ID, a unique ID prefix or a node name; -self drains the node of the agent the
command talks to. Draining makes the node ineligible for new allocations and moves its
allocations to other nodes, at most each group's `migrate { max_parallel }` at a time, waiting
for the replacements to be healthy; batch allocations are left to finish. At the deadline
(default 1h) whatever is left is stopped at once. A completed drain leaves the node ineligible:
`yurt node eligibility -enable NODE` makes it take work again. -disable cancels a drain and makes
the node eligible again (unless -keep-ineligible).

Without -detach, -enable follows the drain until it completes.

\b
Exit codes:
  0  done: the drain is set (-detach), canceled (-disable), or complete with every migrated
     allocation placed elsewhere
  1  an error: unknown node, bad flags or deadline, no confirmation, the drain was canceled
     while following it
  2  the drain completed, but some migrated allocations could not be placed on any other node:
     their jobs are blocked (`yurt job status JOB` shows the placement failures)
"""


@node_group.command("drain", help=DRAIN_HELP)
@click.argument("node_id", required=False, metavar="NODE")
@click.option("-enable", "--enable", is_flag=True, help="Start draining the node.")
@click.option("-disable", "--disable", is_flag=True, help="Cancel the node's drain.")
@click.option("-deadline", "--deadline", metavar="DURATION",
              help='How long allocations have to move before what is left is stopped (default "1h").')
@click.option("-no-deadline", "--no-deadline", "no_deadline", is_flag=True, help="Drain without a deadline.")
@click.option("-force", "--force", is_flag=True, help="Stop every allocation on the node now (no migration pacing).")
@click.option("-ignore-system", "--ignore-system", "ignore_system", is_flag=True,
              help="Leave system job allocations on the node.")
@click.option("-keep-ineligible", "--keep-ineligible", "keep_ineligible", is_flag=True,
              help="With -disable: leave the node ineligible for scheduling.")
@click.option("-meta", "--meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata recorded with the drain (repeatable).")
@click.option("-self", "--self", "self_", is_flag=True, help="The node of the agent the command talks to.")
@click.option("-yes", "--yes", "-y", "yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("-detach", "--detach", is_flag=True, help="Set the drain and return at once.")
@click.option("-monitor", "--monitor", is_flag=True, help="Follow a drain already under way; change nothing.")
@address_option
@api_errors
def node_drain_cmd(node_id: str | None, enable: bool, disable: bool, deadline: str | None, no_deadline: bool,
                   force: bool, ignore_system: bool, keep_ineligible: bool, meta: tuple[str, ...], self_: bool,
                   yes: bool, detach: bool, monitor: bool, address: str | None) -> None:
    from .drain_monitor import monitor_drain

    spec = _drain_flags(enable, disable, deadline, no_deadline, force, ignore_system, keep_ineligible, meta,
                        detach, monitor)
    metadata = _meta(meta)
    with connect(address) as client:
        node = find_node(client, node_id, self_)
        nid = node["ID"]
        if monitor:
            raise SystemExit(monitor_drain(client, nid))
        if disable:
            _confirm(f'Are you sure you want to disable drain mode for node "{nid}"?',
                     f'refusing to cancel the drain of node "{nid}"', yes)
            client.node_drain(nid, None, mark_eligible=not keep_ineligible)
            echo(f'Node "{nid}" drain strategy unset')
            return
        warning = _last_eligible_warning(client, node)
        if warning:
            err.print(f"[bold yellow]Warning:[/] {warning}", markup=True, highlight=False)
        _confirm(f'Are you sure you want to enable drain mode for node "{nid}"?',
                 f'refusing to drain node "{nid}"', yes)
        before, _ = client.node_allocations(nid)
        client.node_drain(nid, spec, meta=metadata)
        echo(f'Node "{nid}" drain strategy set')
        if detach:
            return
        raise SystemExit(monitor_drain(client, nid, before, ignore_system))


def _drain_flags(enable: bool, disable: bool, deadline: str | None, no_deadline: bool, force: bool,
                 ignore_system: bool, keep_ineligible: bool, meta: tuple[str, ...], detach: bool,
                 monitor: bool) -> dict | None:
    """Check the flags go together; the DrainSpec -enable asks for (None otherwise)."""
    from yurt.structs import parse_duration

    if monitor:
        given = [f for f, on in (("-enable", enable), ("-disable", disable), ("-detach", detach),
                                 ("-deadline", deadline is not None), ("-no-deadline", no_deadline),
                                 ("-force", force), ("-ignore-system", ignore_system),
                                 ("-keep-ineligible", keep_ineligible), ("-meta", bool(meta))) if on]
        if given:
            fail(f"-monitor follows a drain under way and changes nothing: it cannot be used with {given[0]}")
        return None
    if enable == disable:
        fail("either the -enable or the -disable flag must be set, unless using -monitor")
    if disable:
        for flag, on in (("-deadline", deadline is not None), ("-no-deadline", no_deadline), ("-force", force),
                         ("-ignore-system", ignore_system), ("-meta", bool(meta)), ("-detach", detach)):
            if on:
                fail(f"{flag} only applies to -enable")
        return None
    if keep_ineligible:
        fail("-keep-ineligible only applies to -disable (a draining node is always ineligible)")
    chosen = [f for f, on in (("-deadline", deadline is not None), ("-no-deadline", no_deadline),
                              ("-force", force)) if on]
    if len(chosen) > 1:
        fail(f"{chosen[0]} and {chosen[1]} cannot be used together")
    ns = 3600 * 10**9   # Nomad's default deadline: 1h
    if deadline is not None:
        try:
            ns = parse_duration(deadline)
        except ValueError as e:
            fail(f"invalid -deadline {deadline!r}: {e}")
        if ns <= 0:
            fail(f'invalid -deadline {deadline!r}: it must be positive, like "30m"; use -no-deadline to drain '
                 "without one, or -force to stop everything now")
    elif no_deadline:
        ns = 0
    elif force:
        ns = -1
    return {"Deadline": ns, "IgnoreSystemJobs": ignore_system}


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"invalid -meta {pair!r}: use KEY=VALUE")
        out[key] = value
    return out


# -- yurt node eligibility ----------------------------------------------------------------------
@node_group.command("eligibility")
@click.argument("node_id", required=False, metavar="NODE")
@click.option("-enable", "--enable", is_flag=True, help="Let the scheduler place allocations on the node.")
@click.option("-disable", "--disable", is_flag=True, help="Place no new allocations on the node (running ones stay).")
@click.option("-self", "--self", "self_", is_flag=True, help="The node of the agent the command talks to.")
@address_option
@api_errors
def node_eligibility_cmd(node_id: str | None, enable: bool, disable: bool, self_: bool, address: str | None) -> None:
    """Set whether the scheduler may place new allocations on a node.

    NODE is a node ID, a unique ID prefix or a node name; -self is the node of the agent the
    command talks to. A draining node cannot be made eligible (cancel the drain first).
    Exit codes: 0 done, 1 an error (unknown node, bad flags, node draining).
    """
    if enable == disable:
        fail("either the -enable or the -disable flag must be set")
    with connect(address) as client:
        node = find_node(client, node_id, self_)
        client.node_eligibility(node["ID"], enable)
        echo(f'Node "{node["ID"]}" scheduling eligibility set: '
             f'{"eligible" if enable else "ineligible"} for scheduling')


__all__ = ["node_group"]
