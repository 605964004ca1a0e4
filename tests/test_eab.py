"""External Account Binding end to end, against the real Pebble that requires it.

Two Pebbles: the one the plugin embeds with ``--wec-pebble-eab``, and one started here as
the stack starts it (``start_pebble`` with MAC keys) that the runs reach as an external CA
(``--wec-directory``), so that a test can read its accounts afterwards: each account's
``externalAccountBinding`` (its JWS's ``kid``) says which key it took.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _loadruns import NEEDS_STACK, log_lines, only

from pytest_wec.stack._pebble import start_pebble
from pytest_wec.stack._procs import free_port

pytestmark = [*NEEDS_STACK, pytest.mark.timeout(240)]

CHAINS = "pytest_wec_chains"
KIDS = [f"kid-{i}" for i in range(1, 7)]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def eab_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Pebble requiring External Account Binding with the MAC keys of :data:`KIDS`."""
    run_dir: Path = tmp_path_factory.mktemp("eab-ca")
    keys = {kid: _b64(secrets.token_bytes(32)) for kid in KIDS}
    proc, info = start_pebble(run_dir, http_port=free_port(), tls_port=free_port(),
                              dns_server=f"127.0.0.1:{free_port()}", eab=keys)
    try:
        yield {"directory": info.directory, "ca_bundle": str(info.ca_bundle), "keys": keys,
               "args": ["--wec-directory", info.directory, "--wec-ca-bundle",
                        str(info.ca_bundle)]}
    finally:
        proc.stop()


def _run(pytester: pytest.Pytester, *args: str, target: str = CHAINS) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--pyargs", target, "-p", "no:cacheprovider",
                                         "--wec-out", str(pytester.path / "out"), *args,
                                         timeout=200)


def _bound_kids(ca: dict[str, Any], db: Path) -> list[str]:
    """The EAB key id of each account in the run's state DB, read from the CA's account
    object (RFC 8555 §7.1.2 ``externalAccountBinding``: the JWS the newAccount carried)."""
    from pytest_wec.acme import Account, AccountKey, AcmeNetwork, make_transport

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT url, key_pem, alg FROM wec_accounts").fetchall()

    async def fetch() -> list[str]:
        net = AcmeNetwork(ca["directory"], make_transport("httpx", ca_bundle=ca["ca_bundle"]))
        client = net.client("check", "check", lambda r: None)
        sem = asyncio.Semaphore(8)

        async def kid_of(url: str, pem: str, alg: str) -> str:
            async with sem:
                acct = await client.fetch_account(
                    Account(url, AccountKey.from_pem(pem, alg=alg)))
            protected = acct.body["externalAccountBinding"]["protected"]
            header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
            return str(header["kid"])

        try:
            return list(await asyncio.gather(*(kid_of(*r) for r in rows)))
        finally:
            await net.aclose()

    return asyncio.run(asyncio.wait_for(fetch(), 60))


# -- (a) the chains pass when the CA requires EAB and keys are given ----------------------------
def test_chains_pass_against_the_embedded_pebble_requiring_eab(
        pytester: pytest.Pytester) -> None:
    """``--wec-pebble-eab`` alone: Pebble requires a binding, the keys it knows are generated,
    and every chain that makes an account passes (the variants that check the CA's refusals
    of a missing binding and of a wrong MAC run, not skip)."""
    result = _run(pytester, "-p", "no:xdist", "-v", "--wec-pebble-eab",
                  "-k", "new_account or key_rollover or deactivate_account")
    out = result.stdout.str()
    assert result.ret == 0, out[-4000:]
    assert result.parseoutcomes().get("passed", 0) >= 10, out[-2000:]
    result.stdout.fnmatch_lines(["*test_external_account_required PASSED*",
                                 "*test_binding_with_a_wrong_mac PASSED*"])
    config = json.loads((pytester.path / "out" / "pebble-config.json").read_text())["pebble"]
    assert config["externalAccountBindingRequired"] is True
    written = (pytester.path / "out" / "eab-keys.txt").read_text().splitlines()
    given = dict(line.split() for line in written if not line.startswith("#"))
    assert given == config["externalAccountMACKeys"] and len(given) == 8


def test_chains_pass_with_a_key_given_on_two_workers(pytester: pytest.Pytester,
                                                     eab_ca: dict[str, Any]) -> None:
    """``--wec-eab-kid``/``--wec-eab-hmac`` against a CA given by URL, on two xdist workers:
    every account the run made is bound to that key. (Not the contact update variant:
    Pebble 2.4 drops ``externalAccountBinding`` from an account whose contact changed.)"""
    kid = "kid-2"
    # a base64url key may begin with "-": given as its own argument it would be an option
    result = _run(pytester, "-n", "2", *eab_ca["args"], "--wec-eab-kid", kid,
                  f"--wec-eab-hmac={eab_ca['keys'][kid]}=",
                  "-k", "new_account and not update_contact")
    assert result.ret == 0, result.stdout.str()[-4000:]
    assert result.parseoutcomes().get("passed", 0) >= 5
    kids = _bound_kids(eab_ca, pytester.path / "out" / "state.db")
    assert len(kids) >= 3 and set(kids) == {kid}


