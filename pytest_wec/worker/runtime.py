"""The per-worker runtime: one ACME network layer, publisher and state store per process.

Runs in an xdist worker, or in the controller process itself when xdist is not used. All
chains of the process share it; each chain run gets a cheap
:class:`~pytest_wec.worker.context.ChainContext` view of it.

A worker may run on another host (``--tx ssh=...``, ``--tx socket=...``): everything it
needs comes through ``workerinput`` (:func:`stack_info_from`), and :meth:`WorkerRuntime.start`
first checks that every address it was given answers a TCP connect, so that an unreachable
one fails the worker at once with one message naming it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from pytest_wec.errors import UnreachableError
from pytest_wec.settings import Settings
from pytest_wec.worker.counts import LiveCounts

if TYPE_CHECKING:
    from pytest_wec.state import StoreQueue

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["REACH_TIMEOUT", "Target", "WorkerRuntime", "check_reachable", "db_url_for",
           "reach_targets", "stack_from_controller", "stack_info_from", "wait_at_barrier"]

REACH_TIMEOUT = 3.0  # seconds a worker waits for each address to answer at start
_DEFAULT_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379,
                  "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}


def db_url_for(settings: Settings, run_dir: str) -> str:
    return settings.db or str(Path(run_dir) / "state.db")


#: seconds a worker waits for the controller to start the stack (Pebble's start included)
STACK_TIMEOUT = 300.0
#: seconds a worker waits at the load barrier for the others
BARRIER_WAIT = 600.0
_asked: dict[str, dict[str, Any]] = {}  # rendezvous address -> the stack's info, once asked


def stack_from_controller(workerinput: Mapping[str, Any]) -> dict[str, Any]:
    """The stack's info, asked of the controller through the rendezvous (which starts the
    stack on the first request of the run); asked once per process. StackError when the
    stack cannot start or the controller cannot be asked."""
    from pytest_wec.errors import StackError
    from pytest_wec.wire.rendezvous import RendezvousError, ask

    address = workerinput.get("wec_rendezvous")
    if not address:
        raise StackError("this worker was given no way to the controller's stack")
    info = _asked.get(address)
    if info is None:
        target = _target("the controller (its rendezvous)", f"tcp://{address}")
        if target is not None:  # one line naming it, and how to fix a loopback address
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            asyncio.run(check_reachable(worker, [target]))
        try:
            answer = ask(address, str(workerinput.get("wec_token")), "stack", STACK_TIMEOUT,
                         worker=os.environ.get("PYTEST_XDIST_WORKER", "main"))
        except RendezvousError as exc:
            raise StackError(str(exc)) from None
        made = stack_info_from({"wec_stack": answer.get("stack"),
                                "wec_ca_pem": answer.get("ca_pem")})
        if made is None:
            raise StackError("the controller answered no stack")
        info = _asked[address] = made
    return dict(info)


def wait_at_barrier(workerinput: Mapping[str, Any] | None, controller: Any,
                    worker: str) -> float:
    """Block until every worker of the run is ready; the seconds still to wait before the
    common start (from the answer's arrival; negative for a worker late to it).
    *controller* is the in-process controller when there is no xdist."""
    from pytest_wec.errors import StackError
    from pytest_wec.wire.rendezvous import RendezvousError, ask

    try:
        if workerinput is None:
            import time

            started = float(controller.rendezvous.ready(worker, BARRIER_WAIT))
            return started - time.time()
        answer = ask(str(workerinput.get("wec_rendezvous")), str(workerinput.get("wec_token")),
                     "ready", BARRIER_WAIT, worker=worker)
        return float(answer.get("start_in") or 0.0)
    except RendezvousError as exc:
        raise StackError(f"the load barrier: {exc}") from None


def stack_info_from(workerinput: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stack's info as the controller sent it, made usable on this host.

    The CA bundle is a file on the controller's host; where that path does not exist here,
    its content (sent as ``wec_ca_pem``) is written to a file of this host.
    """
    info = workerinput.get("wec_stack")
    if info is None:
        return None
    info = dict(info)
    ca, pem = info.get("ca_bundle"), workerinput.get("wec_ca_pem")
    if ca and pem and not os.path.isfile(ca):
        fd, path = tempfile.mkstemp(prefix="wec-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as fh:
            fh.write(pem)
        atexit.register(_unlink, path)
        info["ca_bundle"] = path
    return info


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class Target(NamedTuple):
    """An address a worker connects to, and what answers there."""

    what: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _target(what: str, url: str) -> Target | None:
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # several hosts (libpq) or a bad port: left to the client
        return None
    port = port or _DEFAULT_PORTS.get(parts.scheme.split("+", 1)[0])
    if not host or port is None:  # a Unix socket
        return None
    return Target(what, host, port)


def reach_targets(settings: Settings, info: Mapping[str, Any]) -> list[Target]:
    """Every address this worker will connect to, given the stack's info."""
    wanted = [("the ACME directory", info.get("directory")),
              ("Pebble's management API", info.get("pebble_management")),
              ("the challtestsrv management API", info.get("challtestsrv"))]
    if settings.load_mode or not info.get("challtestsrv"):  # results or challenges
        wanted.append(("Redis", info.get("redis_url")))
    db = settings.db or ""
    scheme = db.split("://", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        wanted.append(("PostgreSQL", db))
    elif scheme in ("mysql", "mariadb"):
        wanted.append(("MySQL/MariaDB", db))
    targets = [_target(what, url) for what, url in wanted if url]
    return [t for t in targets if t is not None]


async def _probe(target: Target, timeout: float) -> str | None:
    """None when *target* accepts a TCP connection within *timeout*, else why not."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        if exc.errno:
            return os.strerror(exc.errno).lower()
        return str(exc) or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_reachable(worker: str, targets: Sequence[Target],
                          timeout: float = REACH_TIMEOUT) -> None:
    """Connect to every target at once; an :class:`UnreachableError` naming each that fails.

    ``worker gw1 cannot reach Redis at 10.0.0.5:6379: connection refused``
    """
    reasons = await asyncio.gather(*(_probe(t, timeout) for t in targets))
    failed = [(t, why) for t, why in zip(targets, reasons, strict=True) if why is not None]
    if not failed:
        return
    msg = f"worker {worker} cannot reach " + "; ".join(
        f"{t.what} at {t}: {why}" for t, why in failed)
    if any(_loopback(t.host) for t, _ in failed):
        msg += (" (a loopback address is reached only on the controller's own host; for "
                "workers on other hosts start the controller with --wec-listen set to an "
                "address of its host that they reach)")
    raise UnreachableError(msg)


def _check_state_db(worker: str, url: str) -> None:
    """A SQLite state DB must be a file this host can reach (one host, or a shared FS)."""
    if "://" in url and not url.startswith("sqlite:///"):
        return
    path = url.removeprefix("sqlite:///")
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UnreachableError(
            f"worker {worker} cannot open the state DB {path}: its directory does not exist "
            "on this host (a SQLite state DB is shared only on one host or a shared "
            "filesystem; give --wec-db postgresql://... or mysql://... when workers run on "
            "other hosts)")


class WorkerRuntime:
    """What the chains of one process share: network layer, publisher, state store."""

    def __init__(self, settings: Settings, info: dict[str, Any], worker_id: str) -> None:
        self.settings = settings
        self.info = info
        self.worker_id = worker_id
        self.directory: str = info["directory"]
        self.network: Any = None
        self.publisher: Any = None
        self.store: Any = None
        self.queue: StoreQueue | None = None
        self.pebble: Any = None
        self.holder = f"{worker_id}:{os.getpid()}"
        self.last_answer = 0.0  # epoch: the latest HTTP answer from the CA, any chain
        self.contexts: set[Any] = set()  # the ChainContexts of the chains in flight (load)
        self.validations: Any = None  # the feed of validation requests seen, made on first use
        #: the External Account Binding keys new accounts take (pytest_wec.worker.eab)
        self.eab: Any = None
        #: the picker's view: the state DB's counts as last read, plus what this process
        #: stored since (pytest_wec.worker.counts)
        self.counts = LiveCounts()

    def waiting(self) -> dict[str, int]:
        """The chains in flight by what they wait on (request X, after X, state DB)."""
        out: dict[str, int] = {}
        for ctx in list(self.contexts):
            key = ctx.waiting_on()
            out[key] = out.get(key, 0) + 1
        return out

    async def start(self) -> WorkerRuntime:
        from pytest_wec.acme import AcmeNetwork, make_transport
        from pytest_wec.state import StoreQueue, make_store
        from pytest_wec.worker.publish import ChallTestSrvPublisher, RedisPublisher

        s, info = self.settings, self.info
        await check_reachable(self.worker_id, reach_targets(s, info))
        _check_state_db(self.worker_id, db_url_for(s, info["run_dir"]))
        transport = make_transport(s.transport, ca_bundle=info.get("ca_bundle"),
                                   insecure=bool(info.get("insecure")))
        # GET newNonce: the transports drop the connection after a HEAD (Pebble sends no
        # Content-Length), so each one would cost a new TLS handshake.
        from pytest_wec.acme._ratelimits import ClientAddresses

        addresses = ClientAddresses(s.client_ips) if s.client_ip_header else None
        self.network = AcmeNetwork(self.directory, transport, timeout=s.timeout,
                                   nonce_method="GET", client_ip_header=s.client_ip_header,
                                   client_addresses=addresses)
        if info.get("pebble_management"):
            from pytest_wec.worker.pebble import PebbleManagement

            self.pebble = PebbleManagement(transport, info["pebble_management"])
        if info.get("challtestsrv"):
            self.publisher = ChallTestSrvPublisher(info["challtestsrv"], token=s.token)
        else:
            self.publisher = RedisPublisher(info["redis_url"], info["namespace"])
        self.store = await asyncio.to_thread(make_store, db_url_for(s, info["run_dir"]))
        self.queue = StoreQueue(self.store)
        if info.get("eab"):
            from pytest_wec.worker.eab import pool_from_info

            self.eab = pool_from_info(info, self.worker_id)
        return self

    # -- validation requests seen (RFC 8555 §7.5.1; pytest_wec.worker.validations) -----------
    async def watch_validation(self, kind: str, name: str, token: str | None = None) -> Any:
        """A ValidationWatch for the CA's validation requests of challenge *kind* for *name*
        (register it before answering); None when this stack offers no feed of them."""
        if self.validations is None:
            from pytest_wec.worker.validations import make_feed

            self.validations = make_feed(self.info, self.publisher) or False
        if self.validations is False:
            return None
        return await self.validations.watch(kind, name, token)
    # -- end of validation requests seen -----------------------------------------------------

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a (sync, short) state-store call off the event loop; calls made while
        others run are committed together (:class:`~pytest_wec.state.StoreQueue`)."""
        if self.queue is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await self.queue.call(fn, *args, **kwargs)

    def db_submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """:meth:`db` without waiting: the call is queued now (behind every call queued
        before it) and its future returned; before :meth:`start` made the queue, it runs at
        once on a thread of its own."""
        if self.queue is None:
            return asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        return self.queue.submit(fn, *args, wait=False, **kwargs)

    async def db_read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`db` for a call that only reads: not queued behind the groups of writes."""
        if self.queue is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await self.queue.read(fn, *args, **kwargs)

    async def aclose(self) -> None:
        for closer in (
            getattr(self.validations, "aclose", None),
            getattr(self.network, "aclose", None),
            getattr(self.publisher, "aclose", None),
        ):
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing the worker runtime")
        if self.queue is not None:
            await self.queue.aclose()
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.release_all, self.holder)
            except Exception:
                log.exception("releasing claims")
            self.store.close()
