"""The lean Redis writer (``challenge_srv.resp``) behind ``RedisPublisher``.

Against real redis-servers: the session's one (``redis_url``), and ones started here on a
port of their own where a test stops and starts Redis or needs a password. What the lean
path writes is served by a real challenge server (test_challenges' fixture) and written
exactly as redis-py's ``ChallengeStore`` writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from dnslib import QTYPE, DNSRecord
from pytest_wec_challenge_srv.resp import RespClient, RespConnectionError, RespError, _parse, pack
from test_challenges import (  # the challenge server of those tests, and their checks
    Server,
    _free_port,
    http01,
    namespace,
    publish_and_check,
    silent_server,
    wec,
)

from pytest_wec.testing import stop_process
from pytest_wec.worker.publish import ChallengePublishError, RedisPublisher
from pytest_wec.worker.runner import new_event_loop

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

__all__ = ["namespace", "wec"]  # fixtures, used by name

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")


@contextlib.contextmanager
def redis_server(tmp: Path, port: int, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``redis-server --port PORT --save "" --appendonly no`` until it answers; stopped after."""
    assert REDIS is not None
    proc = subprocess.Popen([REDIS, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64)[:1] in (b"+", b"-"):  # PONG, or NOAUTH: up
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server not up"
            time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc)


def dns(server: Server, name: str, qtype: str) -> list[str]:
    reply = DNSRecord.parse(
        DNSRecord.question(name, qtype).send("127.0.0.1", server.dns, timeout=5))
    return [str(rr.rdata) for rr in reply.rr if QTYPE.get(rr.rtype) == qtype]


def lean(url: str, ns: str, **kw: Any) -> RedisPublisher:
    pub = RedisPublisher(url, ns, **kw)
    assert pub._lean is not None, "the lean writer is not in use"
    return pub


@contextlib.asynccontextmanager
async def closing(pub: RedisPublisher) -> AsyncIterator[RedisPublisher]:
    try:
        yield pub
    finally:
        await pub.aclose()


# -- served by the challenge server, written as ChallengeStore writes ------------------------


@pytest.mark.asyncio
async def test_lean_entries_are_served(redis_url: str, namespace: str, wec: Server) -> None:
    async with closing(lean(redis_url, namespace)) as pub:
        await publish_and_check(pub, wec)  # http-01, TXT with two values, tls-alpn-01

        host = f"route-{uuid.uuid4().hex[:8]}.example"
        await pub.add_address(host, "10.9.8.7")
        await pub.add_address(host, "fd00::7")
        assert await asyncio.to_thread(dns, wec, host, "A") == ["10.9.8.7"]
        assert await asyncio.to_thread(dns, wec, host, "AAAA") == ["fd00::7"]
        await pub.clear_address(host, "10.9.8.7")
        await pub.clear_address(host, "fd00::7")
        assert await asyncio.to_thread(dns, wec, host, "A") != ["10.9.8.7"]
        assert await asyncio.to_thread(dns, wec, host, "AAAA") != ["fd00::7"]

        tokens = [uuid.uuid4().hex for _ in range(50)]  # pipelined: all in flight at once
        await asyncio.gather(*(pub.add_http01(t, t + ".k") for t in tokens))
        replies = await asyncio.gather(*(asyncio.to_thread(http01, wec, t) for t in tokens[::7]))
        assert [r.text for r in replies] == [t + ".k" for t in tokens[::7]]
        await asyncio.gather(*(pub.del_http01(t) for t in tokens))
        assert (await asyncio.to_thread(http01, wec, tokens[0])).status_code == 404


def dump(client: Any, ns: str) -> dict[str, tuple[str, Any, bool]]:
    """Every key of *ns* without its prefix: (type, value, expires)."""
    out: dict[str, tuple[str, Any, bool]] = {}
    prefix = f"wec:{ns}:"
    for key in client.scan_iter(match=prefix + "*"):
        kind: str = client.type(key)
        reads: dict[str, Any] = {"string": client.get, "set": client.smembers,
                                 "list": lambda k: client.lrange(k, 0, -1)}
        value = reads[kind](key)
        ttl = client.ttl(key)
        assert ttl == -1 or 0 < ttl <= 120, (key, ttl)
        out[key[len(prefix):]] = (kind, value, ttl > 0)
    return out


