"""The value parsers of the options: text from a command line, environment or ini -> value.

Each takes the option's text and returns its value or raises ValueError saying what is
allowed (:func:`~pytest_wec.settings.resolve` adds where the text came from). Parsers of
values another package owns (mix, thresholds, baselines, dashboard address) import it only
when called, so that reading the settings stays cheap at pytest start-up.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["KeyAlg", "StackMode", "Stage", "parse_duration", "parse_stages"]


class StackMode(enum.Enum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class KeyAlg(enum.Enum):
    ES256 = "ES256"
    ES384 = "ES384"
    RS256 = "RS256"  # RSA 2048
    RS256_3072 = "RS256-3072"
    RS256_4096 = "RS256-4096"


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
                       r"(?:(\d+(?:\.\d+)?)ms)?$")


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``1h30m``, ``250ms`` or plain seconds -> seconds."""
    t = text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        m = _DURATION.match(t)
        if not t or m is None or not any(m.groups()):
            raise ValueError("expected a duration such as 90s, 10m or 1h30m") from None
        h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
        value = h * 3600 + mi * 60 + s + ms / 1000
    if value < 0 or value != value:
        raise ValueError("expected a duration such as 90s, 10m or 1h30m")
    return value


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError("expected a whole number >= 1") from None
    if n < 1:
        raise ValueError("expected a whole number >= 1")
    return n


def _pebbles(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        n = _positive_int(text)
    except ValueError:
        raise ValueError("expected auto or a whole number from 1 to 64") from None
    if n > 64:
        raise ValueError("expected auto or a whole number from 1 to 64")
    return n


def _names(text: str) -> int:
    n = _positive_int(text)
    if n > 100:
        raise ValueError("expected a number of names from 1 to 100")
    return n


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("expected a number > 0") from None
    if not v > 0 or v == float("inf"):
        raise ValueError("expected a number > 0")
    return v


def _positive_duration(text: str) -> float:
    v = parse_duration(text)
    if v <= 0:
        raise ValueError("expected a duration > 0 such as 30s")
    return v


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"expected a URL ({' or '.join(s + '://...' for s in schemes)})")
        return text

    return parse


_DB_EXPECTED = ("expected a SQLite file path, sqlite:///PATH, postgresql://HOST/DB or "
                "mysql://HOST/DB (mariadb:// too)")


def _db_url(text: str) -> str:
    if "://" not in text:
        return text  # a SQLite file path
    from pytest_wec.state._url import url_problem  # SQLAlchemy: only for a URL

    problem = url_problem(text)
    if problem is not None:
        raise ValueError(f"{_DB_EXPECTED} ({problem})")
    return text


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return parse


def _enum(cls: type[enum.Enum]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        raise ValueError(f"expected one of {', '.join(m.value for m in cls)}")

    return parse


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _domain(text: str) -> str:
    t = text.strip().lower().rstrip(".")
    labels = t.split(".")
    if len(labels) < 2 or not all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", x)
                                  for x in labels):
        raise ValueError("expected a DNS domain such as wec.example.com")
    return t


def _text(text: str) -> str:
    return text


def _listen(text: str) -> str:
    try:
        ip = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError("expected an IP address of this host, such as 127.0.0.1 or "
                         "10.0.0.5") from None
    if ip.is_unspecified:
        raise ValueError("expected one address of this host that the CA and the workers "
                         "reach, not a wildcard")
    return str(ip)


Stage = tuple[float, float]  # (duration in seconds, target load or rate at its end)


def parse_stages(text: str) -> tuple[Stage, ...]:
    """``30s:10,5m:200,30s:0`` -> ((30.0, 10.0), (300.0, 200.0), (30.0, 0.0))."""
    stages: list[Stage] = []
    for part in text.split(","):
        dur, sep, target = part.strip().partition(":")
        if not sep:
            raise ValueError("expected stages such as 30s:10,5m:200,30s:0 (duration:target)")
        try:
            seconds = parse_duration(dur)
            value = float(target)
        except ValueError:
            raise ValueError(
                "expected stages such as 30s:10,5m:200,30s:0 (duration:target)") from None
        if seconds <= 0 or not value >= 0 or value == float("inf"):
            raise ValueError("each stage needs a duration > 0 and a target >= 0")
        stages.append((seconds, value))
    return tuple(stages)


def _mix(text: str) -> dict[str, float]:
    from pytest_wec.worker.picker import parse_mix

    return parse_mix(text)


def _thresholds(text: str) -> tuple[Any, ...]:
    from pytest_wec.controller.thresholds import parse_thresholds

    return parse_thresholds(text)


def _save_name(text: str) -> str:
    from pytest_wec.controller.baseline import check_save_name

    return check_save_name(text)


def _storage(text: str) -> Any:
    from pytest_wec.controller.baseline import parse_storage

    return parse_storage(text)


def _compare_fail(text: str) -> tuple[Any, ...]:
    from pytest_wec.controller.comparison import parse_compare_fail

    return parse_compare_fail(text)


def _dashboard(text: str) -> tuple[str, int]:
    from pytest_wec.controller.dashboard import parse_dashboard_addr

    return parse_dashboard_addr(text)


_OTLP_EXPECTED = "expected an OTLP/HTTP URL such as http://127.0.0.1:4318/v1/metrics"


def _otlp_url(text: str) -> str:
    """An OTLP/HTTP (protobuf) metrics endpoint, ``http(s)://HOST[:PORT][/PATH]``; without
    a path, the collectors' ``/v1/metrics``. gRPC is not offered: ``grpc://`` says so."""
    parts = urlsplit(text)
    if parts.scheme in ("grpc", "grpcs"):
        raise ValueError(f"{_OTLP_EXPECTED} (OTLP over gRPC is not supported)")
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok \
            or parts.fragment or any(c.isspace() for c in text):
        raise ValueError(_OTLP_EXPECTED)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/v1/metrics"))
    return text


def _limits(text: str) -> dict[str, int]:
    from pytest_wec.worker.picker import parse_limits

    return parse_limits(text)


# -- External Account Binding (RFC 8555 §7.3.4; pytest_wec.settings.eab) ----------------------
def _eab_kid(text: str) -> str:
    from pytest_wec.settings.eab import parse_kid

    return parse_kid(text)


def _eab_hmac(text: str) -> bytes:
    from pytest_wec.settings.eab import parse_hmac

    return parse_hmac(text)


def _eab_file(text: str) -> str:
    """The path only: the file is read where the settings are resolved (the controller,
    :func:`pytest_wec.settings.eab.check_eab`), never on a worker of another host."""
    if not text.strip():
        raise ValueError("expected the path of a file of 'KID HMAC' lines")
    return text
