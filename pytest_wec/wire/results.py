"""Result records: what every HTTP exchange and every chain run produce.

These are plain data (``TypedDict``) so that they cross process boundaries as
msgpack or JSON, never pickled objects (DESIGN.md, "Results").

``RequestResult``: one HTTP exchange with the CA.
``ChainResult``: one run of a chain, with the requests it made.

Times: ``started`` and ``scheduled`` are epoch seconds (``time.time()``);
``took`` is seconds measured with ``time.perf_counter()``: from the request's write to the
arrival of its answer's last bytes (the kernel's receive time on Linux) where the transport
stamps them
(:class:`pytest_wec.acme._transport.Response`), else around the call. ``connect`` (optional):
for a request that opened its connection, the seconds that took (TCP, and TLS for https),
which a stamping transport leaves out of ``took``.

``ChainResult["phases"]`` (optional: absent when the chain went through none, and in
results written before phases existed): phase name -> its values in this chain run, seconds
for the time phases, whole numbers for the counts (``validation_requests``, ``polls``); what
each phase measures is :data:`pytest_wec.controller.phases.PHASES`.
``ChainResult["deviations"]`` (optional): ``[kind, detail]`` pairs, the RFC deviations the
chain's checks saw (``chains._checks.warn_deviation``).

Rate limits (optional, docs/load-mode.md "Rate limits"): ``RequestResult["limit"]`` the limit
a ``rateLimited`` problem's detail names; ``ChainResult["retry_waits"]`` the client's
Retry-After sleeps between attempts, ``[endpoint, status, seconds, limit]`` (no request's
``took`` holds them); ``ChainResult["retry_after"]`` the Retry-After (seconds) of the
rate-limit refusal that ended the chain; ``ChainResult["rate_limit_wait"]`` the seconds its
virtual user waits after it before the next chain (closed model).
"""

from __future__ import annotations

from typing import NotRequired, Protocol, TypedDict

__all__ = [
    "ENDPOINTS",
    "ChainResult",
    "Phases",
    "RequestObserver",
    "RequestResult",
]

#: ACME resource names used as ``RequestResult["endpoint"]`` (never a URL with ids).
ENDPOINTS = (
    "directory",
    "newNonce",
    "newAccount",
    "newOrder",
    "authz",
    "challenge",
    "finalize",
    "order",
    "certificate",
    "revokeCert",
    "keyChange",
    "account",
    "renewalInfo",
    "other",
)


class RequestResult(TypedDict):
    chain_id: str
    chain: str
    endpoint: str
    method: str
    status: int  # HTTP status; 0 when no response arrived
    started: float  # epoch seconds
    took: float  # seconds
    ok: bool
    error: str | None  # error class, e.g. "timeout", "connect", "problem", "badBody"
    problem: str | None  # ACME problem type, e.g. "urn:ietf:params:acme:error:badNonce"
    limit: NotRequired[str]  # rateLimited: the limit its detail names, e.g. NewOrdersPerAccount
    connect: NotRequired[float]  # seconds to open the connection it went on, if it opened one


class Phases(TypedDict, total=False):
    """One chain run's phases: one value per authorization or order it went through."""

    validation: list[float]  # seconds
    first_validation_request: list[float]  # seconds
    validation_requests: list[int]  # per authorization
    issuance: list[float]  # seconds
    time_to_certificate: list[float]  # seconds
    polls: list[int]  # per order


class ChainResult(TypedDict):
    chain_id: str
    chain: str
    worker: str
    scheduled: float  # intended start (epoch seconds); == started in the closed model
    started: float  # epoch seconds
    took: float  # seconds from the real start
    ok: bool
    outcome: str  # "ok" | "failed" | "cancelled" | "skipped" (context missing, e.g. no account)
    error: str | None  # "ExceptionClass: message" or an ACME "type :: detail"
    certificates: int  # certificates issued by this chain run
    requests: list[RequestResult]
    phases: NotRequired[Phases]
    deviations: NotRequired[list[list[str]]]  # [kind, detail]
    #: open model: the part of ``started - scheduled`` (seconds) the generator's own work
    #: explains (``pytest_wec.worker.runner.own_lag``); absent in the closed model
    lag_own: NotRequired[float]
    #: rate limits (module doc): Retry-After sleeps in the client, [endpoint, status, s, limit]
    retry_waits: NotRequired[list[list[object]]]
    retry_after: NotRequired[float]  # the refusal that ended the chain said so (seconds)
    rate_limit_wait: NotRequired[float]  # its virtual user waits this long before the next


class RequestObserver(Protocol):
    """Receives every RequestResult the ACME client produces."""

    def __call__(self, result: RequestResult, /) -> None: ...
