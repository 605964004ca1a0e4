"""The controller's end of the rendezvous (:mod:`pytest_wec.wire.rendezvous`).

:class:`Rendezvous` listens on one TCP port, one thread per connection, and answers:

``stack``  by starting the embedded stack on the first request (``start_stack``, under a
           lock; every later request gets the same answer, a failure included);
``ready``  once all expected workers said ready, or ``barrier_timeout`` seconds after the
           first one did, or when the workers still missing went down: every waiting
           worker is answered at the same instant with ``start_in`` seconds to wait, so that
           the load starts at one common instant (``load_started``, epoch seconds).

Every wait is bounded; a malformed request gets an error line and the connection closes.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pytest_wec.wire.rendezvous import VERSION, RendezvousError, read_line, write_line

__all__ = ["BARRIER_TIMEOUT", "START_IN", "Rendezvous"]

log = logging.getLogger(__name__)

#: seconds the barrier waits, after the first worker is ready, for the others
BARRIER_TIMEOUT = 120.0
#: seconds between the barrier's answer and the common start: absorbs the answers' delivery
START_IN = 0.25
_REQUEST_TIMEOUT = 10.0  # for a connection to send its request line


class Rendezvous:
    """Stack on demand and the load barrier for one run."""

    def __init__(self, host: str, start_stack: Callable[[], tuple[dict[str, Any], str | None]],
                 *, workers: int = 1, barrier_timeout: float = BARRIER_TIMEOUT,
                 start_in: float = START_IN, token: str | None = None) -> None:
        self.host = host
        self.token = token or secrets.token_urlsafe(16)
        self._start_stack = start_stack
        self.workers = max(workers, 1)
        self.barrier_timeout = barrier_timeout
        self.start_in = start_in
        self._stack_lock = threading.Lock()
        self._stack_answer: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._ready: dict[str, float] = {}  # worker -> monotonic time it said ready
        self._down: set[str] = set()
        self.load_started: float | None = None  # epoch seconds of the common start
        self.late: list[str] = []  # workers ready after the barrier opened
        self.missing: list[str] = []  # expected but absent when it opened on its timeout
        self.on_open: Callable[[float], None] | None = None
        #: the stack's info as one worker uses it (its group's Pebble), when set
        self.shape: Callable[[str], dict[str, Any]] | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Listen; return the address workers are given (``host:port``)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="wec-rendezvous",
                                        daemon=True)
        self._thread.start()
        return self.address

    @property
    def address(self) -> str:
        assert self._sock is not None
        port = self._sock.getsockname()[1]
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._thread is not None:
            self._thread.join(2.0)

    # -- the barrier -----------------------------------------------------------------------

    def worker_down(self, worker: str) -> None:
        """A worker ended (xdist's node down): the barrier no longer waits for it."""
        with self._cond:
            self._down.add(worker)
            self._cond.notify_all()

    def _barrier_due(self, now: float) -> bool:
        if self.load_started is not None:
            return True
        if len(self._ready) + len(self._down - set(self._ready)) >= self.workers:
            return True
        first = min(self._ready.values(), default=None)
        return first is not None and now - first >= self.barrier_timeout

    def ready_epochs(self) -> dict[str, float]:
        """When each worker said ready (epoch seconds), those ready so far."""
        with self._cond:
            offset = time.time() - time.monotonic()
            return {w: m + offset for w, m in self._ready.items()}

    def _open(self, now: float) -> None:
        self.load_started = time.time() + self.start_in
        if len(self._ready) < self.workers:
            self.missing = [f"{self.workers - len(self._ready)} worker(s)"]
        self._cond.notify_all()
        if self.on_open is not None:
            try:
                self.on_open(self.load_started)
            except Exception:
                log.exception("the barrier's callback failed")

    def ready(self, worker: str, timeout: float) -> float:
        """Block until the barrier opens (or *timeout*); the common start (epoch)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self.load_started is not None:
                self.late.append(worker)
                return self.load_started
            self._ready.setdefault(worker, time.monotonic())
            while True:
                now = time.monotonic()
                if self._barrier_due(now):
                    if self.load_started is None:
                        self._open(now)
                    assert self.load_started is not None
                    return self.load_started
                if self._closed.is_set() or now >= deadline:
                    raise RendezvousError("the load barrier did not open in time")
                first = min(self._ready.values())
                wake = min(deadline, first + self.barrier_timeout) - now
                self._cond.wait(max(min(wake, 1.0), 0.01))

    # -- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="wec-rendezvous-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = read_line(conn, time.monotonic() + _REQUEST_TIMEOUT)
                answer = self._answer(request)
            except RendezvousError as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            except Exception as exc:  # the server must outlive any request
                log.exception("rendezvous request failed")
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.settimeout(_REQUEST_TIMEOUT)
                write_line(conn, answer)

    def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or request.get("v") != VERSION:
            return {"ok": False, "error": f"bad request: expected a version {VERSION} object"}
        if not secrets.compare_digest(str(request.get("token", "")), self.token):
            return {"ok": False, "error": "bad token"}
        op = request.get("op")
        if op == "stack":
            answer = self.stack_answer()
            worker = request.get("worker")
            if answer.get("ok") and self.shape is not None and isinstance(worker, str):
                answer = {**answer, "stack": self.shape(worker)}
            return answer
        if op == "ready":
            worker = request.get("worker")
            if not isinstance(worker, str) or not worker:
                return {"ok": False, "error": "bad request: ready needs a worker name"}
            timeout = self.barrier_timeout * 2 + 60.0
            started = self.ready(worker, timeout)
            return {"ok": True, "load_started": started, "start_in": started - time.time()}
        return {"ok": False, "error": f"bad request: unknown op {op!r}"}

    def stack_answer(self) -> dict[str, Any]:
        """Start the stack once; the same answer for every caller (a failure included)."""
        with self._stack_lock:
            if self._stack_answer is None:
                try:
                    info, pem = self._start_stack()
                    self._stack_answer = {"ok": True, "stack": info, "ca_pem": pem}
                except Exception as exc:
                    self._stack_answer = {"ok": False, "error": str(exc)}
            return self._stack_answer
