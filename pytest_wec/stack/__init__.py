"""The embedded stack, started once per run by the controller process.

    Stack.start(settings, run_dir, run_id) -> Stack    redis-server, challenge server, Pebble
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
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TypedDict

from challenge_srv.store import redact_url
from pytest_wec.errors import StackError
from pytest_wec.settings import Settings
from pytest_wec.stack._challsrv import start_challenge_server
from pytest_wec.stack._dump import dump_text
from pytest_wec.stack._pebble import start_pebble
from pytest_wec.stack._procs import ManagedProcess, find_binary, is_loopback
from pytest_wec.stack._redis import start_redis

__all__ = ["Stack", "StackInfo"]

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
    embedded: bool  # the CA is the embedded Pebble


class Stack:
    """The processes of one run; :meth:`stop` ends them all (also at interpreter exit)."""

    def __init__(self, info: StackInfo, procs: list[ManagedProcess]) -> None:
        self.info = info
        self.procs = procs
        atexit.register(self.stop)

    @classmethod
    def start(cls, settings: Settings, run_dir: Path, run_id: str) -> Stack:
        procs: list[ManagedProcess] = []
        try:
            return cls._start(settings, run_dir, run_id, procs)
        except BaseException:
            for p in reversed(procs):
                p.stop()
            raise

    @classmethod
    def _start(
        cls, settings: Settings, run_dir: Path, run_id: str, procs: list[ManagedProcess]
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
        http_port, tls_port, dns = 5002, 5001, "127.0.0.1:8053"
        challenge_mgmt: str | None = None
        if challtestsrv is None:
            if not is_loopback(settings.listen) and not settings.token:
                log.warning("the challenge server's management API listens on %s without "
                            "--wec-token: whoever reaches it can change its answers",
                            settings.listen)
            proc, srv = start_challenge_server(
                run_dir, redis_url=redis_url, namespace=run_id, listen=settings.listen,
                token=settings.token,
            )
            procs.append(proc)
            http_port, tls_port, dns = srv.port("http01"), srv.port("tlsalpn01"), srv.address(
                "dns01")
            challenge_mgmt = srv.management_url
        directory = settings.directory
        ca_bundle = settings.ca_bundle
        pebble_mgmt: str | None = None
        if directory is None:
            proc, pebble = start_pebble(
                run_dir, http_port=http_port, tls_port=tls_port, dns_server=dns,
                host=settings.listen, binary=settings.pebble_bin,
            )
            procs.append(proc)
            directory, ca_bundle, pebble_mgmt = (
                pebble.directory, str(pebble.ca_bundle), pebble.management)
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
            embedded=settings.directory is None,
        )
        log.info("stack up: %s", {**info, "redis_url": redact_url(redis_url)})
        return cls(info, procs)

    def alive(self) -> dict[str, bool]:
        return {p.name: p.alive() for p in self.procs}

    @property
    def pebble(self) -> ManagedProcess | None:
        """The embedded Pebble's process; None when the CA is the user's."""
        if not self.info["embedded"]:
            return None
        return next((p for p in self.procs if p.name == "pebble"), None)

    def dump_pebble(self, timeout: float = 10.0) -> tuple[bool, str]:
        """``SIGQUIT`` to the embedded Pebble: Go prints every goroutine's stack to its log
        and exits. Returns whether it exited within *timeout* and the dump (the log's text
        from the last ``SIGQUIT: quit`` since its last start; "" when there is none)."""
        proc = self.pebble
        if proc is None:
            return False, ""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGQUIT)
        try:
            proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pebble did not exit within %gs of SIGQUIT", timeout)
        return not proc.alive(), dump_text(proc.log_since_start())

    def restart_pebble(self) -> float:
        """Stop the embedded Pebble if it runs and start it again on the same argv, config
        and environment, its log appended to; ready as at the start (``GET /dir`` answers
        200). Returns the seconds it took; StackError when it cannot (no embedded Pebble,
        the stack stopped, not ready in time). Call it from the thread that started the
        stack (``PR_SET_PDEATHSIG`` ties a child to the thread that started it)."""
        proc = self.pebble
        if proc is None:
            raise StackError("no embedded Pebble to restart")
        t = time.monotonic()
        proc.restart()
        took = time.monotonic() - t
        log.info("pebble restarted in %.2fs (pid %d)", took, proc.pid)
        return took

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        atexit.unregister(self.stop)
