"""The chains against CAs other than the embedded Pebble fail only for the CA's reasons.

- ``--wec-challenge`` as a preference list: the first listed type the CA offers for each
  identifier; none offered: skipped (pytest.skip once, counted skipped under load);
- ``--wec-ip``: the IP identifiers, and a type's own address that DNS names are routed to
  (A records through a challtestsrv) while their challenge is published, as Boulder's
  tls-alpn-01 responder listens on another address than its http-01 one; the challtestsrv's
  request history the run made is cleared;
- what RFC 8555 allows, accepted (and reported as an RfcDeviation where it says SHOULD);
  what is a CA's bug (Boulder's account cache), failed with what the CA did.

Against the real Pebble (the tls-alpn-01 routing: our own challenge server as the
challtestsrv, its tls-alpn-01 listener on 127.0.0.2), the quirky stub CA
(``pytest_wec.testing.quirky_ca``, ``--boulder``: what Boulder answers) and the FakeCA.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _anyca import (
    against,
    needs_redis,
    needs_stack,
    offline_runtime,
    quirky_ca,
    run_chains,
    stored_authorizations,
)

from pytest_wec.acme import AccountKey, FakeCA
from pytest_wec.controller.resultlog import read_results
from pytest_wec.settings import Settings
from pytest_wec.settings.anyca import ChallengeAddresses, parse_challenges, parse_ips
from pytest_wec.worker.challenges import pick, preference, route_for
from pytest_wec.worker.context import ChainContext, NotOffered
from pytest_wec.worker.janitor import HistoryJanitor, history_entries, parents

pytestmark = [pytest.mark.timeout(300)]


# -- the options -----------------------------------------------------------------------------
def test_challenge_types_in_order_of_preference() -> None:
    assert parse_challenges("http-01") == ("http-01",)
    assert parse_challenges("tls-alpn-01, HTTP-01") == ("tls-alpn-01", "http-01")
    for bad in ("dns-02", "http-01,http-01", "", "http-01,"):
        with pytest.raises(ValueError, match="expected one of http-01, dns-01, tls-alpn-01"):
            parse_challenges(bad)
    assert Settings().challenge == ("http-01",)


def test_challenge_server_addresses() -> None:
    one = parse_ips("10.77.77.77")
    assert (one.for_type("http-01"), one.for_type("tls-alpn-01"), one.routed("tls-alpn-01")) \
        == ("10.77.77.77", "10.77.77.77", None)
    two = parse_ips("10.77.77.77,tls-alpn-01=10.88.88.88")
    assert two == ChallengeAddresses("10.77.77.77", {"tls-alpn-01": "10.88.88.88"})
    assert (two.for_type("http-01"), two.for_type("tls-alpn-01")) == ("10.77.77.77",
                                                                      "10.88.88.88")
    assert two.routed("tls-alpn-01") == "10.88.88.88" and two.routed("http-01") is None
    assert parse_ips("tls-alpn-01=[::1]").for_type("tls-alpn-01") == "::1"
    for bad, why in (("10.0.0.1,10.0.0.2", "one address without a type"),
                     ("dns-01=10.0.0.1", "'dns-01' is not one of http-01, tls-alpn-01"),
                     ("0.0.0.0", "not the wildcard"), ("ca.example", "not an IP address")):
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_ips(bad)


def test_routing_is_for_names_validated_by_a_type_with_its_own_address() -> None:
    s = Settings(ip=parse_ips("127.0.0.1,tls-alpn-01=127.0.0.2"))
    assert route_for(s, "tls-alpn-01", "dns") == "127.0.0.2"
    assert route_for(s, "tls-alpn-01", "ip") is None  # the CA connects to the address itself
    assert route_for(s, "http-01", "dns") is None  # the default: the DNS's default answer
    assert route_for(Settings(), "tls-alpn-01", "dns") is None


# -- which challenge is answered (offline, the FakeCA) --------------------------------------
def test_the_first_listed_type_the_ca_offers() -> None:
    ca = FakeCA(challenge_types=("http-01", "dns-01"))
    offered = [type("C", (), {"type": t})() for t in ca.challenge_types]
    chosen = pick(offered, ("tls-alpn-01", "dns-01", "http-01"))
    assert chosen is not None and chosen.type == "dns-01"
    assert pick(offered, ("tls-alpn-01",)) is None
    assert preference(None, Settings(challenge=("tls-alpn-01", "http-01"))) == (
        "tls-alpn-01", "http-01")
    assert preference("dns-01", Settings()) == ("dns-01",)


async def _context(ca: FakeCA, settings: Settings, mode: str = "once") -> tuple[
        ChainContext, Any, Any]:
    rt = offline_runtime(ca, settings)
    ctx = ChainContext(rt, "new_order", mode=mode)
    account = await ctx.client.new_account(AccountKey.generate("ES256"))
    return ctx, rt.publisher, account


@pytest.mark.asyncio
async def test_each_authorization_takes_the_first_offered_of_the_preference() -> None:
    ca = FakeCA(challenge_types=("http-01",))
    ctx, pub, account = await _context(ca, Settings(challenge=("tls-alpn-01", "http-01")))
    order = await ctx.order(account, ["a.test", "b.test"])
    done = await ctx.authorize(account, order)
    assert [a.status for a in done] == ["valid", "valid"]
    assert [c[0] for c in pub.calls] == ["add_http01", "del_http01"] * 2
    assert [p.challenge for p in ctx._produced_authz] == ["http-01", "http-01"]


@pytest.mark.asyncio
async def test_none_of_the_listed_types_offered_skips_not_fails() -> None:
    ca = FakeCA(challenge_types=("http-01",))
    for mode in ("once", "load"):
        ctx, pub, account = await _context(ca, Settings(challenge=("tls-alpn-01",)), mode)
        order = await ctx.order(account, ["c.test"])
        expected: Any = NotOffered if mode == "load" else pytest.skip.Exception
        with pytest.raises(expected) as ended:
            await ctx.authorize(account, order)
        assert str(ended.value) == (
            "the CA offers no tls-alpn-01 challenge for dns:c.test (offered: http-01); "
            "--wec-challenge lists the types this run answers")
        assert pub.calls == []  # nothing published, nothing answered


@pytest.mark.asyncio
async def test_a_type_with_its_own_address_routes_its_names_while_published() -> None:
    ca = FakeCA()
    settings = Settings(ip=parse_ips("127.0.0.1,tls-alpn-01=127.0.0.2"))
    ctx, pub, account = await _context(ca, settings)
    order = await ctx.order(account, ["r.test", "192.0.2.7"])
    await ctx.authorize(account, order, "tls-alpn-01")
    assert pub.calls == [
        ("add_address", "r.test", "127.0.0.2"), ("add_tlsalpn01", "r.test"),
        ("del_tlsalpn01", "r.test"), ("clear_address", "r.test", "127.0.0.2"),
        ("add_tlsalpn01", "192.0.2.7"), ("del_tlsalpn01", "192.0.2.7")]
    assert pub.live == set()


# -- the challtestsrv's request history -----------------------------------------------------
def test_what_a_validation_leaves_in_the_history() -> None:
    assert history_entries("http-01", "a.b.test") == [("dns", "a.b.test"), ("http", "a.b.test")]
    assert history_entries("dns-01", "*.b.test") == [("dns", "b.test"),
                                                     ("dns", "_acme-challenge.b.test")]
    assert history_entries("tls-alpn-01", "127.0.0.1") == [("tlsalpn",
                                                            "1.0.0.127.in-addr.arpa")]
    assert parents("x.wec-1.xyz") == ["wec-1.xyz", "xyz"] and parents("10.0.0.1") == []


@pytest.mark.asyncio
async def test_the_janitor_clears_in_the_background_and_survives_failures() -> None:
    posted: list[tuple[str, str]] = []

    async def post(path: str, body: dict[str, Any]) -> None:
        assert path == "/clear-request-history"
        if body["host"] == "boom.test":
            raise OSError("refused")
        posted.append((body["type"], body["host"]))

    janitor = HistoryJanitor(post, parents_every=3600)
    janitor.forget("http-01", "a.x.test")
    janitor.forget("tls-alpn-01", "boom.test")
    await janitor.aclose()
    # boom.test's two entries failed, the rest went on; the parents once, at the close
    assert posted == [("dns", "a.x.test"), ("http", "a.x.test"), ("dns", "test"),
                      ("dns", "x.test")]
    assert (janitor.cleared, janitor.failed, janitor.dropped) == (4, 2, 0)


# -- tls-alpn-01 on its own address, through a challtestsrv (the real Pebble) ----------------
def _bindable(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.fixture
def split_challtestsrv(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """Our challenge server started by hand as a challtestsrv, as Boulder's chall-test-srv
    runs: http-01 and DNS on 127.0.0.1, tls-alpn-01 on 127.0.0.2 (its DNS answers 127.0.0.1
    for every name); a Pebble told those ports, reached only by URL."""
    if not _bindable("127.0.0.2"):
        pytest.skip("127.0.0.2 cannot be bound on this host")
    from pytest_wec._shipped import CHALLENGE_SRV
    from pytest_wec.stack._challsrv import _LISTEN
    from pytest_wec.stack._pebble import start_pebble
    from pytest_wec.stack._procs import ManagedProcess, free_port

    http, dns, mgmt, tls = free_port(), free_port(), free_port(), free_port("127.0.0.2")
    srv = ManagedProcess("challtestsrv", [
        sys.executable, "-m", CHALLENGE_SRV, "--http01", f"127.0.0.1:{http}",
        "--tlsalpn01", f"127.0.0.2:{tls}", "--dns01", f"127.0.0.1:{dns}",
        "--management", f"127.0.0.1:{mgmt}", "--namespace", "split",
        "--default-ipv4", "127.0.0.1"], tmp_path / "challtestsrv.log",
        env={**os.environ, "WEC_REDIS": redis_url})
    lines = srv.wait_line(lambda line: line.strip() == "ready", 15, "printing 'ready'")
    assert any(_LISTEN.match(line) for line in lines)
    pebble, info = start_pebble(tmp_path, http_port=http, tls_port=tls,
                                dns_server=f"127.0.0.1:{dns}")
    try:
        yield {"directory": info.directory, "ca_bundle": str(info.ca_bundle),
               "challtestsrv": f"http://127.0.0.1:{mgmt}"}
    finally:
        pebble.stop()
        srv.stop()


def _history(mgmt: str, kind: str, host: str) -> list[Any]:
    path = {"http": "/http-request-history", "dns": "/dns-request-history",
            "tlsalpn": "/tlsalpn01-request-history"}[kind]
    req = urllib.request.Request(mgmt + path, data=json.dumps({"host": host}).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return list(json.loads(resp.read()))


@pytest.mark.pebble
@needs_stack
def test_tls_alpn_01_on_its_own_address(pytester: pytest.Pytester,
                                        split_challtestsrv: dict[str, str]) -> None:
    env = split_challtestsrv
    base = [*against(env["directory"], env["ca_bundle"]), "--wec-challtestsrv",
            env["challtestsrv"]]
    routed = run_chains(pytester, *base, "--wec-ip", "127.0.0.1,tls-alpn-01=127.0.0.2",
                        "-k", "test_new_order_each_challenge or test_ip_identifier_challenges",
                        out="routed")
    assert routed.ret == 0, routed.stdout.str()[-3000:]
    routed.assert_outcomes(passed=5)
    stored = stored_authorizations(pytester.path / "routed")
    # the IP identifier validated by tls-alpn-01 is the tls-alpn-01 address (RFC 8738 §6)
    assert ("ip", "127.0.0.2", "tls-alpn-01") in stored
    assert ("ip", "127.0.0.1", "http-01") in stored
    names = [(value, kind) for id_type, value, kind in stored if id_type == "dns"]
    assert {kind for _, kind in names} == {"http-01", "dns-01", "tls-alpn-01"}
    # what the validations left in the challtestsrv's history was cleared
    for value, kind in names:
        assert _history(env["challtestsrv"], "dns", value) == []
        if kind == "tls-alpn-01":
            assert _history(env["challtestsrv"], "tlsalpn", value) == []
        if kind == "http-01":
            assert _history(env["challtestsrv"], "http", value) == []
    # without the route, the CA looks for tls-alpn-01 at the name's default address
    unrouted = run_chains(pytester, *base, "--wec-ip", "127.0.0.1", "-k",
                          "test_new_order_each_challenge and tls", out="unrouted")
    assert unrouted.ret == 1, unrouted.stdout.str()[-3000:]
    unrouted.stdout.fnmatch_lines(["*'status': 'invalid'*Failed to connect to 127.0.0.1:* "
                                   "for the tls-alpn-01 challenge*"])


@pytest.mark.pebble
@needs_stack
def test_ip_identifiers_need_an_address_with_a_challtestsrv(
        pytester: pytest.Pytester, split_challtestsrv: dict[str, str]) -> None:
    env = split_challtestsrv
    result = run_chains(pytester, *against(env["directory"], env["ca_bundle"]),
                        "--wec-challtestsrv", env["challtestsrv"], "-k", "ip_identifier")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*no address to order as an IP identifier validated by "
                                 "http-01: the challenge server is a challtestsrv "
                                 "(--wec-challtestsrv); --wec-ip gives its address*"])


# -- a CA that offers fewer challenge types --------------------------------------------------
@needs_redis
def test_the_preference_meets_what_the_ca_offers(pytester: pytest.Pytester,
                                                 tmp_path: Path) -> None:
    with quirky_ca(tmp_path / "ca", "--challenges", "http-01,dns-01") as (url, bundle):
        chosen = run_chains(pytester, *against(url, bundle), "--wec-challenge",
                            "tls-alpn-01,dns-01,http-01", "-k", "test_new_order and not each",
                            out="chosen")
        none = run_chains(pytester, *against(url, bundle), "--wec-challenge", "tls-alpn-01",
                          "-k", "test_new_order and not each", out="none")
        load = run_chains(pytester, *against(url, bundle), "--wec-challenge", "tls-alpn-01",
                          "--wec-load", "2", "--wec-duration", "2s",
                          "--wec-mix", "new_account=1,new_order=3,*=0", out="load")
    assert chosen.ret == 0, chosen.stdout.str()[-3000:]
    assert [kind for *_, kind in stored_authorizations(pytester.path / "chosen")] == ["dns-01"]
    assert none.ret == 0, none.stdout.str()[-3000:]
    none.assert_outcomes(skipped=1)
    none.stdout.fnmatch_lines(["*the CA offers no tls-alpn-01 challenge for dns:* (offered: "
                               "http-01, dns-01); --wec-challenge lists the types*"])
    assert load.ret == 0, load.stdout.str()[-3000:]
    summary = json.loads((pytester.path / "load" / "summary.json").read_text())
    assert summary["totals"]["chains_failed"] == 0, summary["errors"]
    skipped = [r for r in read_results(pytester.path / "load" / "results.jsonl")
               if r["chain"] == "new_order"]
    assert skipped and all(r["outcome"] == "skipped" for r in skipped)
    assert all(str(r["error"]).startswith("NotOffered: the CA offers no tls-alpn-01 challenge")
               for r in skipped)


# -- what RFC 8555 allows, and Boulder's account cache ---------------------------------------
@needs_redis
def test_a_boulder_like_ca_fails_only_for_its_bug(pytester: pytest.Pytester,
                                                  tmp_path: Path) -> None:
    with quirky_ca(tmp_path / "ca", "--boulder", "--ocsp", "--stale", "1") as (url, bundle):
        result = run_chains(pytester, *against(url, bundle), "-k",
                            "test_unknown_kid or test_malformed_kid or test_csr_with_account_key"
                            " or test_fetch_and_update_contact or test_revoke_by_account_key"
                            " or test_key_rollover or test_old_key_refused"
                            " or test_deactivate_account")
    text = result.stdout.str()
    # the four chains Boulder's WFE account cache breaks (the -k names match both chains of
    # test_deactivate_account.py and test_key_rollover.py), and nothing else
    result.assert_outcomes(passed=10, failed=4)
    for chain, what in (
            ("test_key_rollover", "a request signed by the new key (kid) was still refused"),
            ("test_old_key_refused", "a request signed by the account's old key (kid) was "
                                     "still accepted"),
            ("test_deactivate_account", "the deactivated account's newOrder was still accepted"),
            ("test_deactivate_pooled_account", "the deactivated account's POST-as-GET of its "
                                               "account was still accepted"),
    ):
        assert re.search(rf"FAILED .*{chain}", text), text[-4000:]
        assert re.search(re.escape(what) + r" \d+\.\d+ s after the CA answered", text), what
    assert re.search(r"first refused 1\.\d s after it, with (malformed|unauthorized)", text)
    for deviation in ("a CSR for the account's own key: the CA answered malformed",
                      "it ignores contact updates (RFC 8555 §7.3.2)",
                      "the CA refuses revocation reason 3 (affiliationChanged) signed by the "
                      "account's key: badRevocationReason"):
        assert deviation in text, deviation
