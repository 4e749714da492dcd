"""`yurt var put|get|list|purge|lock`: Nomad's variables from the command line (as `nomad var`).

Exit codes as Nomad's: 0, or 1 on any error (a check-and-set conflict included)."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any
from urllib.parse import quote

import click

from yurt.errors import Conflict, NotFound

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo, fmt_time, print_table
from .format import namespace as current_namespace
from .output import fail

CTX = {"help_option_names": ["-h", "-help", "--help"]}


def _namespace_option(fn: Any) -> Any:
    """The command gets `namespace`: the `-namespace` every command with `-address` takes
    (format.address_option), else $YURT_NAMESPACE / $NOMAD_NAMESPACE (None: default)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, namespace=current_namespace() or None, **kwargs)
    return wrapper


def _ns(namespace: str | None, *, wildcard: bool = False) -> str:
    ns = namespace or os.environ.get("YURT_NAMESPACE") or os.environ.get("NOMAD_NAMESPACE") or "default"
    if ns == "*" and not wildcard:
        fail('The wildcard namespace ("*") is not valid for this command.')
    return ns


def _default_out(on_terminal: str) -> str:
    """Nomad's default -out: one for a terminal, json when stdout is redirected."""
    return on_terminal if sys.stdout.isatty() else "json"


def _check_index(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        fail(f'Invalid -check-index value "{raw}": not parsable as uint64')
    if value < 0:
        fail(f'Invalid -check-index value "{raw}": out of range for uint64')
    return value


def _url(path: str) -> str:
    # dots escaped too: a client library would drop "a/../b" to "b" before the server could refuse it
    return "/v1/var/" + quote(path, safe="/-_~").replace(".", "%2E")


def _cas_failed(check: int, conflict: Conflict) -> None:
    """Nomad's check-and-set conflict message; exit 1."""
    try:
        current = json.loads(conflict.message)
    except ValueError:
        fail(conflict.message)
    server = int(current.get("ModifyIndex") or 0)
    click.echo("\nCheck-and-Set conflict\n", err=True)
    last = f"\n    The server-side item was last updated on {fmt_time(current.get('ModifyTime'))}.\n" if server else ""
    click.echo(f"    Your provided check-index ({check}) does not match the server-side index ({server}).{last}\n"
               f"    If you are sure you want to perform this operation, add the -force or\n"
               f"    -check-index={server} flag before the positional arguments.\n", err=True)
    sys.exit(1)


@click.group("var", cls=NomadGroup, context_settings=CTX)
def var_group() -> None:
    """Nomad variables: encrypted key/value items by path."""


# -- put --------------------------------------------------------------------------------------
def _read_spec(arg: str, in_fmt: str | None) -> dict[str, Any]:
    if arg == "-":
        text = sys.stdin.read()
        fmt = in_fmt or "json"
        where = "standard input"
    else:
        name = arg[1:]
        try:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            fail(f'Error reading "{name}": {e.strerror}')
        fmt = in_fmt or ("hcl" if name.endswith((".hcl", ".nv.hcl")) else "json" if name.endswith(".json") else "")
        if not fmt:
            fail(f"Unable to determine format of {name}; Use the -in flag to specify it.")
        where = name
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            fail(f"Failed to parse variable data: error unmarshaling json ({where}): {e}")
    else:
        import hcl2
        try:
            raw = hcl2.loads(text)
        except Exception as e:  # noqa: BLE001 - the parser's errors vary
            fail(f"Failed to parse variable data: error parsing hcl ({where}): {str(e).splitlines()[0]}")
        doc = _from_hcl(raw)
    if not isinstance(doc, dict):
        fail(f"Failed to parse variable data: {where}: the specification must be an object")
    out: dict[str, Any] = {}
    for key, value in doc.items():   # accept Nomad's JSON names and the HCL ones
        k = key.lower()
        if k in ("path", "namespace", "items", "modifyindex", "modify_index"):
            out[{"modify_index": "modifyindex"}.get(k, k)] = value
    return out


def _from_hcl(raw: dict[str, Any]) -> dict[str, Any]:
    def unq(v: Any) -> Any:
        return v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"' else v
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k.startswith("__"):
            continue
        if k == "items":
            block = v[0] if isinstance(v, list) and v else v
            out["items"] = {ik: str(unq(iv)) for ik, iv in (block or {}).items() if not ik.startswith("__")}
        else:
            out[k] = unq(v)
    return out


def _item_value(value: str) -> str:
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            fail(f'error reading "{value[1:]}": {e.strerror}')
    return value


@var_group.command("put", context_settings=CTX)
@address_option
@_namespace_option
@click.option("-check-index", "--check-index", "check_index", metavar="N", default=None,
              help="Only write if the variable's ModifyIndex is N (0: only if it does not exist).")
@click.option("-force", "--force", is_flag=True, help="Write whatever the variable's index on the server.")
@click.option("-in", "--in", "in_fmt", type=click.Choice(["hcl", "json"]), default=None,
              help="The format of a specification from stdin or a file (default json).")
@click.option("-out", "--out", "out_fmt", type=click.Choice(["none", "json", "hcl", "table"]), default=None,
              help="How to show the written variable (default none on a terminal: one line; else json).")
@click.argument("args", nargs=-1, required=True)
@api_errors
def var_put_cmd(address: str | None, namespace: str | None, check_index: str | None, force: bool,
                in_fmt: str | None, out_fmt: str | None, args: tuple[str, ...]) -> None:
    """Create or update the variable at PATH: `yurt var put PATH [@file|-] [key=value ...]`."""
    rest = list(args)
    spec: dict[str, Any] = {}
    path = ""
    if rest and (rest[0] == "-" or rest[0].startswith("@")):
        spec = _read_spec(rest.pop(0), in_fmt)
        path = str(spec.get("path") or "")
    else:
        path = rest.pop(0)
        if rest and (rest[0] == "-" or rest[0].startswith("@")):
            spec = _read_spec(rest.pop(0), in_fmt)
            if spec.get("path") and spec["path"] != path:
                spec.pop("modifyindex", None)   # a copy to another path: a new variable
    if not path:
        fail("Not enough arguments: give the variable's path (or a specification with one)")
    items: dict[str, str] = {str(k): str(v) for k, v in (spec.get("items") or {}).items()}
    for pair in rest:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            fail(f'Failed to parse K=V data: "{pair}" is not key=value')
        items[key] = _item_value(value)
    if not items:
        fail("Must supply data: give key=value items or a specification with items")
    ns = _ns(namespace or spec.get("namespace"))
    cas: int | None = None
    if not force:
        given = _check_index(check_index)
        cas = given if given is not None else int(spec.get("modifyindex") or 0)
    with connect(address) as client:
        try:
            params: dict[str, Any] = {"namespace": ns, **({"cas": cas} if cas is not None else {})}
            resp = client.request("PUT", _url(path), params=params,
                                  json={"Namespace": ns, "Path": path, "Items": items})
        except Conflict as c:
            _cas_failed(cas or 0, c)
    var = resp.json()
    out_fmt = out_fmt or _default_out("none")
    if out_fmt == "none":
        echo(f'Created variable "{var.get("Path", path)}" with modify index {var.get("ModifyIndex")}')
    else:
        _show(var, out_fmt)


def _show(var: dict[str, Any], out_fmt: str) -> None:
    if out_fmt == "table":
        _show_table(var)
    elif out_fmt == "hcl":
        _show_hcl(var)
    else:
        echo(json.dumps(var, indent=2))


def _show_hcl(var: dict[str, Any]) -> None:
    """Nomad's HCL rendering: a specification `yurt var put @file.hcl` reads back."""
    items = var.get("Items") or {}
    pad = max((len(k) for k in items), default=0)
    lines = [f'namespace    = {json.dumps(var.get("Namespace", "default"))}',
             f'path         = {json.dumps(var.get("Path", ""))}',
             f'create_index = {var.get("CreateIndex", 0)}  # Set by server',
             f'modify_index = {var.get("ModifyIndex", 0)}  # Set by server; consulted for check-and-set',
             f'create_time  = {var.get("CreateTime", 0)}   # Set by server',
             f'modify_time  = {var.get("ModifyTime", 0)}   # Set by server', "", "items = {"]
    lines += [f"  {k.rjust(pad)} = {json.dumps(items[k])}" for k in sorted(items)]
    echo("\n".join(lines + ["}"]))


def _show_table(var: dict[str, Any]) -> None:
    echo(f'Namespace   = {var.get("Namespace")}')
    echo(f'Path        = {var.get("Path")}')
    echo(f'Create Time = {fmt_time(var.get("CreateTime"))}')
    if var.get("ModifyTime") != var.get("CreateTime"):
        echo(f'Modify Time = {fmt_time(var.get("ModifyTime"))}')
    echo(f'Check Index = {var.get("ModifyIndex")}')
    echo("\nItems")
    items = var.get("Items") or {}
    width = max((len(k) for k in items), default=0)
    for k in sorted(items):
        echo(f"{k.ljust(width)} = {items[k]}")


# -- get --------------------------------------------------------------------------------------
@var_group.command("get", context_settings=CTX)
@address_option
@_namespace_option
@click.option("-item", "--item", "item", metavar="KEY", default=None,
              help="Print only this item's value (with no newline after it).")
@click.option("-out", "--out", "out_fmt", type=click.Choice(["json", "hcl", "table"]), default=None,
              help="table (default on a terminal), json (default otherwise) or hcl.")
@click.argument("path")
@api_errors
def var_get_cmd(address: str | None, namespace: str | None, item: str | None, out_fmt: str | None,
                path: str) -> None:
    """Show the variable at PATH (its items decrypted)."""
    ns = _ns(namespace)
    with connect(address) as client:
        try:
            var, _ = client.get(_url(path), namespace=ns)
        except NotFound:
            fail("Variable not found")
    if item is not None:
        items = var.get("Items") or {}
        if item not in items:
            fail(f'Variable does not contain "{item}" item')
        click.echo(items[item], nl=False)   # as Nomad's: ready to pipe
        return
    _show(var, out_fmt or _default_out("table"))


# -- list -------------------------------------------------------------------------------------
@var_group.command("list", context_settings=CTX)
@address_option
@_namespace_option
@click.option("-out", "--out", "out_fmt", type=click.Choice(["table", "json", "terse"]), default=None,
              help="table (default on a terminal), json (default otherwise) or terse (paths only).")
@click.argument("prefix", required=False, default="")
@api_errors
def var_list_cmd(address: str | None, namespace: str | None, out_fmt: str | None, prefix: str) -> None:
    """List the variables (metadata only) whose path starts with PREFIX."""
    ns = _ns(namespace, wildcard=True)
    with connect(address) as client:
        rows, _ = client.get("/v1/vars", namespace=ns, prefix=prefix)
    out_fmt = out_fmt or _default_out("table")
    if out_fmt == "json":
        echo(json.dumps(rows, indent=2))
        return
    if not rows:
        echo("No matching variables found")
        return
    rows = sorted(rows, key=lambda r: (r["Namespace"], r["Path"]))
    if out_fmt == "terse":
        for r in rows:
            echo(f'{r["Namespace"]}  {r["Path"]}' if ns == "*" else r["Path"])
        return
    print_table(["Namespace", "Path", "Last Updated"],
                [[r["Namespace"], r["Path"], fmt_time(r.get("ModifyTime"))] for r in rows])


# -- purge ------------------------------------------------------------------------------------
@var_group.command("purge", context_settings=CTX)
@address_option
@_namespace_option
@click.option("-check-index", "--check-index", "check_index", metavar="N", default=None,
              help="Only delete if the variable's ModifyIndex is N.")
@click.argument("path")
@api_errors
def var_purge_cmd(address: str | None, namespace: str | None, check_index: str | None, path: str) -> None:
    """Delete the variable at PATH."""
    ns = _ns(namespace)
    cas = _check_index(check_index)
    with connect(address) as client:
        try:
            client.request("DELETE", _url(path), params={"namespace": ns, **({"cas": cas} if cas is not None else {})})
        except Conflict as c:
            _cas_failed(cas or 0, c)
    echo(f'Successfully purged variable "{path}"!')


# -- lock -------------------------------------------------------------------------------------


@var_group.command("lock", context_settings={**CTX, "allow_interspersed_args": False,
                                             "ignore_unknown_options": True})
@address_option
@_namespace_option
@click.option("-ttl", "--ttl", "ttl", default="",
              help="The lock's TTL (default 15s, 10s to 24h); renewed every half of it.")
@click.option("-delay", "--delay", "delay", default="",
              help="How long the variable stays locked after a lock is lost (default 15s).")
@click.option("-early-return", "--early-return", "early_return", is_flag=True,
              help="Exit 1 at once if another holder has the lock, instead of waiting for it.")
@click.option("-backoff", "--backoff", "backoff", default="",
              help="How long to wait between attempts to take the lock (default 1.1 x the TTL).")
@click.option("-shell", "--shell", "shell", type=click.BOOL, default=True,
              help="Run the command with $SHELL -c (default /bin/sh); -shell=false runs it as given.")
@click.option("-max-retry", "--max-retry", "max_retry", type=click.IntRange(min=0), default=5,
              help="Renewals that may fail in a row (the server unreachable) before the lock is taken as lost "
                   "(default 5; 0: the first failure).")
@click.option("-verbose", "--verbose", "verbose", is_flag=True, help="Say on stderr what the lock does.")
@click.argument("path")
@click.argument("child", nargs=-1, required=True, type=click.UNPROCESSED)
@api_errors
def var_lock_cmd(address: str | None, namespace: str | None, ttl: str, delay: str, early_return: bool,
                 backoff: str, shell: bool, max_retry: int, verbose: bool, path: str, child: tuple[str, ...]) -> None:
    """Take a lock on the variable at PATH, run CHILD while holding it, release it when CHILD
    exits; the exit code is CHILD's (1 if the lock was lost while it ran)."""
    import signal
    import subprocess
    import threading
    import time

    from yurt.structs.duration import parse_duration
    if path.startswith("@") or path == "-":
        fail("yurt var lock takes the variable's path; a variable specification (@file) is not supported: "
             "write the variable with `yurt var put` first, then lock its path")
    durations: dict[str, float] = {}
    for flag, raw, default in (("-ttl", ttl, 15.0), ("-delay", delay, 15.0), ("-backoff", backoff, 0.0)):
        try:
            durations[flag] = parse_duration(raw) / 1e9 if raw else default
        except ValueError as e:
            fail(f"{flag}: {e}")
    ttl_s = durations["-ttl"]
    wait_s = durations["-backoff"] or 1.1 * ttl_s
    ns = _ns(namespace)
    lock = {k: v for k, v in (("TTL", ttl), ("LockDelay", delay)) if v}

    def say(text: str) -> None:
        if verbose:
            click.echo(text, err=True)

    with connect(address) as client:
        while True:
            try:
                resp = _lock_request(client, "lock-acquire", ns, path, lock)
                break
            except Conflict:
                if early_return:
                    fail(f'Variable "{path}" is locked by another holder (-early-return: not waiting for it)')
                say(f'Variable "{path}" is locked by another holder; trying again in {wait_s:.1f} s')
                time.sleep(wait_s)
        lock_id = str(resp.json()["Lock"]["ID"])
        say(f'Lock on "{path}" taken ({lock_id[:8]}); running the command')
        cmd = [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(child)] if shell else list(child)
        try:   # a process group of its own, so that a lost lock stops the shell's children too
            proc = subprocess.Popen(cmd, process_group=0)
        except OSError as e:
            _release(client, ns, path, lock_id)
            fail(f"cannot run {cmd[0]}: {e}")
        give_back_terminal = _hand_terminal(proc.pid)
        lost = threading.Event()
        done = threading.Event()

        def renew() -> None:
            failures = 0
            while not done.wait(ttl_s / 2):
                try:
                    _lock_request(client, "lock-renew", ns, path, {"ID": lock_id})
                    failures = 0
                    continue
                except (Conflict, NotFound):
                    pass
                except Exception:   # noqa: BLE001 - the server unreachable: ride out a few
                    failures += 1
                    if failures <= max_retry:
                        say(f'Renewing the lock on "{path}" failed ({failures} of {max_retry} allowed in a row)')
                        continue
                lost.set()
                click.echo(f'Error: the lock on "{path}" was lost; stopping the command', err=True)
                _signal_group(proc.pid, signal.SIGTERM)
                if not done.wait(_KILL_AFTER_S):
                    _signal_group(proc.pid, signal.SIGKILL)
                return

        threading.Thread(target=renew, name="yurt-var-lock-renew", daemon=True).start()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: _signal_group(proc.pid, s))
        rc = proc.wait()
        done.set()
        give_back_terminal()
        if not lost.is_set():
            _release(client, ns, path, lock_id)
            say(f'Lock on "{path}" released')
    sys.exit(1 if lost.is_set() else rc)


