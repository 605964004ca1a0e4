"""Helpers of the tests that fit the chains to any CA: an offline chain context on the
FakeCA, the quirky stub CA (``pytest_wec.testing.quirky_ca``) as a child process, and whole
integration runs of the shipped chains in a subprocess, as a user makes them."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_wec.acme import AcmeNetwork, FakeCA, MockTransport
from pytest_wec.settings import Settings

DIR = "https://ca.test/dir"

#: a test that starts the embedded stack (Pebble and redis-server)
needs_stack = pytest.mark.skipif(
    shutil.which("pebble") is None or shutil.which("redis-server") is None,
    reason="needs pebble and redis-server (apt-get install pebble redis-server)")
#: a test that starts redis-server (for the embedded challenge server)
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="needs redis-server (apt-get install redis-server)")


class Published:
    """A publisher that remembers what is live and every call made to it."""

    def __init__(self) -> None:
        self.live: set[tuple[str, str]] = set()
        self.calls: list[tuple[str, ...]] = []

    async def add_http01(self, token: str, key_authz: str) -> None:
        self.live.add(("http01", token))
        self.calls.append(("add_http01", token))

    async def del_http01(self, token: str) -> None:
        self.live.discard(("http01", token))
        self.calls.append(("del_http01", token))

    async def add_tlsalpn01(self, host: str, key_authz: str) -> None:
        self.live.add(("tlsalpn01", host))
        self.calls.append(("add_tlsalpn01", host))

    async def del_tlsalpn01(self, host: str) -> None:
        self.live.discard(("tlsalpn01", host))
        self.calls.append(("del_tlsalpn01", host))

    async def set_txt(self, host: str, value: str) -> None:
        self.live.add(("txt", host))
        self.calls.append(("set_txt", host))

    async def clear_txt(self, host: str) -> None:
        self.live.discard(("txt", host))
        self.calls.append(("clear_txt", host))

    async def add_address(self, host: str, address: str) -> None:
        self.live.add(("address", host))
        self.calls.append(("add_address", host, address))

    async def clear_address(self, host: str, address: str) -> None:
        self.live.discard(("address", host))
        self.calls.append(("clear_address", host, address))


def offline_runtime(ca: FakeCA, settings: Settings | None = None,
                    info: dict[str, Any] | None = None) -> Any:
    """What a ChainContext needs, against *ca* through a MockTransport (no state DB)."""

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return None

    return SimpleNamespace(
        network=AcmeNetwork(DIR, MockTransport(ca), poll_interval=0.01, poll_first=0.01),
        settings=settings or Settings(), directory=DIR, store=SimpleNamespace(
            add_order=None, add_authorization=None), publisher=Published(), pebble=None,
        holder="test:1", info=info or {}, db=db)


@contextmanager
def quirky_ca(run_dir: Path, *args: str) -> Iterator[tuple[str, str]]:
    """The quirky stub CA with *args*: (directory URL, CA bundle), stopped afterwards."""
    from pytest_wec.testing.quirky_ca import start_quirky_ca

    proc, url, bundle = start_quirky_ca(run_dir, args)
    try:
        yield url, bundle
    finally:
        proc.stop()


def run_chains(pytester: pytest.Pytester, *args: str, out: str = "out",
               timeout: float = 240) -> pytest.RunResult:
    """``pytest --pyargs pytest_wec_chains ARGS`` once (no xdist) in a subprocess, its run
    directory ``out`` under the pytester directory."""
    return pytester.runpytest_subprocess(
        "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "-p", "no:cacheprovider", "-rfs",
        "--wec-out", str(pytester.path / out), *args, timeout=timeout)


def against(url: str, bundle: str) -> tuple[str, ...]:
    return ("--wec-directory", url, "--wec-ca-bundle", bundle)


def stored_authorizations(run_dir: Path) -> list[tuple[str, str, str]]:
    """(identifier type, value, challenge type) of every authorization the run stored."""
    with sqlite3.connect(run_dir / "state.db") as db:
        return [tuple(r) for r in db.execute(
            "SELECT identifier_type, identifier_value, challenge_type FROM wec_authorizations")]