async def write_all(pub: RedisPublisher) -> None:
    await pub.add_http01("tok-1", "tok-1.thumb")
    await pub.add_http01("tok-2", "tok-2.thumb")
    await pub.del_http01("tok-2")
    await pub.add_tlsalpn01("Alpn.Example.", "alpn.thumb")
    await pub.add_tlsalpn01("::1", "v6.thumb")
    await pub.set_txt("_acme-challenge.Two.Example.", "value-one")
    await pub.set_txt("_acme-challenge.two.example", "value-two")
    await pub.set_txt("_acme-challenge.gone.example", "x")
    await pub.clear_txt("_acme-challenge.gone.example")
    await pub.add_address("route.example", "10.0.0.1")
    await pub.add_address("route.example", "10.0.0.2")
    await pub.add_address("route.example", "::2")
    await pub.add_address("gone.example", "10.0.0.3")
    await pub.clear_address("gone.example", "10.0.0.3")


@needs_redis
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_lean_writes_what_the_store_writes(redis_url: str, loop: str) -> None:
    ours, theirs = f"lean-{uuid.uuid4().hex[:8]}", f"py-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with closing(lean(redis_url, ours, ttl=120)) as a, \
                closing(RedisPublisher(redis_url, theirs, ttl=120, lean=False)) as b:
            assert b._lean is None
            await write_all(a)
            await write_all(b)

    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        runner.run(main())
    direct = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        got, want = dump(direct, ours), dump(direct, theirs)
    finally:
        direct.close()
    assert got == want
    v6 = ipaddress.ip_address("::1").reverse_pointer
    assert got == {
        "http01:tok-1": ("string", "tok-1.thumb", True),
        "tlsalpn01:alpn.example": ("string", "alpn.thumb", True),
        f"tlsalpn01:{v6}": ("string", "v6.thumb", True),
        "txt:_acme-challenge.two.example": ("set", {"value-one", "value-two"}, True),
        "a:route.example": ("list", ["10.0.0.1", "10.0.0.2"], False),
        "aaaa:route.example": ("list", ["::2"], False),
    }


def test_lean_only_for_plain_redis_urls() -> None:
    c = RespClient.from_url("redis://us%40er:p%3Ass@127.0.0.1:7001/3", timeout=2)
    assert c is not None
    assert (c.host, c.port, c.db, c.username, c.password) == ("127.0.0.1", 7001, 3, "us@er",
                                                              "p:ss")
    c = RespClient.from_url("redis://:secret@[::1]:7002/0")
    assert c is not None and (c.host, c.port, c.username, c.password) == ("::1", 7002, None,
                                                                           "secret")
    c = RespClient.from_url("redis://localhost")
    assert c is not None and (c.host, c.port, c.db, c.password) == ("localhost", 6379, 0, None)
    for url in ("rediss://127.0.0.1:6379/0", "unix:///tmp/redis.sock",
                "redis://127.0.0.1:6379/0?protocol=3", "redis://127.0.0.1:6379?db=2",
                "redis://user@127.0.0.1:6379/0", "redis://127.0.0.1:6379/x",
                "redis://127.0.0.1:99999/0"):
        assert RespClient.from_url(url) is None, url
    assert RedisPublisher("rediss://127.0.0.1:6379/0", "ns")._lean is None
    assert RedisPublisher("redis://127.0.0.1:6379/0", "ns")._lean is not None
    assert RedisPublisher("redis://127.0.0.1:6379/0", "ns", lean=False)._lean is None


