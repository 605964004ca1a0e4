"""The embedded stack, started once per run by the controller process.

    Stack.start(settings, run_dir, run_id, pebbles=1)   redis-server, challenge server, Pebble(s)
    stack.shards                                         one view per embedded Pebble
    stack.info                                           plain data for xdist workers
    stack.dump_pebble()                                  its goroutine dump (SIGQUIT; it exits)
    stack.restart_pebble()                               the embedded Pebble started again
    stack.stop()                                         everything, idempotent

Only what the user did not give by URL is started: ``--wec-redis`` replaces redis-server,
``--wec-challtestsrv`` the challenge server, ``--wec-directory`` Pebble. What is started binds
``--wec-listen`` (default 127.0.0.1) only, and the URLs in :class:`StackInfo` name that
address, so that workers on other hosts reach them when it is not loopback.

:meth:`Stack.restart_pebble` starts the embedded Pebble again on the same config (so the same
listen addresses, WFE certificate and CA bundle) and environment; Pebble keeps no state, so
its accounts, orders, authorizations and certificates are gone and its issuing roots are new.

A load run may spread over several embedded Pebbles (``pebbles``, ``--wec-pebbles``), one per
group of workers: they share the challenge server, Redis and the WFE's TLS material, each
has its own listeners, config (``pebble-config-N.json``) and log (``pebble-N.log``), and
``info["shards"]`` lists them; :meth:`Stack.info_for` is the info a given worker uses
(worker *i* of the run takes Pebble ``i % pebbles``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from pytest_wec.errors import StackError
from pytest_wec.settings import Settings
from pytest_wec.stack._challsrv import challtestsrv_ports, start_challenge_server
from pytest_wec.stack._dump import dump_text
from pytest_wec.stack._eab import redacted, stack_eab
from pytest_wec.stack._pebble import start_pebble
from pytest_wec.stack._procs import ManagedProcess, find_binary, is_loopback
from pytest_wec.stack._redis import start_redis

if TYPE_CHECKING:  # the checkout's folder; installed as pytest_wec_challenge_srv (_shipped.py)
    from challenge_srv.store import redact_url
else:
    from pytest_wec_challenge_srv.store import redact_url

__all__ = ["PebbleShard", "Stack", "StackInfo", "against", "pebble_count"]

log = logging.getLogger(__name__)


class StackInfo(TypedDict):
    """What a worker needs to reach the stack (crosses process boundaries as plain data)."""

    run_id: str
    run_dir: str
    directory: str
    ca_bundle: str | None
    insecure: bool
    redis_url: str | None
    namespace: str
    challtestsrv: str | None  # management API to publish through; None: Redis publisher
    pebble_management: str | None
    dns: str | None  # the challenge server's DNS address, host:port
    challenge_management: str | None  # the embedded challenge server's management API
    challenge_ip: str | None  # where the embedded challenge server answers (IP identifiers)
    #: host:port of each listener of the embedded challenge server (``http-01``,
    #: ``tls-alpn-01``, ``dns``, ``management``); empty with a challtestsrv
    challenge_addresses: dict[str, str]
    embedded: bool  # the CA is the embedded Pebble
    shards: list[dict[str, str]]  # each embedded Pebble: directory, pebble_management
    #: External Account Binding keys for new accounts (``EabKeys.to_plain``), or None
    eab: dict[str, Any] | None


def pebble_count(settings: Settings, workers: int) -> int:
    """How many embedded Pebbles a run spreads over (``--wec-pebbles``): auto is one per 50
    chains in flight (25 starts/s in the open model) of a load run, at most one per worker;
    1 otherwise. Debian's Pebble 2.4 deadlocks when many requests run at once
    (docs/load-mode.md, "CA events")."""
    s = settings
    if not s.load_mode or s.directory is not None:
        return 1
    if s.pebbles is not None:
        return max(1, min(s.pebbles, workers))
    if s.stages:
        peak = max(t for _, t in s.stages)
    else:
        peak = float((s.rate if s.model == "open" else s.load) or 0)
    per = 25.0 if s.model == "open" else 50.0
    return max(1, min(workers, math.ceil(peak / per)))


def against(info: StackInfo | dict[str, Any]) -> str:
    """The CA a run loads, in words: its directory, or the embedded Pebbles'."""
    shards = info.get("shards") or []
    if len(shards) <= 1:
        return str(info["directory"])
    return (f"{len(shards)} embedded Pebbles, one per group of workers (--wec-pebbles): "
            + ", ".join(s["directory"] for s in shards))


