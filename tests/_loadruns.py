"""Helpers shared by the tests that make whole load runs in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: marks of a module of whole load runs against the embedded Pebble and Redis
NEEDS_STACK = [
    pytest.mark.pebble,
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("pebble") is None or shutil.which("redis-server") is None,
                       reason="needs pebble and redis-server (apt-get install pebble "
                              "redis-server)"),
]

#: the chains most runs use: fast, and each needs only what the one before produces
BASIC = ("new_account", "new_order", "new_certificate")


def chain_names() -> set[str]:
    """The chains of the installed ``pytest_wec_chains`` package (the repository's chains/),
    read from their declarations."""
    spec = importlib.util.find_spec("pytest_wec_chains")
    assert spec is not None and spec.origin is not None
    names: set[str] = set()
    for path in Path(spec.origin).parent.glob("*.py"):
        names.update(re.findall(r'^@chain\(\s*"([^"]+)"', path.read_text(), re.MULTILINE))
    return names


def only(*names: str) -> str:
    """A ``--wec-mix`` that runs *names* and leaves every other chain out."""
    return ",".join(f"{n}={int(n in names)}" for n in sorted(chain_names() | set(names)))


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[bytes]) -> None:
    """Poll *check* until true; fails when *proc* ends first or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g}s")
        time.sleep(0.1)


def log_lines(out: Path) -> list[dict[str, Any]]:
    """What the controller wrote to results.jsonl so far (a torn last line is skipped)."""
    try:
        lines = (out / "results.jsonl").read_bytes().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
