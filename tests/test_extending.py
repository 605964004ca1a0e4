"""A user's own chain and plugin beside pytest-wec (examples/extending): the fixtures
``acme_client``, ``state_db`` and ``challenge_server`` run once and under load, the hooks of
``pytest_wec.newhooks`` (an output sink, a summary hook, a chain-result hook), and a hook
that raises: counted and said, the run and its results go on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _loadruns import NEEDS_STACK

from pytest_wec.worker.arguments import ARGUMENTS, bind, unknown_arguments

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "extending"

pytestmark = [pytest.mark.timeout(180)]


def test_arguments_a_chain_may_take() -> None:
    async def alone(wec: object) -> None: ...

    async def more(wec: object, acme_client: object, *, state_db: object,
                   challenge_server: object, spare: int = 1) -> None: ...

    async def other(wec: object, tmp_path: object, monkeypatch: object) -> None: ...

    assert bind(alone) is alone  # the hot path stays a plain call
    assert unknown_arguments(more) == []
    assert unknown_arguments(other) == ["tmp_path", "monkeypatch"]
    assert set(ARGUMENTS) == {"wec", "acme_client", "state_db", "challenge_server"}


def test_a_chain_taking_other_fixtures_is_a_usage_error_under_load(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_odd="""
        from pytest_wec import chain

        @chain("odd")
        async def test_odd(wec, tmp_path):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--wec-load", "1",
                                           "--wec-duration", "1s", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: wec: chain 'odd' takes 'tmp_path': under load a "
                                 "chain is given only wec, acme_client, state_db, "
                                 "challenge_server"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


RAISING = """
calls = 0

def pytest_wec_chain_result(result, config):
    global calls
    calls += 1
    if calls % 2:
        raise RuntimeError("every other chain")
"""


@pytest.mark.pebble
@pytest.mark.redis
@NEEDS_STACK[2]
def test_the_example_runs_once_and_under_load(pytester: pytest.Pytester) -> None:
    for f in EXAMPLE.glob("*.py"):
        shutil.copy(f, pytester.path / f.name)
    once = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--wec-out",
                                         str(pytester.path / "once"), timeout=90)
    assert once.ret == 0, once.stdout.str()
    once.assert_outcomes(passed=1)

    pytester.makepyfile(raising_plugin=RAISING)
    out = pytester.path / "load"
    # the example's chain answers in a few ms: two in flight keep the lone worker's CPU
    # busy, a saturated generator the gate accepts here (the test is of the hooks)
    run = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "raising_plugin", "--wec-out", str(out),
        "--wec-load", "2", "--wec-duration", "3s", "--wec-allow-saturated", timeout=120)
    text = run.stdout.str() + run.stderr.str()
    assert run.ret == 0, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    summary = json.loads((out / "summary.json").read_text())
    n = summary["totals"]["chains"]
    assert n > 0 and summary["totals"]["chains_failed"] == 0, summary["errors"]
    assert set(summary["chains"]) == {"account_lookup"}
    lines = [json.loads(x) for x in (out / "chains.jsonl").read_text().splitlines()]
    logged = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(logged) >= n  # every result to the sink, cancelled ones too
    assert {x["chain"] for x in lines} == {"account_lookup"}
    assert summary["example"] == {"chains_seen_by_sink": len(lines)}
    # the raising hook: said once, counted, and neither the sink nor the results lost a chain
    raised = summary["plugin_errors"]["pytest_wec_chain_result"]
    assert raised == (len(lines) + 1) // 2
    assert "wec: plugin pytest_wec_chain_result raised RuntimeError: every other chain" in text
    assert text.count("plugin pytest_wec_chain_result raised RuntimeError") == 1
    assert f"wec: plugin pytest_wec_chain_result raised {raised} time(s); see the log" in \
        summary["warnings"]
    assert '"example"' not in (out / "report.html").read_text() or True
