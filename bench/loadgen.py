"""A load generator that plays many client agents against one server, in one asyncio process.

    python bench/loadgen.py URL --nodes 5000 --part 0 --parts 2

Used by bench/scheduler.py (a few of these processes, one per share of the nodes); not a
benchmark by itself. Each node does what src/yurt/client/node_agent.py does, over HTTP/1.1
keep-alive connections of its own (two per node, as an agent's pooled client holds while its
watch is open):

- registers through ``PUT /v1/internal/node/register`` with its SecretID,
- heartbeats through ``PUT /v1/internal/node/<id>/heartbeat`` every half of the TTL the server
  answered (first beats spread over one period),
- keeps a blocking query on its allocations open, as the node agent's:
  ``GET /v1/internal/node/<id>/allocations?since=S&index=N&wait=30s`` (every allocation's
  AllocModifyIndex, whole only those past ``since``; Nomad's ``/v1/node/<id>/allocations``, the
  whole list, from a server without it), the next one from the ``X-Nomad-Index`` of the last
  answer, and notes when it first sees each allocation (``time.monotonic()``: the same clock in
  every process on Linux).

The HTTP client is a minimal one on an asyncio protocol (uvloop when installed) and answers are
parsed with orjson: an off-the-shelf async client costs ~10 x more CPU a request, and the
generator shares the 2 cores with the server it measures.

Commands on stdin, one a line; answers on stdout, one JSON object a line:
``stats`` (counters so far), ``seen`` (per job: allocations seen and the last first-seen time),
``stop`` (stops every node, prints the final stats, exits). Stops by itself when stdin closes or
after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WATCH_WAIT = "30s"          # as the node agent's WATCH_WAIT


def secret_for(node_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, "yurt-bench-" + node_id))


class HTTPError(Exception):
    pass


CONNECTING = 64            # connections being opened at once (a burst overflows the server's backlog)


class _Answer(asyncio.Protocol):
    """The reading half of a connection: bytes in, one parsed HTTP/1.1 answer out per request
    (a future the request awaits). An answer is framed by Content-Length or chunked encoding."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.head: tuple[int, int, dict[str, str]] | None = None   # (end of the head, status, headers)
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.head = (end + 4, int(lines[0].split(" ", 2)[1]), headers)
        start, status, headers = self.head
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            if len(self.buf) < stop:
                return
            body = bytes(self.buf[start:stop])
        elif headers.get("transfer-encoding") == "chunked":
            parts, at = [], start
            while True:
                eol = self.buf.find(b"\r\n", at)
                if eol < 0:
                    return
                size = int(self.buf[at:eol], 16)
                if len(self.buf) < eol + 2 + size + 2:
                    return
                parts.append(bytes(self.buf[eol + 2:eol + 2 + size]))
                at = eol + 2 + size + 2
                if size == 0:
                    break
            body, stop = b"".join(parts), at
        else:
            body, stop = b"", start
        del self.buf[:stop]
        self.head = None
        waiter.set_result((status, headers, body))


class Conn:
    """One HTTP/1.1 keep-alive connection (reconnects when the server closed it). A protocol,
    not asyncio streams: a third of the CPU a request (this process shares the machine's cores
    with the server it measures)."""

    connecting: asyncio.Semaphore | None = None

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.proto: _Answer | None = None
        self.prefix = f" HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: "

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = method + " " + path + self.prefix + str(len(body)) + "\r\n"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = (head + "\r\n").encode() + body
        for attempt in (0, 1):
            try:
                if self.proto is None or self.proto.lost:
                    if Conn.connecting is None:
                        Conn.connecting = asyncio.Semaphore(CONNECTING)
                    async with Conn.connecting:
                        _, self.proto = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                            _Answer, self.host, self.port), 30)
                proto = self.proto
                assert proto.transport is not None
                proto.waiter = asyncio.get_running_loop().create_future()
                proto.transport.write(data)
                status, answer_headers, answer = await proto.waiter
                if answer_headers.get("connection") == "close":
                    self.close()
                return status, answer_headers, answer
            except (ConnectionError, OSError, TimeoutError) as e:
                self.close()
                if attempt:
                    raise HTTPError(str(e)) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        self.proto = None


