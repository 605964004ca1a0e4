"""Rate limits for :class:`~pytest_wec.acme._fakeca.FakeCA`, enforced the way Boulder does.

``FakeCA(limits=FakeLimits(certificates_per_domain=2, retry_after=30))`` refuses a newOrder
once a registered domain (Public Suffix List, :func:`pytest_wec.worker.names.
registered_domain`) of its identifiers has that many certificates issued, and
``new_orders_per_account`` refuses an account's newOrder past that many: each with HTTP 429,
a ``rateLimited`` problem worded as Boulder's ``ratelimits`` package words it (``too many
certificates (2) already issued for "example.com" in the last 168h0m0s, retry after ...:
see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain``) and
``Retry-After``. ``named=True`` also names the limit outright, as newer wordings do.
Certificates count when issued; nothing ever refills (the window is longer than a test).
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FakeLimits", "LimitBook", "RateLimitRefusal"]

_DOCS = "https://letsencrypt.org/docs/rate-limits/"


@dataclass(frozen=True)
class FakeLimits:
    """What a FakeCA limits (None: no limit) and the Retry-After of its refusals."""

    certificates_per_domain: int | None = None
    new_orders_per_account: int | None = None
    retry_after: int = 60
    named: bool = False  # the detail names the limit too ("CertificatesPerDomain: ...")


class RateLimitRefusal(Exception):
    """The refusal to answer with: a 429 ``rateLimited`` problem with its Retry-After."""

    def __init__(self, limit: str, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.limit, self.detail, self.retry_after = limit, detail, retry_after


class LimitBook:
    """A FakeCA's counts under its :class:`FakeLimits`, and the refusals made."""

    def __init__(self, limits: FakeLimits) -> None:
        self.limits = limits
        self.issued: Counter[str] = Counter()  # registered domain -> certificates issued
        self.orders: Counter[str] = Counter()  # account URL -> new orders
        self.refusals: Counter[str] = Counter()  # limit -> refusals answered

    def _refuse(self, limit: str, sentence: str, anchor: str) -> RateLimitRefusal:
        lim = self.limits
        at = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=lim.retry_after)
        detail = (f"{sentence}, retry after {at:%Y-%m-%d %H:%M:%S} UTC: see {_DOCS}#{anchor}")
        if lim.named:
            detail = f"{limit}: {detail}"
        self.refusals[limit] += 1
        return RateLimitRefusal(limit, detail, lim.retry_after)

    def check_order(self, account: str | None, identifiers: Iterable[Mapping[str, Any]]) -> None:
        """Raise :class:`RateLimitRefusal` when a newOrder of *account* for *identifiers*
        is over a limit; else count the order."""
        lim = self.limits
        if lim.new_orders_per_account is not None and account is not None \
                and self.orders[account] >= lim.new_orders_per_account:
            raise self._refuse(
                "NewOrdersPerAccount", f"too many new orders ({lim.new_orders_per_account}) "
                "from this account in the last 3h0m0s", "new-orders-per-account")
        if lim.certificates_per_domain is not None:
            for domain in self._domains(identifiers):
                if self.issued[domain] >= lim.certificates_per_domain:
                    raise self._refuse(
                        "CertificatesPerDomain",
                        f"too many certificates ({lim.certificates_per_domain}) already issued "
                        f'for "{domain}" in the last 168h0m0s',
                        "new-certificates-per-registered-domain")
        if account is not None:
            self.orders[account] += 1

    def count_issued(self, identifiers: Iterable[Mapping[str, Any]]) -> None:
        """A certificate for *identifiers* was issued: one more for each registered domain."""
        for domain in self._domains(identifiers):
            self.issued[domain] += 1

    @staticmethod
    def _domains(identifiers: Iterable[Mapping[str, Any]]) -> set[str]:
        from pytest_wec.worker.names import registered_domain

        out = set()
        for ident in identifiers:
            value = str(ident.get("value", ""))
            if ident.get("type") == "dns":
                out.add(registered_domain(value) or value.lower())
            else:
                out.add(value)
        return out
