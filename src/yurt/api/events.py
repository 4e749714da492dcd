"""/v1/event/stream: Nomad's event stream (command/agent/event_endpoint.go), newline-delimited JSON.

One line per write that made events the caller may see: `{"Index": N, "Events": [{"Topic",
"Type", "Key", "Namespace", "FilterKeys", "Index", "Payload": {...}}]}`; `{}` at once and every
`HEARTBEAT` seconds while nothing happens, so clients and proxies keep the connection. Query:
`topic=Topic[:key]` (repeatable; `*` for every topic or key; none: every topic), `index=N` (start
at the first buffered write at or after N, replaying it), `namespace=` (default "default", `*`:
every namespace the token may read). The events come from the server's buffer
(`state/events.py`): this route pulls from it, waiting on the store's index between pulls.

ACLs: the Job, Allocation, Evaluation, Deployment and Service topics need read-job in the
event's namespace, the Node topic node:read; events the token may not see are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from yurt.errors import InvalidInput, PermissionDenied, Unavailable
from yurt.server.acl import Identity
from yurt.server.events import TOPICS, Batch, Event

from .authz import Requirement, check, identity
from .forward import ServerReads

router = APIRouter()
log = logging.getLogger("yurt.events")

HEARTBEAT = 10.0   # seconds between `{}` lines while nothing happens


def parse_topics(raw: list[str]) -> dict[str, set[str]]:
    """`Topic[:key]` values → {topic: keys} ("*" for all); none → every topic. 400 naming a bad one."""
    if not raw:
        return {"*": {"*"}}
    out: dict[str, set[str]] = {}
    for value in raw:
        topic, sep, key = value.partition(":")
        if sep and not key:
            raise InvalidInput(f'Invalid topic query: "{value}" has an empty key; write "{topic}" or "{topic}:*" '
                               f'for all of its keys, or "{topic}:<key>"')
        if topic != "*" and topic not in TOPICS:
            raise InvalidInput(f'Invalid topic query: unknown topic "{topic}"; the topics are {", ".join(TOPICS)} '
                               '(or * for all of them)')
        out.setdefault(topic, set()).add(key or "*")
    return out


def parse_index(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise InvalidInput(f'invalid index "{raw}": must be a whole number (0 or more), the index to '
                           'start the stream at') from None
    if index < 0:
        raise InvalidInput(f'invalid index "{raw}": must be 0 or more')
    return index


def check_region(request: Request) -> None:
    """`?region=`: Yurt clusters are one region; another one is refused, not ignored."""
    region = request.query_params.get("region")
    own = request.app.state.agent.config.region
    if region and region != own:
        raise InvalidInput(f'region "{region}": this cluster is region "{own}" (Yurt does not federate regions)')


class Filter:
    def __init__(self, topics: dict[str, set[str]], namespace: str, ident: Identity | None) -> None:
        self.topics = topics
        self.namespace = namespace
        self.ident = ident
        self._allowed: dict[tuple[str, str], bool] = {}

    def _may(self, ev: Event) -> bool:
        if self.ident is None:
            return True
        key = (ev.topic, ev.namespace)
        if key not in self._allowed:
            req = Requirement("node", "read") if ev.topic == "Node" else Requirement("namespace", "read-job")
            self._allowed[key] = check(self.ident, req, ev.namespace or "*")
        return self._allowed[key]

    def match(self, ev: Event) -> bool:
        keys = self.topics.get(ev.topic, set()) | self.topics.get("*", set())
        if not keys:
            return False
        if "*" not in keys and ev.key not in keys and not any(k in keys for k in ev.filter_keys or ()):
            return False
        if ev.namespace and self.namespace != "*" and ev.namespace != self.namespace:
            return False
        return self._may(ev)

    def frame(self, batch: Batch) -> bytes | None:
        events = [e.to_json() for e in batch.events() if self.match(e)]
        if not events:
            return None
        return json.dumps({"Index": batch.index, "Events": events}).encode() + b"\n"


@router.get("/v1/event/stream")
async def event_stream(request: Request, reads: ServerReads):
    q = request.query_params
    ident = identity(request)
    namespace = q.get("namespace") or "default"
    if ident is not None and not _may_any(ident, {"*": {"*"}}, namespace):   # a stranger learns nothing more
        raise PermissionDenied(f'Permission denied: the event stream needs namespace "{namespace}" capability '
                               'read-job (Job, Allocation, Evaluation, Deployment, Service) or node:read (Node)')
    unknown = sorted(set(q) - {"topic", "index", "namespace", "region", "stale"})
    if unknown:
        raise InvalidInput(f'unknown query parameter "{unknown[0]}" for /v1/event/stream; it takes topic, '
                           'index and namespace')
    check_region(request)
    topics = parse_topics(q.getlist("topic"))
    start = parse_index(q.get("index"))
    buffer = reads.events
    if buffer is None:
        raise Unavailable("the event stream is off on this server: server { enable_event_broker = false }")
    if ident is not None and not _may_any(ident, topics, namespace):
        raise PermissionDenied(f'Permission denied: the event stream needs namespace "{namespace}" capability '
                               'read-job (Job, Allocation, Evaluation, Deployment, Service) or node:read (Node)')
    filt = Filter(topics, namespace, ident)
    cursor = buffer.start(start)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal cursor
        yield b"{}\n"
        seen = reads.index()
        while True:
            got = buffer.since(cursor)
            if got.lost:
                yield json.dumps({"Error": f"this stream fell behind the server's event buffer (index {cursor} "
                                           f"is no longer kept; the oldest is {got.oldest}): reconnect with "
                                           f"?index={got.oldest}"}).encode() + b"\n"
                return
            for batch in got.batches:
                try:
                    line = filt.frame(batch)
                except Exception:   # one write's events that cannot be built must not end every stream
                    log.exception("the events of write %d could not be built", batch.index)
                    line = json.dumps({"Error": f"the events of index {batch.index} could not be built; "
                                                "the agent's log says why"}).encode() + b"\n"
                if line is not None:
                    yield line
                cursor = batch.index
            now = await reads.block(None, seen, HEARTBEAT)
            if now == seen:
                if await request.is_disconnected():
                    return
                yield b"{}\n"
            seen = now

    return StreamingResponse(stream(), media_type="application/json",
                             headers={"X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"})


def _may_any(ident: Identity, topics: dict[str, set[str]], namespace: str) -> bool:
    """Whether the caller may see any of the topics asked (else it is refused at once, not given an
    empty stream)."""
    names = set(topics) if "*" not in topics else set(TOPICS)
    ns = "*" if namespace == "*" else namespace
    return any(check(ident, Requirement("node", "read") if t == "Node" else Requirement("namespace", "read-job"), ns)
               for t in names)
