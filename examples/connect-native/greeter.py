"""A plain HTTP app behind a sidecar: it knows nothing of TLS or the mesh.

    GET /        {"service": "greeter"}
    GET /native  what native-api answers, through the sidecar's upstream (sidecar -> native)
    GET /relay   native-api's /greeter: greeter -> native (by the sidecar) -> greeter (by yurt.connect)
"""

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = "http://" + os.environ.get("NOMAD_UPSTREAM_ADDR_native_api", "127.0.0.1:8080")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/native", "/relay"):
            with urllib.request.urlopen(UPSTREAM + ("/greeter" if self.path == "/relay" else "/"), timeout=10) as r:
                body = {"service": "greeter", "native": json.load(r)}
        else:
            body = {"service": "greeter"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", 9001), Handler).serve_forever()
