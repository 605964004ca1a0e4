"""--wec-profile (draft-aaron-acme-profiles): the profile in every new order, checked at
start against the directory's meta.profiles.

Debian's Pebble 2.4 advertises no profiles (its directory's meta has no ``profiles``): a run
against it shows the start check refusing; the quirky stub CA, which advertises some and
answers invalidProfile for others, shows the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _anyca import against, needs_redis, needs_stack, offline_runtime, quirky_ca, run_chains

from pytest_wec.acme import AccountKey, FakeCA
from pytest_wec.settings import Settings, resolve
from pytest_wec.settings.anyca import parse_profile
from pytest_wec.worker.context import ChainContext

pytestmark = [pytest.mark.timeout(240)]

PROFILES = "legacy,modern,shortlived"


@pytest.mark.parametrize("text", ["", "two words", "a,b", "-leading", "x" * 65])
def test_a_profile_is_one_name(text: str) -> None:
    with pytest.raises(ValueError, match="expected a profile name"):
        parse_profile(text)


def test_the_profile_option_resolves_and_crosses_to_workers() -> None:
    s = resolve({"profile": "shortlived"}, lambda name: None, {})
    assert s.profile == "shortlived" and s.sources["profile"] == "--wec-profile"
    assert Settings.from_plain(s.to_plain()).profile == "shortlived"


@pytest.mark.asyncio
async def test_every_order_asks_for_the_run_profile_unless_told_otherwise() -> None:
    ca = FakeCA(profiles={"modern": "m", "shortlived": "s"})
    ctx = ChainContext(offline_runtime(ca, Settings(profile="modern")), "new_order")
    account = await ctx.client.new_account(AccountKey.generate("ES256"))
    by_default = await ctx.order(account, ["a.test"])
    chosen = await ctx.order(account, ["b.test"], profile="shortlived")
    none = await ctx.order(account, ["c.test"], profile=None)
    assert by_default.body["profile"] == "modern"
    assert chosen.body["profile"] == "shortlived"
    assert "profile" not in none.body
    # the FakeCA refuses a profile it does not list, as the draft says a CA MUST
    from pytest_wec.acme import AcmeProblem

    with pytest.raises(AcmeProblem) as refused:
        await ctx.order(account, ["d.test"], profile="legacy")
    assert refused.value.code == "invalidProfile"


@needs_redis
def test_an_unknown_profile_stops_the_run_before_any_chain(pytester: pytest.Pytester,
                                                           tmp_path: Path) -> None:
    with quirky_ca(tmp_path / "ca", "--profiles", PROFILES) as (url, bundle):
        once = run_chains(pytester, *against(url, bundle), "--wec-profile", "nosuch",
                          "-k", "test_new_account", out="once")
        load = run_chains(pytester, *against(url, bundle), "--wec-profile", "nosuch",
                          "--wec-load", "1", "--wec-duration", "2s", out="load")
    for result in (once, load):
        text = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, text[-2000:]
        assert (f"--wec-profile: the CA at {url} offers no profile 'nosuch'; it offers: "
                "legacy (the legacy profile), modern (the modern profile), shortlived") in text
        assert "passed" not in text.splitlines()[-1]
    assert "ERROR: --wec-profile:" in load.stderr.str()
    assert not (pytester.path / "load" / "summary.json").exists()  # no load started


@needs_redis
def test_a_known_profile_passes_the_start_check_and_orders_under_it(pytester: pytest.Pytester,
                                                      tmp_path: Path) -> None:
    with quirky_ca(tmp_path / "ca", "--profiles", PROFILES) as (url, bundle):
        result = run_chains(pytester, *against(url, bundle), "--wec-profile", "modern",
                            "-k", "(test_new_certificate and not key_types and not alternate "
                                  "and not profiles) or test_certificate_profiles or "
                                  "test_unknown_profile")
    text = result.stdout.str()
    assert result.ret == 0, text[-3000:]
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["wec: profile modern in every new order*"])


@pytest.mark.pebble
@needs_stack
def test_debians_pebble_advertises_no_profiles(pytester: pytest.Pytester) -> None:
    """Pebble 2.4 (Debian's) has no meta.profiles: asking for one is a usage error, and the
    profile variants skip."""
    refused = run_chains(pytester, "--wec-profile", "modern", "-k", "test_new_account",
                         out="refused")
    text = refused.stdout.str() + refused.stderr.str()
    assert refused.ret == pytest.ExitCode.USAGE_ERROR, text[-2000:]
    assert "--wec-profile: the CA at https://127.0.0.1:" in text
    assert "advertises no profiles (its directory's meta has no 'profiles'" in text
    skipped = run_chains(pytester, "-k", "test_certificate_profiles or test_unknown_profile",
                         out="skipped")
    assert skipped.ret == 0, skipped.stdout.str()[-2000:]
    skipped.assert_outcomes(skipped=2)
    skipped.stdout.fnmatch_lines(["*the CA advertises no profiles*"])