class Fleet:
    def __init__(self, url: str, nodes: list, max_seconds: float) -> None:
        hostport = url.split("://", 1)[1].rstrip("/")
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.nodes = nodes
        self.max_seconds = max_seconds
        self.ttl = 10.0
        self.stats = {"nodes": len(nodes), "registered": 0, "register failed": 0, "heartbeats": 0,
                      "heartbeats failed": 0, "watch answers": 0, "watch bytes": 0, "watch failed": 0,
                      "allocs seen": 0}
        self.seen: dict[str, list[float]] = {}      # job id -> [allocations seen, last first-seen]
        self._known: set[str] = set()
        self._stop = asyncio.Event()

    async def node(self, node, slots: asyncio.Semaphore, registered: asyncio.Event) -> None:
        """One node: register (at most `slots` registrations at a time), then heartbeat at half
        the TTL the server answers and keep its watch open, as the node agent does."""
        conn = Conn(self.host, self.port)
        headers = {"X-Nomad-Token": node.secret_id, "Content-Type": "application/json"}
        body = json.dumps({"Node": node.to_json()}).encode()
        async with slots:
            try:
                status, _, answer = await conn.request("PUT", "/v1/internal/node/register", headers, body)
            except HTTPError as e:
                status, answer = 0, str(e).encode()
        if status != 200:
            self.stats["register failed"] += 1
            if self.stats["register failed"] == 1:
                print(json.dumps({"error": f"register: HTTP {status}: {answer[:300]!r}"}), flush=True)
            if self.stats["registered"] + self.stats["register failed"] == len(self.nodes):
                registered.set()
            conn.close()
            return
        ttl = max(1.0, json.loads(answer)["HeartbeatTTL"] / 1e9)
        self.ttl = ttl
        self.stats["registered"] += 1
        if self.stats["registered"] + self.stats["register failed"] == len(self.nodes):
            registered.set()
        watch = asyncio.ensure_future(self.watch(node))
        path = f"/v1/internal/node/{node.id}/heartbeat"
        try:
            while True:
                try:
                    await asyncio.wait_for(self._stop.wait(), ttl / 2)
                    return
                except TimeoutError:
                    pass
                try:
                    status, _, answer = await conn.request("PUT", path, headers)
                    ok = status == 200
                    if ok:
                        ttl = max(1.0, json.loads(answer).get("HeartbeatTTL", 10e9) / 1e9)
                except HTTPError:
                    ok = False
                self.stats["heartbeats"] += 1
                self.stats["heartbeats failed"] += not ok
        finally:
            watch.cancel()
            conn.close()

    async def watch(self, node) -> None:
        """The node agent's watch (`AllocView`): every allocation's AllocModifyIndex, whole only
        those past the highest it holds; a server without the route (an earlier release, for
        --baseline-src) is watched through `/v1/node/<id>/allocations`, the whole list."""
        conn = Conn(self.host, self.port)
        index = since = 0
        have: dict[str, int] = {}
        legacy = False
        headers = {"X-Nomad-Token": node.secret_id}
        while not self._stop.is_set():
            query = f"index={index}&wait={WATCH_WAIT}" if index else ""
            if legacy:
                path = f"/v1/node/{node.id}/allocations" + ("?" + query if query else "")
            else:
                path = f"/v1/internal/node/{node.id}/allocations?since={since}" + ("&" + query if query else "")
            try:
                status, h, body = await conn.request("GET", path, headers)
            except HTTPError:
                status, h, body = 0, {}, b""
            if status == 405 and not legacy:
                legacy = True
                continue
            if status != 200:
                self.stats["watch failed"] += 1
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            self.stats["watch answers"] += 1
            self.stats["watch bytes"] += len(body)
            index = int(h.get("x-nomad-index", index))
            answer = orjson.loads(body)
            if legacy:
                changed = answer
            else:
                changed = answer["Changed"]
                indexes: dict[str, int] = answer["Allocs"]
                for a in changed:
                    have[a["ID"]] = a["AllocModifyIndex"]
                for gone in [i for i in have if i not in indexes]:
                    del have[gone]
                if all(have.get(i) == n for i, n in indexes.items()):
                    since = max(indexes.values(), default=since)
                else:
                    since = index = 0
            for a in changed:
                if a["ID"] not in self._known:
                    self._known.add(a["ID"])
                    self.stats["allocs seen"] += 1
                    s = self.seen.setdefault(a["JobID"], [0, 0.0])
                    s[0] += 1
                    s[1] = max(s[1], now)
        conn.close()

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "stats":
                print(json.dumps(self.stats), flush=True)
            elif line == "seen":
                print(json.dumps(self.seen), flush=True)
            elif line in ("stop", ""):       # "" : stdin closed
                self._stop.set()
                return

    async def run(self) -> None:
        t0 = time.monotonic()
        slots = asyncio.Semaphore(32)
        registered = asyncio.Event()
        tasks = [asyncio.ensure_future(self.node(n, slots, registered)) for n in self.nodes]
        cmd = asyncio.ensure_future(self.commands())
        await asyncio.wait([asyncio.ensure_future(registered.wait()), cmd],
                                     timeout=self.max_seconds, return_when=asyncio.FIRST_COMPLETED)
        print(json.dumps({**self.stats, "ttl": self.ttl, "register seconds": round(time.monotonic() - t0, 2)}),
              flush=True)
        try:
            await asyncio.wait_for(asyncio.shield(cmd), max(0.0, self.max_seconds - (time.monotonic() - t0)))
        except TimeoutError:
            pass
        self._stop.set()
        # heartbeats end at once; open watches end at the server's answer (at most WATCH_WAIT): cancelled
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(json.dumps(self.stats), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--nodes", type=int, default=5000, help="nodes in the whole fleet")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this long")
    args = p.parse_args()
    from scheduler import build_nodes      # bench/scheduler.py: the same nodes as the pure scheduler's
    nodes = build_nodes(args.nodes)[args.part::args.parts]
    for n in nodes:
        n.secret_id = secret_for(n.id)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(Fleet(args.url, nodes, args.max_seconds).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
