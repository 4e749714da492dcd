"""`yurt connect proxy`: the Connect sidecar proxy. The command becomes the lean entry point
`python -m yurt.mesh` (the same process, by exec), which takes exactly these flags: the proxy
never carries the CLI's imports, and the CLI never imports the mesh's internals."""

from __future__ import annotations

import os
import sys

import click


@click.group("connect")
def connect_group() -> None:
    """Service mesh commands."""


@connect_group.command("proxy", add_help_option=False,
                       context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def proxy_cmd(args: tuple[str, ...]) -> None:
    """Run the sidecar proxy (-service, -listen, -local-port, -upstream DEST:PORT, -address,
    -ready-file, -ready-addr, -metrics-addr, -dc, -config FILE). `-h` for details."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "yurt.mesh", *args])
