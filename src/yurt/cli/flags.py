"""Nomad-style flags: `-output` and `--output` both work, and an unknown flag is named whole.

click reads `-bogus` as the short flags `-b -o -g ...` and complains about `-b`; Nomad users
type single-dash long flags all the time, so an unknown one is reported as written.
"""

from __future__ import annotations

import click


def _known(command: click.Command, ctx: click.Context) -> set[str]:
    names: set[str] = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


class NomadCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = _known(self, ctx)
        for arg in args:
            if arg == "--":
                break
            if arg.startswith("-") and len(arg) > 2 and arg != "-":
                name = arg.split("=", 1)[0]
                if name not in known and not name[1:2].isdigit():
                    longs = sorted(n for n in known if len(n) > 2 and not n.startswith("--"))
                    raise click.UsageError(f"unknown flag {name}; this command takes " +
                                           (", ".join(longs) if longs else "no flags but -help"), ctx)
        return super().parse_args(ctx, args)


class NomadGroup(click.Group):
    command_class = NomadCommand
    group_class = type  # subgroups are NomadGroup too
