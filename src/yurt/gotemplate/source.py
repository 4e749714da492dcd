"""The data-source seam: what the data functions read, and the values they return.

The data functions (``key``, ``ls``, ``service``, ``nomadVar``...) ask a ``Source`` and record a
``Dependency`` for each thing they read, so whoever renders can watch exactly those and render
again when one changes. The values are consul-template's, with Go's field names (``.Address``,
``.Port``, ``.Tags``...), so templates written for Nomad read them unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class Dependency(NamedTuple):
    """One thing a render read: ``kind`` is kv, kv_list, service, connect, catalog_services, nomad_service,
    nomad_services, nomad_var, nomad_var_list, file (an absolute path) or env; ``arg`` the key, prefix,
    query or name."""

    kind: str
    arg: str


class ServiceTags(list[str]):
    """A service's tags: a list with consul-template's ``.Contains`` method."""

    def Contains(self, tag: str) -> bool:
        return tag in self


@dataclass
class KeyPair:
    """A KV entry as ``ls``/``tree`` return it: ``Key`` relative to the prefix, ``Path`` the whole key."""

    Path: str
    Key: str
    Value: str
    CreateIndex: int = 0
    ModifyIndex: int = 0
    LockIndex: int = 0
    Flags: int = 0
    Session: str = ""


@dataclass
class HealthCheck:
    Node: str = ""
    CheckID: str = ""
    Name: str = ""
    Status: str = "passing"
    Notes: str = ""
    Output: str = ""
    ServiceID: str = ""
    ServiceName: str = ""
    ServiceTags: list[str] = field(default_factory=list)
    Type: str = ""


@dataclass
class HealthService:
    """A Consul service instance as ``service`` returns it (its checks' aggregate in ``Status``)."""

    Name: str
    Address: str
    Port: int
    ID: str = ""
    Node: str = ""
    NodeID: str = ""
    NodeAddress: str = ""
    NodeDatacenter: str = ""
    NodeTaggedAddresses: dict[str, str] = field(default_factory=dict)
    NodeMeta: dict[str, str] = field(default_factory=dict)
    ServiceMeta: dict[str, str] = field(default_factory=dict)
    ServiceTaggedAddresses: dict[str, dict[str, str | int]] = field(default_factory=dict)  # {"wan": {Address, Port}}
    Tags: ServiceTags = field(default_factory=ServiceTags)
    Checks: list[HealthCheck] = field(default_factory=list)
    Status: str = "passing"
    Weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    Namespace: str = ""

    def __post_init__(self) -> None:
        self.Tags = ServiceTags(sorted(self.Tags))  # consul-template sorts them


@dataclass
class CatalogSnippet:
    """A service name and its tags, as ``services`` returns them."""

    Name: str
    Tags: ServiceTags = field(default_factory=ServiceTags)

    def __post_init__(self) -> None:
        self.Tags = ServiceTags(sorted(set(self.Tags)))


@dataclass
class CatalogNodeInfo:
    """A Consul node, as ``nodes`` lists them and ``(node).Node`` is."""

    Node: str
    Address: str = ""
    ID: str = ""
    Datacenter: str = ""
    TaggedAddresses: dict[str, str] = field(default_factory=dict)
    Meta: dict[str, str] = field(default_factory=dict)


@dataclass
class CatalogNodeService:
    """A service on a node, as ``(node).Services`` lists them."""

    ID: str
    Service: str
    Address: str = ""
    Port: int = 0
    Tags: ServiceTags = field(default_factory=ServiceTags)
    Meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.Tags = ServiceTags(sorted(self.Tags))


@dataclass
class CatalogNode:
    """What ``node`` returns: the node and its services."""

    Node: CatalogNodeInfo
    Services: list[CatalogNodeService] = field(default_factory=list)


@dataclass
class CARoot:
    """A Connect CA root, as ``caRoots`` lists them (``RootCertPEM``: its certificate)."""

    ID: str
    Name: str
    RootCertPEM: str
    Active: bool = False


@dataclass
class LeafCert:
    """A Connect leaf certificate, as ``caLeaf`` returns it."""

    Service: str
    CertPEM: str
    PrivateKeyPEM: str
    SerialNumber: str = ""
    ServiceURI: str = ""
    ValidAfter: str = ""
    ValidBefore: str = ""


@dataclass
class NomadService:
    """A Nomad service registration, as ``nomadService`` returns it."""

    Name: str
    Address: str
    Port: int
    ID: str = ""
    Node: str = ""
    Datacenter: str = ""
    Tags: ServiceTags = field(default_factory=ServiceTags)
    JobID: str = ""
    AllocID: str = ""
    Namespace: str = "default"

    def __post_init__(self) -> None:
        self.Tags = ServiceTags(sorted(self.Tags))  # consul-template sorts them


@dataclass
class NomadServicesSnippet:
    """A Nomad service name and its tags, as ``nomadServices`` returns them."""

    Name: str
    Tags: ServiceTags = field(default_factory=ServiceTags)
    Namespace: str = "default"

    def __post_init__(self) -> None:
        self.Tags = ServiceTags(sorted(set(self.Tags)))


@dataclass
class NomadVarMeta:
    """A variable's metadata (``nomadVarList``); prints as its path."""

    Namespace: str
    Path: str
    CreateIndex: int = 0
    ModifyIndex: int = 0
    CreateTime: int = 0
    ModifyTime: int = 0

    def String(self) -> str:
        return self.Path


@dataclass
class NomadVariable:
    """A Nomad variable: its metadata and its items."""

    Namespace: str
    Path: str
    Items: Mapping[str, str]
    CreateIndex: int = 0
    ModifyIndex: int = 0
    CreateTime: int = 0
    ModifyTime: int = 0

    def Metadata(self) -> NomadVarMeta:
        return NomadVarMeta(self.Namespace, self.Path, self.CreateIndex, self.ModifyIndex, self.CreateTime,
                            self.ModifyTime)


@dataclass
class NomadVarItem:
    """One item of a variable: prints (and marshals to JSON) as its value."""

    Key: str
    Value: str
    _parent: NomadVariable | None = field(default=None, repr=False, compare=False)

    def String(self) -> str:
        return self.Value

    def MarshalJSON(self) -> str:
        return self.Value

    def Parent(self) -> NomadVariable | None:
        return self._parent

    def Metadata(self) -> NomadVarMeta | None:
        return self._parent.Metadata() if self._parent else None


class NomadVarItems(dict[str, NomadVarItem]):
    """What ``nomadVar`` returns: the items by key (``.password``), with consul-template's methods."""

    def Keys(self) -> list[str]:
        return sorted(self)

    def Values(self) -> list[str]:
        return [self[k].Value for k in sorted(self)]

    def Tuples(self) -> list[dict[str, str]]:
        return [{"K": k, "V": self[k].Value} for k in sorted(self)]

    def ItemsMap(self) -> dict[str, str] | None:
        return {k: v.Value for k, v in self.items()} or None

    def Parent(self) -> NomadVariable | None:
        for v in self.values():
            return v.Parent()
        return None

    def Metadata(self) -> NomadVarMeta | None:
        parent = self.Parent()
        return parent.Metadata() if parent else None

    @classmethod
    def of(cls, var: NomadVariable) -> NomadVarItems:
        return cls({k: NomadVarItem(k, v, var) for k, v in var.Items.items()})


class Source(Protocol):
    """What the data functions read. ``None`` for a key or a variable means "does not exist (yet)".

    Over Yurt's agent these are its Consul- and Nomad-shaped reads: ``key`` GET /v1/kv/<path>,
    ``ls`` GET /v1/kv/<prefix>?recurse, ``services`` GET /v1/health/service/<name>(?passing&tag=),
    ``connect_services`` GET /v1/health/connect/<name>,
    ``catalog_services`` GET /v1/catalog/services, ``nomad_services`` GET /v1/service/<name>,
    ``nomad_service_list`` GET /v1/services, ``nomad_var`` GET /v1/var/<path>, ``nomad_var_list``
    GET /v1/vars?prefix=; ``env`` is the task's environment. Each render calls each at most once
    per distinct argument it uses (a Source may cache nothing).
    """

    def env(self, name: str) -> str | None:
        """The task's environment variable."""

    def key(self, path: str) -> str | None:
        """A KV value."""

    def ls(self, prefix: str) -> Sequence[KeyPair]:
        """Every KV entry under ``prefix`` (recursively), ``Path`` the whole key (``Key`` is set here)."""

    def services(self, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        """The catalog's instances of ``name`` (with ``tag`` if not empty), only the passing ones if asked."""

    def connect_services(self, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        """The Connect-capable instances of ``name`` (its sidecars' and native instances' addresses)."""

    def catalog_services(self) -> Sequence[CatalogSnippet]:
        """Every service name in the catalog with its tags."""

    def node(self, name: str) -> CatalogNode | None:
        """A node (``name`` empty: the local one) and its services; None if there is no such node."""

    def nodes(self) -> Sequence[CatalogNodeInfo]:
        """Every node of the catalog."""

    def ca_roots(self) -> Sequence[CARoot]:
        """The Connect CA's roots."""

    def ca_leaf(self, service: str) -> LeafCert:
        """A leaf certificate for ``service`` (what the task's workload identity may get)."""

    def nomad_services(self, name: str, tag: str, namespace: str) -> Sequence[NomadService]:
        """Nomad's registrations of ``name`` (``namespace`` empty: the task's own)."""

    def nomad_service_list(self, namespace: str) -> Sequence[NomadServicesSnippet]:
        """Every Nomad service name in a namespace, with its tags."""

    def nomad_var(self, path: str, namespace: str) -> NomadVariable | None:
        """A Nomad variable the task may read."""

    def nomad_var_list(self, prefix: str, namespace: str) -> Sequence[NomadVarMeta]:
        """The variables under ``prefix`` the task may read."""


@dataclass
class MemorySource:
    """A Source in plain dicts and lists (tests, and renders with everything known in advance)."""

    environ: dict[str, str] = field(default_factory=dict)
    kv: dict[str, str] = field(default_factory=dict)
    health: list[HealthService] = field(default_factory=list)
    mesh: list[HealthService] = field(default_factory=list)   # what connect_services answers
    nomad: list[NomadService] = field(default_factory=list)
    variables: dict[str, dict[str, str]] = field(default_factory=dict)
    catalog_nodes: list[CatalogNode] = field(default_factory=list)   # the first is the local node
    roots: list[CARoot] = field(default_factory=list)
    leaves: dict[str, LeafCert] = field(default_factory=dict)

    def env(self, name: str) -> str | None:
        return self.environ.get(name)

    def key(self, path: str) -> str | None:
        return self.kv.get(path)

    def ls(self, prefix: str) -> Sequence[KeyPair]:
        return [KeyPair(k, k, v) for k, v in sorted(self.kv.items()) if k.startswith(prefix)]

    def services(self, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        return [s for s in self.health if s.Name == name and (not tag or tag in s.Tags)
                and (not healthy_only or s.Status == "passing")]

    def connect_services(self, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        return [s for s in self.mesh if s.Name == name and (not tag or tag in s.Tags)
                and (not healthy_only or s.Status == "passing")]

    def catalog_services(self) -> Sequence[CatalogSnippet]:
        tags: dict[str, set[str]] = {}
        for s in self.health:
            tags.setdefault(s.Name, set()).update(s.Tags)
        return [CatalogSnippet(n, ServiceTags(t)) for n, t in sorted(tags.items())]

    def nomad_services(self, name: str, tag: str, namespace: str) -> Sequence[NomadService]:
        ns = namespace or "default"
        return [s for s in self.nomad if s.Name == name and s.Namespace == ns and (not tag or tag in s.Tags)]

    def nomad_service_list(self, namespace: str) -> Sequence[NomadServicesSnippet]:
        ns = namespace or "default"
        tags: dict[str, set[str]] = {}
        for s in self.nomad:
            if s.Namespace == ns:
                tags.setdefault(s.Name, set()).update(s.Tags)
        return [NomadServicesSnippet(n, ServiceTags(t), ns) for n, t in sorted(tags.items())]

    def nomad_var(self, path: str, namespace: str) -> NomadVariable | None:
        items = self.variables.get(path)
        if items is None:
            return None
        return NomadVariable(namespace or "default", path, dict(items))

    def nomad_var_list(self, prefix: str, namespace: str) -> Sequence[NomadVarMeta]:
        return [NomadVarMeta(namespace or "default", p) for p in sorted(self.variables) if p.startswith(prefix)]

    def node(self, name: str) -> CatalogNode | None:
        if not name:
            return self.catalog_nodes[0] if self.catalog_nodes else None
        return next((n for n in self.catalog_nodes if name in (n.Node.Node, n.Node.ID)), None)

    def nodes(self) -> Sequence[CatalogNodeInfo]:
        return [n.Node for n in self.catalog_nodes]

    def ca_roots(self) -> Sequence[CARoot]:
        return list(self.roots)

    def ca_leaf(self, service: str) -> LeafCert:
        from yurt.errors import PermissionDenied
        if service not in self.leaves:
            raise PermissionDenied(f"no leaf for {service}")
        return self.leaves[service]
