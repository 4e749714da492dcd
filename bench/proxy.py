"""Sidecar data-path bench: yurt proxy pair vs an HAProxy pair doing the same mTLS hop.

    .venv/bin/python bench/proxy.py [--duration 8] [--json out.json]

Needs nginx, haproxy and wrk on PATH (Debian: apt-get install nginx haproxy wrk); installs
nothing. Everything runs on loopback:
  (a) wrk → nginx
  (b) wrk → haproxy "client side" (plain in, TLS 1.3 + client cert out)
          → haproxy "server side" (TLS 1.3 in, client cert required + verified) → nginx
  (c) wrk → yurt upstream listener → yurt public listener → nginx
      (two real `python -m yurt.mesh -config ...` processes configured as the connect-proxy
       driver configures them, fed by a real server-only `yurt agent` over its unix socket: leaf
       certificates, roots, the "api" sidecar in the catalog, the intention web => api allow)
Both pairs use the same certificates: the agent's CA root and the leaves it issues for "web"
and "api" (EC P-256, SPIFFE IDs); each HAProxy runs one thread, each yurt proxy is one process.
For each target, the targets taking turns in every round (order flipped each round):
  - saturation (wrk -t2 -c50 --latency; --rounds runs, median reported, req/s ratio = median of
    per-round ratios);
  - handshake-heavy (wrk -t2 -c16 with `Connection: close`: every request on a new connection,
    so a new mTLS handshake between the sidecars): new connections/s, same rounds and medians;
  - paced, without coordinated omission: a constant-throughput client of our own (1,000 req/s
    over 10 keep-alive connections, one request due every ms) measuring each request from the
    time it was due to be sent, not from when a free connection sent it; also wrk's paced run
    (Lua `delay`, 10 connections x 10 ms), which does not correct for that;
  - bulk MB/s (4 MB file, 4 conns);
  - 10,000 idle connections held through the target (each made one request, then holds):
    RSS of each proxy process before and while they are held, KB per connection.
"RSS after all" is read SETTLE seconds after the idle connections closed.
Every run counts its errors (non-2xx, socket errors, short reads); a run with errors is marked
INVALID and is not a result. Each proxy's RSS idle, at peak and after everything is printed.
Ratios are yurt/haproxy.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests/mesh_agent.py: a real server-only agent, as the tests start it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRSS(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {p: 0.0 for p in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss_mb(p))
            self.stop.wait(0.2)


SETTLE = 6.0  # seconds after the last connection closed before "RSS after all" is read

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(v: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk(url: str, threads: int, conns: int, duration: int, script: str | None = None,
        headers: list[str] | None = None) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency"]
    for h in headers or []:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"rps": 0.0, "p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "mb_s": 0.0,
           "errors": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    if m := re.search(r"^\s+50%\s+(\S+)", out, re.M):
        res["p50_ms"] = _ms(m.group(1))
    if m := re.search(r"^\s+90%\s+(\S+)", out, re.M):
        res["p90_ms"] = _ms(m.group(1))
    if m := re.search(r"^\s+99%\s+(\S+)", out, re.M):
        res["p99_ms"] = _ms(m.group(1))
    if m := re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out):
        res["mb_s"] = float(m.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}.get(m.group(2), 1)
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        res["errors"] += int(m.group(1))
        res["error_kinds"] = f"non-2xx {m.group(1)}"
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["errors"] += sum(int(x) for x in m.groups())
        res["error_kinds"] = (res.get("error_kinds", "") + " " + m.group(0)).strip()
    return res


def paced(port: int, rate: int, seconds: float, conns: int = 10, path: str = "/small.txt") -> dict:
    """Constant throughput without coordinated omission: request i is due at t0 + i/rate and its
    latency counts from then, whether or not a connection was free to send it on time (a request
    that waited for a connection waited in the client's queue: that is latency the user sees)."""
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    free: list[socket.socket] = []
    errors = 0
    size = _response_size(port, req)
    for _ in range(conns):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        free.append(c)
    inflight: dict[socket.socket, list] = {}  # sock -> [due, bytes still expected]
    lat: list[float] = []
    n_total = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    i = 0
    deadline = t0 + seconds + 10
    while (i < n_total or inflight) and time.perf_counter() < deadline:
        now = time.perf_counter()
        while i < n_total and t0 + i / rate <= now and free:
            c = free.pop()
            try:
                c.send(req)
            except OSError:
                errors += 1
                i += 1
                continue
            inflight[c] = [t0 + i / rate, size]
            sel.register(c, selectors.EVENT_READ)
            i += 1
        nxt = t0 + i / rate if i < n_total else now + 0.01
        timeout = max(0.0, nxt - time.perf_counter()) if free else 0.01
        for key, _ in sel.select(timeout if i < n_total else 0.01):
            c = key.fileobj
            try:
                d = c.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            st = inflight[c]
            if not d:
                errors += 1
                sel.unregister(c)
                del inflight[c]
                continue
            st[1] -= len(d)
            if st[1] <= 0:
                lat.append((time.perf_counter() - st[0]) * 1000)
                sel.unregister(c)
                del inflight[c]
                free.append(c)
    errors += len(inflight) + (n_total - len(lat) - errors if len(lat) + errors < n_total else 0)
    for c in [*free, *inflight]:
        c.close()
    sel.close()
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else float("nan")
    return {"rps": round(len(lat) / seconds), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "p999_ms": pct(0.999), "max_ms": round(lat[-1], 3) if lat else float("nan"), "errors": errors}


def _response_size(port: int, req: bytes) -> int:
    """The whole response's size (headers + body) for `req`: nginx's static answer is the same
    every time, so the paced client counts bytes instead of parsing."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"Content-Length: (\d+)", head, re.I)
        want = int(m.group(1)) if m else 0
        while len(body) < want:
            body += c.recv(65536)
        return len(head) + 4 + want


def hold_idle(port: int, n: int, pids: list[int]) -> dict:
    """Open n connections through the target, one request each (so each is established end to
    end), hold them, and read the proxies' RSS while they are held."""
    req = b"GET /small.txt HTTP/1.1\r\nHost: bench\r\n\r\n"
    size = _response_size(port, req)
    before = [rss_mb(p) for p in pids]
    conns: list[socket.socket] = []
    errors = 0
    try:
        for _ in range(n):
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                c.sendall(req)
                conns.append(c)
            except OSError:
                errors += 1
        for c in conns:
            got = 0
            try:
                while got < size:
                    d = c.recv(65536)
                    if not d:
                        break
                    got += len(d)
            except OSError:
                pass
            if got < size:
                errors += 1
        time.sleep(1.0)
        held = [rss_mb(p) for p in pids]
    finally:
        for c in conns:
            c.close()
    return {"n": n, "rss_before_mb": [round(x, 1) for x in before], "rss_held_mb": [round(x, 1) for x in held],
            "kb_per_conn": [round((h - b) * 1024 / n, 1) for b, h in zip(before, held, strict=True)],
            "errors": errors}


def _flag(errors: int) -> str:
    return f"errors {errors}" + (" INVALID" if errors else "")


def _quick(results: dict, names: list[str]) -> int:
    for name in names:
        r = results[name]
        runs = [*r['saturation_runs'], *r['handshake_runs']]
        print(f"{name:8s} saturation {[round(x['rps']) for x in r['saturation_runs']]} req/s "
              f"p99 {[x['p99_ms'] for x in r['saturation_runs']]} ms; new connections "
              f"{[round(x['rps']) for x in r['handshake_runs']]} /s "
              f"({_flag(sum(x['errors'] for x in runs))}"
              f"{''.join('; ' + x['error_kinds'] for x in runs if x.get('error_kinds'))})")
    if "haproxy" in results and "yurt" in results:
        h, y = results["haproxy"], results["yurt"]
        for run in ("saturation_runs", "handshake_runs"):
            ratios = [round(yr["rps"] / max(hr["rps"], 1), 3) for hr, yr in zip(h[run], y[run], strict=True)]
            p99 = [round(yr["p99_ms"] / max(hr["p99_ms"], 1e-9), 3) for hr, yr in zip(h[run], y[run], strict=True)]
            print(f"{run}: yurt/haproxy req/s per round {ratios}, p99 per round {p99}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3,
                    help="saturation runs per target, interleaved between targets (median reported)")
    ap.add_argument("--workers", type=int, default=1,
                    help="yurt proxy processes per sidecar (-workers; SO_REUSEPORT). Default 1, like "
                         "the one-thread HAProxy it is compared with")
    ap.add_argument("--idle", type=int, default=10000,
                    help="idle connections held through each target (capped by the hard limit on open "
                         "files: a proxy holds two descriptors per connection)")
    ap.add_argument("--rate", type=int, default=1000, help="the paced run's requests/s")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--only", choices=["direct", "haproxy", "yurt"], action="append")
    ap.add_argument("--logs", help="keep the yurt proxies' access logs in this directory")
    ap.add_argument("--quick", action="store_true",
                    help="only the interleaved saturation and new-connection rounds, with their ratios "
                         "(for iterating on the proxy; not a full result)")
    args = ap.parse_args()
    missing = [t for t in ("nginx", "haproxy", "wrk") if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install nginx haproxy wrk)", file=sys.stderr)
        return 2

    from tests.mesh_agent import MeshAgent

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the proxies and nginx inherit it
    n_idle = min(args.idle, (hard - 2000) // 2)
    if n_idle < args.idle:
        print(f"holding {n_idle} idle connections, not {args.idle}: the hard limit on open files is {hard} "
              "and a proxy holds two per connection", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="yurt-bench-"))
    tmp.chmod(0o755)  # nginx workers run as www-data
    procs: list[subprocess.Popen] = []
    agent: MeshAgent | None = None

    def spawn(cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=subprocess.STDOUT,
                             start_new_session=True, **kw)
        procs.append(p)
        return p

    try:
        # -- the app: nginx with a 1 KiB and a 4 MiB file ---------------------------------------
        www = tmp / "www"
        www.mkdir()
        (www / "small.txt").write_bytes(os.urandom(512).hex().encode())
        (www / "big.bin").write_bytes(os.urandom(4 * 2**20))
        app = free_port()
        (tmp / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err;
worker_rlimit_nofile {hard};
events {{ worker_connections {n_idle + 200}; }}
http {{ access_log off; sendfile on; tcp_nodelay on; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{app}; root {www}; }} }}
""")
        spawn(["nginx", "-c", str(tmp / "nginx.conf")])
        wait_port(app)

        # -- the agent: one CA, two identities ------------------------------------------------------
        agent = MeshAgent().start()
        web, api = agent.leaf("web"), agent.leaf("api")
        (tmp / "ca.pem").write_text("".join(agent.root_pems()))
        (tmp / "web.pem").write_text(web["CertPEM"] + web["PrivateKeyPEM"])
        (tmp / "api.pem").write_text(api["CertPEM"] + api["PrivateKeyPEM"])

        # -- HAProxy pair ---------------------------------------------------------------------------
        h_front, h_back = free_port(), free_port()
        common = f"global\n  nbthread 1\n  maxconn {n_idle + 100}\ndefaults\n  mode tcp\n  timeout connect 5s\n" \
                 "  timeout client 60s\n  timeout server 60s\n"
        (tmp / "hc.cfg").write_text(common + f"""frontend up
  bind 127.0.0.1:{h_front}
  default_backend api
