"""Fixtures shared by the project's own tests.

The real parts (redis-server, Pebble, the challenge server) are started here exactly as the
product starts them, through ``pytest_wec.stack``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_wec.stack._redis import start_redis


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
