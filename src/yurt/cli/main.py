"""The `yurt` command. Nomad's verbs and flags; flags take one dash or two."""

from __future__ import annotations

import sys

import click

from yurt import __version__

from .job import job_group, run_cmd


@click.group(context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.version_option(__version__, "-v", "-version", "--version", prog_name="yurt", message="Yurt v%(version)s")
def cli() -> None:
    """Yurt: a workload orchestrator with a built-in service mesh.

    Job files are Nomad's; flags may be written -flag or --flag.
    """


cli.add_command(job_group)
cli.add_command(run_cmd, "run")  # `yurt run FILE`, as `nomad run`


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="yurt", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
