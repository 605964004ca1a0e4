"""The management HTTP API, compatible with pebble-challtestsrv's (and Boulder's chall-test-srv).

Every endpoint is ``POST`` with a JSON object body; field names match case-insensitively,
as Go's decoder does. Success is ``200`` with an empty body (history: a JSON list).

    /add-http01 {token, content}       /del-http01 {token}
    /add-redirect {path, targetURL}    /del-redirect {path}
    /add-tlsalpn01 {host, content}     /del-tlsalpn01 {host}
    /set-txt {host, value}             /clear-txt {host}
    /set-default-ipv4 {ip}             /set-default-ipv6 {ip}      ("" disables the default)
    /add-a {host, addresses}           /clear-a {host}
    /add-aaaa {host, addresses}        /clear-aaaa {host}
    /add-caa {host, policies: [{tag, value, flag?}]}               /clear-caa {host}
    /set-cname {host, target}          /clear-cname {host}
    /set-servfail {host}               /clear-servfail {host}
    /http-request-history {host}       /dns-request-history {host}
    /tlsalpn01-request-history {host}  /clear-request-history {host, type: http|dns|tlsalpn}

    400  empty body, bad JSON, not an object, a field of the wrong type, a required field empty
    401  a token is configured and ``Authorization: Bearer <token>`` is missing or wrong
    404  unknown path          405  not POST          503  the store is unreachable

Data goes to the store (Redis), so every challenge server of the namespace serves it; the
request history is this process's own (see ``history.py``).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .history import RequestHistory
from .store import CaaPolicy, ChallengeStore


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs each malformed request as an ERROR with a traceback; keep those at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "malformed request: %s", (str(exc).replace("\n", " "),)
        record.exc_info, record.exc_text = None, None
        return PROTOCOL_LOG.isEnabledFor(logging.DEBUG)


#: The logger of the aiohttp protocol under the management server.
PROTOCOL_LOG = logging.getLogger("challenge_srv.protocol")
PROTOCOL_LOG.addFilter(_MalformedRequestFilter())

__all__ = ["BadRequest", "Fields", "ManagementServer", "parse_body"]

log = logging.getLogger(__name__)

_HISTORY_KINDS = {
    "/http-request-history": "http",
    "/dns-request-history": "dns",
    "/tlsalpn01-request-history": "tlsalpn",
}


class BadRequest(Exception):
    """A request the API answers with 400 and this message."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (``null`` counts as ``{}``, as in Go)."""
    if not raw.strip():
        raise BadRequest("expected JSON POST body, was empty")
    try:
        doc = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadRequest(f"expected a JSON object, got {type(doc).__name__}")
    return doc