backend api
  server s1 127.0.0.1:{h_back} ssl crt {tmp}/web.pem ca-file {tmp}/ca.pem verify required ssl-min-ver TLSv1.3
""")
        (tmp / "hs.cfg").write_text(common + f"""frontend pub
  bind 127.0.0.1:{h_back} ssl crt {tmp}/api.pem ca-file {tmp}/ca.pem verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server a1 127.0.0.1:{app}
""")
        hc = spawn(["haproxy", "-f", str(tmp / "hc.cfg")])
        hs = spawn(["haproxy", "-f", str(tmp / "hs.cfg")])
        wait_port(h_front)
        wait_port(h_back)

        # -- yurt pair: two real proxy processes --------------------------------------------------
        y_front, y_back = free_port(), free_port()
        agent.register_sidecar("api", y_back)  # where "web"'s sidecar finds "api"
        agent.intention("web", "api", "allow")
        (tmp / "ys.json").write_text(json.dumps({
            "service": "api", "listen": f"127.0.0.1:{y_back}", "local_port": app,
            "address": agent.address, "ready_file": str(tmp / "ys.ready"), "workers": args.workers,
            "max_connections": n_idle + 100}))
        (tmp / "yc.json").write_text(json.dumps({
            "service": "web", "upstreams": [{"destination_name": "api", "local_bind_port": y_front}],
            "address": agent.address, "ready_file": str(tmp / "yc.ready"), "workers": args.workers,
            "max_connections": n_idle + 100}))
        py = sys.executable
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        t0 = time.monotonic()
        logs = Path(args.logs) if args.logs else None
        if logs:
            logs.mkdir(parents=True, exist_ok=True)
        ys = spawn([py, "-m", "yurt.mesh", "-config", str(tmp / "ys.json")], env=env,
                   stdout=open(logs / "server.log", "w") if logs else subprocess.DEVNULL)
        yc = spawn([py, "-m", "yurt.mesh", "-config", str(tmp / "yc.json")], env=env,
                   stdout=open(logs / "client.log", "w") if logs else subprocess.DEVNULL)
        while not ((tmp / "ys.ready").exists() and (tmp / "yc.ready").exists()):
            if time.monotonic() - t0 > 20:
                raise RuntimeError("yurt proxies did not become ready")
            time.sleep(0.01)
        startup_ms = (time.monotonic() - t0) * 1000
        time.sleep(0.5)

        paced_lua = tmp / "paced.lua"
        paced_lua.write_text("function delay() return 10 end\n")
        targets = {"direct": (app, []), "haproxy": (h_front, [hc.pid, hs.pid]), "yurt": (y_front, [yc.pid, ys.pid])}
        names = [n for n in targets if not args.only or n in args.only]
        results: dict = {"startup_ms_yurt_pair": round(startup_ms)}
        d = args.duration
        monitors: dict = {}
        for name in names:
            port, pids = targets[name]
            base = f"http://127.0.0.1:{port}"
            results[name] = {"rss_idle_mb": [round(rss_mb(p), 1) for p in pids], "saturation_runs": [],
                             "handshake_runs": []}
            wrk(base + "/small.txt", 1, 10, 1)  # warm up connections/caches
            monitors[name] = PeakRSS(pids)
            monitors[name].start()
            # idle connections first: the handshake-heavy runs leave tens of thousands of loopback
            # ports in TIME_WAIT for a minute, and thousands of connections made after them fail
            # for want of a local port
            if not args.quick:
                results[name]["idle_conns"] = hold_idle(port, n_idle, pids)
        # Saturation: the box is shared and noisy, so the targets take turns (order flipped every
        # round, so drift hits both alike) and each reports its median run; the req/s ratio is the
        # median of the per-round ratios.
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                port, _ = targets[name]
                results[name]["saturation_runs"].append(wrk(f"http://127.0.0.1:{port}/small.txt", 2, 50, d))
            for name in order:
                port, _ = targets[name]
                results[name]["handshake_runs"].append(
                    wrk(f"http://127.0.0.1:{port}/small.txt", 2, 16, d, headers=["Connection: close"]))
        if args.quick:
            return _quick(results, names)
        for rnd in range(args.rounds):  # paced, own client: the same alternation
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                port, _ = targets[name]
                results[name].setdefault("paced_runs", []).append(paced(port, args.rate, d))
        for name in names:
            port, pids = targets[name]
            base = f"http://127.0.0.1:{port}"
            r = results[name]
            runs = sorted(r["saturation_runs"], key=lambda x: x["rps"])
            r["saturation"] = runs[len(runs) // 2]
            hs = sorted(r["handshake_runs"], key=lambda x: x["rps"])
            r["handshake"] = hs[len(hs) // 2]
            pr = sorted(r["paced_runs"], key=lambda x: x["p99_ms"])
            r["paced"] = pr[len(pr) // 2]
            r["paced_1000"] = wrk(base + "/small.txt", 1, 10, d, str(paced_lua))
            r["bulk"] = wrk(base + "/big.bin", 2, 4, d)
            mon = monitors[name]
            mon.stop.set()
            mon.join()
            r["rss_peak_mb"] = [round(mon.peak[p], 1) for p in pids]
            if pids:
                time.sleep(SETTLE)  # the held connections' closes reach the proxies; a sidecar trims
            r["rss_after_mb"] = [round(rss_mb(p), 1) for p in pids]
            sat, paced_r, own = r["saturation"], r["paced_1000"], r["paced"]
            hsr, idle_r = r["handshake"], r["idle_conns"]
            print(f"{name:8s} saturation {sat['rps']:7.0f} req/s p50 {sat['p50_ms']:.2f} p99 {sat['p99_ms']:.2f} ms "
                  f"(runs {[round(x['rps']) for x in r['saturation_runs']]}, "
                  f"{_flag(sum(x['errors'] for x in r['saturation_runs']))})\n"
                  f"{'':8s} new connections {hsr['rps']:7.0f} /s p99 {hsr['p99_ms']:.2f} ms "
                  f"(runs {[round(x['rps']) for x in r['handshake_runs']]}, "
                  f"{_flag(sum(x['errors'] for x in r['handshake_runs']))})\n"
                  f"{'':8s} paced {args.rate}/s (own client, from the intended send time): {own['rps']} req/s "
                  f"p50 {own['p50_ms']:.3f} p90 {own['p90_ms']:.3f} p99 {own['p99_ms']:.3f} "
                  f"p99.9 {own['p999_ms']:.3f} max {own['max_ms']:.3f} ms "
                  f"(p99 runs {[x['p99_ms'] for x in r['paced_runs']]}, "
                  f"{_flag(sum(x['errors'] for x in r['paced_runs']))})\n"
                  f"{'':8s} paced wrk (Lua delay, coordinated omission): {paced_r['rps']:.0f} req/s "
                  f"p50 {paced_r['p50_ms']:.3f} p90 {paced_r['p90_ms']:.3f} p99 {paced_r['p99_ms']:.3f} ms "
                  f"({_flag(paced_r['errors'])})\n"
                  f"{'':8s} bulk {r['bulk']['mb_s']:.0f} MB/s ({_flag(r['bulk']['errors'])})\n"
                  f"{'':8s} {idle_r['n']} idle connections: RSS {idle_r['rss_before_mb']} -> "
                  f"{idle_r['rss_held_mb']} MB, "
                  f"{idle_r['kb_per_conn']} KB/conn ({_flag(idle_r['errors'])})\n"
                  f"{'':8s} RSS idle {r['rss_idle_mb']} peak {r['rss_peak_mb']} after all {r['rss_after_mb']} MB",
                  flush=True)

        if "haproxy" in results and "yurt" in results:
            h, y = results["haproxy"], results["yurt"]
            dp = results.get("direct", {}).get("paced_1000", {}).get("p99_ms", 0.0)
            per_round = sorted(yr["rps"] / max(hr["rps"], 1)
                               for hr, yr in zip(h["saturation_runs"], y["saturation_runs"], strict=True))
            hs_round = sorted(yr["rps"] / max(hr["rps"], 1)
                              for hr, yr in zip(h["handshake_runs"], y["handshake_runs"], strict=True))
            dpp = results.get("direct", {}).get("paced", {}).get("p99_ms", 0.0)
            ratios = {
                "req_s_yurt_over_haproxy": round(per_round[len(per_round) // 2], 3),
                "req_s_ratio_per_round": [round(x, 3) for x in per_round],
                "p99_at_saturation_yurt_over_haproxy": round(y["saturation"]["p99_ms"]
                                                             / max(h["saturation"]["p99_ms"], 1e-9), 3),
                "new_conns_s_yurt_over_haproxy": round(hs_round[len(hs_round) // 2], 3),
                "new_conns_s_ratio_per_round": [round(x, 3) for x in hs_round],
                "mb_s_yurt_over_haproxy": round(y["bulk"]["mb_s"] / max(h["bulk"]["mb_s"], 1e-9), 3),
                "added_p99_ms_paced_yurt": round(y["paced"]["p99_ms"] - dpp, 3),
                "added_p99_ms_paced_haproxy": round(h["paced"]["p99_ms"] - dpp, 3),
                "kb_per_idle_conn_yurt": y["idle_conns"]["kb_per_conn"],
                "kb_per_idle_conn_haproxy": h["idle_conns"]["kb_per_conn"],
                "rss_after_all_mb_yurt": y["rss_after_mb"],
                "rss_after_all_mb_haproxy": h["rss_after_mb"],
                "added_p99_ms_at_1k_yurt": round(y["paced_1000"]["p99_ms"] - dp, 3),
                "added_p99_ms_at_1k_haproxy": round(h["paced_1000"]["p99_ms"] - dp, 3),
                "rss_idle_mb_yurt_sidecars": y["rss_idle_mb"],
            }
            results["ratios"] = ratios
            print("ratios (yurt/haproxy):", json.dumps(ratios))
            valid = not any(x["errors"] for t in (h, y) for x in [*t["saturation_runs"], *t["handshake_runs"],
                                                               *t["paced_runs"], t["paced_1000"], t["bulk"],
                                                               t["idle_conns"]])
            print(f"goals{'' if valid else ' (INVALID: some runs had errors)'}: "
                  f"req/s >= 1.0x: {ratios['req_s_yurt_over_haproxy'] >= 1.0}; "
                  f"p99 at saturation <= 1.0x: {ratios['p99_at_saturation_yurt_over_haproxy'] <= 1.0}; "
                  f"new conns/s >= 1.0x: {ratios['new_conns_s_yurt_over_haproxy'] >= 1.0}; "
                  f"MB/s >= 1.0x: {ratios['mb_s_yurt_over_haproxy'] >= 1.0}; "
                  f"added p99 (paced, own client) <= 0.3 ms: {ratios['added_p99_ms_paced_yurt'] <= 0.3}; "
                  f"idle RSS <= 30 MB: {max(y['rss_idle_mb']) <= 30}; "
                  f"<= 10 KB per idle conn: {max(y['idle_conns']['kb_per_conn']) <= 10}; "
                  f"RSS after all <= 40 MB: {max(y['rss_after_mb']) <= 40}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if agent is not None:
            agent.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
