"""Consul's config entries (`/v1/config/<kind>/<name>`): stored in the keyed table
"config_entries" by "<kind>/<name>" (every kind but `service-intentions`), validated in
Consul's shapes, and compiled into what a sidecar needs for one service (`chain`): its
protocol, its intentions, and for an HTTP service the routes, splits and targets of its
discovery chain (router -> splitter -> resolver, as Consul's discoverychain/compile.go).

`service-intentions` entries are the intentions themselves (one store, as Consul keeps them): an
entry for destination D is the view of every intention whose destination is D (one source
each), and writing the entry replaces those intentions in one write; an intention made through
`/v1/connect/intentions` shows up as a source of D's entry, and the other way round.

Yurt's choices where Consul leaves a choice open:
- A route, split, redirect or failover to a service that no registered job and no catalog entry
  defines is refused at write, naming the service (Consul accepts it and routes nowhere).
- Consul answers a failed write with 500; here it is a 400 (the request is at fault) with
  Consul's message and the fix.
- Only what Yurt's sidecars do is accepted: protocol "tcp" or "http" (HTTP/1.1); a field Yurt
  does not apply (LoadBalancer, Mode, TransparentProxy, ...) is refused naming it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from yurt.errors import Conflict, InvalidInput, NotFound
from yurt.state import StateStore
from yurt.state.writes import Txn
from yurt.structs import ConfigEntry, Intention, Job, parse_duration
from yurt.structs.connect import ACTION_ALLOW, ACTION_DENY, WILDCARD
from yurt.structs.gateway import gateway_entry, gateway_kind, linked_services

from .intentions import Intentions, ordered, precedence

TABLE = "config_entries"
SERVICE_DEFAULTS = "service-defaults"
PROXY_DEFAULTS = "proxy-defaults"
ROUTER = "service-router"
SPLITTER = "service-splitter"
RESOLVER = "service-resolver"
INTENTIONS = "service-intentions"
INGRESS = "ingress-gateway"
TERMINATING = "terminating-gateway"
MESH = "mesh"
KINDS = (SERVICE_DEFAULTS, PROXY_DEFAULTS, ROUTER, SPLITTER, RESOLVER, INTENTIONS, INGRESS, TERMINATING, MESH)
GLOBAL = "global"
PROTOCOLS = ("tcp", "http")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
DEFAULT_CONNECT_TIMEOUT = 5.0   # seconds (a resolver's ConnectTimeout default)

# the keys each kind takes at its top level (besides Kind, Name, Meta, CreateIndex, ModifyIndex)
_TOP: dict[str, tuple[str, ...]] = {
    SERVICE_DEFAULTS: ("Protocol",),
    PROXY_DEFAULTS: ("Config",),
    ROUTER: ("Routes",),
    SPLITTER: ("Splits",),
    RESOLVER: ("DefaultSubset", "Subsets", "Redirect", "Failover", "ConnectTimeout", "RequestTimeout"),
    INTENTIONS: ("Sources",),
    INGRESS: ("Listeners", "TLS"),
    TERMINATING: ("Services",),
    MESH: ("TransparentProxy", "AllowEnablingPermissiveMutualTLS", "TLS", "HTTP"),
}
_COMMON = ("Kind", "Name", "Meta", "Namespace", "Partition", "CreateIndex", "ModifyIndex")
_SPECIAL = {"http": "HTTP", "tls": "TLS", "sni": "SNI", "ca": "CA", "id": "ID", "tcp": "TCP"}
_OPAQUE = ("Meta", "Config")            # maps kept as they are
_NAMED = ("Subsets", "Failover")        # maps whose keys are names and whose values are objects
# HCL blocks come as [ {...} ]
_OBJECTS = ("Match", "HTTP", "Destination", "Redirect", "TLS", "TransparentProxy", "Incoming", "Outgoing")


def key_of(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def _pascal(key: str) -> str:
    if "_" not in key and key[:1].isupper():
        return key
    return "".join(_SPECIAL.get(p.lower(), p[:1].upper() + p[1:]) for p in key.split("_") if p)


def normalize(value: Any, parent: str = "") -> Any:
    """Consul accepts CamelCase or snake_case keys: everything to CamelCase (the user's own
    maps, Meta and Config, and the names of Subsets and Failover, are kept as they are); an
    HCL block (a list of one object) where an object belongs becomes the object."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if parent in _NAMED:
                out[str(k)] = normalize(v)
                continue
            key = _pascal(str(k))
            if key in _OBJECTS and isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict):
                v = v[0]
            out[key] = v if key in _OPAQUE else normalize(v, key)
        return out
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


# -- small checks -----------------------------------------------------------------------------

def _where(kind: str, name: str) -> str:
    return f'{kind} "{name}"'


