"""The worker -> controller channel through a real redis-server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack
import pytest
import redis

from pytest_wec.wire.results import ChainResult, RequestResult
from pytest_wec.wire.sink import ResultSink
from pytest_wec.wire.source import ResultSource
from pytest_wec.wire.stream import (
    Batch,
    Record,
    decode_batch,
    encode_batch,
    results_key,
)

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent


def make_chain(k: int, worker: str = "gw0", n_requests: int = 3) -> ChainResult:
    cid = f"{worker}-{k}"
    reqs: list[RequestResult] = [
        {"chain_id": cid, "chain": "NewOrderChain", "endpoint": ep, "method": "POST",
         "status": 201, "started": 1.7e9 + k + i * 0.01, "took": 0.004 + i / 1000, "ok": True,
         "error": None, "problem": None}
        for i, ep in enumerate(("newNonce", "newOrder", "authz")[:n_requests])]
    return {"chain_id": cid, "chain": "NewOrderChain", "worker": worker, "scheduled": 1.7e9 + k,
            "started": 1.7e9 + k + 0.001, "took": 0.05, "ok": True, "outcome": "ok",
            "error": None, "certificates": 0, "requests": reqs}


def batches_chains(records: Sequence[Record]) -> list[ChainResult]:
    return [c for r in records if isinstance(r, Batch) for c in r.chains]


def test_wire_round_trip_rebuilds_typed_dicts() -> None:
    chains = [make_chain(k) for k in range(5)]
    odd = make_chain(9)
    odd["requests"][0]["chain_id"] = "someone-else"  # kept although it differs from the chain
    odd["requests"][1].update({"ok": False, "status": 0, "error": "timeout",
                               "problem": "urn:ietf:params:acme:error:badNonce"})
    odd["requests"][2]["connect"] = 0.0012  # it opened its connection
    chains.append(odd)
    batch = decode_batch(encode_batch("gw0", "s0", 4, 17, chains))
    assert (batch.worker, batch.session, batch.seq, batch.chains_before) == ("gw0", "s0", 4, 17)
    assert batch.chains == chains


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of one test that can be stopped and started again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.mark.asyncio
async def test_sink_to_source_round_trip(redis_url: str) -> None:
    run_ns = uuid.uuid4().hex
    chains = [make_chain(k) for k in range(1234)]
    sink = ResultSink(redis_url, run_ns, "gw0", flush_interval=0.05, max_batch=100)
    async with sink:
        sink.set_status(in_flight=7, target_share=0.5)
        for c in chains:
            sink.add(c)
            if c["chain_id"].endswith("00"):
                await asyncio.sleep(0)
    assert (sink.sent, sink.dropped) == (1234, 0)
    # a second sink of the same worker (a new session) is neither a duplicate nor a gap
    again = [make_chain(k) for k in range(2000, 2010)]
    async with ResultSink(redis_url, run_ns, "gw0") as second:
        for c in again:
            second.add(c)
    with ResultSource(redis_url, run_ns) as source:
        t0 = time.monotonic()
        records = list(source.drain(workers={"gw0"}, timeout=10))
        assert time.monotonic() - t0 < 5
        assert batches_chains(records) == chains + again
        assert all(len(b.chains) <= 100 for b in records if isinstance(b, Batch))
        end = [r for r in records if not isinstance(r, Batch) and r["final"]]
        assert [(e["session"], e["sent"], e["dropped"]) for e in end] == [
            (sink.session, 1234, 0), (second.session, 10, 0)]
        assert end[0]["in_flight"] == 7 and end[0]["target_share"] == 0.5
        assert source.ended == {"gw0"} and source.received == {"gw0": 1244}
        assert source.lost_total == 0 and source.duplicates == 0
        assert source.worker_statuses()[f"gw0/{sink.session}"]["final"] is True
        source.delete()


PRODUCER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from tests.test_stream import make_chain
    from pytest_wec.wire.sink import ResultSink

    async def main():
        sink = ResultSink({url!r}, {ns!r}, "gw-doomed", flush_interval=0.02, max_batch=50)
        k = 0
        while sink.sent < 300:
            for _ in range(50):
                sink.add(make_chain(k, "gw-doomed"))
                k += 1
            await asyncio.sleep(0.01)
        print(sink.sent, flush=True)
        await asyncio.sleep(60)  # killed here

    asyncio.run(main())
""")


def test_producer_killed_with_sigkill(redis_url: str, tmp_path: Path) -> None:
    run_ns = uuid.uuid4().hex
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER.format(root=str(ROOT), url=redis_url, ns=run_ns))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        sent = int(proc.stdout.readline() or 0)
        assert sent >= 300
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with ResultSource(redis_url, run_ns) as source:
        t0 = time.monotonic()
        records = list(source.drain(workers={"gw-doomed"}, timeout=15, stale_after=1.5))
        assert time.monotonic() - t0 < 5  # no end record: gone once silent, not at the timeout
        got = batches_chains(records)
        assert len(got) >= sent
        assert [c["chain_id"] for c in got] == [f"gw-doomed-{k}" for k in range(len(got))]
        assert "gw-doomed" not in source.ended
        source.delete()


