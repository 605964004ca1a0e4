"""The context-aware choice: eligibility, weights, hard limits, and the option parsers."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_wec.worker.picker import (
    RESOURCES,
    ChainSpec,
    Counts,
    eligible,
    parse_limits,
    parse_mix,
    pick,
)


def spec(name: str, needs: str = "", produces: str = "") -> ChainSpec:
    return ChainSpec(name, frozenset(needs.split()), frozenset(produces.split()))


CHAINS = [
    spec("new_account", produces="account"),
    spec("new_order", "account", "authorization"),
    spec("new_certificate", "account", "authorization certificate"),
    spec("renew_certificate", "certificate", "certificate"),
    spec("revoke_certificate", "certificate"),
    spec("key_rollover", "account"),
    spec("deactivate_account", "account"),
    spec("reuse_authorization", "authorization", "certificate"),
    spec("deactivate_authorization", "authorization"),
]
ACCOUNT_CHAINS = {"new_account", "new_order", "new_certificate", "key_rollover",
                  "deactivate_account"}


@pytest.mark.parametrize(
    ("counts", "limits", "expected"),
    [
        pytest.param(Counts(), None, {"new_account"}, id="nothing-only-new-account"),
        pytest.param(Counts(accounts=3), None, ACCOUNT_CHAINS, id="accounts-orders"),
        pytest.param(
            Counts(accounts=1, certificates=2), None,
            ACCOUNT_CHAINS | {"renew_certificate", "revoke_certificate"},
            id="certificates-renew-revoke",
        ),
        pytest.param(
            Counts(authorizations=1), None,
            {"new_account", "reuse_authorization", "deactivate_authorization"},
            id="authorizations-without-accounts",
        ),
        pytest.param(
            Counts(accounts=5), {"accounts": 5},
            ACCOUNT_CHAINS - {"new_account"}, id="account-limit-reached",
        ),
        pytest.param(
            Counts(accounts=4), {"accounts": 5}, ACCOUNT_CHAINS, id="account-limit-not-reached",
        ),
        pytest.param(
            Counts(accounts=1, certificates=9, authorizations=1), {"certificates": 9},
            {"new_account", "new_order", "key_rollover", "deactivate_account",
             "revoke_certificate", "deactivate_authorization"},
            id="certificate-limit-stops-every-producer",
        ),
        pytest.param(
            Counts(accounts=1), {"authorizations": 0, "accounts": 0},
            {"key_rollover", "deactivate_account"}, id="limit-zero-nothing-produced",
        ),
        pytest.param(
            Counts(accounts=1, revoked=50, orders=7), {"orders": 1},
            ACCOUNT_CHAINS, id="limit-on-what-nobody-produces",
        ),
    ],
)
def test_eligible(counts: Counts, limits: dict[str, int] | None, expected: set[str]) -> None:
    got = eligible(CHAINS, counts, limits)
    assert {s.name for s in got} == expected
    assert got == [s for s in CHAINS if s.name in expected]  # order kept


def test_pick_none_when_nothing_can_start() -> None:
    needy = [spec("revoke_certificate", "certificate")]
    assert pick(needy, Counts(accounts=3), rng=random.Random(1)) is None
    assert pick(CHAINS, Counts(), {"new_account": 0}, rng=random.Random(1)) is None
    assert pick([], Counts(), rng=random.Random(1)) is None
    only = pick(CHAINS, Counts(), rng=random.Random(1))
    assert only is not None and only.name == "new_account"


def test_weights_shape_the_mix() -> None:
    rng = random.Random(20240101)
    weights = {"new_order": 5, "revoke_certificate": 1, "key_rollover": 0}
    counts = Counts(accounts=10, certificates=10)
    n = 24_000
    seen = Counter(s.name for s in (pick(CHAINS, counts, weights, None, rng) for _ in range(n))
                   if s is not None)
    # eligible: 7 chains; key_rollover weighs 0, new_order 5, the other 5 weigh 1 -> total 10
    assert "key_rollover" not in seen
    assert set(seen) == {"new_account", "new_order", "new_certificate", "renew_certificate",
                         "revoke_certificate", "deactivate_account"}
    assert seen["new_order"] / n == pytest.approx(0.5, abs=0.02)
    for name in ("new_account", "revoke_certificate", "deactivate_account"):
        assert seen[name] / n == pytest.approx(0.1, abs=0.015)


def test_pick_is_reproducible_with_a_seed() -> None:
    counts = Counts(accounts=1, authorizations=1, certificates=1)

    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [s.name for s in (pick(CHAINS, counts, rng=rng) for _ in range(50)) if s]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_pick_respects_limits() -> None:
    rng = random.Random(3)
    counts = Counts(accounts=10)
    for _ in range(200):
        chosen = pick(CHAINS, counts, {"new_order": 3}, {"accounts": 10}, rng)
        assert chosen is not None and chosen.name != "new_account"


def test_pick_is_fast() -> None:
    rng = random.Random(0)
    counts = Counts(accounts=10, authorizations=10, certificates=10)
    weights = parse_mix("new_order=5,revoke_certificate=1")
    limits = parse_limits("accounts=1000,certificates=20000")
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        pick(CHAINS, counts, weights, limits, rng)
    per_call = (time.perf_counter() - started) / n
    assert per_call < 50e-6  # a few µs on an idle machine; generous for shared CI


@given(
    counts=st.builds(Counts, *(st.integers(0, 3) for _ in range(5))),
    limits=st.dictionaries(st.sampled_from(["accounts", "authorizations", "certificates"]),
                           st.integers(0, 3)),
    weights=st.dictionaries(st.sampled_from([s.name for s in CHAINS]),
                            st.sampled_from([0, 0.5, 1, 4])),
    seed=st.integers(0, 2**32),
)
def test_pick_chooses_only_eligible_chains(
    counts: Counts, limits: dict[str, int], weights: dict[str, float], seed: int
) -> None:
    ok = eligible(CHAINS, counts, limits)
    for s in ok:
        assert all(counts.of(r) > 0 for r in s.needs)
        assert not any(r + "s" in limits and counts.of(r) >= limits[r + "s"] for r in s.produces)
    chosen = pick(CHAINS, counts, weights, limits, random.Random(seed))
    candidates = [s for s in ok if weights.get(s.name, 1) > 0]
    if candidates:
        assert chosen in candidates
    else:
        assert chosen is None


# -- specs and parsers ---------------------------------------------------------------------


def test_chain_spec() -> None:
    assert {"account", "authorization", "certificate"} <= RESOURCES
    s = ChainSpec("x", frozenset({"account"}), frozenset({"certificate"}))
    assert s == ChainSpec("x", frozenset({"account"}), frozenset({"certificate"}))
    assert hash(s) == hash(ChainSpec("x", frozenset({"account"}), frozenset({"certificate"})))
    with pytest.raises(ValueError, match="unknown resources cert; allowed: account"):
        ChainSpec("bad", frozenset({"cert"}))


def test_unknown_limit_key() -> None:
    with pytest.raises(ValueError, match="unknown resource account in limits"):
        eligible(CHAINS, Counts(), {"account": 1})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("new_order=5,revoke_certificate=1", {"new_order": 5.0, "revoke_certificate": 1.0}),
        (" new_order = 2.5 , ", {"new_order": 2.5}),
        ("key_rollover=0", {"key_rollover": 0.0}),
        ("", {}),
    ],
)
def test_parse_mix(text: str, expected: dict[str, float]) -> None:
    assert parse_mix(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("new_order", "expected chain weights such as new_order=5"),
        ("new_order=lots", "got 'new_order=lots'"),
        ("new_order=-1", "a number >= 0"),
        ("new_order=inf", "got 'new_order=inf'"),
        ("new_order=nan", "got 'new_order=nan'"),
        ("=3", "a chain name"),
        ("new order=3", "got 'new order=3'"),
        ("new_order=1,new_order=2", "'new_order' appears twice"),
    ],
)
def test_parse_mix_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_mix(text)
    assert message in str(info.value)


def test_parse_mix_known_chains() -> None:
    assert parse_mix("new_order=2", known=["new_order"]) == {"new_order": 2.0}
    with pytest.raises(ValueError, match="unknown chain 'nwe_order' in the mix; chains: a, b"):
        parse_mix("nwe_order=2", known=["b", "a"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accounts=1000,certificates=20000", {"accounts": 1000, "certificates": 20000}),
        ("account=5, authorization=0", {"accounts": 5, "authorizations": 0}),
        ("Orders=7", {"orders": 7}),
        ("", {}),
    ],
)
def test_parse_limits(text: str, expected: dict[str, int]) -> None:
    assert parse_limits(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accounts", "expected hard limits such as accounts=1000,certificates=20000"),
        ("users=3", "unknown resource 'users'"),
        ("accounts=many", "must be a whole number >= 0, got 'many'"),
        ("accounts=-5", "must be a whole number >= 0, got '-5'"),
        ("accounts=2.5", "got '2.5'"),
        ("accounts=²", "got '²'"),
        ("accounts=1,account=2", "'accounts' appears twice"),
    ],
)
def test_parse_limits_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_limits(text)
    assert message in str(info.value)
    if "twice" not in message:
        assert "resources: accounts, authorizations, certificates, orders" in str(info.value)