class Fields:
    """Typed, case-insensitive access to a request's JSON object."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._exact = doc
        self._folded = {str(k).lower(): v for k, v in doc.items()}

    def _get(self, name: str) -> Any:
        return self._exact[name] if name in self._exact else self._folded.get(name.lower())

    def text(self, name: str, *, required: bool = True) -> str:
        value = self._get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise BadRequest(f"field {name!r}: expected a string, got {type(value).__name__}")
        if required and not value:
            raise BadRequest(f"field {name!r} must not be empty")
        return value

    def texts(self, name: str) -> list[str]:
        value = self._get(name)
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"field {name!r}: expected a list of strings")
        if not value:
            raise BadRequest(f"field {name!r} must not be empty")
        return value

    def policies(self, name: str) -> list[CaaPolicy]:
        value = self._get(name)
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise BadRequest(f"field {name!r}: expected a list of objects")
        if not value:
            raise BadRequest(f"field {name!r} must not be empty")
        out = []
        for item in value:
            f = Fields(item)
            flag = f._get("flag")
            if flag is None:
                flag = 0
            if isinstance(flag, bool) or not isinstance(flag, int) or not 0 <= flag <= 255:
                raise BadRequest(f"field {name!r}: flag must be an integer 0-255")
            out.append(
                CaaPolicy(f.text("tag", required=False), f.text("value", required=False), flag)
            )
        return out


Handler = Callable[[Fields], Awaitable[web.Response]]


def _ok() -> web.Response:
    return web.Response(status=200)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", charset="utf-8")


class ManagementServer:
    """The management API on one listening socket."""

    def __init__(
        self, store: ChallengeStore, history: RequestHistory, *, token: str | None = None
    ) -> None:
        self.store = store
        self.history = history
        self.token = token
        self._runner: web.ServerRunner | None = None
        s = store
        self.routes: dict[str, Handler] = {
            "/add-http01": self._simple(lambda f: s.add_http01(f.text("token"), f.text("content"))),
            "/del-http01": self._simple(lambda f: s.del_http01(f.text("token"))),
            "/add-redirect": self._simple(
                lambda f: s.add_redirect(f.text("path"), f.text("targetURL"))
            ),
            "/del-redirect": self._simple(lambda f: s.del_redirect(f.text("path"))),
            "/add-tlsalpn01": self._simple(
                lambda f: s.add_tlsalpn01(f.text("host"), f.text("content"))
            ),
            "/del-tlsalpn01": self._simple(lambda f: s.del_tlsalpn01(f.text("host"))),
            "/set-txt": self._simple(lambda f: s.add_txt(f.text("host"), f.text("value"))),
            "/clear-txt": self._simple(lambda f: s.clear_txt(f.text("host"))),
            "/set-default-ipv4": self._simple(
                lambda f: s.set_default_ip(4, f.text("ip", required=False))
            ),
            "/set-default-ipv6": self._simple(
                lambda f: s.set_default_ip(6, f.text("ip", required=False))
            ),
            "/add-a": self._simple(
                lambda f: s.add_addresses(4, f.text("host"), f.texts("addresses"))
            ),
            "/clear-a": self._simple(lambda f: s.clear_addresses(4, f.text("host"))),
            "/add-aaaa": self._simple(
                lambda f: s.add_addresses(6, f.text("host"), f.texts("addresses"))
            ),
            "/clear-aaaa": self._simple(lambda f: s.clear_addresses(6, f.text("host"))),
            "/add-caa": self._simple(lambda f: s.add_caa(f.text("host"), f.policies("policies"))),
            "/clear-caa": self._simple(lambda f: s.clear_caa(f.text("host"))),
            "/set-cname": self._simple(lambda f: s.set_cname(f.text("host"), f.text("target"))),
            "/clear-cname": self._simple(lambda f: s.clear_cname(f.text("host"))),
            "/set-servfail": self._simple(lambda f: s.set_servfail(f.text("host"))),
            "/clear-servfail": self._simple(lambda f: s.clear_servfail(f.text("host"))),
            "/clear-request-history": self._clear_history,
        }
        for path, kind in _HISTORY_KINDS.items():
            self.routes[path] = self._history(kind)

    @staticmethod
    def _simple(action: Callable[[Fields], Awaitable[Any]]) -> Handler:
        async def handler(fields: Fields) -> web.Response:
            await action(fields)
            return _ok()

        return handler

    def _history(self, kind: str) -> Handler:
        async def handler(fields: Fields) -> web.Response:
            events = self.history.get(kind, fields.text("host"))
            return web.Response(
                text=json.dumps(events, indent=3),
                content_type="application/json",
                charset="utf-8",
            )

        return handler

    async def _clear_history(self, fields: Fields) -> web.Response:
        host = fields.text("host")
        kind = fields.text("type", required=False)
        if kind not in ("http", "dns", "tlsalpn"):
            raise BadRequest(f"{json.dumps(kind)} event type unknown")
        self.history.clear(kind, host)
        return _ok()

    def _authorized(self, request: web.BaseRequest) -> bool:
        if not self.token:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(
                status=401,
                text="401 unauthorized: send Authorization: Bearer <token>\n",
                headers={"WWW-Authenticate": 'Bearer realm="challenge-server"'},
            )
        handler = self.routes.get(request.path)
        if handler is None:
            return _text(404, "404 page not found")
        if request.method != "POST":
            return web.Response(
                status=405, headers={"Allow": "POST"}, text="405 method not allowed: use POST\n"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _text(413, "413 request body too large")
        try:
            response = await handler(Fields(parse_body(raw)))
        except BadRequest as exc:
            log.debug("management %s: 400 %s", request.path, exc)
            return _text(400, str(exc))
        except Exception as exc:  # a store failure is a 503, never a crash
            log.warning("management %s: store unavailable: %s", request.path, exc)
            return _text(503, f"challenge store unavailable: {exc}")
        log.debug("management %s: ok", request.path)
        return response

    async def start(self, socks: list[socket.socket]) -> None:
        server = web.Server(self.handle, access_log=None, logger=PROTOCOL_LOG)  # bodies <= 1 MiB
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        for sock in socks:
            await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