def test_drain_does_not_wait_for_a_worker_never_heard_of(redis_url: str) -> None:
    with ResultSource(redis_url, uuid.uuid4().hex) as source:
        t0 = time.monotonic()
        assert list(source.drain(workers={"ghost"}, timeout=10, stale_after=0.5)) == []
        assert time.monotonic() - t0 < 2
        t0 = time.monotonic()
        assert list(source.drain(workers={"ghost"}, timeout=0.3, stale_after=60)) == []
        assert time.monotonic() - t0 < 1.5


@pytest.mark.asyncio
async def test_reconnect_after_redis_restart(own_redis: OwnRedis) -> None:
    run_ns = uuid.uuid4().hex
    sink = ResultSink(own_redis.url, run_ns, "gw1", flush_interval=0.05, max_batch=20,
                      heartbeat_interval=0.2)
    source = ResultSource(own_redis.url, run_ns)
    received: list[ChainResult] = []

    async def read_until(n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(received) < n and time.monotonic() < deadline:
            received.extend(batches_chains(await asyncio.to_thread(source.read, 0.2)))

    await sink.start()
    for k in range(100):
        sink.add(make_chain(k, "gw1"))
    await read_until(100, 10)
    assert len(received) == 100
    own_redis.stop()
    for k in range(100, 200):  # produced while Redis is away: buffered
        sink.add(make_chain(k, "gw1"))
        if k % 10 == 0:
            await asyncio.sleep(0.02)
    await asyncio.to_thread(source.read, 0.1)  # the source sees the outage and goes on
    assert sink.buffered > 0
    own_redis.start()
    await read_until(200, 15)
    await sink.aclose()
    records = await asyncio.to_thread(lambda: list(source.drain(workers={"gw1"}, timeout=10)))
    received.extend(batches_chains(records))
    assert [c["chain_id"] for c in received] == [f"gw1-{k}" for k in range(200)]
    assert sink.dropped == 0 and source.lost_total == 0 and source.ended == {"gw1"}
    source.close()


@pytest.mark.asyncio
async def test_buffer_overflow_is_counted_not_silent(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    sink = ResultSink(url, uuid.uuid4().hex, "gw2", flush_interval=0.02, max_batch=10,
                      max_buffered=50)
    for k in range(80):
        sink.add(make_chain(k, "gw2", n_requests=2))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await sink.aclose(timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert sink.sent == 0
    assert sink.dropped == 80 and sink.dropped_requests == 160
    assert "dropping results" in caplog.text and "not delivered" in caplog.text


def test_source_survives_redis_away(own_redis: OwnRedis) -> None:
    source = ResultSource(own_redis.url, "x")
    assert source.read(0.05) == []
    own_redis.stop()
    t0 = time.monotonic()
    assert source.read(0.2) == []
    assert time.monotonic() - t0 < 3
    own_redis.start()
    assert source.read(0.05) == []
    source.close()
    assert results_key("x") == "wec:x:results"


def test_source_drops_resent_batches_and_counts_gaps(redis_url: str) -> None:
    run_ns = uuid.uuid4().hex
    client = redis.Redis.from_url(redis_url)
    c = [make_chain(k, "gw3") for k in range(6)]
    for seq, before, part in ((0, 0, c[0:2]), (0, 0, c[0:2]), (1, 2, c[2:3]), (2, 5, c[5:6])):
        client.xadd(results_key(run_ns),
                    {"k": b"b", "d": encode_batch("gw3", "s", seq, before, part)})
    client.xadd(results_key(run_ns), {"k": b"b", "d": b"\xc1 garbage"})
    end = {"worker": "gw3", "session": "s", "t": 1.0, "sent": 8, "final": True}
    client.xadd(results_key(run_ns), {"k": b"e", "d": msgpack.packb(end)})
    client.close()
    with ResultSource(redis_url, run_ns) as source:
        records = list(source.drain(workers={"gw3"}, timeout=5))
        assert [x["chain_id"] for x in batches_chains(records)] == ["gw3-0", "gw3-1", "gw3-2",
                                                                     "gw3-5"]
        assert source.duplicates == 1 and source.undecodable == 1
        assert source.lost == {"gw3": 4}  # 2 in the gap before seq 2, 2 after it (sent=8)
        assert source.ended == {"gw3"}
        source.delete()


@pytest.mark.asyncio
async def test_batches_redis_lost_unread_are_sent_again(own_redis: OwnRedis) -> None:
    """Redis killed before the controller read what a sink sent, and started again empty:
    the sink finds it so (its alive counter back at 1) and sends its latest batches again;
    the source takes those it never saw, drops the rest, and nothing is lost."""
    run_ns = uuid.uuid4().hex
    sink = ResultSink(own_redis.url, run_ns, "gw4", flush_interval=0.05, max_batch=20,
                      heartbeat_interval=0.1)
    source = ResultSource(own_redis.url, run_ns)
    restarts: list[int] = []

    async def republish() -> None:
        restarts.append(sink.redis_restarts)

    sink.on_redis_restart.append(republish)
    await sink.start()
    for k in range(60):
        sink.add(make_chain(k, "gw4"))
    first: list[ChainResult] = []  # the source reads 20, then Redis dies with the other 40
    while len(first) < 20:
        first += batches_chains(await asyncio.to_thread(source.read, 0.2))
    deadline = time.monotonic() + 10
    while sink.sent < 60 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sink.sent == 60
    own_redis.stop()
    own_redis.start()
    for k in range(60, 80):
        sink.add(make_chain(k, "gw4"))
    await sink.aclose()
    assert sink.redis_restarts == 1 and restarts == [1], "the callbacks ran once"
    records = await asyncio.to_thread(lambda: list(source.drain(workers={"gw4"}, timeout=10)))
    got = {c["chain_id"] for c in first + batches_chains(records)}
    assert got == {f"gw4-{k}" for k in range(80)}
    assert source.lost_total == 0 and source.ended == {"gw4"}
    assert sink.spill_file is None and sink.dropped == 0
    source.close()


@pytest.mark.asyncio
async def test_what_cannot_be_delivered_is_spilled_and_read_back(own_redis: OwnRedis,
                                                                 tmp_path: Path) -> None:
    """Redis gone for good at the close: the sink writes what it holds, its latest batches
    and its end record to a spill file in the run directory; the source takes it, and the
    start counter says how many chains were started, so nothing is lost uncounted."""
    from pytest_wec.wire.spill import counters, spills

    run_ns = uuid.uuid4().hex
    sink = ResultSink(own_redis.url, run_ns, "gw5", flush_interval=0.05, max_batch=10,
                      heartbeat_interval=0.1, spill_dir=tmp_path, give_up_after=1.0)
    source = ResultSource(own_redis.url, run_ns)
    await sink.start()
    for k in range(30):
        sink.count_start()
        sink.add(make_chain(k, "gw5"))
    seen: list[ChainResult] = []
    while len(seen) < 30:
        seen += batches_chains(await asyncio.to_thread(source.read, 0.2))
    own_redis.stop()
    for k in range(30, 75):
        sink.count_start()
        sink.add(make_chain(k, "gw5"))
    sink.count_start()  # one chain started and never ended (its worker died with it)
    t0 = time.monotonic()
    await sink.aclose()
    assert time.monotonic() - t0 < 5, "a close gives up after a while of failures"
    assert sink.spill_file is not None and sink.spilled == 45 and sink.dropped == 0
    assert counters(tmp_path) == {("gw5", sink.session): 76}
    [(path, data)] = spills(tmp_path)
    assert path == sink.spill_file
    records = source.take_spill(data)
    assert {c["chain_id"] for c in seen + batches_chains(records)} == \
        {f"gw5-{k}" for k in range(75)}
    assert source.ended == {"gw5"} and source.duplicates > 0  # the 30 read, in it again
    assert source.sessions() == {("gw5", sink.session): (75, 75)}
    source.close()
    with pytest.raises(ValueError, match="not a spill file"):
        source.take_spill(b"\xc1 garbage")


@pytest.mark.asyncio
async def test_a_worker_without_the_run_dir_hands_its_spill_over(redis_url: str,
                                                                  tmp_path: Path) -> None:
    """A worker on another host has no run directory: its spill is kept for xdist's channel,
    and the controller takes it like a spill file (pytest_wec.controller.delivery)."""
    from pytest_wec.controller.delivery import account, take_spills

    away = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    sink = ResultSink(away, "ns", "gw6", flush_interval=0.02, spill_dir=tmp_path / "elsewhere",
                      give_up_after=0.5)
    for k in range(12):
        sink.count_start()
        sink.add(make_chain(k, "gw6"))
    await sink.aclose(timeout=3)
    assert sink.spill_file is None and sink.spill is not None and sink.dropped == 0
    with ResultSource(redis_url, uuid.uuid4().hex) as source:
        records, files, recovered = take_spills(source, tmp_path, [sink.spill, b"junk"])
        assert (files, recovered) == (1, 12)
        assert len(batches_chains(records)) == 12
        delivery = account(source, tmp_path)
        assert delivery["results_lost"] == 0
        assert delivery["by_worker"]["gw6"] == {"started": 12, "received": 12, "lost": 0,
                                                "unread": 0, "how": "end record"}
