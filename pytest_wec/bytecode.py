"""``wec compile``: the bytecode caches, written once for processes that may not write them.

Under ``PYTHONDONTWRITEBYTECODE=1`` no process writes a cache, but each reads one that
exists; without them every pytest process (controller and xdist worker) compiles
pytest_wec again and rewrites the asserts of every module pytest marks (each ``pytest11``
distribution's, the test modules). This writes the ordinary pycs of the shipped packages
and pytest's rewritten ones (``NAME.<cache tag>-pytest-<version>.pyc``, per pytest
version): it collects the chains in this process with writing on, and imports every
module of the marked packages under pytest's import hook.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

from pytest_wec._shipped import CHAINS, CHALLENGE_SRV

__all__ = ["compile_main", "missing", "rewrite_hint", "rewrite_pyc"]

PACKAGES = ("pytest_wec", CHAINS, CHALLENGE_SRV)
CAUGHT = (Exception, SystemExit)  # what importing an arbitrary module may raise


def _pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    return Path(locations[0]) if locations else None


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def rewrite_pyc(src: Path) -> Path:
    """Where the installed pytest caches *src* with its asserts rewritten
    (``_pytest.assertion.rewrite``: ``get_cache_dir`` and ``PYC_TAIL``)."""
    import pytest

    version, src = pytest.__version__, Path(os.path.abspath(src))
    cache_dir = (Path(sys.pycache_prefix, *src.parts[1:-1]) if sys.pycache_prefix
                 else src.parent / "__pycache__")
    ext = ".pyc" if __debug__ else ".pyo"
    return cache_dir / f"{src.stem}.{sys.implementation.cache_tag}-pytest-{version}{ext}"


def _fresh(src: Path, pyc: Path) -> bool:
    """Whether *pyc* is a cache of *src* as it is now (a timestamp or a hash pyc)."""
    try:
        with open(pyc, "rb") as f:
            head = f.read(16)
        st = src.stat()
        if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
            return False
        if int.from_bytes(head[4:8], "little") & 1:  # PEP 552 hash-based
            return head[8:16] == importlib.util.source_hash(src.read_bytes())
    except OSError:
        return False
    return head[8:16] == struct.pack("<LL", int(st.st_mtime) & 0xFFFFFFFF,
                                     st.st_size & 0xFFFFFFFF)


def rewrite_hint(workers: int) -> str | None:
    """A header line when *workers* xdist workers would each rewrite the plugins again:
    bytecode writing is off and the chains' first test module has no rewritten pyc."""
    root = _pkg_dir(CHAINS) if workers > 1 and sys.dont_write_bytecode else None
    try:
        names = os.listdir(root) if root else []
    except OSError:
        return None
    tests = sorted(n for n in names if n.startswith("test_") and n.endswith(".py"))
    if root is None or not tests or _fresh(root / tests[0], rewrite_pyc(root / tests[0])):
        return None
    return ("wec: PYTHONDONTWRITEBYTECODE is set and pytest's rewrite cache is empty: each of "
            f"the {workers} workers re-compiles its plugins (about 0.7 s of CPU each); "
            'run "wec compile" once')


def missing() -> list[str]:
    """The caches ``wec compile --check`` wants and does not find (or finds stale): the
    chains' test modules rewritten, pytest_wec's modules both ordinary and rewritten."""
    chains, wec = _pkg_dir(CHAINS), _pkg_dir("pytest_wec")
    if chains is None or wec is None:
        return [f"{CHAINS if chains is None else 'pytest_wec'} (not installed)"]
    wanted = [(src, rewrite_pyc(src)) for src in sorted(chains.glob("test_*.py"))]
    for src in _sources(wec):
        wanted += [(src, Path(importlib.util.cache_from_source(str(src)))),
                   (src, rewrite_pyc(src))]
    return [str(pyc) for src, pyc in wanted if not _fresh(src, pyc)]


def _write_pycs(problems: list[str]) -> tuple[int, int]:
    """The ordinary pycs of the shipped packages: (written, already current)."""
    import py_compile

    written, current, unwritable = 0, 0, set()
    for name in PACKAGES:
        root = _pkg_dir(name)
        problems += [] if root else [f"{name}: not installed"]
        for src in _sources(root) if root else []:
            pyc = Path(importlib.util.cache_from_source(str(src)))
            if pyc.parent in unwritable:
                continue
            if _fresh(src, pyc):
                current += 1
                continue
            try:
                py_compile.compile(str(src), doraise=True)
                written += 1
            except py_compile.PyCompileError as exc:
                problems.append(f"{src}: {exc.exc_type_name}")
            except OSError as exc:
                unwritable.add(pyc.parent)
                problems.append(f"not writable: {pyc.parent} ({exc.strerror})")
    return written, current


