"""expected_errors: requests a CA must refuse, each with the problem type RFC 8555 names.

Load mode runs one cheap case: newAccount with ``onlyReturnExisting`` for a key the CA never
saw, refused with accountDoesNotExist (§7.3.1); its "ok" means the error came as expected.
The integration-only variants cover the rest:

- a well-formed account URL the CA never issued as ``kid``, sent to newOrder (a resource
  that exists, so that a CA routing account URLs by their shape reads the JWS):
  accountDoesNotExist (§6.7); a ``kid`` that is no account URL at all: accountDoesNotExist
  or malformed (RFC 8555 names no type for it)
- a wrong key authorization: the challenge and its authorization become invalid, the
  challenge carrying an error (§7.5.1, §8), and so does the order (§7.1.6)
- finalize before the order is ready: orderNotReady, HTTP 403 (§7.4)
- a CSR whose names differ from the order's: badCSR (§7.4, a SHOULD)
- a CSR for the account's own key: refused (§11.1 MUST), with badCSR (§7.4 SHOULD:
  malformed, Boulder's answer, is reported as an RfcDeviation)
- newOrder for a profile the directory does not advertise: invalidProfile
  (draft-aaron-acme-profiles; skipped when the CA advertises no profiles)
- a JWS ``alg`` the CA does not take ("none", a MAC, an unknown name): badSignatureAlgorithm
  with the supported ``algorithms`` listed (§6.2)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from pytest_wec import ChainContext, chain
from pytest_wec.acme import (
    Account,
    AccountKey,
    AcmeProblem,
    JwsSigner,
    Order,
    b64url,
    generate_cert_key,
    key_authorization,
    make_csr,
)

from ._checks import embedded_pebble_deviates, expect_problem, warn_deviation


@chain("expected_errors")
async def test_unknown_account(wec: ChainContext) -> None:
    """newAccount with ``onlyReturnExisting`` for a key the CA never saw (§7.3.1)."""
    await expect_problem(
        wec,
        wec.client.new_account(wec.new_key(), only_return_existing=True), "accountDoesNotExist"
    )


def unissued_account_url(url: str) -> str:
    """An account URL of the shape of *url* that the CA never issued: its last path segment
    replaced by another of the same kind (digits: a number far past *url*'s; hex: random
    hex; else random letters and digits), as long."""
    parts = urlsplit(url)
    head, _, last = parts.path.rstrip("/").rpartition("/")
    if last.isdigit():
        other = str(int(last) + 10**12 + secrets.randbelow(10**12))
    elif re.fullmatch(r"[0-9a-f]+", last):
        other = secrets.token_hex(len(last))[: len(last)]
    else:
        other = secrets.token_urlsafe(len(last)).replace("-", "x").replace("_", "y")[:len(last)]
    return urlunsplit(parts._replace(path=f"{head}/{other or 'x'}"))


@chain("expected_errors", needs={"account"}, load=False)
async def test_unknown_kid(wec: ChainContext) -> None:
    """newOrder whose ``kid`` is an account URL the CA could have issued but did not
    (§6.2: the kid is the account URL; §6.7: accountDoesNotExist)."""
    account = await wec.take_account()
    ghost = Account(url=unissued_account_url(account.url), key=account.key)
    await expect_problem(
        wec, wec.client.new_order(ghost, wec.identifiers(wec.random_names(1))),
        "accountDoesNotExist")


@chain("expected_errors", needs={"account"}, load=False)
async def test_malformed_kid(wec: ChainContext) -> None:
    """newOrder whose ``kid`` is no account URL of the CA's shape: refused, with
    accountDoesNotExist or malformed (Boulder's answer: RFC 8555 names no type for it)."""
    account = await wec.take_account()
    ghost = Account(url=account.url.rstrip("/") + "0nosuchaccount", key=account.key)
    await expect_problem(
        wec, wec.client.new_order(ghost, wec.identifiers(wec.random_names(1))),
        "accountDoesNotExist", "malformed")


@pytest.mark.parametrize("challenge", ["http-01", "dns-01", "tls-alpn-01"])
@chain("expected_errors", needs={"account"}, load=False)
async def test_wrong_key_authorization(wec: ChainContext, challenge: str) -> None:
    """The challenge server answers with another key's key authorization (§8.1)."""
    account = await wec.take_account()
    name = wec.random_names(1)[0]
    order = await wec.order(account, [name])
    authz = await wec.client.get_authorization(account, order.authorizations[0])
    chall = authz.challenge(challenge)
    if chall is None:
        wec.skip(f"the CA offers no {challenge} challenge for {name} (offered: "
                 f"{', '.join(c.type for c in authz.challenges)})")
    assert chall.token, f"a {challenge} challenge without a token: {authz.body}"
    wrong = key_authorization(chall.token, AccountKey.generate("ES256"))
    undo = await wec.publish(challenge, authz.identifier.value, chall.token, wrong)
    try:
        await wec.client.answer_challenge(account, chall.url)
        authz = await wec.client.poll_authorization(account, authz.url, timeout=60)
    finally:
        await undo()
    assert authz.status == "invalid", f"a wrong key authorization validated: {authz.body}"
    failed = authz.challenge(challenge)
    assert failed is not None and failed.status == "invalid", authz.body
    assert failed.error is not None, f"the failed challenge carries no error (§8): {authz.body}"
    assert failed.error.code in ("unauthorized", "incorrectResponse"), failed.error
    order = await wec.client.get_order(account, order.url)
    assert order.status == "invalid", f"an authorization failed, order {order.status} (§7.1.6)"


@chain("expected_errors", needs={"account"}, load=False)
async def test_finalize_before_ready(wec: ChainContext) -> None:
    account = await wec.take_account()
    names = wec.random_names(1)
    order = await wec.order(account, names)
    assert order.status == "pending"
    csr = make_csr(names, generate_cert_key(wec.settings.cert_key))
    await expect_problem(wec, wec.client.finalize(account, order, csr), "orderNotReady",
                         status=403)


async def _ready_order(wec: ChainContext, names: list[str]) -> tuple[Account, Order]:
    account = await wec.take_account()
    order = await wec.order(account, names)
    await wec.authorize(account, order)
    order = await wec.client.poll_order(account, order, timeout=60, until="ready")
    assert order.status == "ready", order.body
    return account, order


@pytest.mark.parametrize("mismatch", ["extra name", "missing name"])
@chain("expected_errors", needs={"account"}, load=False)
async def test_csr_names_differ(wec: ChainContext, mismatch: str) -> None:
    ordered = wec.random_names(2)
    in_csr = [*ordered, *wec.random_names(1)] if mismatch == "extra name" else ordered[:1]
    account, order = await _ready_order(wec, ordered)
    csr = make_csr(in_csr, generate_cert_key(wec.settings.cert_key))
    problem = await expect_problem(
        wec,
        wec.client.finalize(account, order, csr), "badCSR", "unauthorized"
    )
    if problem.code != "badCSR":
        warn_deviation(wec, f"a CSR with {mismatch}: the CA answered {problem.code}; "
                            f"RFC 8555 §7.4 says it SHOULD use badCSR")


@chain("expected_errors", needs={"account"}, load=False)
async def test_csr_with_account_key(wec: ChainContext) -> None:
    names = wec.random_names(1)
    account, order = await _ready_order(wec, names)
    problem = await expect_problem(
        wec,
        wec.client.finalize(account, order, make_csr(names, account.key)), "badCSR", "malformed"
    )
    if problem.code != "badCSR":
        warn_deviation(wec, f"a CSR for the account's own key: the CA answered {problem.code}; "
                            f"RFC 8555 §7.4 says a CSR it will not issue for SHOULD get badCSR")


@chain("expected_errors", needs={"account"}, load=False)
async def test_unknown_profile(wec: ChainContext) -> None:
    """newOrder for a profile the directory does not list: invalidProfile (a MUST of
    draft-aaron-acme-profiles)."""
    offered = (await wec.client.directory()).profiles
    if not offered:
        pytest.skip("the CA advertises no profiles (no meta.profiles in its directory)")
    account = await wec.take_account()
    name = "wec-no-such-profile"
    assert name not in offered
    await expect_problem(
        wec, wec.order(account, wec.random_names(1), profile=name), "invalidProfile")


def _signer_with_alg(alg: str) -> JwsSigner:
    """A signer that writes *alg* into the protected header (RFC 7515 §4.1.1) and signs as
    that alg would, or as the key does when the alg is no MAC and not "none"."""

    def sign(
        key: AccountKey, url: str, payload: bytes | None, nonce: str | None, kid: str | None, /
    ) -> bytes:
        header: dict[str, object] = {"alg": alg, "url": url}
        header.update({"kid": kid} if kid else {"jwk": key.jwk})
        if nonce is not None:
            header["nonce"] = nonce
        protected = b64url(orjson.dumps(header))
        body = "" if payload is None else b64url(payload)
        signing_input = f"{protected}.{body}".encode("ascii")
        if alg == "none":
            signature = ""
        elif alg.startswith("HS"):
            mac_key = key.thumbprint.encode("ascii")
            signature = b64url(hmac.new(mac_key, signing_input, hashlib.sha256).digest())
        else:
            signature = b64url(key.signature(signing_input))
        return orjson.dumps({"protected": protected, "payload": body, "signature": signature})

    return sign


@pytest.mark.parametrize("alg", ["none", "HS256", "RS1"])
@chain("expected_errors", load=False)
async def test_bad_signature_algorithm(wec: ChainContext, alg: str) -> None:
    forged = wec.client_with_signer(_signer_with_alg(alg))
    try:
        await forged.new_account(wec.new_key(), only_return_existing=True)
    except AcmeProblem as exc:
        problem = exc
    else:
        raise AssertionError(f"the CA accepted a JWS with alg {alg!r}")
    embedded_pebble_deviates(
        wec, problem.code == "malformed",
        f"a JWS with alg {alg!r} gets malformed, not badSignatureAlgorithm (§6.2)")
    assert problem.code == "badSignatureAlgorithm", f"expected badSignatureAlgorithm: {problem}"
    assert problem.status == 400, problem
    algorithms = problem.body.get("algorithms")
    assert isinstance(algorithms, list) and algorithms, (
        f"badSignatureAlgorithm must list the supported algorithms (§6.2): {problem}")
    assert alg not in algorithms
