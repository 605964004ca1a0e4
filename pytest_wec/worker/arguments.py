"""The arguments a chain may take, alike run once and under load (worker).

Run once, a chain is a pytest test and its arguments are fixtures; under load the runner
calls it with a fresh :class:`~pytest_wec.worker.context.ChainContext` per run. The names
below mean the same in both:

``wec``               the chain's context (ACME client, state DB, publisher, flows)
``acme_client``       ``wec.client``: the chain's instrumented ACME client (every exchange
                      timed and counted as the chain's)
``state_db``          ``wec.store``: the state DB with its claims (accounts, orders,
                      authorizations, certificates shared between chains)
``challenge_server``  :class:`ChallengeServer`: where the challenge server answers and the
                      publisher that puts a challenge's answer there (one per process)

:func:`bind` turns a chain that takes any of them into what the load runner calls; a chain
that takes anything else cannot run under load, which :func:`unknown_arguments` tells
before anything starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ARGUMENTS", "ChallengeServer", "bind", "challenge_server_of", "unknown_arguments"]

ARGUMENTS = ("wec", "acme_client", "state_db", "challenge_server")


@dataclass(frozen=True)
class ChallengeServer:
    """The challenge server the CA validates against, as this process reaches it."""

    publisher: Any  # puts and removes challenge answers (``ChallengePublisher``)
    management: str | None  # the embedded challenge server's management API URL
    dns: str | None  # its DNS server, host:port (dns-01)
    ip: str | None  # the address it answers http-01 on (IP identifiers; --wec-ip)
    challtestsrv: str | None  # a challtestsrv-compatible server used instead


def challenge_server_of(runtime: Any) -> ChallengeServer:
    from pytest_wec.worker.challenges import ip_identifier

    info = runtime.info
    return ChallengeServer(publisher=runtime.publisher, management=info.get(
        "challenge_management"), dns=info.get("dns"),
        ip=ip_identifier(runtime.settings, info, "http-01"),
        challtestsrv=info.get("challtestsrv"))


def _params(fn: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is inspect.Parameter.empty]


def unknown_arguments(fn: Callable[..., Any]) -> list[str]:
    """The arguments of ``fn`` load mode cannot give."""
    return [p for p in _params(fn) if p not in ARGUMENTS]


def bind(fn: Callable[..., Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """What the load runner calls with a context: ``fn`` itself when it takes ``wec`` alone."""
    names = _params(fn)
    if names == ["wec"]:
        return fn

    def value(name: str, ctx: Any) -> Any:
        if name == "wec":
            return ctx
        if name == "acme_client":
            return ctx.client
        if name == "state_db":
            return ctx.store
        return ctx.challenge_server

    async def call(ctx: Any) -> None:
        await fn(**{n: value(n, ctx) for n in names})

    call.__name__ = getattr(fn, "__name__", "chain")
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call
