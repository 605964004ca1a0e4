"""Hooks of pytest-wec, for plugins and conftest.py files (registered by
``pytest_addhooks``, as pytest-xdist registers its own).

All of them are called on the controller (the xdist controller, or the lone pytest process)
and only in a load run (``--wec-load``, ``--wec-rate``, ``--wec-stages``). What they are given
is plain data: a ``ChainResult`` (:mod:`pytest_wec.wire.results`) or summary.json's dict.

``pytest_wec_chain_result``  each chain result, as it arrives from a worker
``pytest_wec_output_sinks``  objects that receive every chain result and the summary: an
                             output of a plugin's own (a database, a message bus, a file)
``pytest_wec_summary``       the summary, which an implementation may change, before
                             summary.json, the report and the other outputs are written

An exception raised in an implementation is logged and counted in summary.json
(``warnings``); it never ends the run nor loses a result. Implementations are called on the
thread that reads results: keep them quick (a slow one slows the results reader, not the
load, which runs in the workers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from pytest_wec.wire.results import ChainResult

__all__ = ["OutputSink", "pytest_wec_chain_result", "pytest_wec_output_sinks",
           "pytest_wec_summary"]


class OutputSink(Protocol):
    """What ``pytest_wec_output_sinks`` returns: told of every chain result, then of the
    summary once at the end."""

    def add(self, result: ChainResult, /) -> None:
        """One chain result (plain data, with its requests), as it arrives."""

    def close(self, summary: dict[str, Any], /) -> None:
        """The run's summary (as summary.json holds it); the last call."""


def pytest_wec_chain_result(result: ChainResult, config: pytest.Config) -> None:
    """Called for every chain result that reaches the controller, in arrival order, after
    the results log has it. ``result`` must not be changed."""


def pytest_wec_output_sinks(config: pytest.Config, run_dir: Path) -> list[OutputSink] | None:
    """Called once when a load run starts (the run directory exists by then); return output
    sinks for it (see :class:`OutputSink`), or None. Every implementation's sinks are used."""


def pytest_wec_summary(summary: dict[str, Any], config: pytest.Config) -> None:
    """Called once at the end with the run's summary, after the thresholds and baselines
    were judged (``summary["thresholds"]``, ``summary["gate"]``) and before summary.json,
    report.html and the other outputs are written: keys an implementation adds or changes
    are in them. Changing a figure does not change the verdict."""
