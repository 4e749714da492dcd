"""The server's ACL operations: bootstrap, policies and tokens (Nomad's ACL endpoints).

Secrets are made here, returned once, and stored only as their sha256 (see `structs.acl`). A
second bootstrap is refused with the index to reset with: write it to `acl-bootstrap-reset` in
the server's data directory, as Nomad does.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from yurt.errors import InvalidInput, NotFound
from yurt.state import StateError, StateStore
from yurt.structs import (TOKEN_CLIENT, TOKEN_MANAGEMENT, ACLPolicy, ACLToken, format_duration,
                          parse_duration, secret_hash)

from .acl import ACLResolver, WorkloadVerifier, check_name, parse_rules

RESET_FILE = "acl-bootstrap-reset"
MIN_TTL, MAX_TTL = 60 * 10**9, 24 * 3600 * 10**9


def go_duration(ns: int) -> str:
    """Go's time.Duration.String() for whole seconds and up: "1h0m0s", "1m30s", "2s"."""
    s = ns // 10**9
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


class ACLAdmin:
    def __init__(self, store: StateStore, verifier: WorkloadVerifier | None = None) -> None:
        self.store = store
        self.resolver = ACLResolver(store, verifier)
        self.min_ttl, self.max_ttl = MIN_TTL, MAX_TTL   # the agent's acl { token_*_expiration_ttl }

    @property
    def reset_path(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.store.path)), RESET_FILE)

    # --- bootstrap -----------------------------------------------------------------------------

    def bootstrap(self, secret: str = "") -> ACLToken:
        """The first management token, once. Returns it with its SecretID (shown only now)."""
        if secret:
            try:
                uuid.UUID(secret)
            except ValueError:
                raise InvalidInput("BootstrapSecret must be a UUID (like the SecretIDs Yurt makes)") from None
        reset = 0
        try:
            with open(self.reset_path, encoding="utf-8") as f:
                reset = int(f.read().strip() or 0)
        except (OSError, ValueError):
            reset = 0
        token = self._new_token(name="Bootstrap Token", type_=TOKEN_MANAGEMENT, policies=[],
                                global_=True, secret=secret)
        try:
            stored = self.store.acl_bootstrap(token, reset)
        except StateError as e:
            done = self.store.acl_bootstrap_index()
            raise InvalidInput(f"{e.message}: ACLs can be bootstrapped only once, and this cluster has "
                               f"its bootstrap token. To bootstrap again (a lost token), write {done} to "
                               f"{self.reset_path} on the server and retry") from None
        if reset:
            try:
                os.unlink(self.reset_path)
            except OSError:
                pass
        return stored.model_copy(update={"secret_id": token.secret_id})

    # --- policies ------------------------------------------------------------------------------

    def upsert_policy(self, name: str, body: dict[str, Any]) -> int:
        if not isinstance(body, dict):
            raise InvalidInput('the body must be an ACL policy: {"Name": ..., "Rules": ...}')
        unknown = sorted(set(body) - {"Name", "Description", "Rules", "RulesJSON", "JobACL", "Hash",
                                      "CreateIndex", "ModifyIndex"})
        if unknown:
            raise InvalidInput(f"Invalid or duplicate policy keys: {', '.join(unknown)}")
        if body.get("Name", name) != name:
            raise InvalidInput("ACL policy name does not match request path")
        check_name(name)
        desc = str(body.get("Description") or "")
        if len(desc) > 256:
            raise InvalidInput("ACL policy description is longer than 256 characters")
        rules = body.get("Rules")
        if not isinstance(rules, str):
            raise InvalidInput(f'ACL policy "{name}": "Rules" must be the policy text (HCL or JSON)')
        parse_rules(name, rules)
        return self.store.upsert_acl_policy(ACLPolicy(name=name, description=desc, rules=rules))

    def delete_policy(self, name: str) -> int:
        return self.store.delete_acl_policy(name)

    def policy(self, name: str) -> ACLPolicy:
        p = self.store.acl_policy(name)
        if p is None:
            raise NotFound("ACL policy not found")
        return p

    # --- tokens --------------------------------------------------------------------------------

    def _new_token(self, *, name: str, type_: str, policies: list[str], global_: bool = False,
                   ttl: str = "", secret: str = "") -> ACLToken:
        now = time.time_ns()
        secret = secret or str(uuid.uuid4())
        exp = 0
        if ttl:
            exp = now + _ttl(ttl, self.min_ttl, self.max_ttl)
        return ACLToken(accessor_id=str(uuid.uuid4()), secret_id=secret, secret_hash=secret_hash(secret),
                        name=name, type=type_, policies=policies, global_=global_,
                        create_time=_rfc3339(now), expiration_time=_rfc3339(exp) if exp else None,
                        expiration_ttl=go_duration(exp - now) if exp else "", expiration_ns=exp)

    def create_token(self, body: dict[str, Any]) -> ACLToken:
        name, type_, policies = _token_fields(body)
        ttl = body.get("ExpirationTTL") or ""
        if isinstance(ttl, int):
            ttl = f"{ttl}ns"
        token = self._new_token(name=name, type_=type_, policies=policies,
                                global_=bool(body.get("Global")), ttl=str(ttl))
        stored = self.store.upsert_acl_token(token)
        return stored.model_copy(update={"secret_id": token.secret_id})

    def update_token(self, accessor: str, body: dict[str, Any]) -> ACLToken:
        old = self.token(accessor)
        if body.get("AccessorID", accessor) != accessor:
            raise InvalidInput("AccessorID in the body does not match the request path")
        if "ExpirationTTL" in body and body["ExpirationTTL"] not in ("", None, old.expiration_ttl):
            raise InvalidInput("ExpirationTTL cannot be changed after a token is created")
        if "Global" in body and bool(body["Global"]) != old.global_:
            raise InvalidInput("Global cannot be changed after a token is created")
        name, type_, policies = _token_fields({**old.public(), **body})
        return self.store.upsert_acl_token(old.model_copy(update={"name": name, "type": type_,
                                                                  "policies": policies}))

    def delete_token(self, accessor: str) -> int:
        return self.store.delete_acl_token(accessor)

    def token(self, accessor: str) -> ACLToken:
        tok = self.store.acl_token(accessor)
        if tok is None:
            raise NotFound("ACL token not found")
        return tok

    def tokens(self) -> list[ACLToken]:
        return self.store.acl_tokens()


