"""SQLite persistence: one file in WAL mode, one transaction per store write.

Durability: WAL with synchronous=NORMAL by default. A transaction is durable against a process
crash (SIGKILL, OOM kill, an exception) as soon as COMMIT returns, because the WAL frames are
already written to the OS; only an OS crash or power loss can lose the last transactions (never
corrupt the file; SQLite rolls back to the last synced commit). `synchronous="FULL"` also fsyncs
the WAL at every commit, for power-loss durability, at the price of an fsync per write.

Rows are the objects' Nomad JSON (by alias) plus columns for lookups. An allocation row does not
hold its job: it names the job version (namespace, job id, version, JobModifyIndex) and the job
is re-attached on load from job_versions; only when an allocation carries a job the store does
not know (no such version) is that job written inline (alloc.job_body).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from yurt.structs import (ACLPolicy, ACLToken, Allocation, CAState, Deployment, Evaluation, Intention, Job, Node,
                          ServiceRegistration)
from yurt.structs.alloc import head_json

from pydantic import BaseModel

from .keyed import KEYED
from .memory import TABLES

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    namespace TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (namespace, id));
CREATE TABLE IF NOT EXISTS job_versions (
    namespace TEXT NOT NULL, job_id TEXT NOT NULL, job_modify_index INTEGER NOT NULL,
    version INTEGER NOT NULL, purged INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL,
    PRIMARY KEY (namespace, job_id, job_modify_index));
CREATE TABLE IF NOT EXISTS evals (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, job_id TEXT NOT NULL, status TEXT NOT NULL,
    modify_index INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS evals_job ON evals (namespace, job_id);
CREATE TABLE IF NOT EXISTS allocs (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, job_id TEXT NOT NULL,
    job_version INTEGER NOT NULL, job_modify_index INTEGER NOT NULL,
    node_id TEXT NOT NULL, eval_id TEXT NOT NULL, client_status TEXT NOT NULL,
    desired_status TEXT NOT NULL, modify_index INTEGER NOT NULL,
    job_body TEXT, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS allocs_job ON allocs (namespace, job_id);
CREATE INDEX IF NOT EXISTS allocs_node ON allocs (node_id);
CREATE INDEX IF NOT EXISTS allocs_eval ON allocs (eval_id);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, modify_index INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    node TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, alloc_id TEXT NOT NULL,
    modify_index INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (node, id));
CREATE TABLE IF NOT EXISTS intentions (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, destination TEXT NOT NULL,
    modify_index INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ca (key TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY, namespace TEXT NOT NULL, job_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acl_policies (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keyed (tbl TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (tbl, key));
CREATE TABLE IF NOT EXISTS acl_tokens (accessor TEXT PRIMARY KEY, secret_hash TEXT NOT NULL,
    body TEXT NOT NULL);
"""


def dump(obj: Any, **kw: Any) -> str:
    return obj.model_dump_json(by_alias=True, **kw)


