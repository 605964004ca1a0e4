"""What a worker's sink leaves in the run directory for the controller, and how the
controller reads it: the start counters and the spill files (formats and names:
:mod:`pytest_wec.wire.stream`).

Worker end: :class:`StartCounter`, :func:`keep_spill`. Controller end: :func:`counters`,
:func:`spills`.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from pathlib import Path

from pytest_wec.wire.stream import (
    Spill,
    counter_path,
    encode_spill,
    read_counter,
    spill_path,
    workers_dir,
)

__all__ = ["StartCounter", "clear", "counters", "keep_spill", "spills", "write_spill"]

log = logging.getLogger(__name__)


class StartCounter:
    """Chains a sink's worker started, in an 8-byte file mapped into memory: each start is
    a store into the page cache, which outlives the process however it dies."""

    def __init__(self, run_dir: str | Path, worker: str, session: str) -> None:
        path = counter_path(run_dir, worker, session)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, bytes(8))
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def set(self, n: int) -> None:
        self._map[0:8] = n.to_bytes(8, "little")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()


def write_spill(run_dir: str | Path, spill: Spill) -> Path:
    """The spill file, written whole or not at all; OSError when it cannot be."""
    path = spill_path(run_dir, spill.worker, spill.session)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(encode_spill(spill))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def keep_spill(run_dir: Path, spill: Spill) -> tuple[Path | None, bytes | None]:
    """The spill written to *run_dir* (its path), or, when this host has no such directory
    or it cannot be written, its bytes for the caller to hand over (xdist's channel)."""
    held = f"worker {spill.worker}: Redis unreachable at close"
    if run_dir.is_dir():
        try:
            path = write_spill(run_dir, spill)
            log.warning("%s; what it could not deliver and its end record are in %s", held,
                        path)
            return path, None
        except OSError as exc:
            log.error("%s; cannot write its spill file in %s: %s", held, run_dir, exc)
    return None, encode_spill(spill)


def counters(run_dir: str | Path) -> dict[tuple[str, str], int]:
    """``(worker, session) -> chains started``, from the run directory's start counters."""
    out: dict[tuple[str, str], int] = {}
    for path in sorted(workers_dir(run_dir).glob("*.started")):
        worker, _, session = path.name.removesuffix(".started").rpartition(".")
        n = read_counter(path)
        if worker and n is not None:
            out[(worker, session)] = n
    return out


def spills(run_dir: str | Path) -> list[tuple[Path, bytes]]:
    """Every spill file of the run directory and its bytes (unreadable ones skipped)."""
    out = []
    for path in sorted(workers_dir(run_dir).glob("*.spill")):
        with contextlib.suppress(OSError):
            out.append((path, path.read_bytes()))
    return out


def clear(run_dir: str | Path) -> int:
    """Removes the start counters and spill files an earlier run left in *run_dir* (a
    ``--wec-out`` used again), before this run's workers start; how many there were."""
    n = 0
    for pattern in ("*.started", "*.spill"):
        for path in workers_dir(run_dir).glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                n += 1
    return n
