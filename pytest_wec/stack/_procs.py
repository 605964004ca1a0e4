"""Child processes of the stack: start, wait for readiness, stop, leave nothing behind.

Every child runs in its own session (so a stop reaches its whole process group), writes
its output to a log file in the run directory, and on Linux is asked to die with its
parent (``PR_SET_PDEATHSIG``), so that even a SIGKILLed controller leaves no process.
:meth:`ManagedProcess.restart` starts it again on the same argv, environment, directory and
log (appended to, after a marker line), readiness checked as at its start.
:meth:`ManagedProcess.died` tells a death (any exit that neither :meth:`~ManagedProcess.stop`
nor a restart nor an announced exit, :attr:`~ManagedProcess.quitting`, caused) once per start;
:func:`exit_words` says how a process ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pytest_wec.errors import StackError

__all__ = ["INSTALL_HINTS", "ManagedProcess", "exit_words", "find_binary", "free_port",
           "host_port", "is_loopback", "wait_for_port"]

log = logging.getLogger(__name__)

#: How each binary the stack starts is installed on Debian/Ubuntu.
INSTALL_HINTS = {
    "pebble": "sudo apt-get install pebble",
    "pebble-challtestsrv": "sudo apt-get install pebble",
    "redis-server": "sudo apt-get install redis-server",
}

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_words(returncode: int | None) -> str:
    """``killed by SIGKILL``, ``exited with status 1``, ``exited`` (status unknown)."""
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def find_binary(name: str, given: str | None = None) -> str:
    """The path of *name* (or of *given*), or a StackError naming it and how to install it."""
    candidate = given or name
    path = shutil.which(candidate)
    if path is None:
        hint = INSTALL_HINTS.get(name, "")
        how = f"; install it with: {hint}" if hint else ""
        raise StackError(f"{candidate}: not found{' on PATH' if given is None else ''}{how}")
    return path


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether *host* (an IP address or ``localhost``) is this host's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on *host* right now (the caller binds it soon after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class ManagedProcess:
    """One child process with its log file; :meth:`stop` kills its whole process group.

    ``PR_SET_PDEATHSIG`` ties the child to the *thread* that started it: start and restart
    it from a thread that lives as long as the child should.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.restarts = 0
        #: where this start's output begins in the log (the log is appended to)
        self.log_offset = 0
        self.closed = False  # stop() was called: no restart any more
        #: an exit was asked for (a goroutine dump's SIGQUIT): not a death; reset at a start
        self.quitting = False
        self.generation = 0  # starts so far, minus one
        self._reported = -1  # the generation whose death died() told
        self._lock = threading.RLock()
        self._readiness: tuple[Callable[[], bool], float, str] | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._spawn()

    def _spawn(self) -> None:
        self.quitting = False
        self._log.flush()
        self.log_offset = os.fstat(self._log.fileno()).st_size
        log.debug("starting %s: %s", self.name, " ".join(self.argv))
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self._log.close()
            raise StackError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def died(self) -> int | None:
        """The exit status (negative: the signal) when this start of the process died and
        nobody asked for it; once per start, None otherwise (also while a restart or a
        stop holds the process)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.closed or self.quitting or self._reported == self.generation:
                return None
            rc = self.proc.poll()
            if rc is None:
                return None
            self._reported = self.generation
            return rc
        finally:
            self._lock.release()

    def log_since_start(self, limit: int = 64 << 20) -> str:
        """The log's text written since the last (re)start, at most *limit* bytes."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.log_offset)
                return fh.read(limit).decode(errors="replace")
        except OSError:
            return ""

    def restart(self) -> None:
        """Stop the process if it runs and start it again on the same argv, environment,
        directory and log (appended to after a marker line); readiness is checked as at
        the start (:meth:`wait_ready`'s check). StackError when it cannot, or once
        :meth:`stop` was called."""
        with self._lock:
            if self.closed:
                raise StackError(f"{self.name}: stopped; not restarted")
            self._terminate()
            if self._log.closed:
                self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.restarts += 1
            self.generation += 1
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            self._log.write(f"\n--- wec: {self.name} restarted ({self.restarts}) at "
                            f"{stamp} UTC ---\n".encode())
            self._log.flush()
            self._spawn()
            if self._readiness is not None:
                self.wait_ready(*self._readiness)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll *check* until it is true; a StackError with the log's tail otherwise (the
        process is ended then). The check is kept for :meth:`restart`."""
        self._readiness = (check, timeout, what)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(
                    f"{self.name} exited with status {self.proc.returncode} before {what}; "
                    f"its log ({self.log_path}) ends:\n{self.tail()}"
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.05)
        self._terminate()
        if not self._log.closed:
            self._log.close()
        raise StackError(
            f"{self.name}: not ready ({what}) within {timeout:g}s; "
            f"its log ({self.log_path}) ends:\n{self.tail()}"
        )

    def wait_line(self, pattern: Callable[[str], bool], timeout: float, what: str) -> list[str]:
        """Wait until a line this start wrote to the log satisfies *pattern*; return those
        lines so far."""
        found: list[str] = []

        def check() -> bool:
            lines = self.log_since_start().splitlines()
            if any(pattern(line) for line in lines):
                found[:] = lines
                return True
            return False

        self.wait_ready(check, timeout, what)
        return found

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the process group, SIGKILL after *timeout*; idempotent. No
        :meth:`restart` after it."""
        with self._lock:
            self.closed = True
            self._terminate(timeout)
            if not self._log.closed:
                self._log.close()

    def _terminate(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
        else:
            # The leader is gone; make sure nothing it started lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
