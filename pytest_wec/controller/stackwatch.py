"""The part of a load session that watches the stack (controller): a doctor for each
embedded Pebble (:mod:`~pytest_wec.controller.doctor`) and the keeper of the run's processes
(:mod:`~pytest_wec.stack._keeper`), their findings handed to the Watch and the terminal.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from pytest_wec.controller.doctor import PebbleDoctor

if TYPE_CHECKING:
    import threading

    from pytest_wec.controller.ledger import FailureLedger
    from pytest_wec.controller.watch import Watch
    from pytest_wec.settings import Settings
    from pytest_wec.wire.control import ControlWriter
    from pytest_wec.wire.source import ResultSource

__all__ = ["StackWatch"]

log = logging.getLogger(__name__)


class StackWatch:
    """Mixed into :class:`~pytest_wec.controller.collector.LoadSession`, whose state it uses
    (``ledger``, ``doctors``, ``keeper``, ``watch``, the lock and the notices)."""

    if TYPE_CHECKING:  # the session's own, declared here for the type checker only
        settings: Settings
        ledger: FailureLedger
        doctors: list[PebbleDoctor]
        keeper: Any
        watch: Watch
        stall_after: float
        _lock: threading.Lock
        _notices: list[str]
        _source: ResultSource | None
        _control: ControlWriter | None

        def _state_now(self, max_age: float = 2.0) -> dict[str, int]: ...

    def attach_doctors(self, shards: list[Any],
                       run_on_stack_thread: Callable[[Callable[[], float]], float] | None = None,
                       forget: Callable[[str], None] | None = None) -> None:
        """Watch each embedded Pebble (a :class:`~pytest_wec.stack.PebbleShard`): diagnosed
        and restarted when it hangs; *forget* marks what the state DB holds of a directory
        dead before its Pebble restarts."""
        self.ledger.reshard(len(shards))
        for shard in shards:
            directory = str(shard.info["directory"])
            self.doctors.append(PebbleDoctor(
                shard, self.ledger, self._doctor_note, timeout=self.settings.timeout,
                stall_after=self.stall_after, run_on_stack_thread=run_on_stack_thread,
                state_counts=functools.partial(self._state_now, max_age=5.0),
                forget=functools.partial(forget, directory) if forget is not None else None))

    def attach_keeper(self, keeper: Any) -> None:
        """Watch the run's processes (a :class:`~pytest_wec.stack._keeper.StackKeeper`)."""
        self.keeper = keeper
        keeper.on_worker_died = self._worker_died
        keeper.on_recovered = self._part_recovered

    def _part_recovered(self, name: str) -> None:
        """redis-server came back empty: the run's live control (a target or a stop set from
        the dashboard) is written again, or the workers would read neither."""
        control = self._control
        if name != "redis-server" or control is None:
            return
        try:
            fields = control.rewrite()
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot write the run's live control again after the Redis restart: "
                        "%s", exc)
            return
        if fields:
            log.info("the run's live control written again after the Redis restart")

    def _worker_died(self, name: str, line: str) -> None:
        with self._lock:
            self.watch.died(name, line, time.monotonic())

    def _stack_state(self, now: float) -> None:
        """Our parts down, for the Watch (the collector's lock held)."""
        k, source = self.keeper, self._source
        back = {p: t for p in ("redis-server", "challenge-server")
                if k is not None and (t := k.back_since(p)) is not None}
        self.watch.set_down(k.down() if k is not None else {}, back,
                            bool(source is not None and source.failing), now)

    def _doctor_note(self, line: str) -> None:
        with self._lock:
            self._notices.append(line)

