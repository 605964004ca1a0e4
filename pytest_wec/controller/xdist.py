"""pytest-xdist on the controller: whether it distributes, how many workers, its hooks.

:class:`XdistHooks` is registered only when xdist is present (``-p no:xdist`` keeps
working): it hands every worker the controller's settings and its rendezvous through
``workerinput`` (plain data), tells the rendezvous when a worker went down, and hands the
controller each worker's process and what it handed back (a spill of its results).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_wec.controller.run import WecController

__all__ = ["XdistHooks", "tx_specs", "worker_count", "xdist_active"]


def tx_specs(config: pytest.Config) -> list[str]:
    return [str(t) for t in getattr(config.option, "tx", None) or ()]


def xdist_active(config: pytest.Config) -> bool:
    """Whether xdist distributes: ``-n N``, or ``--tx`` with a ``--dist`` mode (xdist's rule;
    ``--tx`` alone runs nothing remotely)."""
    n = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    return bool(n) or (bool(tx_specs(config)) and dist not in (None, "no"))


def worker_count(config: pytest.Config) -> int:
    """The run's workers: ``-n``, the ``--tx`` specs (``3*popen`` counts 3), else 1."""
    n = getattr(config.option, "numprocesses", None)
    if isinstance(n, int) and n > 0:
        return n
    if not xdist_active(config):
        return 1
    count = 0
    for spec in tx_specs(config):
        times, star, _ = spec.partition("*")
        count += int(times) if star and times.isdigit() else 1
    return max(count, 1)


class XdistHooks:
    """xdist-only hooks, registered only when xdist is present (``-p no:xdist`` works)."""

    def __init__(self, controller: WecController) -> None:
        self.controller = controller

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        c = self.controller
        node.workerinput["wec_run_id"] = c.run_id
        node.workerinput["wec_environ_pid"] = os.getpid()
        # the controller's resolved settings: env vars and ini do not reach other hosts
        node.workerinput["wec_settings"] = c.settings.to_plain()
        if c.rendezvous is not None:
            node.workerinput["wec_rendezvous"] = c.rendezvous.address
            node.workerinput["wec_token"] = c.rendezvous.token

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self.controller.worker_ready(node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if self.controller.rendezvous is not None:
            self.controller.rendezvous.worker_down(str(node.gateway.id))
        self.controller.worker_down(node, error)
