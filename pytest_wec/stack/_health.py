"""How the embedded Pebble is doing, asked from the outside and from Pebble itself.

:func:`process_state` reads ``/proc/PID/stat`` (the state letter, the CPU seconds used);
:func:`probe_pebble` asks Pebble over HTTP, each step bounded by its own timeout:

- ``GET /dir``: the WFE answers at all (served without Pebble's MemoryStore);
- ``GET newNonce``: a fresh nonce (no store either);
- ``POST newAccount`` with a new key and ``onlyReturnExisting``: the handler looks the key up
  in the MemoryStore (its read lock), so the answer (``accountDoesNotExist``, and nothing is
  created) proves the store usable, and no answer while ``GET /dir`` answers shows the store
  locked up, as in Pebble 2.4's lock-order deadlock.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PebbleProbe", "probe_pebble", "process_state"]

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_state(pid: int) -> tuple[str | None, float | None]:
    """``(state letter, CPU seconds)`` of *pid* from /proc (``R``, ``S``, ``D``, ``T``
    stopped, ``t`` traced, ``Z`` zombie...); ``(None, None)`` when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    try:
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
    except (IndexError, ValueError):
        cpu = None
    return fields[0], cpu


@dataclass
class PebbleProbe:
    """What one probe saw; ``*_ms`` is None when that step got no answer."""

    state: str | None = None
    dir_ms: float | None = None
    nonce_ms: float | None = None
    post_ms: float | None = None
    post_status: int | None = None
    post_problem: str | None = None
    error: str | None = None  # the first step that got no answer, and why
    cpu_s: float | None = None  # CPU seconds Pebble used during the probe

    @property
    def stopped(self) -> bool:
        return self.state in ("T", "t")

    @property
    def gone(self) -> bool:
        return self.state is None or self.state in ("Z", "X")

    @property
    def answers_get(self) -> bool:
        return self.dir_ms is not None

    @property
    def answers_post(self) -> bool:
        return self.post_ms is not None

    def view(self) -> dict[str, Any]:
        """Plain data (summary.json's ``ca_events``)."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {"state": self.state, "dir_ms": r(self.dir_ms), "nonce_ms": r(self.nonce_ms),
                "post_ms": r(self.post_ms), "post_status": self.post_status,
                "post_problem": self.post_problem, "error": self.error, "cpu_s": self.cpu_s}

    def words(self) -> str:
        """The probe in a few words, for a diagnosis."""
        parts = []
        parts.append(f"GET /dir {_ms(self.dir_ms)}")
        if self.dir_ms is not None:
            parts.append(f"GET newNonce {_ms(self.nonce_ms)}")
        if self.nonce_ms is not None:
            parts.append(f"POST newAccount {_ms(self.post_ms)}")
        return ", ".join(parts)


def _ms(value: float | None) -> str:
    return "no answer" if value is None else f"answered in {value:.0f} ms"


class _Conn:
    """One HTTPS connection to Pebble's WFE, each exchange bounded by *timeout*."""

    def __init__(self, url: str, ca_bundle: str | None, insecure: bool) -> None:
        parts = urlsplit(url)
        ctx = ssl.create_default_context(cafile=ca_bundle)
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.ctx = ctx

    def request(self, method: str, url: str, timeout: float, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=timeout)
        try:
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request(method, path or "/", body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read(65536)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            with contextlib.suppress(Exception):
                conn.close()


def probe_pebble(directory: str, ca_bundle: str | None, pid: int | None, *,
                 timeout: float = 3.0, get_timeout: float = 2.0,
                 insecure: bool = False) -> PebbleProbe:
    """Ask Pebble (see the module's doc); every step within its timeout, so the whole probe
    takes at most ``2 * get_timeout + timeout`` seconds plus the key's generation."""
    from pytest_wec.acme import AccountKey

    probe = PebbleProbe()
    cpu0: float | None = None
    if pid is not None:
        probe.state, cpu0 = process_state(pid)
    conn = _Conn(directory, ca_bundle, insecure)
    t = time.perf_counter()
    try:
        status, _, body = conn.request("GET", directory, get_timeout)
        probe.dir_ms = (time.perf_counter() - t) * 1e3
        urls = json.loads(body) if status == 200 else {}
        new_nonce, new_account = urls.get("newNonce"), urls.get("newAccount")
        if not (isinstance(new_nonce, str) and isinstance(new_account, str)):
            probe.error = f"GET /dir: HTTP {status} without newNonce and newAccount"
            return probe
        t = time.perf_counter()
        status, headers, _ = conn.request("GET", new_nonce, get_timeout)
        probe.nonce_ms = (time.perf_counter() - t) * 1e3
        nonce = headers.get("replay-nonce")
        if not nonce:
            probe.error = f"GET newNonce: HTTP {status} without a Replay-Nonce"
            return probe
        jws = AccountKey.generate("ES256").sign(
            new_account, {"onlyReturnExisting": True, "termsOfServiceAgreed": True}, nonce,
            None)
        t = time.perf_counter()
        status, headers, body = conn.request(
            "POST", new_account, timeout, jws, {"Content-Type": "application/jose+json"})
        probe.post_ms = (time.perf_counter() - t) * 1e3
        probe.post_status = status
        with contextlib.suppress(ValueError, AttributeError):
            probe.post_problem = str(json.loads(body).get("type") or "") or None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        step = ("GET /dir" if probe.dir_ms is None else "GET newNonce" if probe.nonce_ms is None
                else "POST newAccount")
        probe.error = f"{step}: {type(exc).__name__}: {exc}"
    finally:
        if pid is not None:
            state, cpu1 = process_state(pid)
            probe.state = state or probe.state
            if cpu0 is not None and cpu1 is not None:
                probe.cpu_s = round(cpu1 - cpu0, 3)
    log.info("Pebble probe: state %s, %s (%s)", probe.state, probe.words(), probe.error or "ok")
    return probe
