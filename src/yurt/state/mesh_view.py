"""Reads of the service mesh tables, mixed into `StateView` (so snapshots have them too)."""

from __future__ import annotations

from collections.abc import Iterable

from yurt.structs import CAState, Intention, ServiceRegistration

from .memory import Tables


def _by_key(rows: Iterable[ServiceRegistration]) -> list[ServiceRegistration]:
    return sorted(rows, key=lambda s: (s.node, s.id))


class MeshView:
    _t: Tables  # provided by StateView

    def service(self, node_key: str, service_id: str) -> ServiceRegistration | None:
        return self._t.services.get((node_key, service_id))

    def services(self, name: str | None = None) -> list[ServiceRegistration]:
        """Every instance (of one service name), in (node, ID) order."""
        if name is None:
            return _by_key(self._t.services.values())
        return _by_key(self._t.services_by_name.get(name, {}).values())

    def connect_services(self, name: str) -> list[ServiceRegistration]:
        """Instances that take mesh traffic for `name`: its proxies and Connect-native instances."""
        return _by_key(self._t.services_by_dest.get(name, {}).values())

    def services_by_node(self, node_key: str) -> list[ServiceRegistration]:
        return _by_key(self._t.services_by_node.get(node_key, {}).values())

    def services_by_alloc(self, alloc_id: str) -> list[ServiceRegistration]:
        return _by_key(self._t.services_by_alloc.get(alloc_id, {}).values())

    def intention(self, ix_id: str) -> Intention | None:
        return self._t.intentions.get(ix_id)

    def intentions(self) -> list[Intention]:
        return list(self._t.intentions.values())

    def ca_state(self) -> CAState | None:
        return self._t.ca_state

    def ca_serial(self) -> int:
        return self._t.ca_serial
