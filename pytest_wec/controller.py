"""The controller: one per run (the xdist controller when ``-n`` is given).

It owns the run directory and the embedded stack, hands the stack's addresses to xdist
workers through ``workerinput``, prints the effective settings in the report header and
reports at the end. Workers print nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_wec._settings import Settings, StackMode
from pytest_wec.errors import StackError

log = logging.getLogger(__name__)

_CHAIN_SOURCE = re.compile(
    rb"^(?:@chain\(|@pytest_wec\.chain\(|from pytest_wec(?:\.chain)? import [^\n]*\bchain\b)",
    re.MULTILINE,
)


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _paths_of_args(config: pytest.Config) -> list[Path]:
    paths: list[Path] = []
    args = config.args or [str(config.invocation_params.dir)]
    for arg in args:
        base = arg.split("::", 1)[0]
        if config.option.pyargs:
            import importlib.util

            try:
                spec = importlib.util.find_spec(base)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin:
                origin = Path(spec.origin)
                paths.append(origin.parent if origin.name == "__init__.py" else origin)
                continue
        p = Path(base)
        if not p.is_absolute():
            p = Path(config.invocation_params.dir) / p
        paths.append(p)
    return paths


def args_hold_chains(config: pytest.Config, limit: int = 5000) -> bool:
    """Whether the files pytest was pointed at define wec chains (a cheap text scan)."""
    seen = 0
    for path in _paths_of_args(config):
        files = [path] if path.is_file() else (path.rglob("*.py") if path.is_dir() else [])
        for f in files:
            seen += 1
            if seen > limit:
                return False
            if any(part.startswith(".") or part in ("node_modules", "__pycache__")
                   for part in f.parts[-4:]):
                continue
            try:
                if _CHAIN_SOURCE.search(f.read_bytes()):
                    return True
            except OSError:
                continue
    return False


class WecController:
    """The run's state on the controller process."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.run_id = new_run_id()
        self._run_dir: Path | None = None
        self.stack: Any = None  # pytest_wec.stack.Stack, imported lazily
        self.stack_error: str | None = None
        self._old_sigterm: Any = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM ends the run as Ctrl-C does: outputs complete, the stack stopped
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        self.load: Any = None  # pytest_wec.loadsession.LoadSession in a load run
        self.summary: dict[str, Any] | None = None
        self._store: Any = None

    # -- run directory and stack -------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            if self.settings.out:
                d = Path(self.settings.out)
            else:
                d = Path(self.config.invocation_params.dir) / "wec-results" / self.run_id
            try:
                d.mkdir(parents=True, exist_ok=True)
                probe = d / ".wec-write-probe"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise pytest.UsageError(
                    f"--wec-out: cannot write to {d}: {exc.strerror or exc}") from None
            self._run_dir = d
        return self._run_dir

    def wants_stack(self) -> bool:
        mode = self.settings.stack
        if mode is StackMode.OFF:
            return False
        if mode is StackMode.ON:
            return True
        return args_hold_chains(self.config)

    def ensure_stack(self) -> dict[str, Any]:
        """Start the stack once; return its plain-data info."""
        if self.stack is None:
            if self.stack_error is not None:
                raise StackError(self.stack_error)
            from pytest_wec.stack import Stack

            try:
                self.stack = Stack.start(self.settings, self.run_dir, self.run_id)
            except StackError as exc:
                self.stack_error = str(exc)
                raise
        info: dict[str, Any] = dict(self.stack.info)
        return info

    def stop_stack(self) -> None:
        if self.stack is not None:
            self.stack.stop()

    # -- hooks -----------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        s = self.settings
        ca = s.directory or "embedded Pebble"
        lines = [
            f"wec: run {self.run_id}; CA {ca}; challenge {s.challenge}; domain {s.domain}; "
            f"account key {s.account_key.value}; cert key {s.cert_key}; "
            f"transport {s.transport}; stack {s.stack.value}",
        ]
        given = ", ".join(f"{k} from {v}" for k, v in sorted(s.sources.items()))
        if given:
            lines.append(f"wec: settings given: {given}")
        return lines

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # With xdist the stack must be up before workers are configured; without it the
        # fixtures start it on first use, in this same process. A load run always starts
        # it here, with the consumer of the workers' results.
        load = self.settings.load_mode and self.settings.stack is not StackMode.OFF
        if load or (_xdist_active(self.config) and self.wants_stack()):
            try:
                info = self.ensure_stack()
            except StackError as exc:
                raise pytest.UsageError(f"wec stack: {exc}") from None
            if load:
                self._start_load(info)

    def _write_line(self, line: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(line)

    def _workers(self) -> int:
        n = getattr(self.config.option, "numprocesses", None)
        if isinstance(n, int) and n > 0:
            return n
        tx = getattr(self.config.option, "tx", None)
        return len(tx) if tx else 1

    def _start_load(self, info: dict[str, Any]) -> None:
        from pytest_wec.loadsession import LoadSession

        self.load = LoadSession(
            self.settings, self.run_dir, self.run_id, info["redis_url"], info["namespace"],
            info["directory"], self._workers(), self._write_line,
            state_counts=self._state_counts,
        )
        self.load.start()
        s = self.settings
        what = (f"rate {s.rate:g}/s" + (f" (cap {s.load} in flight)" if s.load else "")
                if s.model == "open" else f"load {s.load or 0} in flight")
        if s.stages:
            what += ", stages " + ",".join(f"{d:g}s:{t:g}" for d, t in s.stages)
        self._write_line(
            f"wec: load run {self.run_id}: {what} for {s.run_length:g}s on "
            f"{self._workers()} worker(s) against {info['directory']}; results in {self.run_dir}")

    def _state_counts(self) -> dict[str, int]:
        if self._store is None:
            from pytest_wec.state import make_store
            from pytest_wec.worker import db_url_for

            self._store = make_store(db_url_for(self.settings, str(self.run_dir)))
        c = self._store.counts(self.stack.info["directory"])
        return {"accounts": c.accounts, "authorizations": c.authorizations,
                "certificates": c.certificates, "revoked": c.revoked}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Any:
        yield
        if self.load is not None:
            self.summary = self.load.finish(timeout=self.settings.grace + 30)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self.load is not None:
            self.load.finish(timeout=5)
        if self._store is not None:
            self._store.close()
        self.stop_stack()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.load is not None and self.summary is not None:
            tr.section("wec load results")
            for line in self.load.tables().splitlines():
                tr.write_line(line)
            tr.write_line(f"wec: results log  {self.load.log_path}")
            tr.write_line(f"wec: benchmark    {self.load.benchmark_path}")
            tr.write_line(f"wec: summary      {self.load.summary_path}")
        elif self.stack is not None:
            tr.write_line(f"wec: run {self.run_id}; logs in {self.run_dir}")


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _xdist_active(config: pytest.Config) -> bool:
    n = getattr(config.option, "numprocesses", None)
    tx = getattr(config.option, "tx", None)
    dist = getattr(config.option, "dist", "no")
    return bool(n) or bool(tx) or (dist not in (None, "no"))


class XdistHooks:
    """xdist-only hooks, registered only when xdist is present (``-p no:xdist`` works)."""

    def __init__(self, controller: WecController) -> None:
        self.controller = controller

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        c = self.controller
        node.workerinput["wec_run_id"] = c.run_id
        node.workerinput["wec_stack"] = dict(c.stack.info) if c.stack is not None else None
        node.workerinput["wec_stack_error"] = c.stack_error
        node.workerinput["wec_run_dir"] = str(c.run_dir) if c._run_dir is not None else None
        node.workerinput["wec_environ_pid"] = os.getpid()
