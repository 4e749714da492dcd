"""Intentions: which service may open connections to which, as Consul's (CE, L4).

An intention names a source and a destination service (`*` = any, only as the whole name), and
allows or denies. Precedence is computed (9 exact->exact, 8 *->exact, 6 exact->*, 5 *->*); the
first intention in precedence order whose names match decides; none -> the default policy.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from typing import Any
from collections.abc import Callable, Iterable

from yurt.errors import Conflict, InvalidInput, NotFound
from yurt.state import StateError, StateStore
from yurt.structs import Intention
from yurt.structs.connect import ACTION_ALLOW, ACTION_DENY, WILDCARD


class IntentionError(InvalidInput):
    """A bad intention (the API answers 400 with this text)."""


class IntentionExists(Conflict, IntentionError):
    """The legacy create of a pair that already has an intention (409)."""


def precedence(source: str, destination: str) -> int:
    """Consul's table with namespaces both exact (the only namespace is "default")."""
    top = 9 if destination != WILDCARD else 6
    return top - (0 if source != WILDCARD else 1)


def sort_key(ix: Intention) -> tuple:
    return (-ix.precedence, ix.source_ns, ix.source_name, ix.destination_ns, ix.destination_name)


def ordered(intentions: Iterable[Intention]) -> list[Intention]:
    return sorted(intentions, key=sort_key)


def _matches(pattern: str, name: str) -> bool:
    return pattern == WILDCARD or pattern == name


def decide(intentions: Iterable[Intention], source: str, destination: str,
           default_allow: bool) -> tuple[bool, str]:
    """(allowed, reason) for a connection `source` -> `destination`."""
    for ix in ordered(intentions):
        if not (_matches(ix.destination_name, destination) and _matches(ix.source_name, source)):
            continue
        if ix.permissions:
            return False, (f"Matched L7 intention: {ix.source_name} => {ix.destination_name}; "
                           "L7 permissions are treated as deny for an L4 connection")
        allowed = ix.action == ACTION_ALLOW
        return allowed, f"Matched L4 intention: {ix.source_name} => {ix.destination_name} ({ix.action})"
    policy = "allow" if default_allow else "deny"
    return default_allow, f"Default behavior: no intention matched, default policy {policy}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IntentionError(f"{what} is required: a service name or *")
    value = value.strip()
    if WILDCARD in value and value != WILDCARD:
        raise IntentionError(f'{what} "{value}": the wildcard * may only be the whole name')
    return value


class Intentions:
    def __init__(self, store: StateStore, default_allow: bool = True) -> None:
        self.store = store
        self.default_allow = default_allow
        # L7 permissions' check (set by the config entries: the destination must speak http)
        self.check_permissions: Callable[[str, Any], list[dict[str, Any]]] | None = None

    @property
    def default_policy(self) -> str:
        return "allow" if self.default_allow else "deny"

    # -- building ---------------------------------------------------------------------------
    def _build(self, body: dict[str, Any], source: str, destination: str,
               old: Intention | None, keep_id: bool = True) -> Intention:
        action = body.get("Action")
        permissions = body.get("Permissions") or None
        if permissions is not None and not (isinstance(permissions, list)
                                            and all(isinstance(x, dict) for x in permissions)):
            raise IntentionError("Permissions must be a list of objects ({\"Action\": ..., \"HTTP\": {...}})")
        meta = body.get("Meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise IntentionError('Meta must be an object of strings, like {"owner": "team-a"}')
        if permissions and action:
            raise IntentionError("Action and Permissions are mutually exclusive")
        if permissions and self.check_permissions is not None:
            permissions = self.check_permissions(destination, permissions)
        if not permissions:
            action = str(action or "").lower()
            if action not in (ACTION_ALLOW, ACTION_DENY):
                raise IntentionError(f'Action must be "allow" or "deny", not "{body.get("Action", "")}"')
        now = _now()
        return Intention(
            id=old.id if old and keep_id else str(uuid.uuid4()),
            description=str(body.get("Description") or ""), source_name=source,
            destination_name=destination, source_type=str(body.get("SourceType") or "consul"),
            action=action or "", permissions=permissions, meta=dict(meta),
            precedence=precedence(source, destination),
            created_at=old.created_at if old else now, updated_at=now)

    build = _build

    def _write(self, ix: Intention) -> Intention:
        try:
            return self.store.upsert_intention(ix)
        except StateError as e:
            raise IntentionExists(str(e)) from None

    # -- operations -------------------------------------------------------------------------
    def get_exact(self, source: str, destination: str) -> Intention | None:
        for ix in self.store.intentions():
            if ix.source_name == source and ix.destination_name == destination:
                return ix
        return None

    def upsert_exact(self, source: str, destination: str, body: dict[str, Any]) -> Intention:
        source, destination = _name(source, "source"), _name(destination, "destination")
        old = self.get_exact(source, destination)
        return self._write(self._build(body, source, destination, old))

    def create(self, body: dict[str, Any]) -> Intention:
        """The legacy POST: fails if the pair already has an intention."""
        source = _name(body.get("SourceName"), "SourceName")
        destination = _name(body.get("DestinationName"), "DestinationName")
        if self.get_exact(source, destination) is not None:
            raise IntentionExists(f"an intention {source} => {destination} already exists; "
                                  "update it with PUT /v1/connect/intentions/exact")
        return self._write(self._build(body, source, destination, None))

    def update(self, ix_id: str, body: dict[str, Any]) -> Intention:
        old = self.store.intention(ix_id)
        if old is None:
            raise NotFound(f"intention {ix_id!r} not found")
        source = _name(body.get("SourceName", old.source_name), "SourceName")
        destination = _name(body.get("DestinationName", old.destination_name), "DestinationName")
        return self._write(self._build(body, source, destination, old))

    def delete(self, ix_id: str) -> int:
        return self.store.delete_intention(ix_id)

    def delete_exact(self, source: str, destination: str) -> int | None:
        ix = self.get_exact(source, destination)
        return self.store.delete_intention(ix.id) if ix else None

    def get(self, ix_id: str) -> Intention | None:
        return self.store.intention(ix_id)

    def list(self) -> list[Intention]:
        return ordered(self.store.intentions())

    def match(self, by: str, name: str) -> builtins.list[Intention]:
        """The intentions that apply to `name` as a destination (or source), in evaluation order."""
        if by not in ("source", "destination"):
            raise IntentionError('by must be "source" or "destination"')
        attr = "destination_name" if by == "destination" else "source_name"
        return [ix for ix in self.list() if _matches(getattr(ix, attr), name)]

    def check(self, source: str, destination: str) -> tuple[bool, str]:
        return decide(self.match("destination", destination), source, destination, self.default_allow)
