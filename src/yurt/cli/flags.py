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


class CommandLineCommand(NomadCommand):
    """A command whose first argument is followed by a command line of its own (`alloc exec
    ALLOC CMD...`): the flags stop at that argument, and what follows is passed as it is. As Go's
    flags, the boolean options in `go_bools` (`-i`, `-t`) take their value only as `-i=false`
    (`-i` alone is true)."""

    go_bools: tuple[str, ...] = ("-i", "-t")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    takes_value[opt] = not param.is_flag
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                out += args[i - 1:]
                break
            if arg.startswith("-") and len(arg) > 1:
                name, eq, value = arg.partition("=")
                if name in self.go_bools:
                    out += [name, value if eq else "true"]
                elif eq and len(name) == 2:
                    out += [name, value]
                else:
                    out.append(arg)
                    if not eq and takes_value.get(name) and i < len(args):
                        out.append(args[i])
                        i += 1
                continue
            out += [arg, "--", *args[i:]]
            break
        return super().parse_args(ctx, out)
