"""The agent's API inside an allocation: a unix socket in its shared dir, relayed to the agent.

A Connect-native task run by a driver with filesystem isolation (exec's chroot, a docker
container) cannot reach the agent's own socket (`<data dir>/yurt.sock`, 0600), but it sees the
allocation's shared dir as /alloc. As Nomad does for Consul (`alloc/tmp/consul_http.sock`, its
consul_http_sock hook), the agent listens on `alloc/tmp/yurt_http.sock` (mode 0666: the task may
run as any user; only the allocation's tasks see the directory) and relays each connection,
byte for byte, to its own API socket. What the task may do there is what its token allows:
the leaf route still checks its workload identity. The relay lives in the agent: an agent
restart starts it again (prerun runs again for a restored allocation).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger("yurt.client.relay")

SOCKET_NAME = "yurt_http.sock"   # in the allocation's alloc/tmp
IN_TASK_PATH = f"/alloc/tmp/{SOCKET_NAME}"
MAX_PATH = 107                   # sun_path


class AgentRelay:
    def __init__(self, path: Path, agent_socket: str) -> None:
        self.path = path
        self.agent_socket = agent_socket
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> bool:
        """Listen; False (logged) when the path cannot be a unix socket."""
        if len(str(self.path)) > MAX_PATH:
            log.warning("not relaying the agent's API into the allocation: %s is too long for a unix socket",
                        self.path)
            return False
        self.path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(self.path))
        os.chmod(self.path, 0o666)
        s.listen(64)
        self._sock = s
        threading.Thread(target=self._accept, name="yurt-agent-relay", daemon=True).start()
        return True

    def _accept(self) -> None:
        s = self._sock
        assert s is not None
        while not self._stop.is_set():
            try:
                client, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="yurt-agent-relay-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.agent_socket)
        except OSError as e:
            log.debug("relay: the agent's socket %s: %s", self.agent_socket, e)
            upstream.close()
            client.close()
            return
        t = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        t.start()
        _pipe(client, upstream)
        t.join()
        client.close()
        upstream.close()

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until src ends, then end dst's write side."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
