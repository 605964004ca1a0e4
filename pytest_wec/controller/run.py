"""The controller: one per run (the xdist controller when ``-n`` is given).

It owns the run directory and the embedded stack, hands the stack's addresses, its resolved
settings and the CA bundle's content to xdist workers through ``workerinput`` (plain data,
so that workers on other hosts, ``--tx ssh=``/``--tx socket=``, need nothing else), prints
the effective settings in the report header and reports at the end. Workers print nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_wec.errors import StackError
from pytest_wec.settings import Settings, StackMode

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


class _TooMany(Exception):
    pass


def _source_files(config: pytest.Config, limit: int) -> Iterator[bytes]:
    """The text of each Python file under the paths pytest was pointed at (hidden folders and
    caches skipped); raises :class:`_TooMany` past *limit* files."""
    seen = 0
    for path in _paths_of_args(config):
        files = [path] if path.is_file() else (path.rglob("*.py") if path.is_dir() else [])
        for f in files:
            seen += 1
            if seen > limit:
                raise _TooMany
            if any(part.startswith(".") or part in ("node_modules", "__pycache__")
                   for part in f.parts[-4:]):
                continue
            try:
                yield f.read_bytes()
            except OSError:
                continue


def args_hold_chains(config: pytest.Config, limit: int = 5000) -> bool:
    """Whether the files pytest was pointed at define wec chains (a cheap text scan)."""
    try:
        return any(_CHAIN_SOURCE.search(text) for text in _source_files(config, limit))
    except _TooMany:
        return False


_CHAIN_DECL = re.compile(rb"^[ \t]*@(?:pytest_wec\.)?chain\(\s*([^\n]*)", re.MULTILINE)
_LITERAL_NAME = re.compile(rb"""^\s*(?:name\s*=\s*)?(["'])([^"'\\\n]+)\1""")


def chain_names_of_args(config: pytest.Config, limit: int = 5000) -> set[str] | None:
    """The chain names declared in the files pytest was pointed at (a cheap text scan);
    None when unsure: no declaration found, one without a literal name, too many files."""
    names: set[str] = set()
    try:
        for text in _source_files(config, limit):
            for decl in _CHAIN_DECL.finditer(text):
                literal = _LITERAL_NAME.match(decl.group(1))
                if literal is None:
                    return None
                names.add(literal.group(2).decode(errors="replace"))
    except _TooMany:
        return None
    return names or None


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
        self.load: Any = None  # pytest_wec.controller.collector.LoadSession in a load run
        self.dashboard: Any = None  # pytest_wec.controller.dashboard.Dashboard with --wec-dashboard
        self.summary: dict[str, Any] | None = None
        self.baseline: Any = None  # pytest_wec.controller.baseline.Baseline with --wec-compare
        self.gate_result: Any = None  # pytest_wec.controller.gating.GateResult
        self.aborted: str | None = None
        self.saved: Path | None = None
        self._store: Any = None

    # -- run directory and stack -------------------------------------------------------
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
        lines += self._listen_warnings()
        return lines

    def _listen_warnings(self) -> list[str]:
        from pytest_wec.stack._procs import is_loopback

        s = self.settings
        embedded = s.directory is None or s.redis is None or s.challtestsrv is None
        remote = [t for t in _tx_specs(self.config) if "ssh=" in t or "socket=" in t]
        if is_loopback(s.listen):
            line = (f"wec: warning: workers on other hosts ({', '.join(remote)}) cannot reach "
                    f"a stack bound to {s.listen}; give --wec-listen an address of this host "
                    "they reach") if remote and embedded else None
        else:
            line = (f"wec: warning: the challenge server's management API listens on "
                    f"{s.listen} without --wec-token; whoever reaches it can change its "
                    "answers") if s.challtestsrv is None and not s.token else None
        if line is None or s.stack is StackMode.OFF or not self.wants_stack():
            return []
        return [line]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # With xdist the stack must be up before workers are configured; without it the
        # fixtures start it on first use, in this same process. A load run always starts
        # it here, with the consumer of the workers' results.
        load = self.settings.load_mode and self.settings.stack is not StackMode.OFF
        if self.settings.load_mode and self.settings.mix:
            self._check_mix()
        if load or (_xdist_active(self.config) and self.wants_stack()):
            if load:  # usage errors of the gates before the stack's processes start
                self._prepare_gates()
            try:
                info = self.ensure_stack()
            except StackError as exc:
                raise pytest.UsageError(f"wec stack: {exc}") from None
            if load:
                self._start_load(info)
        if self.settings.dashboard is not None and not load:
            self._write_line("wec: --wec-dashboard shows load runs (--wec-load, --wec-rate or "
                             "--wec-stages, with a stack); no dashboard for this run")

    def _check_mix(self) -> None:
        # Before anything starts; under xdist a worker's collection cannot stop the run.
        known = chain_names_of_args(self.config)
        unknown = sorted(set(self.settings.mix or {}) - known) if known is not None else []
        if unknown:
            where = self.settings.sources.get("mix", "--wec-mix")
            raise pytest.UsageError(
                f"{where}: unknown chain {', '.join(map(repr, unknown))}; "
                f"chains: {', '.join(sorted(known or ()))}")

    def _write_line(self, line: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(line)

    def _workers(self) -> int:
        n = getattr(self.config.option, "numprocesses", None)
        if isinstance(n, int) and n > 0:
            return n
        if not _xdist_active(self.config):
            return 1
        count = 0
        for spec in _tx_specs(self.config):
            times, star, _ = spec.partition("*")
            count += int(times) if star and times.isdigit() else 1
        return max(count, 1)

    def _start_load(self, info: dict[str, Any]) -> None:
        from pytest_wec.controller.collector import LoadSession

        self.load = LoadSession(
            self.settings, self.run_dir, self.run_id, info["redis_url"], info["namespace"],
            info["directory"], self._workers(), self._write_line,
            state_counts=self._state_counts,
        )
        if self._gates_active():
            self.load.gate = self._gate
            if self.settings.abort_on_fail and self.settings.threshold:
                self.load.on_tick = self._abort_check
        self.load.start()
        s = self.settings
        what = (f"rate {s.rate:g}/s" + (f" (cap {s.load} in flight)" if s.load else "")
                if s.model == "open" else f"load {s.load or 0} in flight")
        if s.stages:
            what += ", stages " + ",".join(f"{d:g}s:{t:g}" for d, t in s.stages)
        self._write_line(
            f"wec: load run {self.run_id}: {what} for {s.run_length:g}s on "
            f"{self._workers()} worker(s) against {info['directory']}; results in {self.run_dir}")
        if s.dashboard is not None:
            self._start_dashboard(*s.dashboard)

    def _start_dashboard(self, host: str, port: int) -> None:
        from pytest_wec.controller.dashboard import Dashboard, is_loopback

        # reachable from other hosts: only with the token printed in the URL
        token = None if is_loopback(host) else secrets.token_urlsafe(16)
        dashboard = Dashboard(self.load, host, port, token=token)
        try:
            url = dashboard.start()
        except OSError as exc:
            raise pytest.UsageError(f"--wec-dashboard: cannot listen on {host}:{port}: "
                                    f"{exc.strerror or exc}") from None
        self.dashboard = dashboard
        self._write_line(f"wec: dashboard {url}")

    # -- CI gating (thresholds, baselines) ------------------------------------------------
    def _prepare_gates(self) -> None:
        """Before any load: a baseline that cannot be found is a usage error now."""
        s = self.settings
        if s.compare_fail and not s.compare:
            raise pytest.UsageError("--wec-compare-fail: needs --wec-compare (a baseline)")
        if s.compare:
            from pytest_wec.controller.baseline import load_baseline
            from pytest_wec.errors import BaselineError

            try:
                self.baseline = load_baseline(s.compare, self._storage())
            except BaselineError as exc:
                raise pytest.UsageError(f"--wec-compare: {exc}") from None

    def _storage(self) -> Path:
        p = Path(self.settings.storage)
        return p if p.is_absolute() else Path(self.config.invocation_params.dir) / p

    def _gates_active(self) -> bool:
        s = self.settings
        return bool(s.threshold or s.compare)

    def _gate(self, summary: dict[str, Any]) -> None:
        from pytest_wec.controller.gating import gate

        s = self.settings
        result = gate(summary, s.threshold, self.baseline, s.compare_fail or (),
                      aborted=self.aborted)
        summary["thresholds"] = [v.to_dict() for v in result.verdicts]
        if self.baseline is not None or self.aborted:
            summary["gate"] = result.to_dict()
        self.gate_result = result

    def _abort_check(self, live: dict[str, Any], elapsed: float) -> None:
        if self.aborted is not None or self.load is None:
            return
        from pytest_wec.controller.gating import doomed

        bad = doomed(self.settings.threshold, live, elapsed, self.settings.run_length)
        if bad:
            v = bad[0]
            self.aborted = f"{v.expr} can no longer pass ({v.reason or v.value_text})"
            self._write_line(f"wec: aborting the run: {self.aborted}")
            self.load.request_stop(by="--wec-abort-on-fail")

    def _state_counts(self) -> dict[str, int]:
        if self._store is None:
            from pytest_wec.state import make_store
            from pytest_wec.worker.runtime import db_url_for

            self._store = make_store(db_url_for(self.settings, str(self.run_dir)))
        c = self._store.counts(self.stack.info["directory"])
        return {"accounts": c.accounts, "authorizations": c.authorizations,
                "certificates": c.certificates, "revoked": c.revoked}

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        # A signal to this process alone (kill, CI) does not reach the xdist workers, whose
        # load would run on until xdist kills them: stop them as the dashboard does.
        if self.load is not None and self.stack is not None:
            from pytest_wec.wire.control import ControlWriter

            try:
                writer = ControlWriter(self.stack.info["redis_url"], self.stack.info["namespace"])
                try:
                    writer.stop()
                finally:
                    writer.close()
            except Exception as exc:
                log.warning("cannot tell the workers to stop: %s", exc)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Any:
        yield
        if self.load is not None:
            self.summary = self.load.finish(timeout=self.settings.grace + 30)
            if self.gate_result is not None:
                session.exitstatus = self.gate_result.exit_status(int(session.exitstatus))
            if self.settings.save:
                self._save_baseline()

    def _save_baseline(self) -> None:
        from pytest_wec.controller.baseline import save_baseline
        from pytest_wec.errors import BaselineError

        name = self.settings.save
        assert name is not None
        try:
            self.saved = save_baseline(self.load.benchmark_path, name, self._storage())
        except (OSError, BaselineError) as exc:
            self._write_line(f"wec: cannot save the baseline {self.settings.save!r}: {exc}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self.load is not None:
            self.load.finish(timeout=5)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._store is not None:
            self._store.close()
        self.stop_stack()
        # the gates' verdict is the last thing printed, after pytest's own summary line
        line = self.gate_result.line() if self.gate_result is not None else None
        if line:
            tr = config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(line, bold=True, red=line.startswith("wec: FAILED"),
                              green=line.startswith("wec: PASSED"))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.load is not None and self.summary is not None:
            tr.section("wec load results")
            for line in self.load.tables().splitlines():
                tr.write_line(line)
            tr.write_line(f"wec: results log  {self.load.log_path}")
            tr.write_line(f"wec: benchmark    {self.load.benchmark_path}")
            tr.write_line(f"wec: summary      {self.load.summary_path}")
            if self.saved is not None:
                tr.write_line(f"wec: baseline     {self.saved}")
            tr.write_line(f"wec: report       {self.load.report_path}")
            if self.gate_result is not None:
                text = self.gate_result.text()
                if text:
                    tr.section("wec gates")
                    for line in text.splitlines():
                        tr.write_line(line)
        elif self.stack is not None:
            tr.write_line(f"wec: run {self.run_id}; logs in {self.run_dir}")


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _tx_specs(config: pytest.Config) -> list[str]:
    return [str(t) for t in getattr(config.option, "tx", None) or ()]


def _xdist_active(config: pytest.Config) -> bool:
    """Whether xdist distributes: ``-n N``, or ``--tx`` with a ``--dist`` mode (xdist's rule;
    ``--tx`` alone runs nothing remotely)."""
    n = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    return bool(n) or (bool(_tx_specs(config)) and dist not in (None, "no"))


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
        # the controller's resolved settings: env vars and ini do not reach other hosts
        node.workerinput["wec_settings"] = c.settings.to_plain()
        node.workerinput["wec_ca_pem"] = _read_text(
            c.stack.info.get("ca_bundle") if c.stack is not None else c.settings.ca_bundle)


def _read_text(path: str | None) -> str | None:
    """A small PEM file's text, for workers on hosts that do not have the file."""
    if not path:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
