"""``wec compile``: the bytecode caches that processes with PYTHONDONTWRITEBYTECODE=1 read.

The command runs for real, on this environment's installation (what ``scripts/setup``
does): the assertions read the cache files pytest looks for, and a pytest process started
afterwards with bytecode writing off must find every module it rewrites already cached.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.assertion.rewrite import PYC_TAIL

from pytest_wec._shipped import CHAINS
from pytest_wec.bytecode import rewrite_hint, rewrite_pyc

pytestmark = pytest.mark.timeout(300)

WEC = Path(sys.executable).with_name("wec")
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _wec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WEC), *args], env=ENV, capture_output=True, text=True,
                          timeout=240)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


CHAIN_MODULES = sorted(_package_dir(CHAINS).glob("test_*.py"))


def _lock() -> int:
    """These tests write, and one moves aside, caches of the one installation; xdist
    workers running them at once take turns."""
    fd = os.open(Path(tempfile.gettempdir()) / "pytest-wec-test-bytecode.lock",
                 os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.fixture(scope="module")
def compiled() -> str:
    fd = _lock()
    try:
        done = _wec("compile")
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(autouse=True)
def _one_at_a_time() -> Iterator[None]:
    fd = _lock()
    yield
    os.close(fd)


def test_compile_writes_the_caches_pytest_reads(compiled: str) -> None:
    assert "rewrite cache (its plugins, pytest_wec, the chains)" in compiled
    assert f"pytest {pytest.__version__}'s" in compiled
    assert CHAIN_MODULES
    for src in CHAIN_MODULES:
        pyc = rewrite_pyc(src)
        assert pyc.name == src.stem + PYC_TAIL  # where pytest itself looks
        assert pyc.is_file(), pyc
    # a plugin distribution's modules, and pytest_wec's, ordinary and rewritten
    import xdist.remote

    assert rewrite_pyc(Path(xdist.remote.__file__)).is_file()
    own = _package_dir("pytest_wec") / "bytecode.py"
    assert Path(importlib.util.cache_from_source(str(own))).is_file()
    assert rewrite_pyc(own).is_file()


PROBE = """
import sys, pytest
import _pytest.assertion.rewrite as rewrite
done, real = [], rewrite._rewrite_test
def counted(fn, config):
    done.append(str(fn))
    return real(fn, config)
rewrite._rewrite_test = counted
code = pytest.main(["--co", "-q", "--pyargs", sys.argv[1], "-p", "no:cacheprovider"])
print("rewritten:", len(done), *done[:5])
sys.exit(code)
"""


def test_a_pytest_process_afterwards_rewrites_nothing(compiled: str, tmp_path: Path) -> None:
    """The point of it: with bytecode writing off, collecting the chains (in a directory
    of no project) reads every rewritten module from the cache."""
    done = subprocess.run([sys.executable, "-c", PROBE, CHAINS], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rewritten: 0" in done.stdout.splitlines()[-1], done.stdout[-2000:]


def test_check_names_a_missing_cache_and_the_hint_tells(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> None:
    # compiled again here, right before --check: a source edited since would be stale
    assert _wec("compile").returncode == 0
    done = _wec("compile", "--check")
    assert (done.returncode, done.stdout.strip()) == (
        0, f"wec compile: caches present (pytest {pytest.__version__})")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert rewrite_hint(4) is None
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pyc = rewrite_pyc(CHAIN_MODULES[0])
    aside = tmp_path / pyc.name
    shutil.move(pyc, aside)
    try:
        done = _wec("compile", "--check")
        hint, single = rewrite_hint(4), rewrite_hint(1)
        config = pytester.parseconfigure("--wec-load", "2", "-n", "3")
        header = [line for lines in config.hook.pytest_report_header(
            config=config, start_path=pytester.path)
            for line in ([lines] if isinstance(lines, str) else lines)]
    finally:
        shutil.move(aside, pyc)
    assert done.returncode == 1
    assert done.stdout.startswith("wec compile: missing for pytest ")
    assert str(pyc) in done.stdout and len(done.stdout.splitlines()) == 1
    assert hint == (
        "wec: PYTHONDONTWRITEBYTECODE is set and pytest's rewrite cache is empty: each of the "
        '4 workers re-compiles its plugins (about 0.7 s of CPU each); run "wec compile" once')
    assert single is None
    assert any(line.startswith("wec: PYTHONDONTWRITEBYTECODE is set") and "the 3 workers" in
               line for line in header), header
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # the workers write it
    assert rewrite_hint(4) is None


def test_an_unknown_option_is_a_usage_error() -> None:
    done = _wec("compile", "--bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: wec compile")
    assert "unrecognized arguments: --bogus" in done.stderr
    assert done.stdout == ""
