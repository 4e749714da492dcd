"""An httpx transport that dials by service name through `Service.connect`.

httpx -> httpcore's connection pool, with a network backend whose `connect_tcp(host, port)`
is `Service.connect(host)`: the URL's host is the destination service, the stream is already
mTLS (the URL stays http://, so httpcore adds no TLS of its own). Connections are pooled and
kept alive as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

if TYPE_CHECKING:
    from .service import Service


class _MeshBackend(httpcore.NetworkBackend):
    def __init__(self, service: Service) -> None:
        self.service = service

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        from .service import ConnectError
        try:
            sock = self.service.connect(host, timeout=timeout or 10.0)
        except ConnectError as e:
            raise httpcore.ConnectError(str(e)) from None
        return SyncStream(sock)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("the mesh transport dials services by name, not unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def mesh_transport(service: Service) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport()
    transport._pool = httpcore.ConnectionPool(network_backend=_MeshBackend(service))
    return transport