@dataclass
class Changes:
    """One write's rows. `None` as a value means delete."""

    index: int
    now: int
    jobs: dict[tuple[str, str], Job | None] = field(default_factory=dict)
    versions: list[Job] = field(default_factory=list)                    # new or replaced
    versions_purged: list[tuple[str, str, int]] = field(default_factory=list)
    versions_dropped: list[tuple[str, str, int]] = field(default_factory=list)
    evals: dict[str, Evaluation | None] = field(default_factory=dict)
    allocs: dict[str, Allocation | None] = field(default_factory=dict)
    inline_jobs: set[str] = field(default_factory=set)  # alloc IDs whose job is stored inline
    nodes: dict[str, Node | None] = field(default_factory=dict)
    services: dict[tuple[str, str], ServiceRegistration | None] = field(default_factory=dict)
    intentions: dict[str, Intention | None] = field(default_factory=dict)
    ca_state: CAState | None = None     # set: the CA's new state
    ca_serial: int | None = None        # set: the serial counter's new value
    acl_policies: dict[str, ACLPolicy | None] = field(default_factory=dict)
    acl_tokens: dict[str, ACLToken | None] = field(default_factory=dict)
    acl_bootstrap: int | None = None    # set: the index of the bootstrap (0: reset)
    deployments: dict[str, Deployment | None] = field(default_factory=dict)
    keyed: dict[str, dict[str, BaseModel | None]] = field(default_factory=dict)   # table -> key -> row

    def keyed_rows(self, table: str) -> dict[str, BaseModel | None]:
        """This write's rows of one keyed table (made on first use)."""
        rows = self.keyed.get(table)
        if rows is None:
            rows = self.keyed[table] = {}
        return rows

    def tables(self) -> set[str]:
        t = {name for name, rows in self.keyed.items() if rows}
        if self.deployments:
            t.add("deployment")
        if self.services:
            t.add("services")
        if self.intentions:
            t.add("intentions")
        if self.ca_state is not None:
            t.add("ca")
        if self.ca_serial is not None:
            t.add("ca_serial")
        if self.acl_policies or self.acl_tokens or self.acl_bootstrap is not None:
            t.add("acl")
        if self.jobs or self.versions or self.versions_purged or self.versions_dropped:
            t.add("jobs")
        if self.evals:
            t.add("evals")
        if self.allocs:
            t.add("allocs")
        if self.nodes:
            t.add("nodes")
        return t


@dataclass
class Loaded:
    index: int
    table_index: dict[str, int]
    jobs: list[Job]
    versions: list[tuple[Job, bool]]  # (job, purged)
    evals: list[Evaluation]
    allocs: list[tuple[Allocation, tuple[str, str, int]]]  # (alloc without job, version key)
    nodes: list[Node]
    services: list[ServiceRegistration] = field(default_factory=list)
    intentions: list[Intention] = field(default_factory=list)
    ca_state: CAState | None = None
    ca_serial: int = 0
    acl_policies: list[ACLPolicy] = field(default_factory=list)
    acl_tokens: list[ACLToken] = field(default_factory=list)
    acl_bootstrap: int = 0
    deployments: list[Deployment] = field(default_factory=list)
    keyed: dict[str, dict[str, BaseModel]] = field(default_factory=dict)


def _private(path: str) -> None:
    """The store holds the Connect CA's private keys: the database is made (or made again) 0600
    before SQLite opens it, and SQLite gives its -wal and -shm files the database's mode."""
    if path == ":memory:" or path.startswith("file:"):
        return
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


