"""Every chain the workers started, accounted for at the end of a load run (controller).

A chain a worker starts ends in one result. The results reach the controller through
Redis (:mod:`pytest_wec.wire.source`), else through the worker's spill file or xdist's
channel (:mod:`pytest_wec.wire.spill`); what reached it by neither is lost, and counted::

    lost = started - received          per worker session

``started`` is the largest count known: the session's start counter in the run directory
(exact, even after a SIGKILL), its end record, its latest status (read from the stream, or
from the Redis hash of the sinks' latest statuses, which holds a sink's last word however
far behind the stream's reading is). A session of which none is known (a sink of an older
version, a worker on another host that died) counts what its sink said it sent and never
arrived, plus what it dropped. ``received`` is what the controller took in (the
aggregator's count, *taken*), not what its reader decoded: a batch read and then given up
on at the end is lost, once.

``unread`` is the part of ``lost`` that reached Redis and was still unread (or read and not
yet taken in) when the run ended, the controller behind its workers::

    unread = sent - taken - gap                gap: chains proven missing between what was read

:func:`take_spills` feeds the spill files through the source (which drops what it has seen
already); :func:`account` returns summary.json's ``delivery``::

    {"results_lost": N, "unread": N, "duplicates": batches received twice,
     "by_worker": {"gw0": {"started": N, "received": N, "lost": N, "unread": N,
                           "how": "start counter"}}}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_wec.wire.source import ResultSource
from pytest_wec.wire.spill import counters, spills
from pytest_wec.wire.stream import Batch, Record, WorkerStatus

__all__ = ["account", "take_spills"]

log = logging.getLogger(__name__)


def take_spills(source: ResultSource, run_dir: Path,
                handed: Iterable[bytes] = ()) -> tuple[list[Record], int, int]:
    """The records of every spill (the run directory's files, then those *handed* over by
    xdist), the number of spills read and the chains newly recovered from them."""
    records: list[Record] = []
    count = 0
    datas = [(str(path), data) for path, data in spills(run_dir)]
    datas += [("xdist's channel", data) for data in handed]
    for where, data in datas:
        try:
            got = source.take_spill(data)
        except ValueError as exc:
            log.error("cannot read the spill from %s: %s", where, exc)
            continue
        count += 1
        records += got
    recovered = sum(len(r.chains) for r in records if isinstance(r, Batch))
    return records, count, recovered


def account(source: ResultSource, run_dir: Path,
            statuses: Mapping[str, WorkerStatus] | None = None, *,
            taken: Mapping[tuple[str, str], int] | None = None,
            stored: Mapping[str, WorkerStatus] | None = None) -> dict[str, Any]:
    """summary.json's ``delivery`` (see the module's doc). *statuses*: the latest read from
    the stream (the source's by default); *stored*: those of the Redis hash
    (:meth:`ResultSource.worker_statuses`); *taken*: chains the controller took in per
    ``(worker, session)`` (by default what the source decoded)."""
    started_by = counters(run_dir)
    latest: dict[tuple[str, str], WorkerStatus] = {}
    for status in (statuses if statuses is not None else source.statuses()).values():
        latest[(status["worker"], status["session"])] = status
    for status in (stored or {}).values():  # the newer of the two
        key = (status["worker"], status["session"])
        prev = latest.get(key)
        if prev is None or _newer(status, prev):
            latest[key] = status
    got = source.sessions()
    by_worker: dict[str, dict[str, Any]] = {}
    total = unread_total = 0
    for key in sorted(set(got) | set(started_by) | set(latest) | set(taken or {})):
        decoded, expected = got.get(key, (0, 0))
        received = decoded if taken is None else int(taken.get(key, 0))
        st = latest.get(key)
        sent = max(expected, int(st.get("sent", 0)) if st is not None else 0)
        known = []
        if key in started_by:
            known.append((started_by[key], "start counter"))
        if st is not None and "started" in st:
            known.append((int(st["started"]),
                          "end record" if st.get("final") else "latest status"))
        if known:
            started, how = max(known, key=lambda k: k[0])
            lost = max(started - received, 0)
        else:
            started, how = None, "sent"
            dropped = int(st.get("dropped", 0)) if st is not None else 0
            lost = max(sent - received, 0) + dropped
        # what reached Redis and was not taken in, but for the gaps Redis lost
        unread = min(max(sent - received - max(expected - decoded, 0), 0), lost)
        total += lost
        unread_total += unread
        w = by_worker.setdefault(key[0], {"started": 0, "received": 0, "lost": 0,
                                          "unread": 0, "how": how})
        w["started"] = None if started is None or w["started"] is None \
            else w["started"] + started
        w["received"] += received
        w["lost"] += lost
        w["unread"] += unread
        if lost:
            log.warning("worker %s: %d chain results lost (%s started, %d received, %d of them "
                        "unread; by its %s)", key[0], lost, started, received, unread, how)
    return {"results_lost": total, "unread": unread_total, "duplicates": source.duplicates,
            "by_worker": by_worker}


def _newer(status: WorkerStatus, than: WorkerStatus) -> bool:
    """*status* is a session's later word: an end record, else the later one sent."""
    if bool(status.get("final")) != bool(than.get("final")):
        return bool(status.get("final"))
    return float(status.get("t", 0.0)) >= float(than.get("t", 0.0))
