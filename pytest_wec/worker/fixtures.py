"""Fixtures the plugin gives chains: ``wec`` (a ChainContext) and what stands behind it.

Heavy imports happen inside the fixtures, so that a pytest run that uses none of them
pays nothing for the plugin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from pytest_wec.errors import ConfigError, StackError, UnreachableError


@pytest.fixture(scope="session")
def wec_stack_info(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The stack's addresses: asked of the controller on an xdist worker (which starts the
    stack on the first request), else started here, in the controller's own process."""
    try:
        return stack_info(request.config)
    except UnreachableError as exc:
        pytest.fail(str(exc), pytrace=False)
    except StackError as exc:
        pytest.fail(f"wec stack: {exc}", pytrace=False)
    except ConfigError as exc:  # the CA lacks what an option asks (--wec-profile): stop here
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def wec_runtime(
    request: pytest.FixtureRequest, wec_stack_info: dict[str, Any]
) -> AsyncIterator[Any]:
    """The worker runtime shared by every chain of this process."""
    from pytest_wec.plugin import SETTINGS_KEY
    from pytest_wec.worker.runtime import WorkerRuntime

    settings = request.config.stash[SETTINGS_KEY]
    worker = worker_name(request.config)
    try:
        runtime = await WorkerRuntime(settings, wec_stack_info, worker).start()
    except UnreachableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield runtime
    finally:
        await runtime.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def wec(request: pytest.FixtureRequest, wec_runtime: Any) -> AsyncIterator[Any]:
    """The chain's context: ACME client, publisher, state DB and the shared flows."""
    from pytest_wec._chain import chain_info
    from pytest_wec.worker.context import ChainContext

    info = chain_info(getattr(request.node, "function", None))
    ctx = ChainContext(wec_runtime, info.name if info else request.node.name, mode="once")
    try:
        yield ctx
    finally:
        await ctx.finish()


@pytest.fixture
def acme_client(wec: Any) -> Any:
    """The chain's instrumented ACME client (``wec.client``): every exchange is timed and
    counted as the chain's, run once and under load alike."""
    return wec.client


@pytest.fixture
def state_db(wec: Any) -> Any:
    """The state DB with its claims (``wec.store``): accounts, orders, authorizations and
    certificates that chains share."""
    return wec.store


@pytest.fixture(scope="session")
def challenge_server(wec_runtime: Any) -> Any:
    """Where the challenge server answers and the publisher that puts answers there
    (:class:`~pytest_wec.worker.arguments.ChallengeServer`), once per process."""
    from pytest_wec.worker.arguments import challenge_server_of

    return challenge_server_of(wec_runtime)


@pytest.fixture(scope="session")
def wec_settings(request: pytest.FixtureRequest) -> Any:
    from pytest_wec.plugin import SETTINGS_KEY

    return request.config.stash[SETTINGS_KEY]


def worker_name(config: pytest.Config) -> str:
    """This process's name in results: its xdist worker id, or ``main`` (a lone pytest, even
    one started from inside an xdist worker, whose environment it inherits)."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput.get("workerid", "main")) if workerinput is not None else "main"


def stack_info(config: pytest.Config) -> dict[str, Any]:
    """The stack's addresses, for fixtures and the load items; StackError when it cannot
    be had."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        from pytest_wec.worker.runtime import stack_from_controller

        return stack_from_controller(workerinput)
    controller: Any = config.pluginmanager.get_plugin("wec-controller")
    return dict(controller.ensure_stack())
