"""The wire format of the worker -> controller result channel over a Redis stream.

What both ends share lives here: keys, entry kinds, :class:`WorkerStatus` and the batch
encoding. :class:`~pytest_wec.wire.sink.ResultSink` writes the stream in every worker
(asyncio, next to the load runner), :class:`~pytest_wec.wire.source.ResultSource` reads it
in the controller. An entry is in Redis once XADD returned, so what a worker sent survives
its crash.

Keys, one namespace per run (``run_ns``)::

    wec:{run_ns}:results   stream; every entry has two fields, k (kind) and d (msgpack)
    wec:{run_ns}:workers   hash; worker id -> msgpack WorkerStatus, each worker's latest
    wec:{run_ns}:alive:{worker}/{session}
                           counter; INCR with every write of a sink: 1 after the first means
                           Redis lost its data (restarted without persistence)

Entry kinds::

    k=b  batch   d = [1, worker, session, seq, chains_before, [chain row, ...]]
    k=s  status  d = WorkerStatus (a map)
    k=e  end     d = WorkerStatus with final=True; the worker sends nothing after it

    chain row   = [chain_id, chain, worker, scheduled, started, took, ok, outcome, error,
                   certificates, [request row, ...]], then, when the chain has any, a map
                  {"phases": ..., "deviations": ..., "lag_own": ..., and the rate limits'
                  "retry_waits", "retry_after", "rate_limit_wait", "limits": [[request
                  index, limit], ...]} (a reader takes rows with or without it)
    request row = [endpoint, method, status, started, took, ok, error, problem], preceded by
                  chain_id and chain (10 items) when these differ from the chain's own

``session`` is random per sink, ``seq`` numbers its batches from 0 and ``chains_before``
counts the chains it sent before the batch: the source drops a batch that arrives twice
(resent after a reconnect) and counts the chains of a gap as lost (Redis restarted without
persistence, stream trimmed unread), as it does the difference between a sink's final
``sent`` and what arrived. A worker is done when every session it opened has ended.
A sink whose buffer fills while Redis is away drops chains and counts them; the count rides
in every status and end record. Nothing is lost silently.

A sink that finds Redis restarted (its ``alive`` counter back at 1) sends again the batches
of its last :data:`REPLAY_S` seconds, which the controller may not have read before Redis
died; the source keeps every batch it has not seen, in any order, and counts a session's
loss at the end only (``expected - received``). What a sink cannot deliver at its close it
writes to a spill file in the run directory (or hands back for the xdist channel), which
the controller reads at the end::

    RUN_DIR/workers/{worker}.{session}.spill     msgpack [SPILL_VERSION, worker, session,
                                                  [batch d, ...], end record d]
    RUN_DIR/workers/{worker}.{session}.started   8 bytes, little-endian: chains this sink's
                                                  worker started, updated at every start
                                                  (survives the worker's SIGKILL)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, cast

import msgpack

from pytest_wec.wire.results import ChainResult, Phases, RequestResult

__all__ = ["KEY_TTL_S", "REPLAY_S", "SPILL_VERSION", "STREAM_MAXLEN", "WIRE_VERSION", "Batch",
           "Record", "Sink", "Spill", "WorkerStatus", "alive_key", "counter_path",
           "decode_batch", "decode_spill", "decode_status", "encode_batch", "encode_spill",
           "read_counter", "results_key", "spill_path", "workers_dir", "workers_key"]

WIRE_VERSION = 1
SPILL_VERSION = 1
STREAM_MAXLEN = 200_000  # entries (batches), approximate trimming
KEY_TTL_S = 7 * 24 * 3600
#: seconds of sent batches a sink keeps, to send again when it finds Redis restarted
REPLAY_S = 30.0


def results_key(run_ns: str) -> str:
    return f"wec:{run_ns}:results"


def workers_key(run_ns: str) -> str:
    return f"wec:{run_ns}:workers"


def alive_key(run_ns: str, worker: str, session: str) -> str:
    return f"wec:{run_ns}:alive:{worker}/{session}"


def workers_dir(run_dir: str | Path) -> Path:
    """Where sinks leave their start counters and spill files."""
    return Path(run_dir) / "workers"


def spill_path(run_dir: str | Path, worker: str, session: str) -> Path:
    return workers_dir(run_dir) / f"{worker}.{session}.spill"


def counter_path(run_dir: str | Path, worker: str, session: str) -> Path:
    return workers_dir(run_dir) / f"{worker}.{session}.started"


def read_counter(path: Path) -> int | None:
    """A start counter's value; None when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return int.from_bytes(data[:8], "little") if len(data) >= 8 else None


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
    started: NotRequired[int]  # chains the worker started so far (each ends in one result)
    buffered: NotRequired[int]  # chains ended and not yet delivered
    spilled: NotRequired[int]  # end record: chains written to the spill file
    pid: NotRequired[int]  # the worker's process


@dataclass(frozen=True)
class Batch:
    worker: str
    session: str
    seq: int
    chains_before: int
    chains: list[ChainResult]


