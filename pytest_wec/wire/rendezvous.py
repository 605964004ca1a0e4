"""The rendezvous between workers and the controller: the stack on demand, the load barrier.

The controller listens on one TCP port (``--wec-listen``'s address, so that workers on other
hosts reach it too) and hands its address and a random token to every worker through
``workerinput``. Two requests, one JSON object per line each way::

    {"v": 1, "token": T, "op": "stack", "worker": "gw3"}
        -> {"ok": true, "stack": {...StackInfo as gw3 uses it...}, "ca_pem": "..." | null}
        -> {"ok": false, "error": "pebble: not found ..."}
    {"v": 1, "token": T, "op": "ready", "worker": "gw3"}
        -> {"ok": true, "start_in": 0.25, "load_started": 1764650000.25}   (at the barrier)

``stack`` starts the embedded stack the first time any worker asks for it: a run starts
its CA stack exactly when a test that needs it runs, however its chains were declared (a
helper, an alias, another plugin), and never for a suite without chains. ``ready`` answers
when every worker of the run is ready to start its share of the load (or the barrier's
timeout passed, or the missing workers went down): all workers are answered at one
instant and start ``start_in`` seconds later, so that the load starts everywhere at once
and the run's duration counts from then.

This module is the protocol and the worker's end (:func:`ask`); the controller's end is
:mod:`pytest_wec.controller.rendezvous`.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

__all__ = ["MAX_LINE", "VERSION", "RendezvousError", "ask", "read_line", "write_line"]

VERSION = 1
MAX_LINE = 1 << 20  # a StackInfo with its CA bundle fits many times over


class RendezvousError(Exception):
    """The controller could not be asked, or answered with an error."""


def write_line(sock: socket.socket, obj: Any) -> None:
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def read_line(sock: socket.socket, deadline: float) -> Any:
    """One JSON line from *sock* before the monotonic *deadline*; RendezvousError on a
    timeout, a closed connection, an overlong line or a line that is not JSON."""
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RendezvousError("no answer in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise RendezvousError("no answer in time") from None
        if not chunk:
            raise RendezvousError("the connection closed before a whole line")
        end = chunk.find(b"\n")
        if end >= 0:
            buf += chunk[:end]
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise RendezvousError("a line over the size limit")
    if len(buf) > MAX_LINE:
        raise RendezvousError("a line over the size limit")
    try:
        return json.loads(buf)
    except ValueError:
        raise RendezvousError("a line that is not JSON") from None


def ask(address: str, token: str, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
    """Send one request to the controller at *address* (``host:port``) and return its answer;
    RendezvousError when it cannot be reached within *timeout* or answers an error."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, int(port)), timeout=min(timeout, 10.0))
    except (OSError, ValueError) as exc:
        raise RendezvousError(f"cannot reach the controller at {address}: {exc}") from None
    with sock:
        try:
            write_line(sock, {"v": VERSION, "token": token, "op": op, **fields})
        except OSError as exc:
            raise RendezvousError(f"cannot ask the controller at {address}: {exc}") from None
        try:
            answer = read_line(sock, deadline)
        except OSError as exc:
            raise RendezvousError(f"the controller at {address}: {exc}") from None
    if not isinstance(answer, dict):
        raise RendezvousError(f"the controller at {address} answered {answer!r}")
    if not answer.get("ok"):
        raise RendezvousError(str(answer.get("error") or "the controller refused"))
    return answer
