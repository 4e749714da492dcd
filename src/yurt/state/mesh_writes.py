"""Write operations on the service mesh tables (catalog, intentions, CA), mixed into `Txn`.

Like every write, each stamps CreateIndex/ModifyIndex with the transaction's index and replaces
objects rather than mutating them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yurt.structs import CAState, HealthCheck, Intention, ServiceRegistration

from .errors import NotFound, StateError
from .memory import Tables
from .sqlite_backend import Changes


class MeshTxn:
    # provided by Txn
    t: Tables
    ch: Changes
    if TYPE_CHECKING:
        @property
        def index(self) -> int: ...

    # --- catalog -------------------------------------------------------------------------------

    def service(self, key: tuple[str, str]) -> ServiceRegistration | None:
        ch = self.ch.services
        return ch[key] if key in ch else self.t.services.get(key)

    def upsert_service(self, svc: ServiceRegistration) -> ServiceRegistration:
        """Register (or replace) a service instance; a check keeps its CreateIndex, and its
        status unless the new definition sets one."""
        if not svc.id or not svc.service:
            raise StateError("a service needs an ID and a name")
        old = self.service(svc.key)
        idx = self.index
        old_checks = {c.check_id: c for c in old.checks} if old is not None else {}
        checks = []
        for c in svc.checks:
            prev = old_checks.get(c.check_id)
            upd = {"create_index": prev.create_index if prev else idx, "modify_index": idx,
                   "service_id": svc.id, "service_name": svc.service,
                   "service_tags": list(svc.tags), "node": svc.node}
            if prev is not None and "status" not in c.model_fields_set:
                upd.update(status=prev.status, output=prev.output)
            checks.append(c.model_copy(update=upd))
        new = svc.model_copy(update={"create_index": old.create_index if old else idx,
                                     "modify_index": idx, "checks": checks})
        self.ch.services[svc.key] = new
        return new

    def delete_service(self, key: tuple[str, str]) -> bool:
        if self.service(key) is None:
            return False
        self.ch.services[key] = None
        return True

    def update_check(self, node_key: str, check_id: str, status: str, output: str | None) -> HealthCheck:
        """Set a check's status (and output) on one node; the service gets the new ModifyIndex."""
        for key in list(self.t.services_by_node.get(node_key, {})) + [
                k for k in self.ch.services if k[0] == node_key]:
            svc = self.service(key)
            if svc is None:
                continue
            for i, c in enumerate(svc.checks):
                if c.check_id != check_id:
                    continue
                if c.status == status and (output is None or c.output == output):
                    return c  # nothing changes: Consul does not bump the index either
                nc = c.model_copy(update={"status": status, "modify_index": self.index,
                                          "output": c.output if output is None else output})
                checks = list(svc.checks)
                checks[i] = nc
                self.ch.services[key] = svc.model_copy(update={"checks": checks, "modify_index": self.index})
                return nc
        raise NotFound(f'unknown check ID "{check_id}"')

    # --- intentions ----------------------------------------------------------------------------

    def intention(self, ix_id: str) -> Intention | None:
        ch = self.ch.intentions
        return ch[ix_id] if ix_id in ch else self.t.intentions.get(ix_id)

    def upsert_intention(self, ix: Intention) -> Intention:
        old = self.intention(ix.id)
        for other in self.t.intentions.values():
            if (other.id != ix.id and other.source_name == ix.source_name
                    and other.destination_name == ix.destination_name):
                raise StateError(f"an intention {ix.source_name} => {ix.destination_name} already exists")
        new = ix.model_copy(update={"create_index": old.create_index if old else self.index,
                                    "modify_index": self.index})
        self.ch.intentions[ix.id] = new
        return new

    def delete_intention(self, ix_id: str) -> None:
        if self.intention(ix_id) is None:
            raise NotFound(f"intention {ix_id!r} not found")
        self.ch.intentions[ix_id] = None

    # --- CA ------------------------------------------------------------------------------------

    def set_ca_state(self, state: CAState) -> CAState:
        old = self.t.ca_state
        new = state.model_copy(update={"create_index": old.create_index if old else self.index,
                                       "modify_index": self.index})
        self.ch.ca_state = new
        return new

    def next_serial(self) -> int:
        n = (self.ch.ca_serial if self.ch.ca_serial is not None else self.t.ca_serial) + 1
        self.ch.ca_serial = n
        return n
