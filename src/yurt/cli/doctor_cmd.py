"""`yurt doctor`: is this machine ready to be a client, bridge networking included?

Prints Check | Status | Detail, then the fix of every check that is not ok. Exit 0 when
everything bridge networking needs is in place (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import json
import sys

import click

from yurt.agent.doctor import diagnose


def _table(rows: list[tuple[str, str, str]]) -> str:
    headers = ("Check", "Status", "Detail")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(2)]
    lines = [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


@click.command("doctor", context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_cmd(as_json: bool) -> int:
    """Check this machine for what running allocations needs (CNI plugins, iptables, namespaces...)."""
    report = diagnose()
    checks, ready = report.checks, report.ready
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=4))
    else:
        click.echo(_table([(c.name, c.status, c.detail) for c in checks]))
        problems = [c for c in checks if not c.ok]
        if problems:
            click.echo("\nTo fix:")
            for c in problems:
                click.echo(f"  {c.name} ({c.status}): {c.fix or 'see the detail above'}")
        click.echo("\n" + ("Bridge networking is ready on this machine." if ready else
                           "Bridge networking will not work on this machine until the failures above are fixed."))
    sys.exit(0 if ready else 1)
