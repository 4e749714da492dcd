"""The template hook: renders a task's ``template`` blocks before it starts, and again on change.

Before the first start, every template is rendered (with the engine in ``yurt.gotemplate``)
from an `AgentSource`: the node agent's API (the catalog, the KV store, Nomad variables with the
task's workload identity) and the task's environment. While something a template reads does not
exist yet (a KV key, a variable), the task waits and its events say what is missing
("Missing: kv.block(app/x)", as Nomad); a template that cannot render (``error_on_missing_key``,
a function error, a ``source`` file that cannot be read) fails the task with a "Template failed"
event. Files are written under the task directory (never outside it) with ``perms`` and, when
the agent runs as root, ``uid``/``gid``; ``env = true`` templates are parsed as KEY=value lines
into the task's environment.

Once the task runs, one watcher thread per task (an asyncio loop) holds blocking queries on
what the templates read (one for all KV keys, one per service, per variable...) and renders
again when one wakes with a new index (polling every `POLL` seconds if that loop fails),
debounced by ``wait { min, max }`` (the client's default: min 5s, max 4m, as Nomad's), and tells
the task per ``change_mode``: ``restart`` (a "Restart Signaled" event, not counted as a
failure), ``signal`` (``change_signal``), ``script`` (``change_script``, run as a script check
is: on the node, in the task directory, with the task's environment; validation only lets
raw_exec tasks without ``user`` have one) or ``noop``; ``splay`` delays a restart or signal by a
random part of it. ``once = true`` templates are not watched. A restart re-renders only with the
restart block's ``render_templates = true``; the files of the last render stay otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import posixpath
import random
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from yurt.api.client import YurtClient
from yurt.errors import NotFound, Unavailable, Unreachable, YurtError
from yurt.gotemplate import (CARoot, CatalogNode, CatalogNodeInfo, CatalogNodeService, CatalogSnippet, Dependency,
                             HealthCheck, HealthService, KeyPair, LeafCert, NomadService,
                             NomadServicesSnippet, NomadVariable, NomadVarMeta, Rendered, ServiceTags, TemplateError,
                             render)
from yurt.structs import Task, Template
from yurt.structs.duration import SECOND

from . import task_events as ev
from .task_hooks import TaskHook, TaskHookContext, TaskHookError, TaskHookFactory
from .template_settings import TemplateSettings

log = logging.getLogger("yurt.client.template")

POLL = 1.0                    # seconds between the watcher's renders
DEFAULT_SPLAY = 5.0           # Nomad's default splay
SCRIPT_TIMEOUT = 5.0          # change_script's default timeout
RESTART_REASON = "Template with change_mode restart re-rendered"
SIGNAL_REASON = "Template re-rendered"


def _missing_name(dep: Dependency) -> str:
    """How Nomad names what a template waits for: kv.block(app/x), nomad.var.block(p@ns.global)..."""
    kind, arg = dep
    if kind == "kv":
        return f"kv.block({arg})"
    if kind == "kv_list":
        return f"kv.list({arg})"
    if kind == "nomad_var":
        return f"nomad.var.block({arg})"
    return f"{kind}({arg})"


class _AgentDown(TaskHookError):
    """The agent could not be asked (unreachable, or no leader): retried before it fails the task."""


class AgentSource:
    """A gotemplate `Source` over the node agent's API (see ``yurt.gotemplate.source.Source``).

    ``api`` carries the node's SecretID (KV and the catalog); ``vars_api``, when given, the
    task's workload identity (Nomad variables). ``env`` is the task's environment.
    """

    def __init__(self, api: YurtClient, env: dict[str, str], vars_api: YurtClient | None = None,
                 namespace: str = "default", node_name: str = "") -> None:
        self.api = api
        self.node_name = node_name
        self.vars_api = vars_api or api
        self.environ = env
        self.namespace = namespace

    def env(self, name: str) -> str | None:
        return self.environ.get(name)

    def _kv(self, path: str, **params: Any) -> list[dict]:
        try:
            body, _ = self.api.get(f"/v1/kv/{path}", **params)
        except NotFound:
            return []
        return list(body or [])

    def key(self, path: str) -> str | None:
        rows = self._kv(path.lstrip("/"))
        if not rows:
            return None
        return _decode(rows[0].get("Value"))

    def ls(self, prefix: str) -> Sequence[KeyPair]:
        out = []
        for row in self._kv(prefix.lstrip("/"), recurse="true"):
            k = row.get("Key", "")
            out.append(KeyPair(k, k, _decode(row.get("Value")), row.get("CreateIndex", 0),
                               row.get("ModifyIndex", 0), row.get("LockIndex", 0), row.get("Flags", 0),
                               row.get("Session", "") or ""))
        return out

    def services(self, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        return self._health("service", name, tag, healthy_only)

    def connect_services(self, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        return self._health("connect", name, tag, healthy_only)

    def _health(self, kind: str, name: str, tag: str, healthy_only: bool) -> Sequence[HealthService]:
        body, _ = self.api.get(f"/v1/health/{kind}/{quote(name, safe='')}", passing="1" if healthy_only else None,
                               tag=tag or None)
        out = []
        for entry in body or []:
            svc, node = entry.get("Service") or {}, entry.get("Node") or {}
            checks = [HealthCheck(Node=c.get("Node", ""), CheckID=c.get("CheckID", ""), Name=c.get("Name", ""),
                                  Status=c.get("Status", "passing"), Notes=c.get("Notes", ""),
                                  Output=c.get("Output", ""), ServiceID=c.get("ServiceID", ""),
                                  ServiceName=c.get("ServiceName", ""), ServiceTags=c.get("ServiceTags") or [],
                                  Type=c.get("Type", "")) for c in entry.get("Checks") or []]
            status = "passing"
            for c in checks:
                if c.Status == "critical" or (c.Status == "warning" and status == "passing"):
                    status = c.Status
            if tag and tag not in (svc.get("Tags") or []):
                continue
            if healthy_only and status != "passing":
                continue
            out.append(HealthService(
                Name=svc.get("Service", name), Address=svc.get("Address") or node.get("Address", ""),
                Port=int(svc.get("Port") or 0), ID=svc.get("ID", ""), Node=node.get("Node", ""),
                NodeID=node.get("ID", ""), NodeAddress=node.get("Address", ""),
                NodeDatacenter=node.get("Datacenter", ""), NodeTaggedAddresses=node.get("TaggedAddresses") or {},
                NodeMeta=node.get("Meta") or {}, ServiceMeta=svc.get("Meta") or {},
                ServiceTaggedAddresses=svc.get("TaggedAddresses") or {},
                Tags=ServiceTags(svc.get("Tags") or []), Checks=checks, Status=status,
                Namespace=svc.get("Namespace", "")))
        return out

    def catalog_services(self) -> Sequence[CatalogSnippet]:
        body, _ = self.api.get("/v1/catalog/services")
        return [CatalogSnippet(n, ServiceTags(t or [])) for n, t in sorted((body or {}).items())]

    def node(self, name: str) -> CatalogNode | None:
        body, _ = self.api.get(f"/v1/catalog/node/{quote(name or self.node_name, safe='')}")
        if not body:
            return None
        return CatalogNode(_node_info(body.get("Node") or {}), [
            CatalogNodeService(ID=s.get("ID", ""), Service=s.get("Service", ""), Address=s.get("Address", ""),
                               Port=int(s.get("Port") or 0), Tags=ServiceTags(s.get("Tags") or []),
                               Meta=s.get("Meta") or {})
            for s in sorted((body.get("Services") or {}).values(), key=lambda s: s.get("Service", ""))])

    def nodes(self) -> Sequence[CatalogNodeInfo]:
        body, _ = self.api.get("/v1/catalog/nodes")
        return [_node_info(n) for n in body or []]

    def ca_roots(self) -> Sequence[CARoot]:
        body, _ = self.api.get("/v1/agent/connect/ca/roots")
        return [CARoot(ID=r.get("ID", ""), Name=r.get("Name", ""), RootCertPEM=r.get("RootCert", ""),
                       Active=bool(r.get("Active"))) for r in (body or {}).get("Roots") or []]

    def ca_leaf(self, service: str) -> LeafCert:
        body, _ = self.vars_api.get(f"/v1/agent/connect/ca/leaf/{quote(service, safe='')}")
        body = body or {}
        return LeafCert(Service=body.get("Service", service), CertPEM=body.get("CertPEM", ""),
                        PrivateKeyPEM=body.get("PrivateKeyPEM", ""), SerialNumber=body.get("SerialNumber", ""),
                        ServiceURI=body.get("ServiceURI", ""), ValidAfter=str(body.get("ValidAfter", "")),
                        ValidBefore=str(body.get("ValidBefore", "")))

    # Nomad's native services: Yurt has one catalog, so they are its services
    def nomad_services(self, name: str, tag: str, namespace: str) -> Sequence[NomadService]:
        return [NomadService(Name=s.Name, Address=s.Address, Port=s.Port, ID=s.ID, Node=s.NodeID,
                             Datacenter=s.NodeDatacenter, Tags=s.Tags, Namespace=namespace or self.namespace)
                for s in self.services(name, tag, True)]

    def nomad_service_list(self, namespace: str) -> Sequence[NomadServicesSnippet]:
        return [NomadServicesSnippet(c.Name, c.Tags, namespace or self.namespace) for c in self.catalog_services()]

    def nomad_var(self, path: str, namespace: str) -> NomadVariable | None:
        try:
            body, _ = self.vars_api.get(f"/v1/var/{path}", namespace=namespace or self.namespace)
        except NotFound:
            return None
        if not body:
            return None
        return NomadVariable(body.get("Namespace", namespace or self.namespace), body.get("Path", path),
                             dict(body.get("Items") or {}), body.get("CreateIndex", 0), body.get("ModifyIndex", 0),
                             body.get("CreateTime", 0), body.get("ModifyTime", 0))

    def nomad_var_list(self, prefix: str, namespace: str) -> Sequence[NomadVarMeta]:
        body, _ = self.vars_api.get("/v1/vars", prefix=prefix, namespace=namespace or self.namespace)
        return [NomadVarMeta(v.get("Namespace", ""), v.get("Path", ""), v.get("CreateIndex", 0),
                             v.get("ModifyIndex", 0), v.get("CreateTime", 0), v.get("ModifyTime", 0))
                for v in body or []]


def _node_info(n: dict[str, Any]) -> CatalogNodeInfo:
    return CatalogNodeInfo(Node=n.get("Node", ""), Address=n.get("Address", ""), ID=n.get("ID", ""),
                           Datacenter=n.get("Datacenter", ""), TaggedAddresses=n.get("TaggedAddresses") or {},
                           Meta=n.get("Meta") or {})


def _decode(value: str | None) -> str:
    if not value:
        return ""
    return base64.b64decode(value).decode("utf-8", errors="replace")


def parse_env(text: str) -> dict[str, str]:
    """An env template's output: KEY=value lines (blank lines and # comments skipped), as Nomad."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f'line "{line}" is not KEY=value')
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def template_name(tpl: Template) -> str:
    return tpl.dest_path or tpl.source_path or "template"


