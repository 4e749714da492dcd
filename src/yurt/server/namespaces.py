"""Nomad's namespaces: the rows of the keyed table "namespaces" (by name), `default` always
there (implicitly, until someone updates it) and never deleted; and the checks that keep jobs
inside namespaces that exist (a job in a nonexistent namespace is refused, a namespace that
still has live jobs, allocations or variables cannot be deleted), as
nomad/namespace_endpoint.go and the job admission's namespace hook.
"""

from __future__ import annotations

import re
from typing import Any

from yurt.errors import InvalidInput
from yurt.state import StateStore
from yurt.state.writes import Txn
from yurt.structs import Job, Namespace

TABLE = "namespaces"
DEFAULT = "default"
NAME_RE = re.compile(r"^[a-zA-Z0-9-]{1,128}$")
MAX_DESCRIPTION = 256   # Nomad's maxNamespaceDescriptionLength
_FIELDS = {"Name": "name", "Description": "description", "Quota": "quota", "Meta": "meta",
           "Capabilities": "capabilities", "NodePoolConfiguration": "node_pool_configuration",
           "VaultConfiguration": "vault_configuration", "ConsulConfiguration": "consul_configuration"}
_CAP_LISTS = ("EnabledTaskDrivers", "DisabledTaskDrivers", "EnabledNetworkModes", "DisabledNetworkModes")


def default_namespace() -> Namespace:
    """`default` as Nomad creates it at bootstrap (until it is updated and stored)."""
    return Namespace(name=DEFAULT, description="Default shared namespace", create_index=1, modify_index=1)


def namespace_from_json(body: Any) -> Namespace:
    """Nomad's JSON namespace (the API's body) -> a validated `Namespace`. Fields Yurt does not
    know (Hash, CreateIndex ...) are ignored, as Nomad's decoder does; a wrong type or name is
    an InvalidInput naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a namespace object: {"Name": "prod", "Description": "..."}')
    values: dict[str, Any] = {}
    for key, attr in _FIELDS.items():
        value = body.get(key)
        if value is None:
            continue
        if attr in ("name", "description", "quota"):
            if not isinstance(value, str):
                raise InvalidInput(f'namespace {key} must be a string, not {value!r}')
        elif attr == "meta":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise InvalidInput(f'namespace Meta must be an object of strings ({{"owner": "team-a"}}), '
                                   f'not {value!r}')
        elif not isinstance(value, dict):
            raise InvalidInput(f"namespace {key} must be an object, not {value!r}")
        values[attr] = value
    ns = Namespace(**values)
    validate(ns)
    return ns


def validate(ns: Namespace) -> None:
    problems = []
    if not NAME_RE.match(ns.name):
        problems.append(f'invalid name "{ns.name}". Must match regex {NAME_RE.pattern}')
    if len(ns.description) > MAX_DESCRIPTION:
        problems.append(f"description longer than {MAX_DESCRIPTION}")
    for key in _CAP_LISTS:
        value = (ns.capabilities or {}).get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"Capabilities.{key} must be a list of strings, not {value!r}")
    if problems:
        raise InvalidInput(f'Invalid namespace "{ns.name}": ' + "; ".join(problems))


class Namespaces:
    """The server's namespace operations (the API's /v1/namespace* routes call these)."""

    def __init__(self, store: StateStore, region: str = "global") -> None:
        self.store = store
        self.region = region

    # -- reads ------------------------------------------------------------------------------
    def get(self, name: str) -> Namespace | None:
        row = self.store.keyed_get(TABLE, name)
        if row is None:
            return default_namespace() if name == DEFAULT else None
        assert isinstance(row, Namespace)
        return row

    def by_prefix(self, prefix: str = "") -> list[Namespace]:
        """By name; `default` among them always."""
        rows = {k: r for k, r in self.store.keyed_list(TABLE, prefix) if isinstance(r, Namespace)}
        if DEFAULT.startswith(prefix) and DEFAULT not in rows:
            rows[DEFAULT] = default_namespace()
        return [rows[k] for k in sorted(rows)]

    def exists(self, name: str) -> bool:
        return self.get(name) is not None

    # -- writes -----------------------------------------------------------------------------
    def upsert(self, ns: Namespace) -> int:
        """Create or replace the namespace; its write's index."""
        validate(ns)

        def build(txn: Txn) -> Namespace:
            old = txn.keyed(TABLE, ns.name)
            row = ns.model_copy(update={"create_index": old.create_index if isinstance(old, Namespace)
                                        else txn.index, "modify_index": txn.index})
            txn.put_keyed(TABLE, ns.name, row)
            return row
        index, _ = self.store.keyed_write(build)
        return index

    def delete(self, name: str) -> int:
        """Delete the namespace (Nomad: nothing happens for one that does not exist). Refused
        for `default`, and while jobs that are not dead, allocations that are not terminal, or
        variables live in it."""
        if name == DEFAULT:
            raise InvalidInput("can not delete default namespace")
        if self.store.keyed_get(TABLE, name) is None:
            return self.store.table_index(TABLE)
        problems = self.in_use(name)
        if problems:
            raise InvalidInput("; ".join(problems))

        def build(txn: Txn) -> None:
            txn.drop_keyed(TABLE, name)
        index, _ = self.store.keyed_write(build)
        return index

    def in_use(self, name: str) -> list[str]:
        """Nomad's reasons a namespace cannot go, in its words."""
        where = f"[{self.region}]"
        problems = []
        if any(j.status != "dead" for j in self.store.jobs(name)):
            problems.append(f'namespace "{name}" has non-terminal jobs in regions: {where}')
        if any(not a.client_terminal() for a in self.store.allocs(namespace=name)):
            problems.append(f'namespace "{name}" has non-terminal allocations in regions: {where}')
        if self.store.keyed_list("variables", f"{name}\x00"):
            problems.append(f'namespace "{name}" has variables associated with it in regions: {where}')
        return problems

    # -- jobs -------------------------------------------------------------------------------
    def admit(self, job: Job) -> None:
        """Nomad's namespace check of a job being registered or planned: the namespace exists
        and allows the job's task drivers and network modes (its Capabilities)."""
        name = job.namespace or DEFAULT
        ns = self.get(name)
        if ns is None:
            raise InvalidInput(f'job "{job.id}" is in nonexistent namespace "{name}": create the namespace '
                               "first (yurt namespace apply NAME) or submit the job to one that exists")
        caps = ns.capabilities or {}
        if not caps:
            return
        drivers = {t.driver for g in job.task_groups or [] for t in g.tasks or []}
        modes = {n.effective_mode for g in job.task_groups or [] for n in g.networks or []}
        for kind, used in (("task driver", drivers), ("network mode", modes)):
            key = "TaskDrivers" if kind == "task driver" else "NetworkModes"
            enabled, disabled = caps.get("Enabled" + key) or [], caps.get("Disabled" + key) or []
            bad = sorted(u for u in used if (enabled and u not in enabled) or u in disabled)
            if bad:
                listed = ", ".join(f'"{b}"' for b in bad)
                raise InvalidInput(f'used {kind}{"s" if len(bad) > 1 else ""} {listed} '
                                   f'{"are" if len(bad) > 1 else "is"} not allowed in namespace "{name}"')
