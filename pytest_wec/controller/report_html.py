"""report.html: one self-contained page per load run (controller, ``wec report``).

Everything is inline: the vendored uPlot (``static/uPlot.iife.min.js``, MIT, see
``static/uPlot.LICENSE``), the page's own script and styles (``static/wec.js``,
``static/wec.css``) and the run's summary.json as data. The page opens from disk with no
network; its Content-Security-Policy forbids any fetch. The live dashboard
(:mod:`pytest_wec.controller.dashboard`) is drawn by the same script from the same data shapes.

``build_report(summary, settings_view)``  the page, as text
``write_report(path, summary, view)``    the same, written through a temp file and a rename
``settings_view(settings)``             a run's settings as the report shows them (secrets
                                        and URL passwords masked)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import html
import os
import secrets
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = ["REPORT_NAME", "VIEWS_HTML", "build_report", "page", "settings_view", "static_text",
           "write_report"]

REPORT_NAME = "report.html"
_SECRET_FIELDS = frozenset({"token"})
_URL_FIELDS = frozenset({"db", "redis", "directory", "challtestsrv"})
REPORT_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
              "img-src data:")

#: the charts, the chain, endpoint and phase tables, the errors and the RFC deviations, in the
#: report and the dashboard
VIEWS_HTML = """
<div class="grid2">
  <section><div class="chart-head"><h2>Throughput</h2></div>
    <div class="chart" id="chart-throughput"></div></section>
  <section><div class="chart-head"><h2>Latency of</h2>
    <select id="latency-of" aria-label="latency of"></select></div>
    <div class="chart" id="chart-latency"></div></section>
</div>
<section><h2>Chains</h2><div id="table-chains"></div></section>
<section><h2>Endpoints</h2><div id="table-endpoints"></div>
  <div id="table-connections"></div></section>
<section><h2>ACME phases</h2><div id="table-phases"></div>
  <div id="table-phase-counts"></div></section>
<section><h2>Errors by type</h2><div id="table-errors"></div></section>
<section id="deviations-section" hidden><h2>RFC deviations</h2>
  <div id="table-deviations"></div></section>
<section id="rate-limits-section" hidden><h2>Rate limits</h2>
  <div class="cards" id="rate-limit-waits"></div><div id="table-rate-limits"></div></section>
"""

_REPORT_BODY = """
<header><h1>wec load report</h1><span class="meta" id="run-meta"></span></header>
<main>
<section><h2>Totals</h2><div class="cards" id="totals"></div></section>
<section id="thresholds-section" hidden><h2>Thresholds</h2>
  <div id="table-thresholds"></div></section>
<section><h2>Warnings</h2><div id="warnings"></div></section>
<section id="ca-events-section" hidden><h2>CA events</h2><div id="table-ca-events"></div>
  </section>
<section id="stack-events-section" hidden><h2>Stack events</h2>
  <div id="table-stack-events"></div></section>
<section id="controls-section" hidden><h2>Live control</h2><div id="table-controls"></div>
  </section>
""" + VIEWS_HTML + """
<section><h2>State DB and generator</h2><div class="cards" id="state"></div></section>
<section><h2>Settings</h2><div id="table-settings"></div></section>
</main>
"""


@functools.cache
def static_text(name: str) -> str:
    """A file of the package's ``static`` folder."""
    return (resources.files("pytest_wec") / "static" / name).read_text("utf-8")


def _inline_script(text: str) -> str:
    return text.replace("</", "<\\/")


def _json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``<`` left to close it)."""
    data = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    return data.decode().replace("<", "\\u003c")


def page(title: str, body: str, data: Any, boot: str, *, csp: str) -> str:
    """A page with uPlot and wec.js inline, ``data`` as JSON in ``#wec-data``."""
    return "".join((
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{html.escape(title)}</title>\n",
        f"<style>{static_text('uPlot.min.css')}</style>\n",
        f"<style>{static_text('wec.css')}</style>\n",
        "</head><body>", body,
        f'<script type="application/json" id="wec-data">{_json(data)}</script>\n',
        f"<script>{_inline_script(static_text('uPlot.iife.min.js'))}</script>\n",
        f"<script>{_inline_script(static_text('wec.js'))}</script>\n",
        f"<script>{_inline_script(boot)}</script>\n",
        "</body></html>\n",
    ))


def build_report(summary: Mapping[str, Any], settings_view: Mapping[str, Any]) -> str:
    """report.html of a summary.json (``timeline_by`` and ``thresholds`` when present)."""
    run = summary.get("run") or {}
    title = f"wec report {run.get('id') or ''}".strip()
    data = {"summary": summary, "settings": {str(k): _show(v) for k, v in
                                             settings_view.items()}}
    boot = 'WEC.report(JSON.parse(document.getElementById("wec-data").textContent));'
    return page(title, _REPORT_BODY, data, boot, csp=REPORT_CSP)


def write_report(path: str | os.PathLike[str], summary: Mapping[str, Any],
                 settings_view: Mapping[str, Any]) -> None:
    """Writes :func:`build_report` to ``path`` through a temp file and a rename."""
    path = Path(path)
    data = build_report(summary, settings_view).encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def settings_view(settings: Any) -> dict[str, str]:
    """``--wec-x`` -> value (and where a non-default came from) of a ``Settings``."""
    sources: Mapping[str, str] = getattr(settings, "sources", {}) or {}
    out: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        if f.name == "sources":
            continue
        value = getattr(settings, f.name)
        if f.name in _SECRET_FIELDS and value:
            text = "(set)"
        elif f.name == "dashboard" and value:
            host, port = value
            text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        elif f.name in _URL_FIELDS and isinstance(value, str):
            text = _mask_url(value)
        else:
            text = _show(value)
        where = sources.get(f.name)
        out["--wec-" + f.name.replace("_", "-")] = f"{text}  ({where})" if where else text
    return out


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_show(v)}" for k, v in value.items())
    if isinstance(value, tuple | list):
        if all(isinstance(v, tuple | list) and len(v) == 2 for v in value):  # stages
            return ",".join(f"{_show(float(d))}s:{_show(float(t))}" for d, t in value)
        return ",".join(_show(v) for v in value)
    return str(value)
