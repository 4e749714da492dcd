"""The keyed tables: rows of one model by a string key, with no secondary index (Consul's KV and
sessions, Nomad's variables and namespaces). One mechanism stores them all, in every backend:
the read model's `Tables.keyed[table][key]`, SQLite's `keyed` table, etcd's `<prefix>k/<table>/<key>`.

A new keyed table is one line here. Its name is also its blocking-query table (`StateStore.wait`).
"""

from __future__ import annotations

from pydantic import BaseModel

from yurt.structs import CatalogNode, ConfigEntry, KVEntry, Namespace, Session, StoredVariable, VirtualIP

KEYED: dict[str, type[BaseModel]] = {
    "kv": KVEntry,                 # by the key
    "sessions": Session,           # by ID
    "variables": StoredVariable,   # by "<namespace>\x00<path>" (var_key)
    "namespaces": Namespace,       # by name
    "catalog_nodes": CatalogNode,  # by node key: an external node's name, an agent node's ID
    "config_entries": ConfigEntry,  # by "<kind>/<name>" (Consul's config entries but service-intentions)
    "virtual_ips": VirtualIP,      # by service name (Connect services' virtual IPs)
}


def var_key(namespace: str, path: str) -> str:
    return f"{namespace}\x00{path}"
