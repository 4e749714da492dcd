#!/usr/bin/env python3
"""count-api: `GET /` answers {"count": N, "hostname": "..."}; N counts the requests served.

The same contract as hashicorpnomad/counter-api: it listens on $PORT (default 9001), on
127.0.0.1 unless $BIND says otherwise, because in the mesh only its sidecar should reach it.
"""

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_count = 0
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server_version = "counter-api/1"
    protocol_version = "HTTP/1.1"  # keep-alive: long-lived connections through the mesh

    def do_GET(self) -> None:
        global _count
        if self.path not in ("/", "/health"):
            self.send_error(404, "try GET /")
            return
        if self.path == "/health":
            body = b'{"status": "ok"}'
        else:
            with _lock:
                _count += 1
                n = _count
            body = json.dumps({"count": n, "hostname": socket.gethostname()}).encode()
            print(f"count {n} served", flush=True)   # the live count, in the task's stdout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT", "9001"))
    bind = os.environ.get("BIND", "127.0.0.1")
    server = ThreadingHTTPServer((bind, port), Handler)
    print(f"counter-api listening on {bind}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
