"""The ACME client against the real Pebble, started as the plugin starts it.

Each account key type end to end (account, order, http-01 through the challenge server,
finalize, download), and recovery from Pebble rejecting half of all good nonces.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pytest_wec.acme import (
    AccountKey,
    AcmeNetwork,
    AcmeProblem,
    AiohttpTransport,
    HttpxTransport,
    generate_cert_key,
    key_authorization,
    make_csr,
    make_ssl_context,
)
from pytest_wec.settings import Settings
from pytest_wec.stack import Stack
from pytest_wec.wire.results import RequestResult
from pytest_wec.worker.publish import RedisPublisher

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is not installed"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.start(Settings(), tmp_path_factory.mktemp("stack"), "acme-pebble")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def nonce_reject_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    old = os.environ.get("PEBBLE_WFE_NONCEREJECT")
    os.environ["PEBBLE_WFE_NONCEREJECT"] = "50"  # the user's PEBBLE_* wins over defaults
    try:
        s = Stack.start(Settings(), tmp_path_factory.mktemp("stack50"), "acme-nonce50")
    finally:
        if old is None:
            del os.environ["PEBBLE_WFE_NONCEREJECT"]
        else:
            os.environ["PEBBLE_WFE_NONCEREJECT"] = old
    try:
        yield s
    finally:
        s.stop()


async def _issue(info: dict[str, Any], alg: str, bits: int | None, *, transport: str = "aiohttp"
                 ) -> tuple[list[RequestResult], x509.Certificate]:
    results: list[RequestResult] = []
    t: Any
    if transport == "httpx":
        t = HttpxTransport(verify=info["ca_bundle"])
    else:
        t = AiohttpTransport(ssl=make_ssl_context(info["ca_bundle"], False))
    network = AcmeNetwork(info["directory"], t, timeout=20)
    publisher = RedisPublisher(info["redis_url"], info["namespace"])
    try:
        acme = network.client("test", "c1", results.append)
        key = AccountKey.generate(alg, bits=bits) if bits else AccountKey.generate(alg)
        account = await acme.new_account(key)
        assert account.created and account.status == "valid"
        name = f"{os.urandom(5).hex()}.wec.example.com"
        order = await acme.new_order(account, [name])
        authz = await acme.get_authorization(account, order.authorizations[0])
        chall = authz.challenge("http-01")
        assert chall is not None
        await publisher.add_http01(chall.token, key_authorization(chall.token, key))
        await acme.answer_challenge(account, chall.url)
        authz = await acme.poll_authorization(account, authz.url, timeout=30)
        assert authz.status == "valid", authz.body
        order = await acme.poll_order(account, order, timeout=30, until="ready")
        cert_key = generate_cert_key("ec256")
        order = await acme.finalize(account, order, make_csr([name], cert_key))
        order = await acme.poll_order(account, order, timeout=30)
        assert order.status == "valid" and order.certificate
        cert = await acme.download_certificate(account, order.certificate)
        leaf = x509.load_pem_x509_certificates(cert.pem.encode())[0]
        return results, leaf
    finally:
        await publisher.aclose()
        await network.aclose()


@pytest.mark.parametrize(
    ("alg", "bits"),
    [("ES256", None), ("ES384", None), ("RS256", 2048), ("RS256", 3072)],
)
def test_issue_with_each_account_key(stack: Stack, alg: str, bits: int | None) -> None:
    results, leaf = asyncio.run(_issue(dict(stack.info), alg, bits))
    endpoints = {r["endpoint"] for r in results}
    assert {"directory", "newAccount", "newOrder", "authz", "challenge", "finalize", "order",
            "certificate"} <= endpoints
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert all("://" not in r["endpoint"] for r in results)
    assert leaf.subject is not None


def test_issue_with_httpx_transport(stack: Stack) -> None:
    results, _ = asyncio.run(_issue(dict(stack.info), "ES256", None, transport="httpx"))
    assert all(r["ok"] for r in results)


def test_recovers_from_rejected_nonces(nonce_reject_stack: Stack) -> None:
    """PEBBLE_WFE_NONCEREJECT=50: half the good nonces are refused; badNonce is retried."""
    rejected = 0
    for _ in range(4):
        results, _leaf = asyncio.run(_issue(dict(nonce_reject_stack.info), "ES256", None))
        bad = [r for r in results if r["problem"] == "urn:ietf:params:acme:error:badNonce"]
        rejected += len(bad)
        assert all(not r["ok"] for r in bad)
    assert rejected > 0, "Pebble should have rejected some nonces"


def test_unknown_account_is_a_typed_problem(stack: Stack) -> None:
    async def run() -> None:
        info = dict(stack.info)
        network = AcmeNetwork(info["directory"],
                              AiohttpTransport(ssl=make_ssl_context(info["ca_bundle"], False)))
        try:
            acme = network.client("test", "c2", None)
            with pytest.raises(AcmeProblem) as ei:
                await acme.new_account(AccountKey.generate("ES256"), only_return_existing=True)
            assert ei.value.code == "accountDoesNotExist"
            assert str(ei.value).startswith("urn:ietf:params:acme:error:accountDoesNotExist :: ")
        finally:
            await network.aclose()

    asyncio.run(run())


def test_stack_log_files(stack: Stack) -> None:
    run_dir = Path(stack.info["run_dir"])
    for name in ("pebble.log", "redis.log", "challenge-server.log", "pebble-config.json"):
        assert (run_dir / name).exists(), name
