"""HttptoolsTransport against raw asyncio servers that answer byte for byte what each
test needs: keep-alive reuse, idle connections the server closed, broken HTTP, bad URLs,
chunked bodies and interim responses, on both event loops."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import uvloop

from pytest_wec.acme import (
    AcmeBodyTooLarge,
    AcmeConnectError,
    AcmeHttpError,
    AcmeTimeout,
    HttptoolsTransport,
    make_transport,
)
from pytest_wec.acme._httpconn import MAX_HEAD, Connection
from pytest_wec.acme._stamped import KERNEL_STAMPS
from pytest_wec.worker.runner import new_event_loop

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class RawServer:
    """Counts connections and requests; ``handler`` answers each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def answering(srv_ref: list[RawServer], *answers: bytes, keep: bool = True) -> Handler:
    """Answer each request on a connection with the next of ``answers`` (the last
    repeats); close after the first answer unless ``keep``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = 0
        while True:
            await srv_ref[0].read_request(reader)
            writer.write(answers[min(i, len(answers) - 1)])
            await writer.drain()
            i += 1
            if not keep:
                return

    return handler


async def serve(*answers: bytes, keep: bool = True) -> RawServer:
    ref: list[RawServer] = []
    srv = RawServer(answering(ref, *answers, keep=keep))
    ref.append(srv)
    return srv


@pytest_asyncio.fixture
async def transport() -> AsyncIterator[HttptoolsTransport]:
    t = HttptoolsTransport(ssl=False, max_body=64 * 1024)
    yield t
    await t.aclose()


async def get(t: HttptoolsTransport, url: str, timeout: float = 5.0, *,
              method: str = "GET", body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    resp = await t.request(method, url, headers=headers or {}, body=body, timeout=timeout)
    return resp.status, resp.body


@pytest.mark.asyncio
async def test_keep_alive_reuses_one_connection(transport: HttptoolsTransport) -> None:
    async with await serve(OK) as srv:
        for _ in range(5):
            assert await get(transport, srv.url + "/x") == (200, b"{}")
        assert srv.connections == 1 and len(srv.requests) == 5
        assert transport.stats() == {"open": 1, "idle": 1}
        first = srv.requests[0].decode()
        assert first.startswith("GET /x HTTP/1.1\r\n")
        assert f"Host: {srv.url[7:]}\r\n" in first
        assert "User-Agent: pytest-wec/" in first and "Accept-Encoding: identity" in first


@pytest.mark.asyncio
async def test_post_body_and_headers_reach_the_server(transport: HttptoolsTransport) -> None:
    async with await serve(OK) as srv:
        await get(transport, srv.url + "/p?q=1", method="POST", body=b'{"a":1}',
                  headers={"Content-Type": "application/jose+json", "User-Agent": "mine"})
        req = srv.requests[0].decode()
        assert req.startswith("POST /p?q=1 HTTP/1.1\r\n")
        assert "Content-Length: 7\r\n" in req and req.endswith('\r\n\r\n{"a":1}')
        assert "User-Agent: mine\r\n" in req and "pytest-wec" not in req


@pytest.mark.asyncio
async def test_connection_close_is_honoured(transport: HttptoolsTransport) -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with await serve(answer, keep=False) as srv:
        for _ in range(3):
            assert await get(transport, srv.url) == (200, b"ok")
        assert srv.connections == 3
        assert transport.stats()["idle"] == 0


@pytest.mark.asyncio
async def test_idle_connection_closed_by_server_is_replaced(
        transport: HttptoolsTransport) -> None:
    # the server answers once per connection and closes without saying so: the pooled
    # connection is dead when the next request goes out, which is retried on a new one
    async with await serve(OK, keep=False) as srv:
        assert await get(transport, srv.url) == (200, b"{}")
        await asyncio.sleep(0.05)
        assert await get(transport, srv.url) == (200, b"{}")
        assert srv.connections == 2


@pytest.mark.asyncio
async def test_chunked_body_and_interim_response(transport: HttptoolsTransport) -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nLocation: /a/1\r\n\r\n"
              b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    async with await serve(answer, OK) as srv:
        resp = await transport.request("POST", srv.url, headers={}, body=b"x", timeout=5)
        assert (resp.status, resp.body, resp.headers["location"]) == (201, b"abcdefg", "/a/1")
        assert await get(transport, srv.url) == (200, b"{}")  # the connection stays usable
        assert srv.connections == 1


@pytest.mark.asyncio
async def test_body_until_close_and_no_content(transport: HttptoolsTransport) -> None:
    async with await serve(b"HTTP/1.1 200 OK\r\n\r\nall of it", keep=False) as srv:
        assert await get(transport, srv.url) == (200, b"all of it")
    async with await serve(b"HTTP/1.1 204 No Content\r\nReplay-Nonce: n1\r\n\r\n") as srv:
        resp = await transport.request("GET", srv.url, headers={}, body=None, timeout=5)
        assert (resp.status, resp.body, resp.headers["replay-nonce"]) == (204, b"", "n1")


@pytest.mark.asyncio
async def test_head_does_not_wait_for_a_body(transport: HttptoolsTransport) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\nReplay-Nonce: n2\r\n\r\n"
    async with await serve(answer) as srv:
        t0 = time.monotonic()
        resp = await transport.request("HEAD", srv.url, headers={}, body=None, timeout=5)
        assert (resp.status, resp.body, resp.headers["replay-nonce"]) == (200, b"", "n2")
        assert time.monotonic() - t0 < 2


@pytest.mark.asyncio
@pytest.mark.parametrize("answer, error", [
    (b"SPDY/9 banana\r\n\r\n", AcmeHttpError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", AcmeHttpError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", AcmeHttpError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n", AcmeBodyTooLarge),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n" + b"x" * 65536
     + b"\r\n10000\r\n" + b"y" * 65536 + b"\r\n0\r\n\r\n", AcmeBodyTooLarge),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * (MAX_HEAD + 10), AcmeHttpError),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
     AcmeHttpError),
    (b"", AcmeConnectError),
], ids=["garbage", "bad-length", "cut", "length-too-large", "chunked-too-large",
        "endless-head", "upgrade", "closed-without-answer"])
async def test_broken_answers_give_clear_errors(
        transport: HttptoolsTransport, answer: bytes, error: type[Exception]) -> None:
    async with await serve(answer, keep=False) as srv:
        with pytest.raises(error) as info:
            await get(transport, srv.url + "/broken")
        assert "GET http://127.0.0.1" in str(info.value)
        assert transport.stats() == {"open": 0, "idle": 0}  # nothing broken is kept
    async with await serve(OK) as srv:
        assert await get(transport, srv.url) == (200, b"{}")


@pytest.mark.asyncio
async def test_unsolicited_bytes_retire_the_connection(transport: HttptoolsTransport) -> None:
    # an answer followed by a second one nobody asked for: the stream is out of step
    async with await serve(OK + OK) as srv:
        assert await get(transport, srv.url) == (200, b"{}")
        await asyncio.sleep(0.05)
        assert await get(transport, srv.url) == (200, b"{}")
        assert srv.connections == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1/a b", "http://127.0.0.1:1/a\r\nX-Injected: 1", "ftp://127.0.0.1/",
    "http:///nohost", "http://127.0.0.1:99999/", "http://127.0.0.1:1/\u00e9",
])
async def test_bad_urls_are_refused_before_sending(transport: HttptoolsTransport,
                                                   url: str) -> None:
    with pytest.raises(AcmeHttpError):
        await get(transport, url)


@pytest.mark.asyncio
async def test_bad_header_values_are_refused(transport: HttptoolsTransport) -> None:
    async with await serve(OK) as srv:
        with pytest.raises(AcmeHttpError):
            await get(transport, srv.url, headers={"X-A": "1\r\nX-Injected: 2"})
        assert srv.requests == []


@pytest.mark.asyncio
async def test_timeout_and_cancellation_drop_the_connection(
        transport: HttptoolsTransport) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(30)

    async with RawServer(silent) as srv:
        with pytest.raises(AcmeTimeout):
            await get(transport, srv.url, timeout=0.2)
        task = asyncio.ensure_future(get(transport, srv.url))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.stats() == {"open": 0, "idle": 0}


@pytest.mark.asyncio
async def test_each_exchange_times_out_at_its_own_deadline(
        transport: HttptoolsTransport) -> None:
    """The pool's one timer: a short timeout begun after a long one still fires on time, the
    long one is not failed with it, and the timer comes back for a later deadline."""
    delays = {b"/slow": 0.6, b"/never": 30.0}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(delays[head.split()[1]])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    async with RawServer(handler) as srv:
        loop = asyncio.get_running_loop()
        slow = asyncio.ensure_future(get(transport, srv.url + "/slow", timeout=5))
        await asyncio.sleep(0.05)
        for timeout in (0.2, 0.15):  # the second after the first's sweep
            begun = loop.time()
            with pytest.raises(AcmeTimeout):
                await get(transport, srv.url + "/never", timeout=timeout)
            assert timeout <= loop.time() - begun < timeout + 0.1
        assert await slow == (200, b"{}")
        with pytest.raises(AcmeTimeout):
            await get(transport, srv.url + "/never", timeout=0.1)

@pytest.mark.asyncio
async def test_limit_bounds_connections() -> None:
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await srv.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(slow)
            await writer.drain()

    srv = RawServer(handler)
    t = HttptoolsTransport(ssl=False, limit=2)
    try:
        async with srv:
            results = await asyncio.gather(*(get(t, srv.url) for _ in range(8)))
            assert results == [(200, b"{}")] * 8
            assert srv.connections == 2
    finally:
        await t.aclose()


@pytest.mark.asyncio
async def test_closed_transport_refuses_requests() -> None:
    t = make_transport("httptools", insecure=True)
    await t.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await t.request("GET", "http://127.0.0.1:1/", headers={}, body=None, timeout=1)


def test_make_transport_names() -> None:
    assert type(make_transport()).__name__ == "HttptoolsTransport"
    assert type(make_transport("aiohttp")).__name__ == "AiohttpTransport"
    assert type(make_transport("httpx")).__name__ == "HttpxTransport"
    with pytest.raises(ValueError, match="unknown transport"):
        make_transport("curl")


def test_works_on_uvloop() -> None:
    loop = new_event_loop("uvloop")
    assert isinstance(loop, uvloop.Loop)

    async def run() -> tuple[int, bytes, int]:
        t = HttptoolsTransport(ssl=False)
        try:
            async with await serve(OK) as srv:
                for _ in range(3):
                    status, body = await get(t, srv.url)
                return status, body, srv.connections
        finally:
            await t.aclose()

    try:
        assert loop.run_until_complete(run()) == (200, b"{}", 1)
    finally:
        loop.close()
    with pytest.raises(ValueError, match="unknown event loop"):
        new_event_loop("trio")


@pytest.mark.asyncio
async def test_responses_carry_when_the_request_went_out_and_the_answer_came_in(
        transport: HttptoolsTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    # the server answers 50 ms after each request; the client's loop is then busy for 30 ms
    # between the answer's arrival and the awaiting task's turn: the stamps hold the
    # exchange, not that wait
    ref: list[RawServer] = []

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await ref[0].read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(OK)
            await writer.drain()

    received = Connection.received

    def busy_after(self: Connection, data: bytes, at: float) -> None:
        asyncio.get_running_loop().call_soon(time.sleep, 0.03)
        received(self, data, at)

    monkeypatch.setattr(Connection, "received", busy_after)
    srv = RawServer(late)
    ref.append(srv)
    async with srv:
        for opened in (True, False):  # the first request opens its connection
            before = time.perf_counter()
            resp = await transport.request("GET", srv.url, headers={}, body=None, timeout=5)
            after = time.perf_counter()
            assert before <= resp.sent < resp.arrived <= after, opened
            assert 0.05 <= resp.arrived - resp.sent < 0.075, opened
            assert after - before >= 0.08, opened
            # the connect is timed apart, before the write
            assert (0 < resp.connect <= resp.sent - before) if opened else resp.connect == 0
        assert srv.connections == 1


class _ThreadServer:
    """An HTTP server on a thread of its own (it answers while the client's loop is
    blocked): each request answered *delay* seconds after it arrived."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        head += chunk
                    time.sleep(self.delay)
                    conn.sendall(OK)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("stamps", [True, False], ids=["kernel stamps", "the read's time"])
@pytest.mark.asyncio
async def test_an_answer_that_arrived_while_the_loop_was_busy_ends_at_its_arrival(
        stamps: bool) -> None:
    """The server answers 50 ms after the request; the client's loop is blocked for 250 ms
    meanwhile. With the kernel's receive stamps (Linux) the exchange ends at the answer's
    arrival; stamped at the read, it ends when the loop got back to the socket."""
    if stamps and not KERNEL_STAMPS:
        pytest.skip("the kernel's receive stamps are Linux's")
    srv = _ThreadServer(0.05)
    transport = HttptoolsTransport(ssl=False, kernel_stamps=stamps)
    try:
        await transport.request("GET", srv.url, headers={}, body=None, timeout=5)  # connect
        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 0.25)  # runs right after the request is written
        resp = await transport.request("GET", srv.url, headers={}, body=None, timeout=5)
        took = resp.arrived - resp.sent
        if stamps:
            assert 0.05 <= took < 0.15, took
        else:
            assert took >= 0.25, took
    finally:
        await transport.aclose()
        srv.close()
