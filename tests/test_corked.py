"""agent/corked.py: an HTTP response's writes leave together at the end of the event loop's turn,
and nothing is lost, reordered or held back: over real loopback sockets and a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from yurt.agent.corked import CorkedTransport, http_protocol

from .meshca import self_signed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_writes_of_one_turn_leave_together_and_close_flushes_first() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        corked = CorkedTransport(transport, loop)
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(b"")
        corked.write(b"body")
        with pytest.raises(BlockingIOError):   # held until the turn ends
            peer.recv(100)
        await asyncio.sleep(0)
        assert peer.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        corked.writelines([b"last ", b"words"])
        corked.close()                        # what is pending goes out before the close
        await asyncio.sleep(0.05)
        peer.setblocking(True)
        peer.settimeout(5)
        got = b""
        while chunk := peer.recv(100):
            got += chunk
        assert got == b"last words"
        peer.close()

    asyncio.run(main())


FIRST_READ = threading.Event()


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":   # a chunk, then the app waits until the client has read it
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        read = await asyncio.to_thread(FIRST_READ.wait, 20)
        await send({"type": "http.response.body", "body": b"second\n" if read else b"held back\n",
                    "more_body": False})
        return
    if scope["path"] == "/big":      # more than a socket takes at once
        body = bytes(range(256)) * (32 * 1024)
    else:
        body = scope["path"].encode() * 1000
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _serve(**tls: str):
    port = _free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, log_config=None, log_level="critical",
                            lifespan="off", http=http_protocol(), **tls)
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=10)


@pytest.fixture
def server():
    yield from _serve()


@pytest.fixture
def tls_server(tmp_path):
    """The same app behind uvicorn's TLS: a certificate for 127.0.0.1 of its own."""
    cert, key = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    yield from _serve(ssl_certfile=str(tmp_path / "cert.pem"), ssl_keyfile=str(tmp_path / "key.pem"))


def test_responses_are_whole_and_in_order_on_one_connection(server) -> None:
    with httpx.Client(base_url=server, trust_env=False, timeout=10) as c:
        for i in range(50):
            r = c.get(f"/r{i}")
            assert r.status_code == 200
            assert r.text == f"/r{i}" * 1000


def test_a_streamed_chunk_is_not_held_back(server) -> None:
    """The app sends a chunk and waits for the client to have read it before it goes on: a
    chunk held back until the response's end would never be read ("held back")."""
    FIRST_READ.clear()
    with httpx.Client(base_url=server, trust_env=False, timeout=30) as c:
        with c.stream("GET", "/stream") as r:
            lines = r.iter_lines()
            assert next(lines) == "first"
            FIRST_READ.set()
            assert next(lines) == "second"


def test_an_answer_bigger_than_the_socket_takes_at_once_arrives_whole(server) -> None:
    """8 MB, more than the socket takes at once: the transport queues the rest, in order."""
    with httpx.Client(base_url=server, trust_env=False, timeout=30) as c:
        for _ in range(3):
            r = c.get("/big")
            assert r.status_code == 200 and r.content == bytes(range(256)) * (32 * 1024)
            assert c.get("/after").text == "/after" * 1000   # the connection goes on in order


def test_over_tls_the_answers_go_through_tls(tls_server, tmp_path) -> None:
    """Over uvicorn's TLS the joined writes go through the TLS transport whole and in order,
    small answers and big ones (the corked transport wraps the TLS transport, not the socket)."""
    import ssl
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    with httpx.Client(base_url=tls_server, trust_env=False, timeout=30, verify=ctx) as c:
        for i in range(20):
            assert c.get(f"/r{i}").text == f"/r{i}" * 1000
        r = c.get("/big")
        assert r.status_code == 200 and r.content == bytes(range(256)) * (32 * 1024)
