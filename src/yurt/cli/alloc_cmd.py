"""`yurt alloc status | logs | stop` (command/alloc_status.go, alloc_logs.go, alloc_stop.go)."""

from __future__ import annotations

import json
import sys

import click

from yurt.api.client import YurtClient

from .flags import CommandLineCommand, NomadGroup
from .format import (address_option, api_errors, connect, echo, fmt_iso, fmt_time, heading, kv, print_table,
                     relative, resolve, short)
from .monitor import Monitor, event_rows
from .output import fail


@click.group("alloc", cls=NomadGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
def alloc_group() -> None:
    """Inspect and control allocations: status, logs, stop."""


def find_alloc(client: YurtClient, ident: str, verbose: bool = False) -> dict:
    allocs = client.allocations(prefix=ident)
    return resolve("allocation", ident, allocs,
                   ["ID", "Eval ID", "Node ID", "Task Group", "Version", "Desired", "Status", "Created"],
                   lambda a: (short(a["ID"], verbose), short(a.get("EvalID"), verbose), short(a.get("NodeID"), verbose),
                              a.get("TaskGroup"), a.get("JobVersion", 0), a.get("DesiredStatus"),
                              a.get("ClientStatus"), relative(a.get("CreateTime"))),
                   missing=f'No allocation(s) with prefix or id "{ident}" found')


def _dynamic_labels(alloc: dict) -> tuple[set[str], set[str]]:
    """(reserved, dynamic) port labels of the allocation's group."""
    reserved, dynamic = set(), set()
    job = alloc.get("Job") or {}
    for g in job.get("TaskGroups") or []:
        if g.get("Name") != alloc.get("TaskGroup"):
            continue
        for net in g.get("Networks") or []:
            reserved.update(p.get("Label") for p in net.get("ReservedPorts") or [])
            dynamic.update(p.get("Label") for p in net.get("DynamicPorts") or [])
    return reserved, dynamic


def _task_resources(alloc: dict, task: str) -> tuple[str, str, str]:
    res = ((alloc.get("AllocatedResources") or {}).get("Tasks") or {}).get(task) or {}
    cpu = (res.get("Cpu") or {}).get("CpuShares", 0)
    mem = (res.get("Memory") or {}).get("MemoryMB", 0)
    mem_max = (res.get("Memory") or {}).get("MemoryMaxMB", 0)
    disk = ((alloc.get("AllocatedResources") or {}).get("Shared") or {}).get("DiskMB", 0)
    memory = f"{mem} MiB" + (f" (max {mem_max} MiB)" if mem_max and mem_max > mem else "")
    return f"{cpu} MHz", memory, f"{disk} MiB"


@alloc_group.command("status")
@click.argument("alloc_id", metavar="ALLOC")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs, absolute times, all events.")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the allocation as JSON.")
@address_option
@api_errors
def alloc_status_cmd(alloc_id: str, verbose: bool, as_json: bool, address: str | None) -> None:
    """Show an allocation (ALLOC may be a unique prefix of its ID): placement, ports, tasks, events."""
    with connect(address) as client:
        stub = find_alloc(client, alloc_id, verbose)
        alloc = client.allocation(stub["ID"])
    if as_json:
        echo(json.dumps(alloc, indent=4))
        return
    when = fmt_time if verbose else relative
    job = alloc.get("Job") or {}
    echo(kv([
        ("ID", short(alloc["ID"], verbose)), ("Eval ID", short(alloc.get("EvalID"), verbose)),
        ("Name", alloc.get("Name")), ("Node ID", short(alloc.get("NodeID"), verbose)),
        ("Node Name", alloc.get("NodeName")), ("Job ID", alloc.get("JobID")),
        ("Job Version", job.get("Version", 0)), ("Client Status", alloc.get("ClientStatus")),
        ("Client Description", alloc.get("ClientDescription")), ("Desired Status", alloc.get("DesiredStatus")),
        ("Desired Description", alloc.get("DesiredDescription")), ("Created", when(alloc.get("CreateTime"))),
        ("Modified", when(alloc.get("ModifyTime"))),
        *([("Previous Allocation", short(alloc["PreviousAllocation"], verbose))]
          if alloc.get("PreviousAllocation") else []),
        *([("Next Allocation", short(alloc["NextAllocation"], verbose))] if alloc.get("NextAllocation") else []),
        *([("Follow-up Eval", short(alloc["FollowupEvalID"], verbose))] if alloc.get("FollowupEvalID") else []),
    ]))
    ports = ((alloc.get("AllocatedResources") or {}).get("Shared") or {}).get("Ports") or []
    if ports:
        reserved, _ = _dynamic_labels(alloc)
        echo()
        heading("Allocation Addresses:")
        print_table(["Label", "Dynamic", "Address"],
                    [(f"*{p.get('Label')}", "no" if p.get("Label") in reserved else "yes",
                      f"{p.get('HostIP') or '127.0.0.1'}:{p.get('Value')}" + (f" -> {p['To']}" if p.get("To") else ""))
                     for p in ports])
    states = alloc.get("TaskStates") or {}
    tasks = sorted(set(states) | set((alloc.get("AllocatedResources") or {}).get("Tasks") or {}))
    for task in tasks:
        st = states.get(task) or {}
        echo()
        heading(f'Task "{task}" is "{st.get("State", "pending")}"')
        heading("Task Resources:")
        print_table(["CPU", "Memory", "Disk"], [_task_resources(alloc, task)])
        echo()
        heading("Task Events:")
        echo(kv([("Started At", fmt_iso(st.get("StartedAt"))), ("Finished At", fmt_iso(st.get("FinishedAt"))),
                 ("Total Restarts", st.get("Restarts", 0)), ("Last Restart", fmt_iso(st.get("LastRestart")))]))
        echo()
        heading("Recent Events:")
        rows = event_rows(st, limit=None if verbose else 10)
        if rows:
            print_table(["Time", "Type", "Description"], rows)
        else:
            echo("No events")


