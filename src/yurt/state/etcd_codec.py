"""How the store's rows sit in etcd: one key per object, Nomad's JSON as the value.

```
<prefix>jobs/<ns>/<id>              the job            versions/<ns>/<id>/<token>  {"Purged", "Job"}
<prefix>evals/<id>                  allocs/<id>  {"Alloc", "JobNamespace", "JobID", "JobModifyIndex", "InlineJob"}
<prefix>nodes/<id>                  services/<node>/<id>    intentions/<id>    deployments/<id>
<prefix>ca/state  ca/serial         acl/policies/<name>  acl/tokens/<accessor>  acl/bootstrap
<prefix>index/<table>               put by every write that changes the table: its mod_revision
                                    is the table's index (deletions included)
<prefix>leader  members/<name>      leadership and liveness, on the servers' leases
<prefix>servers/<name>              every server that ever joined (`server members` shows the dead)
```

The index of a write is etcd's revision, known only once the transaction commits. So a write is
built with `PENDING` where its index goes, and every field named `...Index` that holds
`PENDING` is read back as the revision the key was written at (`restamp`): `ModifyIndex` is the
key's mod_revision, and `CreateIndex` its create_revision for a new object.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import quote, unquote

from pydantic import BaseModel

from yurt.structs import (ACLPolicy, ACLToken, Allocation, CAState, Deployment, Evaluation, Intention, Job, Node,
                          ServiceRegistration)
from yurt.structs.alloc import head_json

from . import etcd_client as ec
from .keyed import KEYED
from .memory import Tables, VersionKey, version_key
from .sqlite_backend import Changes

PENDING = 2**52 + 1   # "this write's index": larger than any revision, exact as a JSON number


def restamp(obj: Any, revision: int) -> Any:
    """Replace PENDING by `revision` in every `...Index` field, in place; returns `obj`."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if v == PENDING and isinstance(v, int) and k.endswith("Index"):
                obj[k] = revision
            elif isinstance(v, (dict, list)):
                restamp(v, revision)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                restamp(v, revision)
    return obj


# the tables whose rows a server's own write applies as built (`stamp`), not decoded again
OWN_ROWS = ("jobs", "evals", "allocs", "nodes", "deployments")

