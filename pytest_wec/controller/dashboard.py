"""The live dashboard of a load run (controller): aiohttp in its own thread and event loop.

    GET  /               the page (uPlot and wec.js inline), live by server-sent events
    GET  /api/events     text/event-stream; event ``snapshot`` every second: the run so far
                         (:mod:`~pytest_wec.controller.liveview`), series from the seconds that may
                         have changed since the previous event
    GET  /api/snapshot   the run so far, JSON (``?since=SECOND`` for the series' start)
    POST /api/target     ``{"value": N}``: the run's new total target, chains in flight
                         (closed model, a whole number) or starts per second (open model)
    POST /api/stop       end the run as at the end of its duration; outputs are written

With a token, every ``/api/`` call needs ``Authorization: Bearer TOKEN`` (401 otherwise);
the two GETs also take ``?token=``, since a browser's EventSource sends no header. The page
reads the token from its URL's fragment (``/#token=TOKEN``), which no server ever sees.
POSTs need ``Content-Type: application/json`` (415 otherwise), so that no other site's form
can post to them; a bad body or value is a 400 with a message. Bound to a loopback address,
the server answers only requests addressed to a loopback name (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web

from pytest_wec.controller.liveview import SETTLE_S
from pytest_wec.controller.report_html import VIEWS_HTML, page

__all__ = ["Dashboard", "LiveSession", "is_loopback", "parse_dashboard_addr"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
MAX_TARGET = 1_000_000
EVENT_EVERY = 1.0
#: at the end, how long the open pages' streams get to send their last snapshot
LAST_SNAPSHOT_WAIT = 2.0
KEEPALIVE_EVERY = 15.0
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_ADDR_HELP = ("expected [HOST:]PORT such as 8089, 127.0.0.1:8089, 0.0.0.0:8089 or [::1]:8089, "
              "PORT from 0 to 65535 (0: any free port); a bare PORT binds 127.0.0.1")
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DASHBOARD_CSP = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "connect-src 'self'; img-src data:")

_BODY = """
<header><h1>wec dashboard</h1><span id="status" class="badge">connecting</span>
  <span class="meta" id="run-meta"></span></header>
<main>
<section><h2>Control</h2>
  <form id="target-form" class="controls">
    <label for="target-value" id="target-label">target</label>
    <input id="target-value" type="number" min="0" step="any" required>
    <button id="set-target" class="primary" type="submit">Set</button>
    <button id="stop" class="danger" type="button">Stop</button>
    <span id="control-msg" class="msg" role="status"></span>
  </form>
  <div class="cards" id="live" style="margin-top:10px"></div>
</section>
<section><h2>Totals</h2><div class="cards" id="totals"></div></section>
""" + VIEWS_HTML + """
<section><h2>Workers</h2><div id="table-workers"></div></section>
<section><h2>State DB and generator</h2><div class="cards" id="state"></div></section>
<section><h2>Warnings</h2><div id="warnings"></div></section>
</main>
"""


def parse_dashboard_addr(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError otherwise."""
    t = text.strip()
    host, port_text = DEFAULT_HOST, t
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or t[end + 1:end + 2] != ":":
            raise ValueError(_ADDR_HELP)
        host, port_text = t[1:end], t[end + 2:]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(_ADDR_HELP)
        except ValueError:
            raise ValueError(_ADDR_HELP) from None
    elif ":" in t:
        host, _, port_text = t.rpartition(":")
        if not _HOST.match(host):
            raise ValueError(_ADDR_HELP)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(_ADDR_HELP)
    return host, int(port_text)


