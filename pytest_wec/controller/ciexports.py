"""What CI tools and histogram tools read, from a finished run (controller).

``write_hgrm``            HdrHistogram percentile distributions (``.hgrm``, milliseconds), one
                          per chain and per endpoint, in ``hgrm/`` of the run directory: what
                          HdrHistogram's plotter and ``wrk2``-style tools read (the text:
                          :mod:`pytest_wec.controller.hgrm`)
``step_summary``          the run in GitHub-flavoured markdown: totals, chains, endpoints, CA
                          events, the gate's verdicts; appended to ``$GITHUB_STEP_SUMMARY``
                          by ``append_step_summary`` when GitHub Actions sets it
``gate_cases``            the gate as test cases: one per threshold, one for the comparison
                          with a baseline, one for an abort
``add_junit_cases``       those cases appended to a ``--junitxml`` file, as a test suite
                          ``wec.gate`` (a failed gate is a failure there, not a pass beside
                          exit status 7)
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_wec.controller.aggregator import Aggregator
from pytest_wec.controller.hgrm import hgrm_text
from pytest_wec.controller.thresholds import format_value

__all__ = ["GateCase", "add_junit_cases", "append_step_summary", "gate_cases", "hgrm_text",
           "step_summary", "write_hgrm"]

log = logging.getLogger(__name__)

HGRM_DIR = "hgrm"
JUNIT_SUITE = "wec.gate"


# -- .hgrm -----------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "_"


def write_hgrm(run_dir: Path, agg: Aggregator) -> list[Path]:
    """``hgrm/chain-NAME.hgrm`` and ``hgrm/endpoint-NAME.hgrm`` for every chain and endpoint
    with at least one latency; the paths written."""
    out = run_dir / HGRM_DIR
    written: list[Path] = []
    items = [("chain", n, s.latency) for n, s in sorted(agg.chains.items())]
    items += [("endpoint", n, s.latency) for n, s in sorted(agg.endpoints.items())]
    for kind, name, hist in items:
        if hist.total == 0:
            continue
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{kind}-{_safe(name)}.hgrm"
        path.write_bytes(hgrm_text(hist))
        written.append(path)
    return written


# -- the gate as test cases ------------------------------------------------------------------


@dataclass(frozen=True)
class GateCase:
    name: str
    failed: bool
    message: str  # the value, or why it failed


def gate_cases(summary: Mapping[str, Any]) -> list[GateCase]:
    """summary.json's ``thresholds`` and ``gate`` as test cases; none when no gate was
    asked for."""
    gate = summary.get("gate")
    gate = gate if isinstance(gate, Mapping) else {}
    cases = []
    for v in summary.get("thresholds") or gate.get("thresholds") or []:
        value = v.get("value")
        text = format_value(value, str(v.get("unit") or "")) \
            if isinstance(value, int | float) else str(v.get("reason") or "no value")
        cases.append(GateCase(f"threshold: {v.get('expr')}", v.get("ok") is not True,
                              f"{v.get('expr')}: {text}"))
    if gate.get("baseline") is not None:
        regressions = [str(r) for r in gate.get("regressions") or []]
        cases.append(GateCase(f"baseline: {gate['baseline']}", bool(regressions),
                              "; ".join(regressions) or f"no regressions against "
                                                        f"{gate['baseline']}"))
    for key, title in (("aborted", "aborted"), ("health", "generator health")):
        reason = gate.get(key)
        if reason:
            cases.append(GateCase(title, True, str(reason)))
    return cases


def add_junit_cases(path: Path, cases: Sequence[GateCase], *, run_id: str = "") -> bool:
    """Appends ``cases`` to the JUnit XML file ``path`` (pytest's ``--junitxml``) as one test
    suite; False (and a log line) when the file cannot be read or written."""
    if not cases:
        return True
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        log.warning("cannot add the gate to %s: %s", path, exc)
        return False
    root = tree.getroot()
    if root.tag == "testsuite":  # a lone suite: wrap it, as pytest writes by default
        wrapper = ET.Element("testsuites")
        wrapper.append(root)
        root = wrapper
        tree = ET.ElementTree(root)
    failures = sum(c.failed for c in cases)
    suite = ET.SubElement(root, "testsuite", name=JUNIT_SUITE, tests=str(len(cases)),
                          failures=str(failures), errors="0", skipped="0", time="0")
    if run_id:
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="wec_run", value=run_id)
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=JUNIT_SUITE, name=c.name, time="0")
        if c.failed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
        else:
            ET.SubElement(case, "system-out").text = c.message
    for attr in ("tests", "failures"):  # the totals pytest wrote, if it wrote them
        if attr in root.attrib:
            add = len(cases) if attr == "tests" else failures
            root.set(attr, str(int(root.get(attr) or 0) + add))
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot add the gate to %s: %s", path, exc)
        return False
    return True


# -- GitHub's job summary --------------------------------------------------------------------


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in rows]
    return lines


def step_summary(summary: Mapping[str, Any], last_line: str | None = None) -> str:
    """The run in markdown: what GitHub shows on the job's page."""
    run, t = summary.get("run") or {}, summary.get("totals") or {}
    lines = [f"## wec load run {run.get('id') or ''}", ""]
    if last_line:
        lines += [f"**{_md(last_line)}**", ""]
    lines.append(f"{t.get('chains', 0)} chains ({t.get('chains_failed', 0)} failed) in "
                 f"{run.get('duration_s') or 0:g} s under load, {t.get('chains_per_s', 0):g} "
                 f"chains/s; {t.get('requests', 0)} requests ({t.get('requests_failed', 0)} "
                 f"failed); {t.get('certificates_issued', 0)} certificates; results lost: "
                 f"{t.get('results_lost', 0)}")
    header = ("count", "failed", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    for title, key in (("chain", "chains"), ("endpoint", "endpoints")):
        rows = []
        for name, e in (summary.get(key) or {}).items():
            lat = e.get("latency_ms") or {}
            rows.append((name, e.get("count"), e.get("failed"), e.get("per_s"),
                         *(lat.get(p) for p in ("p50", "p95", "p99", "max"))))
        if rows:
            lines += ["", *_table((title, *header), rows)]
    events = summary.get("ca_events") or []
    if events:
        lines += ["", *_table(("CA event", "at s", "diagnosis"),
                              [(e.get("kind"), e.get("at_s"), e.get("diagnosis"))
                               for e in events])]
    cases = gate_cases(summary)
    if cases:
        lines += ["", *_table(("gate", "verdict", "detail"),
                              [(c.name, "FAILED" if c.failed else "passed", c.message)
                               for c in cases])]
    return "\n".join(lines) + "\n"


def append_step_summary(summary: Mapping[str, Any], last_line: str | None = None,
                        environ: Mapping[str, str] = os.environ) -> Path | None:
    """Appends :func:`step_summary` to ``$GITHUB_STEP_SUMMARY`` when it is set; the path, or
    None (not set, or not writable: a log line)."""
    name = environ.get("GITHUB_STEP_SUMMARY")
    if not name:
        return None
    path = Path(name)
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(step_summary(summary, last_line) + "\n")
    except OSError as exc:
        log.warning("cannot append to GITHUB_STEP_SUMMARY %s: %s", path, exc)
        return None
    return path
