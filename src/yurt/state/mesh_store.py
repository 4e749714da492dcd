"""StateStore operations on the service mesh tables: the catalog ("services"), intentions and
the Connect CA ("ca", "ca_serial"). Each is one write (one index) like every other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from yurt.structs import CAState, HealthCheck, Intention, ServiceRegistration

from .view import StateView
from .writes import Txn


_T = TypeVar("_T")


class MeshStore:
    # provided by StateStore
    _mem_lock: threading.Lock
    _view: StateView
    if TYPE_CHECKING:
        def _write(self, build: Callable[[Txn], object]) -> int: ...

        def fixed(self, obj: _T, index: int) -> _T: ...

    # --- catalog -------------------------------------------------------------------------------

    def upsert_services(self, services: Iterable[ServiceRegistration]) -> int:
        def build(txn: Txn) -> None:
            for s in services:
                txn.upsert_service(s)
        return self._write(build)

    def delete_services(self, keys: Iterable[tuple[str, str]]) -> int | None:
        """Deregister instances by (node, ID); unknown ones are skipped. Returns the write's
        index, or None when nothing was registered (then nothing is written)."""
        keys = [k for k in keys if self._view.service(*k) is not None]
        if not keys:
            return None
        return self._write(lambda txn: [txn.delete_service(k) for k in keys])

    def delete_services_of_allocs(self, alloc_ids: Iterable[str]) -> int | None:
        with self._mem_lock:
            keys = [s.key for a in alloc_ids for s in self._view.services_by_alloc(a)]
        return self.delete_services(keys)

    def delete_services_of_node(self, node_key: str) -> int | None:
        with self._mem_lock:
            keys = [s.key for s in self._view.services_by_node(node_key)]
        return self.delete_services(keys)

    def update_check(self, node_key: str, check_id: str, status: str,
                     output: str | None = None) -> HealthCheck:
        """Raises NotFound for an unknown check."""
        out: list[HealthCheck] = []
        self._write(lambda txn: out.append(txn.update_check(node_key, check_id, status, output)))
        return out[0]

    def service(self, node_key: str, service_id: str) -> ServiceRegistration | None:
        return self._view.service(node_key, service_id)

    def services(self, name: str | None = None) -> list[ServiceRegistration]:
        with self._mem_lock:
            return self._view.services(name)

    def connect_services(self, name: str) -> list[ServiceRegistration]:
        with self._mem_lock:
            return self._view.connect_services(name)

    def services_by_node(self, node_key: str) -> list[ServiceRegistration]:
        with self._mem_lock:
            return self._view.services_by_node(node_key)

    def services_by_alloc(self, alloc_id: str) -> list[ServiceRegistration]:
        with self._mem_lock:
            return self._view.services_by_alloc(alloc_id)

    # --- intentions ----------------------------------------------------------------------------

    def upsert_intention(self, ix: Intention) -> Intention:
        """Create or replace by ID; raises StateError if another intention has the same pair."""
        out: list[Intention] = []
        index = self._write(lambda txn: out.append(txn.upsert_intention(ix)))
        return self.fixed(out[0], index)

    def delete_intention(self, ix_id: str) -> int:
        return self._write(lambda txn: txn.delete_intention(ix_id))

    def intention(self, ix_id: str) -> Intention | None:
        return self._view.intention(ix_id)

    def intentions(self) -> list[Intention]:
        with self._mem_lock:
            return self._view.intentions()

    # --- CA ------------------------------------------------------------------------------------

    def set_ca_state(self, state: CAState) -> CAState:
        out: list[CAState] = []
        index = self._write(lambda txn: out.append(txn.set_ca_state(state)))
        return self.fixed(out[0], index)

    def ca_state(self) -> CAState | None:
        return self._view.ca_state()

    def ca_serial(self) -> int:
        return self._view.ca_serial()

    def next_ca_serial(self) -> tuple[int, int]:
        """Take the next certificate serial number; returns (serial, index of that write)."""
        out: list[int] = []
        index = self._write(lambda txn: out.append(txn.next_serial()))
        return out[0], index
