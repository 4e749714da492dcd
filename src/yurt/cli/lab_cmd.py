"""`yurt lab`: a cluster of hosts made of network namespaces on this machine (like kind, for Yurt)."""

from __future__ import annotations

import os
import sys

import click

from .format import echo, print_table
from .output import fail

NAME_HELP = 'Name of the lab (default "lab"); several labs can be up at once.'


def _lab_errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from yurt.lab import LabError
        try:
            return fn(*args, **kwargs)
        except LabError as e:
            fail(str(e))
    return wrapper


@click.group("lab")
def lab_group() -> None:
    """A lab of hosts on this machine: each host a network namespace with its own agent.

    \b
      yurt lab up -servers 1 -clients 3
      yurt lab status
      yurt lab exec client1 -- yurt node status
      yurt lab kill client1      (SIGKILL the host's agent and tasks, link down)
      yurt lab start client1     (its agent again, on its data dir)
      yurt lab down
    """


@lab_group.command("up")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.option("-servers", "--servers", type=int, default=1, show_default=True, help="Server hosts.")
@click.option("-clients", "--clients", type=int, default=3, show_default=True, help="Client hosts.")
@click.option("-host", "--host", "hosts", multiple=True, metavar="NAME[:ROLE]",
              help="Name the hosts yourself (repeatable; ROLE is server, client or server+client; "
                   "default client). Replaces -servers/-clients.")
@click.option("-subnet", "--subnet", default="10.213.0.0/24", show_default=True, help="The lab network.")
@click.option("-config", "--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="An agent config file given to every host's agent too (repeatable).")
@click.option("-wait", "--wait", type=float, default=90.0, show_default=True,
              help="Seconds to wait for every node to be ready.")
@_lab_errors
def lab_up(name: str, servers: int, clients: int, hosts: tuple[str, ...], subnet: str, configs: tuple[str, ...],
           wait: float) -> None:
    """Make the lab's hosts and start their agents; returns when every node is ready."""
    from yurt import lab
    made = lab.up(name, servers=servers, clients=clients, hosts=hosts, subnet=subnet, extra_config=configs,
                  wait=wait, progress=lambda line: echo(f"    {line}"))
    echo(f'==> lab "{made.name}" is up on {made.subnet} (bridge {made.bridge})')
    _status_table(made)
    server = made.servers[0]
    echo(f"\nTalk to it:  export NOMAD_ADDR={made.url(server)}")
    flag = "" if name == "lab" else f" -name {name}"
    echo(f"Or inside a host:  yurt lab exec{flag} {made.hosts[-1].name} -- yurt node status")


@lab_group.command("down")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@_lab_errors
def lab_down(name: str) -> None:
    """Remove the lab: every host's agent and tasks, namespaces, links, rules, leases and data."""
    from yurt import lab
    lab.down(name, progress=lambda line: echo(f"    {line}"))
    echo(f'==> lab "{name}" is down')


@lab_group.command("status")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@_lab_errors
def lab_status(name: str) -> None:
    """The lab's hosts, their addresses and agents."""
    from yurt import lab
    _status_table(lab.load(name))


def _status_table(made) -> None:
    from yurt import lab
    rows = lab.status(made)
    headers = ["Host", "Role", "Address", "Agent", "PID", "HTTP"]
    print_table(headers, [[r[h] for h in headers] for r in rows])


@lab_group.command("kill")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.argument("host")
@_lab_errors
def lab_kill(name: str, host: str) -> None:
    """SIGKILL a host: its agent and every process it started; its link goes down. What it set up
    stays, as after a power cut (`yurt lab start` brings it back)."""
    from yurt import lab
    made = lab.load(name)
    pids = lab.kill(made, made.host(host))
    echo(f"==> {host} killed ({len(pids)} processes); its link is down")


@lab_group.command("start")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.argument("host")
@_lab_errors
def lab_start(name: str, host: str) -> None:
    """Start a host's agent again on its data dir (after kill or stop); its link comes up."""
    from yurt import lab
    made = lab.load(name)
    h = made.host(host)
    lab.start_agent(made, h)
    echo(f"==> {host}: agent started (pid {h.pid}), {made.url(h)}")


@lab_group.command("stop")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.argument("host")
@_lab_errors
def lab_stop(name: str, host: str) -> None:
    """Stop a host's agent gracefully (SIGTERM); its tasks keep running, as with any agent."""
    from yurt import lab
    made = lab.load(name)
    lab.stop_agent(made, made.host(host))
    echo(f"==> {host}: agent stopped")


@lab_group.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@_lab_errors
def lab_exec(name: str, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside HOST's network namespace, with NOMAD_ADDR set to that host's agent."""
    from yurt import lab
    made = lab.load(name)
    h = made.host(host)
    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        fail("yurt lab exec HOST -- COMMAND [ARGS...]: give a command")
    if args[0] == "yurt":   # the yurt of this installation, whatever PATH says inside
        args = [sys.executable, "-m", "yurt.cli.main", *args[1:]]
    env = dict(os.environ, NOMAD_ADDR=made.url(h), YURT_ADDR=made.url(h))
    argv = lab.exec_args(made, h, args)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
