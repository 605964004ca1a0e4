"""The wheel as a user gets it: built, installed in a fresh virtualenv, and run from there.

The wheel is built (``python -m build --wheel``, this environment's setuptools) from a copy of
the repository, and must build without a warning. A virtualenv made for the test gets it by
an ordinary ``pip install``; its dependencies come from this environment, through a ``.pth``
file that names a folder of links to this environment's installed distributions, pytest-wec
itself (the editable install) left out. Everything then runs in that virtualenv, from an
empty directory, with nothing of the repository on ``sys.path``:

- the wheel installs only our import names (``pytest_wec``, ``pytest_wec_chains``,
  ``pytest_wec_challenge_srv``: ``chains`` is another project on PyPI), and every module
  and data file of the repository's folders under them;
- ``wec --help`` and ``wec challenge-server --help`` work;
- ``pytest --pyargs pytest_wec_chains`` runs chains against the embedded Pebble;
- ``wec run`` makes a short load run and ends with the report's path, and a load run that
  collected no chain runs the shipped catalogue.

The wheel and its virtualenv are made once per test session (under xdist, by whichever
worker comes first; the others wait for it). Building needs the ``build`` package and
setuptools 77 or newer here (the test extras); without them the tests skip, except under
CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from _loadruns import BASIC, NEEDS_STACK, only
from packaging.version import Version

from pytest_wec._shipped import CHAINS, CHALLENGE_SRV
from pytest_wec.controller.resultlog import read_results

pytestmark = [pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
#: the repository's folders the wheel ships, and the import names it installs them under
SHIPPED = {"pytest_wec": "pytest_wec", "chains": CHAINS, "challenge_srv": CHALLENGE_SRV}
#: the import names the wheel may install, and no other
OURS = set(SHIPPED.values())
#: what a copy of the repository to build from leaves out
NOT_COPIED = (".git", ".venv", "venv", ".tox", "build", "dist", "wec-results", "*.egg-info",
              "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
              ".benchmarks")
#: a line of the build's output that is a warning ("WARNING ...", "warning: ...",
#: "SetuptoolsDeprecationWarning", "!!" around setuptools' notices), not a file's name
WARNING = re.compile(r"(?i)warn|deprecat|^\s*!!")
FILE_LINE = re.compile(r"^\s*(copying|adding|creating|removing|writing|reading|running|"
                       r"making hard link|byte-compiling) ")
LOCK_WAIT = 600.0  # seconds another worker may take to build and install


@dataclass(frozen=True)
class Installed:
    """The built wheel and the virtualenv it is installed in."""

    wheel: Path
    build_log: str
    venv: Path
    python: Path
    site_packages: Path

    def env(self) -> dict[str, str]:
        """This process's environment, less what would reach the repository or change the
        run (PYTHONPATH, the active virtualenv, WEC_* settings, pytest's own variables),
        with the virtualenv's bin first on PATH."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
               and not k.startswith(("WEC_", "PYTEST_"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def run(self, argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """*argv* (a program of the virtualenv's bin, or ``python``) in *cwd*."""
        exe = self.python if argv[0] == "python" else self.venv / "bin" / argv[0]
        return subprocess.run([str(exe), *argv[1:]], cwd=cwd, env=self.env(),
                              capture_output=True, text=True, timeout=timeout, check=False)


def _cannot_build() -> str | None:
    """Why the wheel cannot be built and installed here, or None."""
    try:
        setuptools = Version(importlib.metadata.version("setuptools"))
        pip = Version(importlib.metadata.version("pip"))
    except importlib.metadata.PackageNotFoundError as exc:
        return f"{exc.name} is not installed here (pip install -e '.[test]')"
    if importlib.util.find_spec("build") is None:
        return "the build package is not installed here (pip install -e '.[test]')"
    if setuptools < Version("77"):
        return f"setuptools {setuptools} is older than 77 (pip install -e '.[test]')"
    if pip < Version("22.3"):
        return f"pip {pip} has no --python option (pip install -U pip)"
    if importlib.util.find_spec("venv") is None:
        return "the venv module is missing (apt-get install python3-venv)"
    return None


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive lock on *path* across this session's xdist workers, waited for at most
    *timeout* seconds."""
    with path.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} still locked after {timeout:g}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(work: Path) -> tuple[Path, str]:
    """The wheel, built from a copy of the repository into *work*; and the build's output."""
    src, dist = work / "src", work / "dist"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
    # with PYTHONDONTWRITEBYTECODE set, distutils says "byte-compiling is disabled": a note on
    # the environment the build runs in, not on the project, so the build runs without it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                        "--outdir", str(dist), str(src)], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, (wheels, log)
    return wheels[0], log


def _dependencies(work: Path) -> Path:
    """A folder of links to everything installed in this environment's site-packages but
    pytest-wec (its editable install, or any other) and the ``.pth`` files."""
    deps = work / "deps"
    deps.mkdir()
    sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for site in sorted(sites):
        for entry in sorted(Path(site).iterdir()):
            name = entry.name
            if (name.startswith(("pytest_wec", "__editable__")) or name.endswith(".pth")
                    or name == "__pycache__" or (deps / name).exists()):
                continue
            (deps / name).symlink_to(entry)
    return deps


def _make(work: Path) -> Installed:
    wheel, log = _build(work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    site_packages = Path(site)
    (site_packages / "_wec_test_dependencies.pth").write_text(f"{_dependencies(work)}\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                        "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return Installed(wheel, log, venv, python, site_packages)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built and installed in a fresh virtualenv: once per test session."""
    reason = _cannot_build()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the wheel cannot be built, and CI must build it: {reason}")
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp()
    # under xdist the base is per worker, and its parent this session's
    work = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "wec-wheel"
    work.mkdir(exist_ok=True)
    done = work / "installed.json"
    with _locked(work / "lock", LOCK_WAIT):
        if done.exists():
            d = json.loads(done.read_text())
            return Installed(Path(d["wheel"]), d["build_log"], Path(d["venv"]),
                             Path(d["python"]), Path(d["site_packages"]))
        for leftover in ("src", "dist", "deps", "venv"):  # an earlier worker's failed try
            shutil.rmtree(work / leftover, ignore_errors=True)
        made = _make(work)
        done.write_text(json.dumps({
            "wheel": str(made.wheel), "build_log": made.build_log, "venv": str(made.venv),
            "python": str(made.python), "site_packages": str(made.site_packages)}))
        return made


def _top_level(paths: list[str]) -> set[str]:
    """The import names of RECORD paths (scripts, outside site-packages, and the
    distribution's own .dist-info left out)."""
    names = set()
    for p in paths:
        first = PurePosixPath(p).parts[0]
        if first != ".." and not first.endswith(".dist-info"):
            names.add(first.removesuffix(".py"))
    return names


def _record(text: str) -> list[str]:
    return [line.split(",", 1)[0] for line in text.splitlines() if line.strip()]


def _sources() -> dict[str, Path]:
    """Each package the wheel installs, by its name, and the repository's folder that holds
    it (pyproject.toml's packages and package-dir)."""
    tool = PYPROJECT["tool"]["setuptools"]
    mapped = tool.get("package-dir", {})
    out = {}
    for pkg in tool["packages"]:
        top, _, rest = pkg.partition(".")
        folder = ROOT / mapped.get(top, top)
        out[pkg] = folder.joinpath(*rest.split(".")) if rest else folder
    return out


def test_the_wheel_builds_without_warnings_and_holds_only_our_names(
        installed: Installed) -> None:
    warnings = [line for line in installed.build_log.splitlines()
                if WARNING.search(line) and not FILE_LINE.match(line)]
    assert not warnings, installed.build_log
    assert set(_sources()) >= OURS, "pyproject.toml's packages name the shipped folders"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {
        CHAINS: "chains", CHALLENGE_SRV: "challenge_srv"}, \
        "pytest_wec/_shipped.py and pyproject.toml's package-dir agree"
    with zipfile.ZipFile(installed.wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        record = _record(z.read(f"{info}/RECORD").decode())
        top_level = set(z.read(f"{info}/top_level.txt").decode().split())
        metadata = z.read(f"{info}/METADATA").decode()
    assert _top_level(record) == OURS, sorted(_top_level(record))
    assert top_level == OURS
    assert "License-Expression: MPL-2.0 AND MIT" in metadata.splitlines()  # MIT: uPlot
    assert f"{info}/licenses/LICENSE" in names
    assert f"{info}/licenses/pytest_wec/static/uPlot.LICENSE" in names
    # every module of the repository's folders (a new subpackage too), and the data files,
    # under the installed names
    shipped = [f for top in SHIPPED for f in (ROOT / top).rglob("*.py")
               if "__pycache__" not in f.parts]
    shipped += [ROOT / "pytest_wec" / "py.typed", *(ROOT / "pytest_wec" / "static").iterdir()]
    for f in shipped:
        top, *rest = f.relative_to(ROOT).parts
        assert "/".join([SHIPPED[top], *rest]) in names, \
            f"{f.relative_to(ROOT)} is not in the wheel (pyproject.toml's packages?)"


def test_the_installed_wheel_stands_alone(installed: Installed, tmp_path: Path) -> None:
    """Imported from the virtualenv only; what pip recorded is ours only; ``wec`` works."""
    probe = (
        "import importlib.util, json, sys\n"
        f"import pytest_wec, {CHAINS}, {CHALLENGE_SRV}\n"
        "mods = (pytest_wec, " + CHAINS + ", " + CHALLENGE_SRV + ")\n"
        "print(json.dumps({'path': sys.path, 'files': [m.__file__ for m in mods],\n"
        "    'others': [getattr(importlib.util.find_spec(n), 'origin', None)\n"
        "               for n in ('chains', 'challenge_srv')]}))\n")
    r = installed.run(["python", "-c", probe], tmp_path, 60)
    assert r.returncode == 0, r.stderr
    seen: dict[str, Any] = json.loads(r.stdout)
    work = installed.venv.parent.resolve()  # the test's own (under ROOT with a --basetemp there)

    def in_repository(path: str) -> bool:
        p = Path(path or tmp_path).resolve()
        return p.is_relative_to(ROOT) and not p.is_relative_to(work)

    assert not [e for e in seen["path"] if in_repository(e)], seen["path"]
    for f in seen["files"]:
        assert Path(f).is_relative_to(installed.site_packages), f
    for origin in seen["others"]:  # not ours: absent, or someone else's
        assert origin is None or not in_repository(origin), origin
    records = list(installed.site_packages.glob("pytest_wec-*.dist-info/RECORD"))
    assert len(records) == 1, records
    assert _top_level(_record(records[0].read_text())) == OURS

    r = installed.run(["wec", "--help"], tmp_path, 60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The ``wec`` command.") and "wec run" in r.stdout, r.stdout
    r = installed.run(["wec", "challenge-server", "--help"], tmp_path, 60)
    assert r.returncode == 0, r.stderr
    assert "--http01" in r.stdout and "--management" in r.stdout, r.stdout


def _with_stack(fn: Any) -> Any:
    for mark in NEEDS_STACK:
        fn = mark(fn)
    return fn


def _ran(r: subprocess.CompletedProcess[str]) -> str:
    text = r.stdout + r.stderr
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return text


@_with_stack
def test_the_installed_chains_run_against_the_embedded_pebble(
        installed: Installed, tmp_path: Path) -> None:
    r = installed.run(["python", "-m", "pytest", "--pyargs", CHAINS, "-k", "new_account",
                       "-p", "no:cacheprovider", "-p", "no:xdist", "-q"], tmp_path, 180)
    text = _ran(r)
    assert r.returncode == 0, text
    passed = re.search(r"\b(\d+) passed", text)
    assert passed and int(passed.group(1)) >= 2, text
    assert not re.search(r"\b\d+ (failed|error)", text), text
    assert (tmp_path / "wec-results").is_dir(), "the embedded stack's run dir, in the cwd"


@_with_stack
def test_wec_run_and_the_catalogue_from_the_installed_wheel(
        installed: Installed, tmp_path: Path) -> None:
    """``wec run`` (``pytest --pyargs pytest_wec_chains``) ends with the report's path; a
    load run in an empty directory runs the shipped catalogue."""
    r = installed.run(["wec", "run", "--wec-load", "2", "--wec-duration", "2s",
                       "--wec-grace", "10s", "--wec-mix", only(*BASIC), "-p", "no:xdist"],
                      tmp_path, 180)
    text = _ran(r)
    assert r.returncode == 0, text
    last = r.stdout.rstrip().splitlines()[-1]
    assert last.startswith("wec: report: "), text
    report = Path(last.removeprefix("wec: report: "))
    assert report.name == "report.html" and report.is_file(), last
    assert report.resolve().is_relative_to((tmp_path / "wec-results").resolve()), last
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["totals"]["chains"] > 0 and set(summary["chains"]) <= set(BASIC), summary

    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "catalogue"
    r = installed.run(["python", "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
                       "--wec-load", "1", "--wec-duration", "1s", "--wec-grace", "10s",
                       "--wec-mix", "new_account=1", "--wec-out", str(out)], empty, 180)
    text = _ran(r)
    assert r.returncode == 0, text
    results = list(read_results(out / "results.jsonl"))
    assert results and {x["chain"] for x in results} == {"new_account"}, results
    assert all(x["ok"] for x in results), [x["error"] for x in results if not x["ok"]]
