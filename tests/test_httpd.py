"""The lean HTTP/1.1 server (challenge_srv/httpd.py, the http-01 responder's), on asyncio's
transports and on the stub CA's kernel-stamped one (bench/_httpd.py): keep-alive and
pipelined requests answered in order, HEAD, bodies, bad requests; its stamps bracket what
the client saw."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _httpd import serve_stamped
from pytest_wec_challenge_srv.httpd import Answer, HttpServerProtocol, ServerRequest

from pytest_wec.acme import HttptoolsTransport


class Server:
    def __init__(self) -> None:
        self.seen: list[ServerRequest] = []
        self.sent: list[float] = []
        self.port = 0

    async def handle(self, req: ServerRequest) -> Answer:
        self.seen.append(req)
        if req.target.startswith("/slow"):
            await asyncio.sleep(0.03)
        if req.target == "/boom":
            raise ValueError("a handler's bug")
        body = f"{req.method} {req.target} {len(req.body)}".encode()
        return 200, [("Content-Type", "text/plain"), ("Link", "<a>"), ("Link", "<b>")], \
            body, self.sent.append


@pytest_asyncio.fixture(params=["asyncio", "stamped"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The server on asyncio's transports, and on the kernel-stamped one (plain TCP)."""
    srv = Server()
    loop = asyncio.get_running_loop()
    if request.param == "asyncio":
        listener = await loop.create_server(
            lambda: HttpServerProtocol(srv.handle, max_body=1000), "127.0.0.1", 0)
        srv.port = listener.sockets[0].getsockname()[1]
        yield srv
        listener.close()
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv.port = sock.getsockname()[1]
    serve_stamped(loop, sock, srv.handle, max_body=1000)
    yield srv
    loop.remove_reader(sock.fileno())
    sock.close()


async def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_keep_alive_head_and_stamps(server: Server) -> None:
    t = HttptoolsTransport(ssl=False)
    url = f"http://127.0.0.1:{server.port}"
    try:
        before = time.time()
        resp = await t.request("POST", url + "/slow?x=1", headers={}, body=b"abc", timeout=5)
        assert (resp.status, resp.body) == (200, b"POST /slow?x=1 3")
        assert resp.headers.get_all("link") == ["<a>", "<b>"]
        head = await t.request("HEAD", url + "/n", headers={}, body=None, timeout=5)
        assert head.status == 200 and head.body == b""
        after = time.time()
    finally:
        await t.aclose()
    first, second = server.seen
    assert before <= first.received <= server.sent[0] - 0.03 <= after
    assert server.sent[0] <= second.received <= server.sent[1] <= after
    assert first.headers[0][0] == "host"  # names lowered, in order
    assert first.header("host") == f"127.0.0.1:{server.port}" and first.header("x") == ""
    assert first.peer == "127.0.0.1"


@pytest.mark.asyncio
async def test_a_large_answer_is_written_whole(server: Server) -> None:
    big = b"GET /" + b"x" * 900 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    out = await raw(server.port, big * 50 + b"BAD\r\n\r\n")  # 50 answers, then the 400
    assert out.count(b"HTTP/1.1 200 OK") == 50, out[:300]
    assert out.count(b"HTTP/1.1 400 Bad Request") == 1 and out.rindex(b"400") > out.rindex(b"200")


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    out = await raw(server.port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
                                 b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.index(b"GET /slow 0") < out.index(b"GET /fast 0")
    assert b"Connection: close" in out


@pytest.mark.asyncio
@pytest.mark.parametrize(("data", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, b"413"),
    (b"GET /boom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"500"),
])
async def test_bad_requests_get_an_answer(server: Server, data: bytes, status: bytes) -> None:
    out = await raw(server.port, data)
    assert out.startswith(b"HTTP/1.1 " + status), out


@pytest.mark.asyncio
async def test_a_half_closed_connection_still_gets_its_answers(server: Server) -> None:
    # the client sends its requests and shuts its side down (SHUT_WR): both are answered,
    # then the server closes
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    writer.write_eof()
    try:
        async with asyncio.timeout(5):
            out = await reader.read(-1)
    finally:
        writer.close()
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.endswith(b"GET /b 0"), out


@pytest.mark.asyncio
async def test_bytes_that_came_before_the_accept_keep_the_kernels_stamp() -> None:
    # the client writes at once; the server accepts and reads 50 ms later: the request is
    # stamped when its bytes arrived, not when they were read
    seen: list[ServerRequest] = []

    async def handle(req: ServerRequest) -> Answer:
        seen.append(req)
        return 200, [], b"ok", None

    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serve_stamped(loop, sock, handle)
    client = socket.create_connection(sock.getsockname())
    try:
        sent = time.time()
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        time.sleep(0.05)  # the loop is held: nothing is accepted or read for 50 ms
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.005)
        assert sent <= seen[0].received < sent + 0.02, seen[0].received - sent
    finally:
        client.close()
        loop.remove_reader(sock.fileno())
        sock.close()


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_and_a_handlers_failure_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    async def handle(req: ServerRequest) -> Answer:
        if req.target == "/boom":
            raise ValueError("a handler's bug")
        return 200, [], b"ok", None

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: HttpServerProtocol(handle, idle_timeout=0.2), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        # an answer restarts the wait: the connection closes 0.2 s after it, not before
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        writer.write(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
        t0 = time.monotonic()
        with caplog.at_level("ERROR"):
            async with asyncio.timeout(5):
                out = await reader.read(-1)  # until the server closes it
        writer.close()
        assert out.startswith(b"HTTP/1.1 500") and b"ValueError" in out
        assert 0.15 <= time.monotonic() - t0 < 2
        assert any("GET /boom from 127.0.0.1: the handler failed" in r.getMessage()
                   for r in caplog.records)
    finally:
        listener.close()
