"""The run directory and the embedded stack of a run, on the controller.

:class:`RunStack` is mixed into :class:`~pytest_wec.controller.run.WecController`: the run
directory (made and proved writable once, an earlier run's start counters cleared), the
stack started once from whichever thread first needs it (the load's start, or a worker's
rendezvous request on the one thread that owns the stack's processes), the CA checked for
what the options ask (``--wec-profile``) before any chain, and the stack's info as each
worker is to see it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_wec.controller.xdist import worker_count
from pytest_wec.errors import ConfigError, StackError

if TYPE_CHECKING:
    from pytest_wec.settings import Settings

__all__ = ["STACK_START_TIMEOUT", "RunStack"]

#: seconds a worker's request for the stack waits for it to start (each part has its own
#: readiness timeout inside this)
STACK_START_TIMEOUT = 240.0


class RunStack:
    """The run directory and the stack (see the module's doc); state set by the controller."""

    config: pytest.Config
    settings: Settings
    run_id: str
    stack: Any  # pytest_wec.stack.Stack, imported lazily
    stack_error: str | None
    stack_usage: bool  # stack_error is a usage error (the CA lacks what is asked)
    _run_dir: Path | None
    _stack_lock: threading.Lock
    _stack_thread: Any  # concurrent.futures.ThreadPoolExecutor
    stack_ready_at: float | None = None  # epoch: the stack answered (and the CA was checked)

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            if self.settings.out:
                # absolute: workers on other hosts run in another directory
                d = Path(self.config.invocation_params.dir) / self.settings.out
            else:
                d = Path(self.config.invocation_params.dir) / "wec-results" / self.run_id
            try:
                d.mkdir(parents=True, exist_ok=True)
                probe = d / ".wec-write-probe"
                probe.write_bytes(b"")
                probe.unlink()
                from pytest_wec.wire.spill import clear

                clear(d)  # an earlier run's start counters would count as this run's
            except OSError as exc:
                raise pytest.UsageError(
                    f"--wec-out: cannot write to {d}: {exc.strerror or exc}") from None
            self._run_dir = d
        return self._run_dir

    def ensure_stack(self) -> dict[str, Any]:
        """Start the stack once (from any thread); return its plain-data info."""
        with self._stack_lock:
            if self.stack is None:
                if self.stack_error is not None:
                    raise (ConfigError if self.stack_usage else StackError)(self.stack_error)
                from pytest_wec.stack import Stack

                try:
                    self.stack = Stack.start(self.settings, self.run_dir, self.run_id,
                                             pebbles=self.pebbles())
                except StackError as exc:
                    self.stack_error = str(exc)
                    raise
                from pytest_wec.controller.anyca import check_profile

                try:  # the CA offers what the options ask, else a usage error before any chain
                    check_profile(self.settings, self.stack.info)
                except (ConfigError, StackError) as exc:
                    self.stack_error, self.stack_usage = str(exc), isinstance(exc, ConfigError)
                    self.stack.stop()
                    self.stack = None
                    raise
                self.stack_ready_at = time.time()
            info: dict[str, Any] = dict(self.stack.info)
            return info

    def pebbles(self) -> int:
        """How many embedded Pebbles the run spreads over (:func:`pebble_count`)."""
        from pytest_wec.stack import pebble_count

        return pebble_count(self.settings, self._workers())

    def _stack_for_worker(self) -> tuple[dict[str, Any], str | None]:
        """The rendezvous' ``stack`` answer: the info and the CA bundle's text.

        The stack starts on one thread that lives as long as the run: its processes die
        with the thread that started them (``PR_SET_PDEATHSIG``), and the thread of a
        rendezvous connection ends with its request."""
        assert self._stack_thread is not None
        info = self._stack_thread.submit(self.ensure_stack).result(timeout=STACK_START_TIMEOUT)
        return info, _read_text(info.get("ca_bundle"))

    def _info_for(self, worker: str) -> dict[str, Any]:
        return dict(self.stack.info_for(worker)) if self.stack is not None else {}

    def stop_stack(self) -> None:
        if self.stack is not None:
            self.stack.stop()

    def _workers(self) -> int:
        return worker_count(self.config)


def _read_text(path: str | None) -> str | None:
    """A small PEM file's text, for workers on hosts that do not have the file."""
    if not path:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