def test_pack_and_parse() -> None:
    assert pack([(b"SET", "k", "v", b"EX", 60)]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n$2\r\n60\r\n")
    assert pack([(b"DEL", "é")]) == b"*2\r\n$3\r\nDEL\r\n$2\r\n\xc3\xa9\r\n"
    reply = b"+OK\r\n:12\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n:1\r\n-WRONGTYPE bad\r\n*-1\r\n"
    values, pos = [], 0
    while pos < len(reply):
        value, pos = _parse(reply, pos)
        values.append(value)
    assert values[:4] == [b"OK", 12, b"a\r\n", None] and values[5] is None
    assert values[4][0] == 1
    assert isinstance(values[4][1], RespError) and str(values[4][1]) == "WRONGTYPE bad"
    for cut in range(1, len(reply)):  # any incomplete reply waits for more
        at = 0
        while True:
            _, nxt = _parse(reply[:cut], at)
            if nxt < 0:
                break
            at = nxt
        assert at <= cut
    with pytest.raises(ValueError, match="not a RESP reply"):
        _parse(b"?what\r\n", 0)


# -- errors: error replies, restarts, silence, passwords -------------------------------------


@pytest.mark.asyncio
async def test_an_error_reply_names_the_command(redis_url: str) -> None:
    ns = f"err-{uuid.uuid4().hex[:8]}"
    direct = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    async with closing(lean(redis_url, ns)) as pub:
        direct.set(f"wec:{ns}:txt:_acme-challenge.x.example", "a string, not a set")
        with pytest.raises(ChallengePublishError) as info:
            await pub.set_txt("_acme-challenge.x.example", "v")
        msg = str(info.value)
        assert msg.startswith("set TXT _acme-challenge.x.example: Redis redis://127.0.0.1:"), msg
        assert f"RespError: SADD wec:{ns}:txt:_acme-challenge.x.example: WRONGTYPE" in msg, msg
        direct.rpush(f"wec:{ns}:http01:tok", "a list")  # SET overwrites any type: fine
        await pub.add_http01("tok", "tok.thumb")
        direct.set(f"wec:{ns}:a:x.example", "a string, not a list")
        with pytest.raises(ChallengePublishError, match="add address x.example: .*RPUSH "
                           f"wec:{ns}:a:x.example: WRONGTYPE"):
            await pub.add_address("x.example", "10.0.0.1")
        await pub.clear_address("x.example", "10.0.0.1")  # the connection is still good
        await pub.add_address("x.example", "10.0.0.1")
        assert direct.lrange(f"wec:{ns}:a:x.example", 0, -1) == ["10.0.0.1"]
        assert direct.get(f"wec:{ns}:http01:tok") == "tok.thumb"
        assert 0 < direct.ttl(f"wec:{ns}:http01:tok") <= 3600
    client = RespClient.from_url(redis_url, timeout=5)
    assert client is not None
    try:
        with pytest.raises(RespError, match="NOSUCHCOMMAND: ERR unknown command"):
            await client.execute((b"NOSUCHCOMMAND",))
        assert await client.execute((b"PING",), (b"ECHO", "x")) == [b"PONG", b"x"]
    finally:
        await client.aclose()
        direct.delete(*direct.keys(f"wec:{ns}:*"))
        direct.close()


@pytest.mark.asyncio
async def test_cancelled_calls_keep_the_replies_in_order(redis_url: str) -> None:
    client = RespClient.from_url(redis_url, timeout=5)
    assert client is not None
    key = f"wec:order-{uuid.uuid4().hex[:8]}:"
    try:
        await client.execute(*((b"SET", key + str(i), str(i), b"EX", 60) for i in range(20)))
        tasks = [asyncio.create_task(client.execute((b"GET", key + str(i)))) for i in range(20)]
        await asyncio.sleep(0)  # all sent
        for t in tasks[::3]:
            t.cancel()
        got = await asyncio.gather(*tasks, return_exceptions=True)
        for i, r in enumerate(got):
            if i % 3:
                assert r == [str(i).encode()]
            else:
                assert isinstance(r, asyncio.CancelledError)
        assert await client.execute((b"GET", key + "5")) == [b"5"]
    finally:
        await client.aclose()


@needs_redis
def test_a_client_moves_to_a_new_event_loop(redis_url: str) -> None:
    client = RespClient.from_url(redis_url, timeout=5)
    assert client is not None
    for loop in ("uvloop", "asyncio", "uvloop"):
        with asyncio.Runner(loop_factory=lambda n=loop: new_event_loop(n)) as runner:  # type: ignore[misc]
            assert runner.run(client.execute((b"PING",))) == [b"PONG"]
    with asyncio.Runner() as runner:
        runner.run(client.aclose())


@needs_redis
@pytest.mark.asyncio
async def test_a_redis_restart(tmp_path: Path) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    async with closing(lean(url, "restart", timeout=5)) as pub:
        with redis_server(tmp_path, port) as proc:
            await pub.add_http01("before", "before.thumb")
            os.kill(proc.pid, signal.SIGSTOP)  # the next command stays in flight
            task = asyncio.create_task(pub.add_http01("in-flight", "x"))
            await asyncio.sleep(0.3)
            assert not task.done()
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            with pytest.raises(ChallengePublishError) as info:
                await task
            assert time.monotonic() - started < 2
            msg = str(info.value)
            assert msg.startswith(f"add http-01 in-flight: Redis {url}: RespConnectionError: "
                                  f"connection to 127.0.0.1:{port} lost"), msg
            proc.wait(10)
            with pytest.raises(ChallengePublishError, match=r"cannot connect to 127\.0\.0\.1"):
                await pub.add_http01("while-down", "x")
        with redis_server(tmp_path, port):  # back, empty, on the same port
            await pub.add_http01("after", "after.thumb")  # connects again
            assert await pub.republish() == 2  # what was published and not removed
            direct = redis_sync.Redis(port=port, decode_responses=True)
            try:
                assert direct.get("wec:restart:http01:before") == "before.thumb"
                assert direct.get("wec:restart:http01:after") == "after.thumb"
                assert direct.exists("wec:restart:http01:in-flight") == 0
            finally:
                direct.close()
        await asyncio.sleep(0.2)  # stopped while idle: the loss is seen
        with redis_server(tmp_path, port):
            await pub.del_http01("after")  # the next command reconnects, no error
            await pub.clear_txt("_acme-challenge.x.example")


@pytest.mark.asyncio
async def test_a_silent_redis_times_out_within_the_timeout() -> None:
    with silent_server() as port:
        for url in (f"redis://127.0.0.1:{port}/0", f"redis://:hunter2@127.0.0.1:{port}/1"):
            async with closing(lean(url, "silent", timeout=0.5)) as pub:
                started = time.monotonic()
                got = await asyncio.gather(pub.add_http01("a", "x"), pub.set_txt("b", "y"),
                                           pub.del_http01("c"), return_exceptions=True)
                elapsed = time.monotonic() - started
                assert 0.4 < elapsed < 1.5, elapsed
                for exc in got:
                    assert isinstance(exc, ChallengePublishError), exc
                    assert "did not answer within 0.5s" in str(exc)
                    assert "hunter2" not in str(exc)
                started = time.monotonic()
                with pytest.raises(ChallengePublishError, match=r"did not answer within 0\.5s"):
                    await pub.clear_txt("d")  # a new connection: as silent
                assert time.monotonic() - started < 1.5


@pytest.mark.asyncio
async def test_a_garbled_reply_fails_the_commands_in_flight() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        for b in b"+OK\r\n":  # one byte at a time
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.read(1000)
        writer.write(b"?garbage\r\n")
        await writer.drain()
        await reader.read(1000)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient("127.0.0.1", port, timeout=5)
    try:
        assert await client.execute((b"SET", "k", "v")) == [b"OK"]
        with pytest.raises(RespConnectionError, match="not a RESP reply"):
            await client.execute((b"SET", "k", "v"))
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


@needs_redis
@pytest.mark.asyncio
async def test_a_password(tmp_path: Path) -> None:
    port = _free_port()
    with redis_server(tmp_path, port, "--requirepass", "s3cret"):
        direct = redis_sync.Redis(port=port, password="s3cret", db=2, decode_responses=True)
        try:
            for url in (f"redis://:s3cret@127.0.0.1:{port}/2",
                        f"redis://default:s3cret@127.0.0.1:{port}/2"):
                async with closing(lean(url, "pw")) as pub:
                    await pub.add_http01("tok", url)
                    assert direct.get("wec:pw:http01:tok") == url  # in db 2
                    assert 0 < direct.ttl("wec:pw:http01:tok") <= 3600
                    await pub.del_http01("tok")
                    assert direct.exists("wec:pw:http01:tok") == 0
        finally:
            direct.close()
        async with closing(lean(f"redis://:wrong-pw@127.0.0.1:{port}/0", "pw")) as pub:
            with pytest.raises(ChallengePublishError) as info:
                await pub.add_http01("tok", "x")
            msg = str(info.value)
            assert f"Redis redis://:***@127.0.0.1:{port}/0: RespError: AUTH: WRONGPASS" in msg
            assert "wrong-pw" not in msg
        async with closing(lean(f"redis://127.0.0.1:{port}/0", "pw")) as pub:
            with pytest.raises(ChallengePublishError, match=r"SET wec:pw:http01:tok: NOAUTH"):
                await pub.add_http01("tok", "x")
