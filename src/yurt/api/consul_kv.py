"""Consul's KV store (/v1/kv/<key>) and sessions (/v1/session/*), as Consul's HTTP API serves
them: base64 values in JSON (or the bytes with ?raw), ?recurse, ?keys with ?separator, ?cas,
?acquire and ?release with a session, blocking queries on the "kv" and "sessions" tables, and
Consul's status codes (404 with X-Consul-Index for a missing key, 413 for a value over 512 KiB,
400 for conflicting flags). The writes are `Server.kv`'s (server/kv.py); the reads `Server.reads`'.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from yurt.errors import InvalidInput, NotFound, PermissionDenied
from yurt.server.kv import (MAX_VALUE_SIZE, entry_json, key_list, parse_session, session_json, too_large,
                            value_bytes)

from .authz import identity
from .common import json_body
from .consul_common import agent_of, cblock, consul_route, consul_router, creply, headers, reads_of
from .forward import to_server
from .openapi import body

router = consul_router()

RAW_BODY = {"requestBody": {"required": False, "description": "the value's bytes (up to 512 KiB)",
                            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                "format": "binary"}}}}}
SESSION_BODY = body({"type": "object", "properties": {
    "Name": {"type": "string"}, "Node": {"type": "string", "description": "default: this agent's node"},
    "LockDelay": {"type": ["string", "integer"], "description": 'a duration ("15s"); a number below 1000 is seconds'},
    "Behavior": {"type": "string", "enum": ["release", "delete"]},
    "TTL": {"type": "string", "description": "10s to 86400s; invalidated after 2 x TTL without a renew"},
    "Checks": {"type": "array", "items": {"type": "string"}},
    "NodeChecks": {"type": "array", "items": {"type": "string"}},
    "ServiceChecks": {"type": "array", "items": {"type": "object", "properties": {
        "ID": {"type": "string"}, "Namespace": {"type": "string"}}}}}}, required=False)


def _kv(request: Request):
    return agent_of(request).server.kv


class _Rights:
    """What the caller may do with each key and session (ACLs on): Consul's `key`/`key_prefix`
    and `session`/`session_prefix` rules, else `operator` (server/acl.py). The route checked
    that the caller has the right on some key or node (api/authz.py); this checks each one."""

    def __init__(self, request: Request) -> None:
        self.ident = identity(request)

    def key(self, key: str, level: str) -> bool:
        i = self.ident
        if i is None or i.management:
            return True
        if i.workload is not None:
            return False
        return (i.is_node and level != "write") or i.acl.allow_key(key, level)

    def need_key(self, key: str, level: str) -> None:
        if not self.key(key, level):
            raise PermissionDenied(f'Permission denied: this needs key "{key}" {level} (a key or key_prefix rule, '
                                   f'or operator:{"write" if level == "write" else "read"})')

    def need_under(self, prefix: str, level: str) -> None:
        """A recursive read or a key listing: refused at once when no key under `prefix` could
        be seen (before a blocking query waits); otherwise its rows are filtered by `key`."""
        i = self.ident
        if i is None or i.management or (i.is_node and i.workload is None):
            return
        if i.workload is None and i.acl.may_see_under(prefix, level):
            return
        raise PermissionDenied(f'Permission denied: this needs key_prefix "{prefix}" {level} (or a key or '
                               f'key_prefix rule under it, or operator:read)')

    def need_tree(self, prefix: str) -> None:
        i = self.ident
        if i is None or i.management:
            return
        if i.workload is None and not i.is_node and i.acl.allow_key_tree(prefix):
            return
        raise PermissionDenied(f'Permission denied: deleting every key under "{prefix}" needs key_prefix '
                               f'"{prefix}" write (or operator:write) and no rule under it giving less')

    def session(self, node: str, level: str) -> bool:
        i = self.ident
        return i is None or i.management or (i.workload is None and i.acl.allow_session(node, level))

    def need_session(self, node: str, level: str) -> None:
        if not self.session(node, level):
            raise PermissionDenied(f'Permission denied: this needs session "{node}" {level} (a session or '
                                   f'session_prefix rule, or operator:{level})')


def _key(raw: str) -> str:
    key = raw[1:] if raw.startswith("/") else raw   # Consul strips one leading "/"
    if "../" in key or key == "..":
        raise InvalidInput(f'key "{key}" contains a path traversal sequence ("..")')
    return key


def _uint(request: Request, name: str) -> int | None:
    if name not in request.query_params:
        return None
    raw = request.query_params[name]
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 64:
        raise InvalidInput(f'invalid ?{name}="{raw}": must be a whole number from 0 to 2^64-1')
    return value


def _conflicting(request: Request, *flags: str) -> None:
    given = [f for f in flags if f in request.query_params]
    if len(given) > 1:
        raise InvalidInput(f"Conflicting flags: {request.url.query} (use only one of "
                           f"{', '.join('?' + f for f in flags)})")


# -- KV -----------------------------------------------------------------------------------------
@router.get("/v1/kv/{key:path}")
@consul_route
async def kv_get(request: Request, key: str):
    key = _key(key)
    q = request.query_params
    recurse, keys = "recurse" in q, "keys" in q
    if not (recurse or keys) and not key:
        raise InvalidInput("Missing key name")
    rights = _Rights(request)
    level = "list" if keys else "read"
    if recurse or keys:
        rights.need_under(key, level)
    else:
        rights.need_key(key, "read")
    index = await cblock(request, "kv")
    reads = reads_of(request)
    if keys:
        sep = q.get("separator", q.get("seperator", ""))
        listed = key_list([e.key for e in reads.kv_list(key) if rights.key(e.key, level)], key, sep)
        if not listed and key:
            return Response(status_code=404, headers=headers(request, index))
        return creply(request, listed, index)
    if recurse:
        rows = [e for e in reads.kv_list(key) if rights.key(e.key, level)]
    else:
        rows = [e for e in [reads.kv_get(key)] if e is not None]
    if not rows:
        return Response(status_code=404, headers=headers(request, index))
    if "raw" in q and not recurse:
        return Response(value_bytes(rows[0]), media_type="text/plain",
                        headers={**headers(request, index), "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "sandbox"})
    return creply(request, [entry_json(e) for e in rows], index)


@router.put("/v1/kv/{key:path}", openapi_extra=RAW_BODY)
@consul_route
async def kv_put(request: Request, key: str):
    key = _key(key)
    if not key:
        raise InvalidInput("Missing key name")
    _conflicting(request, "cas", "acquire", "release")
    _Rights(request).need_key(key, "write")
    flags, cas = _uint(request, "flags") or 0, _uint(request, "cas")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_VALUE_SIZE:
        raise too_large(int(length))
    value = await request.body()
    if len(value) > MAX_VALUE_SIZE:
        raise too_large(len(value))
    q = request.query_params
    ok = _kv(request).put(key, value or None, flags=flags, cas=cas, acquire=q.get("acquire") if "acquire" in q
                          else None, release=q.get("release") if "release" in q else None)
    return creply(request, ok, reads_of(request).table_index("kv"))


@router.delete("/v1/kv/{key:path}")
@consul_route
async def kv_delete(request: Request, key: str):
    key = _key(key)
    _conflicting(request, "recurse", "cas")
    recurse = "recurse" in request.query_params
    if recurse:
        _Rights(request).need_tree(key)
    else:
        _Rights(request).need_key(key, "write")
    ok = _kv(request).delete(key, recurse=recurse, cas=_uint(request, "cas"))
    return creply(request, ok, reads_of(request).table_index("kv"))


# -- sessions -----------------------------------------------------------------------------------
@router.put("/v1/session/create", openapi_extra=SESSION_BODY)
async def session_create(request: Request):
    agent = agent_of(request)
    if agent.server is None:   # the session's default node is this (client) agent's
        return await to_server(request, params={"node": request.query_params.get("node") or agent.config.name})
    return await _create(request)


@consul_route
async def _create(request: Request):
    default_node = request.query_params.get("node") or agent_of(request).config.name
    body = await json_body(request, required=False)
    _Rights(request).need_session(parse_session(body, default_node).node, "write")
    s = _kv(request).create_session(body, default_node)
    return creply(request, {"ID": s.id}, s.modify_index)


@router.put("/v1/session/destroy/{session_id}")
@consul_route
async def session_destroy(request: Request, session_id: str):
    _own_session(request, session_id)
    _kv(request).invalidate(session_id)
    return creply(request, True, reads_of(request).table_index("sessions"))


@router.put("/v1/session/renew/{session_id}")
@consul_route
async def session_renew(request: Request, session_id: str):
    _own_session(request, session_id)
    s = _kv(request).renew(session_id)
    if s is None:
        raise NotFound(f"Session id '{session_id}' not found")
    return creply(request, [session_json(s)], reads_of(request).table_index("sessions"))


@router.get("/v1/session/info/{session_id}")
@consul_route
async def session_info(request: Request, session_id: str):
    index = await cblock(request, "sessions")
    s = reads_of(request).session(session_id)
    shown = s is not None and _Rights(request).session(s.node, "read")   # as Consul: filtered
    return creply(request, [session_json(s)] if shown else [], index)


@router.get("/v1/session/node/{node}")
@consul_route
async def session_node(request: Request, node: str):
    index = await cblock(request, "sessions")
    rights = _Rights(request)
    return creply(request, [session_json(s) for s in reads_of(request).sessions(node)
                            if rights.session(s.node, "read")], index)


@router.get("/v1/session/list")
@consul_route
async def session_list(request: Request):
    index = await cblock(request, "sessions")
    rights = _Rights(request)
    return creply(request, [session_json(s) for s in reads_of(request).sessions()
                            if rights.session(s.node, "read")], index)


def _own_session(request: Request, session_id: str) -> None:
    """Destroying or renewing a session needs session write on its node (a missing one is
    answered as before: destroy true, renew 404)."""
    s = reads_of(request).session(session_id)
    if s is not None:
        _Rights(request).need_session(s.node, "write")
