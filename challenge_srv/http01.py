"""http-01 (RFC 8555 §8.3): ``GET /.well-known/acme-challenge/<token>`` on any host.

The key authorization is read from the store on every request, so a token is served as
soon as a requester wrote it:

    GET|HEAD /.well-known/acme-challenge/<token>   200 text/plain key authorization; 404
    GET|HEAD <path with a stored redirect>         301 Location: <target>
    any other path                                 404
    any other method                               405
    store unreachable                              503

Every request is recorded in the request history (kind ``http``). A GET or HEAD of a token
is a validation request: once its answer is sent it is published to the waiting chain
(``challenge_srv.seen``, RFC 8555 §7.5.1).
"""

from __future__ import annotations

import logging
import socket

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .history import RequestHistory, http_host_key
from .seen import SeenPublisher
from .store import ChallengeStore

__all__ = ["PREFIX", "PROTOCOL_LOG", "Http01Server"]

log = logging.getLogger(__name__)


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


#: The logger of the aiohttp protocol under the http-01 and management servers.
PROTOCOL_LOG = logging.getLogger("challenge_srv.protocol")
PROTOCOL_LOG.addFilter(_MalformedRequestFilter())

PREFIX = "/.well-known/acme-challenge/"


class Http01Server:
    """The http-01 responder on one or more listening sockets."""

    def __init__(
        self, store: ChallengeStore, history: RequestHistory, seen: SeenPublisher | None = None
    ) -> None:
        self.store = store
        self.history = history
        self.seen = seen
        self._runner: web.ServerRunner | None = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        self.history.add(
            "http",
            http_host_key(host),
            {"URL": request.path_qs, "Host": host, "HTTPS": False, "ServerName": ""},
        )
        if request.method not in ("GET", "HEAD"):
            return web.Response(
                status=405, headers={"Allow": "GET, HEAD"}, text="405 method not allowed\n"
            )
        path = request.path
        token = path[len(PREFIX) :] if path.startswith(PREFIX) else None
        if token is not None and (not token or "/" in token):
            token = None
        try:
            redirect, key_authz = await self.store.http01(path, token)
        except Exception as exc:  # any store failure is a 503, never a crash
            log.warning("http-01 %s: store unavailable: %s", path, exc)
            return web.Response(status=503, text="503 challenge store unavailable\n")
        if redirect:
            log.debug("http-01 %s: redirect to %s", path, redirect)
            return web.Response(status=301, headers={"Location": redirect})
        if key_authz is None:
            log.debug("http-01 %s (Host %s): not found", path, host)
            response = web.Response(status=404, text="404 page not found\n")
        else:
            log.debug("http-01 %s (Host %s): served", path, host)
            response = web.Response(text=key_authz, content_type="text/plain", charset="utf-8")
        if token is not None and self.seen is not None:
            await self._send_then_publish(request, response, host, token, key_authz is not None)
        return response

    async def _send_then_publish(self, request: web.BaseRequest, response: web.Response,
                                 host: str, token: str, served: bool) -> None:
        """Send *response* now (aiohttp sends nothing more for a prepared one), then
        publish the validation request: a chain that polls on the event finds the CA with
        its answer in hand."""
        assert self.seen is not None
        try:
            await response.prepare(request)
            await response.write_eof()
        finally:
            self.seen.seen("http-01", http_host_key(host), request.remote, token=token,
                           served=served)

    async def start(self, socks: list[socket.socket]) -> None:
        server = web.Server(self.handle, access_log=None, logger=PROTOCOL_LOG)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        for sock in socks:
            await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
