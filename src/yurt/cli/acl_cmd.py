"""`yurt acl bootstrap | policy ... | token ...`, as `nomad acl ...`.

Every command takes `-token` (else $YURT_TOKEN, else $NOMAD_TOKEN) and `-address`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .flags import NomadGroup
from .format import api_message, address_option, api_errors, connect, echo, kv, print_table
from .output import fail

CTX = {"help_option_names": ["-h", "-help", "--help"]}


@click.group("acl", cls=NomadGroup, context_settings=CTX)
def acl_group() -> None:
    """ACLs: bootstrap, policies and tokens."""


@acl_group.group("policy", cls=NomadGroup, context_settings=CTX)
def policy_group() -> None:
    """ACL policies: named sets of rules."""


@acl_group.group("token", cls=NomadGroup, context_settings=CTX)
def token_group() -> None:
    """ACL tokens: secrets that carry policies."""


def show_token(tok: dict[str, Any]) -> None:
    policies = ", ".join(tok.get("Policies") or []) or "n/a"
    if tok.get("Type") == "management":
        policies = "n/a"
    rows: list[tuple[str, Any]] = [("Accessor ID", tok.get("AccessorID")),
                                   ("Secret ID", tok.get("SecretID", "<hidden>")),
                                   ("Name", tok.get("Name")), ("Type", tok.get("Type")),
                                   ("Global", bool(tok.get("Global"))), ("Create Time", tok.get("CreateTime")),
                                   ("Expiry Time", tok.get("ExpirationTime")),
                                   ("Create Index", tok.get("CreateIndex")),
                                   ("Modify Index", tok.get("ModifyIndex")), ("Policies", policies),
                                   ("Roles", "n/a")]
    echo(kv(rows))


@acl_group.command("bootstrap")
@address_option
@api_errors
def bootstrap_cmd(address: str | None) -> None:
    """Create the first management token (once per cluster)."""
    with connect(address) as client:
        show_token(client.put("/v1/acl/bootstrap"))


# -- policies ---------------------------------------------------------------------------------

@policy_group.command("apply")
@click.option("-description", "--description", default="", help="A description of the policy.")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@address_option
@api_errors
def policy_apply_cmd(description: str, name: str, file: str, address: str | None) -> None:
    """Create or update policy NAME from FILE (HCL or JSON; - reads stdin)."""
    if file == "-":
        rules = click.get_text_stream("stdin").read()
    else:
        try:
            rules = Path(file).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"cannot read the policy file {file}: {e.strerror}")
    from yurt.errors import InvalidInput
    with connect(address) as client:
        try:
            client.request("PUT", f"/v1/acl/policy/{name}",
                           json={"Name": name, "Description": description, "Rules": rules})
        except InvalidInput as e:   # the rule and line are the server's; the file is ours
            fail(f"{'<stdin>' if file == '-' else file}: {api_message(e)}")
    echo(f'Successfully wrote "{name}" ACL policy!')


@policy_group.command("list")
@address_option
@api_errors
def policy_list_cmd(address: str | None) -> None:
    """List policies."""
    with connect(address) as client:
        items, _ = client.get("/v1/acl/policies")
    if not items:
        echo("No policies found")
        return
    print_table(["Name", "Description"], [(p["Name"], p.get("Description", "")) for p in items])


@policy_group.command("info")
@click.argument("name")
@address_option
@api_errors
def policy_info_cmd(name: str, address: str | None) -> None:
    """Show policy NAME and its rules."""
    with connect(address) as client:
        p, _ = client.get(f"/v1/acl/policy/{name}")
    echo(kv([("Name", p["Name"]), ("Description", p.get("Description", "")),
             ("Create Index", p.get("CreateIndex")), ("Modify Index", p.get("ModifyIndex"))]))
    echo("\nRules\n\n" + p.get("Rules", "").rstrip())


@policy_group.command("delete")
@click.argument("name")
@address_option
@api_errors
def policy_delete_cmd(name: str, address: str | None) -> None:
    """Delete policy NAME."""
    with connect(address) as client:
        client.request("DELETE", f"/v1/acl/policy/{name}")
    echo(f'Successfully deleted "{name}" ACL policy!')


# -- tokens -----------------------------------------------------------------------------------

@token_group.command("create")
@click.option("-name", "--name", default="", help="A name for the token.")
@click.option("-type", "--type", "type_", type=click.Choice(["client", "management"]), default="client",
              help="client (the default; needs -policy) or management.")
@click.option("-policy", "--policy", "policies", multiple=True, help="A policy for the token; repeatable.")
@click.option("-global", "--global", "global_", is_flag=True, help="Make the token global.")
@click.option("-ttl", "--ttl", default="", help='How long the token lives, e.g. "1h" (1m..24h).')
@address_option
@api_errors
def token_create_cmd(name: str, type_: str, policies: tuple[str, ...], global_: bool, ttl: str,
                     address: str | None) -> None:
    """Create a token; its Secret ID is shown only now."""
    body: dict[str, Any] = {"Name": name, "Type": type_, "Policies": list(policies), "Global": global_}
    if ttl:
        body["ExpirationTTL"] = ttl
    with connect(address) as client:
        show_token(client.put("/v1/acl/token", body))


@token_group.command("list")
@address_option
@api_errors
def token_list_cmd(address: str | None) -> None:
    """List tokens (management token only)."""
    with connect(address) as client:
        items, _ = client.get("/v1/acl/tokens")
    now = datetime.now(UTC)

    def expired(t: dict[str, Any]) -> bool:
        exp = t.get("ExpirationTime")
        return bool(exp) and datetime.fromisoformat(str(exp).replace("Z", "+00:00")) <= now

    print_table(["Name", "Type", "Global", "Accessor ID", "Expired"],
                [(t.get("Name"), t.get("Type"), bool(t.get("Global")), t["AccessorID"], expired(t))
                 for t in items])


@token_group.command("info")
@click.argument("accessor")
@address_option
@api_errors
def token_info_cmd(accessor: str, address: str | None) -> None:
    """Show the token with ACCESSOR ID (its secret is never shown again)."""
    with connect(address) as client:
        tok, _ = client.get(f"/v1/acl/token/{accessor}")
    show_token(tok)


@token_group.command("self")
@address_option
@api_errors
def token_self_cmd(address: str | None) -> None:
    """Show the token this command runs with."""
    with connect(address) as client:
        tok, _ = client.get("/v1/acl/token/self")
    show_token(tok)


@token_group.command("update")
@click.argument("accessor")
@click.option("-name", "--name", default=None, help="A new name.")
@click.option("-type", "--type", "type_", type=click.Choice(["client", "management"]), default=None,
              help="A new type.")
@click.option("-policy", "--policy", "policies", multiple=True, help="The token's policies (replaces them).")
@address_option
@api_errors
def token_update_cmd(accessor: str, name: str | None, type_: str | None, policies: tuple[str, ...],
                     address: str | None) -> None:
    """Change a token's name, type or policies."""
    body: dict[str, Any] = {"AccessorID": accessor}
    if name is not None:
        body["Name"] = name
    if type_ is not None:
        body["Type"] = type_
        if type_ == "management":
            body["Policies"] = []
    if policies:
        body["Policies"] = list(policies)
    with connect(address) as client:
        show_token(client.put(f"/v1/acl/token/{accessor}", body))


@token_group.command("delete")
@click.argument("accessor")
@address_option
@api_errors
def token_delete_cmd(accessor: str, address: str | None) -> None:
    """Delete the token with ACCESSOR ID."""
    with connect(address) as client:
        client.request("DELETE", f"/v1/acl/token/{accessor}")
    echo(f"Token {accessor} successfully deleted")
