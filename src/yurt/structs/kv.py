"""Rows of the small keyed tables: Consul's KV entries and sessions, Nomad's variables (as
stored: encrypted) and namespaces. Each is stored by one string key (`key()`), in the store's
keyed tables (`state/keyed.py`)."""

from __future__ import annotations

from .base import Struct, field


class KVEntry(Struct):
    """One Consul KV pair, in Consul's JSON shape (`Value` is base64, as Consul answers it)."""

    key: str = ""
    flags: int = 0
    value: str | None = None          # base64 of the bytes; None: a key with no value
    session: str = ""                 # the session holding the lock, if any
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0


class Session(Struct):
    """A Consul session (`/v1/session/*`)."""

    id: str = field("", json="ID")
    name: str = ""
    node: str = ""                    # the node's name, as Consul names it
    lock_delay: int = 15_000_000_000  # ns
    behavior: str = "release"         # or "delete"
    ttl: str = field("", json="TTL")
    node_checks: list[str] = field(factory=list)
    service_checks: list[dict] = field(factory=list)
    namespace: str = "default"
    create_index: int = 0
    modify_index: int = 0


class Namespace(Struct):
    """A Nomad namespace (`/v1/namespace/:name`)."""

    name: str = ""
    description: str = ""
    quota: str = ""
    meta: dict[str, str] | None = None
    capabilities: dict | None = None              # EnabledTaskDrivers, DisabledNetworkModes ...
    node_pool_configuration: dict | None = None   # kept and shown; Yurt has one node pool
    vault_configuration: dict | None = None       # kept and shown; no effect
    consul_configuration: dict | None = None      # kept and shown; no effect
    create_index: int = 0
    modify_index: int = 0


class StoredVariable(Struct):
    """A Nomad variable as the store holds it: its items encrypted (AES-GCM) with a key kept
    outside the store; the metadata in the clear."""

    namespace: str = "default"
    path: str = ""
    key_id: str = field("", json="KeyID")          # which key encrypted it
    nonce: str = ""                                # base64
    ciphertext: str = ""                           # base64 of the encrypted JSON items
    lock: dict | None = None
    create_time: int = 0
    modify_time: int = 0
    create_index: int = 0
    modify_index: int = 0


class ConfigEntry(Struct):
    """One Consul config entry (`/v1/config/<kind>/<name>`) as stored: its kind and name, and
    the rest of the entry in Consul's JSON shape (CamelCase keys), as validated by
    `server/config_entries.py`. Stored in the keyed table "config_entries" by "<kind>/<name>"."""

    kind: str = ""
    name: str = ""
    entry: dict = field(factory=dict)
    create_index: int = 0
    modify_index: int = 0
