"""http-01 (RFC 8555 §8.3): ``GET /.well-known/acme-challenge/<token>`` on any host.

The key authorization is read from the store on every request, so a token is served as
soon as a requester wrote it:

    GET|HEAD /.well-known/acme-challenge/<token>   200 text/plain key authorization; 404
    GET|HEAD <path with a stored redirect>         301 Location: <target>
    any other path                                 404
    any other method                               405
    store unreachable                              503
    malformed request                              400 (the connection closes)

Every request is recorded in the request history (kind ``http``). A GET or HEAD of a token
is a validation request: once its answer is written it is published to the waiting chain
(``challenge_srv.seen``, RFC 8555 §7.5.1). The server is :mod:`challenge_srv.httpd`'s lean
HTTP/1.1 on asyncio (a CA's validation is one small GET), not a web framework.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import unquote

from .history import RequestHistory, http_host_key
from .httpd import Answer, Handler, HttpServerProtocol, ServerRequest
from .seen import SeenPublisher
from .store import ChallengeStore

__all__ = ["PREFIX", "Http01Server"]

log = logging.getLogger(__name__)

PREFIX = "/.well-known/acme-challenge/"
_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
#: how long stop() waits for the listeners to close
STOP_TIMEOUT = 2.0


class Http01Server:
    """The http-01 responder on one or more listening sockets."""

    def __init__(
        self, store: ChallengeStore, history: RequestHistory, seen: SeenPublisher | None = None
    ) -> None:
        self.store = store
        self.history = history
        self.seen = seen
        self._servers: list[asyncio.Server] = []
        self._conns: set[HttpServerProtocol] = set()

    async def handle(self, request: ServerRequest) -> Answer:
        host = request.header("host")
        self.history.add(
            "http",
            http_host_key(host),
            {"URL": request.target, "Host": host, "HTTPS": False, "ServerName": ""},
        )
        if request.method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), *_TEXT], b"405 method not allowed\n", None
        target = request.target
        if not target.startswith("/"):  # absolute-form (RFC 9112 §3.2.2): the path of it
            scheme, sep, rest = target.partition("://")
            target = "/" + rest.partition("/")[2] if sep and scheme.isalpha() else target
        path = unquote(target.partition("?")[0])
        token = path[len(PREFIX) :] if path.startswith(PREFIX) else None
        if token is not None and (not token or "/" in token):
            token = None
        try:
            redirect, key_authz = await self.store.http01(path, token)
        except Exception as exc:  # any store failure is a 503, never a crash
            log.warning("http-01 %s: store unavailable: %s", path, exc)
            return 503, _TEXT, b"503 challenge store unavailable\n", None
        if redirect:
            log.debug("http-01 %s: redirect to %s", path, redirect)
            return 301, [("Location", redirect)], b"", None
        if key_authz is None:
            log.debug("http-01 %s (Host %s): not found", path, host)
            status, body = 404, b"404 page not found\n"
        else:
            log.debug("http-01 %s (Host %s): served", path, host)
            status, body = 200, key_authz.encode()
        seen = self.seen
        if token is None or seen is None:
            return status, _TEXT, body, None
        served, peer = key_authz is not None, request.peer

        def published(_sent: float) -> None:
            # after the answer: a chain that polls on the event finds the CA with its
            # answer in hand
            seen.seen("http-01", http_host_key(host), peer, token=token, served=served)

        return status, _TEXT, body, published

    def _protocol(self) -> HttpServerProtocol:
        return _Tracked(self.handle, self._conns)

    async def start(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in socks:
            self._servers.append(await loop.create_server(self._protocol, sock=sock))

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for proto in list(self._conns):  # keep-alive connections would hold wait_closed
            if proto.transport is not None:
                proto.transport.close()
        for server in servers:
            try:
                await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("http-01: a listener did not close within %gs", STOP_TIMEOUT)


class _Tracked(HttpServerProtocol):
    """A connection the server can close when it stops."""

    def __init__(self, handler: Handler, conns: set[HttpServerProtocol]) -> None:
        super().__init__(handler)
        self._all = conns

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._all.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._all.discard(self)
        super().connection_lost(exc)