# -- (b) the CA requires EAB and the run has no key ----------------------------------------------
def test_no_key_for_a_ca_that_requires_one_names_the_options(
        pytester: pytest.Pytester, eab_ca: dict[str, Any]) -> None:
    """The new_account chains: each that needs a key (every one that makes an account, and
    the wrong-MAC variant) fails saying what to give; the CA's refusal of a newAccount
    without a binding passes (it is what the CA should do)."""
    result = _run(pytester, "-p", "no:xdist", "-rA", *eab_ca["args"],
                  target=f"{CHAINS}.test_new_account")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-4000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("failed", 0) >= 5, outcomes
    result.stdout.fnmatch_lines(["PASSED *::test_external_account_required"])
    message = (f"EabRequired: the CA requires External Account Binding (RFC 8555 §7.3.4: "
               f"its directory {eab_ca['directory']} says meta.externalAccountRequired) and "
               "this run was given no key: give --wec-eab-kid and --wec-eab-hmac (one key), "
               "or --wec-eab-file PATH (several); with the embedded Pebble, --wec-pebble-eab")
    assert out.count("E       pytest_wec.worker.eab." + message) == outcomes["failed"], out
    assert "INTERNALERROR" not in out


# -- (c) a wrong MAC: the CA's problem, shown as its answer ---------------------------------------
def test_a_wrong_mac_shows_the_cas_problem(pytester: pytest.Pytester,
                                           eab_ca: dict[str, Any]) -> None:
    wrong = _b64(secrets.token_bytes(32))
    result = _run(pytester, "-p", "no:xdist", *eab_ca["args"], "--wec-eab-kid", "kid-3",
                  f"--wec-eab-hmac={wrong}", "-k", "test_new_account and not only and not "
                  "existing and not contact", target=f"{CHAINS}.test_new_account")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-4000:]
    result.assert_outcomes(passed=2, failed=1)  # the variants of CA refusals pass
    result.stdout.fnmatch_lines([
        "E * pytest_wec.acme._errors.AcmeProblem: urn:ietf:params:acme:error:unauthorized :: "
        "external account binding JWS verification error*",
        "E * wec: the CA's answer (HTTP 403 unauthorized) to a newAccount carrying External "
        "Account Binding key id 'kid-3' from --wec-eab-kid; check the key id and the HMAC key "
        "the CA gave",
    ])
    assert wrong not in out  # the HMAC key is never printed


# -- (d) load: each account takes a key of the file ----------------------------------------------
def test_load_run_single_use_keys_each_bind_one_account(pytester: pytest.Pytester,
                                                        eab_ca: dict[str, Any]) -> None:
    """Six single-use keys, two workers (three keys each): six accounts, each bound to
    another key, and the new accounts past them skipped for want of a key."""
    keys = pytester.path / "keys.txt"
    keys.write_text("".join(f"{kid} {mac}\n" for kid, mac in eab_ca["keys"].items()))
    result = _run(pytester, "-n", "2", *eab_ca["args"], "--wec-eab-file", str(keys),
                  "--wec-eab-single-use", "--wec-load", "2", "--wec-duration", "3s",
                  "--wec-mix", only("new_account"))
    out = pytester.path / "out"
    assert result.ret == 0, result.stdout.str()[-4000:]
    kids = _bound_kids(eab_ca, out / "state.db")
    assert sorted(kids) == KIDS  # each key bound exactly one account
    rows = [r for r in log_lines(out) if r.get("chain") == "new_account"]
    assert sum(r["outcome"] == "ok" for r in rows) == len(KIDS)
    skipped = [r for r in rows if r["outcome"] == "skipped"]
    assert skipped and all(r["error"].startswith(
        "EabKeysUsedUp: no External Account Binding key left for a new account: worker gw")
        and "(one key in 2: keys " in r["error"] for r in skipped), skipped[0]["error"]
    assert not [r for r in rows if r["outcome"] == "failed"]


def test_load_run_reusable_keys_are_taken_in_turn(pytester: pytest.Pytester,
                                                  eab_ca: dict[str, Any]) -> None:
    keys = pytester.path / "keys.txt"
    keys.write_text(f"# two keys\nkid-4 {eab_ca['keys']['kid-4']}\n"
                    f"kid-5 {eab_ca['keys']['kid-5']}\n")
    result = _run(pytester, "-p", "no:xdist", *eab_ca["args"], "--wec-eab-file", str(keys),
                  "--wec-load", "2", "--wec-duration", "3s", "--wec-mix", only("new_account"))
    assert result.ret == 0, result.stdout.str()[-4000:]
    kids = _bound_kids(eab_ca, pytester.path / "out" / "state.db")
    assert len(kids) > 2  # the keys are used again: they are not single-use
    counts = {kid: kids.count(kid) for kid in set(kids)}
    assert set(counts) == {"kid-4", "kid-5"} and abs(counts["kid-4"] - counts["kid-5"]) <= 1
