"""Exposed paths (Consul's `expose`, Nomad's `proxy { expose { path { ... } } }`): plain HTTP from
outside the mesh to chosen paths of the app, e.g. `/metrics` for a Prometheus that holds no mesh
certificate.

Each listener port (a port of the group's network, so the mesh-only firewall opens it and it is
mapped on the host) serves only its paths: a request whose path (without its query) is one of
them goes to `127.0.0.1:<local_path_port>` in the group's namespace; any other path answers 404
naming the exposed ones, so the rest of the app stays reachable only through the mesh. One thread
a connection (`threaded.ThreadedConns`), keep-alive, each request logged like any connection
(`"dir": "expose"`). Imported only when the proxy has exposed paths (it imports h11).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import h11

from .config import ExposePath
from .gateway import _answer, _drain_body, forward_http
from .inbound import Listener, listen
from .threaded import ThreadedConns, next_cycle

if TYPE_CHECKING:
    from .proxy import Proxy


class Exposed:
    def __init__(self, proxy: Proxy, paths: list[ExposePath]) -> None:
        self.proxy = proxy
        self.threads = ThreadedConns(proxy, proxy.cfg.max_connections)
        self.by_listener: dict[tuple[str, int], dict[str, ExposePath]] = {}
        for p in paths:
            self.by_listener.setdefault((p.listen_addr, p.listen_port), {})[p.path] = p

    def bind(self) -> None:
        p = self.proxy
        for (addr, port), paths in self.by_listener.items():
            lst = Listener(p, listen(addr, port), lambda s, a, paths=paths: self.threads.spawn(
                self._serve, paths, s, a, sock=s), p.cfg.max_connections)
            p.listeners.append(lst)
        p.log.event("expose", paths=[{"path": e.path, "local_path_port": e.local_path_port,
                                      "listener_port": port}
                                     for (_, port), paths in self.by_listener.items() for e in paths.values()])

    def _serve(self, paths: dict[str, ExposePath], sock: socket.socket, addr: Any) -> None:
        p = self.proxy
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        sock.setblocking(True)
        sock.settimeout(p.cfg.idle_timeout or None)
        server = h11.Connection(h11.SERVER)
        while True:
            ev = self.threads.next_request(server, sock)
            if not isinstance(ev, h11.Request):
                return
            t0 = time.monotonic()
            path = ev.target.decode("latin-1", "replace").split("?", 1)[0]
            exposed = paths.get(path)
            if exposed is None:
                why = f'path "{path}" is not exposed here (exposed: {", ".join(sorted(paths))})'
                _drain_body(server, sock)
                _answer(server, sock, 404, why)
                p.log.conn("expose", peer, p.cfg.service, peer, 0, 0, t0, "refused", why, path=path, status=404)
            else:
                status, why = self._forward(server, sock, ev, exposed, peer)
                p.log.conn("expose", peer, p.cfg.service, peer, 0, 0, t0, "allowed" if status < 500 else "error",
                           why, path=path, status=status, method=ev.method.decode())
            if not next_cycle(server):
                return

    def _forward(self, server: h11.Connection, sock: socket.socket, req: h11.Request, e: ExposePath,
                 peer: str) -> tuple[int, str]:
        target = f"127.0.0.1:{e.local_path_port}"
        try:
            up = socket.create_connection(("127.0.0.1", e.local_path_port), timeout=self.proxy.cfg.connect_timeout)
        except OSError as err:
            why = f"the app does not answer on {target}: {err.strerror or err}"
            _drain_body(server, sock)
            _answer(server, sock, 503, why)
            return 503, why
        up.settimeout(self.proxy.cfg.idle_timeout or None)
        try:
            return forward_http(server, sock, req, up, peer, closing=lambda: bool(self.proxy.draining),
                                via=f"via {target}", failed=f"the app on {target} closed the connection")
        finally:
            up.close()
