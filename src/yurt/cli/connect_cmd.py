"""`yurt connect proxy`: the Connect sidecar proxy (flags parsed by yurt.mesh.config, so the
lean entry point `python -m yurt.mesh` takes exactly the same flags)."""

from __future__ import annotations

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
    -ready-file, -ready-addr, -dc, -config FILE). `-h` for details."""
    from yurt.mesh.proxy import main
    sys.exit(main(list(args)))
