"""Baselines: a run's benchmark.json saved in pytest-benchmark's storage and found again,
to compare a later run with (controller; :mod:`pytest_wec.controller.comparison` compares).

The storage layout is pytest-benchmark's own, so that ``pytest-benchmark compare`` and
``pytest --benchmark-compare`` read the saved runs too::

    <storage>/<machine id>/<NNNN>_<name>.json   .benchmarks/Linux-CPython-3.11-64bit/0003_main.json

A baseline spec (``--wec-compare``) is ``latest`` (the newest run saved on this machine id),
``NAME`` (the newest run saved with that name), ``NNNN`` or ``NNNN_NAME`` (one run),
``MACHINE/NAME`` or ``MACHINE/latest`` (another machine id's runs) or the path of a
benchmark.json.

Given ``runs`` K (``--wec-compare-runs``, default 5), ``NAME`` (and ``latest``: the newest
run's name) is the newest K runs saved with that name in that machine id's directory, newest
first: the comparison takes each figure's median over them
(:func:`pytest_wec.controller.comparison.compare`). ``NNNN``, ``NNNN_NAME`` and a path are
always one run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_wec.errors import BaselineError

__all__ = ["KINDS", "Baseline", "check_save_name", "find_baseline", "find_baselines",
           "load_baseline", "load_benchmark", "machine_id", "parse_storage", "save_baseline"]

#: The benchmark groups of a wec benchmark.json, in the order they are shown.
KINDS = ("chain", "endpoint")
_RUN = re.compile(r"(\d{4})_(.+)\.json")
_ILLEGAL = "\\/:*?<>|"


def machine_id() -> str:
    """pytest-benchmark's machine id, e.g. ``Linux-CPython-3.11-64bit``."""
    try:
        from pytest_benchmark.utils import get_machine_id
    except ImportError:
        return "-".join((platform.system(), platform.python_implementation(),
                         ".".join(platform.python_version_tuple()[:2]),
                         platform.architecture()[0]))
    return str(get_machine_id())  # type: ignore[no-untyped-call]


def parse_storage(text: str) -> Path:
    """``DIR`` or ``file://DIR`` (pytest-benchmark's ``--benchmark-storage`` form)."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "file" or not rest:
            raise ValueError("expected a directory or file://DIR")
        text = rest
    if not text.strip():
        raise ValueError("expected a directory or file://DIR")
    return Path(text)


def check_save_name(name: str) -> str:
    """A name to save a run under, as pytest-benchmark's ``--benchmark-save`` allows."""
    bad = "".join(c for c in _ILLEGAL if c in name)
    if not name.strip() or bad:
        raise ValueError("expected a name without any of \\ / : * ? < > |")
    return name


