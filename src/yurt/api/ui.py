"""The web UI at `/ui`: server-rendered pages over the same read layer the JSON API uses.

Pages: jobs, one job, one allocation (with its tasks' stdout/stderr followed live), nodes and the
service graph (an SVG drawn here: who is an upstream of whom, each edge coloured by the intentions'
verdict). Every asset comes from `api/ui_assets/` (Jinja2 templates, one stylesheet, one small
script): nothing is fetched from anywhere else. Every value is escaped by Jinja2's autoescape.

Live updates are blocking queries: a page's script asks the same URL with `?fragment=1&index=N`,
which waits (`Reads.block`) until the tables the page shows change past N and answers the page's
changing part, with its index in `X-Yurt-Index`. The logs are the logs API followed
(`/v1/client/fs/logs/<alloc>?follow=true&plain=true`), read as a stream.

ACLs: the pages check the token themselves (their routes are "ui" in `api/authz.py`): from
`?token=` (kept in the `yurt-ui-token` cookie from then on), the cookie set by the login page, or
the API's own headers. A page needs the read right on what it shows: list-jobs/read-job on the
namespace, node:read, service:read and intention:read.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from yurt.errors import PermissionDenied, YurtError
from yurt.server.acl import Identity
from yurt.server.reads import Reads, Tables
from yurt.structs import Allocation, Job, Node, ServiceRegistration

from . import authz
from .common import wait_seconds
from .forward import consistent, to_server

router = APIRouter(include_in_schema=False)

ASSETS = Path(__file__).resolve().parent / "ui_assets"
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
TOKEN_COOKIE = "yurt-ui-token"
LIVE_WAIT = 60.0   # a page's blocking query waits at most this long before it is asked again

# Everything a page uses comes from this agent, and nothing else may run in it.
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                      "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"}

ENV = Environment(loader=FileSystemLoader(str(ASSETS / "templates")),
                  autoescape=select_autoescape(default=True, default_for_string=True))


def _when(ns: int | str | None) -> str:
    """A Nomad time (unix nanoseconds or RFC 3339) as UTC, to the second; "" for none."""
    if not ns:
        return ""
    if isinstance(ns, str):
        return "" if ns.startswith("0001-") else ns.replace("T", " ")[:19] + " UTC"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


ENV.filters["when"] = _when
ENV.filters["short"] = lambda s: (s or "")[:8]
ENV.filters["q"] = lambda s: quote(str(s), safe="")


# -- who is asking ----------------------------------------------------------------------------
def _token(request: Request) -> str:
    return (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
            or authz.request_token(request)).strip()


def _identity(request: Request) -> Identity | None:
    """The caller's identity (None with ACLs off), from ?token=, the UI's cookie or the headers.
    An unknown or expired token raises PermissionDenied."""
    if not authz.acl_enabled(request):
        return None
    if "yurt.identity" not in request.scope:
        request.scope["yurt.identity"] = request.app.state.agent.server.acl.resolver.resolve(_token(request))
    ident: Identity = request.scope["yurt.identity"]
    return ident


def _require(request: Request, req: authz.Requirement, name: str = "*") -> None:
    ident = _identity(request)
    if ident is not None and not authz.check(ident, req, name):
        raise PermissionDenied(f"Permission denied: this page needs {req.describe(name)}")


def _ns(request: Request) -> str:
    return request.query_params.get("namespace") or "default"


# -- answers ----------------------------------------------------------------------------------
def _render(name: str, **ctx: Any) -> str:
    return ENV.get_template(name).render(**ctx)


def _page(request: Request, title: str, nav: str, body: str, *, status: int = 200, index: int = 0,
          live: bool = True, after: str = "", keep_token: bool = True) -> HTMLResponse:
    text = _render("base.html", title=title, nav=nav, body=Markup(body), after=Markup(after), index=index,
                   live=live, acl=authz.acl_enabled(request), logged_in=bool(_token(request)))
    resp = HTMLResponse(text, status_code=status, headers=HEADERS)
    token = request.query_params.get("token", "").strip()
    if token and keep_token:   # ?token= once: the cookie carries it from then on
        _set_cookie(resp, token, request)
    return resp


def _set_cookie(resp: Response, token: str, request: Request) -> None:
    # Readable by the page's own script, which sends it as X-Nomad-Token to the logs API (as
    # Nomad's UI keeps its token in local storage); never sent to another site.
    resp.set_cookie(TOKEN_COOKIE, token, path="/", samesite="strict", secure=request.url.scheme == "https")


def _message(request: Request, status: int, title: str, text: str, *, login: bool = False) -> HTMLResponse:
    kept = urlencode([(k, v) for k, v in request.query_params.multi_items()
                      if k not in ("token", "fragment", "index", "wait")])
    body = _render("message.html", title=title, text=text, login=login,
                   next=request.url.path + ("?" + kept if kept else ""), acl=authz.acl_enabled(request))
    return _page(request, title, "", body, status=status, live=False, keep_token=status != 403)


def _not_found(request: Request, what: str) -> HTMLResponse:
    return _message(request, 404, "Not found", what)


def _fragment(body: str, index: int) -> HTMLResponse:
    return HTMLResponse(body, headers={**HEADERS, "X-Yurt-Index": str(index)})


async def _serve(request: Request, title: str, nav: str, tables: Tables,
                 build: Callable[[Reads], str | HTMLResponse], *, after: Callable[[Reads], str] | None = None,
                 req: authz.Requirement | None = None, name: str = "*") -> Response:
    """One page: forwarded to the server by a client-only agent; checked against the caller's
    rights; with ?fragment=1 its changing part once `tables` changed past ?index= (a blocking
    query), else the whole page."""
    agent = request.app.state.agent
    if agent.server is None:   # a client-only agent: its server renders the page
        token = _token(request)
        resp = await to_server(request, params={"token": token} if token else None)
        if request.query_params.get("token", "").strip() and resp.status_code == 200:
            _set_cookie(resp, token, request)
        return resp
    try:
        _identity(request)   # resolved once, from the UI's token: authz.may and authz.check use it
        if req is not None:
            _require(request, req, name)
    except PermissionDenied as e:
        return _message(request, 403, "Permission denied", e.message, login=True)
    server = agent.server
    if server.ha and not server.is_leader():
        await consistent(request, server)
    reads: Reads = server.reads
    fragment = request.query_params.get("fragment") == "1"
    index = 1
    if fragment:
        raw = request.query_params.get("index", "0")
        since = int(raw) if raw.isdigit() else 0
        index = await reads.block(tables, since, min(wait_seconds(request), LIVE_WAIT) if since else 0.0)
    else:
        index = max(reads.current(tables), 1)
    try:
        body = build(reads)
    except PermissionDenied as e:
        return _message(request, 403, "Permission denied", e.message, login=True)
    except YurtError as e:
        return _message(request, e.status, "Error", e.message)
    if isinstance(body, HTMLResponse):
        return body
    if fragment:
        return _fragment(body, index)
    return _page(request, title, nav, body, index=index, after=after(reads) if after else "")


# -- pages ------------------------------------------------------------------------------------
@router.get("/ui")
@router.get("/ui/")
async def home(request: Request) -> Response:
    query = {"token": request.query_params["token"]} if request.query_params.get("token") else {}
    return RedirectResponse("/ui/jobs" + ("?" + urlencode(query) if query else ""), status_code=307)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return HTMLResponse("not found", status_code=404)
    return FileResponse(ASSETS / "static" / name, media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})


@router.get("/ui/login")
async def login(request: Request) -> Response:
    """The login form (a GET form: the API refuses browser form bodies); with ?token= it checks
    the token, keeps it in the cookie and goes on to ?next= (a /ui page)."""
    nxt = request.query_params.get("next", "/ui/jobs")
    if not nxt.startswith("/ui/") or nxt.startswith("//"):
        nxt = "/ui/jobs"
    token = request.query_params.get("token", "").strip()
    if token and authz.acl_enabled(request) and request.app.state.agent.server is not None:
        try:
            request.app.state.agent.server.acl.resolver.resolve(token)
        except PermissionDenied as e:
            body = _render("login.html", next=nxt, error=e.message, acl=True)
            return _page(request, "Log in", "", body, status=403, live=False, keep_token=False)
    if token:
        resp = RedirectResponse(nxt, status_code=303)
        _set_cookie(resp, token, request)
        return resp
    body = _render("login.html", next=nxt, error="", acl=authz.acl_enabled(request))
    return _page(request, "Log in", "", body, live=False)


@router.get("/ui/logout")
async def logout() -> Response:
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(TOKEN_COOKIE, path="/")
    return resp


@router.get("/ui/jobs")
async def jobs_page(request: Request) -> Response:
    ns = request.query_params.get("namespace") or "*"

    def build(reads: Reads) -> str:
        jobs = [j for j in reads.jobs(ns) if authz.may(request, j.namespace or "default", "list-jobs")]
        rows = [{"job": j, "summary": reads.job_summary(j.namespace or "default", j.id)} for j in jobs]
        return _render("jobs.html", rows=rows)

    return await _serve(request, "Jobs", "jobs", ("jobs", "allocs"), build,
                        req=authz.Requirement("namespace", "list-jobs"), name=ns)   # "*": in any namespace


@router.get("/ui/job/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    ns = _ns(request)

    def build(reads: Reads) -> str | HTMLResponse:
        job = reads.job(ns, job_id)
        if job is None:
            return _not_found(request, f'There is no job "{job_id}" in namespace "{ns}".')
        allocs = sorted(reads.job_allocs(job), key=lambda a: a.create_index, reverse=True)
        evals = sorted(reads.job_evals(job), key=lambda e: e.create_index, reverse=True)
        versions = sorted(reads.job_versions(ns, job.id), key=lambda v: v.version, reverse=True)
        return _render("job.html", job=job, summary=reads.job_summary(ns, job.id), allocs=allocs, evals=evals,
                       versions=versions, deployments=reads.job_deployments(job), ns=ns)

    return await _serve(request, f"Job {job_id}", "jobs", ("jobs", "allocs", "evals", "deployment"), build,
                        req=authz.READ_JOB, name=ns)


@router.get("/ui/allocation/{alloc_id}")
async def alloc_page(request: Request, alloc_id: str) -> Response:
    def find(reads: Reads) -> Allocation | None:
        alloc = reads.alloc(alloc_id)
        if alloc is None and len(alloc_id) >= 4:   # a short ID, as the CLI prints them
            found = reads.allocs(prefix=alloc_id)
            alloc = found[0] if len(found) == 1 else None
        return alloc

    def build(reads: Reads) -> str | HTMLResponse:
        alloc = find(reads)
        if alloc is None:
            return _not_found(request, f'There is no allocation "{alloc_id}".')
        _require(request, authz.READ_JOB, alloc.namespace or "default")
        node = reads.node(alloc.node_id)
        return _render("alloc.html", a=alloc, node=node, tasks=_tasks(alloc))

    def after(reads: Reads) -> str:
        alloc = find(reads)
        if alloc is None:
            return ""
        names = [t["name"] for t in _tasks(alloc)]
        main = next((n for n in names if not n.startswith("connect-proxy-")), names[0] if names else "")
        return _render("logs.html", a=alloc, tasks=names, main=main)

    return await _serve(request, f"Allocation {alloc_id[:8]}", "jobs", "allocs", build, after=after,
                        req=authz.READ_JOB, name=_ns(request))


def _tasks(alloc: Allocation) -> list[dict[str, Any]]:
    tg = alloc.job.group(alloc.task_group) if alloc.job else None
    names = [t.name for t in (tg.tasks or [])] if tg else []
    names += [n for n in alloc.task_states if n not in names]
    out = []
    for n in names:
        state = alloc.task_states.get(n)
        task = next((t for t in (tg.tasks or []) if t.name == n), None) if tg else None
        out.append({"name": n, "state": state, "driver": task.driver if task else "",
                    "events": list(reversed(state.events)) if state else []})
    return out


@router.get("/ui/nodes")
async def nodes_page(request: Request) -> Response:
    def build(reads: Reads) -> str:
        rows = []
        for n in reads.nodes():
            allocs = [a for a in reads.node_allocs(n.id) if a.client_status in ("pending", "running")]
            rows.append({"node": n, "allocs": sorted(allocs, key=lambda a: a.name),
                         "address": _node_address(n), "used": _used(allocs)})
        return _render("nodes.html", rows=rows)

    return await _serve(request, "Nodes", "nodes", ("nodes", "allocs"), build, req=authz.Requirement("node", "read"))


def _node_address(n: Node) -> str:
    for net in n.node_resources.node_networks:
        for a in net.addresses:
            if a.alias == "default" and a.address:
                return a.address
    return n.attributes.get("unique.network.ip-address", "")


def _used(allocs: list[Allocation]) -> dict[str, int]:
    cpu = sum(t.cpu.cpu_shares for a in allocs for t in a.allocated_resources.tasks.values())
    mem = sum(t.memory.memory_mb for a in allocs for t in a.allocated_resources.tasks.values())
    return {"cpu": cpu, "memory": mem}


@router.get("/ui/services")
async def services_page(request: Request) -> Response:
    def build(reads: Reads) -> str:
        _require(request, authz.Requirement("intention", "read"))
        server = request.app.state.agent.server
        graph = service_graph(reads.services(), server.catalog.status, server.intentions.check)
        return _render("services.html", graph=graph, svg=Markup(draw_graph(graph)),
                       intentions=server.intentions.list())

    return await _serve(request, "Services", "services", ("services", "intentions"), build,
                        req=authz.Requirement("service", "read"))


@router.get("/ui/{rest:path}")
async def unknown(request: Request, rest: str) -> Response:
    return _not_found(request, f"There is no page at {request.url.path}.")


# -- the service graph ------------------------------------------------------------------------
def service_graph(instances: list[ServiceRegistration], status: Callable[[ServiceRegistration], str],
                  check: Callable[[str, str], tuple[bool, str]]) -> dict[str, Any]:
    """Services (not their sidecars) with their instances' health, and an edge per upstream a
    sidecar declares (source: the service the sidecar fronts), with the intentions' verdict."""
    services: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for s in instances:
        if s.kind == "connect-proxy" and s.proxy is not None:
            source = s.proxy.destination_service_name
            for up in s.proxy.upstreams:
                if up.destination_name and (source, up.destination_name) not in edges:
                    allowed, reason = check(source, up.destination_name)
                    edges[(source, up.destination_name)] = {"source": source, "destination": up.destination_name,
                                                            "allowed": allowed, "reason": reason,
                                                            "port": up.local_bind_port}
            continue
        svc = services.setdefault(s.service, {"name": s.service, "instances": [], "passing": 0})
        st = status(s)
        svc["instances"].append({"id": s.id, "node": s.node, "address": s.address, "port": s.port, "status": st,
                                 "alloc": s.alloc_id})
        svc["passing"] += st == "passing"
    for e in edges.values():   # an upstream nobody registered yet is still drawn
        for n in (e["source"], e["destination"]):
            services.setdefault(n, {"name": n, "instances": [], "passing": 0})
    return {"services": [services[k] for k in sorted(services)], "edges": sorted(edges.values(),
            key=lambda e: (e["source"], e["destination"]))}


