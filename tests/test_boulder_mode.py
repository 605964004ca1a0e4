"""The shipped chains under ``--wec-preset boulder``, against Boulder's behaviour without a
Boulder: the stub CA's Boulder mode (``pytest_wec.testing.quirky_ca --boulder``).

The stack stands for Boulder's docker-compose environment as docs/boulder.md describes it:

- the CA: the stub in Boulder mode (its identifier policy, profiles, the revocation reasons
  it refuses, its WFE's stale account cache, contact updates ignored), with Boulder's dev
  limit of 2 certificates per registered domain (``--certs-per-domain 2``) and challenges
  checked over the network (``--va-*``): names resolved through the challenge server's DNS,
  http-01 and tls-alpn-01 checked at the addresses the preset names (64.112.117.122 and
  .134), reached on loopback (127.0.0.1 and 127.0.0.2) as docker's networks reach them;
- chall-test-srv: the project's own challenge server as a challtestsrv, as Boulder runs its
  own: http-01 and DNS on 127.0.0.1, tls-alpn-01 on 127.0.0.2, its DNS answering Boulder's
  FAKE_DNS (64.112.117.122) for every name, so that a name validated by tls-alpn-01 passes
  only when the run routes it to .134 with an A record (the preset's ``--wec-ip``);
- the run: ``--wec-preset boulder`` with the directory, its CA bundle and the challtestsrv
  given explicitly (the stub's URLs), everything else from the preset.

What must hold: once, the only failures are the chains Boulder's account cache fails, each
saying what the CA did; the deviations are Boulder's known ones; no test meets the limit.
Under load, the fresh names of each order meet no limit; what is refused (the fixed IP
address, which has its certificates after the first run) is counted as rateLimited.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from _anyca import needs_redis, run_chains, stored_authorizations

from pytest_wec.controller.resultlog import read_results

pytestmark = [pytest.mark.timeout(240), needs_redis]

HTTP01_IP, TLSALPN01_IP = "64.112.117.122", "64.112.117.134"
#: the chains Boulder's WFE account cache fails (docs/chains.md), with what they report
ACCOUNT_CACHE = {
    "test_deactivate_account.py::test_deactivate_account":
        "the deactivated account's newOrder was still accepted",
    "test_deactivate_account.py::test_deactivate_pooled_account":
        "the deactivated account's POST-as-GET of its account was still accepted",
    "test_key_rollover.py::test_key_rollover":
        "a request signed by the new key (kid) was still refused",
    "test_key_rollover.py::test_old_key_refused":
        "a request signed by the account's old key (kid) was still accepted",
}
#: Boulder's answers RFC 8555 allows but does not recommend (RfcDeviation warnings)
DEVIATIONS = {
    "a CSR for the account's own key: the CA answered malformed",
    "the CA answered a contact update with 200",
    "the CA refuses revocation reason 3 (affiliationChanged) signed by the account's key: "
    "badRevocationReason",
}
#: the skips of a run without External Account Binding against a CA with no alternate chain
SKIPS = ("the CA does not require External Account Binding",
         "the run has no External Account Binding key",
         "the CA offers no alternate chains")
#: a load of the chains that issue, each order under fresh names, and the fixed IP address
LOAD_MIX = ("all_but_finalize=1,new_certificate=4,wildcard=1,renew_certificate=1,"
            "reuse_authorization=1,ip_identifier=2")
#: chains that order an identifier again (the IP address, a stored name): a limit may refuse
REORDERING = {"ip_identifier", "renew_certificate", "reuse_authorization"}


def _bindable(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def boulder(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[list[str]]:
    """The stub Boulder and its chall-test-srv (see the module doc): the options of a run
    against them, under ``--wec-preset boulder``."""
    if not _bindable("127.0.0.2"):
        pytest.skip("127.0.0.2 cannot be bound on this host")
    from pytest_wec._shipped import CHALLENGE_SRV
    from pytest_wec.stack._procs import ManagedProcess, free_port
    from pytest_wec.testing.quirky_ca import start_quirky_ca

    run_dir = tmp_path_factory.mktemp("boulder")
    http, dns, mgmt, tls = free_port(), free_port(), free_port(), free_port("127.0.0.2")
    srv = ManagedProcess("chall-test-srv", [
        sys.executable, "-m", CHALLENGE_SRV, "--http01", f"127.0.0.1:{http}",
        "--tlsalpn01", f"127.0.0.2:{tls}", "--dns01", f"127.0.0.1:{dns}",
        "--management", f"127.0.0.1:{mgmt}", "--namespace", "boulder",
        "--default-ipv4", HTTP01_IP], run_dir / "chall-test-srv.log",
        env={**os.environ, "WEC_REDIS": redis_url})
    try:
        srv.wait_line(lambda line: line.strip() == "ready", 15, "printing 'ready'")
        ca, url, bundle = start_quirky_ca(run_dir / "ca", [
            "--boulder", "--ocsp", "--certs-per-domain", "2",
            "--va-dns", f"127.0.0.1:{dns}", "--va-ports", f"http-01={http},tls-alpn-01={tls}",
            "--va-routes", f"{HTTP01_IP}=127.0.0.1,{TLSALPN01_IP}=127.0.0.2"])
        try:
            yield ["--wec-preset", "boulder", "--wec-directory", url, "--wec-ca-bundle", bundle,
                   "--wec-challtestsrv", f"http://127.0.0.1:{mgmt}"]
        finally:
            ca.stop()
    finally:
        srv.stop()


def _failed(text: str) -> list[str]:
    """The failed tests' ids (file name and test), as ``-rf`` lists them."""
    return sorted(re.findall(r"^FAILED (?:\S*/)?(\S+\.py::\S+)", text, re.MULTILINE))


