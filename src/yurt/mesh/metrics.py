"""The sidecar's metrics, in Prometheus' text format (0.0.4), with no third-party package (the
sidecar stays lean: see pyproject's import contracts).

Everything here is touched on the reactor thread only (the listeners, the connections, the scrape
itself), so nothing takes a lock. The hot path pays nothing per byte: bytes are counted by the
pump per chunk as it always did (`Side.nread`), added here when a connection closes, and the
open connections' counts are read at scrape time. Per connection: one or two dict increments.

Series (every one labelled with `service`, the service this sidecar fronts):
  yurt_sidecar_inbound_connections_active / _total          mTLS connections passed to the app
  yurt_sidecar_inbound_bytes_total{direction}               received from callers / sent to them
  yurt_sidecar_upstream_connections_active / _total{upstream}
  yurt_sidecar_upstream_bytes_total{upstream,direction}     sent to the upstream / received from it
  yurt_sidecar_upstream_connect_seconds{upstream}           dial + TLS + identity check (retries included)
  yurt_sidecar_upstream_errors_total{upstream,address,kind} failed attempts, per instance
  yurt_sidecar_tls_handshake_failures_total{side[,upstream]}
  yurt_sidecar_tls_resumed_total{side}                      handshakes that resumed a session (ticket)
  yurt_sidecar_authz_denials_total{source}                  connections intentions refused (or closed)
  yurt_sidecar_inbound_errors_total{kind}                   the app behind the sidecar unreachable, ...
  yurt_sidecar_ready                                        1 once ready (certificate, endpoints)
  yurt_sidecar_http_requests_total{direction,peer,code}     HTTP requests on HTTP-aware listeners (l7.py),
                                                            by status class (2xx ...); peer: the upstream
                                                            (upstream side) or the source (inbound side)
  yurt_sidecar_http_request_duration_seconds{direction,peer} from the whole request read to the answer sent
  yurt_sidecar_http_retries_total{upstream}                 requests sent again (NumRetries)
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .proxy import Proxy

CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PATH = "/metrics"


class Histogram:
    __slots__ = ("counts", "sum", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(CONNECT_BUCKETS) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(CONNECT_BUCKETS, v)] += 1
        self.sum += v
        self.n += 1


class MeshMetrics:
    def __init__(self) -> None:
        self.inbound_total = 0
        self.inbound_bytes = [0, 0]                    # closed connections: received, sent
        self.upstream_total: dict[str, int] = {}
        self.upstream_bytes: dict[str, list[int]] = {}  # destination -> [sent, received]
        self.upstream_connect: dict[str, Histogram] = {}
        self.upstream_errors: dict[tuple[str, str, str], int] = {}  # (destination, address, kind)
        self.tls_failures: dict[tuple[str, str], int] = {}          # (side, destination or "")
        self.denials: dict[str, int] = {}                            # source service
        self.tls_resumed = {"inbound": 0, "upstream": 0}
        self.inbound_errors: dict[str, int] = {}
        # HTTP-aware listeners (l7.py): counted from their connection threads, under http_lock
        self.http_lock = threading.Lock()
        self.http_requests: dict[tuple[str, str, str], int] = {}   # (direction, peer, status class)
        self.http_seconds: dict[tuple[str, str], Histogram] = {}
        self.http_retries: dict[str, int] = {}

    # -- counting (reactor thread) ---------------------------------------------------------------
    def inbound_closed(self, received: int, sent: int) -> None:
        b = self.inbound_bytes
        b[0] += received
        b[1] += sent

    def upstream_connected(self, dest: str, seconds: float) -> None:
        self.upstream_total[dest] = self.upstream_total.get(dest, 0) + 1
        h = self.upstream_connect.get(dest)
        if h is None:
            h = self.upstream_connect[dest] = Histogram()
        h.observe(seconds)

    def upstream_closed(self, dest: str, sent: int, received: int) -> None:
        b = self.upstream_bytes.get(dest)
        if b is None:
            b = self.upstream_bytes[dest] = [0, 0]
        b[0] += sent
        b[1] += received

    def upstream_error(self, dest: str, address: str, kind: str) -> None:
        key = (dest, address, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1
        if kind in ("tls", "identity"):
            self.tls_failure("upstream", dest)

    def tls_failure(self, side: str, dest: str = "") -> None:
        key = (side, dest)
        self.tls_failures[key] = self.tls_failures.get(key, 0) + 1

    def denied(self, source: str) -> None:
        self.denials[source] = self.denials.get(source, 0) + 1

    def inbound_error(self, kind: str) -> None:
        self.inbound_errors[kind] = self.inbound_errors.get(kind, 0) + 1

    def http_request(self, direction: str, peer: str, status: int, seconds: float, retries: int) -> None:
        code = f"{status // 100}xx" if 100 <= status < 600 else "other"
        with self.http_lock:
            key = (direction, peer, code)
            self.http_requests[key] = self.http_requests.get(key, 0) + 1
            h = self.http_seconds.get((direction, peer))
            if h is None:
                h = self.http_seconds[(direction, peer)] = Histogram()
            h.observe(seconds)

    def http_retry(self, upstream: str) -> None:
        with self.http_lock:
            self.http_retries[upstream] = self.http_retries.get(upstream, 0) + 1

    # -- the scrape (reactor thread) -------------------------------------------------------------
    def render(self, proxy: Proxy) -> str:
        svc = proxy.cfg.service
        out: list[str] = []

        def family(name: str, kind: str, help_: str, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
            for suffix, labels, value in samples:
                out.append(f"{name}{suffix}{_labels({'service': svc, **labels})} {_num(value)}\n")

        inbound_open = [p for ps in proxy.inbound.values() for p in ps]
        received = self.inbound_bytes[0] + sum(p.a.nread for p in inbound_open)
        sent = self.inbound_bytes[1] + sum(p.b.nread for p in inbound_open)
        up_open: dict[str, int] = {}
        up_bytes = {d: list(b) for d, b in self.upstream_bytes.items()}
        for p in proxy.upstream_pipes:
            d = p.meta.up.destination
            up_open[d] = up_open.get(d, 0) + 1
            b = up_bytes.setdefault(d, [0, 0])
            b[0] += p.a.nread
            b[1] += p.b.nread
        dests = sorted(set(proxy.upstream_ports) | set(self.upstream_total) | set(up_bytes))

        family("yurt_sidecar_ready", "gauge", "1 once the sidecar is ready (listeners bound, a valid "
               "certificate, every upstream's first endpoints), else 0.",
               [("", {}, 1 if proxy.ready.is_set() else 0)])
        family("yurt_sidecar_inbound_connections_active", "gauge",
               "Inbound mTLS connections open to the local app.", [("", {}, len(inbound_open))])
        family("yurt_sidecar_inbound_connections_total", "counter",
               "Inbound mTLS connections accepted, authorized and passed to the local app.",
               [("", {}, self.inbound_total)])
        family("yurt_sidecar_inbound_bytes_total", "counter", "Bytes of inbound connections: received from "
               "callers, sent back to them.",
               [("", {"direction": "received"}, received), ("", {"direction": "sent"}, sent)])
        family("yurt_sidecar_upstream_connections_active", "gauge", "Connections open through an upstream.",
               [("", {"upstream": d}, up_open.get(d, 0)) for d in dests])
        family("yurt_sidecar_upstream_connections_total", "counter",
               "Connections made through an upstream (to an instance whose identity was verified).",
               [("", {"upstream": d}, self.upstream_total.get(d, 0)) for d in dests])
        family("yurt_sidecar_upstream_bytes_total", "counter", "Bytes through an upstream: sent to the "
               "destination, received from it.",
               [("", {"upstream": d, "direction": direction}, up_bytes.get(d, [0, 0])[i])
                for d in dests for i, direction in enumerate(("sent", "received"))])
        hist: list[tuple[str, dict[str, str], float]] = []
        for d in dests:
            h = self.upstream_connect.get(d) or Histogram()
            running = 0
            for bound, count in zip((*CONNECT_BUCKETS, float("inf")), h.counts, strict=True):
                running += count
                hist.append(("_bucket", {"upstream": d, "le": "+Inf" if bound == float("inf") else repr(bound)},
                             running))
            hist += [("_sum", {"upstream": d}, h.sum), ("_count", {"upstream": d}, h.n)]
        family("yurt_sidecar_upstream_connect_seconds", "histogram", "Time from a connection on an upstream "
               "listener to an mTLS session with a verified instance (failed attempts included).", hist)
        family("yurt_sidecar_upstream_errors_total", "counter", "Failed attempts to reach an upstream, by "
               "instance address and kind (connect, timeout, tls, identity; no_instance has no address).",
               [("", {"upstream": d, "address": a, "kind": k}, n)
                for (d, a, k), n in sorted(self.upstream_errors.items())])
        family("yurt_sidecar_tls_handshake_failures_total", "counter", "TLS handshakes that failed: inbound "
               "(no or bad client certificate, wrong trust domain, timeout) or to an upstream instance.",
               [("", {"side": side, **({"upstream": d} if d else {})}, n)
                for (side, d), n in sorted(self.tls_failures.items())])
        family("yurt_sidecar_tls_resumed_total", "counter", "TLS handshakes that resumed an earlier session "
               "with a ticket (no certificate signature or chain check; the identity and intentions are "
               "checked as on a full handshake).",
               [("", {"side": side}, n) for side, n in self.tls_resumed.items()])
        family("yurt_sidecar_authz_denials_total", "counter", "Inbound connections the intentions denied "
               "(refused, or closed when an intention changed), by source service.",
               [("", {"source": s}, n) for s, n in sorted(self.denials.items())])
        family("yurt_sidecar_inbound_errors_total", "counter", "Inbound connections that failed after "
               "authorization (local_service: the app behind the sidecar did not accept).",
               [("", {"kind": k}, n) for k, n in sorted(self.inbound_errors.items())])
        with self.http_lock:
            requests = sorted(self.http_requests.items())
            seconds = {k: (list(h.counts), h.sum, h.n) for k, h in sorted(self.http_seconds.items())}
            retries = sorted(self.http_retries.items())
        if requests or retries:
            family("yurt_sidecar_http_requests_total", "counter", "HTTP requests on HTTP-aware listeners, by "
                   "direction, peer (the upstream, or the source service inbound) and status class.",
                   [("", {"direction": d, "peer": p, "code": c}, n) for (d, p, c), n in requests])
            rows: list[tuple[str, dict[str, str], float]] = []
            for (d, p), (counts, total, n) in seconds.items():
                running = 0
                for bound, count in zip((*CONNECT_BUCKETS, float("inf")), counts, strict=True):
                    running += count
                    rows.append(("_bucket", {"direction": d, "peer": p,
                                             "le": "+Inf" if bound == float("inf") else repr(bound)}, running))
                rows += [("_sum", {"direction": d, "peer": p}, total), ("_count", {"direction": d, "peer": p}, n)]
            family("yurt_sidecar_http_request_duration_seconds", "histogram", "Time from a whole HTTP request "
                   "read to its answer sent (retries included).", rows)
            family("yurt_sidecar_http_retries_total", "counter", "HTTP requests sent again to an upstream "
                   "(a route's NumRetries: status codes, resets).",
                   [("", {"upstream": u}, n) for u, n in retries])
        return "".join(out)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(float(v))
    return repr(float(v))


class MetricsConn:
    """One scrape on the metrics address: `GET /metrics` answers the text format, anything else
    404; then the connection closes. Non-blocking both ways, on the reactor, with a deadline."""

    MAX_REQUEST = 8192
    TIMEOUT = 10.0

    def __init__(self, proxy: Proxy, sock) -> None:
        from .pump import IN
        self.proxy, self.sock = proxy, sock
        self.request = b""
        self.out = b""
        proxy.reactor.register(sock.fileno(), IN, self)
        self.timer = proxy.reactor.call_later(self.TIMEOUT, self.abort, "timeout")

    def on_event(self, ev: int) -> None:
        from .pump import OUT
        if self.out:
            self._send()
            return
        try:
            chunk = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort("")
            return
        self.request += chunk
        if not chunk or len(self.request) > self.MAX_REQUEST:
            self.abort("")
            return
        if b"\r\n\r\n" not in self.request and b"\n\n" not in self.request:
            return
        line = self.request.split(b"\n", 1)[0].decode("latin-1").split()
        path = line[1].split("?", 1)[0] if len(line) >= 2 else ""
        if len(line) >= 2 and line[0] in ("GET", "HEAD") and path == PATH:
            body = self.proxy.metrics.render(self.proxy).encode()
            status, ctype = b"200 OK", b"text/plain; version=0.0.4; charset=utf-8"
        else:
            body = f"not found: the sidecar's metrics are at GET {PATH}\n".encode()
            status, ctype = b"404 Not Found", b"text/plain; charset=utf-8"
        if line and line[0] == "HEAD":
            body = b""
        self.out = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        self.proxy.reactor.modify(self.sock.fileno(), OUT)
        self._send()

    def _send(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort("")
            return
        self.out = self.out[n:]
        if not self.out:
            self.abort("")

    def abort(self, reason: str) -> None:
        self.timer.cancel()
        if self.sock.fileno() >= 0:
            self.proxy.reactor.unregister(self.sock.fileno())
            self.sock.close()
