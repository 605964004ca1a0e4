"""A hostile ACME server: a valid directory whose resources misbehave (plain HTTP, aiohttp).

    python -m pytest_wec.testing.hostile_ca [--host 127.0.0.1] [--port 0]

prints ``hostile CA http://HOST:PORT/dir`` once it listens and serves until SIGINT or
SIGTERM. Point a load run at it (``--wec-directory http://HOST:PORT/dir``) to see how the
client classifies each misbehaviour (RFC 8555 §6, §7.1, §7.2).

Each misbehaviour has its own path, ``/m/<mode>`` (GET or POST); the directory's resources
take the modes in turn, request after request:

    newNonce                      ``NONCE_MODES``: good, bad-nonce, good, no-nonce
    newAccount, newOrder,         ``POST_MODES``:
    revokeCert, keyChange           ok             201, Location, Replay-Nonce, {"status": "valid"}
                                    invalid-json   201 whose application/json body is cut short
                                    wrong-type     201 with Content-Type text/html
                                    huge           50 MiB body, chunked (no Content-Length)
                                    endless        a body that never ends, 16 bytes every 50 ms
                                    no-nonce       201 without a Replay-Nonce header
                                    error-500      500, text/plain, no problem document
                                    rate-limited   429 rateLimited problem, Retry-After: 1
                                    stall          never answers

``GET /stats`` answers how often each resource answered with each mode:
``{"newAccount": {"ok": 3, "stall": 2, ...}, "newNonce": {...}, "direct": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from pytest_wec.testing import serve_until_signalled

__all__ = ["MODES", "NONCE_MODES", "POST_MODES", "main", "make_app"]

MiB = 1024 * 1024
HUGE = 50 * MiB
_CHUNK = b"x" * 65536

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NONCE_MODES = ("good", "bad-nonce", "good", "no-nonce")
POST_MODES = ("ok", "invalid-json", "wrong-type", "huge", "endless", "no-nonce", "error-500",
              "rate-limited", "stall")
#: the directory's resources that take ``POST_MODES`` in turn, and their paths
POST_RESOURCES = {"newAccount": "/new-acct", "newOrder": "/new-order",
                  "revokeCert": "/revoke-cert", "keyChange": "/key-change"}


@dataclass
class _State:
    """Per application: answers given (resource -> mode -> count), the shutdown signal
    that ends stalled and endless answers, the accounts created."""

    stats: dict[str, Counter[str]] = field(default_factory=dict)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    accounts: int = 0


_STATE = web.AppKey("state", _State)


def _nonce() -> str:
    return secrets.token_urlsafe(16)


def _created(request: web.Request, body: bytes, content_type: str,
             nonce: str | None) -> web.Response:
    state = request.app[_STATE]
    state.accounts += 1
    headers = {"Location": f"{_base(request)}/acct/{state.accounts}"}
    if nonce is not None:
        headers["Replay-Nonce"] = nonce
    return web.Response(status=201, body=body, content_type=content_type, headers=headers)


async def _ok(request: web.Request) -> web.StreamResponse:
    return _created(request, b'{"status": "valid"}', "application/json", _nonce())


async def _invalid_json(request: web.Request) -> web.StreamResponse:
    return _created(request, b'{"status": "val', "application/json", _nonce())


async def _wrong_type(request: web.Request) -> web.StreamResponse:
    return _created(request, b"<html><body>Welcome!</body></html>", "text/html", _nonce())


async def _no_nonce(request: web.Request) -> web.StreamResponse:
    return _created(request, b'{"status": "valid"}', "application/json", None)


async def _huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=201, headers={"Content-Type": "application/json",
                                                   "Replay-Nonce": _nonce()})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for _ in range(HUGE // len(_CHUNK)):
            await resp.write(_CHUNK)
        await resp.write_eof()
    return resp


async def _endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=201, headers={"Content-Type": "application/json",
                                                   "Replay-Nonce": _nonce()})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    closing = request.app[_STATE].closing
    with contextlib.suppress(ConnectionError):
        await resp.write(b'{"status": "valid", "padding": "')
        while not closing.is_set():
            await resp.write(b"x" * 16)
            await asyncio.sleep(0.05)
    return resp


async def _error_500(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="internal error, try again later")


async def _rate_limited(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down",
         "status": 429},
        status=429, content_type="application/problem+json",
        headers={"Retry-After": "1", "Replay-Nonce": _nonce()})


async def _stall(request: web.Request) -> web.StreamResponse:
    await request.app[_STATE].closing.wait()
    return web.Response(status=503)


async def _good_nonce(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204, headers={"Replay-Nonce": _nonce(),
                                             "Cache-Control": "no-store"})


async def _bad_nonce(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204, headers={"Replay-Nonce": "not a nonce!",
                                             "Cache-Control": "no-store"})


async def _missing_nonce(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


MODES: dict[str, Handler] = {
    "ok": _ok,
    "invalid-json": _invalid_json,
    "wrong-type": _wrong_type,
    "huge": _huge,
    "endless": _endless,
    "no-nonce": _no_nonce,
    "error-500": _error_500,
    "rate-limited": _rate_limited,
    "stall": _stall,
}
_NONCE_HANDLERS: dict[str, Handler] = {"good": _good_nonce, "bad-nonce": _bad_nonce,
                                       "no-nonce": _missing_nonce}


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _directory(request: web.Request) -> web.StreamResponse:
    base = _base(request)
    body = {name: base + path for name, path in POST_RESOURCES.items()}
    body["newNonce"] = base + "/new-nonce"
    return web.json_response({**body, "meta": {"termsOfService": base + "/terms"}})


def _rotating(resource: str, modes: tuple[str, ...],
              handlers: dict[str, Handler]) -> Handler:
    turn = itertools.cycle(modes)

    async def handle(request: web.Request) -> web.StreamResponse:
        mode = next(turn)
        request.app[_STATE].stats.setdefault(resource, Counter())[mode] += 1
        return await handlers[mode](request)

    return handle


async def _direct(request: web.Request) -> web.StreamResponse:
    mode = request.match_info["mode"]
    handler = MODES.get(mode) or _NONCE_HANDLERS.get(mode)
    if handler is None:
        raise web.HTTPNotFound(text=f"no mode {mode!r}; modes: {', '.join(MODES)}")
    request.app[_STATE].stats.setdefault("direct", Counter())[mode] += 1
    return await handler(request)


async def _stats(request: web.Request) -> web.StreamResponse:
    return web.json_response({k: dict(v) for k, v in request.app[_STATE].stats.items()})


async def _on_shutdown(app: web.Application) -> None:
    app[_STATE].closing.set()


def make_app() -> web.Application:
    """The hostile CA as an aiohttp application (its counters start at zero)."""
    app = web.Application()
    app[_STATE] = _State()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/dir", _directory)
    app.router.add_get("/stats", _stats)
    app.router.add_route("*", "/m/{mode}", _direct)
    app.router.add_route("*", "/new-nonce", _rotating("newNonce", NONCE_MODES,
                                                      _NONCE_HANDLERS))
    for resource, path in POST_RESOURCES.items():
        app.router.add_post(path, _rotating(resource, POST_MODES, MODES))
    return app


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; print the directory URL once listening."""
    runner = web.AppRunner(make_app(), shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addr = runner.addresses[0]
    shown = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    print(f"hostile CA http://{shown}:{addr[1]}/dir", flush=True)
    await serve_until_signalled(runner)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_wec.testing.hostile_ca",
                                     description="An ACME server whose resources misbehave.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