class _RewriteFiller:
    """The in-process collection's plugin: imports under pytest's import hook every module
    of the marked packages of ``pytest11`` distributions, and of pytest_wec."""

    def __init__(self) -> None:
        self.cached: set[Path] = set()  # source files whose rewritten pyc is now current
        self.uncached: set[Path] = set()
        self.skipped: list[str] = []  # "module: why"

    def _import(self, name: str) -> None:
        try:
            importlib.import_module(name)
        except CAUGHT as exc:  # a missing optional dependency (its pyc was written first)
            self.skipped.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])

    def pytest_collection_finish(self, session: Any) -> None:
        import importlib.metadata as md
        import pkgutil

        from _pytest.assertion.rewrite import AssertionRewritingHook

        hook = session.config.pluginmanager.rewrite_hook
        if not isinstance(hook, AssertionRewritingHook):
            self.skipped.append("all: assertion rewriting is off (--assert=plain)")
            return
        plugins = {d.metadata["Name"] for d in md.distributions()
                   if any(ep.group == "pytest11" for ep in d.entry_points)}
        tops = {top for top, dists in md.packages_distributions().items()
                if plugins.intersection(dists)}
        hook.mark_rewrite("pytest_wec")  # editable: marked only with its checkout on sys.path
        marked: set[str] = getattr(hook, "_must_rewrite", set())  # pytest's own set of marked names
        walked = {n for n in marked if n.split(".")[0] in tops} | {"pytest_wec"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in sorted(walked):
                self._import(name)
                path = getattr(sys.modules.get(name), "__path__", None) or []
                for info in pkgutil.walk_packages(path, name + ".", onerror=lambda _n: None):
                    if not info.name.endswith(".__main__"):  # that would run a program
                        walked.add(info.name)
                        self._import(info.name)
            for name, mod in list(sys.modules.items()):
                spec, loaded = getattr(mod, "__spec__", None), getattr(mod, "__loader__", None)
                src = Path(getattr(spec, "origin", None) or "-")
                if spec is None or src.suffix != ".py" or (name not in walked
                                                           and loaded is not hook):
                    continue
                if loaded is not hook and not _fresh(src, rewrite_pyc(src)):
                    # imported before the hook saw it: a throwaway copy writes the cache
                    copy = importlib.util.spec_from_file_location(
                        name, src, loader=hook,
                        submodule_search_locations=spec.submodule_search_locations)
                    with contextlib.suppress(*CAUGHT):
                        hook.exec_module(importlib.util.module_from_spec(copy))  # type: ignore[arg-type]
                fresh = _fresh(src, rewrite_pyc(src))
                (self.cached if fresh else self.uncached).add(src)


def _fill_rewrite_cache(problems: list[str]) -> _RewriteFiller:
    import pytest

    filler, out = _RewriteFiller(), io.StringIO()
    args = ["--collect-only", "-q", "--pyargs", CHAINS, "-p", "no:cacheprovider",
            "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pytest.main(args, plugins=[filler])
    finally:
        sys.dont_write_bytecode = before
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        tail = " | ".join(out.getvalue().strip().splitlines()[-3:])
        problems.append(f"collecting {CHAINS} failed ({code!s}): {tail}")
    problems += [f"not writable: {d}"
                 for d in sorted({rewrite_pyc(p).parent for p in filler.uncached})]
    return filler


def compile_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wec compile", description=(
        "Write pytest-wec's bytecode caches and pytest's rewritten pycs of its plugins and "
        "the chains, which processes under PYTHONDONTWRITEBYTECODE=1 read but never write; "
        "run again after upgrading pytest or pytest-wec."))
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming the caches that are missing")
    ns = parser.parse_args(argv)
    import pytest

    version = pytest.__version__
    if ns.check:
        lost = missing()
        more = f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
        print(f"wec compile: missing for pytest {version}: {', '.join(lost[:5])}{more}"
              if lost else f"wec compile: caches present (pytest {version})")
        return 1 if lost else 0
    problems: list[str] = []
    written, current = _write_pycs(problems)
    filler = _fill_rewrite_cache(problems)
    cached = len(filler.cached)
    if not written + current and not cached:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        print(f"wec compile: nothing could be compiled: {(problems or ['?'])[0]}{more}",
              file=sys.stderr)
        return 1
    skipped = f", {len(filler.skipped)} did not import" if filler.skipped else ""
    lines = [f"{written + current} pycs ({written} written), {cached} modules in pytest "
             f"{version}'s rewrite cache (its plugins, pytest_wec, the chains){skipped}; "
             "run again after upgrading pytest or pytest-wec"]  # scripts/setup shows this line
    notes = problems + [f"did not import: {s}" for s in filler.skipped]
    lines += notes[:4] + ([f"... and {len(notes) - 4} more"] if len(notes) > 4 else [])
    print("\n".join(f"wec compile: {line}" for line in lines))
    return 0
