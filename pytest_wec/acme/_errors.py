"""Errors raised by the ACME client.

Every error is an :class:`AcmeError`; each class carries ``kind``, the short
class written to ``RequestResult["error"]`` when the error ends an HTTP exchange::

    AcmeError
    ├── AcmeTransportError ........ no complete HTTP response arrived
    │   ├── AcmeTimeout ........... "timeout"   the request's total timeout passed
    │   ├── AcmeConnectError ...... "connect"   DNS, TCP, TLS or a reset connection
    │   ├── AcmeBodyTooLarge ...... "tooLarge"  the body exceeded the transport's max_body
    │   └── AcmeHttpError ......... "http"      malformed HTTP, early disconnect
    ├── AcmeProtocolError ......... "badBody"   a response that breaks RFC 8555: invalid
    │   │                                       JSON, wrong Content-Type, missing Location
    │   │                                       or Replay-Nonce
    │   ├── AcmeUnexpectedStatus .. "http"      an error status without a problem document
    │   └── AcmeStatusError ....... "badStatus" an order or authorization status outside
    │                                           RFC 8555 §7.1.6's state machine for it
    ├── AcmeProblem ............... "problem"   a problem document (RFC 8555 §6.7)
    ├── AcmePollTimeout ........... "pollTimeout"  a resource stayed pending past the deadline
    ├── AcmeAuthorizationEnded .... "authzEnded"   an authorization to validate is final but
    │                                              not valid: deactivated, expired, revoked
    │                                              (or invalid before it was answered)
    └── AcmeNotSupported .......... "unsupported"  the directory lacks the resource

``str(AcmeProblem)`` reads ``type :: detail`` followed by one line per
subproblem (RFC 8555 §6.7.1), the way certbot's ``acme.messages.Error`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ERROR_NS",
    "AcmeAuthorizationEnded",
    "AcmeBodyTooLarge",
    "AcmeConnectError",
    "AcmeError",
    "AcmeHttpError",
    "AcmeNotSupported",
    "AcmePollTimeout",
    "AcmeProblem",
    "AcmeProtocolError",
    "AcmeStatusError",
    "AcmeTimeout",
    "AcmeTransportError",
    "AcmeUnexpectedStatus",
]

#: Namespace of the error types registered by RFC 8555 §6.7.
ERROR_NS = "urn:ietf:params:acme:error:"


class AcmeError(Exception):
    """Base of every error the ACME client raises."""

    kind = "error"


class AcmeTransportError(AcmeError):
    """No complete HTTP response arrived."""

    kind = "http"


class AcmeTimeout(AcmeTransportError):
    """The request's total timeout passed before the response body was read."""

    kind = "timeout"


class AcmeConnectError(AcmeTransportError):
    """The connection could not be made or broke (DNS, TCP, TLS, reset)."""

    kind = "connect"


class AcmeBodyTooLarge(AcmeTransportError):
    """The response body exceeded the transport's ``max_body``; it was not read."""

    kind = "tooLarge"


class AcmeHttpError(AcmeTransportError):
    """The server spoke broken HTTP or closed the connection mid-response."""

    kind = "http"


class AcmeProtocolError(AcmeError):
    """A response arrived but breaks RFC 8555 (the message names what was wrong)."""

    kind = "badBody"


class AcmeUnexpectedStatus(AcmeProtocolError):
    """An error status without a problem document (RFC 8555 §6.7 requires one)."""

    kind = "http"

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _StatusOf(Exception):
    """What an error about one object's status carries: its URL, the status, the object."""

    def __init__(
        self, message: str, url: str = "", status: str = "", resource: object = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.resource = resource

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url, self.status, self.resource))


class AcmeStatusError(_StatusOf, AcmeProtocolError):
    """An order or authorization whose ``status`` is none of RFC 8555 §7.1.6's for it.

    Orders are pending, ready, processing, valid or invalid; authorizations pending, valid,
    invalid, deactivated, expired or revoked. Any other status (Pebble 2.4 shows an order
    ``deactivated`` once one of its authorizations is) leads nowhere the RFC defines, so a
    poll ends at once rather than waiting for its timeout. ``url`` and ``status`` name the
    object and what it said; ``resource`` is the object as read.
    """

    kind = "badStatus"


