"""What every route shares: blocking queries, index headers, JSON bodies, write answers.

Errors are raised as `yurt.errors` values and answered by `errors.install` in one place."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from yurt.errors import InvalidInput
from yurt.server.reads import Reads, Tables
from yurt.structs import Allocation, parse_duration
from yurt.structs.alloc import head_json

DEFAULT_WAIT = 300.0   # Nomad's default blocking-query wait: 5 minutes
MAX_WAIT = 600.0       # and its cap: 10 minutes


def _query(request: Request) -> dict[str, str]:
    """The query's parameters (the last of a repeated one, as `request.query_params.get`),
    parsed once a request; a plain query (no escapes) without urllib's parser: every client
    agent's watch asks with ?index=&wait= (bench/scheduler.py's http section, profiled)."""
    q = request.scope.get("yurt.query")
    if q is None:
        raw = request.scope.get("query_string", b"")
        if b"%" in raw or b"+" in raw:
            q = {k: request.query_params[k] for k in request.query_params}
        else:
            q = {}
            for part in raw.decode("latin-1").split("&"):
                if part:
                    k, _, v = part.partition("=")
                    q[k] = v
        request.scope["yurt.query"] = q
    return q


def wait_seconds(request: Request) -> float:
    raw = _query(request).get("wait")
    if not raw:
        return DEFAULT_WAIT
    try:
        seconds = float(raw) if raw.replace(".", "", 1).isdigit() else parse_duration(raw) / 1e9
    except ValueError:
        raise InvalidInput(f'invalid wait "{raw}": use a duration like "5s" or "1m"') from None
    return max(0.0, min(seconds, MAX_WAIT))


def query_index(request: Request) -> int:
    raw = _query(request).get("index", "0") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise InvalidInput(f'invalid index "{raw}": must be a whole number') from None


async def block(request: Request, reads: Reads, tables: Tables = None) -> int:
    """Blocking query: wait until `tables` (or anything) change past ?index=, or ?wait= passes;
    their index (never 0). ?wait= is read only when there is an ?index= to wait past."""
    index = query_index(request)
    return await reads.block(tables, index, wait_seconds(request) if index > 0 else 0.0)


def reply(body: Any, index: int | None = None, status: int = 200, headers: dict | None = None) -> Response:
    h = {"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}
    if index is not None:
        h["X-Nomad-Index"] = str(index)
    if headers:
        h.update(headers)
    return Response(_compact(body), status_code=status, headers=h, media_type="application/json")


class JSONCache:
    """Serialized allocations, kept by the stored object itself.

    The store never changes a stored allocation in place (every write stores a new copy), so the
    same object always serializes to the same document: a node's watch answering its whole list
    after each change re-serializes only what changed. The job, the largest part of an
    allocation and shared by every allocation of one plan, is serialized once per job object.
    Entries hold their object (so its id is not reused while cached) and the oldest go first."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._rows: OrderedDict[str, tuple[Any, bytes]] = OrderedDict()
        self._jobs: OrderedDict[int, tuple[Any, bytes]] = OrderedDict()
        self._stubs: OrderedDict[str, tuple[Any, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, table: OrderedDict[Any, tuple[Any, bytes]], key: Any, obj: Any,
             dump: Callable[[], bytes], size: int) -> bytes:
        with self._lock:
            hit = table.get(key)
            if hit is not None and hit[0] is obj:
                return hit[1]
        data = dump()
        with self._lock:
            table[key] = (obj, data)
            table.move_to_end(key)
            while len(table) > size:
                table.popitem(last=False)
        return data

    def alloc(self, a: Allocation) -> bytes:
        def dump() -> bytes:
            if a.job is None:
                return a.model_dump_json(by_alias=True).encode()
            head = head_json(a)
            job = self._get(self._jobs, id(a.job), a.job,
                            lambda: a.job.model_dump_json(by_alias=True).encode(),  # type: ignore[union-attr]
                            max(64, self.size // 20))
            return b'{"Job":' + job + (b"," + head[1:] if len(head) > 2 else b"}")
        return self._get(self._rows, a.id, a, dump, self.size)


    def stub(self, a: Allocation) -> bytes:
        """The allocation's list row (`Allocation.stub`), as `reply` would serialize it."""
        return self._get(self._stubs, a.id, a, lambda: _compact(a.stub()), self.size)


def _compact(body: Any) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse renders it, by orjson (~5 x less CPU than
    the json module for the answers' dicts and lists). What orjson does not take (an integer
    past 64 bits) goes through the json module, which renders it or raises as it always did."""
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


ALLOC_JSON = JSONCache()


def reply_stubs(allocs: Iterable[Allocation], index: int | None = None) -> Response:
    """Allocations' list rows (`/v1/job/<id>/allocations` and the like), each serialized once
    per stored version (`JSONCache.stub`): `job status` and deployments are watched by polling."""
    body = b"[" + b",".join(ALLOC_JSON.stub(a) for a in allocs) + b"]"
    h = {"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}
    if index is not None:
        h["X-Nomad-Index"] = str(index)
    return Response(body, media_type="application/json", headers=h)


def reply_allocs(allocs: Iterable[Allocation], index: int | None = None) -> Response:
    """Allocations serialized by pydantic straight to JSON (~4 x less CPU than dicts through the
    json module), each once per stored version (`JSONCache`): a node's allocations, which its
    client watches with a blocking query."""
    body = b"[" + b",".join(ALLOC_JSON.alloc(a) for a in allocs) + b"]"
    h = {"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}
    if index is not None:
        h["X-Nomad-Index"] = str(index)
    return Response(body, media_type="application/json", headers=h)


def reply_client_allocs(allocs: Iterable[Allocation], since: int, index: int) -> Response:
    """A client agent's view of its node's allocations (`GET /v1/internal/node/<id>/allocations`):
    every allocation's AllocModifyIndex (`Allocs`, Nomad's Node.GetClientAllocs) and the whole
    document of those whose AllocModifyIndex is past `since` (`Changed`), so a change costs the
    node what changed, not its whole list, jobs included."""
    allocs = list(allocs)
    body = (b'{"Allocs":' + orjson.dumps({a.id: a.alloc_modify_index for a in allocs})
            + b',"Changed":[' + b",".join(ALLOC_JSON.alloc(a) for a in allocs if a.alloc_modify_index > since)
            + b"]}")
    return Response(body, media_type="application/json",
                    headers={"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0", "X-Nomad-Index": str(index)})


def write_reply(result: dict[str, Any]) -> Response:
    """The answer to a write: the server's result with Nomad's QueryMeta fields, at its index."""
    return reply({**result, "KnownLeader": True, "LastContact": 0}, result["Index"])


async def json_body(request: Request, *, required: bool = True) -> Any:
    """The request's JSON; an empty body is an error unless `required=False` (then {})."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise InvalidInput("request body is empty: send a JSON object")
        return {}
    try:
        if len(raw) > 256 * 1024:  # a big job: decoded on a worker thread, the loop keeps answering
            return await run_in_threadpool(json.loads, raw)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None


def flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def strict_flag(request: Request, name: str) -> bool:
    """A boolean query parameter as Nomad parses it (Go's ParseBool); absent or empty: false;
    anything else is a 400 naming it."""
    raw = request.query_params.get(name, "")
    if raw == "" or raw in _GO_FALSE:
        return False
    if raw in _GO_TRUE:
        return True
    raise InvalidInput(f'query parameter {name}="{raw}" is not a boolean: write {name}=true or {name}=false')


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON, which must be an object (400 saying so if it is not)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object, not {type(body).__name__}: {json.dumps(body)[:80]}")
    return body
