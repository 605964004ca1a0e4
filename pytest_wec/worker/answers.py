"""Putting one challenge's answer where the CA looks, and taking it away again.

:func:`publish_answer` publishes through any
:class:`~pytest_wec.worker.publish.ChallengePublisher` (the challenge server's Redis store, or
a challtestsrv's management API) and returns the undo that the flows
(:mod:`pytest_wec.worker.flows`) await once the authorization's poll ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_wec.worker.publish import ChallengePublisher

__all__ = ["publish_answer"]


async def publish_answer(
    pub: ChallengePublisher, kind: str, ident: str, token: str, key_authz: str, *,
    route_to: str | None = None,
) -> Callable[[], Awaitable[None]]:
    """Publish *key_authz* where the CA looks for challenge *kind* of identifier *ident*
    (RFC 8555 §8.3 http-01, §8.4 dns-01, RFC 8737 tls-alpn-01); returns the coroutine
    function that removes it again.

    *route_to* (a challenge type's own address, ``--wec-ip``): *ident* resolves to it while
    the answer is published (an A or AAAA record, removed with the answer). Once removed, a
    publisher with a request history to keep small (a challtestsrv's) is told to forget
    what the validation left there."""
    from pytest_wec.acme import dns01_txt_value

    if kind == "http-01":
        async def add() -> None:
            await pub.add_http01(token, key_authz)

        async def remove() -> None:
            await pub.del_http01(token)
    elif kind == "dns-01":
        host = "_acme-challenge." + ident.removeprefix("*.")

        async def add() -> None:
            await pub.set_txt(host, dns01_txt_value(key_authz))

        async def remove() -> None:
            await pub.clear_txt(host)
    elif kind == "tls-alpn-01":
        async def add() -> None:
            await pub.add_tlsalpn01(ident, key_authz)

        async def remove() -> None:
            await pub.del_tlsalpn01(ident)
    else:
        raise ValueError(f"unknown challenge type {kind!r}")
    if route_to is not None:
        await pub.add_address(ident, route_to)
    try:
        await add()
    except BaseException:
        if route_to is not None:
            await pub.clear_address(ident, route_to)
        raise

    async def undo() -> None:
        try:
            await remove()
        finally:
            try:
                if route_to is not None:
                    await pub.clear_address(ident, route_to)
            finally:
                forget = getattr(pub, "forget", None)
                if forget is not None:
                    forget(kind, ident)

    return undo
