"""Plugins' hooks in a load run (controller): :mod:`pytest_wec.newhooks`, called safely.

:class:`PluginCalls` holds what the run calls: the ``pytest_wec_chain_result``
implementations, the sinks ``pytest_wec_output_sinks`` returned, the ``pytest_wec_summary``
implementations. An exception in any of them is logged with its traceback, said once on the
terminal and counted (summary.json ``warnings``, ``plugin_errors``); the run, the results
and the other plugins go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from pytest_wec.newhooks import OutputSink
    from pytest_wec.wire.results import ChainResult

__all__ = ["PluginCalls"]

log = logging.getLogger(__name__)


class PluginCalls:
    """The plugins' part of one load run; ``note`` says a line on the terminal (once per
    failing hook)."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self.note = note
        self.on_result: list[tuple[str, Callable[[ChainResult], None]]] = []
        self.on_summary: list[tuple[str, Callable[[dict[str, Any]], None]]] = []
        self.sinks: list[OutputSink] = []
        self.errors: dict[str, int] = {}  # what raised -> how many times

    @classmethod
    def from_config(cls, config: pytest.Config, run_dir: Path,
                    note: Callable[[str], None]) -> PluginCalls:
        """What the hooks of ``config`` ask for; the sinks are made now."""
        calls = cls(note)
        hook = config.hook
        if hook.pytest_wec_chain_result.get_hookimpls():
            calls.on_result.append(("pytest_wec_chain_result", lambda c: (
                hook.pytest_wec_chain_result(result=c, config=config))))
        if hook.pytest_wec_summary.get_hookimpls():
            calls.on_summary.append(("pytest_wec_summary", lambda s: (
                hook.pytest_wec_summary(summary=s, config=config))))
        try:
            made = hook.pytest_wec_output_sinks(config=config, run_dir=run_dir)
        except Exception as exc:
            calls._failed("pytest_wec_output_sinks", exc)
            made = []
        for sinks in made:
            calls.sinks.extend(sinks or [])
        return calls

    @property
    def active(self) -> bool:
        return bool(self.on_result or self.sinks)

    def results(self, chains: Iterable[ChainResult]) -> None:
        """Each chain result to each result hook and each sink."""
        for name, fn in self.on_result:
            for c in chains:
                try:
                    fn(c)
                except Exception as exc:
                    self._failed(name, exc)
        for sink in self.sinks:
            add = sink.add
            for c in chains:
                try:
                    add(c)
                except Exception as exc:
                    self._failed(f"{type(sink).__name__}.add", exc)

    def summary(self, summary: dict[str, Any]) -> None:
        """The summary hooks, which may change ``summary``; then the errors so far in it."""
        for name, fn in self.on_summary:
            try:
                fn(summary)
            except Exception as exc:
                self._failed(name, exc)
        self.record(summary)

    def close(self, summary: dict[str, Any]) -> None:
        """Each sink's last call, with the summary as written."""
        for sink in self.sinks:
            try:
                sink.close(summary)
            except Exception as exc:
                self._failed(f"{type(sink).__name__}.close", exc)

    def record(self, summary: dict[str, Any]) -> None:
        """``plugin_errors`` (what raised, how many times) and one warning each."""
        if not self.errors:
            return
        summary["plugin_errors"] = dict(self.errors)
        warnings = summary.setdefault("warnings", [])
        for name, n in self.errors.items():
            line = f"wec: plugin {name} raised {n} time(s); see the log"
            if line not in warnings:
                warnings.append(line)

    def _failed(self, name: str, exc: BaseException) -> None:
        first = name not in self.errors
        self.errors[name] = self.errors.get(name, 0) + 1
        if first:
            log.error("plugin %s raised", name, exc_info=exc)
            self.note(f"wec: plugin {name} raised {type(exc).__name__}: {exc} (the run goes "
                      "on; further errors are counted)")
