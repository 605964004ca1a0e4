"""Fixtures shared by the project's own tests.

The real parts (redis-server, Pebble, the challenge server) are started here exactly as the
product starts them, through ``pytest_wec.stack``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Imported here, before any test: pytester's in-process runs take the modules they imported
# out of sys.modules afterwards, and SQLAlchemy imported a second time beside objects of its
# first copy fails ('InternalTraversal' object is not callable).
import pytest_wec.state._sql  # noqa: F401
from pytest_wec.stack._redis import start_redis

NO_HYPOTHESIS = "-p no:hypothesispytest"


@pytest.fixture(scope="session", autouse=True)
def _subprocess_runs_without_hypothesis() -> Iterator[None]:
    """The pytest runs these tests start (a user's load runs, their xdist workers) load
    without Hypothesis's pytest plugin, which the test extra installs and which costs each
    such process over a second of CPU at start-up; a user's installation has none. Set
    once this process's own plugins are loaded (and its xdist workers started), so only
    the runs started from here on leave it out."""
    before = os.environ.get("PYTEST_ADDOPTS")
    os.environ["PYTEST_ADDOPTS"] = f"{before or ''} {NO_HYPOTHESIS}".strip()
    yield
    if before is None:
        os.environ.pop("PYTEST_ADDOPTS", None)
    else:
        os.environ["PYTEST_ADDOPTS"] = before


@pytest.fixture(scope="session", autouse=True)
def _subprocess_runs_accept_a_saturated_generator() -> Iterator[None]:
    """The load runs these tests make share two cores with each other and with the CA, and
    many of them run chains so cheap (a new account against a CA that answers in a
    millisecond) that their one worker is busy all the time: their generator is saturated,
    and the product rightly says so. What they test is something else, so their gate
    accepts it (``WEC_ALLOW_SATURATED``; the verdict is still printed and in summary.json).
    The tests of the verdict itself (test_gating_health.py, test_gating_e2e.py) take the
    variable away."""
    before = os.environ.get("WEC_ALLOW_SATURATED")
    os.environ["WEC_ALLOW_SATURATED"] = "yes"
    yield
    if before is None:
        os.environ.pop("WEC_ALLOW_SATURATED", None)
    else:
        os.environ["WEC_ALLOW_SATURATED"] = before


@pytest.fixture
def judge_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of this test fail on a saturated generator, as a user's do."""
    monkeypatch.delenv("WEC_ALLOW_SATURATED", raising=False)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's own, its runs without Hypothesis's plugin too (pytester clears
    ``PYTEST_ADDOPTS`` when it starts)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", NO_HYPOTHESIS)
    return pytester


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this test session, started as the stack starts it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    run_dir: Path = tmp_path_factory.mktemp("redis")
    proc, url = start_redis(run_dir)
    try:
        yield url
    finally:
        proc.stop()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (no browser download, ever).

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, which would break ``asyncio.run`` in every later test module."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium; scripts/setup "
                    "installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
