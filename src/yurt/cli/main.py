"""The `yurt` command. Nomad's verbs and flags; flags take one dash or two."""

from __future__ import annotations

import sys

import click

from yurt import __version__

from .flags import NomadGroup
from .acl_cmd import acl_group
from .agent_cmd import agent_cmd
from .agent_monitor import monitor_cmd
from .doctor_cmd import doctor_cmd
from .alloc_cmd import alloc_group
from .connect_cmd import connect_group
from .deployment_cmd import deployment_group
from .intention_cmd import intention_group
from .config_cmd import config_group
from .job import job_group, plan_cmd, run_cmd, stop_cmd
from .job_restart import restart_cmd as job_restart_cmd
from .job_versions import COMMANDS as JOB_COMMANDS
from .lab_cmd import lab_group
from .mesh_cmd import mesh_group
from .namespace_cmd import namespace_group
from .tls_cmd import tls_group
from .node_cmd import node_group
from .server_cmd import server_group
from .system_cmd import system_group
from .var_cmd import var_group
from .status import eval_group, job_status_cmd


@click.group(cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.version_option(__version__, "-v", "-version", "--version", prog_name="yurt", message="Yurt v%(version)s")
def cli() -> None:
    """Yurt: a workload orchestrator with a built-in service mesh.

    Job files are Nomad's; flags may be written -flag or --flag.
    """


cli.add_command(job_group)
cli.add_command(agent_cmd)
cli.add_command(monitor_cmd)  # `yurt monitor`, as `nomad monitor`
cli.add_command(run_cmd, "run")  # `yurt run FILE`, as `nomad run`
job_group.add_command(job_status_cmd, "status")
for _command in (*JOB_COMMANDS, job_restart_cmd):
    job_group.add_command(_command)
cli.add_command(job_status_cmd, "status")  # `yurt status [JOB]`, as `nomad status`
cli.add_command(stop_cmd, "stop")
cli.add_command(plan_cmd, "plan")
cli.add_command(alloc_group)
cli.add_command(eval_group)
cli.add_command(node_group)
cli.add_command(server_group)
cli.add_command(system_group)
cli.add_command(doctor_cmd)
cli.add_command(intention_group)
cli.add_command(config_group)
cli.add_command(connect_group)
cli.add_command(lab_group)
cli.add_command(tls_group)
cli.add_command(acl_group)
cli.add_command(deployment_group)
cli.add_command(mesh_group)
cli.add_command(var_group)
cli.add_command(namespace_group)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Exit codes: 0 ok, 1 error (bad usage included), 2 placement failures on run."""
    try:
        rv = cli.main(args=argv, prog_name="yurt", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        e.show()
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
