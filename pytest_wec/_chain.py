"""Declaring chains: ``@chain(name, needs=..., produces=...)`` on an async pytest test.

A chain is an ordinary async pytest test taking one fixture, ``wec`` (a
:class:`~pytest_wec.worker.context.ChainContext`). Run once, it is an integration test; under
``--wec-load`` the load runner calls the same function concurrently with a fresh context
per run. What a chain needs (an account, a valid authorization, a certificate) and what it
produces drive the context-aware choice (:mod:`pytest_wec.worker.picker`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

__all__ = ["RESOURCES", "ChainInfo", "chain", "chain_info"]

#: What chains need and produce.
RESOURCES = frozenset({"account", "authorization", "certificate"})

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True)
class ChainInfo:
    name: str
    needs: frozenset[str]
    produces: frozenset[str]
    load: bool = True  # run under --wec-load (False: an integration-only variant)


def chain(
    name: str,
    *,
    needs: Iterable[str] = (),
    produces: Iterable[str] = (),
    load: bool = True,
) -> Callable[[F], F]:
    """Mark an async test function as the wec chain *name*.

    Several functions may carry one chain name; exactly one of them (``load=True``) is what
    load mode runs, the others are integration-only variants.
    """
    info = ChainInfo(name, frozenset(needs), frozenset(produces), load)
    unknown = (info.needs | info.produces) - RESOURCES
    if unknown:
        raise ValueError(f"chain {name!r}: unknown resources {sorted(unknown)}; "
                         f"allowed: {', '.join(sorted(RESOURCES))}")

    def decorate(fn: F) -> F:
        fn.__wec_chain__ = info  # type: ignore[attr-defined]
        marked = pytest.mark.wec_chain(name, needs=sorted(info.needs),
                                       produces=sorted(info.produces))(fn)
        marked = pytest.mark.asyncio(loop_scope="session")(marked)
        return marked  # type: ignore[no-any-return]

    return decorate


def chain_info(fn: Any) -> ChainInfo | None:
    info = getattr(fn, "__wec_chain__", None)
    return info if isinstance(info, ChainInfo) else None