class SqliteBackend:
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = path
        _private(path)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        c = self.conn
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{path}: SQLite could not switch to WAL mode (got {mode})")
        c.execute(f"PRAGMA synchronous={synchronous.upper()}")
        c.execute("PRAGMA busy_timeout=5000")
        # Checkpoint (copy the WAL into the database, with an fsync) every ~40 MB of WAL rather
        # than SQLite's 4 MB: fewer fsyncs in the write path; the WAL file is capped at 64 MB.
        c.execute("PRAGMA wal_autocheckpoint=10000")
        c.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        c.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # --- load ----------------------------------------------------------------------------------

    def load(self) -> Loaded:
        c = self.conn
        meta = dict(c.execute("SELECT key, value FROM meta"))
        table_index = {t: meta.get(f"table:{t}", 0) for t in TABLES}
        versions = [(Job.model_validate_json(body), bool(purged)) for body, purged in
                    c.execute("SELECT body, purged FROM job_versions")]
        jobs = [Job.model_validate_json(b) for (b,) in c.execute("SELECT body FROM jobs")]
        evals = [Evaluation.model_validate_json(b) for (b,) in c.execute("SELECT body FROM evals")]
        nodes = [Node.model_validate_json(b) for (b,) in c.execute("SELECT body FROM nodes")]
        allocs = []
        for ns, job_id, jmi, job_body, body in c.execute(
                "SELECT namespace, job_id, job_modify_index, job_body, body FROM allocs"):
            a = Allocation.model_validate_json(body)
            if job_body is not None:
                a.job = Job.model_validate_json(job_body)  # not shared yet: setting is fine
            allocs.append((a, (ns, job_id, jmi)))
        services = [ServiceRegistration.model_validate_json(b)
                    for (b,) in c.execute("SELECT body FROM services")]
        intentions = [Intention.model_validate_json(b) for (b,) in c.execute("SELECT body FROM intentions")]
        ca = dict(c.execute("SELECT key, body FROM ca"))
        ca_state = CAState.model_validate_json(ca["state"]) if "state" in ca else None
        policies = [ACLPolicy.model_validate_json(b) for (b,) in c.execute("SELECT body FROM acl_policies")]
        tokens = [ACLToken.model_validate_json(b) for (b,) in c.execute("SELECT body FROM acl_tokens")]
        deployments = [Deployment.model_validate_json(b) for (b,) in c.execute("SELECT body FROM deployments")]
        keyed: dict[str, dict[str, BaseModel]] = {}
        for tbl, key, body in c.execute("SELECT tbl, key, body FROM keyed"):
            model = KEYED.get(tbl)
            if model is None:
                raise RuntimeError(f"{self.path}: keyed table {tbl!r} is unknown to this version of yurt")
            keyed.setdefault(tbl, {})[key] = model.model_validate_json(body)
        return Loaded(meta.get("index", 0), table_index, jobs, versions, evals, allocs, nodes,
                      services, intentions, ca_state, int(ca.get("serial", 0)), policies, tokens,
                      int(meta.get("acl_bootstrap", 0)), deployments, keyed)

    # --- write ---------------------------------------------------------------------------------

    def commit(self, ch: Changes, table_index: dict[str, int]) -> None:
        """Write `ch` and the new indexes in one transaction; all or nothing."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            self._write(c, ch, table_index)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _write(self, c: sqlite3.Connection, ch: Changes, table_index: dict[str, int]) -> None:
        puts: list[tuple[Any, ...]]  # rows to write, per table
        dels: list[tuple[Any, ...]]  # primary keys to delete, per table
        if ch.jobs:
            puts = [(ns, jid, dump(j)) for (ns, jid), j in ch.jobs.items() if j is not None]
            dels = [k for k, j in ch.jobs.items() if j is None]
            if puts:
                c.executemany("INSERT OR REPLACE INTO jobs (namespace, id, body) VALUES (?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM jobs WHERE namespace=? AND id=?", dels)
        if ch.versions:
            c.executemany(
                "INSERT OR REPLACE INTO job_versions (namespace, job_id, job_modify_index, version,"
                " purged, body) VALUES (?,?,?,?,0,?)",
                [(j.namespace or "default", j.id, j.job_modify_index, j.version, dump(j))
                 for j in ch.versions])
        if ch.versions_purged:
            c.executemany("UPDATE job_versions SET purged=1 WHERE namespace=? AND job_id=? AND"
                          " job_modify_index=?", ch.versions_purged)
        if ch.versions_dropped:
            c.executemany("DELETE FROM job_versions WHERE namespace=? AND job_id=? AND"
                          " job_modify_index=?", ch.versions_dropped)
        if ch.evals:
            puts = [(e.id, e.namespace, e.job_id, e.status, e.modify_index, dump(e))
                    for e in ch.evals.values() if e is not None]
            dels = [(i,) for i, e in ch.evals.items() if e is None]
            if puts:
                c.executemany("INSERT OR REPLACE INTO evals (id, namespace, job_id, status,"
                              " modify_index, body) VALUES (?,?,?,?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM evals WHERE id=?", dels)
        if ch.allocs:
            puts = []
            dels = []
            for i, a in ch.allocs.items():
                if a is None:
                    dels.append((i,))
                    continue
                j = a.job
                puts.append((a.id, a.namespace, a.job_id, j.version if j else 0,
                             j.job_modify_index if j else 0, a.node_id, a.eval_id,
                             a.client_status, a.desired_status, a.modify_index,
                             dump(j) if i in ch.inline_jobs and j is not None else None,
                             head_json(a).decode()))
            if puts:
                c.executemany(
                    "INSERT OR REPLACE INTO allocs (id, namespace, job_id, job_version,"
                    " job_modify_index, node_id, eval_id, client_status, desired_status,"
                    " modify_index, job_body, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM allocs WHERE id=?", dels)
        if ch.nodes:
            puts = [(n.id, n.status, n.modify_index, dump(n)) for n in ch.nodes.values() if n is not None]
            dels = [(i,) for i, n in ch.nodes.items() if n is None]
            if puts:
                c.executemany("INSERT OR REPLACE INTO nodes (id, status, modify_index, body)"
                              " VALUES (?,?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM nodes WHERE id=?", dels)
        self._write_mesh(c, ch)
        meta = [("index", ch.index)] + [(f"table:{t}", table_index[t]) for t in ch.tables()]
        c.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", meta)

    @staticmethod
    def _write_mesh(c: sqlite3.Connection, ch: Changes) -> None:
        """The catalog, intentions and CA rows of one write."""
        puts: list[tuple[Any, ...]]
        dels: list[tuple[Any, ...]]
        if ch.services:
            puts = [(s.key[0], s.key[1], s.service, s.alloc_id, s.modify_index, dump(s))
                    for s in ch.services.values() if s is not None]
            dels = [k for k, s in ch.services.items() if s is None]
            if puts:
                c.executemany("INSERT OR REPLACE INTO services (node, id, name, alloc_id,"
                              " modify_index, body) VALUES (?,?,?,?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM services WHERE node=? AND id=?", dels)
        if ch.intentions:
            puts = [(i.id, i.source_name, i.destination_name, i.modify_index, dump(i))
                    for i in ch.intentions.values() if i is not None]
            dels = [(k,) for k, i in ch.intentions.items() if i is None]
            if puts:
                c.executemany("INSERT OR REPLACE INTO intentions (id, source, destination,"
                              " modify_index, body) VALUES (?,?,?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM intentions WHERE id=?", dels)
        if ch.ca_state is not None:
            c.execute("INSERT OR REPLACE INTO ca (key, body) VALUES ('state', ?)", (dump(ch.ca_state),))
        if ch.ca_serial is not None:
            c.execute("INSERT OR REPLACE INTO ca (key, body) VALUES ('serial', ?)", (str(ch.ca_serial),))
        for name, p in ch.acl_policies.items():
            if p is None:
                c.execute("DELETE FROM acl_policies WHERE name=?", (name,))
            else:
                c.execute("INSERT OR REPLACE INTO acl_policies (name, body) VALUES (?,?)", (name, dump(p)))
        for accessor, tok in ch.acl_tokens.items():
            if tok is None:
                c.execute("DELETE FROM acl_tokens WHERE accessor=?", (accessor,))
            else:   # never the SecretID: only its hash is kept
                c.execute("INSERT OR REPLACE INTO acl_tokens (accessor, secret_hash, body) VALUES (?,?,?)",
                          (accessor, tok.secret_hash, dump(tok, exclude={"secret_id"})))
        if ch.acl_bootstrap is not None:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('acl_bootstrap', ?)", (ch.acl_bootstrap,))
        for tbl, rows in ch.keyed.items():
            puts = [(tbl, k, dump(r)) for k, r in rows.items() if r is not None]
            dels = [(tbl, k) for k, r in rows.items() if r is None]
            if puts:
                c.executemany("INSERT OR REPLACE INTO keyed (tbl, key, body) VALUES (?,?,?)", puts)
            if dels:
                c.executemany("DELETE FROM keyed WHERE tbl=? AND key=?", dels)
        for dep_id, d in ch.deployments.items():
            if d is None:
                c.execute("DELETE FROM deployments WHERE id=?", (dep_id,))
            else:
                c.execute("INSERT OR REPLACE INTO deployments (id, namespace, job_id, body) VALUES (?,?,?,?)",
                          (d.id, d.namespace, d.job_id, dump(d)))
