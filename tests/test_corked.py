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
    body = scope["path"].encode() * 1000
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def server():
    port = _free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, log_config=None, log_level="critical",
                            lifespan="off", http=http_protocol())
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=10)


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
