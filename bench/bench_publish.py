"""CPU per certificate of publishing its challenge answer to Redis and removing it.

    .venv/bin/python bench/bench_publish.py [--quick]

Starts its own redis-server on a free port (no persistence; stopped at the end), then, on
the event loop of load runs (uvloop, ``pytest_wec.worker.runner.new_event_loop``), measures
sequential certificates, one add and one remove each, in µs of process CPU per certificate
(redis-server's CPU is not counted: it is another process):

    RedisPublisher (lean)        as shipped: the lean RESP writer (challenge_srv.resp)
    RedisPublisher (redis-py)    the same publisher forced onto redis-py (``lean=False``:
                                 ``ChallengeStore`` on the client ``store.connect`` builds)
    redis-py set/delete          bare ``redis.asyncio.Redis.from_url(url)``: ``set(ex=)`` +
                                 ``delete`` (TXT: a MULTI pipeline + ``delete``)

for http-01 (SET EX + DEL) and for dns-01 (TXT: MULTI SADD EXPIRE EXEC + DEL). Best of
several interleaved rounds; the ratios are against the redis-py publisher, and the last
line checks the target (lean http-01 <= 100 µs per certificate).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import best_of, machine, table

from pytest_wec.testing import stop_process
from pytest_wec.worker.publish import RedisPublisher
from pytest_wec.worker.runner import new_event_loop

TARGET_US = 100.0
LEAN, PY, BARE = "RedisPublisher (lean)", "RedisPublisher (redis-py)", "redis-py set/delete"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(run_dir),
                             "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


async def run(url: str, n: int, rounds: int) -> dict[tuple[str, str], float]:
    import redis.asyncio
    from pytest_wec_challenge_srv.store import Keys

    ns = f"bench-{secrets.token_hex(4)}"
    lean = RedisPublisher(url, ns)
    assert lean._lean is not None, "the lean writer is not in use"
    py = RedisPublisher(url, ns, lean=False)
    bare = redis.asyncio.Redis.from_url(url, decode_responses=True)
    keys = Keys(ns)

    def token() -> str:
        return secrets.token_urlsafe(32)

    async def http_pub(pub: RedisPublisher) -> None:
        t = token()
        await pub.add_http01(t, t + ".thumbprint-of-the-account-key-43-characters")
        await pub.del_http01(t)

    async def txt_pub(pub: RedisPublisher) -> None:
        name = f"_acme-challenge.{secrets.token_hex(6)}.wec.example.com"
        await pub.set_txt(name, token()[:43])
        await pub.clear_txt(name)

    async def http_bare() -> None:
        t = token()
        await bare.set(keys.http01(t), t + ".thumbprint-of-the-account-key-43-characters",
                       ex=3600)
        await bare.delete(keys.http01(t))

    async def txt_bare() -> None:
        key = keys.txt(f"_acme-challenge.{secrets.token_hex(6)}.wec.example.com")
        async with bare.pipeline(transaction=True) as pipe:
            pipe.sadd(key, token()[:43])
            pipe.expire(key, 3600)
            await pipe.execute()
        await bare.delete(key)

    variants: dict[tuple[str, str], Callable[[], Awaitable[None]]] = {
        ("http-01", LEAN): lambda: http_pub(lean),
        ("http-01", PY): lambda: http_pub(py),
        ("http-01", BARE): http_bare,
        ("dns-01 TXT", LEAN): lambda: txt_pub(lean),
        ("dns-01 TXT", PY): lambda: txt_pub(py),
        ("dns-01 TXT", BARE): txt_bare,
    }
    best = await best_of(variants, n, rounds, warmup=100)
    await lean.aclose()
    await py.aclose()
    await bare.aclose()
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n, rounds = (500, 3) if args.quick else (2000, 7)
    print(f"bench_publish: {n} certificates (add + remove) x best of {rounds}, uvloop; "
          f"{machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="wec-bench-publish-"))
    proc, url = start_redis(tmp)
    try:
        with asyncio.Runner(loop_factory=lambda: new_event_loop("uvloop")) as runner:
            best = runner.run(run(url, n, rounds))
    finally:
        stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for (kind, name), v in best.items():
        ref = best[(kind, PY)]
        rows.append([f"{kind}: {name}", v, f"{v / ref:.2f}x"])
    print(table(["kind: writer", "CPU µs/certificate", "vs redis-py publisher"], rows))
    ours, before = best[("http-01", LEAN)], best[("http-01", PY)]
    bare = best[("http-01", BARE)]
    print(f"per certificate (http-01 add + remove): {ours:.1f} µs lean, {before:.1f} µs on "
          f"redis-py ({before / ours:.2f}x less), {bare:.1f} µs bare redis-py set/delete "
          f"({bare / ours:.2f}x less); target <= {TARGET_US:g} µs per certificate: "
          f"{'met' if ours <= TARGET_US else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
