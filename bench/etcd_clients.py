"""The two maintained Python etcd clients side by side, on one 3-member loopback etcd cluster:
etcd3gw (HTTP/JSON through etcd's grpc-gateway, `requests`, sync) and aetcd (gRPC, asyncio).

    .venv/bin/python bench/etcd_clients.py [--ops 500] [--value-bytes 256] [--member 0]

Installs nothing: a client package that is missing is skipped, saying so
(`.venv/bin/python -m pip install aetcd etcd3gw`). Both clients talk to the same member
(`--member`, default the first), one request at a time, each on its own key prefix:
  - put: sequential puts of one key each, `--value-bytes` values;
  - txn100: one txn of 100 puts guarded by one compare (create revision of a guard key == 0);
  - get: a linearizable range of one key (the default: through the leader's read index);
  - prefix1000: a linearizable range of a 1000-key prefix (256-byte values, filled first);
  - watch: put -> the watch event seen by the client (a watch on the key opened once; includes
    the put's own latency, as a server waiting on its write's event pays it).
Prints p50 and p99 in milliseconds per operation and client, and the ratios aetcd / etcd3gw
(below 1 = aetcd faster). The cluster (tests/etcd_cluster.py) keeps fsync on unless
YURT_TEST_ETCD_NOFSYNC=1, so put, txn and watch include the members' disk syncs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/etcd_cluster.py: the loopback cluster the tests use

from tests.etcd_cluster import ETCD, EtcdCluster  # noqa: E402

PREFIX_KEYS = 1000
TXN_PUTS = 100
MEASURES = ["put", "txn100", "get", "prefix1000", "watch"]


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.median(ms), p99


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


async def atimed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t0)
    return out


class Etcd3gwBench:
    name = "etcd3gw"

    def __init__(self, endpoint: str, value: bytes) -> None:
        import requests
        from etcd3gw.client import Etcd3Client
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        session = requests.Session()
        session.trust_env = False   # no HTTP proxy from the environment for loopback
        self.c = Etcd3Client(host=host, port=int(port), session=session, timeout=30)
        self.value = value
        self.p = "/bench/gw/"

    def put(self, n: int) -> list[float]:
        return timed(lambda i: self.c.put(f"{self.p}put/{i}", self.value), n)

    def _txn(self, i: int, prefix: str) -> None:
        from etcd3gw.utils import _encode
        r = self.c.transaction({
            "compare": [{"key": _encode(f"{self.p}guard"), "result": "EQUAL", "target": "CREATE",
                         "create_revision": 0}],
            "success": [{"request_put": {"key": _encode(f"{prefix}{i}/{j}"), "value": _encode(self.value)}}
                        for j in range(TXN_PUTS)],
            "failure": []})
        assert r.get("succeeded") is True, r

    def txn100(self, n: int) -> list[float]:
        return timed(lambda i: self._txn(i, f"{self.p}txn/"), n)

    def get(self, n: int) -> list[float]:
        self.c.put(f"{self.p}one", self.value)

        def one(i: int) -> None:
            assert self.c.get(f"{self.p}one") == [self.value]
        return timed(one, n)

    def fill_prefix(self) -> None:
        for i in range(PREFIX_KEYS // TXN_PUTS):
            self._txn(i, f"{self.p}many/")

    def prefix1000(self, n: int) -> list[float]:
        def one(i: int) -> None:
            assert len(self.c.get_prefix(f"{self.p}many/")) == PREFIX_KEYS
        return timed(one, n)

    def watch(self, n: int) -> list[float]:
        key = f"{self.p}watched"
        events, cancel = self.c.watch(key)
        try:
            # the watch is in place once an event arrives: a first put, until one is seen
            self.c.put(key, b"warm-up")
            assert next(events)["kv"]["value"] == b"warm-up"

            def one(i: int) -> None:
                v = b"%d" % i
                self.c.put(key, v)
                assert next(events)["kv"]["value"] == v
            return timed(one, n)
        finally:
            cancel()


class AetcdBench:
    name = "aetcd"

    def __init__(self, endpoint: str, value: bytes) -> None:
        import aetcd
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        self.loop = asyncio.new_event_loop()
        self.c = aetcd.Client(host=host, port=int(port), timeout=30)
        self.loop.run_until_complete(self.c.connect())
        self.value = value
        self.p = b"/bench/ae/"

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.c.close())
        self.loop.close()

    def put(self, n: int) -> list[float]:
        return self.run(atimed(lambda i: self.c.put(self.p + b"put/%d" % i, self.value), n))

    async def _txn(self, i: int, prefix: bytes) -> None:
        t = self.c.transactions
        ok, _ = await self.c.transaction(compare=[t.create(self.p + b"guard") == 0],
                                         success=[t.put(prefix + b"%d/%d" % (i, j), self.value)
                                                  for j in range(TXN_PUTS)], failure=[])
        assert ok is True

    def txn100(self, n: int) -> list[float]:
        return self.run(atimed(lambda i: self._txn(i, self.p + b"txn/"), n))

    def get(self, n: int) -> list[float]:
        self.run(self.c.put(self.p + b"one", self.value))

        async def one(i: int) -> None:
            assert (await self.c.get(self.p + b"one")).value == self.value
        return self.run(atimed(one, n))

    def fill_prefix(self) -> None:
        async def fill() -> None:
            for i in range(PREFIX_KEYS // TXN_PUTS):
                await self._txn(i, self.p + b"many/")
        self.run(fill())

    def prefix1000(self, n: int) -> list[float]:
        async def one(i: int) -> None:
            assert len((await self.c.get_prefix(self.p + b"many/")).kvs) == PREFIX_KEYS
        return self.run(atimed(one, n))

    def watch(self, n: int) -> list[float]:
        key = self.p + b"watched"

        async def go() -> list[float]:
            w = await self.c.watch(key)
            events = w.__aiter__()
            try:
                await self.c.put(key, b"warm-up")
                assert (await events.__anext__()).kv.value == b"warm-up"

                async def one(i: int) -> None:
                    v = b"%d" % i
                    await self.c.put(key, v)
                    assert (await events.__anext__()).kv.value == v
                return await atimed(one, n)
            finally:
                await w.cancel()
        return self.run(go())


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def role(cluster: EtcdCluster, endpoint: str) -> str:
    """Whether the member is the leader, as `etcdctl endpoint status` says."""
    out = cluster.etcdctl("endpoint", "status", "-w", "json", endpoints=[endpoint])
    try:
        status = json.loads(out.stdout)[0]["Status"]
        return "the leader" if status["header"]["member_id"] == status["leader"] else "a follower"
    except (ValueError, IndexError, KeyError):
        return "leader unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=500, help="operations per measure (txn100 and prefix1000: a fifth)")
    ap.add_argument("--value-bytes", type=int, default=256)
    ap.add_argument("--member", type=int, default=0, choices=[0, 1, 2], help="the member both clients talk to")
    args = ap.parse_args()
    value = b"v" * args.value_bytes

    makers: list[tuple[str, Callable[[str, bytes], object]]] = []
    for package, maker in (("etcd3gw", Etcd3gwBench), ("aetcd", AetcdBench)):
        try:
            __import__(package)
        except ImportError:
            print(f"{package} is not installed, skipped: .venv/bin/python -m pip install aetcd etcd3gw")
            continue
        makers.append((package, maker))
    if not makers:
        sys.exit("no client to measure")

    etcd_version = subprocess.run([ETCD, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    etcd_version = etcd_version.replace("etcd Version:", "etcd")
    with tempfile.TemporaryDirectory(prefix="yurt-bench-etcd-") as tmp, EtcdCluster(Path(tmp), members=3) as cluster:
        cluster.wait_healthy(60)
        endpoint = cluster.endpoints[args.member]
        print(f"{etcd_version}, 3 members on 127.0.0.1 (fsync "
              f"{'off' if '--unsafe-no-fsync' in cluster.args(0) else 'on'}); clients on {endpoint} "
              f"({role(cluster, endpoint)}); "
              f"Python {platform.python_version()}; "
              + ", ".join(f"{p} {version(p)}" for p, _ in makers)
              + f"; grpcio {version('grpcio')}, requests {version('requests')}")
        clients = [maker(endpoint, value) for _, maker in makers]
        for c in clients:
            c.fill_prefix()
        results: dict[str, dict[str, tuple[float, float]]] = {c.name: {} for c in clients}
        counts = {m: args.ops // 5 if m in ("txn100", "prefix1000") else args.ops for m in MEASURES}
        for measure in MEASURES:   # side by side: each measure on every client before the next one
            for c in clients:
                getattr(c, measure)(max(5, counts[measure] // 10))   # warm-up, not counted
                results[c.name][measure] = percentiles(getattr(c, measure)(counts[measure]))
        for c in clients:
            if isinstance(c, AetcdBench):
                c.close()

    names = [c.name for c in clients]
    header = f"{'operation':<12}{'n':>6}" + "".join(f"{n + ' p50':>14}{n + ' p99':>14}" for n in names)
    if len(names) == 2:
        header += f"{'aetcd/gw p50':>14}{'aetcd/gw p99':>14}"
    print(header)
    for measure in MEASURES:
        row = f"{measure:<12}{counts[measure]:>6}"
        for n in names:
            p50, p99 = results[n][measure]
            row += f"{p50:>11.2f} ms{p99:>11.2f} ms"
        if len(names) == 2:
            (g50, g99), (a50, a99) = results["etcd3gw"][measure], results["aetcd"][measure]
            row += f"{a50 / g50:>14.2f}{a99 / g99:>14.2f}"
        print(row)


if __name__ == "__main__":
    main()