_KILL_AFTER_S = 10.0   # a command still running this long after SIGTERM (its lock lost) gets SIGKILL


def _signal_group(pgid: int, sig: int) -> None:
    """Signal the command's whole process group: with `$SHELL -c`, a shell that does not exec its
    last command (dash) would otherwise die alone and leave its children running unlocked."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass   # already gone


def _hand_terminal(pgid: int) -> Any:
    """When `var lock` runs in the foreground of a terminal, make the command's group the
    foreground one (as a shell does), so that it may read the terminal and Ctrl-C reaches it.
    Returns the function that takes the terminal back."""
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
            return lambda: None
        os.tcsetpgrp(fd, pgid)
    except (AttributeError, OSError, ValueError):   # no stdin, or not a real file
        return lambda: None

    def give_back() -> None:
        import signal
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)   # a background group may not set it otherwise
        try:
            os.tcsetpgrp(fd, os.getpgrp())
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTTOU, old)
    return give_back


def _lock_request(client: Any, op: str, ns: str, path: str, lock: dict[str, str]) -> Any:
    """`PUT /v1/var/<path>?<op>` (lock-acquire, lock-renew, lock-release) with `lock` as the body's Lock."""
    return client.request("PUT", _url(path), params={"namespace": ns, op: ""},
                          json={"Namespace": ns, "Path": path, "Lock": lock})


def _release(client: Any, ns: str, path: str, lock_id: str) -> None:
    try:
        _lock_request(client, "lock-release", ns, path, {"ID": lock_id})
    except (Conflict, NotFound):
        pass   # already lost
