"""Checks and parsers that turn HTTP responses into RFC 8555 values.

Each raises :class:`~pytest_wec.acme._errors.AcmeProtocolError` naming what
was wrong: the resource, the expected and the actual.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from ._errors import AcmeProtocolError
from ._transport import Response

__all__ = [
    "json_body",
    "location",
    "media_type",
    "parse_link_header",
    "parse_time",
    "require",
    "rfc3339",
]


def media_type(resp: Response) -> str:
    """The Content-Type without parameters, lowercased ("" when absent)."""
    ct: str = resp.headers.get("content-type", "")
    return ct.partition(";")[0].strip().lower()


def json_body(resp: Response, what: str, media: str = "application/json") -> dict[str, Any]:
    """The body as a JSON object; the Content-Type must be ``media`` (RFC 8555 §6.1)."""
    mt = media_type(resp)
    if mt != media:
        raise AcmeProtocolError(
            f"{what}: expected Content-Type {media}, got {mt or 'none'} "
            f"(HTTP {resp.status}, {len(resp.body)} bytes)"
        )
    try:
        obj = orjson.loads(resp.body)
    except orjson.JSONDecodeError as exc:
        raise AcmeProtocolError(
            f"{what}: body is not valid JSON ({exc}): {resp.body[:120]!r}"
        ) from None
    if not isinstance(obj, dict):
        raise AcmeProtocolError(f"{what}: body is JSON {type(obj).__name__}, not an object")
    return obj


def location(resp: Response, what: str) -> str:
    """The Location of a created resource (RFC 8555 §7.3, §7.4)."""
    loc: str | None = resp.headers.get("location")
    if not loc:
        raise AcmeProtocolError(f"{what}: HTTP {resp.status} response has no Location header")
    return loc


def require(body: Mapping[str, Any], what: str, name: str, typ: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, typ):
        raise AcmeProtocolError(
            f"{what}: field {name!r} missing or not {getattr(typ, '__name__', typ)}: {value!r:.80}"
        )
    return value


def parse_link_header(values: Iterable[str]) -> list[tuple[str, str]]:
    """``(url, rel)`` pairs from Link header values (RFC 8288), e.g. rel="alternate"."""
    out: list[tuple[str, str]] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part.startswith("<") or ">" not in part:
                continue
            url, _, params = part[1:].partition(">")
            rel = ""
            for param in params.split(";"):
                key, _, val = param.strip().partition("=")
                if key.strip().lower() == "rel":
                    rel = val.strip().strip('"')
            out.append((url, rel))
    return out


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp; fractions beyond microseconds (Boulder sends ns) are cut."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        text = f"{head}.{rest[: min(i, 6)]}{rest[i:]}" if i else head + rest
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise AcmeProtocolError(f"not an RFC 3339 time: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def rfc3339(value: datetime | str) -> str:
    """A datetime as RFC 3339 UTC (naive datetimes are taken as UTC)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