class AcmeAuthorizationEnded(_StatusOf, AcmeError):
    """An authorization being validated reached a final status other than ``valid``.

    RFC 8555 §7.1.6: deactivated (by its account, §7.5.2), expired or revoked are final, so
    the authorization can never become valid; one found ``invalid`` before its challenge is
    answered is final too. Another party changed it (or time did): the CA broke no rule.
    ``url`` and ``status`` say which authorization and what the CA reported; ``resource``
    is the authorization as read.
    """

    kind = "authzEnded"


class AcmePollTimeout(AcmeError):
    """A polled resource did not reach a final status before the deadline.

    ``resource`` is the last state seen (an ``Order`` or ``Authorization``).
    """

    kind = "pollTimeout"

    def __init__(self, message: str, resource: object = None) -> None:
        super().__init__(message)
        self.resource = resource


class AcmeNotSupported(AcmeError):
    """The server's directory does not offer the resource (RFC 8555 §7.1.1)."""

    kind = "unsupported"


class AcmeProblem(AcmeError):
    """A problem document, RFC 8555 §6.7 (RFC 7807).

    ``type`` is the full URN, ``code`` its short name (``badNonce``) for the
    ``urn:ietf:params:acme:error:`` namespace and the full type otherwise.
    ``subproblems`` (§6.7.1) are problems too, each with its ``identifier``.
    ``retry_after`` is the response's Retry-After in seconds, when given.
    """

    kind = "problem"
    # Replay-Nonce of the error response, handed to the retry (RFC 8555 §6.5).
    _nonce: str | None = None

    def __init__(
        self,
        type: str,
        detail: str = "",
        status: int = 0,
        subproblems: Sequence[AcmeProblem] = (),
        identifier: Mapping[str, str] | None = None,
        *,
        retry_after: float | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.detail = detail
        self.status = status
        self.subproblems = tuple(subproblems)
        self.identifier = dict(identifier) if identifier else None
        self.retry_after = retry_after
        self.body = dict(body) if body is not None else {}
        super().__init__(str(self))

    @property
    def code(self) -> str:
        """The short error name: ``badNonce`` for ``urn:ietf:params:acme:error:badNonce``."""
        t = self.type
        return t[len(ERROR_NS) :] if t.startswith(ERROR_NS) else t

    @classmethod
    def from_json(
        cls, obj: Mapping[str, Any], status: int = 0, retry_after: float | None = None
    ) -> AcmeProblem:
        """Build from a decoded problem document (RFC 8555 §6.7, RFC 7807 §3.1).

        ``status`` is the HTTP status, which wins over the document's own
        (advisory, RFC 7807 §3.1). Raises :class:`AcmeProtocolError` when a
        member has the wrong type.
        """
        typ = obj.get("type", "about:blank")
        detail = obj.get("detail", "")
        st = obj.get("status", status)
        ident = obj.get("identifier")
        raw_subs = obj.get("subproblems", [])
        if (
            not isinstance(typ, str)
            or not isinstance(detail, str)
            or not isinstance(st, int)
            or not isinstance(raw_subs, list)
            or not (ident is None or isinstance(ident, dict))
        ):
            raise AcmeProtocolError(f"malformed problem document: {dict(obj)!r:.300}")
        subs = []
        for sub in raw_subs:
            if not isinstance(sub, dict):
                raise AcmeProtocolError(f"malformed subproblem: {sub!r:.300}")
            subs.append(cls.from_json(sub, status=st))
        return cls(
            typ,
            detail,
            status or st,
            subs,
            ident,
            retry_after=retry_after,
            body=obj,
        )

    def __str__(self) -> str:
        text = f"{self.type} :: {self.detail}" if self.detail else self.type
        for sub in self.subproblems:
            text += f"\n{sub._line()}"
        return text

    def _line(self) -> str:
        head = ""
        if self.identifier:
            head = (
                f"Problem for {self.identifier.get('type', '?')}:"
                f"{self.identifier.get('value', '?')}: "
            )
        return head + (f"{self.type} :: {self.detail}" if self.detail else self.type)

    def __repr__(self) -> str:
        return f"AcmeProblem(type={self.type!r}, detail={self.detail!r}, status={self.status})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_problem,
            (
                self.type,
                self.detail,
                self.status,
                self.subproblems,
                self.identifier,
                self.retry_after,
                self.body,
            ),
        )


def _rebuild_problem(
    type: str,
    detail: str,
    status: int,
    subproblems: Sequence[AcmeProblem],
    identifier: Mapping[str, str] | None,
    retry_after: float | None,
    body: Mapping[str, Any],
) -> AcmeProblem:
    return AcmeProblem(
        type, detail, status, subproblems, identifier, retry_after=retry_after, body=body
    )
