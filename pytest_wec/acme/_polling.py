"""Polling an order or an authorization until the CA is done with it (RFC 8555 §7.4, §7.5.1).

:class:`Polling` is a mixin of :class:`~pytest_wec.acme._client.AcmeClient`: its
``poll_order`` and ``poll_authorization`` fetch through the client's ``get_order`` and
``get_authorization``. A poll waits as the server's Retry-After asks (bounded by the
network's ``max_retry_after``); without one it starts with a short step that doubles up to
the polling interval, and it never waits beyond its ``timeout``.

An authorization poll may be given ``seen``, a wait for the CA's validation request (RFC 8555
§7.5.1: a client that can see it "SHOULD NOT begin polling until it has seen the validation
request from the server"): until the request is seen each wait (Retry-After or step) ends
early when it is; then the authorization is fetched at once and again after short steps
(:data:`SEEN_STEP`, doubling up to the interval), a Retry-After of the CA's answers
honoured. Where no request is seen in time the usual schedule applies.

Every fetch a poll makes is counted in the client's ``polls`` (url -> fetches), where it has
one: the ``polls`` phase of a chain (:mod:`pytest_wec.worker.phases`).

A poll also ends at once on a status that no wait can turn into the one it waits for: one
outside RFC 8555 §7.1.6's state machine for the object (:class:`AcmeStatusError`), or an
authorization that became deactivated, expired or revoked while being validated
(:class:`AcmeAuthorizationEnded`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from ._errors import AcmeAuthorizationEnded, AcmePollTimeout, AcmeStatusError
from ._network import sleep_at_least

if TYPE_CHECKING:
    from ._messages import Account, Authorization, Challenge, Order
    from ._network import AcmeNetwork

__all__ = [
    "AUTHORIZATION_ENDED",
    "AUTHORIZATION_STATUSES",
    "ORDER_STATUSES",
    "SEEN_STEP",
    "Polling",
    "check_authorization_status",
    "check_order_status",
]

log = logging.getLogger(__name__)

#: The order statuses of RFC 8555 §7.1.6.
ORDER_STATUSES = frozenset({"pending", "ready", "processing", "valid", "invalid"})
#: The authorization statuses of RFC 8555 §7.1.6.
AUTHORIZATION_STATUSES = frozenset(
    {"pending", "valid", "invalid", "deactivated", "expired", "revoked"}
)
#: Final authorization statuses (§7.1.6) a pending authorization reaches without validation.
AUTHORIZATION_ENDED = frozenset({"deactivated", "expired", "revoked"})
#: Seconds: the first polling step once the validation request is seen (then doubling).
SEEN_STEP = 0.005

#: Waits up to the seconds given for the CA's validation request: True once it is seen.
Seen = Callable[[float], Awaitable[bool]]


class _Polled(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def retry_after(self) -> float | None: ...


P = TypeVar("P", bound=_Polled)


class _Fetches(Protocol):
    """What :class:`Polling` needs of the class it is mixed into."""

    @property
    def network(self) -> AcmeNetwork: ...

    async def get_order(self, account: Account, url: str) -> Order: ...

    async def get_authorization(self, account: Account, url: str) -> Authorization: ...


class Polling:
    """``poll_order`` (§7.4) and ``poll_authorization`` (§7.5.1) for an ACME client."""

    __slots__ = ()

    async def poll_order(
        self: _Fetches,
        account: Account,
        order: Order,
        timeout: float = 60.0,
        *,
        until: Literal["ready", "valid"] = "valid",
        interval: float | None = None,
        step: float | None = None,
    ) -> Order:
        """Poll the order until it is final (§7.4): ``valid`` or ``invalid``.

        ``until="ready"`` also stops at ``ready``: use it before finalize, to
        wait for the authorizations to be validated. Raises AcmePollTimeout.

        *order* is the state last seen: one already final is returned without a
        request (a CA that finalizes at once answers finalize with ``valid``), and
        after a ``processing`` one (the CA is issuing) the first poll waits its
        Retry-After or the first polling step rather than asking at once.

        A status outside §7.1.6's order states (in *order* or any answer) raises
        :class:`AcmeStatusError` at once.

        *step*: the first polling step without a Retry-After (default: the network's
        ``poll_first``), doubling up to the interval; a short one after finalize measures
        a fast CA's issuance rather than the step.
        """
        done = ("ready", "valid", "invalid") if until == "ready" else ("valid", "invalid")
        check_order_status(order)
        if order.status in done:
            return order
        first: float | Literal["step"] | None = None
        if order.status == "processing":
            first = order.retry_after if order.retry_after is not None else "step"
        return await _poll(
            self.network,
            _counted(self, order.url, lambda: self.get_order(account, order.url)),
            lambda o: check_order_status(o) in done,
            timeout,
            interval,
            f"order {order.url}",
            wait_first=first,
            first_step=step,
        )

    async def poll_authorization(
        self: _Fetches,
        account: Account,
        url: str,
        timeout: float = 60.0,
        *,
        interval: float | None = None,
        answered: Challenge | None = None,
        seen: Seen | None = None,
    ) -> Authorization:
        """Poll until the authorization leaves ``pending`` (§7.5.1): ``valid`` or ``invalid``.

        Raises AcmePollTimeout; :class:`AcmeStatusError` at once on a status outside
        §7.1.6's authorization states; :class:`AcmeAuthorizationEnded` at once when it is
        deactivated, expired or revoked (final: it will never be validated).

        *answered*: the challenge just answered (the result of
        :meth:`~pytest_wec.acme._client.AcmeClient.answer_challenge`). While it is still
        being validated the first poll waits its Retry-After or the first polling step:
        asked at once, the answer is nearly always ``pending``.

        *seen*: waits for the CA's validation request (§7.5.1; see the module docstring):
        a wait ends when it is seen, the authorization is then fetched at once and after
        short steps. Without it, or where it sees nothing, the schedule above applies.
        """
        first: float | Literal["step"] | None = None
        if answered is not None and answered.status in ("pending", "processing"):
            first = answered.retry_after if answered.retry_after is not None else "step"
        return await _poll(
            self.network,
            _counted(self, url, lambda: self.get_authorization(account, url)),
            lambda a: check_authorization_status(a, url, validating=True) != "pending",
            timeout,
            interval,
            f"authorization {url}",
            wait_first=first,
            seen=seen,
        )


def _counted(client: object, url: str,
             fetch: Callable[[], Awaitable[P]]) -> Callable[[], Awaitable[P]]:
    """*fetch*, counted in ``client.polls[url]`` where the client keeps such counts."""
    polls: dict[str, int] | None = getattr(client, "polls", None)
    if polls is None:
        return fetch

    def counted() -> Awaitable[P]:
        polls[url] = polls.get(url, 0) + 1
        return fetch()

    return counted


def check_order_status(order: Order) -> str:
    """*order*'s status; :class:`AcmeStatusError` when §7.1.6 has no such order status."""
    status = order.status
    if status not in ORDER_STATUSES:
        raise AcmeStatusError(
            f"order {order.url}: status {status!r} is not an order status of RFC 8555 §7.1.6",
            order.url, status, order)
    return status