class LiveSession(Protocol):
    """What the dashboard needs of a load run
    (:class:`~pytest_wec.controller.collector.LoadSession`)."""

    @property
    def settings(self) -> Any: ...

    def snapshot(self, since: int = 0) -> dict[str, Any]: ...

    def set_target(self, value: float) -> None: ...

    def request_stop(self) -> None: ...


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this host's loopback."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """Serves the dashboard of ``session`` on ``host``:``port`` until :meth:`stop`."""

    def __init__(self, session: LiveSession, host: str = DEFAULT_HOST, port: int = 0,
                 token: str | None = None) -> None:
        self.session, self.host, self.port, self.token = session, host, port, token
        self.url: str | None = None
        self._loopback = is_loopback(host)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self._page: bytes | None = None
        self._streams: set[asyncio.Task[Any]] = set()  # the pages' event streams

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> str:
        """Binds and serves; returns the page's URL (with the token in its fragment).
        OSError when the address cannot be bound."""
        if self.url is not None:
            return self.url
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,),
                                        name="wec-dashboard", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise OSError(f"the dashboard did not start within {timeout:g}s")
        if self._error is not None:
            raise self._error
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/" + (f"#token={self.token}" if self.token else "")
        return self.url

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:
            self._error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _bind(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_post("/api/target", self._target)
        app.router.add_post("/api/stop", self._stop)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stops serving; each open page first gets the last snapshot (the run ended, or how
        far it got), within ``LAST_SNAPSHOT_WAIT``."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._last_snapshots(), loop).result(
                LAST_SNAPSHOT_WAIT + 1.0)
        except Exception:  # a page that cannot take it loses it; the run's end does not wait
            log.debug("dashboard: the last snapshots did not all go out", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)

    async def _last_snapshots(self) -> None:
        if self._closing is not None:
            self._closing.set()
        streams = [t for t in self._streams if not t.done()]
        if streams:
            await asyncio.wait(streams, timeout=LAST_SNAPSHOT_WAIT)

    # -- requests ----------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._loopback and not is_loopback((request.url.host or "").strip("[]")):
            return _error(403, "this dashboard answers only at a loopback address")
        if request.path.startswith("/api/") and self.token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer":
                value = request.query.get("token", "") if request.method == "GET" else ""
            if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return _error(401, "missing or wrong token (Authorization: Bearer TOKEN)")
        return await handler(request)

    async def _index(self, request: web.Request) -> web.Response:
        if self._page is None:
            self._page = page("wec dashboard", _BODY, None, "WEC.dashboard();",
                              csp=DASHBOARD_CSP).encode()
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _snapshot(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return _error(400, "since: expected a whole number of seconds")
        snap = await asyncio.to_thread(self.session.snapshot, since)
        return web.Response(body=orjson.dumps(snap, option=orjson.OPT_NON_STR_KEYS),
                            content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        closing = self._closing
        assert closing is not None
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        since = 0
        ended = False
        try:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await resp.write(b"retry: 2000\n\n")
                while not ended:
                    # the last one goes out after the server was told to close, so that a
                    # page sees how the run ended however soon after its last tick that was
                    last = closing.is_set()
                    try:
                        snap = await asyncio.to_thread(self.session.snapshot, since)
                        data = orjson.dumps(snap, option=orjson.OPT_NON_STR_KEYS)
                    except Exception:
                        log.exception("dashboard snapshot failed")
                        break
                    await resp.write(b"event: snapshot\ndata: " + data + b"\n\n")
                    rows = snap["timeline"]  # buckets: "dt" seconds from "t" each
                    end = rows[-1]["t"] + rows[-1].get("dt", 1) if rows \
                        else snap["timeline_from"]
                    since = max(int(end) - SETTLE_S, 0)
                    ended = bool(snap.get("ended"))
                    if last:
                        break
                    if not ended:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(closing.wait(), EVENT_EVERY)
                while not closing.is_set():  # the run ended: keep the page's connection quiet
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closing.wait(), KEEPALIVE_EVERY)
                    await resp.write(b": keepalive\n\n")
        finally:
            if task is not None:
                self._streams.discard(task)
        return resp

    async def _json_body(self, request: web.Request) -> Any:
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(
                text=json.dumps({"error": "expected Content-Type: application/json"}),
                content_type="application/json")
        raw = await request.read()
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"bad JSON: {exc}"}),
                                     content_type="application/json") from None

    def _value(self, body: Any) -> float:
        """The target in a body, checked against the model; ValueError says what is allowed."""
        closed = self.session.settings.model != "open"
        allowed = (f"a whole number of chains in flight from 0 to {MAX_TARGET}" if closed
                   else f"a number of chain starts per second from 0 to {MAX_TARGET}")
        value = body.get("value") if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not 0 <= value <= MAX_TARGET \
                or (closed and value != int(value)):
            raise ValueError(f'value: expected {allowed}, as {{"value": N}}, got {value!r}')
        return float(value)

    async def _target(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            value = self._value(body)
        except ValueError as exc:
            return _error(400, str(exc))
        failure = await self._control(self.session.set_target, value)
        if failure is not None:
            return failure
        shown: float | int = int(value) if value == int(value) else value
        return web.json_response({"target": shown})

    async def _stop(self, request: web.Request) -> web.Response:
        await self._json_body(request)
        failure = await self._control(self.session.request_stop)
        return failure or web.json_response({"stopping": True})

    async def _control(self, fn: Callable[..., None], *args: Any) -> web.Response | None:
        try:
            await asyncio.to_thread(fn, *args)
        except RuntimeError as exc:
            return _error(409, str(exc))
        except Exception as exc:  # Redis away: the control could not be delivered
            log.warning("dashboard control failed: %s", exc)
            return _error(503, f"cannot reach the workers' control channel: {exc}")
        return None
