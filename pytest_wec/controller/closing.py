"""What a load run prints and hands over at its end (controller): the terminal's tables and
paths, the gate's verdict and an incomplete run's reason as the last lines, the gate in
``--junitxml`` and the run in ``$GITHUB_STEP_SUMMARY`` (:mod:`pytest_wec.controller.ciexports`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

__all__ = ["ci_exports", "exit_status", "last_lines", "terminal_summary"]


def exit_status(status: int, incomplete: list[str]) -> int:
    """The run's exit status: 8 (EXIT_INCOMPLETE) in place of 0, 1 or the gates' 7 when the
    load run lost results or parts of its stack (*incomplete*, its reasons), whatever its
    thresholds say; *status* otherwise."""
    from pytest_wec.controller.gating import EXIT_GATE_FAILED
    from pytest_wec.controller.ledger import EXIT_INCOMPLETE

    if incomplete and status in (0, 1, EXIT_GATE_FAILED):
        return EXIT_INCOMPLETE
    return status


def ci_exports(config: pytest.Config, summary: dict[str, Any], gate_line: str | None,
               run_id: str, write_line: Any) -> None:
    """The gate as test cases in ``--junitxml`` (pytest wrote it by now) and the run in
    ``$GITHUB_STEP_SUMMARY``."""
    from pytest_wec.controller.ciexports import add_junit_cases, append_step_summary, gate_cases

    xml = getattr(config.option, "xmlpath", None)
    if xml:
        path = Path(config.invocation_params.dir) / xml
        if not add_junit_cases(path, gate_cases(summary), run_id=run_id):
            write_line(f"wec: cannot add the gate's test cases to {path}")
    append_step_summary(summary, gate_line)


def terminal_summary(tr: Any, load: Any, gates: Any) -> None:
    """The load results section: tables, the outputs' paths, then the gates' section."""
    tr.section("wec load results")
    for line in load.tables().splitlines():
        tr.write_line(line)
    tr.write_line(f"wec: results log  {load.log_path}")
    tr.write_line(f"wec: benchmark    {load.benchmark_path}")
    tr.write_line(f"wec: summary      {load.summary_path}")
    if gates.saved is not None:
        tr.write_line(f"wec: baseline     {gates.saved}")
    tr.write_line(f"wec: report       {load.report_path}")
    if gates.result is not None:
        text = gates.result.text()
        if text:
            tr.section("wec gates")
            for line in text.splitlines():
                tr.write_line(line)


def last_lines(config: pytest.Config, gates: Any, load: Any) -> None:
    """The gates' verdict after pytest's own summary line; an incomplete run's reason the
    very last."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    line = gates.result.line() if gates.result is not None else None
    if line:
        tr.write_line(line, bold=True, red=line.startswith("wec: FAILED"),
                      green=line.startswith("wec: PASSED"))
    if load is not None and load.incomplete:
        tr.write_line("wec: INCOMPLETE: " + "; ".join(load.incomplete), bold=True, red=True)
