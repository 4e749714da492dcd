"""A load generator that plays many client agents against one server, in one asyncio process.

    python bench/loadgen.py URL --nodes 5000 --part 0 --parts 2

Used by bench/scheduler.py (a few of these processes, one per share of the nodes); not a
benchmark by itself. Each node does what src/yurt/client/node_agent.py does, over HTTP/1.1
keep-alive connections of its own (two per node, as an agent's pooled client holds while its
watch is open):

- registers through ``PUT /v1/internal/node/register`` with its SecretID,
- heartbeats through ``PUT /v1/internal/node/<id>/heartbeat`` every half of the TTL the server
  answered (first beats spread over one period),
- keeps a blocking query on its allocations open: ``GET /v1/node/<id>/allocations?index=N&wait=30s``,
  the next one from the ``X-Nomad-Index`` of the last answer, and notes when it first sees each
  allocation (``time.monotonic()``: the same clock in every process on Linux).

The HTTP client is a minimal one on asyncio streams (uvloop when installed): an off-the-shelf
async client costs ~10 x more CPU a request, and the generator shares the 2 cores with the server.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WATCH_WAIT = "30s"          # as the node agent's WATCH_WAIT


def secret_for(node_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, "yurt-bench-" + node_id))


class HTTPError(Exception):
    pass


CONNECTING = 64            # connections being opened at once (a burst overflows the server's backlog)


class Conn:
    """One HTTP/1.1 keep-alive connection (reconnects when the server closed it)."""

    connecting: asyncio.Semaphore | None = None

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                    f"Content-Length: {len(body)}"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            try:
                if self.writer is None:
                    if Conn.connecting is None:
                        Conn.connecting = asyncio.Semaphore(CONNECTING)
                    async with Conn.connecting:
                        self.reader, self.writer = await asyncio.wait_for(
                            asyncio.open_connection(self.host, self.port, limit=1 << 22), 30)
                assert self.writer is not None
                self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError, OSError, TimeoutError) as e:
                self.close()
                if attempt:
                    raise HTTPError(str(e)) from None
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = b""
        if headers.get("connection") == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


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
        conn = Conn(self.host, self.port)
        index = 0
        headers = {"X-Nomad-Token": node.secret_id}
        while not self._stop.is_set():
            path = f"/v1/node/{node.id}/allocations" + (f"?index={index}&wait={WATCH_WAIT}" if index else "")
            try:
                status, h, body = await conn.request("GET", path, headers)
            except HTTPError:
                status, h, body = 0, {}, b""
            if status != 200:
                self.stats["watch failed"] += 1
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            self.stats["watch answers"] += 1
            self.stats["watch bytes"] += len(body)
            index = int(h.get("x-nomad-index", index))
            for a in json.loads(body):
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