def _pick_task(alloc: dict, task: str | None) -> str:
    tasks = sorted(set(alloc.get("TaskStates") or {}) |
                   set((alloc.get("AllocatedResources") or {}).get("Tasks") or {}))
    if task:
        if tasks and task not in tasks:
            fail(f'Could not find task named: {task}; allocation "{short(alloc["ID"])}" runs: ' + ", ".join(tasks))
        return task
    if len(tasks) == 1:
        return tasks[0]
    if not tasks:
        fail(f'allocation "{short(alloc["ID"])}" has no tasks yet; name the task')
    fail(f'Allocation "{short(alloc["ID"])}" is running the following tasks:\n'
         + "\n".join(f"  * {t}" for t in tasks) + "\n\nPlease specify the task.")


@alloc_group.command("logs")
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("task", required=False, metavar="[TASK]")
@click.option("-f", "-follow", "--follow", "follow", is_flag=True, help="Keep printing new output (Ctrl-C to stop).")
@click.option("-stderr", "--stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("-tail", "--tail", is_flag=True, help="Start at the end (the last 10 lines unless -n/-c).")
@click.option("-n", "lines", type=int, default=None, metavar="LINES", help="With -tail: how many lines.")
@click.option("-c", "nbytes", type=int, default=None, metavar="BYTES", help="With -tail: how many bytes.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs in messages.")
@address_option
@api_errors
def alloc_logs_cmd(alloc_id: str, task: str | None, follow: bool, stderr: bool, tail: bool, lines: int | None,
                   nbytes: int | None, verbose: bool, address: str | None) -> None:
    """Print a task's stdout (or -stderr). TASK may be left out when the allocation has one task."""
    if lines is not None or nbytes is not None:
        tail = True
    with connect(address) as client:
        stub = find_alloc(client, alloc_id, verbose)
        alloc = client.allocation(stub["ID"])
        name = _pick_task(alloc, task)
        stream = sys.stdout.buffer
        try:
            if not tail:
                for chunk in client.logs(alloc["ID"], name, stderr=stderr, follow=follow):
                    stream.write(chunk)
                    stream.flush()
                return
            if nbytes is not None:
                data = b"".join(client.logs(alloc["ID"], name, stderr=stderr, origin="end", offset=nbytes))
            else:
                want = 10 if lines is None else max(lines, 0)
                data = _last_lines(client, alloc["ID"], name, stderr, want)
            stream.write(data)
            stream.flush()
            if follow:
                for chunk in client.logs(alloc["ID"], name, stderr=stderr, follow=True, origin="end", offset=0):
                    stream.write(chunk)
                    stream.flush()
        except KeyboardInterrupt:
            raise SystemExit(0) from None
        except BrokenPipeError:
            raise SystemExit(0) from None


def _last_lines(client: YurtClient, alloc_id: str, task: str, stderr: bool, n: int) -> bytes:
    """The last n lines: read back from the end in growing steps until enough lines are seen."""
    if n == 0:
        return b""
    step = 4096
    while True:
        data = b"".join(client.logs(alloc_id, task, stderr=stderr, origin="end", offset=step))
        body = data[:-1] if data.endswith(b"\n") else data
        if body.count(b"\n") >= n or len(data) < step:
            parts = body.split(b"\n")
            tail = b"\n".join(parts[-n:])
            return tail + (b"\n" if data.endswith(b"\n") else b"")
        step *= 4


@alloc_group.command("stop")
@click.argument("alloc_id", metavar="ALLOC")
@click.option("-detach", "--detach", is_flag=True, help="Print the evaluation ID and return at once.")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@click.option("-timeout", "--timeout", "timeout", default="5m", metavar="DURATION",
              help="How long to follow the replacement.")
@click.option("-no-shutdown-delay", "--no-shutdown-delay", "no_shutdown_delay", is_flag=True,
              help="Stop it without waiting its group's and tasks' shutdown_delay.")
@address_option
@api_errors
def alloc_stop_cmd(alloc_id: str, detach: bool, verbose: bool, timeout: str, no_shutdown_delay: bool,
                   address: str | None) -> None:
    """Stop an allocation; the scheduler places a replacement, which is followed unless -detach."""
    from .job import _seconds
    follow_for = _seconds(timeout)
    with connect(address) as client:
        stub = find_alloc(client, alloc_id, verbose)
        resp = client.stop_allocation(stub["ID"], no_shutdown_delay=no_shutdown_delay)
        eval_id = resp.get("EvalID") or ""
        if detach or not eval_id:
            echo(eval_id)
            return
        raise SystemExit(Monitor(client, verbose=verbose, timeout=follow_for).monitor(eval_id))


@alloc_group.command("signal")
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("task", required=False, metavar="[TASK]")
@click.option("-s", "signal", default="SIGKILL", metavar="SIGNAL", help="The signal to send (default SIGKILL).")
@click.option("-task", "task_opt", default=None, metavar="TASK", help="The task to signal (else every running task).")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def alloc_signal_cmd(alloc_id: str, task: str | None, signal: str, task_opt: str | None, verbose: bool,
                     address: str | None) -> None:
    """Send a signal to an allocation's task (or to all its running tasks), as `nomad alloc signal`."""
    with connect(address) as client:
        stub = find_alloc(client, alloc_id, verbose)
        client.put(f"/v1/client/allocation/{stub['ID']}/signal", {"Signal": signal, "Task": task_opt or task or ""})


@alloc_group.command("restart")
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("task", required=False, metavar="[TASK]")
@click.option("-task", "task_opt", default=None, metavar="TASK", help="The task to restart (else every running task).")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def alloc_restart_cmd(alloc_id: str, task: str | None, task_opt: str | None, verbose: bool,
                      address: str | None) -> None:
    """Restart an allocation's task (or all its running tasks) in place, as `nomad alloc restart`."""
    with connect(address) as client:
        stub = find_alloc(client, alloc_id, verbose)
        name = task_opt or task or ""
        client.put(f"/v1/client/allocation/{stub['ID']}/restart", {"TaskName": name, "AllTasks": not name})


@alloc_group.command("fs")
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("path", required=False, default="/", metavar="[PATH]")
@click.option("-stat", "--stat", "show_stat", is_flag=True, help="Show the file's or directory's details only.")
@click.option("-f", "follow", is_flag=True, help="Follow the file as it grows (until the allocation finishes).")
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def alloc_fs_cmd(alloc_id: str, path: str, show_stat: bool, follow: bool, verbose: bool, address: str | None) -> None:
    """List a directory or print a file of an allocation's directory, as `nomad alloc fs`; -f
    follows the file (`/v1/client/fs/stream`)."""
    with connect(address) as client:
        stub = find_alloc(client, alloc_id, verbose)
        info = client.request("GET", f"/v1/client/fs/stat/{stub['ID']}", params={"path": path}).json()
        if show_stat:
            print_table(["Mode", "Size", "Modified Time", "Content Type", "Name"],
                        [[info["FileMode"], info["Size"], info["ModTime"], info["ContentType"], info["Name"]]])
            return
        if info["IsDir"]:
            rows = client.request("GET", f"/v1/client/fs/ls/{stub['ID']}", params={"path": path}).json()
            print_table(["Mode", "Size", "Modified Time", "Name"],
                        [[r["FileMode"], r["Size"], r["ModTime"], r["Name"] + ("/" if r["IsDir"] else "")]
                         for r in rows])
            return
        if follow:
            try:
                for chunk in client.fs_stream(stub["ID"], path):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            except (KeyboardInterrupt, BrokenPipeError):
                raise SystemExit(0) from None
            return
        resp = client.request("GET", f"/v1/client/fs/cat/{stub['ID']}", params={"path": path})
        sys.stdout.buffer.write(resp.content)
        sys.stdout.flush()


def _running_alloc_of_job(client: YurtClient, job_id: str) -> dict:
    """`alloc exec -job`: a running allocation of the job (Nomad picks one at random)."""
    import random
    running = [a for a in client.job_allocations(job_id) if a.get("ClientStatus") == "running"]
    if not running:
        fail(f'job "{job_id}" has no running allocation')
    return random.choice(running)


@alloc_group.command("exec", cls=CommandLineCommand)
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND [ARGS]...")
@click.option("-task", "--task", "task", default=None, metavar="TASK",
              help="The task to run the command in (may be left out when the allocation has one task).")
@click.option("-job", "--job", "by_job", is_flag=True, help="ALLOC is a job ID: a running allocation of it is used.")
@click.option("-i", "interactive", type=click.BOOL, default=True, metavar="BOOL",
              help="Pass stdin to the command (default true; -i=false closes it).")
@click.option("-t", "tty_flag", type=click.BOOL, default=None, metavar="BOOL",
              help="Give the command a terminal (default: when stdin and stdout are terminals; -t=false not).")
@click.option("-e", "escape", default="~", metavar="CHAR",
              help='The escape character (with -t): "~." on a new line disconnects; "none" for none.')
@click.option("-verbose", "--verbose", is_flag=True, help="Full IDs.")
@address_option
@api_errors
def alloc_exec_cmd(alloc_id: str, command: tuple[str, ...], task: str | None, by_job: bool, interactive: bool,
                   tty_flag: bool | None, escape: str, verbose: bool, address: str | None) -> None:
    """Run a command inside a running allocation's task (in its namespaces and chroot), as
    `nomad alloc exec`; exits with the command's exit code."""
    if tty_flag is None:
        tty_flag = interactive and sys.stdin.isatty() and sys.stdout.isatty()
    if escape not in ("none", "") and len(escape) != 1:
        fail("-e takes a single character, or none")
    with connect(address) as client:
        stub = _running_alloc_of_job(client, alloc_id) if by_job else find_alloc(client, alloc_id, verbose)
        alloc = client.allocation(stub["ID"])
        if alloc.get("ClientStatus") in ("complete", "failed", "lost") or alloc.get("DesiredStatus") == "stop":
            fail(f'allocation "{short(alloc["ID"], verbose)}" is {alloc.get("ClientStatus")}: '
                 "alloc exec needs a running task")
        name = _pick_task(alloc, task)
        code = _exec(client, alloc["ID"], name, list(command), tty_flag, interactive,
                     escape if escape not in ("none", "") else "")
    sys.stdout.flush()
    sys.exit(code)


def _exec(client: YurtClient, alloc_id: str, task: str, command: list[str], tty: bool, interactive: bool,
          escape: str) -> int:
    """The websocket session: stdin sent (raw terminal with -t), output written, its exit code."""
    from urllib.parse import urlencode

    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect as ws_connect

    base = client.address.rstrip("/")
    query = urlencode({"task": task, "tty": "true" if tty else "false", "command": json.dumps(command)})
    url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + \
        f"/v1/client/allocation/{alloc_id}/exec?{query}"
    headers = {"X-Nomad-Token": client.token} if client.token else {}
    kw: dict = {}
    if url.startswith("wss://"):
        kw["ssl"] = client.tls.context()
        if client.tls.server_name:
            kw["server_hostname"] = client.tls.server_name
    try:
        conn = ws_connect(url, additional_headers=headers, max_size=None, open_timeout=30, **kw)
    except InvalidStatus as e:
        fail(f"the agent refused the exec: HTTP {e.response.status_code} {e.response.body.decode(errors='replace')}")
    except (OSError, InvalidHandshake, TimeoutError) as e:
        fail(f"cannot reach the agent at {base}: {e}")
    with conn as ws:
        return _session(ws, tty, interactive, escape)


def _session(ws, tty: bool, interactive: bool, escape: str) -> int:
    """Nomad's frames both ways until the command's exit code comes (or the agent closes)."""
    import base64
    import os
    import signal
    import threading

    from websockets.exceptions import ConnectionClosed

    def send(frame: dict) -> None:
        try:
            ws.send(json.dumps(frame))
        except ConnectionClosed:
            pass

    def send_size(*_: object) -> None:
        try:
            size = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            return
        send({"tty_size": {"height": size.lines, "width": size.columns}})

    saved = None
    if tty and sys.stdin.isatty():
        import termios
        import tty as ttymod
        saved = termios.tcgetattr(sys.stdin.fileno())
        ttymod.setraw(sys.stdin.fileno())
    if tty:
        send_size()
        if hasattr(signal, "SIGWINCH"):
            signal.signal(signal.SIGWINCH, send_size)

    def pump_stdin() -> None:
        fd = sys.stdin.fileno()
        at_line_start, pending_escape = True, False
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                send({"stdin": {"close": True}})
                return
            if escape and saved is not None:   # "~." at the start of a line ends the session
                out = bytearray()
                for byte in data:
                    ch = bytes([byte])
                    if pending_escape:
                        pending_escape = False
                        if ch == b".":
                            ws.close()
                            return
                        if ch != escape.encode():
                            out += escape.encode()
                    elif at_line_start and ch == escape.encode():
                        pending_escape = True
                        continue
                    out += ch
                    at_line_start = ch in (b"\r", b"\n")
                data = bytes(out)
            if data:
                send({"stdin": {"data": base64.b64encode(data).decode()}})

    if interactive:
        threading.Thread(target=pump_stdin, daemon=True).start()
    else:
        send({"stdin": {"close": True}})
    code = -1
    try:
        for message in ws:
            frame = json.loads(message)
            for stream, out in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer)):
                if isinstance(frame.get(stream), dict) and frame[stream].get("data"):
                    out.write(base64.b64decode(frame[stream]["data"]))
                    out.flush()
            if frame.get("exited"):
                code = int((frame.get("result") or {}).get("exit_code") or 0)
    except ConnectionClosed:
        pass
    finally:
        if saved is not None:
            import termios
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    if code == -1:
        reason = ws.close_reason if ws.close_code not in (None, 1000) else ""
        ws.close()
        fail(reason or "the exec session ended without the command's exit code")
    ws.close()
    return code
