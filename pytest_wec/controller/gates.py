"""CI gating on the controller: thresholds and baselines wired to one load run.

:class:`Gates` loads the baseline before anything starts (a missing one is a usage error),
evaluates the thresholds, the comparison and the generator's health
(:mod:`pytest_wec.controller.health`) on the summary before it is written, stops the
run early under ``--wec-abort-on-fail`` and saves the run as a baseline under
``--wec-save``. What the verdicts mean: :mod:`pytest_wec.controller.gating`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.settings import Settings

__all__ = ["Gates"]

log = logging.getLogger(__name__)


class Gates:
    """The run's gates; :attr:`result` is set once the summary was judged."""

    def __init__(self, settings: Settings, invocation_dir: Path,
                 write_line: Callable[[str], None]) -> None:
        self.settings = settings
        self.invocation_dir = invocation_dir
        self.write_line = write_line
        self.baseline: Any = None  # pytest_wec.controller.baseline.Baseline
        self.result: Any = None  # pytest_wec.controller.gating.GateResult
        self.aborted: str | None = None
        self.saved: Path | None = None

    @property
    def active(self) -> bool:
        """Whether a load run is judged: always, for the generator's health at least."""
        return self.settings.load_mode

    def prepare(self) -> None:
        """Before any load: a baseline that cannot be found is a usage error now."""
        s = self.settings
        if s.compare_fail and not s.compare:
            raise pytest.UsageError("--wec-compare-fail: needs --wec-compare (a baseline)")
        if s.compare:
            from pytest_wec.controller.baseline import load_baseline
            from pytest_wec.errors import BaselineError

            try:
                self.baseline = load_baseline(s.compare, self.storage(), s.compare_runs)
            except BaselineError as exc:
                raise pytest.UsageError(f"--wec-compare: {exc}") from None

    def storage(self) -> Path:
        p = Path(self.settings.storage)
        return p if p.is_absolute() else self.invocation_dir / p

    def judge(self, summary: dict[str, Any]) -> None:
        """Thresholds and the baseline comparison, into the summary before it is written."""
        from pytest_wec.controller.gating import gate

        s = self.settings
        result = gate(summary, s.threshold, self.baseline, s.compare_fail or (),
                      aborted=self.aborted, allow_saturated=s.allow_saturated)
        summary["thresholds"] = [v.to_dict() for v in result.verdicts]
        if (self.baseline is not None or self.aborted or result.health
                or result.saturated_allowed):
            summary["gate"] = result.to_dict()
        self.result = result

    def abort_check(self, live: dict[str, Any], elapsed: float,
                    request_stop: Callable[[str], None]) -> None:
        """Stop the run once a threshold can no longer pass (``--wec-abort-on-fail``)."""
        if self.aborted is not None:
            return
        from pytest_wec.controller.gating import doomed

        bad = doomed(self.settings.threshold, live, elapsed, self.settings.run_length)
        if bad:
            v = bad[0]
            self.aborted = f"{v.expr} can no longer pass ({v.reason or v.value_text})"
            self.write_line(f"wec: aborting the run: {self.aborted}")
            request_stop("--wec-abort-on-fail")

    def save(self, benchmark_path: Path) -> None:
        from pytest_wec.controller.baseline import save_baseline
        from pytest_wec.errors import BaselineError

        name = self.settings.save
        if name is None:
            return
        try:
            self.saved = save_baseline(benchmark_path, name, self.storage())
        except (OSError, BaselineError) as exc:
            self.write_line(f"wec: cannot save the baseline {name!r}: {exc}")