def _obj(value: Any, what: str, example: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object, like {example}; not {value!r}")
    return value


def _list(value: Any, what: str, example: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a list, like {example}; not {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {value!r}")
    return value


def _known_keys(obj: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    for k in obj:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, 1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; it takes {', '.join(allowed)}"
            raise InvalidInput(f'{what}: unknown or unsupported field "{k}"{hint}')


def seconds(value: Any, what: str) -> float:
    """A Go duration string ("5s", "250ms"), or a number of nanoseconds, as seconds."""
    if value in (None, "", 0):
        return 0.0
    if isinstance(value, bool):
        raise InvalidInput(f'{what} must be a duration like "5s", not {value!r}')
    if isinstance(value, (int, float)):
        ns = float(value)
    elif isinstance(value, str):
        try:
            ns = float(parse_duration(value))
        except ValueError as e:
            raise InvalidInput(f"{what}: {e}") from None
    else:
        raise InvalidInput(f'{what} must be a duration like "5s", not {value!r}')
    if ns < 0:
        raise InvalidInput(f"{what} must not be negative")
    return ns / 1e9


def _regex(value: str, what: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise InvalidInput(f'{what}: invalid regular expression "{value}": {e}') from None


def _header_matches(items: Any, what: str) -> None:
    ex = '[{"Name": "x-debug", "Exact": "1"}]'
    for i, h in enumerate(_list(items, what, ex), 1):
        w = f"{what}[{i}]"
        h = _obj(h, w, '{"Name": "x-debug", "Present": true}')
        _known_keys(h, ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert"), w)
        if not _str(h.get("Name"), f"{w}.Name"):
            raise InvalidInput(f"{w}: Name is required (the header's name)")
        given = [k for k in ("Present", "Exact", "Prefix", "Suffix", "Regex") if h.get(k) not in (None, "", False)]
        if len(given) > 1:
            raise InvalidInput(f"{w}: set at most one of Present, Exact, Prefix, Suffix, Regex "
                               f"(it has {', '.join(given)})")
        for k in ("Exact", "Prefix", "Suffix", "Regex"):
            _str(h.get(k), f"{w}.{k}")
        if h.get("Regex"):
            _regex(h["Regex"], f"{w}.Regex")
        for k in ("Present", "Invert"):
            if h.get(k) is not None and not isinstance(h[k], bool):
                raise InvalidInput(f"{w}.{k} must be true or false")


def _methods(value: Any, what: str) -> None:
    for m in _list(value, what, '["GET", "HEAD"]'):
        if not isinstance(m, str) or m.upper() not in HTTP_METHODS:
            raise InvalidInput(f"{what}: {m!r} is not an HTTP method; use one of {', '.join(HTTP_METHODS)}")


def _path_match(http: dict[str, Any], what: str) -> None:
    given = [k for k in ("PathExact", "PathPrefix", "PathRegex") if http.get(k)]
    if len(given) > 1:
        raise InvalidInput(f"{what}: set at most one of PathExact, PathPrefix, PathRegex (it has {', '.join(given)})")
    for k in ("PathExact", "PathPrefix"):
        v = _str(http.get(k), f"{what}.{k}")
        if v and not v.startswith("/"):
            raise InvalidInput(f'{what}.{k} "{v}" must begin with "/"')
    if http.get("PathRegex"):
        _regex(_str(http["PathRegex"], f"{what}.PathRegex"), f"{what}.PathRegex")


def check_permissions(permissions: Any, what: str) -> list[dict[str, Any]]:
    """Consul's L7 `Permissions`: [{Action, HTTP: {PathExact|PathPrefix|PathRegex, Methods, Header}}]."""
    example = '[{"Action": "allow", "HTTP": {"PathPrefix": "/api", "Methods": ["GET"]}}]'
    perms = _list(normalize(permissions), what, example)
    for i, p in enumerate(perms, 1):
        w = f"{what}[{i}]"
        p = _obj(p, w, '{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}}')
        _known_keys(p, ("Action", "HTTP"), w)
        if str(p.get("Action", "")).lower() not in (ACTION_ALLOW, ACTION_DENY):
            raise InvalidInput(f'{w}: Action must be "allow" or "deny", not {p.get("Action")!r}')
        http = _obj(p.get("HTTP"), f"{w}.HTTP", '{"PathPrefix": "/api"}')
        if not http:
            raise InvalidInput(f'{w}: HTTP is required (what requests it matches: PathExact, PathPrefix, PathRegex, '
                               'Methods, Header)')
        _known_keys(http, ("PathExact", "PathPrefix", "PathRegex", "Methods", "Header"), f"{w}.HTTP")
        _path_match(http, f"{w}.HTTP")
        _methods(http.get("Methods"), f"{w}.HTTP.Methods")
        _header_matches(http.get("Header"), f"{w}.HTTP.Header")
        p["Action"] = str(p["Action"]).lower()
    return perms


# -- the store ----------------------------------------------------------------------------------

class ConfigEntries:
    """The server's config entries (the API's /v1/config routes, the sidecars' chain)."""

    def __init__(self, store: StateStore, intentions: Intentions) -> None:
        self.store = store
        self.intentions = intentions
        intentions.check_permissions = self.check_l7_intention
        self._jobs_cache: tuple[int, dict[str, str]] | None = None

    # -- reads --------------------------------------------------------------------------------
    def _row(self, kind: str, name: str) -> ConfigEntry | None:
        row = self.store.keyed_get(TABLE, key_of(kind, name))
        return row if isinstance(row, ConfigEntry) else None

    def entry(self, kind: str, name: str) -> dict[str, Any] | None:
        """The entry as Consul answers it (with CreateIndex, ModifyIndex), or None."""
        check_kind(kind)
        if kind == INTENTIONS:
            ixs = [ix for ix in self.intentions.list() if ix.destination_name == name]
            return _intentions_entry(name, ixs) if ixs else None
        row = self._row(kind, name)
        return None if row is None else _public(row)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.entry(kind, name)
        if out is None:
            raise NotFound(f'Config entry not found for "{kind}" / "{name}"')
        return out

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        check_kind(kind)
        if kind == INTENTIONS:
            by_dest: dict[str, list[Intention]] = {}
            for ix in self.intentions.list():
                by_dest.setdefault(ix.destination_name, []).append(ix)
            return [_intentions_entry(d, by_dest[d]) for d in sorted(by_dest)]
        return [_public(r) for _, r in self.store.keyed_list(TABLE, kind + "/") if isinstance(r, ConfigEntry)]

    def tables(self, kind: str | None) -> tuple[str, ...]:
        """The blocking-query tables of a kind's entries."""
        if kind == INTENTIONS:
            return ("intentions",)
        return (TABLE,) if kind else (TABLE, "intentions")

    def _body(self, kind: str, name: str) -> dict[str, Any] | None:
        row = self._row(kind, name)
        return row.entry if row is not None else None

    # -- protocol and services ---------------------------------------------------------------
    def protocol(self, service: str, pending: dict[tuple[str, str], dict | None] | None = None) -> str:
        """A service's protocol: its service-defaults Protocol, else proxy-defaults'
        Config.protocol, else what its sidecars declare (`proxy { config { protocol } }` in a
        registered sidecar or a job), else tcp. `pending`: entries as a write would leave them."""
        def body(kind: str, name: str) -> dict[str, Any] | None:
            if pending is not None and (kind, name) in pending:
                return pending[(kind, name)]
            return self._body(kind, name)
        if service != WILDCARD:
            sd = body(SERVICE_DEFAULTS, service)
            if sd and sd.get("Protocol"):
                return str(sd["Protocol"]).lower()
        pd = body(PROXY_DEFAULTS, GLOBAL)
        if pd and isinstance(pd.get("Config"), dict) and pd["Config"].get("protocol"):
            return str(pd["Config"]["protocol"]).lower()
        if service == WILDCARD:
            return "tcp"
        declared = self._declared_protocol(service)
        return declared or "tcp"

    def _declared_protocol(self, service: str) -> str:
        for reg in self.store.connect_services(service):
            p = ((reg.proxy.config or {}) if reg.proxy is not None else {}).get("protocol")
            if p:
                return str(p).lower()
        return self._job_protocols().get(service, "")

    def _job_protocols(self) -> dict[str, str]:
        """service -> the protocol its jobs' sidecars declare; worked out once per change of the
        jobs table (every sidecar's chain asks)."""
        index = self.store.table_index("jobs")
        cached = self._jobs_cache
        if cached is not None and cached[0] == index:
            return cached[1]
        out: dict[str, str] = {}
        for job in self._jobs():
            for svc in _job_services(job):
                if svc.connect is None or svc.connect.sidecar_service is None:
                    continue
                proxy = svc.connect.sidecar_service.proxy
                p = ((proxy.config if proxy else None) or {}).get("protocol")
                if p and svc.name not in out:
                    out[svc.name] = str(p).lower()
        self._jobs_cache = (index, out)
        return out

    def _jobs(self) -> list[Job]:
        return [j for j in self.store.jobs(None, "") if not j.stop]

    def known_services(self) -> set[str]:
        """Every service a registered job or a catalog entry defines."""
        names: set[str] = set()
        for reg in self.store.services(None):
            names.add(reg.service)
            if reg.connect_destination:
                names.add(reg.connect_destination)
        for job in self._jobs():
            names.update(s.name for s in _job_services(job) if s.name)
        return names

    def _service_exists(self, service: str, what: str, known: set[str]) -> None:
        if service in known:
            return
        close = difflib.get_close_matches(service, sorted(known), 3)
        names = ", ".join('"' + c + '"' for c in close)
        hint = f" (did you mean {names}?)" if close else ""
        raise InvalidInput(f'{what}: service "{service}" does not exist: no registered job or catalog entry defines '
                           f'it{hint}; register the service first (a job with service "{service}"), or fix the name')

    # -- validation ----------------------------------------------------------------------------
    def check_l7_intention(self, destination: str, permissions: Any,
                           pending: dict[tuple[str, str], dict | None] | None = None) -> list[dict[str, Any]]:
        """L7 permissions need the destination to speak HTTP (Consul refuses them at write)."""
        perms = check_permissions(permissions, f'intention to "{destination}": Permissions')
        proto = self.protocol(destination, pending)
        if perms and proto not in ("http",):
            fix = ('set proxy-defaults "global" Config { protocol = "http" }' if destination == WILDCARD else
                   f'write a service-defaults entry for "{destination}" with Protocol = "http" first')
            raise InvalidInput(f'service "{destination}" has protocol "{proto}", which is incompatible with L7 '
                               f"intentions permissions; {fix}")
        return perms

    def validate(self, raw: Any) -> tuple[str, str, dict[str, Any]]:
        """(kind, name, the entry's body without Kind/Name/indexes) of a write's body."""
        if not isinstance(raw, dict):
            raise InvalidInput('the body must be a config entry object: {"Kind": "service-defaults", "Name": "api", '
                               '"Protocol": "http"}')
        body = normalize(raw)
        kind = _str(body.get("Kind"), "Kind")
        check_kind(kind)
        name = _str(body.get("Name"), "Name").strip() or (MESH if kind == MESH else "")
        if not name:
            raise InvalidInput(f'{kind}: Name is required (the service it is about)')
        if kind == PROXY_DEFAULTS and name != GLOBAL:
            raise InvalidInput(f'invalid name "{name}" for proxy-defaults: it must be "global"')
        if kind == MESH and name != MESH:
            raise InvalidInput(f'invalid name "{name}" for mesh: it must be "mesh" (there is one mesh entry)')
        where = _where(kind, name)
        _known_keys(body, _COMMON + _TOP[kind], where)
        for k in ("Namespace", "Partition"):
            if body.get(k) not in (None, "", "default"):
                raise InvalidInput(f'{where}: {k} "{body[k]}": Yurt has only the "default" one; leave {k} out')
        meta = body.get("Meta")
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise InvalidInput(f'{where}: Meta must be an object of strings, like {{"owner": "team-a"}}')
        if kind == INTENTIONS and meta:
            raise InvalidInput(f"{where}: Meta is not kept on service-intentions entries (each source is an "
                               "intention); leave Meta out")
        entry = {k: v for k, v in body.items() if k not in _COMMON or k == "Meta"}
        if not entry.get("Meta"):
            entry.pop("Meta", None)
        return kind, name, entry

    def check(self, kind: str, name: str, entry: dict[str, Any],
              pending: dict[tuple[str, str], dict | None], from_job: bool = False) -> dict[str, Any]:
        """Consul's checks of one entry against the others (as `pending` would leave them)."""
        where = _where(kind, name)
        known = self.known_services()

        def body(k: str, n: str) -> dict[str, Any] | None:
            return pending[(k, n)] if (k, n) in pending else self._body(k, n)

        def need_http(service: str) -> None:
            proto = self.protocol(service, pending)
            if proto != "http":
                raise InvalidInput(f'{where}: discovery chain "{service}" uses a protocol "{proto}" that does not '
                                   f'permit advanced routing or splitting behavior; write a service-defaults entry for '
                                   f'"{service}" with Protocol = "http" first')

        def need_subset(service: str, subset: str, what: str) -> None:
            if not subset:
                return
            res = body(RESOLVER, service) or {}
            if subset not in (res.get("Subsets") or {}):
                raise InvalidInput(f'{what}: service "{service}" has no subset "{subset}"; define it in the '
                                   f'service-resolver for "{service}" (Subsets {{ {subset} = {{ Filter = '
                                   f'"Service.Meta.version == {subset}" }} }})')

        if kind == SERVICE_DEFAULTS:
            proto = _str(entry.get("Protocol"), f"{where}: Protocol").lower()
            if proto and proto not in PROTOCOLS:
                raise InvalidInput(f'{where}: Protocol "{proto}" is not supported; Yurt\'s sidecars speak "tcp" or '
                                   f'"http" (HTTP/1.1)')
            if proto:
                entry["Protocol"] = proto
        elif kind == PROXY_DEFAULTS:
            config = entry.get("Config")
            if config is not None and not isinstance(config, dict):
                raise InvalidInput(f'{where}: Config must be an object, like {{"protocol": "http"}}')
            proto = str((config or {}).get("protocol", "")).lower()
            if proto and proto not in PROTOCOLS:
                raise InvalidInput(f'{where}: Config.protocol "{proto}" is not supported; Yurt\'s sidecars speak "tcp" '
                                   f'or "http" (HTTP/1.1)')
            _known_keys(config or {}, ("protocol",), f"{where}: Config")
        elif kind == ROUTER:
            need_http(name)
            routes = _list(entry.get("Routes"), f"{where}: Routes", '[{"Match": {"HTTP": {"PathPrefix": "/v2"}}, '
                                                                    '"Destination": {"Service": "api-v2"}}]')
            for i, r in enumerate(routes, 1):
                w = f"{where}: Routes[{i}]"
                r = _obj(r, w, '{"Match": {...}, "Destination": {...}}')
                _known_keys(r, ("Match", "Destination"), w)
                match = _obj(r.get("Match"), f"{w}.Match", '{"HTTP": {"PathPrefix": "/v2"}}')
                _known_keys(match, ("HTTP",), f"{w}.Match")
                http = _obj(match.get("HTTP"), f"{w}.Match.HTTP", '{"PathPrefix": "/v2"}')
                _known_keys(http, ("PathExact", "PathPrefix", "PathRegex", "Header", "QueryParam", "Methods"),
                            f"{w}.Match.HTTP")
                _path_match(http, f"{w}.Match.HTTP")
                _methods(http.get("Methods"), f"{w}.Match.HTTP.Methods")
                _header_matches(http.get("Header"), f"{w}.Match.HTTP.Header")
                for j, q in enumerate(_list(http.get("QueryParam"), f"{w}.Match.HTTP.QueryParam",
                                            '[{"Name": "debug", "Present": true}]'), 1):
                    qw = f"{w}.Match.HTTP.QueryParam[{j}]"
                    q = _obj(q, qw, '{"Name": "debug", "Exact": "1"}')
                    _known_keys(q, ("Name", "Present", "Exact", "Regex"), qw)
                    if not _str(q.get("Name"), f"{qw}.Name"):
                        raise InvalidInput(f"{qw}: Name is required")
                    if q.get("Regex"):
                        _regex(_str(q["Regex"], f"{qw}.Regex"), f"{qw}.Regex")
                dest = _obj(r.get("Destination"), f"{w}.Destination", '{"Service": "api-v2"}')
                _known_keys(dest, ("Service", "ServiceSubset", "Namespace", "PrefixRewrite", "RequestTimeout",
                                   "IdleTimeout", "NumRetries", "RetryOnConnectFailure", "RetryOnStatusCodes"),
                            f"{w}.Destination")
                svc = _str(dest.get("Service"), f"{w}.Destination.Service") or name
                if svc != name:
                    self._service_exists(svc, f"{w}.Destination", known)
                    need_http(svc)
                need_subset(svc, _str(dest.get("ServiceSubset"), f"{w}.Destination.ServiceSubset"), f"{w}.Destination")
                if dest.get("PrefixRewrite"):
                    _str(dest["PrefixRewrite"], f"{w}.Destination.PrefixRewrite")
                    if not (http.get("PathPrefix") or http.get("PathExact")):
                        raise InvalidInput(f"{w}: PrefixRewrite needs a PathPrefix or PathExact match to replace")
                for k in ("RequestTimeout", "IdleTimeout"):
                    seconds(dest.get(k), f"{w}.Destination.{k}")
                n = dest.get("NumRetries", 0)
                if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 10:
                    raise InvalidInput(f"{w}.Destination.NumRetries must be a whole number from 0 to 10, not {n!r}")
                retry_cf = dest.get("RetryOnConnectFailure")
                if retry_cf is not None and not isinstance(retry_cf, bool):
                    raise InvalidInput(f"{w}.Destination.RetryOnConnectFailure must be true or false")
                for code in _list(dest.get("RetryOnStatusCodes"), f"{w}.Destination.RetryOnStatusCodes", "[503]"):
                    if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 599:
                        raise InvalidInput(f"{w}.Destination.RetryOnStatusCodes: {code!r} is not an HTTP status code")
        elif kind == SPLITTER:
            need_http(name)
            splits = _list(entry.get("Splits"), f"{where}: Splits", '[{"Weight": 90, "ServiceSubset": "v1"}, '
                                                                    '{"Weight": 10, "ServiceSubset": "v2"}]')
            if not splits:
                raise InvalidInput(f"{where}: Splits must have at least one split")
            total = 0.0
            seen: set[tuple[str, str]] = set()
            for i, sp in enumerate(splits, 1):
                w = f"{where}: Splits[{i}]"
                sp = _obj(sp, w, '{"Weight": 90, "ServiceSubset": "v1"}')
                _known_keys(sp, ("Weight", "Service", "ServiceSubset", "Namespace"), w)
                weight = sp.get("Weight", 0)
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
                    raise InvalidInput(f"{w}: Weight must be a number from 0 to 100, not {weight!r}")
                total += round(float(weight), 2)
                svc = _str(sp.get("Service"), f"{w}.Service") or name
                subset = _str(sp.get("ServiceSubset"), f"{w}.ServiceSubset")
                if (svc, subset) in seen:
                    shown = f"{subset}.{svc}" if subset else svc
                    raise InvalidInput(f'{w}: split destination "{shown}" occurs more than once; merge their weights')
                seen.add((svc, subset))
                if svc != name:
                    self._service_exists(svc, w, known)
                    need_http(svc)
                need_subset(svc, subset, w)
            if round(total, 2) != 100:
                raise InvalidInput(f"{where}: the sum of all split weights must be 100, not {round(total, 2):g}; "
                                   "change the weights so they add up to 100")
        elif kind == RESOLVER:
            need_http(name)
            subsets = _obj(entry.get("Subsets"), f"{where}: Subsets",
                           '{"v1": {"Filter": "Service.Meta.version == v1"}}')
            for sname, sub in subsets.items():
                w = f'{where}: Subsets "{sname}"'
                if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", sname):
                    raise InvalidInput(f"{w}: a subset name is lowercase letters, digits and dashes (like v1)")
                sub = _obj(sub, w, '{"Filter": "Service.Meta.version == v1"}')
                _known_keys(sub, ("Filter", "OnlyPassing"), w)
                _str(sub.get("Filter"), f"{w}.Filter")
            default = _str(entry.get("DefaultSubset"), f"{where}: DefaultSubset")
            if default and default not in subsets:
                raise InvalidInput(f'{where}: DefaultSubset "{default}" is not one of its Subsets '
                                   f'({", ".join(subsets) or "none"})')
            redirect = _obj(entry.get("Redirect"), f"{where}: Redirect", '{"Service": "api-v2"}')
            if redirect:
                _known_keys(redirect, ("Service", "ServiceSubset", "Namespace", "Datacenter"), f"{where}: Redirect")
                if redirect.get("Datacenter"):
                    raise InvalidInput(f"{where}: Redirect.Datacenter: Yurt's mesh has one datacenter; leave it out")
                rsvc = _str(redirect.get("Service"), f"{where}: Redirect.Service") or name
                if rsvc == name and not redirect.get("ServiceSubset"):
                    raise InvalidInput(f"{where}: Redirect must name another Service or a ServiceSubset")
                if rsvc != name:
                    self._service_exists(rsvc, f"{where}: Redirect", known)
                    need_http(rsvc)
                    need_subset(rsvc, _str(redirect.get("ServiceSubset"), "Redirect.ServiceSubset"),
                                f"{where}: Redirect")
                elif redirect.get("ServiceSubset") not in subsets:
                    raise InvalidInput(f'{where}: Redirect.ServiceSubset "{redirect.get("ServiceSubset")}" is not '
                                       "one of its Subsets")
                if subsets or default:
                    raise InvalidInput(f"{where}: a resolver with Redirect has no Subsets or DefaultSubset of its own")
            failover = _obj(entry.get("Failover"), f"{where}: Failover", '{"*": {"Service": "api-backup"}}')
            for sname, fo in failover.items():
                w = f'{where}: Failover "{sname}"'
                if sname != "*" and sname not in subsets:
                    raise InvalidInput(f'{w}: "{sname}" is not one of its Subsets (or "*" for all)')
                fo = _obj(fo, w, '{"Service": "api-backup"}')
                _known_keys(fo, ("Service", "ServiceSubset", "Namespace"), w)
                fsvc = _str(fo.get("Service"), f"{w}.Service") or name
                if fsvc == name and not fo.get("ServiceSubset"):
                    raise InvalidInput(f"{w}: name another Service or a ServiceSubset to fail over to")
                if fsvc != name:
                    self._service_exists(fsvc, w, known)
                need_subset(fsvc, _str(fo.get("ServiceSubset"), f"{w}.ServiceSubset"), w)
            for k in ("ConnectTimeout", "RequestTimeout"):
                seconds(entry.get(k), f"{where}: {k}")
        elif kind == INTENTIONS:
            sources = _list(entry.get("Sources"), f"{where}: Sources", '[{"Name": "web", "Action": "allow"}]')
            names: set[str] = set()
            for i, src in enumerate(sources, 1):
                w = f"{where}: Sources[{i}]"
                src = _obj(src, w, '{"Name": "web", "Action": "allow"}')
                _known_keys(src, ("Name", "Action", "Permissions", "Description", "Type", "Precedence",
                                  "Namespace", "Partition", "LegacyID", "LegacyMeta", "LegacyCreateTime",
                                  "LegacyUpdateTime"), w)
                sname = _str(src.get("Name"), f"{w}.Name").strip()
                if not sname:
                    raise InvalidInput(f"{w}: Name is required (a service name or *)")
                if WILDCARD in sname and sname != WILDCARD:
                    raise InvalidInput(f'{w}: Name "{sname}": the wildcard * may only be the whole name')
                if sname in names:
                    raise InvalidInput(f'{w}: source "{sname}" is listed twice; merge them')
                names.add(sname)
                if src.get("Type") not in (None, "", "consul"):
                    raise InvalidInput(f'{w}: Type must be "consul"')
                if src.get("Permissions") and src.get("Action"):
                    raise InvalidInput(f"{w}: Action and Permissions are mutually exclusive; give one of them")
                if src.get("Permissions"):
                    src["Permissions"] = self.check_l7_intention(name, src["Permissions"], pending)
                elif str(src.get("Action", "")).lower() not in (ACTION_ALLOW, ACTION_DENY):
                    raise InvalidInput(f'{w}: Action must be "allow" or "deny" (or give L7 Permissions), not '
                                       f'{src.get("Action")!r}')
        elif kind == INGRESS:
            _check_ingress(where, entry, lambda s: self.protocol(s, pending), match_protocols=not from_job)
        elif kind == TERMINATING:
            _check_terminating(where, entry)
        elif kind == MESH:
            check_mesh(where, entry)
        return entry

    def _dependents(self, pending: dict[tuple[str, str], dict | None]) -> None:
        """A change of protocol (service-defaults, proxy-defaults) must leave every router,
        splitter, resolver and L7 intention on an HTTP service (Consul checks the same)."""
        for kind in (ROUTER, SPLITTER, RESOLVER):
            for _, row in self.store.keyed_list(TABLE, kind + "/"):
                if isinstance(row, ConfigEntry) and (kind, row.name) not in pending:
                    proto = self.protocol(row.name, pending)
                    if proto != "http":
                        raise InvalidInput(f'{kind} "{row.name}" needs service "{row.name}" to speak http, and this '
                                           f'change would make its protocol "{proto}"; delete the {kind} first')
        for ix in self.intentions.list():
            if ix.permissions and self.protocol(ix.destination_name, pending) != "http":
                raise InvalidInput(f"the L7 intention {ix.source_name} => {ix.destination_name} needs "
                                   f'"{ix.destination_name}" to speak http, and this change would make its protocol '
                                   f'"{self.protocol(ix.destination_name, pending)}"; delete or change that intention '
                                   "first")

    # -- writes --------------------------------------------------------------------------------
    def apply(self, raw: Any, cas: int | None = None) -> tuple[bool, int]:
        """PUT /v1/config: (written, index). With `cas`, written only while the entry's
        ModifyIndex is `cas` (0: only if it does not exist yet), as Consul's."""
        kind, name, entry = self.validate(raw)
        pending: dict[tuple[str, str], dict | None] = {(kind, name): entry}
        entry = self.check(kind, name, entry, pending)
        if kind in (SERVICE_DEFAULTS, PROXY_DEFAULTS):
            self._dependents(pending)
        if kind == TERMINATING:
            self._check_running_terminating(name, entry)
        if kind == INTENTIONS:
            return self._apply_intentions(name, entry, cas)
        return self._put(kind, name, entry, cas)

    def _put(self, kind: str, name: str, entry: dict[str, Any], cas: int | None) -> tuple[bool, int]:
        key = key_of(kind, name)

        def build(txn: Txn) -> bool:
            old = txn.keyed(TABLE, key)
            if cas is not None and _modify_index(old) != cas:
                return False
            create = old.create_index if isinstance(old, ConfigEntry) else txn.index
            txn.put_keyed(TABLE, key, ConfigEntry(kind=kind, name=name, entry=entry, create_index=create,
                                                  modify_index=txn.index))
            return True
        index, ok = self.store.keyed_write(build)
        return ok, index

    # -- the gateways of jobs (server.register_job) --------------------------------------------
    def write_job_gateways(self, job: Job) -> list[str]:
        """Write the config entry of each ingress / terminating gateway the job declares
        (`ingress-gateway/<service>`, `terminating-gateway/<service>`), overwriting what is
        there, as Nomad's Job.Register does before it stores the job; a refused entry refuses
        the job. Stopping or purging the job leaves the entries (Nomad never deletes them).
        The gateway proxy follows its entry (mesh/gateway.py). Answers the keys written."""
        written: list[str] = []
        for svc in _job_services(job):
            gateway = svc.connect.gateway if svc.connect is not None else None
            if gateway_kind(gateway) not in (INGRESS, TERMINATING):
                continue
            block, _ = gateway_entry(svc.name, gateway or {})
            body = {k: v for k, v in block.items() if k != "ConnectTimeoutMs"}
            kind, name, entry = self.validate(body)
            try:
                # the job's own listeners may carry HTTP at the edge into a tcp service (Yurt's
                # gateway parses the request itself), which the job's validation accepts
                entry = self.check(kind, name, entry, {(kind, name): entry}, from_job=True)
            except InvalidInput as e:
                raise InvalidInput(f'service "{svc.name}" > connect > gateway: its config entry '
                                   f"{kind}/{name} is refused: {e}") from None
            self._put(kind, name, entry, None)
            written.append(key_of(kind, name))
        return written

    def _check_running_terminating(self, name: str, entry: dict[str, Any]) -> None:
        """A terminating gateway that a job runs holds the identity (the workload identity's
        services) and the catalog entries of the services its job links: its entry may change
        how each linked service is reached (CAFile, CertFile, KeyFile, SNI; followed live),
        not which services it links."""
        wanted = sorted(str(s.get("Name")) for s in entry.get("Services") or [] if isinstance(s, dict))
        for job in self._jobs():
            for svc in _job_services(job):
                if svc.name != name or svc.connect is None or gateway_kind(svc.connect.gateway) != TERMINATING:
                    continue
                linked = sorted(linked_services(svc.connect.gateway))
                if linked != wanted:
                    raise Conflict(
                        f'terminating-gateway "{name}" is run by job "{job.id}", which links '
                        f'{", ".join(linked) or "nothing"}; this entry links {", ".join(wanted) or "nothing"}. '
                        "A linked service needs the gateway's workload identity and catalog entry, which "
                        "come from the job: change the job's gateway { terminating { service { ... } } } "
                        "and run it (that writes this entry too); CAFile, CertFile, KeyFile and SNI of the "
                        "linked services may be changed here")

    def delete(self, kind: str, name: str, cas: int | None = None) -> tuple[bool, int]:
        """DELETE /v1/config/<kind>/<name>: (deleted, index); deleting what is not there is fine."""
        check_kind(kind)
        if kind in (SERVICE_DEFAULTS, PROXY_DEFAULTS) and self._row(kind, name) is not None:
            self._dependents({(kind, name): None})
        if kind == INTENTIONS:
            return self._apply_intentions(name, None, cas)
        key = key_of(kind, name)

        def build(txn: Txn) -> bool:
            old = txn.keyed(TABLE, key)
            if cas is not None and (cas == 0 or _modify_index(old) != cas):
                return False
            if old is not None:
                txn.drop_keyed(TABLE, key)
            return True
        index, ok = self.store.keyed_write(build)
        return ok, index

    def _apply_intentions(self, dest: str, entry: dict[str, Any] | None, cas: int | None) -> tuple[bool, int]:
        """A service-intentions write: the intentions to `dest` become exactly its Sources (an
        existing pair keeps its ID and creation time); None deletes them all."""
        if dest != WILDCARD and WILDCARD in dest:
            raise InvalidInput(f'service-intentions "{dest}": the wildcard * may only be the whole name')
        current = {ix.source_name: ix for ix in self.intentions.list() if ix.destination_name == dest}
        now_index = max((ix.modify_index for ix in current.values()), default=0)
        if cas is not None and (now_index != cas or (entry is None and cas == 0)):
            return False, self.store.table_index("intentions")
        wanted: dict[str, Intention] = {}
        for src in (entry or {}).get("Sources") or []:
            sname = src["Name"].strip()
            body = {"Action": src.get("Action"), "Permissions": src.get("Permissions"),
                    "Description": src.get("Description") or "", "Meta": src.get("LegacyMeta") or {}}
            wanted[sname] = self.intentions.build(body, sname, dest, current.get(sname))

        def build(txn: Txn) -> bool:
            for sname, ix in current.items():
                if sname not in wanted:
                    txn.delete_intention(ix.id)
            for ix in wanted.values():
                txn.upsert_intention(ix)
            return True
        if not current and not wanted:
            return True, self.store.table_index("intentions")
        index, _ = self.store.keyed_write(build)
        return True, index

    # -- the sidecar's view ----------------------------------------------------------------------
    def chain(self, service: str) -> dict[str, Any]:
        """What a sidecar of `service` (inbound) or with `service` as an upstream needs: the
        protocol, the intentions to it in evaluation order, the default intention policy, and
        for HTTP its compiled discovery chain: Routes (first match wins; the last one, with no
        Match, sends everything else to the service itself), each with its Splits over
        Targets, each target a service and subset with its filter and timeouts."""
        proto = self.protocol(service)
        out: dict[str, Any] = {
            "Service": service, "Protocol": proto, "DefaultAllow": self.intentions.default_allow,
            "Intentions": [ix.public() for ix in self.intentions.match("destination", service)],
            "MeshDestinationsOnly": self.mesh_destinations_only(),
            "Routes": [], "Targets": {}}
        if proto != "http":
            return out
        targets: dict[str, dict[str, Any]] = out["Targets"]
        router = self._body(ROUTER, service) or {}
        routes = [*(router.get("Routes") or []), {"Match": None, "Destination": {}}]
        for r in routes:
            dest = dict(r.get("Destination") or {})
            svc = dest.get("Service") or service
            splits = self._splits(svc, dest.get("ServiceSubset") or "", targets, 0)
            resolver = self._body(RESOLVER, svc) or {}
            out["Routes"].append({
                "Match": (r.get("Match") or {}).get("HTTP") if r.get("Match") else None,
                "Destination": {
                    "Service": svc, "PrefixRewrite": dest.get("PrefixRewrite") or "",
                    "RequestTimeout": seconds(dest.get("RequestTimeout"), "RequestTimeout")
                    or seconds(resolver.get("RequestTimeout"), "RequestTimeout"),
                    "NumRetries": int(dest.get("NumRetries") or 0),
                    "RetryOnConnectFailure": bool(dest.get("RetryOnConnectFailure")),
                    "RetryOnStatusCodes": list(dest.get("RetryOnStatusCodes") or [])},
                "Splits": splits})
        return out

    def mesh_destinations_only(self) -> bool:
        """The mesh entry's TransparentProxy.MeshDestinationsOnly (false without the entry):
        every chain carries it, so a transparent sidecar follows it through the chain it
        already watches."""
        mesh = self._body(MESH, MESH) or {}
        return bool((mesh.get("TransparentProxy") or {}).get("MeshDestinationsOnly"))

    def _splits(self, svc: str, subset: str, targets: dict[str, dict[str, Any]], depth: int) -> list[dict[str, Any]]:
        if not subset and depth < 4:
            splitter = self._body(SPLITTER, svc)
            if splitter:
                out: list[dict[str, Any]] = []
                for sp in splitter.get("Splits") or []:
                    weight = round(float(sp.get("Weight") or 0), 2)
                    s2, sub2 = sp.get("Service") or svc, sp.get("ServiceSubset") or ""
                    if weight <= 0:
                        continue
                    if s2 != svc and not sub2:
                        for inner in self._splits(s2, "", targets, depth + 1):
                            out.append({"Weight": round(weight * inner["Weight"] / 100, 4), "Target": inner["Target"]})
                    else:
                        out.append({"Weight": weight, "Target": self._target(s2, sub2, targets, 0)})
                return out
        return [{"Weight": 100.0, "Target": self._target(svc, subset, targets, 0)}]

    def _target(self, svc: str, subset: str, targets: dict[str, dict[str, Any]], depth: int) -> str:
        resolver = self._body(RESOLVER, svc) or {}
        redirect = resolver.get("Redirect") or {}
        if redirect and depth < 4:
            return self._target(redirect.get("Service") or svc, redirect.get("ServiceSubset") or "", targets, depth + 1)
        subset = subset or resolver.get("DefaultSubset") or ""
        tid = f"{subset}.{svc}" if subset else svc
        if tid in targets:
            return tid
        sub = (resolver.get("Subsets") or {}).get(subset) or {}
        target: dict[str, Any] = {
            "Service": svc, "Subset": subset, "Filter": sub.get("Filter") or "",
            "OnlyPassing": bool(sub.get("OnlyPassing")),
            "ConnectTimeout": seconds(resolver.get("ConnectTimeout"), "ConnectTimeout") or DEFAULT_CONNECT_TIMEOUT,
            "Failover": ""}
        targets[tid] = target
        failover = resolver.get("Failover") or {}
        fo = failover.get(subset) or failover.get("*")
        if fo and depth < 4:
            target["Failover"] = self._target(fo.get("Service") or svc, fo.get("ServiceSubset") or "", targets,
                                              depth + 1)
        return tid


# -- helpers ------------------------------------------------------------------------------------

def check_kind(kind: str) -> None:
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, 1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise InvalidInput(f'invalid config entry kind "{kind}"{hint}: it must be one of {", ".join(KINDS)}')


def _modify_index(row: Any) -> int:
    return row.modify_index if isinstance(row, ConfigEntry) else 0


def _public(row: ConfigEntry) -> dict[str, Any]:
    return {"Kind": row.kind, "Name": row.name, **row.entry, "CreateIndex": row.create_index,
            "ModifyIndex": row.modify_index}


def _intentions_entry(dest: str, ixs: list[Intention]) -> dict[str, Any]:
    sources = []
    for ix in ordered(ixs):
        src: dict[str, Any] = {"Name": ix.source_name}
        if ix.permissions:
            src["Permissions"] = ix.permissions
        else:
            src["Action"] = ix.action
        src.update({"Precedence": precedence(ix.source_name, dest), "Type": ix.source_type or "consul",
                    "Description": ix.description, "LegacyID": ix.id})
        if ix.meta:
            src["LegacyMeta"] = ix.meta
        sources.append(src)
    return {"Kind": INTENTIONS, "Name": dest, "Sources": sources,
            "CreateIndex": min(ix.create_index for ix in ixs), "ModifyIndex": max(ix.modify_index for ix in ixs)}


def _job_services(job: Job) -> list[Any]:
    out: list[Any] = []
    for tg in job.task_groups or []:
        out.extend(tg.services or [])
        for task in tg.tasks or []:
            out.extend(task.services or [])
    return out


def _check_ingress(where: str, entry: dict[str, Any], protocol: Callable[[str], str],
                   match_protocols: bool = True) -> None:
    tls = _obj(entry.get("TLS"), f"{where}: TLS", '{"Enabled": true}')
    _known_keys(tls, ("Enabled", "TLSMinVersion"), f"{where}: TLS")
    if tls.get("Enabled") is not None and not isinstance(tls["Enabled"], bool):
        raise InvalidInput(f"{where}: TLS.Enabled must be true or false")
    if tls.get("TLSMinVersion") not in (None, "", "TLSv1_2", "TLSv1_3"):
        raise InvalidInput(f'{where}: TLS.TLSMinVersion "{tls["TLSMinVersion"]}" is not served: use "TLSv1_2" '
                           'or "TLSv1_3"')
    listeners = _list(entry.get("Listeners"), f"{where}: Listeners",
                      '[{"Port": 8080, "Protocol": "tcp", "Services": [{"Name": "api"}]}]')
    ports: set[int] = set()
    for i, lst in enumerate(listeners, 1):
        w = f"{where}: Listeners[{i}]"
        lst = _obj(lst, w, '{"Port": 8080, "Protocol": "http", "Services": [{"Name": "api"}]}')
        _known_keys(lst, ("Port", "Protocol", "Services"), w)
        port = lst.get("Port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidInput(f"{w}: Port must be a port number from 1 to 65535, not {port!r}")
        if port in ports:
            raise InvalidInput(f"{w}: port {port} is used by another listener")
        ports.add(port)
        proto = (_str(lst.get("Protocol"), f"{w}.Protocol") or "tcp").lower()
        if proto not in PROTOCOLS:
            raise InvalidInput(f'{w}: Protocol "{proto}" is not supported; use "tcp" or "http"')
        lst["Protocol"] = proto
        services = _list(lst.get("Services"), f"{w}.Services", '[{"Name": "api"}]')
        if proto == "tcp" and len(services) != 1:
            raise InvalidInput(f"{w}: a tcp listener takes exactly one service, not {len(services)}")
        for j, s in enumerate(services, 1):
            sw = f"{w}.Services[{j}]"
            s = _obj(s, sw, '{"Name": "api", "Hosts": ["api.example.com"]}')
            _known_keys(s, ("Name", "Hosts"), sw)
            sname = _str(s.get("Name"), f"{sw}.Name")
            if not sname:
                raise InvalidInput(f"{sw}: Name is required (a mesh service, or * on an http listener)")
            hosts = _list(s.get("Hosts"), f"{sw}.Hosts", '["api.example.com"]')
            if any(not isinstance(h, str) or not h for h in hosts):
                raise InvalidInput(f"{sw}.Hosts must be a list of host names")
            if proto == "tcp" and (sname == WILDCARD or hosts):
                raise InvalidInput(f'{sw}: "*" and Hosts are only for http listeners')
            if sname == WILDCARD:
                raise InvalidInput(f'{sw}: the wildcard service "*" is not served by Yurt\'s ingress gateway: '
                                   "name each service (with its Hosts)")
            if match_protocols and protocol(sname) != proto:
                raise InvalidInput(f'{sw}: service "{sname}" has protocol "{protocol(sname)}", which does not match '
                                   f'defined listener protocol "{proto}"; write a service-defaults entry for "{sname}" '
                                   f'with Protocol = "{proto}", or change the listener\'s Protocol')


def _check_terminating(where: str, entry: dict[str, Any]) -> None:
    services = _list(entry.get("Services"), f"{where}: Services", '[{"Name": "billing", "CAFile": "/etc/ca.pem"}]')
    for i, s in enumerate(services, 1):
        w = f"{where}: Services[{i}]"
        s = _obj(s, w, '{"Name": "billing"}')
        _known_keys(s, ("Name", "CAFile", "CertFile", "KeyFile", "SNI"), w)
        if not _str(s.get("Name"), f"{w}.Name"):
            raise InvalidInput(f"{w}: Name is required (the outside service's name)")
        for k in ("CAFile", "CertFile", "KeyFile", "SNI"):
            _str(s.get(k), f"{w}.{k}")
        if bool(s.get("CertFile")) != bool(s.get("KeyFile")):
            raise InvalidInput(f"{w}: CertFile and KeyFile go together; give both or neither")




# -- the mesh entry -----------------------------------------------------------------------------

TLS_VERSIONS = ("TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3")   # Consul's types.TLSVersion


def check_mesh(where: str, entry: dict[str, Any]) -> None:
    """Consul's `mesh` entry, as far as Yurt's sidecars apply it: TransparentProxy
    { MeshDestinationsOnly } (followed live by transparent sidecars through their chain); TLS
    Incoming / Outgoing TLSMinVersion and TLSMaxVersion where they say what the sidecars do
    (TLS 1.3 only, mesh/tls.py); the rest is refused naming it."""
    tp = _obj(entry.get("TransparentProxy"), f"{where}: TransparentProxy", '{"MeshDestinationsOnly": true}')
    _known_keys(tp, ("MeshDestinationsOnly",), f"{where}: TransparentProxy")
    if tp.get("MeshDestinationsOnly") is not None and not isinstance(tp["MeshDestinationsOnly"], bool):
        raise InvalidInput(f"{where}: TransparentProxy.MeshDestinationsOnly must be true or false")
    if tp:
        entry["TransparentProxy"] = tp
    permissive = entry.get("AllowEnablingPermissiveMutualTLS")
    if permissive is not None and not isinstance(permissive, bool):
        raise InvalidInput(f"{where}: AllowEnablingPermissiveMutualTLS must be true or false")
    if permissive:
        raise InvalidInput(f"{where}: AllowEnablingPermissiveMutualTLS: Yurt's sidecars accept mutual TLS only "
                           "(there is no permissive mode to enable); leave it out or false")
    http = _obj(entry.get("HTTP"), f"{where}: HTTP", "{}")
    if http:
        field = next(iter(http))
        raise InvalidInput(f'{where}: HTTP.{field} is not supported: Yurt\'s sidecars neither add nor strip '
                           "X-Forwarded-Client-Cert (nor normalize requests as Envoy's options do); leave HTTP out")
    entry.pop("HTTP", None)
    tls = _obj(entry.get("TLS"), f"{where}: TLS", '{"Incoming": {"TLSMinVersion": "TLSv1_3"}}')
    _known_keys(tls, ("Incoming", "Outgoing"), f"{where}: TLS")
    for side in ("Incoming", "Outgoing"):
        w = f"{where}: TLS.{side}"
        d = _obj(tls.get(side), w, '{"TLSMinVersion": "TLSv1_3"}')
        _known_keys(d, ("TLSMinVersion", "TLSMaxVersion", "CipherSuites"), w)
        for k in ("TLSMinVersion", "TLSMaxVersion"):
            v = _str(d.get(k), f"{w}.{k}")
            if v and v not in TLS_VERSIONS:
                raise InvalidInput(f'{w}.{k} "{v}" is not a TLS version; use one of {", ".join(TLS_VERSIONS)}')
            if v not in ("", "TLS_AUTO", "TLSv1_3"):
                raise InvalidInput(f'{w}.{k} "{v}": Yurt\'s sidecars speak TLS 1.3 only, in both directions, and '
                                   'cannot be set to another version; use "TLSv1_3" (or "TLS_AUTO") or leave it out')
        if d.get("CipherSuites"):
            raise InvalidInput(f"{w}.CipherSuites: cipher suites only apply to connections negotiated with TLS 1.2 "
                               "or earlier, and Yurt's sidecars speak TLS 1.3 only; leave CipherSuites out")
