"""`yurt mesh explain SOURCE DESTINATION`: the server's half.

The server knows the catalog (instances, their sidecars, health), the intentions and the CA;
what happens inside an allocation's network namespace only its node can see. `plan` answers
the first part as rows and lists the probes each node has to run for the rest (the upstream
listener, the destination sidecar reachable from the source, the certificates served, the
mesh-only firewall, the app listening); the API sends them to the nodes (`client/mesh_probe.py`)
and puts the answers in the rows' places.

A row is ok, wrong (with its cause and the fix) or skipped (an earlier hop leaves nothing to
probe: no instance of the destination, say). The path works when no row is wrong and the
destination's instances could be probed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yurt.errors import InvalidInput, NotFound
from yurt.structs import Intention, Job, ServiceRegistration
from yurt.structs.catalog import CHECK_PASSING, KIND_CONNECT_PROXY

from .intentions import decide, ordered

if TYPE_CHECKING:
    from .server import Server

OK, WRONG, SKIPPED = "ok", "wrong", "skipped"
SIDECAR_SUFFIX = "-sidecar-proxy"

HOPS = ("source registered", "destination registered", "intention", "upstream listener",
        "destination sidecar reachable", "certificates", "mesh-only firewall", "app listening")


def row(hop: str, status: str, where: str, detail: str, fix: str = "") -> dict[str, str]:
    return {"Hop": hop, "Status": status, "Where": where, "Detail": detail, "Fix": fix}


@dataclass
class Probe:
    """One check a node runs: `spec` goes to the node (its "Kind" says which), the node's
    answer (Status, Detail, Fix) fills the row `hop`/`where`."""
    node_id: str
    node: str
    hop: str
    where: str
    spec: dict[str, Any]


@dataclass
class Plan:
    source: str
    destination: str
    rows: list[dict[str, str]] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)


def where(svc: ServiceRegistration) -> str:
    return f"alloc {svc.alloc_id[:8]} on {svc.node or svc.node_id[:8]}" if svc.alloc_id else \
        f"{svc.id} on {svc.node or svc.node_id[:8]}"


def _job_services(job: Job) -> set[str]:
    names = set()
    for tg in job.task_groups or []:
        for s in tg.services or []:
            names.add(s.name)
        for t in tg.tasks or []:
            for s in t.services or []:
                names.add(s.name)
    return names


class MeshExplain:
    def __init__(self, server: Server) -> None:
        self.server = server

    # -- names ------------------------------------------------------------------------------
    def _jobs_of(self, name: str) -> list[Job]:
        return [j for j in self.server.reads.jobs() if name in _job_services(j)]

    def _check_names(self, source: str, destination: str) -> None:
        for what, name in (("SOURCE", source), ("DESTINATION", destination)):
            if not name or not name.strip():
                raise InvalidInput(f"{what} is required: a service name, as in the catalog")
        catalog = {s.service for s in self.server.reads.services() if s.kind != KIND_CONNECT_PROXY}
        in_jobs: set[str] = set()
        for j in self.server.reads.jobs():
            in_jobs |= _job_services(j)
        known = catalog | in_jobs
        unknown = [(what, n) for what, n in (("source", source), ("destination", destination)) if n not in known]
        if not unknown:
            return
        parts = []
        for what, n in unknown:
            close = difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.5)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            parts.append(f'the {what} service "{n}" is not in the catalog nor in any job{hint}')
        listed = f"; services known: {', '.join(sorted(known))}" if 0 < len(known) <= 10 else ""
        raise NotFound("; ".join(parts) + (listed if len(known) else "; the catalog has no service yet"))

    # -- the plan ---------------------------------------------------------------------------
    def plan(self, source: str, destination: str) -> Plan:
        self._check_names(source, destination)
        p = Plan(source, destination)
        catalog = self.server.catalog
        src_apps = [s for s in catalog.instances(source) if s.kind != KIND_CONNECT_PROXY]
        src_cars = [s for s in catalog.instances(source, connect=True) if s.kind == KIND_CONNECT_PROXY]
        dst_apps = [s for s in catalog.instances(destination) if s.kind != KIND_CONNECT_PROXY]
        dst_cars = [s for s in catalog.instances(destination, connect=True) if s.kind == KIND_CONNECT_PROXY]
        p.rows.extend(self._registered("source registered", source, src_apps, src_cars))
        p.rows.extend(self._registered("destination registered", destination, dst_apps, dst_cars))
        p.rows.append(self._intention(source, destination))
        roots = self.server.ca.roots()
        active = next((r for r in roots.get("Roots") or [] if r.get("Active")), None)
        for car in src_cars:
            self._source_probes(p, car, dst_cars, roots, active)
        if not src_cars:
            for hop in ("upstream listener", "destination sidecar reachable", "certificates"):
                p.rows.append(row(hop, SKIPPED, source, f"no sidecar of {source} to probe from"))
        for car in dst_cars:
            p.probes.append(Probe(car.node_id, car.node, "mesh-only firewall", where(car),
                                  {"Kind": "firewall", "AllocID": car.alloc_id}))
            proxy = car.proxy
            p.probes.append(Probe(car.node_id, car.node, "app listening", where(car), {
                "Kind": "app", "AllocID": car.alloc_id, "Service": destination,
                "Address": (proxy.local_service_address if proxy else "") or "127.0.0.1",
                "Port": proxy.local_service_port if proxy else 0}))
        if not dst_cars:
            for hop in ("mesh-only firewall", "app listening"):
                p.rows.append(row(hop, SKIPPED, destination, f"no instance of {destination} to probe"))
        return p

    def _registered(self, hop: str, name: str, apps: list[ServiceRegistration],
                    cars: list[ServiceRegistration]) -> list[dict[str, str]]:
        if not apps:
            return [row(hop, WRONG, name, f"no instance of {name} is registered in the catalog",
                        self._start_fix(name))]
        out = []
        for app in apps:
            mine = [c for c in cars if c.proxy is not None and c.proxy.destination_service_id == app.id]
            if not mine:
                out.append(row(hop, WRONG, where(app), f"{name} has no sidecar proxy registered for this "
                               "instance: it is not in the mesh",
                               "give the service a sidecar: connect { sidecar_service {} } in its job"))
                continue
            bad = [(svc, c) for svc in [app, *mine] for c in self.server.catalog.checks_of(svc)
                   if c.status != CHECK_PASSING and c.type != "alias"]
            if bad:
                svc, c = bad[0]
                output = c.output.strip()[:160]
                out.append(row(hop, WRONG, where(app),
                               f'{svc.service}: check "{c.name}" is {c.status}' + (f": {output}" if output else ""),
                               f"yurt alloc status {app.alloc_id[:8]}" if app.alloc_id else
                               f"GET /v1/health/checks/{svc.service}"))
                continue
            out.append(row(hop, OK, where(app), f"{name} and its sidecar (at {mine[0].address}:{mine[0].port}) "
                           "are registered, checks passing"))
        return out

    def _start_fix(self, name: str) -> str:
        jobs = self._jobs_of(name)
        if not jobs:
            return f"register {name} (run the job that defines it)"
        j = jobs[0]
        if j.stop:
            return f'job "{j.id}" is stopped: run it again (yurt job run <its file>)'
        return f'job "{j.id}" runs no healthy allocation of it: yurt job status {j.id}'

    def _intention(self, source: str, destination: str) -> dict[str, str]:
        intentions = self.server.intentions
        matched: list[Intention] = intentions.match("destination", destination)
        allowed, reason = decide(matched, source, destination, intentions.default_allow)
        ix = next((i for i in ordered(matched) if i.source_name in ("*", source)), None)
        pair = f"{source} => {destination}"
        if ix is not None and ix.permissions:
            return _l7_row(pair, ix, intentions.default_allow)
        if ix is not None:
            detail = f"{reason}, precedence {ix.precedence}"
            if allowed:
                return row("intention", OK, pair, detail)
            if ix.source_name == source and ix.destination_name == destination:
                fix = f"yurt intention create -replace -allow {source} {destination}"
            else:
                fix = (f"yurt intention create -allow {source} {destination} (precedence 9 beats "
                       f"{ix.source_name} => {ix.destination_name}, precedence {ix.precedence})")
            return row("intention", WRONG, pair, f"denied: {detail}", fix)
        if allowed:
            return row("intention", OK, pair, reason)
        return row("intention", WRONG, pair, f"denied: {reason}",
                   f"yurt intention create -allow {source} {destination}")

    def _source_probes(self, p: Plan, car: ServiceRegistration, dst_cars: list[ServiceRegistration],
                       roots: dict[str, Any], active: dict[str, Any] | None) -> None:
        ups = [u for u in (car.proxy.upstreams if car.proxy else []) if u.destination_name == p.destination]
        if not ups and car.proxy is not None and car.proxy.mode == "transparent":
            # a transparent proxy: the app dials <destination>.virtual.yurt, redirected to the outbound listener
            port = int(car.proxy.transparent_proxy.get("OutboundListenerPort") or 15001)
            p.probes.append(Probe(car.node_id, car.node, "upstream listener", where(car), {
                "Kind": "upstream", "AllocID": car.alloc_id, "Destination": p.destination,
                "Address": "127.0.0.1", "Port": port}))
        elif not ups:
            p.rows.append(row("upstream listener", WRONG, where(car),
                              f"the sidecar of {p.source} has no upstream for {p.destination}",
                              f'add upstreams {{ destination_name = "{p.destination}"  local_bind_port = <port> }} '
                              f"to the proxy block of {p.source}'s sidecar_service"))
        for u in ups:
            p.probes.append(Probe(car.node_id, car.node, "upstream listener", where(car), {
                "Kind": "upstream", "AllocID": car.alloc_id, "Destination": p.destination,
                "Address": u.local_bind_address or "127.0.0.1", "Port": u.local_bind_port}))
        if not dst_cars:
            for hop in ("destination sidecar reachable", "certificates"):
                p.rows.append(row(hop, SKIPPED, where(car), f"no sidecar of {p.destination} to reach"))
            return
        bundle = ""
        if active is not None:
            bundle = "\n".join([active["RootCert"].strip(),
                                *[i.strip() for i in active.get("IntermediateCerts") or [] if i]]) + "\n"
        for d in dst_cars:
            target = f"{where(car)} -> {d.address}:{d.port}"
            p.probes.append(Probe(car.node_id, car.node, "destination sidecar reachable", target, {
                "Kind": "reach", "AllocID": car.alloc_id, "Address": d.address, "Port": d.port,
                "Target": where(d)}))
            p.probes.append(Probe(car.node_id, car.node, "certificates", target, {
                "Kind": "tls", "AllocID": car.alloc_id, "Address": d.address, "Port": d.port,
                "Source": p.source, "Destination": p.destination, "Target": where(d),
                "TrustDomain": roots.get("TrustDomain", ""), "ActiveRootID": roots.get("ActiveRootID", ""),
                "RootsPEM": bundle}))


def finish(plan: Plan, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows in hop order, each probe's answer in its place; OK only if nothing is wrong and
    the destination could be probed."""
    rows = list(plan.rows)
    for probe, answer in zip(plan.probes, answers, strict=True):
        rows.append(row(probe.hop, str(answer.get("Status") or WRONG), probe.where,
                        str(answer.get("Detail") or ""), str(answer.get("Fix") or "")))
    rows.sort(key=lambda r: HOPS.index(r["Hop"]) if r["Hop"] in HOPS else len(HOPS))
    ok = bool(rows) and all(r["Status"] != WRONG for r in rows) and any(
        r["Hop"] == "app listening" and r["Status"] == OK for r in rows)
    return {"Source": plan.source, "Destination": plan.destination, "OK": ok, "Rows": rows}


