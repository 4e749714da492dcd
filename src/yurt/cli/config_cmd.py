"""`yurt config write | read | list | delete`, as `consul config ...`: Consul's config entries
(`/v1/config`), written from an HCL or JSON file in Consul's shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo
from .output import fail

CTX = {"help_option_names": ["-h", "-help", "--help"]}


@click.group("config", cls=NomadGroup, context_settings=CTX)
def config_group() -> None:
    """Config entries: service defaults, routers, splitters, resolvers, intentions, gateways."""


def _clean(value: Any) -> Any:
    """python-hcl2's output as plain data: no position keys, no quotes kept around strings."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def read_entry(path: str) -> dict[str, Any]:
    """A config entry file: JSON (a .json file, or text starting with "{"), else HCL."""
    try:
        text = Path(path).read_text() if path != "-" else click.get_text_stream("stdin").read()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if path.endswith(".json") or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            fail(f"{path}: invalid JSON: {e}")
    else:
        import hcl2

        from yurt.jobspec import JobspecError, check_hcl_syntax
        try:
            check_hcl_syntax(text, path)   # the line, the column and a hint, as for job files
            doc = _clean(hcl2.loads(text))
        except JobspecError as e:
            fail(str(e))
        except Exception as e:  # noqa: BLE001 - python-hcl2 raises lark's many error types
            fail(f"{path}: invalid HCL: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if not isinstance(doc, dict):
        fail(f'{path}: a config entry is an object with Kind and Name, like Kind = "service-defaults"')
    return doc


@config_group.command("write")
@click.argument("file")
@click.option("-cas", "--cas", is_flag=True, help="Write only if the entry is unchanged since -modify-index.")
@click.option("-modify-index", "--modify-index", "modify_index", type=int, default=0,
              help="With -cas: the ModifyIndex the entry must still have (0: create only).")
@address_option
@api_errors
def write_cmd(file: str, cas: bool, modify_index: int, address: str | None) -> None:
    """Create or update the config entry in FILE (HCL or JSON; - reads standard input)."""
    entry = read_entry(file)
    params = {"cas": modify_index} if cas else {}
    with connect(address) as client:
        ok = client.put("/v1/config", entry, **params)
    kind = entry.get("Kind", entry.get("kind", ""))
    name = entry.get("Name", entry.get("name", "")) or ("mesh" if kind == "mesh" else "")   # the one mesh entry
    if ok is False:
        fail(f"Config entry not updated: {kind}/{name} (its ModifyIndex is no longer {modify_index})")
    echo(f"Config entry written: {kind}/{name}")


def _path(kind: str, name: str = "") -> str:
    return "/v1/config/" + quote(kind, safe="") + ("/" + quote(name, safe="") if name else "")


@config_group.command("read")
@click.option("-kind", "--kind", required=True, help="The entry's kind (service-defaults, service-router, ...).")
@click.option("-name", "--name", required=True, help="The entry's name.")
@address_option
@api_errors
def read_cmd(kind: str, name: str, address: str | None) -> None:
    """Print one config entry as JSON."""
    with connect(address) as client:
        entry, _ = client.get(_path(kind, name))
    echo(json.dumps(entry, indent=4))


@config_group.command("list")
@click.option("-kind", "--kind", required=True, help="The kind of entries to list.")
@address_option
@api_errors
def list_cmd(kind: str, address: str | None) -> None:
    """List the names of the config entries of one kind."""
    with connect(address) as client:
        entries, _ = client.get(_path(kind))
    for e in entries or []:
        echo(e.get("Name", ""))


@config_group.command("delete")
@click.option("-kind", "--kind", required=True, help="The entry's kind.")
@click.option("-name", "--name", required=True, help="The entry's name.")
@click.option("-cas", "--cas", is_flag=True, help="Delete only if the entry is unchanged since -modify-index.")
@click.option("-modify-index", "--modify-index", "modify_index", type=int, default=0,
              help="With -cas: the ModifyIndex the entry must still have.")
@address_option
@api_errors
def delete_cmd(kind: str, name: str, cas: bool, modify_index: int, address: str | None) -> None:
    """Delete a config entry (deleting one that does not exist is not an error, as Consul's)."""
    params = {"cas": modify_index} if cas else {}
    with connect(address) as client:
        ok = client.delete(_path(kind, name), **params)
    if ok is False:
        fail(f"Config entry not deleted: {kind}/{name} (its ModifyIndex is no longer {modify_index})")
    echo(f"Config entry deleted: {kind}/{name}")