def check_authorization_status(
    authz: Authorization, url: str, *, validating: bool = False
) -> str:
    """*authz*'s status; :class:`AcmeStatusError` when §7.1.6 has no such authorization
    status. *validating* (its challenge answered): :class:`AcmeAuthorizationEnded` when it
    is deactivated, expired or revoked, final statuses it can never be validated from."""
    status = authz.status
    if status not in AUTHORIZATION_STATUSES:
        raise AcmeStatusError(
            f"authorization {url}: status {status!r} is not an authorization status of "
            f"RFC 8555 §7.1.6", url, status, authz)
    if validating and status in AUTHORIZATION_ENDED:
        ident = authz.identifier
        raise AcmeAuthorizationEnded(
            f"authorization {url} ({ident.type}:{ident.value}) became {status!r} while being "
            f"validated: a final status of RFC 8555 §7.1.6, it can never be valid",
            url, status, authz)
    return status


async def _poll(
    network: AcmeNetwork,
    fetch: Callable[[], Awaitable[P]],
    done: Callable[[P], bool],
    timeout: float,
    interval: float | None,
    what: str,
    *,
    wait_first: float | Literal["step"] | None = None,
    first_step: float | None = None,
    seen: Seen | None = None,
) -> P:
    """Fetch until *done* (which raises to end the poll at once, on a status no wait can
    change). ``wait_first``: None fetches at once; seconds (a Retry-After) wait that long
    first, capped; ``"step"`` waits the first polling step first. ``first_step``: that
    step (default: the network's ``poll_first``). ``seen``: until it reports the CA's
    validation request, every wait ends early when it does; then short steps."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    default = network.poll_interval if interval is None else interval
    cap = network.max_retry_after
    # Without Retry-After: a short first wait, doubling up to the interval, so that a
    # fast CA's latency is measured rather than the polling interval.
    step = min(network.poll_first if first_step is None else first_step, default)
    waiting = seen

    async def pause(delay: float) -> None:
        """Wait *delay* seconds, or (still waiting for it) until the validation request is
        seen: then the next fetch is at once and the steps after it short."""
        nonlocal waiting, step
        if waiting is None:
            await sleep_at_least(delay)
            return
        end = loop.time() + delay
        try:
            got = await waiting(delay)
        except Exception as exc:  # a broken feed costs only the early wake-up
            log.debug("%s: waiting for the validation request failed: %s", what, exc)
            got = False
        if got:
            log.debug("%s: validation request seen; polling now", what)
            waiting, step = None, min(SEEN_STEP, default)
            return
        if (left := end - loop.time()) > 0:  # never before a Retry-After (nor the step)
            await sleep_at_least(left)

    if wait_first is not None:
        if wait_first == "step":
            first, step = step, min(step * 2, default)
        else:
            first = min(wait_first, cap)
        if first > 0:
            await pause(min(first, max(0.0, deadline - loop.time())))
    res = await fetch()
    while not done(res):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AcmePollTimeout(f"{what} still {res.status} after {timeout:g}s", res)
        if res.retry_after is None:
            delay = min(step, remaining)
            step = min(step * 2, default)
        else:
            delay = min(res.retry_after, cap, remaining)
        log.debug("%s is %s; polling again in %.3gs", what, res.status, delay)
        await pause(delay)
        res = await fetch()
    return res
