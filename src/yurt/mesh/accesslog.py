"""The proxy's log: JSON lines on stdout (the sidecar task's log), one object per line.

Two kinds, told apart by "type":
  {"type":"conn","ts":"2025-01-01T12:00:00.123Z","dir":"inbound"|"upstream","src":"<source
   service or client address>","dst":"<destination service>","peer":"ip:port","bytes_in":N,
   "bytes_out":N,"dur_ms":1.23,"verdict":"allowed"|"denied"|"refused"|"error","reason":"..."}
     one line per connection, written when it closes. bytes_in = bytes from the connecting side
     forwarded on, bytes_out = bytes sent back to it. `verdict` is "allowed" for a connection
     that was proxied (reason says how it ended if not by a clean close), "denied" when
     intentions refused it (reason = the authorizer's reason), "refused" for a failed TLS
     handshake or a bad identity, "error" when the far side could not be reached. Inbound lines
     also carry "serial" (the client certificate's serial), upstream lines "upstream" (the
     instance address used) and "attempts".
  {"type":"request","ts":...,"dir":"inbound"|"upstream","src":"<source service>","dst":"<service>",
   "method":"GET","path":"/api","status":200,"upstream":"ip:port","dur_ms":1.2,"retries":0,
   "verdict":"allowed"|"denied"|"error"[,"reason":"..."]}
     one line per HTTP request on an HTTP-aware listener (mesh/l7.py), written when answered.
  {"type":"event","ts":...,"event":"ready"|"leaf"|"roots"|"watch-error"|...,...}
     lifecycle events: listeners bound, certificates rotated, watch failures.
Every line also carries "pid", the process that wrote it: with -workers N, which worker
served the connection (or loaded the certificate).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable


def _ts(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _stdout(line: str) -> None:
    try:
        os.write(1, line.encode())
    except OSError:
        pass


class AccessLog:
    """Writes JSON lines through `write` (stdout by default; tests pass their own)."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self.write = write or _stdout
        self.pid = os.getpid()  # made after -workers forked: each worker has its own log

    def _emit(self, obj: dict) -> None:
        self.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def conn(self, direction: str, src: str, dst: str, peer: str, bytes_in: int, bytes_out: int,
             started: float, verdict: str, reason: str = "", **extra: object) -> None:
        rec = {"type": "conn", "ts": _ts(), "pid": self.pid, "dir": direction, "src": src, "dst": dst,
               "peer": peer, "bytes_in": bytes_in, "bytes_out": bytes_out,
               "dur_ms": round((time.monotonic() - started) * 1000, 3), "verdict": verdict}
        if reason:
            rec["reason"] = reason
        rec.update(extra)
        self._emit(rec)

    def request(self, direction: str, src: str, dst: str, method: str, path: str, status: int, upstream: str,
                seconds: float, retries: int, verdict: str, **extra: object) -> None:
        self._emit({"type": "request", "ts": _ts(), "pid": self.pid, "dir": direction, "src": src, "dst": dst,
                    "method": method, "path": path, "status": status, "upstream": upstream,
                    "dur_ms": round(seconds * 1000, 3), "retries": retries, "verdict": verdict, **extra})

    def event(self, name: str, **fields: object) -> None:
        self._emit({"type": "event", "ts": _ts(), "pid": self.pid, "event": name, **fields})