class TemplateHook(TaskHook):
    """The task's templates (see the module's docstring)."""

    name = "template"

    def __init__(self, api: YurtClient, task: Task, *, poll: float = POLL,
                 settings: TemplateSettings | None = None) -> None:
        self.api = api
        self.settings = settings or TemplateSettings()
        self._files: dict[str, float] = {}          # file dependencies -> their mtime (watched by polling)
        self.templates = list(task.templates or [])
        self.poll = poll
        self._last: dict[int, str] = {}           # template index -> the text last written
        self._rendered = False
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._vars_api: YurtClient | None = None   # with the task's workload identity
        self._deps: frozenset[Dependency] = frozenset()   # what the last render read
        self._namespace = "default"
        self._node_name = ""
        self._lock = threading.RLock()   # a restart's prestart and the watcher render one at a time

    # --- the hook ----------------------------------------------------------------------------

    def prestart(self, ctx: TaskHookContext) -> None:
        if self._rendered and not self._render_on_restart(ctx):
            return
        with self._lock:
            self._first_render(ctx)

    def _first_render(self, ctx: TaskHookContext) -> None:
        announced: frozenset[str] = frozenset()
        failures = 0
        retry = self.settings.retry
        while True:
            try:
                results, missing = self._render_all(ctx)
            except _AgentDown:   # retried as the client's template { nomad_retry } says (Nomad's: 12 times)
                failures += 1
                if retry.attempts and failures > retry.attempts:
                    raise
                if ctx.killed.wait(retry.delay(failures)):
                    return
                continue
            failures = 0
            if not missing:
                break
            names = frozenset(missing)
            if names != announced:
                shown = sorted(names)
                more = f", and {len(shown) - 3} more" if len(shown) > 3 else ""
                ctx.emit(ev.template(f"Missing: {', '.join(shown[:3])}{more}"))
                announced = names
            if ctx.killed.wait(self.poll):
                return
        for i, text in results.items():
            self._write(ctx, i, text)
        self._rendered = True

    def poststart(self, ctx: TaskHookContext) -> None:
        if self._watcher is not None or not any(not t.once for t in self.templates):
            return
        if not self._rendered:   # re-attached after an agent restart: what is on disk is the last render
            self._load_last(ctx)
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, args=(ctx,), name=f"template-{ctx.task.name}",
                                         daemon=True)
        self._watcher.start()

    def stop(self, ctx: TaskHookContext) -> None:
        self._stop.set()
        if self._vars_api is not None:
            self._vars_api.close()

    # --- rendering ---------------------------------------------------------------------------

    def _render_on_restart(self, ctx: TaskHookContext) -> bool:
        policy = ctx.task.restart_policy
        return bool(policy is not None and policy.render_templates)

    def _source(self, ctx: TaskHookContext) -> AgentSource:
        vars_api = None
        token_file = ctx.task_dir.secrets / "nomad_token"
        try:
            token = token_file.read_text().strip()
        except OSError:
            token = ""
        if token:
            if self._vars_api is None or self._vars_api.token != token:
                if self._vars_api is not None:
                    self._vars_api.close()
                self._vars_api = YurtClient(self.api.addresses, tls=self.api.tls)
                self._vars_api.token = token
            vars_api = self._vars_api
        namespace = (ctx.alloc.job.namespace if ctx.alloc.job else "") or "default"
        self._namespace = namespace
        self._node_name = ctx.node.name if ctx.node else ""
        return AgentSource(self.api, ctx.task_env(), vars_api, namespace, node_name=ctx.node.name if ctx.node else "")

    def _render_all(self, ctx: TaskHookContext) -> tuple[dict[int, str], list[str]]:
        """Every template's text, and what is missing (empty: all rendered). Raises TaskHookError."""
        source = self._source(ctx)
        results: dict[int, str] = {}
        missing: list[str] = []
        deps: set[Dependency] = set()
        for i, tpl in enumerate(self.templates):
            out = self._render_one(ctx, tpl, source)
            if not tpl.once:
                deps |= out.deps
            if out.missing:
                missing.extend(_missing_name(d) for d in sorted(out.missing))
            else:
                results[i] = out.text
        self._deps = frozenset(deps)
        self._files = {arg: _mtime(arg) for kind, arg in deps if kind == "file"}
        return results, missing

    def _render_one(self, ctx: TaskHookContext, tpl: Template, source: AgentSource) -> Rendered:
        name = template_name(tpl)
        text = tpl.embedded_tmpl
        if tpl.source_path:
            path = self._inside(ctx, tpl.source_path, "source")
            try:
                text = path.read_text()
            except OSError as e:
                raise TaskHookError(f'Template failed: source "{tpl.source_path}": {e.strerror or e}') from None
        try:
            return render(text, source, name=name, left_delim=tpl.left_delim or "{{",
                          right_delim=tpl.right_delim or "}}", missing_key_error=tpl.err_missing_key,
                          namespace=source.namespace, task_dir=str(ctx.task_dir.root),
                          file_sandbox=not self.settings.disable_file_sandbox,
                          denied=frozenset(self.settings.function_denylist))
        except TemplateError as e:
            raise TaskHookError(f"Template failed: {e}") from None
        except (Unreachable, Unavailable) as e:
            raise _AgentDown(f"Template failed: {name}: the agent cannot be read: {e}") from None
        except YurtError as e:
            raise TaskHookError(f"Template failed: {name}: reading the agent: {e}") from None

    def _inside(self, ctx: TaskHookContext, rel: str, what: str) -> Path:
        """``rel`` relative to the task directory, inside the allocation directory (as validation
        checks it: "../alloc/x" is the shared dir); TaskHookError when it would escape it."""
        root = Path(ctx.task_dir.root)
        norm = posixpath.normpath(posixpath.join(root.name, rel.lstrip("/")))
        if norm.startswith("..") or os.path.isabs(norm):
            raise TaskHookError(f'Template failed: {what} "{rel}" escapes the allocation directory')
        own_alloc = f"{root.name}/alloc"
        if norm == own_alloc or norm.startswith(own_alloc + "/"):   # the task's alloc/ is the shared dir
            norm = "alloc" + norm[len(own_alloc):]
        return root.parent / norm

    def _write(self, ctx: TaskHookContext, i: int, text: str) -> None:
        tpl = self.templates[i]
        dest = self._inside(ctx, tpl.dest_path, "destination")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, int(tpl.perms, 8) if tpl.perms else 0o644)
            if os.geteuid() == 0 and (tpl.uid is not None or tpl.gid is not None):
                os.chown(tmp, tpl.uid if tpl.uid is not None else -1, tpl.gid if tpl.gid is not None else -1)
            os.replace(tmp, dest)
        except OSError as e:
            raise TaskHookError(f'Template failed: writing "{tpl.dest_path}": {e.strerror or e}') from None
        if tpl.envvars:
            try:
                ctx.env.update(parse_env(text))
            except ValueError as e:
                raise TaskHookError(f'Template failed: env template "{tpl.dest_path}": {e}') from None
        self._last[i] = text

    def _load_last(self, ctx: TaskHookContext) -> None:
        for i, tpl in enumerate(self.templates):
            try:
                text = self._inside(ctx, tpl.dest_path, "destination").read_text()
            except (OSError, TaskHookError):
                continue
            self._last[i] = text
            if tpl.envvars:
                try:
                    ctx.env.update(parse_env(text))
                except ValueError:
                    pass
        self._rendered = True

    # --- watching ------------------------------------------------------------------------------

    def _wait_bounds(self, tpls: list[Template]) -> tuple[float, float]:
        lo = hi = 0.0
        st = self.settings
        for tpl in tpls:
            w = tpl.wait
            t_lo = w.min / SECOND if w is not None and w.min is not None else st.wait_min
            t_hi = w.max / SECOND if w is not None and w.max is not None else max(st.wait_max, t_lo)
            if st.bounds_min is not None:   # the client's wait_bounds clamp a template's own wait
                t_lo, t_hi = max(t_lo, st.bounds_min), max(t_hi, st.bounds_min)
            if st.bounds_max is not None:
                t_lo, t_hi = min(t_lo, st.bounds_max), min(t_hi, st.bounds_max)
            lo, hi = max(lo, t_lo), max(hi, t_hi)
        return lo, hi

    def _changed(self, ctx: TaskHookContext) -> dict[int, str]:
        with self._lock:
            results, _ = self._render_all(ctx)   # a template with something missing keeps its last render
        return {i: text for i, text in results.items()
                if not self.templates[i].once and self._last.get(i) != text}

    def _watch(self, ctx: TaskHookContext) -> None:
        """The watcher thread: blocking queries on what the templates read (one asyncio loop for
        all of them); polling every `poll` seconds if that loop cannot run."""
        try:
            asyncio.run(self._watch_blocking(ctx))
        except Exception:
            log.exception("task %s: template blocking queries failed; polling instead", ctx.task.name)
            self._watch_polling(ctx)

    def _check(self, ctx: TaskHookContext) -> None:
        """Render again; a change is debounced by `wait` and the task told (on this thread)."""
        try:
            changed = self._changed(ctx)
            if not changed:
                return
            lo, hi = self._wait_bounds([self.templates[i] for i in changed])
            first = last_change = time.monotonic()
            while lo > 0:   # debounce: quiet for `min`, or `max` since the first change
                now = time.monotonic()
                if now - last_change >= lo or now - first >= hi:
                    break
                if self._stop.wait(min(self.poll, lo)):
                    return
                again = self._changed(ctx)
                if again != changed:
                    changed, last_change = again, time.monotonic()
            if changed:
                self._apply(ctx, changed)
        except _AgentDown as e:   # the blocking queries notice the agent back, and render again
            log.warning("task %s: %s", ctx.task.name, e)
        except TaskHookError as e:   # as Nomad: a template that no longer renders kills its task
            log.warning("task %s: %s", ctx.task.name, e)
            self._stop.set()
            ctx.runner.kill(ev.hook_failed(str(e)))
        except Exception:   # the watcher must survive the agent's hiccups
            log.exception("task %s: template watcher", ctx.task.name)

    def _watch_polling(self, ctx: TaskHookContext) -> None:
        while not self._stop.wait(self.poll):
            self._check(ctx)

    def _queries(self) -> dict[tuple[str, str], tuple[str, dict[str, str], bool]]:
        """What to block on for the last render's dependencies: a key per query, its path, its
        parameters and whether it is asked with the workload identity. Every KV read wakes on
        any KV write, so one query watches them all."""
        out: dict[tuple[str, str], tuple[str, dict[str, str], bool]] = {}
        for kind, arg in self._deps:
            if kind in ("kv", "kv_list"):
                out[("kv", "")] = (f"/v1/kv/{quote(arg.lstrip('/'))}", {}, False)
            elif kind in ("service", "nomad_service", "connect"):
                name = arg.split("|")[0].split("~")[0].split("@")[0].split("?")[0].rsplit(".", 1)[-1]
                path = "connect" if kind == "connect" else "service"
                out[(path, name)] = (f"/v1/health/{path}/{quote(name)}", {}, False)
            elif kind in ("catalog_services", "nomad_services"):
                out[("catalog", "")] = ("/v1/catalog/services", {}, False)
            elif kind == "node":
                out[("node", arg)] = (f"/v1/catalog/node/{quote(arg or self._node_name, safe='')}", {}, False)
            elif kind == "nodes":
                out[("nodes", "")] = ("/v1/catalog/nodes", {}, False)
            elif kind == "ca_roots":
                out[("ca_roots", "")] = ("/v1/agent/connect/ca/roots", {}, False)
            elif kind == "ca_leaf":
                out[("ca_leaf", arg)] = (f"/v1/agent/connect/ca/leaf/{quote(arg, safe='')}", {}, True)
            elif kind in ("nomad_var", "nomad_var_list"):
                path, _, ns = arg.partition("@")
                params = {"namespace": ns.split(".")[0] or self._namespace}
                if kind == "nomad_var":
                    out[("var", arg)] = (f"/v1/var/{quote(path.strip('/'))}", params, True)
                else:
                    out[("vars", arg)] = ("/v1/vars", {**params, "prefix": path}, True)
        return out

    def _async_client(self) -> httpx.AsyncClient:
        address = self.api.address
        if address.startswith("unix://"):
            return httpx.AsyncClient(base_url="http://localhost", timeout=self.settings.block_query_wait + 15,
                                     transport=httpx.AsyncHTTPTransport(uds=address[len("unix://"):]))
        if address.startswith("https://"):
            return httpx.AsyncClient(base_url=address, timeout=self.settings.block_query_wait + 15,
                                     verify=self.api.tls.context())
        return httpx.AsyncClient(base_url=address, timeout=self.settings.block_query_wait + 15)

    async def _watch_blocking(self, ctx: TaskHookContext) -> None:
        indexes: dict[tuple[str, str], int] = {}
        pending: dict[tuple[str, str], asyncio.Task[int]] = {}
        failures = 0
        if not self._deps:   # re-attached after an agent restart: nothing rendered by this hook yet
            await asyncio.to_thread(self._check, ctx)
        async with self._async_client() as client:
            async def query(path: str, params: dict[str, str], with_identity: bool, index: int) -> int:
                token = (self._vars_api.token if with_identity and self._vars_api is not None else self.api.token)
                blocking = {"index": str(index), "wait": f"{self.settings.block_query_wait:g}s"}
                q = {**params, **(blocking if index else {})}
                resp = await client.get(path, params=q, headers={"X-Nomad-Token": token} if token else None)
                if resp.status_code >= 400 and resp.status_code != 404:
                    raise YurtError(f"{path}: {resp.status_code} {resp.text.strip()[:200]}")
                return int(resp.headers.get("X-Nomad-Index") or resp.headers.get("X-Consul-Index") or 0)

            try:
                while not self._stop.is_set():
                    queries = self._queries()
                    for key in [k for k in pending if k not in queries]:
                        pending.pop(key).cancel()
                    for key, (path, params, ident) in queries.items():
                        if key not in pending:
                            pending[key] = asyncio.create_task(query(path, params, ident, indexes.get(key, 0)))
                    if not pending:   # nothing to watch (env, files): look again now and then
                        await asyncio.sleep(self.poll)
                        if self._files_changed():
                            await asyncio.to_thread(self._check, ctx)
                        continue
                    done, _ = await asyncio.wait(pending.values(), timeout=self.poll,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    changed = self._files_changed()
                    for key in [k for k, t in pending.items() if t in done]:
                        task = pending.pop(key)
                        try:
                            index = task.result()
                        except (httpx.HTTPError, YurtError, ValueError) as e:
                            failures += 1
                            log.debug("task %s: template query %s: %s", ctx.task.name, key, e)
                            await asyncio.sleep(self.settings.retry.delay(failures))
                            changed = True   # render again: the agent may have missed nothing, or much
                            continue
                        failures = 0
                        if indexes.get(key) != index:   # a first answer too: a change may fall before it
                            changed = True
                            indexes[key] = index
                    if changed:
                        await asyncio.to_thread(self._check, ctx)
            finally:
                for task in pending.values():
                    task.cancel()
                await asyncio.gather(*pending.values(), return_exceptions=True)

    def _files_changed(self) -> bool:
        """Whether a file a template read (``file``) changed since the last render (by its mtime)."""
        return any(_mtime(path) != seen for path, seen in list(self._files.items()))

    def _apply(self, ctx: TaskHookContext, changed: dict[int, str]) -> None:
        with self._lock:
            for i, text in changed.items():
                self._write(ctx, i, text)
        tpls = [self.templates[i] for i in changed]
        modes = {t.change_mode or "restart" for t in tpls}
        if "restart" in modes:
            self._splay(tpls, "restart")
            if ctx.running():
                ctx.runner.restart(RESTART_REASON, requested=True)
            return
        if "signal" in modes:
            self._splay(tpls, "signal")
            for sig in sorted({t.change_signal for t in tpls if (t.change_mode or "restart") == "signal"}):
                if ctx.running():
                    try:
                        ctx.signal(sig, SIGNAL_REASON)
                    except Exception as e:  # noqa: BLE001 - the driver's errors (the task just exited...)
                        ctx.emit(ev.template(f"Template failed to send signals {sig}: {e}"))
        for tpl in tpls:
            if (tpl.change_mode or "restart") == "script" and tpl.change_script is not None:
                self._script(ctx, tpl)

    def _splay(self, tpls: list[Template], mode: str) -> None:
        splay = max(((t.splay / SECOND) if t.splay is not None else DEFAULT_SPLAY)
                    for t in tpls if (t.change_mode or "restart") == mode)
        if splay > 0:
            self._stop.wait(random.uniform(0, splay))

    def _script(self, ctx: TaskHookContext, tpl: Template) -> None:
        script = tpl.change_script
        assert script is not None
        timeout = script.timeout / SECOND if script.timeout else SCRIPT_TIMEOUT
        argv = [script.command, *(script.args or [])]
        env = {**ctx.task_env(), **ctx.env}
        try:
            proc = subprocess.run(argv, cwd=ctx.task_dir.root, env=env, capture_output=True, timeout=timeout,
                                  check=False)
            failed = f"exited {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            failed = f"timed out after {timeout:g}s"
        except OSError as e:
            failed = e.strerror or str(e)
        if not failed:
            ctx.emit(ev.template(f"Template ran script {script.command} with arguments {_go_list(script.args)} "
                                 "on change"))
            return
        message = (f"Template failed to run script {script.command} with arguments {_go_list(script.args)} "
                   f"on change: {failed}")
        ctx.emit(ev.template(message))
        if script.fail_on_error:
            ctx.runner.kill(ev.hook_failed(message))


def _go_list(args: list[str] | None) -> str:
    """A string list as Go's %v prints it: [a b c]."""
    return "[" + " ".join(args or []) + "]"


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def template_hooks(api: YurtClient, settings: TemplateSettings | None = None) -> TaskHookFactory:
    """The factory the node agent gives its allocation runners: a `TemplateHook` per task with templates."""
    def make(task: Task) -> TaskHook | None:
        return TemplateHook(api, task, settings=settings) if task.templates else None
    return make