def _ttl(value: str, low: int, high: int) -> int:
    try:
        ns = parse_duration(value)
    except ValueError as e:
        raise InvalidInput(f"ExpirationTTL: {e}") from None
    if not low <= ns <= high:
        raise InvalidInput(f'ExpirationTTL "{value}" is outside the allowed window: between '
                           f'{format_duration(low)} and {format_duration(high)} (the servers\' acl '
                           '{ token_min_expiration_ttl, token_max_expiration_ttl })')
    return ns


def _token_fields(body: dict[str, Any]) -> tuple[str, str, list[str]]:
    if not isinstance(body, dict):
        raise InvalidInput('the body must be an ACL token: {"Name": ..., "Type": ..., "Policies": [...]}')
    name = str(body.get("Name") or "")
    if len(name) > 256:
        raise InvalidInput("ACL token name is longer than 256 characters")
    type_ = str(body.get("Type") or TOKEN_CLIENT)
    if type_ not in (TOKEN_CLIENT, TOKEN_MANAGEMENT):
        raise InvalidInput(f'ACL token Type "{type_}" must be "client" or "management"')
    policies = body.get("Policies") or []
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        raise InvalidInput('ACL token "Policies" must be a list of policy names')
    if type_ == TOKEN_CLIENT and not policies:
        raise InvalidInput("client ACL tokens need at least one policy: give -policy NAME")
    if type_ == TOKEN_MANAGEMENT and policies:
        raise InvalidInput("management ACL tokens cannot have policies: they may do everything")
    return name, type_, list(policies)