class Stack:
    """The processes of one run; :meth:`stop` ends them all (also at interpreter exit)."""

    def __init__(self, info: StackInfo, procs: list[ManagedProcess]) -> None:
        self.info = info
        self.procs = procs
        atexit.register(self.stop)

    @classmethod
    def start(cls, settings: Settings, run_dir: Path, run_id: str, pebbles: int = 1) -> Stack:
        procs: list[ManagedProcess] = []
        # absolute: the processes run in it, and their configs name files in it
        run_dir = run_dir.absolute()
        try:
            return cls._start(settings, run_dir, run_id, procs, max(pebbles, 1))
        except BaseException:
            for p in reversed(procs):
                p.stop()
            raise

    @classmethod
    def _start(
        cls, settings: Settings, run_dir: Path, run_id: str, procs: list[ManagedProcess],
        pebbles: int,
    ) -> Stack:
        run_dir.mkdir(parents=True, exist_ok=True)
        # every binary first: a missing one fails before anything starts
        if settings.redis is None:
            find_binary("redis-server")
        if settings.directory is None:
            find_binary("pebble", settings.pebble_bin)
        redis_url = settings.redis
        if redis_url is None:
            proc, redis_url = start_redis(run_dir, host=settings.listen)
            procs.append(proc)
        challtestsrv = settings.challtestsrv
        fixed = settings.challenge_ports.ports if settings.challenge_ports else None
        challenge_mgmt: str | None = None
        challenge_addresses: dict[str, str] = {}
        if challtestsrv is not None:
            http_port, tls_port, dns = challtestsrv_ports(challtestsrv, fixed)
        else:
            if not is_loopback(settings.listen) and not settings.token:
                log.warning("the challenge server's management API listens on %s without "
                            "--wec-token: whoever reaches it can change its answers",
                            settings.listen)
            proc, srv = start_challenge_server(
                run_dir, redis_url=redis_url, namespace=run_id, listen=settings.listen,
                token=settings.token, ports=fixed,
            )
            procs.append(proc)
            http_port, tls_port, dns = srv.port("http01"), srv.port("tlsalpn01"), srv.address(
                "dns01")
            challenge_mgmt = srv.management_url
            challenge_addresses = srv.addresses()
        directory = settings.directory
        ca_bundle = settings.ca_bundle
        pebble_mgmt: str | None = None
        shards: list[dict[str, str]] = []
        eab, pebble_eab = stack_eab(settings, run_dir)  # the workers' keys, Pebble's
        if directory is None:
            proc, pebble = start_pebble(
                run_dir, http_port=http_port, tls_port=tls_port, dns_server=dns,
                host=settings.listen, binary=settings.pebble_bin, eab=pebble_eab,
            )
            procs.append(proc)
            directory, ca_bundle, pebble_mgmt = (
                pebble.directory, str(pebble.ca_bundle), pebble.management)
            shards.append({"directory": pebble.directory, "pebble_management": pebble.management})
            for i in range(1, pebbles):
                proc, more = start_pebble(
                    run_dir, http_port=http_port, tls_port=tls_port, dns_server=dns,
                    host=settings.listen, binary=settings.pebble_bin, shard=i, tls=pebble.tls,
                    eab=pebble_eab,
                )
                procs.append(proc)
                shards.append({"directory": more.directory,
                               "pebble_management": more.management})
        info = StackInfo(
            run_id=run_id,
            run_dir=str(run_dir),
            directory=directory,
            ca_bundle=ca_bundle,
            insecure=settings.insecure,
            redis_url=redis_url,
            namespace=run_id,
            challtestsrv=challtestsrv,
            pebble_management=pebble_mgmt,
            dns=dns if challtestsrv is None else None,
            challenge_management=challenge_mgmt,
            challenge_ip=settings.listen if challtestsrv is None else None,
            challenge_addresses=challenge_addresses,
            embedded=settings.directory is None,
            shards=shards,
            eab=eab.to_plain() if eab is not None else None,
        )
        log.info("stack up: %s", {**info, "redis_url": redact_url(redis_url),
                                  "eab": redacted(info["eab"])})
        return cls(info, procs)

    def alive(self) -> dict[str, bool]:
        return {p.name: p.alive() for p in self.procs}

    # -- the embedded Pebbles ---------------------------------------------------------------

    def _pebble_proc(self, shard: int) -> ManagedProcess | None:
        if not self.info["embedded"]:
            return None
        name = f"pebble-{shard}" if shard else "pebble"
        return next((p for p in self.procs if p.name == name), None)

    @property
    def pebble(self) -> ManagedProcess | None:
        """The (first) embedded Pebble's process; None when the CA is the user's."""
        return self._pebble_proc(0)

    @property
    def shards(self) -> list[PebbleShard]:
        """One view per embedded Pebble (none when the CA is the user's)."""
        n = len(self.info.get("shards") or []) if self.info["embedded"] else 0
        return [PebbleShard(self, i) for i in range(n)]

    def info_for(self, worker: str) -> StackInfo:
        """The info worker *worker* (``gw3``, or ``main`` without xdist) uses: the Pebble of
        its group when the run spreads over several."""
        shards = self.info.get("shards") or []
        if len(shards) <= 1:
            return self.info
        digits = "".join(ch for ch in worker if ch.isdigit())
        shard = shards[int(digits) % len(shards) if digits else 0]
        info = dict(self.info)
        info.update(directory=shard["directory"], pebble_management=shard["pebble_management"])
        return info  # type: ignore[return-value]

    def dump_pebble(self, timeout: float = 10.0, shard: int = 0) -> tuple[bool, str]:
        """``SIGQUIT`` to an embedded Pebble: Go prints every goroutine's stack to its log
        and exits. Returns whether it exited within *timeout* and the dump (the log's text
        from the last ``SIGQUIT: quit`` since its last start; "" when there is none)."""
        proc = self._pebble_proc(shard)
        if proc is None:
            return False, ""
        proc.quitting = True  # an exit asked for: not a death (ManagedProcess.died)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGQUIT)
        try:
            proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit within %gs of SIGQUIT", proc.name, timeout)
        return not proc.alive(), dump_text(proc.log_since_start())

    def restart_pebble(self, shard: int = 0) -> float:
        """Stop an embedded Pebble if it runs and start it again on the same argv, config
        and environment, its log appended to; ready as at the start (``GET /dir`` answers
        200). Returns the seconds it took; StackError when it cannot (no embedded Pebble,
        the stack stopped, not ready in time). Call it from the thread that started the
        stack (``PR_SET_PDEATHSIG`` ties a child to the thread that started it)."""
        proc = self._pebble_proc(shard)
        if proc is None:
            raise StackError("no embedded Pebble to restart")
        t = time.monotonic()
        proc.restart()
        took = time.monotonic() - t
        log.info("%s restarted in %.2fs (pid %d)", proc.name, took, proc.pid)
        return took

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        atexit.unregister(self.stop)


class PebbleShard:
    """One embedded Pebble of a stack, as its doctor sees it: its info (directory and
    management API), its process, its dump and its restart."""

    def __init__(self, stack: Stack, index: int) -> None:
        self.stack = stack
        self.index = index
        shard = stack.info["shards"][index]
        info = dict(stack.info)
        info.update(directory=shard["directory"], pebble_management=shard["pebble_management"])
        self.info: dict[str, object] = info
        self.name = f"pebble-{index}" if index else "pebble"

    @property
    def pebble(self) -> ManagedProcess | None:
        return self.stack._pebble_proc(self.index)

    def dump_pebble(self, timeout: float = 10.0) -> tuple[bool, str]:
        return self.stack.dump_pebble(timeout, self.index)

    def restart_pebble(self) -> float:
        return self.stack.restart_pebble(self.index)
