"""Which challenge a chain answers for an authorization, and where the CA reaches it.

``--wec-challenge`` is a preference list (``tls-alpn-01,http-01``): each authorization is
answered with the first listed type the CA offers for its identifier (RFC 8555 §7.5: the
server says which challenges it accepts, per authorization; RFC 8738 §7: dns-01 is never
offered for an IP address). An authorization offering none of them cannot be answered by
this run: the chain is skipped with the reason (:meth:`ChainContext.skip
<pytest_wec.worker.context.ChainContext.skip>`), not failed, for it is not the CA's fault.

``--wec-ip`` (:class:`~pytest_wec.settings.anyca.ChallengeAddresses`) says where the
challenge server answers each type: the IP identifiers chains order
(:func:`ip_identifier`), and the address DNS names of a type with an address of its own are
routed to while their challenge is published (:func:`route_for`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["ip_identifier", "no_address", "not_offered", "pick", "preference", "route_for"]


def preference(choice: str | Sequence[str] | None, settings: Any) -> tuple[str, ...]:
    """The challenge types to try, in order: *choice* (one type, or several in order), else
    ``--wec-challenge``."""
    if choice is None:
        return tuple(settings.challenge)
    if isinstance(choice, str):
        return (choice,)
    return tuple(choice)


def pick(challenges: Iterable[Any], prefs: Sequence[str]) -> Any | None:
    """The first challenge of a type in *prefs*, by the order of *prefs*; None when the
    authorization offers none of them."""
    offered = {c.type: c for c in challenges}
    for kind in prefs:
        if kind in offered:
            return offered[kind]
    return None


def not_offered(authz: Any, prefs: Sequence[str]) -> str:
    """Why *authz* cannot be answered with any of *prefs*, in words."""
    ident = authz.identifier
    offered = ", ".join(c.type for c in authz.challenges) or "none"
    asked = " or ".join(prefs)
    return (f"the CA offers no {asked} challenge for {ident.type}:{ident.value} (offered: "
            f"{offered}); --wec-challenge lists the types this run answers")


def ip_identifier(settings: Any, info: Mapping[str, Any], kind: str = "http-01") -> str | None:
    """The IP address to order as an IP identifier validated by *kind* (RFC 8738): where
    the challenge server answers that type (``--wec-ip``), else where the embedded one
    listens (``--wec-listen``); None when neither is known (a challtestsrv without
    ``--wec-ip``)."""
    given = settings.ip.for_type(kind) if settings.ip is not None else None
    return given or info.get("challenge_ip") or None


def no_address(kind: str) -> str:
    """Why no IP identifier can be ordered, in words."""
    return (f"no address to order as an IP identifier validated by {kind}: the challenge "
            "server is a challtestsrv (--wec-challtestsrv); --wec-ip gives its address")


def route_for(settings: Any, kind: str, id_type: str) -> str | None:
    """The address a DNS identifier validated by *kind* must resolve to while its
    challenge is published: the type's own ``--wec-ip`` address; None when the challenge
    server's DNS answers its default for every name (and for IP identifiers, which the CA
    reaches without DNS)."""
    if id_type != "dns" or kind == "dns-01" or settings.ip is None:
        return None
    routed: str | None = settings.ip.routed(kind)
    return routed
