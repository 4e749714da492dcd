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
      yurt lab up -servers 3 -clients 2   (an etcd member on each server host)
      yurt lab status
      yurt lab exec client1 -- yurt node status
      yurt lab kill client1      (SIGKILL the host's agent, etcd member and tasks, link down)
      yurt lab start client1     (its etcd member and agent again, on their data dirs)
      yurt lab kill server2 -etcd    (SIGKILL only the host's etcd member)
      yurt lab start server2 -etcd   (that member again; it rejoins)
      yurt lab cut server2       (its link down, both ends; its processes keep running)
      yurt lab heal server2      (its link back)
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
              help="Seconds to wait for the etcd cluster to be healthy, and again for every node to be ready.")
@click.option("-etcd", "--etcd", is_flag=True,
              help="Run an etcd member on every server host and keep the servers' state in it (always so "
                   "with more than one server).")
@_lab_errors
def lab_up(name: str, servers: int, clients: int, hosts: tuple[str, ...], subnet: str, configs: tuple[str, ...],
           wait: float, etcd: bool) -> None:
    """Make the lab's hosts and start their agents; returns when every node is ready. With more
    than one server host, or -etcd, every server host runs an etcd member, and the servers start
    once its cluster is healthy."""
    from yurt import lab
    made = lab.up(name, servers=servers, clients=clients, hosts=hosts, subnet=subnet, extra_config=configs,
                  wait=wait, etcd=etcd, progress=lambda line: echo(f"    {line}"))
    echo(f'==> lab "{made.name}" is up on {made.subnet} (bridge {made.bridge})')
    _status_table(made)
    server = made.servers[0]
    echo(f"\nTalk to it:  export NOMAD_ADDR={made.url(server)}")
    flag = "" if name == "lab" else f" -name {name}"
    echo(f"Or inside a host:  yurt lab exec{flag} {made.hosts[-1].name} -- yurt node status")
    if made.has_etcd:
        echo(f"etcd:  yurt lab exec{flag} {server.name} -- etcdctl member list   "
             f"(endpoints {','.join(made.etcd_endpoints)})")


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
    """The lab's hosts, their addresses, links, agents and etcd members."""
    from yurt import lab
    _status_table(lab.load(name))


def _status_table(made) -> None:
    from yurt import lab
    rows = lab.status(made)
    headers = ["Host", "Role", "Address", "Link", "Agent", "PID", "HTTP"]
    if made.has_etcd:
        headers += ["Etcd", "Etcd PID"]
    print_table(headers, [[r[h] for h in headers] for r in rows])


ETCD_FLAG_HELP = "Only the host's etcd member (a server host of a lab with etcd)."


@lab_group.command("kill")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.option("-etcd", "--etcd", is_flag=True, help=ETCD_FLAG_HELP + " Its agent keeps running.")
@click.argument("host")
@_lab_errors
def lab_kill(name: str, host: str, etcd: bool) -> None:
    """SIGKILL a host: its agent, its etcd member and every process it started; its link goes
    down. What it set up stays, as after a power cut (`yurt lab start` brings it back). With
    -etcd, only its etcd member is killed."""
    from yurt import lab
    made = lab.load(name)
    h = made.host(host)
    if etcd:
        pid = lab.kill_etcd(made, h)
        echo(f"==> {host}: etcd member killed (pid {pid}); its agent keeps running")
        return
    pids = lab.kill(made, h)
    echo(f"==> {host} killed ({len(pids)} processes); its link is down")


@lab_group.command("start")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.option("-etcd", "--etcd", is_flag=True, help=ETCD_FLAG_HELP + " It rejoins the cluster.")
@click.argument("host")
@_lab_errors
def lab_start(name: str, host: str, etcd: bool) -> None:
    """Start a host again after kill or stop: its link comes up, its etcd member (if it has one)
    and its agent start on their data dirs, whichever is not running. With -etcd, only its etcd
    member."""
    from yurt import lab
    made = lab.load(name)
    h = made.host(host)
    if etcd:
        lab.start_etcd(made, h)
        echo(f"==> {host}: etcd member started (pid {h.etcd_pid}), {made.etcd_url(h)}")
        return
    started = lab.start_host(made, h)
    if started:
        echo(f"==> {host}: {' and '.join(started)} started, {made.url(h)}")
    else:
        echo(f"==> {host}: its link is up again (its processes were running)")


@lab_group.command("cut")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.argument("host")
@_lab_errors
def lab_cut(name: str, host: str) -> None:
    """Cut a host off the lab network (both ends of its link down): it reaches no other host and
    none reaches it; its agent, etcd member and tasks keep running (`yurt lab heal` restores it)."""
    from yurt import lab
    made = lab.load(name)
    lab.cut(made, made.host(host))
    echo(f"==> {host} is cut off the lab network; its processes keep running")


@lab_group.command("heal")
@click.option("-name", "--name", default="lab", help=NAME_HELP)
@click.argument("host")
@_lab_errors
def lab_heal(name: str, host: str) -> None:
    """Restore the link of a host that was cut."""
    from yurt import lab
    made = lab.load(name)
    lab.heal(made, made.host(host))
    echo(f"==> {host} is back on the lab network")


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
    """Run COMMAND inside HOST's network namespace, with NOMAD_ADDR set to that host's agent. In a
    server host of a lab with etcd, `etcdctl` reaches the host's own member (it listens on the
    host's loopback too)."""
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
    env = dict(os.environ, **lab.exec_env(made, h))
    argv = lab.exec_args(made, h, args)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