def _runs(directory: Path) -> list[tuple[int, str, Path]]:
    """(number, name, path) of the saved runs in one machine directory, oldest first."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = _RUN.fullmatch(p.name)
        if m and p.is_file():
            out.append((int(m[1]), m[2], p))
    return sorted(out)


def save_baseline(benchmark_json_path: str | os.PathLike[str], name: str,
                  storage_dir: str | os.PathLike[str]) -> Path:
    """Stores a run's benchmark.json as ``<storage>/<machine id>/<NNNN>_<name>.json`` (the
    next number there) and returns that path."""
    name = check_save_name(name)
    src = Path(benchmark_json_path)
    load_benchmark(src)
    data = src.read_bytes()
    directory = Path(storage_dir) / machine_id()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{secrets.token_hex(4)}.tmp"
    tmp.write_bytes(data)
    try:
        while True:
            runs = _runs(directory)
            target = directory / f"{(runs[-1][0] if runs else 0) + 1:04d}_{name}.json"
            try:
                os.link(tmp, target)  # never replaces a run saved at the same moment
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system
                if target.exists():
                    continue
                os.replace(tmp, target)
            return target
    finally:
        tmp.unlink(missing_ok=True)


def _listing(storage: Path, here: str) -> str:
    """What the storage holds, for an error message."""
    if not storage.is_dir():
        return f"{storage} does not exist; save a run with --wec-save NAME"
    parts = []
    for d in sorted((p for p in storage.iterdir() if p.is_dir()), key=lambda p: p.name != here):
        names = [r[2].stem for r in _runs(d)]
        if names:
            shown = ", ".join(names[-8:]) + (", ..." if len(names) > 8 else "")
            mark = " (this machine)" if d.name == here else ""
            parts.append(f"{d.name}{mark}: {shown}")
    return "saved runs: " + "; ".join(parts) if parts else f"{storage} holds no saved runs"


def _pick(runs: list[tuple[int, str, Path]], want: str, k: int = 1) -> list[Path]:
    """The saved runs ``want`` names, newest first: the newest match and, when it matched
    by its name (or ``want`` is ``latest``), up to ``k - 1`` older runs of that name."""
    found: tuple[int, str, Path] | None = None
    if want == "latest":
        found = runs[-1] if runs else None
    else:
        for number, name, path in reversed(runs):
            if want in (name, path.stem) or (want.isdigit() and int(want) == number):
                found = (number, name, path)
                break
    if found is None:
        return []
    if k <= 1 or want not in ("latest", found[1]):
        return [found[2]]
    return [path for _, name, path in reversed(runs) if name == found[1]][:k]


def find_baselines(spec: str, storage_dir: str | os.PathLike[str], runs: int = 1
                   ) -> list[Path]:
    """The benchmark.json files that ``spec`` names (see the module doc), newest first: up
    to ``runs`` of them for a NAME (or ``latest``), one otherwise; BaselineError, listing
    the saved runs, when nothing matches."""
    storage, here = Path(storage_dir), machine_id()
    spec = spec.strip() or "latest"
    given = Path(spec).expanduser()
    if given.is_file():
        return [given]
    if spec.endswith(".json"):
        raise BaselineError(f"no such file: {spec}")
    machine, sep, want = spec.rpartition("/")
    if sep and ("/" in machine or not (storage / machine).is_dir()):
        raise BaselineError(f"no such file, and no machine id {machine!r} in {storage}: "
                            f"{spec}; {_listing(storage, here)}")
    directory = storage / (machine or here)
    found = _pick(_runs(directory), want, runs)
    if not found:
        what = "no saved run" if want == "latest" else f"no saved run {want!r}"
        raise BaselineError(f"{what} in {directory}; {_listing(storage, here)}")
    return found


def find_baseline(spec: str, storage_dir: str | os.PathLike[str]) -> Path:
    """The benchmark.json that ``spec`` names (see the module doc); BaselineError, listing
    the saved runs, when nothing matches."""
    return find_baselines(spec, storage_dir)[0]


def load_benchmark(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A wec benchmark.json (pytest-benchmark's format with chain and endpoint groups)."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except OSError as exc:
        raise BaselineError(f"cannot read {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BaselineError(f"{p} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or not any(
            isinstance(b, dict) and b.get("group") in KINDS and isinstance(b.get("stats"), dict)
            for b in data["benchmarks"]):
        raise BaselineError(f"{p} is not a wec benchmark.json (no chain or endpoint benchmarks)")
    return data


@dataclass(frozen=True)
class Baseline:
    """What to compare with: where it is, what it holds, how to call it. ``path`` and
    ``data`` are the newest run; ``runs`` (newest first) all the runs it is made of."""

    path: Path
    data: Mapping[str, Any]
    label: str
    runs: tuple[Mapping[str, Any], ...] = ()
    paths: tuple[Path, ...] = ()

    @property
    def compared(self) -> Mapping[str, Any] | tuple[Mapping[str, Any], ...]:
        """What :func:`pytest_wec.controller.comparison.compare` takes as the baseline: the
        one run, or the list of them."""
        return self.runs if len(self.runs) > 1 else self.data


def _label(path: Path, storage_dir: str | os.PathLike[str]) -> str:
    """``0003_main`` on this machine id, ``MACHINE/0003_main`` on another, else the path."""
    try:
        rel = path.resolve().relative_to(Path(storage_dir).resolve())
    except ValueError:
        return str(path)
    return rel.stem if rel.parent.name == machine_id() else str(rel.with_suffix(""))


def load_baseline(spec: str, storage_dir: str | os.PathLike[str], runs: int = 1
                  ) -> Baseline:
    """:func:`find_baselines` and :func:`load_benchmark` in one (BaselineError); with
    several runs the label says how many: ``main (median of 5 runs, 0003_main ..
    0007_main)``."""
    if runs < 1:
        raise ValueError("runs: expected a whole number >= 1")
    paths = find_baselines(spec, storage_dir, runs)
    datas = tuple(load_benchmark(p) for p in paths)
    labels = [_label(p, storage_dir) for p in paths]
    label = labels[0]
    if len(paths) > 1:
        m = _RUN.fullmatch(paths[0].name)  # several: saved runs, NNNN_NAME.json
        name = m[2] if m else paths[0].stem
        where = label.rpartition("/")[0]
        label = (f"{where + '/' if where else ''}{name} (median of {len(paths)} runs, "
                 f"{labels[-1].rpartition('/')[2]} .. {labels[0].rpartition('/')[2]})")
    return Baseline(paths[0], datas[0], label, datas, tuple(paths))