BOX_W, BOX_H, COL_GAP, ROW_GAP, PAD = 210, 56, 120, 28, 20


def draw_graph(graph: dict[str, Any]) -> str:
    """The graph as SVG: callers left of what they call (columns by longest path from a caller
    nobody calls), edges as arrows coloured by verdict. Every text is escaped."""
    names = [s["name"] for s in graph["services"]]
    if not names:
        return '<p class="empty">No services are registered.</p>'
    outgoing: dict[str, list[str]] = {n: [] for n in names}
    for e in graph["edges"]:
        outgoing[e["source"]].append(e["destination"])
    depth = {n: 0 for n in names}
    for _ in names:   # longest path, bounded (a cycle stops growing after len(names) rounds)
        for src, dsts in outgoing.items():
            for d in dsts:
                if d != src and depth[d] < depth[src] + 1 <= len(names):
                    depth[d] = depth[src] + 1
    cols: dict[int, list[str]] = {}
    for n in names:
        cols.setdefault(depth[n], []).append(n)
    pos = {}
    for c, members in cols.items():
        for r, n in enumerate(members):
            pos[n] = (PAD + c * (BOX_W + COL_GAP), PAD + r * (BOX_H + ROW_GAP))
    width = PAD * 2 + (max(cols) + 1) * (BOX_W + COL_GAP) - COL_GAP
    height = PAD * 2 + max(len(m) for m in cols.values()) * (BOX_H + ROW_GAP) - ROW_GAP
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="service-graph" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="service graph">',
           '<defs>'
           '<marker id="arrow-allowed" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#2e9e52"/></marker>'
           '<marker id="arrow-denied" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#d23c3c"/></marker></defs>']
    for e in graph["edges"]:
        (x1, y1), (x2, y2) = pos[e["source"]], pos[e["destination"]]
        verdict = "allowed" if e["allowed"] else "denied"
        colour = "#2e9e52" if e["allowed"] else "#d23c3c"
        sx, sy = x1 + BOX_W, y1 + BOX_H / 2
        dx, dy = (x2, y2 + BOX_H / 2) if x2 > x1 else (x2 + BOX_W / 2, y2 + (BOX_H if y2 < y1 else 0))
        out.append(f'<g class="edge {verdict}" data-source="{esc(e["source"])}" '
                   f'data-destination="{esc(e["destination"])}" data-verdict="{verdict}">'
                   f'<title>{esc(e["source"])} → {esc(e["destination"])}: {verdict} ({esc(e["reason"])})</title>'
                   f'<line x1="{sx}" y1="{sy}" x2="{dx}" y2="{dy}" stroke="{colour}" stroke-width="3" '
                   f'marker-end="url(#arrow-{verdict})"/>'
                   f'<text x="{(sx + dx) / 2}" y="{(sy + dy) / 2 - 6}" text-anchor="middle" fill="{colour}" '
                   f'class="verdict">{verdict}</text></g>')
    for s in graph["services"]:
        x, y = pos[s["name"]]
        total, passing = len(s["instances"]), s["passing"]
        health = "passing" if total and passing == total else ("critical" if total else "none")
        fill = {"passing": "#e7f6ec", "critical": "#fbe9e9", "none": "#f1f2f4"}[health]
        border = {"passing": "#2e9e52", "critical": "#d23c3c", "none": "#9aa1ad"}[health]
        out.append(f'<g class="service {health}" data-service="{esc(s["name"])}">'
                   f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" '
                   f'stroke="{border}" stroke-width="2"/>'
                   f'<text x="{x + 12}" y="{y + 23}" class="name">{esc(s["name"])}</text>'
                   f'<text x="{x + 12}" y="{y + 43}" class="health">{passing}/{total} instances passing</text></g>')
    out.append("</svg>")
    return "".join(out)


def job_groups(job: Job) -> list[str]:
    return [g.name for g in (job.task_groups or [])]


ENV.globals["job_groups"] = job_groups
