"""A Connect-native app: it joins the mesh itself with `yurt.connect` (no sidecar).

It serves HTTP over the mesh's mTLS on port 9443 (only callers the intentions allow get through)
and dials the sidecar-proxied "greeter" service by name. Run by Yurt as the task of a
`connect { native = true }` service, it finds everything in its environment: CONSUL_HTTP_ADDR
(the agent's socket), CONSUL_HTTP_TOKEN_FILE (its workload identity), YURT_CONNECT_SERVICE.
Outside Yurt, set those three yourself (see README, "Connect Native").

    GET /         {"service": "native-api", "caller": <the caller's SPIFFE ID>}
    GET /greeter  what greeter answers, fetched over the mesh (native -> sidecar)
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from yurt.connect import Service

svc = Service()   # its leaf and roots from the local agent, kept fresh
mesh = httpx.Client(transport=svc.http_transport(), timeout=10)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/greeter":
            r = mesh.get("http://greeter/")   # the host is the destination service
            body = {"service": svc.name, "greeter": r.json()}
        else:
            cert = self.request.getpeercert() or {}
            caller = next((v for k, v in cert.get("subjectAltName", ()) if k == "URI"), "")
            body = {"service": svc.name, "caller": caller}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("NOMAD_PORT_https", "9443"))), Handler)
# the handshake runs on accept: a caller the intentions deny is dropped there
server.socket = svc.server_context().wrap_socket(server.socket, server_side=True)
print(f"{svc.name}: serving as {svc.spiffe_id} (certificate {svc.serial})", flush=True)
server.serve_forever()
