#!/usr/bin/env python3
"""count-dashboard: a page showing the live count from count-api, and `GET /api/count`.

`/api/count` returns what the dashboard last got from $COUNTING_SERVICE_URL, or
{"count": -1, "hostname": "[Unreachable]"} when the upstream fails — the contract of
hashicorpnomad/counter-dashboard. Listens on 0.0.0.0:$PORT (default 9002).
"""

import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UNREACHABLE = {"count": -1, "hostname": "[Unreachable]"}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Count Dashboard</title>
<style>
 body { font-family: system-ui, sans-serif; background: #f4f5f7; color: #1f2430; margin: 0; }
 main { max-width: 28rem; margin: 4rem auto; background: white; border-radius: 12px; padding: 2rem;
        box-shadow: 0 2px 12px rgba(0,0,0,.08); text-align: center; }
 h1 { font-size: 1.1rem; font-weight: 600; color: #5b6275; margin: 0 0 1rem; }
 #count { font-size: 4.5rem; font-weight: 700; margin: .5rem 0; }
 #host { color: #5b6275; }
 .down #count { color: #c73445; }
 .status { font-size: .85rem; margin-top: 1.5rem; }
 .dot { display: inline-block; width: .6rem; height: .6rem; border-radius: 50%; background: #2eb039;
        margin-right: .4rem; }
 .down .dot { background: #c73445; }
</style></head>
<body><main id="box"><h1>Count Dashboard</h1>
<div id="count">…</div><div id="host">connecting…</div>
<div class="status"><span class="dot"></span><span id="state">Connected</span></div></main>
<script>
async function tick() {
  let data;
  try { data = await (await fetch('/api/count')).json(); } catch (e) { data = {count: -1, hostname: '[Unreachable]'}; }
  const down = data.count < 0;
  document.getElementById('box').className = down ? 'down' : '';
  document.getElementById('count').textContent = down ? '—' : data.count;
  document.getElementById('host').textContent = down ? 'count-api is unreachable' : 'served by ' + data.hostname;
  document.getElementById('state').textContent = down ? 'Disconnected' : 'Connected';
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""


def fetch_count(url: str) -> dict:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=2) as resp:
            data = json.loads(resp.read())
        return {"count": int(data["count"]), "hostname": str(data.get("hostname", ""))}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return dict(UNREACHABLE)


class Handler(BaseHTTPRequestHandler):
    server_version = "counter-dashboard/1"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/api/count":
            url = os.environ.get("COUNTING_SERVICE_URL", "http://127.0.0.1:8080")
            self._send(200, "application/json", json.dumps(fetch_count(url)).encode())
        elif self.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode())
        elif self.path == "/health":
            self._send(200, "application/json", b'{"status": "ok"}')
        else:
            self.send_error(404)

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT", "9002"))
    server = ThreadingHTTPServer((os.environ.get("BIND", "0.0.0.0"), port), Handler)
    print(f"counter-dashboard listening on :{port}, counting service at "
          f"{os.environ.get('COUNTING_SERVICE_URL', 'http://127.0.0.1:8080')}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