def test_the_chains_fail_only_for_boulders_account_cache(
        pytester: pytest.Pytester, boulder: list[str]) -> None:
    result = run_chains(pytester, *boulder, out="once", timeout=180)
    text = result.stdout.str()
    # what the preset set, and what the explicit options kept from it
    assert (f"wec: preset boulder set: ip {HTTP01_IP},tls-alpn-01={TLSALPN01_IP}; profile "
            "shortlived; client-ip-header X-Real-IP; rate-limit-wait 10s; given explicitly, "
            "so not from the preset: directory (from --wec-directory), challtestsrv (from "
            "--wec-challtestsrv)") in text, text[:3000]
    # no failure of ours: the four chains the account cache fails, each saying what it saw
    assert _failed(text) == sorted(ACCOUNT_CACHE), text[-6000:]
    for what in ACCOUNT_CACHE.values():
        assert re.search(re.escape(what) + r" \d+\.\d s after the CA answered", text), what
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == len(ACCOUNT_CACHE) and outcomes["passed"] >= 40, outcomes
    skipped = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", text, re.MULTILINE)
    assert skipped and all(s.startswith(SKIPS) for s in skipped), skipped
    # the deviations are Boulder's known ones, each reported once
    seen = re.findall(r"RfcDeviation: (.*)", text)
    assert len(seen) == len(DEVIATIONS) and all(
        any(s.startswith(d) for s in seen) for d in DEVIATIONS), seen
    # the registered-domain limit was on, and refused nothing: every order had fresh names
    assert "rateLimited" not in text
    # each IP identifier at its type's address; names validated by tls-alpn-01 reached .134
    stored = stored_authorizations(pytester.path / "once")
    assert ("ip", HTTP01_IP, "http-01") in stored and ("ip", TLSALPN01_IP, "tls-alpn-01") \
        in stored, stored
    assert {kind for id_type, _, kind in stored if id_type == "dns"} == {
        "http-01", "dns-01", "tls-alpn-01"}, stored


def test_a_load_meets_the_limit_only_where_it_orders_a_name_again(
        pytester: pytest.Pytester, boulder: list[str]) -> None:
    result = run_chains(pytester, *boulder, "--wec-load", "6", "--wec-duration", "3s",
                        "--wec-grace", "20s", "--wec-rate-limit-wait", "1s",
                        "--wec-mix", LOAD_MIX, out="load", timeout=120)
    assert result.ret == 0, result.stdout.str()[-4000:]
    out = pytester.path / "load"
    summary = json.loads((out / "summary.json").read_text())
    chains: dict[str, Any] = summary["chains"]
    limits = summary["rate_limits"]
    # fresh names: every order of the chains that make them was taken
    for name in ("all_but_finalize", "new_certificate", "wildcard"):
        assert chains[name]["count"] >= 1 and chains[name]["failed"] == 0, (name, chains)
    assert summary["totals"]["certificates_issued"] >= 3, summary["totals"]
    # what was refused: orders for an identifier again, the fixed IP address among them
    # (its two certificates are issued by the first run or this one's first orders)
    assert "ip_identifier" in limits["chains_refused"], limits
    assert set(limits["chains_refused"]) <= REORDERING, limits
    assert set(limits["by_limit"]) == {"CertificatesPerDomain"}, limits
    assert limits["refused"] == summary["totals"]["rate_limited"] \
        == limits["by_endpoint"]["newOrder"]["refused"] >= 1, limits
    # each refused chain's virtual user waited, at most --wec-rate-limit-wait (not the
    # preset's 10 s: the explicit option won)
    refused = [r for r in read_results(out / "results.jsonl")
               if r["chain"] in REORDERING and "rateLimited" in str(r.get("error"))]
    assert len(refused) == sum(limits["chains_refused"].values()), limits
    # (the time left of the run bounds the wait too: a chain refused after the duration's
    # end has no wait to make)
    load_ended = summary["run"]["load_ended"]
    unpaced = [(r, load_ended) for r in refused if not (
        0 < r.get("rate_limit_wait", 0) <= 1.0
        or ("rate_limit_wait" not in r and r["started"] + r["took"] >= load_ended - 0.05))]
    assert not unpaced, unpaced
    assert any(r.get("rate_limit_wait", 0) > 0 for r in refused), refused
    assert limits["user_waits"]["count"] >= 1, limits


def test_what_the_preset_avoids_fails(pytester: pytest.Pytester, boulder: list[str]) -> None:
    """The two things the preset's values avoid, undone by explicit options (which win):
    tls-alpn-01 without its address (``--wec-ip`` with no per-type one: no A record, so the
    CA connects to the http-01 address), and every name under one registered domain
    (``--wec-domain``: the limit of 2 refuses the third certificate's order)."""
    unrouted = run_chains(pytester, *boulder, "--wec-ip", HTTP01_IP, "-k",
                          "test_new_order_each_challenge", out="unrouted", timeout=120)
    text = unrouted.stdout.str()
    assert _failed(text) == ["test_new_order.py::test_new_order_each_challenge[tls-alpn-01]"], \
        text[-6000:]
    unrouted.assert_outcomes(passed=2, failed=1)
    assert re.search(rf"Connection to {re.escape(HTTP01_IP)}:\d+ for tls-alpn-01 failed", text)
    one_domain = run_chains(pytester, *boulder, "--wec-domain", "wec.example.com", "-k",
                            "test_certificate_key_types", out="one-domain", timeout=120)
    text = one_domain.stdout.str()
    assert _failed(text) == ["test_new_certificate.py::test_certificate_key_types[rsa2048]"], \
        text[-6000:]
    one_domain.assert_outcomes(passed=2, failed=1)
    assert 'too many certificates (2) already issued for "example.com"' in text
