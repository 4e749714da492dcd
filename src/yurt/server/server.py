"""The control plane: jobs -> evaluations -> broker -> workers -> plan applier -> allocations.

The API calls these methods; errors are `yurt.errors` values, which the API maps to HTTP. The
methods answer with Nomad's response bodies (EvalID, Index, ...), since that is what every
caller sends on. Every write goes through the state store, which stamps it with the next index.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from yurt.errors import InvalidInput, NotFound, PermissionDenied
from yurt.structs import Allocation, Evaluation, Job, Node
from yurt.structs.alloc import (ALLOC_DESIRED_STOP, ALLOC_FAILED, ALLOC_LOST, ALLOC_COMPLETE, DesiredTransition)
from yurt.structs.evaluation import (EVAL_PENDING, TRIGGER_ALLOC_FAILURE, TRIGGER_ALLOC_STOP,
                                     TRIGGER_JOB_DEREGISTER, TRIGGER_JOB_REGISTER, TRIGGER_NODE_UPDATE)
from yurt.structs.node import NODE_DOWN, NODE_READY
from yurt.state import Snapshot, StateStore

from .broker import EvalBroker
from .ca import ConnectCA
from .catalog import Catalog
from .intentions import Intentions
from .connect_inject import gateway_warnings, inject_sidecars
from .deployments import Deployments
from .periodic import PeriodicLauncher
from .drain import Drainer
from .heartbeat import FAILOVER_GRACE, MAX_PER_SECOND as MAX_HEARTBEATS_PER_SECOND, Heartbeats
from .identity import WorkloadIdentity
from .plan_apply import PlanApplier
from .reads import Reads
from .metrics import ServerMetrics
from .namespaces import Namespaces
from .worker import Worker

log = logging.getLogger("yurt.server")


class Server:
    def __init__(self, store: StateStore, *, num_workers: int = 2, heartbeat_ttl: float = 10.0,
                 max_heartbeats_per_second: float = MAX_HEARTBEATS_PER_SECOND, region: str = "global",
                 datacenter: str = "dc1",
                 default_intention_policy: str = "allow", leaf_cert_ttl: str | None = None,
                 keystore_dir: str | None = None, virtual_ip_cidr: str = "") -> None:
        self.store = store
        self.reads = Reads(store)  # what the HTTP API reads
        from .acl_admin import ACLAdmin
        self.acl = ACLAdmin(store)  # policies, tokens, and who a request is (`acl.resolver`)
        self.region = region
        self.datacenter = datacenter
        self.num_workers = num_workers
        self.heartbeat_ttl = heartbeat_ttl
        self.max_heartbeats_per_second = max_heartbeats_per_second
        # the leader's duties (made again each time this server is elected): the broker, the
        # workers, heartbeat expiry, the drainer, CA bootstrap and pruning
        self.broker = EvalBroker()
        self.applier = PlanApplier(store)
        self.heartbeats = Heartbeats(self._node_expired, heartbeat_ttl, max_heartbeats_per_second)
        self.workers = [Worker(self, i) for i in range(num_workers)]
        self._leading = False
        self._duty_lock = threading.Lock()
        self.started_at = time.time()
        self.catalog = Catalog(store, datacenter)
        from .gc import GarbageCollector
        self.gc = GarbageCollector(store)   # terminal evaluations, allocations and stopped jobs
        self.check_ttls = Heartbeats(self._check_ttl_expired, every=0.2, name="yurt-check-ttls")
        self.catalog.on_ttl = self._check_ttl
        from .virtual_ips import DEFAULT_CIDR, VirtualIPs
        self.virtual_ips = VirtualIPs(store, virtual_ip_cidr or DEFAULT_CIDR)   # Connect services' VIPs
        self.catalog.virtual_ip = self.virtual_ips.assign
        self.intentions = Intentions(store, default_allow=default_intention_policy != "deny")
        from .config_entries import ConfigEntries
        self.config_entries = ConfigEntries(store, self.intentions)   # Consul's config entries; the sidecars' chain
        from .kv import ConsulKV
        self.kv = ConsulKV(store, self.catalog, lambda: self._leading)   # Consul's KV and sessions
        self.namespaces = Namespaces(store, region)   # Nomad's namespaces; jobs only in ones that exist
        self.ca = ConnectCA(store, datacenter, leaf_cert_ttl=leaf_cert_ttl)
        self.metrics = ServerMetrics()   # /v1/metrics: this server's own registry
        self.metrics.watch(self)
        self.ca.on_issued = lambda service: self.metrics.leaf_issued.labels(service).inc()
        self._ca_prune_stop = threading.Event()
        self.drainer = Drainer(self)   # node drain, eligibility and purge
        self.deployments = Deployments(self)   # the deployment watcher, promote/fail/pause
        self.periodic = PeriodicLauncher(self)   # the leader's launcher of periodic children
        # workload identities; the signing key lives next to the store (in memory for ":memory:")
        if self.ha:   # every server signs and verifies with the same key, kept in the store
            from .identity import new_key_pem
            self.identity = WorkloadIdentity(None, region, key_pem=store.shared_secret(  # type: ignore[attr-defined]
                "workload-identity.pem", new_key_pem))
        else:
            key_dir = None if store.path in ("", ":memory:") else os.path.dirname(os.path.abspath(store.path))
            self.identity = WorkloadIdentity(key_dir, region)
        self.acl.resolver.verifier = self.identity   # a workload's JWT is an identity ACLs know
        # variables, encrypted with root keys kept outside the store (server/variables.py)
        from .variables import Keyring, Variables
        if keystore_dir is None and store.path not in ("", ":memory:") and not self.ha:
            keystore_dir = os.path.join(os.path.dirname(os.path.abspath(store.path)), "keystore")
        self.variables = Variables(store, Keyring(keystore_dir))
        self.reads.vars = self.variables

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def ha(self) -> bool:
        """True when the state is in etcd: several servers, one of them leading."""
        return bool(getattr(self.store, "ha", False))

    def start(self, member: dict[str, Any] | None = None) -> None:
        """Serve. With one server (SQLite) this one leads from now on; on etcd it joins the
        election as `member` (its name and addresses) and leads when it wins."""
        if self.ha:
            self.store.leadership.join(member or {"Name": "server"}, self._lead,  # type: ignore[attr-defined]
                                       self._step_down)
        else:
            self._lead()

    def is_leader(self) -> bool:
        return self._leading and (not self.ha or self.store.is_leader())  # type: ignore[attr-defined]

    def leader_address(self) -> str:
        """The HTTP address of the server that leads ("" when none does)."""
        if not self.ha:
            return ""
        name = self.store.leader_name()  # type: ignore[attr-defined]
        if not name or (name == self.store.leadership.member.get("Name") and not self.is_leader()):  # type: ignore[attr-defined]
            return ""   # nobody, or this server by a model it cannot refresh (cut off from etcd)
        member = self.store.members.get(name)  # type: ignore[attr-defined]
        return str(member.get("HTTPAddr", "")) if member else ""

    def members(self) -> list[dict[str, Any]]:
        """Every server: Name, Addr, Port, HTTPAddr, Region, Datacenter, Build, Leader, Status."""
        if not self.ha:
            return []
        leader = self.store.leader_name()  # type: ignore[attr-defined]
        alive = self.store.members  # type: ignore[attr-defined]
        known = {**self.store.servers, **alive}  # type: ignore[attr-defined]
        return [{**m, "Leader": name == leader, "Status": "alive" if name in alive else "failed"}
                for name, m in sorted(known.items())]

    def _lead(self) -> None:
        """Take up the leader's duties: a fresh broker and workers, heartbeat expiry (every
        node gets its TTL plus grace again), the drainer, the CA, and the evaluations not yet
        done, restored from the store."""
        with self._duty_lock:
            self.broker = EvalBroker()
            self.heartbeats = Heartbeats(self._node_expired, self.heartbeat_ttl, self.max_heartbeats_per_second)
            self.check_ttls = Heartbeats(self._check_ttl_expired, every=0.2, name="yurt-check-ttls")
            self.workers = [Worker(self, i) for i in range(self.num_workers)]
            self.drainer = Drainer(self)
            self.deployments = Deployments(self)
            self.periodic = PeriodicLauncher(self)
            self._ca_prune_stop = threading.Event()
            self._leading = True
            self.ca.bootstrap()
            threading.Thread(target=self._prune_ca_roots, args=(self._ca_prune_stop,), name="yurt-ca-prune",
                             daemon=True).start()
            self._restore()
            self.catalog.arm_all()
            self.check_ttls.start()
            self.kv.lead()   # session TTL timers (2 x TTL afresh) and the session health sweep
            self.variables.lead()   # variable lock timers (2 x TTL afresh)
            self.gc.start()
            self.heartbeats.start()
            for w in self.workers:
                w.start()
            self.drainer.start()
            self.deployments.start()
            self.periodic.start()

    def _step_down(self) -> None:
        """Stop every duty at once (the store's fence refuses whatever they still try to write)."""
        self._leading = False
        self.drainer.stop()
        self.deployments.stop()
        self.periodic.stop()
        for w in self.workers:
            w.stop()
        self.broker.close()
        self.heartbeats.stop()
        self.check_ttls.stop()
        self.kv.step_down()
        self.variables.step_down()
        self.gc.stop()
        self._ca_prune_stop.set()

    def stop(self) -> None:
        self._step_down()

    def _prune_ca_roots(self, stop: threading.Event) -> None:
        """Rotated-out roots go 2 x LeafCertTTL after their rotation (checked every minute)."""
        while not stop.wait(60.0):
            try:
                self.ca.prune()
            except Exception:
                log.exception("pruning CA roots failed")

    def _restore(self) -> None:
        """After a restart: pending evals go back to the broker, blocked ones are parked, and
        every node that was up gets a fresh TTL plus grace to heartbeat again."""
        for ev in self.store.evals():
            if ev.status == EVAL_PENDING:
                self.broker.enqueue(ev)
            elif ev.status == "blocked":
                self.broker.block(ev)
        for node in self.store.nodes():
            if node.status != NODE_DOWN:
                self.heartbeats.reset(node.id, grace=FAILOVER_GRACE)

    # -- evaluations ------------------------------------------------------------------------
    def _new_eval(self, job: Job | None, namespace: str, job_id: str, trigger: str, **extra: Any) -> Evaluation:
        now = time.time_ns()
        return Evaluation(id=str(uuid.uuid4()), namespace=namespace, job_id=job_id,
                          priority=job.priority if job and job.priority else 50,
                          type=job.type if job and job.type else "service", triggered_by=trigger,
                          job_modify_index=job.job_modify_index if job else 0, status=EVAL_PENDING,
                          create_time=now, modify_time=now, **extra)

    def _submit(self, evals: list[Evaluation]) -> int:
        if not evals:
            return self.store.index()
        index = self.store.upsert_evals(evals)
        for ev in evals:
            self.broker.enqueue(ev)
        return index

    # -- jobs -------------------------------------------------------------------------------
    def register_job(self, job: Job, *, enforce_index: int | None = None,
                     trigger: str = TRIGGER_JOB_REGISTER) -> dict[str, Any]:
        """Store a new job or version and evaluate it (Nomad's Job.Register). With
        `enforce_index` (EnforceIndex), only if the job's JobModifyIndex is still that (0: new)."""
        self.namespaces.admit(job)
        job = inject_sidecars(job.model_copy(update={"stop": False}, deep=True))
        own = {s.name for g in job.task_groups or [] for s in g.services or []}
        warnings = "\n".join(gateway_warnings(job, lambda n: n in own or self._service_known(n)))
        namespace = job.namespace or "default"
        if enforce_index is not None:   # checked again inside the write; here so a refused one writes nothing
            current = self.store.job(namespace, job.id)
            have = current.job_modify_index if current is not None else 0
            if enforce_index == 0 and current is not None:
                raise InvalidInput(f"Enforcing job modify index 0: job {job.id} already exists")
            if enforce_index != have:
                raise InvalidInput(f"Enforcing job modify index {enforce_index}: job exists with "
                                   f"conflicting job modify index: {have}")
        # the job's gateways' config entries, written (overwritten) before the job as Nomad does
        self.config_entries.write_job_gateways(job)
        # the job and the eval that schedules it are one write: a crash keeps both or neither,
        # and the index check happens inside it
        # a periodic or parameterized parent gets no evaluation: it runs nothing, its children do
        index, ev = self.store.register_job(
            job, None if job.is_parent() else self._new_eval(job, namespace, job.id, trigger),
            expect_modify_index=enforce_index)
        self.broker.drop_job(namespace, job.id)
        if ev is None:
            log.info('job "%s" registered in namespace "%s" at index %d (%s: no evaluation)', job.id, namespace,
                     index, "periodic" if job.is_periodic() else "parameterized")
            return {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": index, "Warnings": warnings,
                    "Index": index}
        self.broker.enqueue(ev)
        log.info('job "%s" registered in namespace "%s" at index %d: evaluation %s', job.id, namespace, index,
                 ev.id[:8])
        return {"EvalID": ev.id, "EvalCreateIndex": index, "JobModifyIndex": index,
                "Warnings": warnings, "Index": index}

    def _service_known(self, name: str) -> bool:
        """A service the catalog has, or that a group of a stored job declares."""
        if self.store.services(name):
            return True
        return any(svc.name == name for j in self.store.jobs() if not j.stop for g in j.task_groups or []
                   for svc in [*(g.services or []), *(ts for t in g.tasks or [] for ts in t.services or [])])

    def periodic_force(self, namespace: str, job_id: str) -> dict[str, Any]:
        """Launch a periodic job's child now (Nomad's Periodic.Force)."""
        return self.periodic.force(namespace, job_id)

    def dispatch_job(self, namespace: str, job_id: str, payload: bytes, meta: dict[str, str],
                     idempotency_token: str = "", id_prefix_template: str = "") -> dict[str, Any]:
        """Run a parameterized job once (Nomad's Job.Dispatch)."""
        from .periodic import dispatch
        return dispatch(self, namespace, job_id, payload, meta, idempotency_token, id_prefix_template)

    def deregister_job(self, namespace: str, job_id: str, purge: bool = False,
                       no_shutdown_delay: bool = False) -> dict[str, Any]:
        """Stop (or purge) a job. `no_shutdown_delay`: its allocations are stopped without their
        shutdown delays (marked first, so the stops the scheduler writes carry the mark)."""
        job = self.store.job(namespace, job_id)
        if job is None:
            raise NotFound("job not found")
        if no_shutdown_delay:
            self.store.update_alloc_transitions({
                a.id: DesiredTransition(no_shutdown_delay=True)
                for a in self.store.allocs_by_job(namespace, job_id) if not a.terminal()})
        ev = self._new_eval(job, namespace, job_id, TRIGGER_JOB_DEREGISTER)
        if purge:
            index = self.store.purge_job(namespace, job_id, ev)
        else:
            index, stored = self.store.register_job(job.model_copy(update={"stop": True}), ev)
            ev = stored or ev
        self.broker.drop_job(namespace, job_id)
        self.broker.enqueue(ev)
        log.info('job "%s" %s in namespace "%s" at index %d: evaluation %s', job_id,
                 "purged" if purge else "stopped", namespace, index, ev.id[:8])
        return {"EvalID": ev.id, "EvalCreateIndex": index, "JobModifyIndex": index, "Index": index}

    def plan_job(self, job: Job, diff: bool = True) -> dict[str, Any]:
        """A dry run (Nomad's Job.Plan): what the scheduler would do, and the diff; nothing is stored."""
        from yurt.scheduler import schedule

        from .job_diff import job_diff

        self.namespaces.admit(job)
        snap = self.store.snapshot()
        old = snap.job(job.namespace or "default", job.id)
        job = inject_sidecars(job.model_copy(deep=True))
        candidate = job.model_copy(update={
            "version": (old.version + 1) if old else 0,
            "job_modify_index": snap.index + 1, "create_index": old.create_index if old else snap.index + 1,
            "modify_index": snap.index + 1, "stop": False, "status": old.status if old else "pending"})
        ev = self._new_eval(candidate, candidate.namespace or "default", candidate.id, TRIGGER_JOB_REGISTER,
                            annotate_plan=True)
        result = schedule(ev, _PlanView(snap, candidate), seed=0, now_ns=time.time_ns())
        return {
            "JobModifyIndex": old.job_modify_index if old else 0, "CreatedEvals": None,
            "Diff": job_diff(old.to_json() if old else None, candidate.to_json()) if diff else None,
            "Annotations": {"DesiredTGUpdates": {k: v.to_json() for k, v in result.desired_updates.items()},
                            "PreemptedAllocs": None},
            "FailedTGAllocs": {k: v.to_json() for k, v in result.failed_tg_allocs.items()} or None,
            "NextPeriodicLaunch": self.periodic.next_launch_rfc3339(candidate), "Index": snap.index,
        }

    def evaluate_job(self, namespace: str, job_id: str, force_reschedule: bool = False) -> dict[str, Any]:
        """A new evaluation of the job (Nomad's Job.Evaluate); `force_reschedule`: its failed
        allocations not yet replaced are rescheduled now, whatever their reschedule policy says."""
        job = self.store.job(namespace, job_id)
        if job is None:
            raise NotFound("job not found")
        if job.is_periodic() or job.is_parameterized():
            kind, makes = (("periodic", "yurt job periodic force") if job.is_periodic()
                           else ("parameterized", "yurt job dispatch"))
            raise InvalidInput(f"can't evaluate {kind} job {job_id!r}: its children are evaluated ({makes} "
                               "makes one)")
        marks = {a.id: DesiredTransition(force_reschedule=True) for a in self.store.allocs_by_job(namespace, job_id)
                 if a.client_status == ALLOC_FAILED and not a.next_allocation
                 and not a.server_terminal()} if force_reschedule else {}
        ev = self._new_eval(job, namespace, job_id, "job-eval")
        index = self.store.update_alloc_transitions(marks, [ev])   # the marks and their eval: one write
        self.broker.enqueue(ev)
        return {"EvalID": ev.id, "EvalCreateIndex": index, "JobModifyIndex": job.job_modify_index, "Index": index}

    def revert_job(self, namespace: str, job_id: str, version: int,
                   enforce_prior_version: int | None = None) -> dict[str, Any]:
        """Register an earlier version again, as a new version (Nomad's Job.Revert)."""
        job = self.store.job(namespace, job_id)
        if job is None:
            raise NotFound("job not found")
        if enforce_prior_version is not None and job.version != enforce_prior_version:
            raise InvalidInput(f"Current job has version {job.version}; enforcing version {enforce_prior_version}")
        if version == job.version:
            raise InvalidInput("can't revert to current version")
        old = self.store.job_version(namespace, job_id, version)
        if old is None:
            versions = ", ".join(str(v.version) for v in self.store.job_versions(namespace, job_id))
            raise NotFound(f"job {job_id!r} has no version {version} (its versions: {versions})")
        return self.register_job(old.model_copy(update={"stable": False}, deep=True))

    def set_job_stable(self, namespace: str, job_id: str, version: int, stable: bool) -> dict[str, Any]:
        if self.store.job(namespace, job_id) is None:
            raise NotFound("job not found")
        return {"Index": self.store.set_job_stable(namespace, job_id, version, stable)}

    def scale_job(self, namespace: str, job_id: str, group: str, count: int | None,
                  message: str = "") -> dict[str, Any]:
        """Set one group's count (Nomad's Job.Scale); within the group's `scaling` bounds, and
        not while a deployment of the job is under way."""
        job = self.store.job(namespace, job_id)
        if job is None:
            raise NotFound("job not found")
        tg = job.group(group)
        if tg is None:
            raise InvalidInput(f'job {job_id!r} has no group "{group}" (its groups: '
                               f'{", ".join(g.name for g in job.task_groups or [])})')
        if count is None:
            return {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": job.job_modify_index,
                    "Warnings": "", "Index": self.store.index()}
        if count < 0:
            raise InvalidInput(f"count {count} for group {group!r} is negative: give 0 or more")
        lo = tg.scaling.min if tg.scaling is not None else None
        hi = tg.scaling.max if tg.scaling is not None else None
        if lo is not None and count < lo:
            raise InvalidInput(f"group {group!r} count {count} is less than its scaling min {lo}")
        if hi is not None and count > hi:
            raise InvalidInput(f"group {group!r} count {count} is more than its scaling max {hi}")
        latest = self.store.latest_deployment(namespace, job_id)
        if latest is not None and latest.active():
            raise InvalidInput(f"job scaling blocked due to active deployment {latest.id[:8]} (promote, fail or "
                               "wait for it first)")
        new = job.model_copy(deep=True)
        for g in new.task_groups or []:
            if g.name == group:
                g.count = count
        return self.register_job(new)

    # -- nodes ------------------------------------------------------------------------------
    def register_node(self, node: Node) -> dict[str, Any]:
        old = self.store.node(node.id)
        if old is not None and old.secret_id and node.secret_id != old.secret_id:
            raise PermissionDenied("node secret ID does not match: a node re-registers with the SecretID "
                                   "it first registered with")
        node = node.model_copy(update={"status": NODE_READY, "status_updated_at": int(time.time()),
                                       "status_description": ""})
        index = self.store.upsert_node(node)
        ttl = self.heartbeats.reset(node.id)
        self.metrics.heartbeats.inc()
        if old is None or old.status != NODE_READY or old.host_volumes != node.host_volumes:
            self._capacity_changed(node_evals_for=node.id)
        return {"HeartbeatTTL": int(ttl * 1e9), "Index": index, "NodeModifyIndex": index,
                "EvalIDs": []}

    def heartbeat(self, node_id: str) -> dict[str, Any]:
        node = self.store.node(node_id)
        if node is None:
            raise NotFound("node not found")
        if node.status != NODE_READY:
            self.store.update_node_status(node_id, NODE_READY, "heartbeat resumed")
            self._capacity_changed(node_evals_for=node_id)
        ttl = self.heartbeats.reset(node_id)
        self.metrics.heartbeats.inc()
        return {"HeartbeatTTL": int(ttl * 1e9), "Index": self.store.index()}

    def _check_ttl(self, node_key: str, check_id: str, ttl: float) -> None:
        if self._leading:
            self.check_ttls.reset(f"{node_key}\x00{check_id}", ttl=ttl)

    def _check_ttl_expired(self, key: str) -> None:
        node_key, _, check_id = key.partition("\x00")
        try:
            self.catalog.expire_ttl(node_key, check_id)
        except Exception:   # a failed write: the check is expired again on its next update
            log.exception("expiring TTL check %s failed", check_id)

    def _node_expired(self, node_id: str) -> None:
        node = self.store.node(node_id)
        if node is None or node.status == NODE_DOWN:
            return
        log.warning("node %s missed its heartbeat: marking it down", node_id[:8])
        self.metrics.heartbeats_missed.inc()
        self.store.update_node_status(node_id, NODE_DOWN, "node heartbeat missed")
        self.catalog.remove_node(node_id)  # its services must not be offered to anyone
        self._evals_for_node_jobs(node_id)

    def node_jobs(self, node_id: str) -> list[tuple[str, str]]:
        """The jobs a change of the node concerns (Nomad's createNodeEvals): those with
        allocations still on it, and every running system and sysbatch job of its node pool."""
        jobs = {(a.namespace, a.job_id) for a in self.store.allocs_by_node(node_id) if not a.terminal()}
        node = self.store.node(node_id)
        if node is not None:
            for job in self.store.jobs("*"):
                if (job.type in ("system", "sysbatch") and not job.stop
                        and (job.node_pool or "default") in ("all", node.node_pool)):
                    jobs.add((job.namespace or "default", job.id))
        return sorted(jobs)

    def _evals_for_node_jobs(self, node_id: str) -> None:
        evals = []
        for ns, job_id in self.node_jobs(node_id):
            job = self.store.job(ns, job_id)
            evals.append(self._new_eval(job, ns, job_id, TRIGGER_NODE_UPDATE, node_id=node_id))
        self._submit(evals)

    def _capacity_changed(self, node_evals_for: str | None = None) -> None:
        self.broker.unblock()
        if node_evals_for:
            self._evals_for_node_jobs(node_evals_for)

    # -- allocations ------------------------------------------------------------------------
    def client_update_allocs(self, node_id: str, updates: list[Allocation]) -> int:
        """A client reports task states and client status for its allocations."""
        before = {a.id: a for a in (self.store.alloc(u.id) for u in updates) if a is not None}
        index = self.store.update_allocs_from_client(updates)
        failed_jobs: set[tuple[str, str]] = set()
        stopped_allocs: list[str] = []
        freed = False
        for u in updates:
            old = before.get(u.id)
            if old is None or old.client_status == u.client_status:
                continue
            if u.client_status == ALLOC_FAILED and old.desired_status != ALLOC_DESIRED_STOP:
                failed_jobs.add((old.namespace, old.job_id))
            if u.client_status in (ALLOC_FAILED, ALLOC_COMPLETE, ALLOC_LOST):
                freed = True
                stopped_allocs.append(u.id)
        # A system job's failed allocation is not rescheduled (Nomad gives it no reschedule
        # policy): the job's next evaluation places it again on its node.
        jobs = [(ns, j, self.store.job(ns, j)) for ns, j in sorted(failed_jobs)]
        evals = [self._new_eval(job, ns, j, TRIGGER_ALLOC_FAILURE) for ns, j, job in jobs
                 if job is None or job.type not in ("system", "sysbatch")]
        self._submit(evals)
        self.catalog.remove_allocs(stopped_allocs)  # a stopped allocation's services go with it
        if freed:
            self.broker.unblock()
        return index

    def stop_alloc(self, alloc_id: str, no_shutdown_delay: bool = False) -> dict[str, Any]:
        """Stop one allocation; the scheduler stops it and places its replacement, linked to it
        (PreviousAllocation / NextAllocation), as Nomad's alloc stop does: the allocation is
        marked to migrate (DesiredTransition.Migrate) in the same write as the evaluation.
        `no_shutdown_delay`: the client skips the group's and the tasks' shutdown_delay."""
        alloc = self.store.alloc(alloc_id)
        if alloc is None:
            raise NotFound("alloc not found")
        job = self.store.job(alloc.namespace, alloc.job_id)
        ev = self._new_eval(job, alloc.namespace, alloc.job_id, TRIGGER_ALLOC_STOP)
        transition = DesiredTransition(migrate=True, no_shutdown_delay=True if no_shutdown_delay else None)
        index = self.store.update_alloc_transitions({alloc_id: transition}, [ev])
        self.broker.enqueue(ev)
        return {"EvalID": ev.id, "Index": index}


class _PlanView:
    """A snapshot in which one job is replaced by the version being planned."""

    def __init__(self, snap: Snapshot, job: Job) -> None:
        self._snap = snap
        self._job = job
        self.index = snap.index

    def job(self, namespace: str, job_id: str) -> Job | None:
        if (namespace, job_id) == (self._job.namespace, self._job.id):
            return self._job
        return self._snap.job(namespace, job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snap, name)
