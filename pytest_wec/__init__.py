"""wile-e-coyote (pytest-wec): load tests and integration tests for ACME CAs.

Public API for chain authors: :func:`chain` and :class:`ChainContext` (the ``wec``
fixture's type). Imports are lazy so that loading the pytest plugin stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ChainContext", "ChainInfo", "NoContext", "__version__", "chain"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from pytest_wec._chain import ChainInfo, chain
    from pytest_wec.worker.context import ChainContext, NoContext


def __getattr__(name: str) -> Any:
    if name in ("chain", "ChainInfo"):
        from pytest_wec import _chain

        return getattr(_chain, name)
    if name in ("ChainContext", "NoContext"):
        from pytest_wec.worker import context as _context

        return getattr(_context, name)
    raise AttributeError(name)
