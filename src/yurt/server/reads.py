"""What the HTTP API reads: the server's read layer over the state store.

The routes never hold the store; they ask this (as `Server.reads`) for jobs, allocations,
evaluations, nodes, catalog rows, intentions and table indexes, in the order they answer them,
and block on it for their blocking queries (`block`). Everything here is a read: the writes go
through the `Server` methods (and its `catalog`, `intentions`, `ca`). A missing object is None;
the route says what was not found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from yurt.state import NODE_ALLOCS, StateStore
from yurt.structs import (Allocation, Deployment, Evaluation, Intention, Job, JobSummary, KVEntry, Node,
                          ServiceRegistration, Session)

from .events import EventBuffer
from .variables import Variables

Tables = str | Iterable[str] | None
"""What a blocking query watches: one table ("jobs", "allocs", "services" ...), several (the
largest of their indexes), or None for the store's index."""


class Reads:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.vars: Variables | None = None   # the server's variables (decrypting needs its keystore)

    @property
    def events(self) -> EventBuffer | None:
        """The event stream's buffer (None: `enable_event_broker = false`)."""
        return self._store.events

    # -- indexes and blocking queries -------------------------------------------------------
    def index(self) -> int:
        """The store's index: that of its last write."""
        return self._store.index()

    def table_index(self, tables: str | Iterable[str]) -> int:
        """The index of the last write to `tables` (the largest of several)."""
        return self._store.table_index(tables)

    @staticmethod
    def node_allocs_target(node_id: str) -> str:
        """The blocking-query target of one node's allocations (for `block`): a write wakes
        only the queries of the nodes whose allocations it changed."""
        return NODE_ALLOCS + node_id

    def current(self, tables: Tables = None) -> int:
        """`table_index(tables)`, or the store's index for None."""
        return self.table_index(tables) if tables else self.index()

    async def block(self, tables: Tables, min_index: int, wait: float) -> int:
        """A blocking query: with `min_index` > 0, wait until `tables` (None: anything) change
        past it or `wait` seconds pass, without blocking the event loop; then (or at once with
        `min_index` 0) their index. Never 0, as Nomad's: a caller's next `?index=` always
        blocks."""
        if min_index > 0:
            current = await self._store.wait_async(min_index, wait, tables)
        else:
            current = self.current(tables)
        return max(current, 1)

    def watch(self, tables: Tables, min_index: int, wait: float,
              done: Callable[[int], None]) -> Callable[[bool], None] | None:
        """`block` without a coroutine, on the event loop's thread (`Waiters.watch`): `done(index)`
        once `tables` change past `min_index` or `wait` seconds pass, at once (returning None) when
        `min_index` is 0 or already passed; else `end(answer)` to stop the wait."""
        if min_index <= 0:
            done(max(self.current(tables), 1))
            return None
        return self._store.watch(min_index, wait, done, tables)

    # -- deployments ------------------------------------------------------------------------
    def deployment(self, deployment_id: str) -> Deployment | None:
        return self._store.deployment(deployment_id)

    def deployments(self, namespace: str | None = None, prefix: str = "") -> list[Deployment]:
        """By creation, oldest first (every namespace for None or "*")."""
        return self._store.deployments(None if namespace in (None, "*") else namespace, prefix)

    def job_deployments(self, job: Job, *, all_versions: bool = False) -> list[Deployment]:
        """The job's deployments, newest first: of this incarnation of it (its CreateIndex),
        or of every one with `all_versions`."""
        ds = self._store.deployments_by_job(job.namespace or "default", job.id)
        return ds if all_versions else [d for d in ds if d.job_create_index == job.create_index]

    def deployment_allocs(self, d: Deployment) -> list[Allocation]:
        return [a for a in self._store.allocs_by_job(d.namespace, d.job_id) if a.deployment_id == d.id]

    # -- jobs -------------------------------------------------------------------------------
    def job(self, namespace: str, job_id: str) -> Job | None:
        return self._store.job(namespace, job_id)

    def jobs(self, namespace: str | None = None, prefix: str = "") -> list[Job]:
        """Jobs by ID (in every namespace for None or "*"), optionally with an ID prefix."""
        return sorted(self._store.jobs(None if namespace in (None, "*") else namespace, prefix),
                      key=lambda j: j.id)

    def job_summary(self, namespace: str, job_id: str) -> JobSummary | None:
        return self._store.job_summary(namespace, job_id)

    def job_versions(self, namespace: str, job_id: str) -> list[Job]:
        """Every kept version of the job, newest first."""
        return self._store.job_versions(namespace, job_id)

    def job_allocs(self, job: Job, *, all_jobs: bool = False) -> list[Allocation]:
        """The job's allocations by CreateIndex; those of an earlier job of that ID (purged and
        registered again) only with `all_jobs` (Nomad's `?all=true`)."""
        allocs = self._store.allocs_by_job(job.namespace or "default", job.id)
        if not all_jobs:
            allocs = [a for a in allocs if a.create_index >= job.create_index]
        return sorted(allocs, key=lambda a: a.create_index)

    def job_evals(self, job: Job) -> list[Evaluation]:
        """The job's evaluations by CreateIndex."""
        return sorted(self._store.evals_by_job(job.namespace or "default", job.id), key=lambda e: e.create_index)

    # -- allocations and evaluations --------------------------------------------------------
    def alloc(self, alloc_id: str) -> Allocation | None:
        return self._store.alloc(alloc_id)

    def allocs(self, prefix: str = "", namespace: str | None = None) -> list[Allocation]:
        """Allocations by CreateIndex (then ID), optionally with an ID prefix (of one namespace,
        or of every one for None or "*")."""
        return sorted(self._store.allocs(prefix, None if namespace in (None, "*") else namespace),
                      key=lambda a: a.create_index)

    def eval(self, eval_id: str) -> Evaluation | None:
        return self._store.eval(eval_id)

    def evals(self, prefix: str = "", namespace: str | None = None) -> list[Evaluation]:
        """Evaluations by CreateIndex (then ID), optionally with an ID prefix (of one namespace,
        or of every one for None or "*")."""
        return sorted(self._store.evals(None if namespace in (None, "*") else namespace, prefix=prefix),
                      key=lambda e: e.create_index)

    def eval_allocs(self, eval_id: str) -> list[Allocation]:
        """The allocations an evaluation placed or changed."""
        return self._store.allocs_by_eval(eval_id)

    # -- nodes ------------------------------------------------------------------------------
    def node(self, node_id: str) -> Node | None:
        return self._store.node(node_id)

    def nodes(self, prefix: str = "") -> list[Node]:
        """Nodes by name (then ID), optionally with an ID prefix."""
        return sorted(self._store.nodes(prefix), key=lambda n: n.name)

    def node_allocs(self, node_id: str) -> list[Allocation]:
        """Every allocation of the node, terminal ones included (what its client watches)."""
        return self._store.allocs_by_node(node_id)

    # -- catalog and intentions (their views are `Catalog`'s and `Intentions`') -------------
    def service(self, node_key: str, service_id: str) -> ServiceRegistration | None:
        """The instance `service_id` registered on the node `node_key` (its ID, else its name)."""
        return self._store.service(node_key, service_id)

    def services(self, name: str | None = None) -> list[ServiceRegistration]:
        """The instances of service `name`, or of every service."""
        return self._store.services(name)

    def services_by_node(self, node_key: str) -> list[ServiceRegistration]:
        """The instances registered on one node."""
        return self._store.services_by_node(node_key)

    def intention(self, ix_id: str) -> Intention | None:
        return self._store.intention(ix_id)

    def intentions(self) -> list[Intention]:
        return self._store.intentions()

    # -- Consul's KV and sessions (the writes: `Server.kv`) -----------------------------------
    def kv_get(self, key: str) -> KVEntry | None:
        """The KV entry at `key` (its Value is base64, as Consul answers it)."""
        row = self._store.keyed_get("kv", key)
        return row if isinstance(row, KVEntry) else None

    def kv_list(self, prefix: str = "") -> list[KVEntry]:
        """The KV entries whose key starts with `prefix`, by key."""
        return [r for _, r in self._store.keyed_list("kv", prefix) if isinstance(r, KVEntry)]

    def session(self, session_id: str) -> Session | None:
        row = self._store.keyed_get("sessions", session_id)
        return row if isinstance(row, Session) else None

    def sessions(self, node: str | None = None) -> list[Session]:
        """Every session (or the node's), by CreateIndex."""
        rows = [r for _, r in self._store.keyed_list("sessions") if isinstance(r, Session)]
        return sorted((r for r in rows if node is None or r.node == node), key=lambda s: (s.create_index, s.id))
    # -- variables (their rows are encrypted: `Variables` decrypts) ---------------------------
    def variable(self, namespace: str, path: str) -> dict[str, str] | None:
        """The items of the variable at `path` in `namespace`, decrypted; None if there is none."""
        return self.vars.items(namespace or "default", path) if self.vars is not None else None