def l7_summary(permissions: list[dict[str, Any]], default_allow: bool) -> str:
    """L7 permissions in one line, in evaluation order: "GET /api/* allow; POST deny; else deny"."""
    parts = []
    for p in permissions:
        http = p.get("HTTP") or {}
        what = []
        if http.get("Methods"):
            what.append(",".join(http["Methods"]))
        if http.get("PathExact"):
            what.append(http["PathExact"])
        elif http.get("PathPrefix"):
            what.append(http["PathPrefix"] + "*")
        elif http.get("PathRegex"):
            what.append(f"~{http['PathRegex']}")
        for h in http.get("Header") or []:
            what.append(f"header {h.get('Name')}")
        parts.append(f"{' '.join(what) or 'any request'} {p.get('Action')}")
    parts.append(f"else {'allow' if default_allow else 'deny'} (default policy)")
    return "; ".join(parts)


def _l7_row(pair: str, ix: Intention, default_allow: bool) -> dict[str, str]:
    """The deciding intention has L7 permissions: the connection is let through and each HTTP
    request is decided by them (Consul's /v1/agent/connect/authorize, an L4 check, answers
    false for it, naming the L7 intention)."""
    summary = l7_summary(ix.permissions or [], default_allow)
    where = f"{ix.source_name} => {ix.destination_name}, precedence {ix.precedence}"
    if default_allow or any(p.get("Action") == "allow" for p in ix.permissions or []):
        return row("intention", OK, pair, f"allowed for some requests (L7 permissions of {where}): {summary}")
    return row("intention", WRONG, pair, f"denied for every request (L7 permissions of {where}): {summary}",
               f"add an allow permission for {pair.split(' => ')[0]} to the service-intentions entry of "
               f"{ix.destination_name} (yurt config write)")