_PATHS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _index_paths(cls: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A model's `...Index` integer fields, and its fields that may hold models with some."""
    got = _PATHS.get(cls)
    if got is not None:
        return got
    _PATHS[cls] = ((), ())   # a model that holds itself
    own, nested = [], []
    for name, f in cls.model_fields.items():
        if (f.alias or name).endswith("Index") and f.annotation is int:
            own.append(name)
        elif any(any(_index_paths(m)) for m in _models_in(f.annotation)):
            nested.append(name)
    _PATHS[cls] = (tuple(own), tuple(nested))
    return _PATHS[cls]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def stamp(obj: Any, revision: int) -> None:
    """`restamp` for objects: PENDING replaced by `revision` in every `...Index` field of the
    model and of the models it holds, in place. Only an object this write built holds PENDING,
    so nothing anybody else reads is touched. Fields are found by their declared types."""
    if isinstance(obj, BaseModel):
        own, nested = _index_paths(type(obj))
        d = obj.__dict__
        for name in own:
            if d[name] == PENDING:
                d[name] = revision
        for name in nested:
            stamp(d[name], revision)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            stamp(v, revision)
    elif isinstance(obj, dict):
        for v in obj.values():
            stamp(v, revision)


# `"...Index": PENDING` as JSON text: a key ending in Index (a string followed by ":" is a key; a
# quote escaped inside a string never directly follows "Index"), then exactly PENDING as an integer
_PENDING_FIELD = re.compile(rb'(Index"\s*:\s*)%d(?=\s*[,}\]])' % PENDING)


def _loads(value: bytes, revision: int) -> Any:
    """`restamp(json.loads(value), revision)`, done on the text: one regex pass instead of a walk
    over every dict and list of the object (most of them hold no index)."""
    return json.loads(_PENDING_FIELD.sub(b"\\g<1>%d" % revision, value))


def _dump(obj: Any, **kw: Any) -> bytes:
    return obj.model_dump_json(by_alias=True, **kw).encode()


def _q(s: str) -> str:
    return quote(s, safe="")


@dataclass
class Decoded:
    """One revision's changes, ready for `StateStore._apply`."""

    changes: Changes
    tables: set[str] = field(default_factory=set)
    members: dict[str, dict[str, Any] | None] = field(default_factory=dict)    # alive (on a lease)
    servers: dict[str, dict[str, Any] | None] = field(default_factory=dict)    # every server that joined
    leader: tuple[bytes, int] | None = None     # (value, create_revision); (b"", 0) when deleted
    leader_changed: bool = False


class Codec:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.version_paths: dict[VersionKey, bytes] = {}   # version -> its key (new ones get a token)
        self.paths_version: dict[bytes, VersionKey] = {}

    def key(self, *parts: str) -> bytes:
        return self.prefix + "/".join(parts).encode()

    @property
    def leader_key(self) -> bytes:
        return self.key("leader")

    def member_key(self, name: str) -> bytes:
        return self.key("members", _q(name))

    def server_key(self, name: str) -> bytes:
        return self.key("servers", _q(name))

    # --- encode ---------------------------------------------------------------------------------

    def encode(self, ch: Changes, t: Tables) -> dict[bytes, bytes | None]:
        """One write's keys and their new values (None: deleted); one per key, the last one wins."""
        ops: dict[bytes, bytes | None] = {}

        def put(k: bytes, v: bytes) -> None:
            ops[k] = v

        def rows(table: str, items: Iterable[tuple[Any, Any]], enc: Any = _dump) -> None:
            for k, obj in items:
                parts = [_q(p) for p in (k if isinstance(k, tuple) else (k,))]
                key = self.key(table, *parts)
                ops[key] = None if obj is None else enc(obj)

        rows("jobs", ch.jobs.items())
        purged = set(ch.versions_purged)
        for v in ch.versions:
            vk = version_key(v)
            put(self._version_path(vk), _version_value(v, vk in purged))
        for vk in ch.versions_purged:
            job = next((v for v in ch.versions if version_key(v) == vk), None) or t.job_cache.get(vk)
            if job is not None:
                put(self._version_path(vk), _version_value(job, True))
        for vk in ch.versions_dropped:
            path = self.version_paths.get(vk)
            if path is not None:
                ops[path] = None
        rows("evals", ch.evals.items())
        rows("allocs", ch.allocs.items(), lambda a: _alloc_value(a, a.id in ch.inline_jobs))
        rows("nodes", ch.nodes.items())
        rows("services", ch.services.items())
        rows("intentions", ch.intentions.items())
        if ch.ca_state is not None:
            put(self.key("ca", "state"), _dump(ch.ca_state))
        if ch.ca_serial is not None:
            put(self.key("ca", "serial"), str(ch.ca_serial).encode())
        rows("deployments", ch.deployments.items())
        rows("acl/policies", ch.acl_policies.items())
        rows("acl/tokens", ch.acl_tokens.items(), lambda tok: _dump(tok, exclude={"secret_id"}))
        for tbl, krows in ch.keyed.items():
            rows(f"k/{tbl}", krows.items())
        if ch.acl_bootstrap is not None:
            put(self.key("acl", "bootstrap"), json.dumps({"BootstrapIndex": ch.acl_bootstrap}).encode())
        for table in sorted(ch.tables()):
            put(self.key("index", table), b"")
        return ops

    def _version_path(self, vk: VersionKey) -> bytes:
        path = self.version_paths.get(vk) if vk[2] != PENDING else None
        if path is None:
            path = self.key("versions", _q(vk[0]), _q(vk[1]), uuid.uuid4().hex)
        return path

    # --- decode -----------------------------------------------------------------------------------

    def decode(self, events: list[ec.Event], revision: int, t: Tables) -> Decoded:
        """One revision's events (or a whole snapshot, as PUTs) as changes to the read model."""
        ch = Changes(revision, 0)
        out = Decoded(ch)
        versions: dict[VersionKey, Job] = {}
        later: list[tuple[str, ec.Event]] = []
        plen = len(self.prefix)
        for e in events:   # versions first: allocations name theirs
            rest = e.kv.key[plen:].decode()
            table = rest.split("/", 1)[0]
            if table == "versions":
                self._decode_version(e, ch, versions)
            else:
                later.append((rest, e))
        for rest, e in later:
            self._decode_one(rest, e, out, versions, t)
        return out

    def _decode_version(self, e: ec.Event, ch: Changes, versions: dict[VersionKey, Job]) -> None:
        path = e.kv.key
        if e.kind == "DELETE":
            vk = self.paths_version.pop(path, None)
            if vk is not None:
                self.version_paths.pop(vk, None)
                ch.versions_dropped.append(vk)
            return
        d = _loads(e.kv.value, e.kv.mod_revision)
        job = Job.model_validate(d["Job"])
        vk = version_key(job)
        self.version_paths[vk] = path
        self.paths_version[path] = vk
        versions[vk] = job
        ch.versions.append(job)
        if d.get("Purged"):
            ch.versions_purged.append(vk)

    def _decode_one(self, rest: str, e: ec.Event, out: Decoded, versions: dict[VersionKey, Job],
                    t: Tables) -> None:
        ch = out.changes
        parts = [unquote(p) if "%" in p else p for p in rest.split("/")]
        table = parts[0]
        deleted = e.kind == "DELETE"
        rev = e.kv.mod_revision
        value = None if deleted else e.kv.value
        if table == "index":
            out.tables.add(parts[1])
        elif table == "leader":
            out.leader = (b"", 0) if deleted else (e.kv.value, e.kv.create_revision)
            out.leader_changed = True
        elif table == "members":
            out.members[parts[1]] = None if deleted else json.loads(e.kv.value)
        elif table == "servers":
            out.servers[parts[1]] = None if deleted else json.loads(e.kv.value)
        elif table == "jobs":
            ch.jobs[(parts[1], parts[2])] = None if value is None else Job.model_validate(_obj(value, rev))
        elif table == "evals":
            ch.evals[parts[1]] = None if value is None else Evaluation.model_validate(_obj(value, rev))
        elif table == "allocs":
            ch.allocs[parts[1]] = None if value is None else _alloc(value, rev, versions, t)
        elif table == "nodes":
            ch.nodes[parts[1]] = None if value is None else Node.model_validate(_obj(value, rev))
        elif table == "services":
            ch.services[(parts[1], parts[2])] = (None if value is None else
                                                 ServiceRegistration.model_validate(_obj(value, rev)))
        elif table == "deployments":
            ch.deployments[parts[1]] = None if value is None else Deployment.model_validate(_obj(value, rev))
        elif table == "intentions":
            ch.intentions[parts[1]] = None if value is None else Intention.model_validate(_obj(value, rev))
        elif table == "ca" and value is not None:
            if parts[1] == "state":
                ch.ca_state = CAState.model_validate(_obj(value, rev))
            elif parts[1] == "serial":
                ch.ca_serial = int(value)
        elif table == "k":
            model = KEYED.get(parts[1])
            if model is not None:   # a table a newer server wrote: not ours to read
                ch.keyed_rows(parts[1])[parts[2]] = None if value is None else model.model_validate(_obj(value, rev))
        elif table == "acl":
            if parts[1] == "policies":
                ch.acl_policies[parts[2]] = None if value is None else ACLPolicy.model_validate(_obj(value, rev))
            elif parts[1] == "tokens":
                ch.acl_tokens[parts[2]] = None if value is None else ACLToken.model_validate(_obj(value, rev))
            elif parts[1] == "bootstrap":
                ch.acl_bootstrap = 0 if value is None else int(_obj(value, rev)["BootstrapIndex"])


def _obj(value: bytes, revision: int) -> Any:
    return _loads(value, revision)


def _version_value(job: Job, purged: bool) -> bytes:
    return b'{"Purged":%s,"Job":%s}' % (b"true" if purged else b"false", _dump(job))


def _alloc_value(a: Allocation, inline: bool) -> bytes:
    j = a.job
    head = {"JobNamespace": j.namespace or "default" if j else "", "JobID": j.id if j else "",
            "JobModifyIndex": j.job_modify_index if j else 0}
    body = json.dumps(head)[:-1].encode()
    inline_job = _dump(j) if inline and j is not None else b"null"
    # not head_json(a): its indexes are PENDING until the commit stamps the object in place, and
    # the kept JSON would answer the API with PENDING for them
    return body + b',"InlineJob":' + inline_job + b',"Alloc":' + head_json.dump(a) + b"}"


def _alloc(value: bytes, revision: int, versions: dict[VersionKey, Job], t: Tables) -> Allocation:
    d = _loads(value, revision)
    a = Allocation.model_validate(d["Alloc"])
    if d.get("InlineJob") is not None:
        a.job = Job.model_validate(d["InlineJob"])
    elif d.get("JobID"):
        vk = (d["JobNamespace"], d["JobID"], int(d["JobModifyIndex"]))
        a.job = versions.get(vk) or t.job_cache.get(vk)
    return a
