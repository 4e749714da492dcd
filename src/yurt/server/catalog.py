"""The service catalog: registration as Consul's agent accepts it, and the catalog/health views.

Registration bodies may use Consul's CamelCase keys or any case / snake_case spelling of them
(python-consul sends `name`, `id`, `port`, `check`...). `Connect.SidecarService` registers the
sidecar `<id>-sidecar-proxy` with Consul's defaults; Yurt's client instead registers its sidecar
explicitly (Kind "connect-proxy" with a Proxy block) with the real host port. Both work.

Instances live in the state store's "services" table, keyed by (node, service ID); checks travel
with their service. Alias checks take their status from the aliased service when read.
Node-level checks (no ServiceID) and external nodes registered through the catalog live in the
keyed table "catalog_nodes" (`CatalogNode`), by the same node key as the services: an agent
node's ID, an external node's name. A node's checks count in the health of each of its services,
as Consul's do (`?passing`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from yurt.errors import InvalidInput, NotFound
from yurt.structs import (CHECK_CRITICAL, CHECK_PASSING, CHECK_WARNING, CatalogNode, HealthCheck,
                          ServiceRegistration, format_duration, parse_duration)
from yurt.structs.catalog import (CHECK_STATES, KIND_CONNECT_PROXY, KIND_INGRESS_GATEWAY,
                                  KIND_TERMINATING_GATEWAY, SIDECAR_SUFFIX)
from yurt.state import StateStore

SIDECAR_MIN_PORT, SIDECAR_MAX_PORT = 21000, 21255
CONSUL_SERVER_PORT = 8300   # the port the "consul" service's instances show (Consul's server RPC port)

_TOP = ("ID", "Name", "Service", "Kind", "Address", "Port", "Tags", "Meta", "Proxy", "Connect",
        "Check", "Checks", "Weights", "EnableTagOverride", "Namespace", "TaggedAddresses",
        "SocketPath", "Token", "Node", "NodeID", "AllocID", "Datacenter", "NodeAddress", "Locality")
_PROXY = ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress",
          "LocalServicePort", "Mode", "Config", "Upstreams", "Expose", "MeshGateway",
          "TransparentProxy", "LocalServiceSocketPath")
_UPSTREAM = ("DestinationType", "DestinationName", "DestinationNamespace", "DestinationPartition",
             "DestinationPeer", "Datacenter", "LocalBindAddress", "LocalBindPort", "Config",
             "MeshGateway", "LocalBindSocketPath", "LocalBindSocketMode")
_CHECK = ("CheckID", "ID", "Name", "Status", "Notes", "Output", "TCP", "HTTP", "Method", "Header",
          "Body", "TTL", "Interval", "Timeout", "Args", "ScriptArgs", "Script", "GRPC",
          "AliasService", "DeregisterCriticalServiceAfter", "TLSSkipVerify", "Type", "ServiceID")
_CONNECT = ("Native", "SidecarService")
_SEVERITY = {CHECK_PASSING: 0, CHECK_WARNING: 1, CHECK_CRITICAL: 2}


def _severity(status: str) -> int:
    return _SEVERITY.get(status, 0)


class CatalogError(InvalidInput):
    """A registration Yurt refuses (400 with this text)."""


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def canon(body: Any, known: tuple[str, ...]) -> dict[str, Any]:
    """Rename the keys of `body` to their canonical spelling, whatever their case or snake_case;
    unknown keys are kept as they are."""
    if not isinstance(body, dict):
        raise CatalogError(f"expected a JSON object, got {type(body).__name__}")
    table = {_fold(k): k for k in known}
    return {table.get(_fold(k)) or k: v for k, v in body.items()}


def _duration(value: Any) -> str:
    if value in (None, "", 0):
        return ""
    if isinstance(value, (int, float)):
        return format_duration(int(value))
    return str(value)


def _check(raw: Any, svc_id: str, svc_name: str, n: int, many: bool) -> HealthCheck:
    c = canon(raw, _CHECK)
    args = c.get("Args") or c.get("ScriptArgs") or ([c["Script"]] if c.get("Script") else None)
    kind = c.get("Type") or next((t for t, k in (("ttl", "TTL"), ("tcp", "TCP"), ("http", "HTTP"),
                                                  ("grpc", "GRPC"), ("alias", "AliasService"))
                                  if c.get(k)), "script" if args else "")
    check_id = c.get("CheckID") or c.get("ID") or (f"service:{svc_id}:{n}" if many else f"service:{svc_id}")
    status = str(c.get("Status") or CHECK_CRITICAL).lower()
    if status not in CHECK_STATES:
        raise CatalogError(f'check "{check_id}": Status must be passing, warning or critical')
    try:
        out = HealthCheck(check_id=check_id, name=c.get("Name") or f"Service '{svc_name}' check",
                          status=status, notes=c.get("Notes") or "", output=c.get("Output") or "",
                          type=kind, interval=_duration(c.get("Interval")),
                          timeout=_duration(c.get("Timeout")), tcp=c.get("TCP") or "",
                          http=c.get("HTTP") or "", method=c.get("Method") or "",
                          ttl=_duration(c.get("TTL")), alias_service=c.get("AliasService") or "", args=args)
    except ValidationError as e:
        err = e.errors()[0]
        raise CatalogError(f'check "{check_id}": {".".join(str(x) for x in err["loc"])}: {err["msg"]}') from None
    if "Status" not in c:
        out.model_fields_set.discard("status")  # a re-registration keeps the current status
    return out


def _checks(c: dict[str, Any], svc_id: str, svc_name: str) -> list[HealthCheck]:
    if c.get("Check") and not isinstance(c["Check"], dict):
        raise CatalogError(f'service "{svc_name}": Check must be an object, not {type(c["Check"]).__name__}')
    if c.get("Checks") and not isinstance(c["Checks"], list):
        raise CatalogError(f'service "{svc_name}": Checks must be a list of objects, not '
                           f'{type(c["Checks"]).__name__}')
    raws = ([c["Check"]] if c.get("Check") else []) + list(c.get("Checks") or [])
    return [_check(r, svc_id, svc_name, i + 1, len(raws) > 1) for i, r in enumerate(raws)]


def _tagged_addresses(raw: Any, name: str) -> dict[str, Any]:
    """Consul's service TaggedAddresses: {"lan": {"Address": "10.0.0.1", "Port": 80}, ...}."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise CatalogError(f'service "{name}": TaggedAddresses must be an object of '
                           '{"<tag>": {"Address": "...", "Port": N}}')
    out = {}
    for tag, addr in raw.items():
        a = canon(addr, ("Address", "Port"))
        try:
            out[str(tag)] = {"Address": str(a.get("Address") or ""), "Port": int(a.get("Port") or 0)}
        except (TypeError, ValueError):
            raise CatalogError(f'service "{name}": TaggedAddresses.{tag}.Port must be a number') from None
    return out


