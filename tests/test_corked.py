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


def _serve(app=_app, stopped: list | None = None, keep_alive: float = 5, **tls: str):
    port = _free_port()
    # proxy_headers off, as the agent's: uvicorn's middleware for them would wrap the app
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="critical",
                            lifespan="off", http=http_protocol(), proxy_headers=False,
                            timeout_keep_alive=keep_alive, **tls)
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
    if stopped is not None:
        stopped.append(not t.is_alive())


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


class _FastApp:
    """An app with the protocol's fast path (`fast(request)`, agent/corked.py's FastRequest):
    /fast/now answered at once, /fast/park parked until an ASGI request to /wake answers it
    (or the wait is ended: `ended` records how); the rest through ASGI, as _app answers."""

    def __init__(self) -> None:
        self.parked: list = []
        self.ended: list[bool] = []

    @staticmethod
    def _answer(request, body: bytes) -> None:
        request.respond(200, [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())], body)

    def fast(self, request) -> bool:
        path = request.url.partition(b"?")[0]
        if request.method == b"GET" and path == b"/fast/now":
            self._answer(request, b"now:" + request.url)
            return True
        if request.method == b"GET" and path == b"/fast/park":
            self.parked.append(request)

            def end(answer: bool) -> None:
                self.ended.append(answer)
                if answer:
                    self._answer(request, b"stopped")
            request.park(end)
            return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/wake":
            woken, self.parked = self.parked, []
            for request in woken:
                self._answer(request, b"woken")
            scope = {**scope, "path": f"/woke{len(woken)}"}
        await _app(scope, receive, send)


@pytest.fixture
def fast_app():
    return _FastApp()


@pytest.fixture
def fast_server(fast_app):
    yield from _serve(fast_app)


def _until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _raw(url: str) -> socket.socket:
    host, port = url.split("://")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_answers(sock: socket.socket, n: int) -> list[tuple[bytes, bytes]]:
    """n answers (head, body) framed by their content-length."""
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {len(out)} answers"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk, "the connection closed in a body"
            buf += chunk
        out.append((head, buf[:length]))
        buf = buf[length:]
    return out


def test_a_fast_answer_is_a_whole_http_answer_between_asgi_ones(fast_server) -> None:
    """Answered by the app before any ASGI cycle: the default headers uvicorn adds (date,
    server) are there, and the same keep-alive connection goes on with ASGI answers."""
    with httpx.Client(base_url=fast_server, trust_env=False, timeout=10) as c:
        for i in range(3):
            r = c.get("/fast/now", params={"i": i})
            assert r.status_code == 200 and r.text == f"now:/fast/now?i={i}"
            assert "date" in r.headers and r.headers["server"] == "uvicorn"
            assert c.get(f"/r{i}").text == f"/r{i}" * 1000
            assert r.headers.get("connection") != "close"


def test_a_parked_request_is_answered_later_and_its_connection_goes_on(fast_server, fast_app) -> None:
    with httpx.Client(base_url=fast_server, trust_env=False, timeout=30) as c, \
            httpx.Client(base_url=fast_server, trust_env=False, timeout=30) as other:
        got: list = []
        t = threading.Thread(target=lambda: got.append(c.get("/fast/park")), daemon=True)
        t.start()
        _until(lambda: fast_app.parked, "the request was not parked")
        assert other.get("/wake").text == "/woke1" * 1000
        t.join(10)
        assert got and got[0].status_code == 200 and got[0].text == "woken"
        assert c.get("/after").text == "/after" * 1000
        assert fast_app.ended == []


def test_a_client_that_goes_ends_the_wait_without_an_answer(fast_server, fast_app) -> None:
    sock = _raw(fast_server)
    sock.sendall(b"GET /fast/park HTTP/1.1\r\nHost: x\r\n\r\n")
    _until(lambda: fast_app.parked, "the request was not parked")
    sock.close()
    _until(lambda: fast_app.ended, "the wait was not ended when the client went")
    assert fast_app.ended == [False]


def test_a_request_pipelined_behind_a_parked_one_is_answered_after_it(fast_server, fast_app) -> None:
    sock = _raw(fast_server)
    try:
        sock.sendall(b"GET /fast/park HTTP/1.1\r\nHost: x\r\n\r\nGET /r2 HTTP/1.1\r\nHost: x\r\n\r\n")
        _until(lambda: fast_app.parked, "the request was not parked")
        with httpx.Client(base_url=fast_server, trust_env=False, timeout=10) as other:
            assert other.get("/wake").status_code == 200
        (_, first), (_, second) = _read_answers(sock, 2)
        assert first == b"woken" and second == b"/r2" * 1000
    finally:
        sock.close()


def test_http_1_0_gets_its_answer_and_the_connection_closes(fast_server) -> None:
    sock = _raw(fast_server)
    try:
        sock.sendall(b"GET /fast/now HTTP/1.0\r\n\r\n")
        [(head, body)] = _read_answers(sock, 1)
        assert body == b"now:/fast/now" and b"connection: close" in head.lower()
        sock.settimeout(10)
        assert sock.recv(100) == b""
    finally:
        sock.close()


def test_a_server_stopping_answers_its_parked_requests_at_once(fast_app) -> None:
    """uvicorn asks each connection to finish: a parked request is answered then, its connection
    closed, and the server stops (it does not wait out the requests' waits)."""
    stopped: list[bool] = []
    serving = _serve(fast_app, stopped)
    url = next(serving)
    sock = _raw(url)
    try:
        sock.sendall(b"GET /fast/park HTTP/1.1\r\nHost: x\r\n\r\n")
        _until(lambda: fast_app.parked, "the request was not parked")
        with pytest.raises(StopIteration):
            next(serving)     # should_exit, then joins the server's thread
        [(head, body)] = _read_answers(sock, 1)
        assert body == b"stopped" and b"connection: close" in head.lower()
        assert fast_app.ended == [True] and stopped == [True]
    finally:
        sock.close()


def test_a_parked_request_pipelined_behind_an_answered_one_outlives_the_keep_alive_timer(fast_app) -> None:
    """The first request of a read answered at once arms uvicorn's keep-alive timer; the second,
    parked, must not be cut by it (here 0.2 s: the connection stays open five times as long)."""
    serving = _serve(fast_app, keep_alive=0.2)
    url = next(serving)
    sock = _raw(url)
    try:
        sock.sendall(b"GET /fast/now HTTP/1.1\r\nHost: x\r\n\r\nGET /fast/park HTTP/1.1\r\nHost: x\r\n\r\n")
        [(_, first)] = _read_answers(sock, 1)
        assert first == b"now:/fast/now"
        _until(lambda: fast_app.parked, "the request was not parked")
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):   # neither an answer nor the connection's end
            sock.recv(100)
        sock.settimeout(10)
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as other:
            assert other.get("/wake").status_code == 200
        [(_, second)] = _read_answers(sock, 1)
        assert second == b"woken"
    finally:
        sock.close()
        for _ in serving:
            pass
