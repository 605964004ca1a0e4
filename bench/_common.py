"""What the benchmarks share: a fresh stack per measurement, the two issuance flows, tables.

Not a benchmark itself. Every measurement starts its own Pebble (its state only grows, and
a Pebble that issued 10,000 certificates answers slower than a fresh one) through
:class:`pytest_wec.stack.Stack`, exactly as the plugin starts it.

    fresh_stack()          Stack.start(Settings(), ...) and stop, in a temporary run dir
    our_network()          AcmeNetwork on the default transport, as a worker builds it
    run_like_worker()      run a coroutine on the event loop of load runs (uvloop)
    issue_ours()           account + order + http-01 + finalize + download on AcmeClient
    CertbotIssuer          the same flow on certbot's ``acme`` (ClientV2, requests, josepy)
    table()                a plain text table
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_wec.acme import (
    Account,
    AccountKey,
    AcmeClient,
    AcmeNetwork,
    generate_cert_key,
    key_authorization,
    make_csr,
    make_transport,
)
from pytest_wec.settings import Settings
from pytest_wec.stack import Stack
from pytest_wec.worker.runner import new_event_loop

T = TypeVar("T")

DOMAIN = "wec.example.com"
POLL_TIMEOUT = 60.0


def run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def fresh_stack() -> Iterator[Stack]:
    """A new redis-server, challenge server and Pebble (the stack's defaults)."""
    tmp = Path(tempfile.mkdtemp(prefix="wec-bench-"))
    stack = Stack.start(Settings(), tmp, run_id())
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def our_network(directory: str, ca_bundle: str | None, *, insecure: bool = False) -> AcmeNetwork:
    """The network layer exactly as a worker builds it (WorkerRuntime.start), with the
    default transport (``--wec-transport``)."""
    transport = make_transport(Settings().transport, ca_bundle=ca_bundle, insecure=insecure)
    return AcmeNetwork(directory, transport, nonce_method="GET")


def run_like_worker(main: Coroutine[Any, Any, T]) -> T:
    """Run *main* on the event loop a load run's worker uses (``--wec-loop``)."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(Settings().loop)) as runner:
        return runner.run(main)


def random_name() -> str:
    return f"{secrets.token_hex(6)}.{DOMAIN}"


async def issue_ours(acme: AcmeClient, publisher: Any | None,
                     account: Account | None = None) -> str:
    """One certificate: newAccount (unless given), newOrder, http-01 through *publisher*
    (None: the CA needs no published answer, e.g. the stub CA), finalize, download."""
    if account is None:
        account = await acme.new_account(AccountKey.generate("ES256"))
    names = [random_name()]
    order = await acme.new_order(account, names)
    for url in order.authorizations:
        authz = await acme.get_authorization(account, url)
        if authz.status == "valid":
            continue
        chall = authz.challenge("http-01")
        assert chall is not None, "no http-01 challenge offered"
        if publisher is not None:
            await publisher.add_http01(chall.token, key_authorization(chall.token, account.key))
        try:
            answered = await acme.answer_challenge(account, chall.url)
            authz = await acme.poll_authorization(account, url, timeout=POLL_TIMEOUT,
                                                  answered=answered)
        finally:
            if publisher is not None:
                await publisher.del_http01(chall.token)
        assert authz.status == "valid", f"authorization {authz.status}"
    order = await acme.poll_order(account, order, timeout=POLL_TIMEOUT, until="ready")
    assert order.status == "ready", f"order {order.status}"
    csr = make_csr(names, generate_cert_key("ec256"))
    order = await acme.finalize(account, order, csr)
    order = await acme.poll_order(account, order, timeout=POLL_TIMEOUT)
    assert order.status == "valid" and order.certificate, f"order {order.status}"
    cert = await acme.download_certificate(account, order.certificate)
    return cert.pem


# -- the baseline: certbot's acme package ----------------------------------------------------


class CertbotIssuer:
    """The same flow on certbot's ``acme`` (``ClientV2`` over ``ClientNetwork``: requests,
    josepy), one instance per thread; challenges go into the same Redis store.

    One ``ClientNetwork`` (one ``requests.Session``, so one keep-alive connection) per
    thread; a new account swaps its key in, as certbot's network binds one key.
    ``requests_sent`` counts HTTP exchanges.
    """

    _sent = itertools.count()

    def __init__(self, directory: str, ca_bundle: str | None, redis: Any, namespace: str,
                 *, default_poll: float | None = None) -> None:
        from acme import client, messages
        from josepy import ES256, JWKEC
        from pytest_wec_challenge_srv.store import Keys

        self._messages, self._jwk, self._alg = messages, JWKEC, ES256
        counter = self._sent

        class Network(client.ClientNetwork):  # type: ignore[misc]
            def _send_request(self, method: str, url: str, *a: Any, **kw: Any) -> Any:
                next(counter)
                return super()._send_request(method, url, *a, **kw)

        self.net = Network(None, alg=ES256, verify_ssl=ca_bundle or True,
                           user_agent="acme-python-bench")
        self.directory = client.ClientV2.get_directory(directory, self.net)
        self.client = client.ClientV2(self.directory, self.net)
        self.redis = redis
        self.keys = Keys(namespace)
        self.account: Any = None

    @classmethod
    def requests_sent(cls) -> int:
        """HTTP exchanges so far, across every instance (an itertools.count peek)."""
        n = next(cls._sent)
        return n  # the peek itself costs one; callers take differences

    def new_account(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.net.key = self._jwk(key=ec.generate_private_key(ec.SECP256R1()))
        self.net.account = None
        reg = self._messages.NewRegistration.from_data(terms_of_service_agreed=True)
        self.account = self.client.new_account(reg)

    def issue(self, new_account: bool = True) -> str:
        from acme import challenges, crypto_util
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if new_account or self.account is None:
            self.new_account()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr_pem = crypto_util.make_csr(key_pem, [random_name()])
        orderr = self.client.new_order(csr_pem)
        tokens = []
        for authzr in orderr.authorizations:
            if authzr.body.status == self._messages.STATUS_VALID:
                continue
            challb = next(c for c in authzr.body.challenges
                          if isinstance(c.chall, challenges.HTTP01))
            response, validation = challb.response_and_validation(self.net.key)
            token = challb.chall.encode("token")
            self.redis.set(self.keys.http01(token), validation, ex=300)
            tokens.append(token)
            self.client.answer_challenge(challb, response)
        try:
            deadline = dt.datetime.now() + dt.timedelta(seconds=POLL_TIMEOUT)
            orderr = self.client.poll_and_finalize(orderr, deadline)
        finally:
            for token in tokens:
                self.redis.delete(self.keys.http01(token))
        pem: str = orderr.fullchain_pem
        return pem


def sync_redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, max_connections=512)


# -- output ----------------------------------------------------------------------------------


async def best_of(variants: dict[Any, Callable[[], Awaitable[Any]]], n: int, rounds: int,
                  warmup: int = 50) -> dict[Any, float]:
    """CPU µs per call of each variant: the best of *rounds* rounds of *n* calls, the
    variants interleaved round by round, after *warmup* calls of each."""
    best = {k: float("inf") for k in variants}
    for fn in variants.values():
        for _ in range(warmup):
            await fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            c0 = time.process_time()
            for _ in range(n):
                await fn()
            best[name] = min(best[name], (time.process_time() - c0) / n * 1e6)
    return best


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: object) -> str:
    if isinstance(c, float):
        if c != c:
            return "-"
        return f"{c:,.3f}" if abs(c) < 10 else f"{c:,.1f}"
    return str(c)


def machine() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"Python {sys.version.split()[0]}, {dt.datetime.now():%Y-%m-%d %H:%M}")


def cpu_times() -> tuple[float, float]:
    """(all CPU time, the part of it stolen by the hypervisor) in clock ticks since boot, from
    /proc/stat ((0, 0) where there is none): two readings give the steal of what ran between."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    return sum(fields), fields[7] if len(fields) > 7 else 0.0


def steal_pct(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the machine's CPU time the hypervisor took between two ``cpu_times()``."""
    total = after[0] - before[0]
    return 100.0 * (after[1] - before[1]) / total if total > 0 else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    k = min(max(round(p / 100 * (len(data) - 1)), 0), len(data) - 1)
    return data[k]
