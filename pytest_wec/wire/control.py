"""Live control of a load run over Redis: the controller writes, every worker polls.

Both ends live here: :class:`ControlWriter` on the controller (blocking, called from the
dashboard's thread), :class:`ControlReader` in every worker (asyncio, polled by the load
item's background task every 0.5 s). One hash per run (``run_ns``)::

    wec:{run_ns}:control   target  the run's new total target: chains in flight (closed
                                   model) or chain starts per second (open model)
                           stop    "1": end the run now, as at the end of its duration

A worker takes its share of ``target`` (:meth:`pytest_wec.worker.runner.LoadPlan.share`: an exact
integer split in the closed model, ``target / workers`` in the open one); once a target was
set, it replaces the run's stages for the rest of the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["Control", "ControlReader", "ControlWriter", "control_key", "parse_control"]

log = logging.getLogger(__name__)

KEY_TTL_S = 7 * 24 * 3600
_REDIS_ERRORS = (redis.RedisError, OSError)


def control_key(run_ns: str) -> str:
    return f"wec:{run_ns}:control"


@dataclass(frozen=True)
class Control:
    target: float | None = None  # the run's total target, when changed live
    stop: bool = False


def parse_control(raw: Mapping[bytes | str, bytes | str]) -> Control:
    """The hash as read from Redis; a value that is not a finite number >= 0 is ignored."""
    fields = {(k.decode() if isinstance(k, bytes) else k):
              (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
    target: float | None = None
    text = fields.get("target")
    if text is not None:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            target = value
        else:
            log.warning("ignoring control target %r: not a number >= 0", text)
    return Control(target=target, stop=fields.get("stop") == "1")


class ControlWriter:
    """The controller's end; raises ``redis.RedisError`` or ``OSError`` when Redis fails."""

    def __init__(self, redis_url: str, run_ns: str) -> None:
        self.key = control_key(run_ns)
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0,
                                            socket_timeout=5.0, retry=Retry(NoBackoff(), 1))
        self._written: dict[str, str] = {}  # what this run wrote, for :meth:`rewrite`

    def reset(self) -> None:
        """Forgets what an earlier run under the same namespace left."""
        self._client.delete(self.key)
        self._written.clear()

    def rewrite(self) -> int:
        """Writes again every field this run set (Redis restarted without its data, and the
        workers would otherwise read no target and no stop); the number of fields."""
        written = dict(self._written)
        if written:
            pipe = self._client.pipeline(transaction=True)
            for name, value in written.items():
                pipe.hset(self.key, name, value)
            pipe.expire(self.key, KEY_TTL_S)
            pipe.execute()
        return len(written)

    def set_target(self, value: float) -> None:
        self._set("target", repr(float(value)))

    def stop(self) -> None:
        self._set("stop", "1")

    def _set(self, name: str, value: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self.key, name, value)
        pipe.expire(self.key, KEY_TTL_S)
        pipe.execute()
        self._written[name] = value

    def close(self) -> None:
        self._client.close()


class ControlReader:
    """A worker's end: :meth:`read` returns None while Redis is away (logged once)."""

    def __init__(self, redis_url: str, run_ns: str) -> None:
        self.key = control_key(run_ns)
        self._client = redis.asyncio.Redis.from_url(
            redis_url, socket_connect_timeout=2.0, socket_timeout=2.0,
            retry=AsyncRetry(NoBackoff(), 1))
        self._failing = False

    async def read(self) -> Control | None:
        try:
            raw = await self._client.hgetall(self.key)
        except _REDIS_ERRORS as exc:
            if not self._failing:
                log.warning("cannot read the run's control from Redis (%s); retrying", exc)
            self._failing = True
            return None
        self._failing = False
        return parse_control(raw)

    async def aclose(self) -> None:
        await self._client.aclose()
