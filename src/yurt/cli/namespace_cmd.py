"""`yurt namespace apply | list | status | inspect | delete`, as `nomad namespace ...`
(command/namespace_*.go)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from yurt.api.client import YurtClient
from yurt.errors import NotFound

from .flags import NomadGroup
from .format import address_option, api_errors, connect, echo, heading, kv, print_table
from .output import EXIT_ERROR, fail, out

CTX = {"help_option_names": ["-h", "-help", "--help"]}


@click.group("namespace", cls=NomadGroup, context_settings=CTX)
def namespace_group() -> None:
    """Namespaces: jobs, their allocations, evaluations and deployments live in one."""


def _path(name: str) -> str:
    return "/v1/namespace/" + quote(name, safe="")


# -- apply ------------------------------------------------------------------------------------

def _unquote(v: Any) -> Any:
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [_unquote(x) for x in v]
    return v


def _block(spec: dict[str, Any], key: str, file: str) -> dict[str, Any]:
    value = spec.get(key)
    blocks = value if isinstance(value, list) else [value]
    if not blocks or not isinstance(blocks[0], dict):
        fail(f"{file}: {key} must be a block: {key} {{ ... }}")
    return {k: _unquote(v) for k, v in blocks[0].items() if not k.startswith("__")}


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


SPEC_KEYS = ("name", "description", "quota", "meta", "capabilities", "node_pool_config", "vault", "consul")


def parse_spec(text: str, file: str) -> dict[str, Any]:
    """A namespace specification file (HCL, as `nomad namespace apply` reads) -> the API's JSON."""
    import hcl2
    try:
        spec = hcl2.loads(text)
    except Exception as e:  # noqa: BLE001 - Lark's errors carry line and column
        line = getattr(e, "line", 0)
        where = f"line {line}" if line and line > 0 else "syntax"
        fail(f"Error parsing namespace specification: {file}: {where}: not valid HCL: "
             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    unknown = sorted(k for k in spec if not k.startswith("__") and k not in SPEC_KEYS)
    if unknown:
        fail(f'Error parsing namespace specification: {file}: unknown key "{unknown[0]}"; a namespace '
             f"takes {', '.join(SPEC_KEYS)}")
    doc: dict[str, Any] = {}
    for key in ("name", "description", "quota"):
        if key in spec:
            value = _unquote(spec[key])
            if not isinstance(value, str):
                fail(f"Error parsing namespace specification: {file}: {key} must be a string")
            doc[_pascal(key)] = value
    if "meta" in spec:
        doc["Meta"] = {k: str(v) for k, v in _block(spec, "meta", file).items()}
    for key, field in (("capabilities", "Capabilities"), ("node_pool_config", "NodePoolConfiguration"),
                       ("vault", "VaultConfiguration"), ("consul", "ConsulConfiguration")):
        if key in spec:
            doc[field] = {_pascal(k): v for k, v in _block(spec, key, file).items()}
    return doc


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            fail(f'-meta "{pair}" must be key=value')
        meta[k] = v
    return meta


@namespace_group.command("apply")
@click.argument("target", metavar="NAME|FILE")
@click.option("-description", "--description", default=None, help="The namespace's description.")
@click.option("-meta", "--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata (repeatable); replaces the namespace's metadata.")
@click.option("-quota", "--quota", default=None, hidden=True)
@click.option("-json", "--json", "as_json", is_flag=True, help="FILE is JSON (the API's namespace object).")
@address_option
@api_errors
def apply_cmd(target: str, description: str | None, meta: tuple[str, ...], quota: str | None, as_json: bool,
              address: str | None) -> None:
    """Create or update a namespace: by NAME with the flags, or from a specification FILE
    (HCL: name, description, meta { }, capabilities { }; - reads stdin)."""
    is_file = target == "-" or os.path.isfile(target)
    with connect(address) as client:
        if is_file:
            if description is not None or meta or quota is not None:
                click.echo("Flags are ignored when a file is specified!", err=True)
            text = click.get_text_stream("stdin").read() if target == "-" else _read(target)
            if as_json:
                try:
                    doc = json.loads(text)
                except ValueError as e:
                    fail(f"Failed to parse namespace: {target}: {e}")
            else:
                doc = parse_spec(text, target)
            if not isinstance(doc, dict) or not doc.get("Name"):
                fail(f'{target}: the namespace specification needs a name (name = "prod")')
        else:
            doc = _current(client, target) or {"Name": target}
            if description is not None:
                doc["Description"] = description
            if quota is not None:
                doc["Quota"] = quota
            if meta:
                doc["Meta"] = _meta(meta)
        client.put(_path(str(doc["Name"])), doc)
    echo(f'Successfully applied namespace "{doc["Name"]}"!')


def _read(file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"Failed to read file: {file}: {e.strerror}")


def _current(client: YurtClient, name: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = client.get(_path(name))[0]
        return doc
    except NotFound:
        return None


# -- list, status, inspect, delete ------------------------------------------------------------

def _list_table(namespaces: list[dict]) -> None:
    if not namespaces:
        echo("No namespaces found")
        return
    print_table(["Name", "Description"],
                [(n.get("Name"), n.get("Description") or "") for n in sorted(namespaces, key=lambda n: n["Name"])])


@namespace_group.command("list")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the namespaces as JSON.")
@address_option
@api_errors
def list_cmd(as_json: bool, address: str | None) -> None:
    """List the namespaces (those the token has some capability in)."""
    with connect(address) as client:
        namespaces = client.get("/v1/namespaces")[0]
    if as_json:
        echo(json.dumps(namespaces, indent=4))
    else:
        _list_table(namespaces)


def _find(client: YurtClient, name: str) -> dict:
    """Nomad's getNamespace: by prefix, an exact name winning; several -> list them, exit 1."""
    found = client.get("/v1/namespaces", prefix=name)[0]
    exact = [n for n in found if n.get("Name") == name]
    if exact:
        return dict(exact[0])
    if not found:
        fail(f'Error retrieving namespaces: Namespace "{name}" matched no namespaces')
    if len(found) > 1:
        out.print("Error: Prefix matched multiple namespaces\n", markup=False)
        _list_table(found)
        raise SystemExit(EXIT_ERROR)
    return dict(found[0])


@namespace_group.command("status")
@click.argument("name", metavar="NAME")
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the namespace as JSON.")
@address_option
@api_errors
def status_cmd(name: str, as_json: bool, address: str | None) -> None:
    """Show a namespace (NAME may be a unique prefix)."""
    with connect(address) as client:
        ns = _find(client, name)
    if as_json:
        echo(json.dumps(ns, indent=4))
        return
    caps = ns.get("Capabilities") or {}

    def joined(key: str, none: str) -> str:
        return ",".join(caps.get(key) or []) or none
    echo(kv([("Name", ns.get("Name")), ("Description", ns.get("Description") or ""),
             ("Quota", ns.get("Quota") or ""),
             ("Enabled Drivers", joined("EnabledTaskDrivers", "*")),
             ("Disabled Drivers", joined("DisabledTaskDrivers", "")),
             ("Enabled Network Modes", joined("EnabledNetworkModes", "*")),
             ("Disabled Network Modes", joined("DisabledNetworkModes", ""))]))
    if ns.get("Meta"):
        echo()
        heading("Metadata")
        echo(kv(sorted(ns["Meta"].items())))


@namespace_group.command("inspect")
@click.argument("name", metavar="NAME")
@address_option
@api_errors
def inspect_cmd(name: str, address: str | None) -> None:
    """Print a namespace as JSON (NAME may be a unique prefix)."""
    with connect(address) as client:
        echo(json.dumps(_find(client, name), indent=4))


@namespace_group.command("delete")
@click.argument("name", metavar="NAME")
@address_option
@api_errors
def delete_cmd(name: str, address: str | None) -> None:
    """Delete a namespace (refused for default, and while jobs, allocations or variables live in it)."""
    with connect(address) as client:
        client.request("DELETE", _path(name))
    echo(f'Successfully deleted namespace "{name}"!')
