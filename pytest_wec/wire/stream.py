"""The wire format of the worker -> controller result channel over a Redis stream.

What both ends share lives here: keys, entry kinds, :class:`WorkerStatus` and the batch
encoding. :class:`~pytest_wec.wire.sink.ResultSink` writes the stream in every worker
(asyncio, next to the load runner), :class:`~pytest_wec.wire.source.ResultSource` reads it
in the controller. An entry is in Redis once XADD returned, so what a worker sent survives
its crash.

Keys, one namespace per run (``run_ns``)::

    wec:{run_ns}:results   stream; every entry has two fields, k (kind) and d (msgpack)
    wec:{run_ns}:workers   hash; worker id -> msgpack WorkerStatus, each worker's latest

Entry kinds::

    k=b  batch   d = [1, worker, session, seq, chains_before, [chain row, ...]]
    k=s  status  d = WorkerStatus (a map)
    k=e  end     d = WorkerStatus with final=True; the worker sends nothing after it

    chain row   = [chain_id, chain, worker, scheduled, started, took, ok, outcome, error,
                   certificates, [request row, ...]]
    request row = [endpoint, method, status, started, took, ok, error, problem], preceded by
                  chain_id and chain (10 items) when these differ from the chain's own

``session`` is random per sink, ``seq`` numbers its batches from 0 and ``chains_before``
counts the chains it sent before the batch: the source drops a batch that arrives twice
(resent after a reconnect) and counts the chains of a gap as lost (Redis restarted without
persistence, stream trimmed unread), as it does the difference between a sink's final
``sent`` and what arrived. A worker is done when every session it opened has ended.
A sink whose buffer fills while Redis is away drops chains and counts them; the count rides
in every status and end record. Nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, Protocol, TypedDict, cast

import msgpack

from pytest_wec.wire.results import ChainResult, RequestResult

__all__ = ["KEY_TTL_S", "STREAM_MAXLEN", "WIRE_VERSION", "Batch", "Record", "Sink",
           "WorkerStatus", "decode_batch", "decode_status", "encode_batch", "results_key",
           "workers_key"]

WIRE_VERSION = 1
STREAM_MAXLEN = 200_000  # entries (batches), approximate trimming
KEY_TTL_S = 7 * 24 * 3600


def results_key(run_ns: str) -> str:
    return f"wec:{run_ns}:results"


def workers_key(run_ns: str) -> str:
    return f"wec:{run_ns}:workers"


class WorkerStatus(TypedDict):
    worker: str
    session: str  # random per sink
    t: float  # epoch seconds when sent
    in_flight: int  # chains running now
    target_share: float  # this worker's share of the run's load, 0..1
    loop_lag_ms: float  # largest event-loop lag since the previous status
    cpu_pct: float  # process CPU since the previous status, percent of one core
    cpu_s: float  # process CPU seconds since the sink started
    sent: int  # chains delivered to Redis so far
    dropped: int  # chains dropped so far (buffer full while Redis was away)
    dropped_requests: int  # their requests
    dropped_starts: int  # open model: starts over the cap on chains in flight, so far
    final: bool  # True in the end record
    io: str  # the HTTP transport and event loop, e.g. "HttptoolsTransport on uvloop"
    last_answer: NotRequired[float]  # epoch of the latest HTTP answer from the CA; 0: none
    waiting: NotRequired[dict[str, int]]  # chains in flight by what they wait on now


@dataclass(frozen=True)
class Batch:
    worker: str
    session: str
    seq: int
    chains_before: int
    chains: list[ChainResult]


Record = Batch | WorkerStatus


class Sink(Protocol):
    """Where a worker's load runner puts its ChainResults."""

    def add(self, chain_result: ChainResult, /) -> None: ...

    def set_status(self, *, in_flight: int | None = None,
                   target_share: float | None = None,
                   dropped_starts: int | None = None) -> None: ...

    async def aclose(self) -> None: ...


def encode_batch(worker: str, session: str, seq: int, chains_before: int,
                 chains: Sequence[ChainResult]) -> bytes:
    rows = []
    for c in chains:
        cid, name = c["chain_id"], c["chain"]
        reqs = []
        for r in c["requests"]:
            row = [r["endpoint"], r["method"], r["status"], r["started"], r["took"], r["ok"],
                   r["error"], r["problem"]]
            if r["chain_id"] != cid or r["chain"] != name:
                row = [r["chain_id"], r["chain"], *row]
            reqs.append(row)
        rows.append([cid, name, c["worker"], c["scheduled"], c["started"], c["took"], c["ok"],
                     c["outcome"], c["error"], c["certificates"], reqs])
    return bytes(msgpack.packb([WIRE_VERSION, worker, session, seq, chains_before, rows]))


def decode_batch(data: bytes) -> Batch:
    version, worker, session, seq, chains_before, rows = msgpack.unpackb(data, use_list=False)
    if version != WIRE_VERSION:
        raise ValueError(f"unknown wire version {version!r}")
    chains: list[ChainResult] = []
    for cid, name, cworker, scheduled, started, took, ok, outcome, error, certs, reqs in rows:
        requests: list[RequestResult] = []
        for row in reqs:
            if len(row) == 8:
                rcid, rname = cid, name
                ep, method, status, rstarted, rtook, rok, rerror, problem = row
            else:
                rcid, rname, ep, method, status, rstarted, rtook, rok, rerror, problem = row
            requests.append({"chain_id": rcid, "chain": rname, "endpoint": ep, "method": method,
                             "status": status, "started": rstarted, "took": rtook, "ok": rok,
                             "error": rerror, "problem": problem})
        chains.append({"chain_id": cid, "chain": name, "worker": cworker,
                       "scheduled": scheduled, "started": started, "took": took, "ok": ok,
                       "outcome": outcome, "error": error, "certificates": certs,
                       "requests": requests})
    return Batch(str(worker), str(session), int(seq), int(chains_before), chains)


def decode_status(data: bytes) -> WorkerStatus:
    """A status or end record's ``d`` field; ValueError when it names no worker and session."""
    st = msgpack.unpackb(data)
    if not isinstance(st, dict) or not isinstance(st.get("worker"), str) \
            or not isinstance(st.get("session"), str):
        raise ValueError("status record without a worker and session")
    return cast(WorkerStatus, st)
