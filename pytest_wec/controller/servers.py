"""The servers a load run may open beside the load (controller): the live dashboard
(``--wec-dashboard``) and Prometheus' ``/metrics`` (``--wec-metrics``); and the OTLP push
(``--wec-otlp``).

Both servers follow one rule: bound to a loopback address they answer only loopback names;
bound elsewhere they need a random token, printed with their URL. An address that cannot be
had is a usage error, and so is an option whose optional extra is not installed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from pytest_wec.controller.dashboard import is_loopback

__all__ = ["start_dashboard", "start_metrics", "start_otlp"]


def _token(host: str) -> str | None:
    return None if is_loopback(host) else secrets.token_urlsafe(16)


def start_metrics(host: str, port: int, write_line: Callable[[str], None]) -> Any:
    """A started :class:`~pytest_wec.controller.metrics.MetricsServer` (a run attaches to it
    once it starts); before the stack starts, so that a bad port stops nothing."""
    from pytest_wec.controller.metrics import MetricsServer, available

    if not available():
        raise pytest.UsageError("--wec-metrics needs prometheus_client: pip install "
                                "'pytest-wec[metrics]'")
    token = _token(host)
    server = MetricsServer(host, port, token=token)
    try:
        url = server.start()
    except OSError as exc:
        raise pytest.UsageError(f"--wec-metrics: cannot listen on {host}:{port}: "
                                f"{exc.strerror or exc}") from None
    write_line(f"wec: metrics {url}" + (f" (Authorization: Bearer {token})" if token else ""))
    return server


def start_otlp(url: str, interval: float, write_line: Callable[[str], None]) -> Any:
    """An :class:`~pytest_wec.controller.otlp.OtlpExporter` for ``url`` (a run attaches to
    it once it starts); before the stack starts, so that a missing extra stops nothing."""
    from pytest_wec.controller.otlp import OtlpExporter, available, shown

    if not available():
        raise pytest.UsageError("--wec-otlp needs the OpenTelemetry SDK and its OTLP/HTTP "
                                "exporter: pip install 'pytest-wec[otlp]'")
    try:
        exporter = OtlpExporter(url, interval, write_line=write_line)
    except Exception as exc:  # the SDK's own settings (OTEL_EXPORTER_OTLP_*) it rejects
        raise pytest.UsageError(f"--wec-otlp: {exc}") from None
    write_line(f"wec: otlp {shown(url)} every {interval:g}s")
    return exporter


def start_dashboard(session: Any, host: str, port: int,
                    write_line: Callable[[str], None]) -> Any:
    """A started :class:`~pytest_wec.controller.dashboard.Dashboard` of ``session``."""
    from pytest_wec.controller.dashboard import Dashboard

    dashboard = Dashboard(session, host, port, token=_token(host))  # the token in its URL
    try:
        url = dashboard.start()
    except OSError as exc:
        raise pytest.UsageError(f"--wec-dashboard: cannot listen on {host}:{port}: "
                                f"{exc.strerror or exc}") from None
    write_line(f"wec: dashboard {url}")
    return dashboard