def _locality(raw: Any, name: str) -> dict[str, str] | None:
    if not raw:
        return None
    loc = canon(raw, ("Region", "Zone"))
    if set(loc) - {"Region", "Zone"}:
        raise CatalogError(f'service "{name}": Locality takes Region and Zone, not '
                           f'{", ".join(sorted(set(loc) - {"Region", "Zone"}))}')
    return {k: str(v) for k, v in loc.items() if v}


def _proxy(raw: Any) -> dict[str, Any]:
    p = canon(raw or {}, _PROXY)
    p["Upstreams"] = [canon(u, _UPSTREAM) for u in (p.get("Upstreams") or [])]
    return p


class Catalog:
    def __init__(self, store: StateStore, datacenter: str = "dc1") -> None:
        self.store = store
        self.datacenter = datacenter
        # TTL checks: told (node key, check ID, TTL in seconds) whenever one is set to anything
        # but critical; the server's leader expires it unless it is updated again in time
        self.on_ttl: Callable[[str, str, float], None] | None = None
        # the servers, (name, address) each: the catalog lists them as the "consul" service, as
        # Consul's always has its servers there (set by the agent)
        self.servers: Callable[[], list[tuple[str, str]]] = lambda: []
        # a Connect service's virtual IP, assigned on first use (`virtual_ips.VirtualIPs.assign`)
        self.virtual_ip: Callable[[str], str] | None = None

    def _consul_service(self) -> list[ServiceRegistration]:
        return [ServiceRegistration(id="consul", service="consul", port=CONSUL_SERVER_PORT, address=addr,
                                    node=name, node_address=addr, datacenter=self.datacenter)
                for name, addr in self.servers()]

    def _arm(self, node_key: str, check: HealthCheck) -> None:
        if self.on_ttl is not None and check.type == "ttl" and check.ttl and check.status != CHECK_CRITICAL:
            try:
                ttl = parse_duration(check.ttl) / 1e9   # nanoseconds -> seconds
            except ValueError:
                return
            if ttl > 0:
                self.on_ttl(node_key, check.check_id, ttl)

    def expire_ttl(self, node_key: str, check_id: str) -> None:
        """A TTL check's time is up: critical, as Consul's agent marks it, unless it is gone or
        already critical."""
        for svc in self.store.services_by_node(node_key):
            for c in svc.checks:
                if c.check_id == check_id and c.type == "ttl" and c.status != CHECK_CRITICAL:
                    self.store.update_check(node_key, check_id, CHECK_CRITICAL,
                                            f"TTL expired (last update more than {c.ttl} ago)")
                    return
        row = self._node_row_of(node_key)
        for c in row.checks if row else []:
            if c.check_id == check_id and c.type == "ttl" and c.status != CHECK_CRITICAL:
                self._set_node_check(node_key, check_id, CHECK_CRITICAL,
                                     f"TTL expired (last update more than {c.ttl} ago)")
                return

    def arm_all(self) -> None:
        """A new leader: every TTL check not critical gets its full TTL from now."""
        for svc in self.store.services():
            for c in svc.checks:
                self._arm(svc.key[0], c)
        for key, row in self._node_rows():
            for c in row.checks:
                self._arm(key, c)

    # -- catalog nodes (external nodes, node-level checks) -------------------------------------
    def _node_rows(self) -> list[tuple[str, CatalogNode]]:
        return [(k, r) for k, r in self.store.keyed_list("catalog_nodes") if isinstance(r, CatalogNode)]

    def _node_row_of(self, node_key: str) -> CatalogNode | None:
        row = self.store.keyed_get("catalog_nodes", node_key)
        return row if isinstance(row, CatalogNode) else None

    def node_level_checks(self, node_key: str) -> list[HealthCheck]:
        row = self._node_row_of(node_key)
        return list(row.checks) if row else []

    def _put_node_row(self, node_key: str, change: Callable[[CatalogNode | None], CatalogNode | None]) -> int:
        """One write of a node's row: `change(current)` gives the new row (None: delete)."""
        def build(txn: Any) -> None:
            cur = txn.keyed("catalog_nodes", node_key)
            new = change(cur if isinstance(cur, CatalogNode) else None)
            if new is None:
                if cur is not None:
                    txn.drop_keyed("catalog_nodes", node_key)
                return
            upd = {"create_index": cur.create_index if isinstance(cur, CatalogNode) else txn.index,
                   "modify_index": txn.index,
                   "checks": [c.model_copy(update={"node": new.node, "modify_index": txn.index,
                                                   "create_index": c.create_index or txn.index})
                              for c in new.checks]}
            txn.put_keyed("catalog_nodes", node_key, new.model_copy(update=upd))
        return self.store.keyed_write(build)[0]

    def _set_node_check(self, node_key: str, check_id: str, status: str, output: str | None) -> HealthCheck:
        def change(cur: CatalogNode | None) -> CatalogNode:
            if cur is None or not any(c.check_id == check_id for c in cur.checks):
                raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check '
                               "name.")
            return cur.model_copy(update={"checks": [
                c.model_copy(update={"status": status, **({"output": output} if output is not None else {})})
                if c.check_id == check_id else c for c in cur.checks]})
        self._put_node_row(node_key, change)
        row = self._node_row_of(node_key)
        return next(c for c in (row.checks if row else []) if c.check_id == check_id)

    # -- registration -----------------------------------------------------------------------
    def build(self, body: Any, node_id: str, node: str, node_address: str = "") -> list[ServiceRegistration]:
        """The instances one registration body makes: the service, plus its sidecar if it has a
        nested `Connect.SidecarService`."""
        c = canon(body, _TOP)
        name = c.get("Name") or c.get("Service")
        if not name or not isinstance(name, str):
            raise CatalogError('a service registration needs a "Name"')
        if c.get("NodeID") and c.get("NodeID") != node_id:
            # registered for another node (a client's service hook): that node's name and address,
            # not those of the agent that took the request
            known = self.store.node(c["NodeID"])
            node_id = c["NodeID"]
            node = known.name if known else node_id
            node_address = known.attributes.get("unique.network.ip-address", "") if known else ""
        node = c.get("Node") or node
        common = {"namespace": c.get("Namespace") or "default", "datacenter": self.datacenter,
                  "node": node, "node_id": node_id,
                  "node_address": c.get("NodeAddress") or node_address,
                  "alloc_id": c.get("AllocID") or ""}
        svc_id = c.get("ID") or name
        kind = c.get("Kind") or ""
        if kind not in ("", KIND_CONNECT_PROXY, KIND_INGRESS_GATEWAY, KIND_TERMINATING_GATEWAY):
            raise CatalogError(f'Kind "{kind}" is not supported: use "", "connect-proxy", '
                               '"ingress-gateway" or "terminating-gateway"')
        connect = canon(c.get("Connect") or {}, _CONNECT)
        proxy = _proxy(c.get("Proxy")) if (kind or c.get("Proxy")) else None
        if kind == KIND_CONNECT_PROXY and not (proxy or {}).get("DestinationServiceName"):
            raise CatalogError(f'service "{name}": a connect-proxy needs Proxy.DestinationServiceName')
        sidecar_raw = connect.pop("SidecarService", None)
        try:
            svc = ServiceRegistration.model_validate({
                "ID": svc_id, "Service": name, "Kind": kind, "Address": c.get("Address") or "",
                "Port": int(c.get("Port") or 0), "Tags": list(c.get("Tags") or []),
                "Meta": dict(c.get("Meta") or {}), "Proxy": proxy,
                "Connect": {**connect, **({"SidecarService": {}} if sidecar_raw is not None else {})},
                "EnableTagOverride": bool(c.get("EnableTagOverride")),
                **({"Weights": c["Weights"]} if c.get("Weights") else {}),
                "TaggedAddresses": _tagged_addresses(c.get("TaggedAddresses"), name),
                "Locality": _locality(c.get("Locality"), name),
                "Checks": [], **_aliases(common)})
        except (ValueError, TypeError) as e:
            raise CatalogError(f'service "{name}": {e}') from None
        svc.checks = _checks(c, svc_id, name)
        out = [svc]
        if sidecar_raw is not None:
            out.append(self._sidecar(svc, canon(sidecar_raw, _TOP), common))
        return out

    def _sidecar(self, parent: ServiceRegistration, sc: dict[str, Any], common: dict) -> ServiceRegistration:
        """Consul's sidecar_service defaults (reference §4)."""
        sid = f"{parent.id}{SIDECAR_SUFFIX}"
        if sc.get("ID") and sc["ID"] != sid:
            raise CatalogError(f'the sidecar of "{parent.id}" is always "{sid}"; do not set its ID')
        proxy = _proxy(sc.get("Proxy"))
        proxy.setdefault("DestinationServiceName", parent.service)
        proxy.setdefault("DestinationServiceID", parent.id)
        proxy.setdefault("LocalServiceAddress", "127.0.0.1")
        proxy.setdefault("LocalServicePort", parent.port)
        port = int(sc.get("Port") or 0) or self._sidecar_port(parent.key[0], sid)
        svc = ServiceRegistration.model_validate({
            "ID": sid, "Service": sc.get("Name") or f"{parent.service}{SIDECAR_SUFFIX}",
            "Kind": KIND_CONNECT_PROXY, "Address": sc.get("Address") or parent.address, "Port": port,
            "Tags": list(sc.get("Tags") or parent.tags), "Meta": dict(sc.get("Meta") or parent.meta),
            "Proxy": proxy, **_aliases(common)})
        svc.checks = _checks(sc, sid, svc.service) or [
            HealthCheck(check_id=f"service:{sid}:1", name="Connect Sidecar Listening", type="tcp",
                        tcp=f"{sc.get('Address') or proxy['LocalServiceAddress']}:{port}",
                        interval="10s", status=CHECK_CRITICAL),
            HealthCheck(check_id=f"service:{sid}:2", name=f"Connect Sidecar Aliasing {parent.id}",
                        type="alias", alias_service=parent.id, status=CHECK_PASSING)]
        return svc

    def _sidecar_port(self, node_key: str, sid: str) -> int:
        current = self.store.service(node_key, sid)
        if current is not None and current.port:
            return current.port
        used = {s.port for s in self.store.services_by_node(node_key)}
        for port in range(SIDECAR_MIN_PORT, SIDECAR_MAX_PORT + 1):
            if port not in used:
                return port
        raise CatalogError(f"no free sidecar port in {SIDECAR_MIN_PORT}-{SIDECAR_MAX_PORT}")

    def register(self, body: Any, node_id: str, node: str, node_address: str = "") -> list[ServiceRegistration]:
        services = self.build(body, node_id, node, node_address)
        if self.virtual_ip is not None:
            for svc in services:
                dest = svc.connect_destination
                if dest:   # Consul's TaggedAddresses["consul-virtual"] on the mesh endpoint
                    port = svc.proxy.local_service_port if svc.proxy is not None else svc.port
                    svc.tagged_addresses["consul-virtual"] = {"Address": self.virtual_ip(dest), "Port": port}
        parent = services[0]
        before = self.store.service(*parent.key)
        self.store.upsert_services(services)
        for svc in services:
            stored = self.store.service(*svc.key)
            for c in (stored or svc).checks:
                self._arm(svc.key[0], c)
        if (len(services) == 1 and before is not None
                and before.connect.get("SidecarService") is not None):
            # the nested sidecar was removed from the definition: so goes the sidecar
            self.store.delete_services([(parent.key[0], parent.id + SIDECAR_SUFFIX)])
        return services

    def register_check(self, node_key: str, body: Any, node_name: str = "") -> HealthCheck:
        """`PUT /v1/agent/check/register`: a check added to one of this node's services
        (`ServiceID`), or to the node itself (none), replaced if its ID is taken. Its ID
        defaults to its Name, as Consul's."""
        c = canon(body, _CHECK)
        name = c.get("Name")
        if not name or not isinstance(name, str):
            raise CatalogError('a check registration needs a "Name"')
        if c.get("Args") or c.get("ScriptArgs") or c.get("Script"):
            raise CatalogError("Scripts are disabled on this agent; to enable, configure 'enable_script_checks' "
                               "to true (Yurt's agent does not run script checks: use an HTTP, TCP or TTL check)")
        service_id = c.get("ServiceID") or ""
        if not service_id:
            return self._register_node_check(node_key, node_name, c, name)
        svc = self.store.service(node_key, service_id)
        if svc is None:
            raise CatalogError(f'ServiceID "{service_id}" does not exist')
        check = _check({**c, "CheckID": c.get("CheckID") or c.get("ID") or name}, svc.id, svc.service, 0, False)
        check.service_id, check.service_name, check.node = svc.id, svc.service, svc.node
        kept = [x for x in svc.checks if x.check_id != check.check_id]
        old = next((x for x in svc.checks if x.check_id == check.check_id), None)
        if old is not None and "status" not in check.model_fields_set:
            check.status, check.output = old.status, old.output   # re-registered: keeps its status
        self.store.upsert_services([svc.model_copy(update={"checks": [*kept, check]})])
        stored = self.store.service(node_key, service_id)
        out = next((x for x in (stored or svc).checks if x.check_id == check.check_id), check)
        self._arm(node_key, out)
        return out

    def _register_node_check(self, node_key: str, node_name: str, c: dict[str, Any], name: str) -> HealthCheck:
        check = _check({**c, "CheckID": c.get("CheckID") or c.get("ID") or name}, "", "", 0, False)
        if check.type == "alias":
            raise CatalogError(f'check "{name}": an alias check belongs to a service; give its ServiceID')

        def change(cur: CatalogNode | None) -> CatalogNode:
            row = cur or CatalogNode(node=node_name or node_key, id="" if node_key == node_name else node_key)
            old = next((x for x in row.checks if x.check_id == check.check_id), None)
            new = check
            if old is not None and "status" not in check.model_fields_set:
                new = check.model_copy(update={"status": old.status, "output": old.output})
            return row.model_copy(update={"checks": [*(x for x in row.checks if x.check_id != check.check_id), new]})
        self._put_node_row(node_key, change)
        out = next(x for x in self.node_level_checks(node_key) if x.check_id == check.check_id)
        self._arm(node_key, out)
        return out

    def deregister_check(self, node_key: str, check_id: str) -> int | None:
        """`PUT /v1/agent/check/deregister/<id>`: the check goes from its service or its node
        (unknown: None)."""
        if any(c.check_id == check_id for c in self.node_level_checks(node_key)):
            def change(cur: CatalogNode | None) -> CatalogNode | None:
                if cur is None:
                    return None
                rest = [c for c in cur.checks if c.check_id != check_id]
                return None if not rest and not cur.external else cur.model_copy(update={"checks": rest})
            return self._put_node_row(node_key, change)
        for svc in self.store.services_by_node(node_key):
            if any(c.check_id == check_id for c in svc.checks):
                self.store.upsert_services([svc.model_copy(
                    update={"checks": [c for c in svc.checks if c.check_id != check_id]})])
                stored = self.store.service(*svc.key)
                return stored.modify_index if stored else None
        return None

    def deregister(self, node_key: str, service_id: str) -> int | None:
        """The service and its `<id>-sidecar-proxy`, if any; nothing registered -> None."""
        return self.store.delete_services([(node_key, service_id), (node_key, service_id + SIDECAR_SUFFIX)])

    def update_check(self, node_key: str, check_id: str, status: str, output: str | None = None) -> HealthCheck:
        status = {"pass": CHECK_PASSING, "warn": CHECK_WARNING, "fail": CHECK_CRITICAL}.get(status, status)
        if status not in CHECK_STATES:
            raise CatalogError(f'Status must be passing, warning or critical, not "{status}"')
        if any(c.check_id == check_id for c in self.node_level_checks(node_key)):
            check = self._set_node_check(node_key, check_id, status, output)
        else:
            check = self.store.update_check(node_key, check_id, status, output)
        self._arm(node_key, check)
        return check

    # -- cleanup ----------------------------------------------------------------------------
    def remove_allocs(self, alloc_ids: list[str]) -> int | None:
        return self.store.delete_services_of_allocs(alloc_ids) if alloc_ids else None

    def remove_node(self, node_id: str) -> int | None:
        if self._node_row_of(node_id) is not None:
            self._put_node_row(node_id, lambda cur: None)
        return self.store.delete_services_of_node(node_id)

    # -- views ------------------------------------------------------------------------------
    def checks_of(self, svc: ServiceRegistration) -> list[HealthCheck]:
        """The instance's checks with alias checks resolved (worst status of the aliased service)."""
        out = []
        for c in svc.checks:
            if c.type == "alias" and c.alias_service:
                target = self.store.service(svc.key[0], c.alias_service)
                if target is None:
                    c = c.model_copy(update={"status": CHECK_CRITICAL,
                                             "output": f'service "{c.alias_service}" is not registered'})
                else:
                    worst = max((x.status for x in target.checks if x.type != "alias"),
                                key=_severity, default=CHECK_PASSING)
                    c = c.model_copy(update={"status": worst, "output": f"aliased service is {worst}"})
            out.append(c)
        return out

    def status(self, svc: ServiceRegistration) -> str:
        return max((c.status for c in self.checks_of(svc)), key=_severity, default=CHECK_PASSING)

    def service_map(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for s in [*self.store.services(), *self._consul_service()]:
            out.setdefault(s.service, set()).update(s.tags)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def instances(self, name: str, tag: str | None = None, connect: bool = False,
                  passing: bool = False) -> list[ServiceRegistration]:
        rows = self.store.connect_services(name) if connect else self.store.services(name)
        if name == "consul" and not connect:
            rows = [*rows, *self._consul_service()]
        if tag:
            rows = [s for s in rows if tag in s.tags]
        if passing:
            rows = [s for s in rows if self.status(s) == CHECK_PASSING
                    and all(c.status == CHECK_PASSING for c in self.node_level_checks(s.key[0]))]
        return rows

    def ingress_gateways(self, name: str, passing: bool = False) -> list[ServiceRegistration]:
        """The ingress gateway instances with a listener for `name` (/v1/health/ingress/<name>)."""
        rows = [s for s in self.store.services() if s.kind == KIND_INGRESS_GATEWAY
                and any(name == svc.get("Name") for lst in self.gateway_entry(s).get("Listeners") or []
                        for svc in lst.get("Services") or [])]
        if passing:
            rows = [s for s in rows if self.status(s) == CHECK_PASSING]
        return rows

    def gateway_entry(self, svc: ServiceRegistration) -> dict[str, Any]:
        """What a gateway instance carries: its config entry (`/v1/config/<kind>/<name>`, which
        `job run` writes and the gateway follows), else the job's block it registered with."""
        row = self.store.keyed_get("config_entries", f"{svc.kind}/{svc.service}")
        entry = getattr(row, "entry", None)
        return entry if isinstance(entry, dict) else _entry(svc)

    def gateway_services(self, gateway: str) -> list[dict[str, Any]]:
        """`/v1/catalog/gateway-services/<gateway>`: what a gateway carries, from its config entry
        (else the job's gateway block the instances registered with), one row per service."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for s in self.store.services(gateway):
            entry = self.gateway_entry(s)
            if s.kind == KIND_INGRESS_GATEWAY:
                for lst in entry.get("Listeners") or []:
                    for svc in lst.get("Services") or []:
                        out.setdefault((svc.get("Name", ""), lst.get("Port", 0)), {
                            "Gateway": {"Name": gateway}, "Service": {"Name": svc.get("Name", "")},
                            "GatewayKind": s.kind, "Port": lst.get("Port", 0), "Protocol": lst.get("Protocol", "tcp"),
                            "Hosts": svc.get("Hosts") or None, "CAFile": "", "CertFile": "", "KeyFile": "",
                            "SNI": "", "FromWildcard": False, "CreateIndex": s.create_index,
                            "ModifyIndex": s.modify_index})
            elif s.kind == KIND_TERMINATING_GATEWAY:
                for svc in entry.get("Services") or []:
                    out.setdefault((svc.get("Name", ""), 0), {
                        "Gateway": {"Name": gateway}, "Service": {"Name": svc.get("Name", "")},
                        "GatewayKind": s.kind, "CAFile": svc.get("CAFile", ""), "CertFile": svc.get("CertFile", ""),
                        "KeyFile": svc.get("KeyFile", ""), "SNI": svc.get("SNI", ""), "FromWildcard": False,
                        "CreateIndex": s.create_index, "ModifyIndex": s.modify_index})
        return list(out.values())

    def node_json(self, svc: ServiceRegistration) -> dict[str, Any]:
        node = self.store.node(svc.node_id) if svc.node_id else None
        row = self._node_row_of(svc.key[0]) if node is None else None
        if row is not None and row.external:
            return {"ID": row.id, "Node": row.node, "Address": row.address, "Datacenter": self.datacenter,
                    "TaggedAddresses": dict(row.tagged_addresses), "Meta": dict(row.meta),
                    "CreateIndex": row.create_index, "ModifyIndex": row.modify_index}
        return {"ID": svc.node_id, "Node": svc.node or (node.name if node else ""),
                "Address": svc.node_address or (node.attributes.get("unique.network.ip-address", "") if node else ""),
                "Datacenter": self.datacenter, "TaggedAddresses": {}, "Meta": dict(node.meta) if node else {},
                "CreateIndex": node.create_index if node else svc.create_index,
                "ModifyIndex": node.modify_index if node else svc.modify_index}

    def catalog_entry(self, svc: ServiceRegistration) -> dict[str, Any]:
        n = self.node_json(svc)
        a = svc.agent_json()
        return {"ID": n["ID"], "Node": n["Node"], "Address": n["Address"], "Datacenter": self.datacenter,
                "TaggedAddresses": {}, "NodeMeta": n["Meta"], "ServiceKind": svc.kind,
                "ServiceID": svc.id, "ServiceName": svc.service, "ServiceTags": a["Tags"],
                "ServiceAddress": svc.address, "ServiceTaggedAddresses": a["TaggedAddresses"],
                "ServiceWeights": a["Weights"],
                "ServiceMeta": a["Meta"], "ServicePort": svc.port, "ServiceSocketPath": "",
                "ServiceEnableTagOverride": svc.enable_tag_override, "ServiceProxy": a["Proxy"],
                "ServiceConnect": a["Connect"], "Namespace": svc.namespace, "AllocID": svc.alloc_id,
                "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index}

    def serf_health(self, node_id: str, node_name: str) -> dict[str, Any]:
        """Consul's node-level `serfHealth` check, which every node has: passing while the node
        is up (a Yurt node: its status is ready or initializing; a node Yurt does not run, such
        as a server-only agent's: its agent answers, so passing)."""
        node = self.store.node(node_id) if node_id else None
        up = node is None or node.status != "down"
        return {"Node": node_name or (node.name if node else ""), "CheckID": "serfHealth",
                "Name": "Serf Health Status", "Status": CHECK_PASSING if up else CHECK_CRITICAL,
                "Notes": "", "Output": "Agent alive and reachable" if up else "Agent not live or unreachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "", "Interval": "", "Timeout": "",
                "Definition": {}, "CreateIndex": node.create_index if node else 0,
                "ModifyIndex": node.modify_index if node else 0}

    def health_entry(self, svc: ServiceRegistration) -> dict[str, Any]:
        a = svc.agent_json()
        a["Service"] = svc.service
        for k in ("ContentHash",):
            a.pop(k)
        node = self.node_json(svc)
        return {"Node": node, "Service": a,
                "Checks": [*self._node_health(svc.key[0], svc.node_id, node["Node"]),
                           *(c.public() for c in self.checks_of(svc))]}

    def _node_health(self, node_key: str, node_id: str, name: str) -> list[dict[str, Any]]:
        """A node's own checks: serfHealth for a node an agent runs (an external node has none,
        as in Consul), then the node-level checks registered for it."""
        row = self._node_row_of(node_key)
        serf = [] if row is not None and row.external else [self.serf_health(node_id, name)]
        return [*serf, *(c.public() for c in (row.checks if row else []))]

    # -- external services (/v1/catalog/register, /v1/catalog/deregister) ---------------------
    def catalog_register(self, body: Any) -> int | None:
        """Consul's catalog registration: a node no agent runs (an external node) with its
        address, meta and node-level checks (no ServiceID), and optionally a service on it with
        its checks, filed under the node's name. `SkipNodeUpdate` keeps the node's stored fields."""
        c = canon(body, ("Node", "Address", "Datacenter", "ID", "TaggedAddresses", "NodeMeta", "Service",
                         "Check", "Checks", "SkipNodeUpdate"))
        node = c.get("Node")
        if not node or not isinstance(node, str):
            raise CatalogError('a catalog registration needs a "Node"')
        if c.get("Datacenter") and c["Datacenter"] != self.datacenter:
            raise CatalogError(f'datacenter "{c["Datacenter"]}" is not this one ("{self.datacenter}")')
        if any(n.name == node for n in self.store.nodes()):
            raise CatalogError(f'node "{node}" is a Yurt node, run by its agent: register its services through '
                               "that agent (/v1/agent/service/register), not the catalog")
        if not c.get("Address") and self._node_row_of(node) is None:
            raise CatalogError(f'node "{node}": a catalog registration needs the node\'s "Address"')
        svc = canon(c["Service"], _TOP) if c.get("Service") else None
        svc_id = (svc.get("ID") or svc.get("Service") or svc.get("Name")) if svc else None
        checks = ([c["Check"]] if c.get("Check") else []) + list(c.get("Checks") or [])
        node_checks, svc_checks = [], []
        for i, chk in enumerate(checks):
            cc = canon(chk, _CHECK)
            label = cc.get("Name") or cc.get("CheckID") or f"#{i + 1}"
            if not cc.get("ServiceID"):
                hc = _check({**cc, "CheckID": cc.get("CheckID") or cc.get("ID") or cc.get("Name")
                             or f"node:{node}:{i + 1}"}, "", "", 0, False)
                if hc.type == "alias":
                    raise CatalogError(f'check "{label}": an alias check belongs to a service; give its ServiceID')
                node_checks.append(hc.model_copy(update={"name": cc.get("Name") or hc.check_id}))
            elif svc is None or cc["ServiceID"] != svc_id:
                raise CatalogError(f'check "{label}": ServiceID "{cc["ServiceID"]}" is not the service of this '
                                   "registration; register the service with it")
            else:
                svc_checks.append({k: v for k, v in cc.items() if k != "ServiceID"})
        tagged = c.get("TaggedAddresses") or {}
        meta = c.get("NodeMeta") or {}
        if not isinstance(tagged, dict) or not isinstance(meta, dict):
            raise CatalogError(f'node "{node}": TaggedAddresses and NodeMeta are objects of strings')

        def change(cur: CatalogNode | None) -> CatalogNode:
            row = cur or CatalogNode(node=node, external=True)
            if cur is None or not c.get("SkipNodeUpdate"):
                row = row.model_copy(update={
                    "id": str(c.get("ID") or row.id), "address": str(c.get("Address") or row.address),
                    "tagged_addresses": {str(k): str(v) for k, v in tagged.items()} or row.tagged_addresses,
                    "meta": {str(k): str(v) for k, v in meta.items()} or row.meta, "external": True})
            kept = {x.check_id: x for x in row.checks}
            for hc in node_checks:
                old = kept.get(hc.check_id)
                if old is not None and "status" not in hc.model_fields_set:
                    hc = hc.model_copy(update={"status": old.status, "output": old.output})
                kept[hc.check_id] = hc
            return row.model_copy(update={"checks": list(kept.values())})
        index = self._put_node_row(node, change)
        for hc in self.node_level_checks(node):
            self._arm(node, hc)
        if svc is None:
            return index
        address = c.get("Address") or (self._node_row_of(node) or CatalogNode()).address
        services = self.build({**svc, "Node": node, "NodeAddress": address, "Checks": svc_checks}, "", node, address)
        self.store.upsert_services(services)
        stored = self.store.service(*services[0].key)
        return stored.modify_index if stored else None

    def catalog_deregister(self, body: Any) -> int | None:
        """{"Node", "ServiceID"} removes a service, {"Node", "CheckID"} a check, {"Node"} every
        service of the node."""
        c = canon(body, ("Node", "ServiceID", "CheckID", "Datacenter"))
        node = c.get("Node")
        if not node or not isinstance(node, str):
            raise CatalogError('a catalog deregistration needs a "Node"')
        for key in ("ServiceID", "CheckID"):
            if c.get(key) and not isinstance(c[key], str):
                raise CatalogError(f'{key} must be a string, not {type(c[key]).__name__}')
        if c.get("ServiceID"):
            return self.store.delete_services([(node, c["ServiceID"])])
        if c.get("CheckID"):
            return self.deregister_check(node, c["CheckID"])
        keys = [s.key for s in self.store.services() if s.key[0] == node]
        index = self.store.delete_services(keys) if keys else None
        if self._node_row_of(node) is not None:
            index = self._put_node_row(node, lambda cur: None)
        return index

    # -- nodes ------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Consul's /v1/catalog/nodes: every node that runs a service (Yurt's client nodes and
        the server agents the "consul" service names), by name."""
        out: dict[str, dict[str, Any]] = {}
        for n in self.store.nodes():
            out[n.name] = self._node_row(n.id, n.name, n.attributes.get("unique.network.ip-address", ""),
                                         dict(n.meta), n.create_index, n.modify_index)
        for _key, row in self._node_rows():
            if row.external and row.node not in out:
                out[row.node] = {**self._node_row(row.id, row.node, row.address, dict(row.meta), row.create_index,
                                                  row.modify_index),
                                 "TaggedAddresses": dict(row.tagged_addresses)}
        for svc in [*self.store.services(), *self._consul_service()]:
            if svc.node not in out:
                out[svc.node] = self._node_row(svc.node_id, svc.node, svc.node_address, {}, svc.create_index,
                                               svc.modify_index)
        return [out[k] for k in sorted(out)]

    def _node_row(self, node_id: str, name: str, address: str, meta: dict[str, str], create: int,
                  modify: int) -> dict[str, Any]:
        return {"ID": node_id, "Node": name, "Address": address, "Datacenter": self.datacenter,
                "TaggedAddresses": {"lan": address, "wan": address} if address else {}, "Meta": meta,
                "CreateIndex": create, "ModifyIndex": modify}

    def node_services(self, name: str) -> tuple[dict[str, Any], list[ServiceRegistration]] | None:
        """A node (by name or ID) and its services; None when no such node is known."""
        row = next((n for n in self.nodes() if name in (n["Node"], n["ID"]) and name), None)
        if row is None:
            return None
        services = [s for s in [*self.store.services(), *self._consul_service()]
                    if s.node == row["Node"] or (row["ID"] and s.node_id == row["ID"])]
        return row, services

    def node_checks(self, name: str) -> list[dict[str, Any]] | None:
        """Consul's /v1/health/node/<n>: the node's serfHealth and its services' checks."""
        found = self.node_services(name)
        if found is None:
            return None
        row, services = found
        key = row["ID"] if row["ID"] and self.store.node(row["ID"]) is not None else row["Node"]
        return [*self._node_health(key, row["ID"], row["Node"]),
                *(c.public() for s in services for c in self.checks_of(s))]

    # -- maintenance --------------------------------------------------------------------------
    def set_maintenance(self, node_key: str, service_id: str, enable: bool, reason: str) -> int | None:
        """Consul's service maintenance: a critical `_service_maintenance:<id>` check on the
        service while enabled (so it drops out of ?passing answers), gone once disabled."""
        svc = self.store.service(node_key, service_id)
        if svc is None:
            raise NotFound(f'Unknown service ID "{service_id}"')
        check_id = f"_service_maintenance:{service_id}"
        kept = [c for c in svc.checks if c.check_id != check_id]
        if enable:
            kept.append(HealthCheck(check_id=check_id, name="Service Maintenance Mode", status=CHECK_CRITICAL,
                                    notes=reason or "Maintenance mode is enabled for this service, but no reason "
                                                    "was provided. This is a default message.",
                                    type="maintenance", service_id=svc.id, service_name=svc.service,
                                    node=svc.node))
        elif len(kept) == len(svc.checks):
            return svc.modify_index   # not in maintenance: nothing to do
        self.store.upsert_services([svc.model_copy(update={"checks": kept})])
        stored = self.store.service(node_key, service_id)
        return stored.modify_index if stored else None

    def checks_for_service(self, name: str) -> list[dict[str, Any]]:
        return [c.public() for s in self.store.services(name) for c in self.checks_of(s)]

    def checks_in_state(self, state: str) -> list[dict[str, Any]]:
        if state != "any" and state not in CHECK_STATES:
            raise CatalogError(f'state must be any, passing, warning or critical, not "{state}"')
        services = self.store.services()
        nodes: dict[tuple[str, str, str], None] = {}
        for svc in services:
            nodes.setdefault((svc.key[0], svc.node_id, svc.node), None)
        for key, row in self._node_rows():
            nodes.setdefault((key, row.id, row.node), None)
        own = [c for key, node_id, name in nodes for c in self._node_health(key, node_id, name)]
        return [c for c in (*own, *(c.public() for s in services for c in self.checks_of(s)))
                if state == "any" or c["Status"] == state]


def _entry(svc: ServiceRegistration) -> dict[str, Any]:
    """A gateway instance's config entry (Proxy.Config["Gateway"], as the client registers it)."""
    entry = svc.proxy.config.get("Gateway") if svc.proxy is not None else None
    return entry if isinstance(entry, dict) else {}


def _aliases(common: dict[str, Any]) -> dict[str, Any]:
    return {"Namespace": common["namespace"], "Datacenter": common["datacenter"], "Node": common["node"],
            "NodeID": common["node_id"], "NodeAddress": common["node_address"], "AllocID": common["alloc_id"]}
