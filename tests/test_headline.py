"""The headline run's promises, end to end against the embedded stack (pytester runs):

- ``pytest --wec-load=N`` works as typed, with no path, with and without xdist: when no
  chain is collected the shipped catalogue runs;
- how chains are declared does not matter (an alias, a helper, a computed name): the
  controller knows them from collection, not from reading source text;
- every worker starts its share at one common instant (the barrier), the duration counts
  from it, and every rate is over the time under load;
- ``--wec-mix`` runs the chains it names only; a mix that needs what none of its chains
  produces is a usage error before anything starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _loadruns import NEEDS_STACK

from pytest_wec.controller.resultlog import read_results

pytestmark = [pytest.mark.timeout(180), *NEEDS_STACK]

XDIST = pytest.mark.parametrize("xdist", [("-p", "no:xdist"), ("-n", "2")],
                                ids=["no-xdist", "n2"])

ALIASED = """
import pytest_wec
from pytest_wec import ChainContext

declare = pytest_wec.chain          # an alias
NAME = "made_" + "here"             # a computed name


def my_chain(name, **kw):           # a helper of the project's own
    return declare(name, **kw)


@my_chain(NAME, produces={"account"})
async def test_made(wec: ChainContext) -> None:
    await wec.new_account()
"""


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, Path]:
    out = pytester.path / "out"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--wec-out", str(out),
                                           *args, timeout=150)
    text = "\n".join(result.outlines + result.errlines)
    assert "INTERNALERROR" not in text and "Traceback" not in text, text
    return result, out


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


@XDIST
def test_no_path_runs_the_shipped_catalogue(pytester: pytest.Pytester,
                                            xdist: tuple[str, str]) -> None:
    """An empty directory: no chain collected, so the catalogue runs, alike with and
    without xdist."""
    result, out = _run(pytester, *xdist, "--wec-load", "4", "--wec-duration", "3s",
                       "--wec-mix", "new_account=1,new_order=1")
    assert result.ret == 0, result.stdout.str()
    results = list(read_results(out / "results.jsonl"))
    assert {r["chain"] for r in results} == {"new_account", "new_order"}
    assert all(r["ok"] for r in results), [r["error"] for r in results if not r["ok"]]


@XDIST
def test_chains_declared_any_way_are_known_before_anything_starts(
        pytester: pytest.Pytester, xdist: tuple[str, str]) -> None:
    pytester.makepyfile(test_mine=ALIASED)
    result, out = _run(pytester, *xdist, "--wec-load", "1", "--wec-duration", "2s",
                       "--wec-mix", "made_here=1,nosuch=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --wec-mix: unknown chain 'nosuch'; chains: made_here"])
    assert not (out / "pebble.log").exists() and not (out / "summary.json").exists(), \
        "a usage error comes before anything starts"
    result, out = _run(pytester, *xdist, "--wec-load", "2", "--wec-duration", "2s")
    assert result.ret == 0, result.stdout.str()
    assert {r["chain"] for r in read_results(out / "results.jsonl")} == {"made_here"}


def test_a_plain_suite_under_xdist_starts_no_stack(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_x(): pass")
    pytester.makepyfile(test_chain=ALIASED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                           "test_plain.py", timeout=120)
    assert result.ret == 0
    assert not (pytester.path / "wec-results").exists(), "nothing asked for the stack"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=120)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*2 passed*"])
    assert (pytester.path / "wec-results").exists(), "the chain asked for it"


def test_workers_start_together_and_rates_are_over_the_load(pytester: pytest.Pytester) -> None:
    result, out = _run(pytester, "-n", "2", "--wec-load", "4", "--wec-duration", "4s",
                       "--wec-mix", "new_account=1,new_order=1")
    assert result.ret == 0, result.stdout.str()
    s = _summary(out)
    run = s["run"]
    assert run["duration_s"] == pytest.approx(4.0, abs=0.01)
    assert run["started"] == run["load_started"]
    assert run["load_ended"] - run["load_started"] == pytest.approx(4.0, abs=0.01)
    assert run["startup_s"] > 0 and run["tail_s"] >= 0
    # where start-up went: the stack, then both workers at the barrier, then the lead
    parts = run["startup"]
    assert set(parts) == {"stack_ready_s", "first_worker_ready_s", "last_worker_ready_s",
                          "start_in_s"}, parts
    assert 0 < parts["stack_ready_s"] <= parts["last_worker_ready_s"], parts
    assert 0 < parts["first_worker_ready_s"] <= parts["last_worker_ready_s"], parts
    assert parts["last_worker_ready_s"] + parts["start_in_s"] == \
        pytest.approx(run["startup_s"], abs=0.5), (parts, run["startup_s"])
    results = list(read_results(out / "results.jsonl"))
    first = {}
    for r in results:
        first[r["worker"]] = min(first.get(r["worker"], r["started"]), r["started"])
    assert sorted(first) == ["gw0", "gw1"]
    assert max(first.values()) - min(first.values()) < 1.0, first
    assert min(first.values()) >= run["load_started"] - 0.01
    assert max(first.values()) - run["load_started"] < 1.0
    counted = [r for r in results if r["outcome"] in ("ok", "failed")]
    under_load = [r for r in counted if r["started"] + r["took"] <= run["load_ended"]]
    assert s["totals"]["chains"] == len(counted)
    assert s["totals"]["chains_per_s"] == pytest.approx(len(under_load) / 4.0, abs=0.01)
    per_chain = {name: e["per_s"] for name, e in s["chains"].items()}
    assert per_chain["new_order"] == pytest.approx(
        sum(r["chain"] == "new_order" for r in under_load) / 4.0, abs=0.01)


def test_a_mix_runs_the_chains_it_names_and_star_weighs_the_rest(
        pytester: pytest.Pytester) -> None:
    result, out = _run(pytester, "-p", "no:xdist", "--wec-load", "4", "--wec-duration", "3s",
                       "--wec-mix", "new_account=1,new_order=3")
    assert result.ret == 0, result.stdout.str()
    assert {r["chain"] for r in read_results(out / "results.jsonl")} == {
        "new_account", "new_order"}
    result, out = _run(pytester, "-p", "no:xdist", "--wec-load", "4", "--wec-duration", "3s",
                       "--wec-mix", "new_account=4,*=1")
    assert result.ret == 0, result.stdout.str()
    assert len({r["chain"] for r in read_results(out / "results.jsonl")}) > 4


@XDIST
def test_a_mix_needing_what_none_of_its_chains_produces_is_a_usage_error(
        pytester: pytest.Pytester, xdist: tuple[str, str]) -> None:
    result, out = _run(pytester, *xdist, "--wec-load", "2", "--wec-duration", "2s",
                       "--wec-mix", "reuse_authorization=1,new_account=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: --wec-mix: chain 'reuse_authorization' needs authorization, which no "
        "chain of the mix produces (chains that produce it: all_but_finalize, new_order)"])
    assert not (out / "summary.json").exists()


def test_pebble_count_follows_the_load() -> None:
    from pytest_wec.settings import Settings
    from pytest_wec.stack import pebble_count

    assert pebble_count(Settings(load=200, duration=10), 16) == 4
    assert pebble_count(Settings(load=200, duration=10), 2) == 2, "at most one per worker"
    assert pebble_count(Settings(load=8, duration=10), 16) == 1
    assert pebble_count(Settings(rate=90.0, duration=10), 8) == 4
    assert pebble_count(Settings(load=200, pebbles=1, duration=10), 16) == 1
    assert pebble_count(Settings(), 16) == 1, "an integration run: one"
    assert pebble_count(Settings(load=200, directory="https://ca.test/dir"), 16) == 1


def test_workers_map_to_their_groups_pebble() -> None:
    from pytest_wec.controller.ledger import shard_of

    assert [shard_of(f"gw{i}", 4) for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert shard_of("main", 4) == 0 and shard_of("gw5", 1) == 0


def test_a_load_run_spreads_over_several_pebbles(pytester: pytest.Pytester) -> None:
    result, out = _run(pytester, "-n", "2", "--wec-pebbles", "2", "--wec-load", "4",
                       "--wec-duration", "3s", "--wec-mix", "new_account=1,new_certificate=2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*against 2 embedded Pebbles, one per group of workers*"])
    s = _summary(out)
    pebbles = s["run"]["pebbles"]
    assert len(pebbles) == 2 and len(set(pebbles)) == 2
    assert (out / "pebble.log").exists() and (out / "pebble-1.log").exists()
    results = list(read_results(out / "results.jsonl"))
    assert {r["worker"] for r in results} == {"gw0", "gw1"}
    assert all(r["ok"] for r in results), [r["error"] for r in results if not r["ok"]]
    assert s["totals"]["certificates_issued"] > 0
    for log in ("pebble.log", "pebble-1.log"):  # each worker's group went to its own Pebble
        assert "Issued certificate" in (out / log).read_text(errors="replace"), log