Record = Batch | WorkerStatus


@dataclass(frozen=True)
class Spill:
    """What a sink could not deliver at its close (see the module's doc)."""

    worker: str
    session: str
    batches: list[bytes]  # encoded batches (``encode_batch``), some maybe delivered already
    end: bytes  # the end record (msgpack WorkerStatus, final=True)


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
        row = [cid, name, c["worker"], c["scheduled"], c["started"], c["took"], c["ok"],
               c["outcome"], c["error"], c["certificates"], reqs]
        extra: dict[str, Any] = {k: c.get(k) for k in ("phases", "deviations", "retry_waits")
                                 if c.get(k)}
        for key in ("lag_own", "retry_after", "rate_limit_wait"):
            if key in c:
                extra[key] = c[key]
        limits = [[i, r["limit"]] for i, r in enumerate(c["requests"]) if r.get("limit")]
        if limits:  # the limit a rateLimited request's problem named
            extra["limits"] = limits
        connects = [[i, r["connect"]] for i, r in enumerate(c["requests"]) if r.get("connect")]
        if connects:  # the requests that opened their connection, and how long that took
            extra["connects"] = connects
        if extra:
            row.append(extra)
        rows.append(row)
    return bytes(msgpack.packb([WIRE_VERSION, worker, session, seq, chains_before, rows]))


def decode_batch(data: bytes) -> Batch:
    version, worker, session, seq, chains_before, rows = msgpack.unpackb(data, use_list=False)
    if version != WIRE_VERSION:
        raise ValueError(f"unknown wire version {version!r}")
    chains: list[ChainResult] = []
    for crow in rows:
        cid, name, cworker, scheduled, started, took, ok, outcome, error, certs, reqs = crow[:11]
        extra = crow[11] if len(crow) > 11 and isinstance(crow[11], dict) else None
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
        c: ChainResult = {"chain_id": cid, "chain": name, "worker": cworker,
                          "scheduled": scheduled, "started": started, "took": took, "ok": ok,
                          "outcome": outcome, "error": error, "certificates": certs,
                          "requests": requests}
        if extra:
            if isinstance(extra.get("phases"), dict):
                c["phases"] = cast(Phases, {str(k): list(v) for k, v in extra["phases"].items()
                                            if isinstance(v, list | tuple)})
            if isinstance(extra.get("deviations"), list | tuple):
                c["deviations"] = [list(d) for d in extra["deviations"]
                                   if isinstance(d, list | tuple)]
            if isinstance(extra.get("lag_own"), int | float):
                c["lag_own"] = float(extra["lag_own"])
            _rate_limit_extras(c, extra)
            _connect_extras(requests, extra)
        chains.append(c)
    return Batch(str(worker), str(session), int(seq), int(chains_before), chains)


def _rate_limit_extras(c: ChainResult, extra: dict[Any, Any]) -> None:
    """The rate limits' part of a chain row's map, back onto *c* and its requests."""
    if isinstance(extra.get("retry_waits"), list | tuple):
        c["retry_waits"] = [list(w) for w in extra["retry_waits"] if isinstance(w, list | tuple)]
    if isinstance(extra.get("retry_after"), int | float):
        c["retry_after"] = float(extra["retry_after"])
    if isinstance(extra.get("rate_limit_wait"), int | float):
        c["rate_limit_wait"] = float(extra["rate_limit_wait"])
    requests = c["requests"]
    for pair in extra.get("limits") or ():
        if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], int) \
                and 0 <= pair[0] < len(requests):
            requests[pair[0]]["limit"] = str(pair[1])


def _connect_extras(requests: list[RequestResult], extra: dict[Any, Any]) -> None:
    """The seconds each request that opened its connection spent opening it."""
    for pair in extra.get("connects") or ():
        if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], int) \
                and 0 <= pair[0] < len(requests) and isinstance(pair[1], int | float):
            requests[pair[0]]["connect"] = float(pair[1])


def encode_spill(spill: Spill) -> bytes:
    return bytes(msgpack.packb([SPILL_VERSION, spill.worker, spill.session, spill.batches,
                                spill.end]))


def decode_spill(data: bytes) -> Spill:
    """ValueError when *data* is no spill of a known version."""
    try:
        version, worker, session, batches, end = msgpack.unpackb(data)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a spill file: {exc}") from None
    if version != SPILL_VERSION or not isinstance(batches, list) \
            or not all(isinstance(b, bytes) for b in batches) or not isinstance(end, bytes):
        raise ValueError(f"unknown spill version {version!r} or layout")
    return Spill(str(worker), str(session), batches, end)


def decode_status(data: bytes) -> WorkerStatus:
    """A status or end record's ``d`` field; ValueError when it names no worker and session."""
    st = msgpack.unpackb(data)
    if not isinstance(st, dict) or not isinstance(st.get("worker"), str) \
            or not isinstance(st.get("session"), str):
        raise ValueError("status record without a worker and session")
    return cast(WorkerStatus, st)
