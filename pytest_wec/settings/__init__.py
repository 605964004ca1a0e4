"""Options: every setting is a triple ``--wec-x`` / ``wec_x`` (ini) / ``WEC_X`` (env).

The table :data:`OPTIONS` drives both registration (``pytest_addoption``) and resolution.
Precedence: command line, then environment, then ini file, then the default given here
(the one place defaults live). Resolution happens once, into the frozen :class:`Settings`
kept in ``config.stash``; a bad value is a :class:`ConfigError` that names its source and
what is allowed, which the plugin turns into ``pytest.UsageError``.

xdist workers do not resolve: the controller hands them the texts its settings were parsed
from, with their sources, as plain data (:meth:`Settings.to_plain` through ``workerinput``),
and they parse those again; neither the environment nor the ini file of the controller's
host reaches a worker on another host.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pytest_wec.errors import ConfigError

__all__ = [
    "OPTIONS",
    "KeyAlg",
    "Option",
    "Settings",
    "StackMode",
    "parse_duration",
    "parse_stages",
    "resolve",
]


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


def _db_url(text: str) -> str:
    if "://" not in text:
        return text  # a SQLite file path
    scheme = text.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ValueError("expected a SQLite file path, sqlite:///PATH or postgresql://...")
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
    from pytest_wec.controller.gating import parse_thresholds

    return parse_thresholds(text)


def _save_name(text: str) -> str:
    from pytest_wec.controller.baseline import check_save_name

    return check_save_name(text)


def _storage(text: str) -> Any:
    from pytest_wec.controller.baseline import parse_storage

    return parse_storage(text)


def _compare_fail(text: str) -> tuple[Any, ...]:
    from pytest_wec.controller.baseline import parse_compare_fail

    return parse_compare_fail(text)


def _dashboard(text: str) -> tuple[str, int]:
    from pytest_wec.controller.dashboard import parse_dashboard_addr

    return parse_dashboard_addr(text)


def _limits(text: str) -> dict[str, int]:
    from pytest_wec.worker.picker import parse_limits

    return parse_limits(text)


@dataclass(frozen=True)
class Option:
    """One setting: its name (``x`` in ``--wec-x``), parser, default and help."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    flag: bool = False  # a command-line switch without a value
    multi: bool = False  # repeatable; the ini option is a list of lines, the env ';'-separated
    const: str | None = None  # the value of the bare option (``--wec-compare``)
    ini_name: str | None = None

    @property
    def cli(self) -> str:
        return "--wec-" + self.name

    @property
    def ini(self) -> str:
        return self.ini_name or "wec_" + self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "WEC_" + self.name.replace("-", "_").upper()

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("directory", _url("https", "http"), None,
           "ACME directory URL of an external CA (default: start the embedded Pebble)", "URL"),
    Option("ca-bundle", _text, None, "PEM file of CAs to trust for --wec-directory", "PATH"),
    Option("insecure", _bool, False, "do not verify the CA's TLS certificate", flag=True),
    Option("pebble-bin", _text, None, "the pebble binary to start (default: pebble on PATH)",
           "PATH"),
    Option("redis", _url("redis", "rediss", "unix"), None,
           "Redis URL to use instead of starting redis-server", "URL"),
    Option("challtestsrv", _url("http", "https"), None,
           "publish challenges through this challtestsrv management API "
           "(e.g. Boulder's chall-test-srv) instead of the embedded challenge server", "URL"),
    Option("db", _db_url, None,
           "state DB: a SQLite file path or postgresql://... (default: state.db in the run dir)",
           "URL"),
    Option("domain", _domain, "wec.example.com", "base domain for random names", "DOMAIN"),
    Option("names", _names, 1, "names per order, 1 to 100", "N"),
    Option("challenge", _choice("http-01", "dns-01", "tls-alpn-01"), "http-01",
           "challenge type chains answer by default", "TYPE"),
    Option("account-key", _enum(KeyAlg), KeyAlg.ES256,
           "account key: ES256, ES384, RS256 (RSA 2048), RS256-3072, RS256-4096", "ALG"),
    Option("cert-key", _choice("ec256", "ec384", "rsa2048"), "ec256",
           "certificate key type for CSRs", "KIND"),
    Option("transport", _choice("httptools", "aiohttp", "httpx"), "httptools",
           "HTTP transport: httptools (lean HTTP/1.1 on asyncio, the cheapest), aiohttp, "
           "httpx", "NAME"),
    Option("loop", _choice("uvloop", "asyncio"), "uvloop",
           "event loop of a load run's workers: uvloop (cheaper per request) or asyncio",
           "NAME"),
    Option("timeout", _positive_duration, 30.0, "timeout of each HTTP request", "DURATION"),
    Option("out", _text, None, "run directory (default: wec-results/<run id>/)", "DIR"),
    Option("stack", _enum(StackMode), StackMode.AUTO,
           "start the embedded stack: auto (when chains run), on, off", "MODE"),
    Option("token", _text, None,
           "token callers of the challenge server's management API must present", "TOKEN"),
    Option("listen", _listen, "127.0.0.1",
           "IP address the whole embedded stack binds (Pebble, redis-server, the challenge "
           "server and its management API) and puts in the URLs workers get; an address "
           "other hosts reach lets workers run there (give --wec-token too)", "HOST"),
    # load mode
    Option("load", _positive_int, None,
           "chains in flight across all workers (closed model); with --wec-rate, the cap",
           "N"),
    Option("rate", _positive_float, None,
           "chain starts per second across all workers (open model)", "R"),
    Option("stages", parse_stages, None,
           "ramps of the load (or rate with --wec-rate), e.g. 30s:10,5m:200,30s:0", "SPEC"),
    Option("duration", _positive_duration, 60.0, "how long a load run lasts", "DURATION"),
    Option("grace", parse_duration, 30.0,
           "how long chains in flight may finish after the end; then they are cancelled",
           "DURATION"),
    Option("mix", _mix, None, "chain weights, e.g. new_order=5,revoke_certificate=1", "SPEC"),
    Option("limit", _limits, None,
           "hard limits past which producing chains stop, e.g. accounts=1000", "SPEC"),
    Option("log-format", _choice("jsonl", "msgpack"), "jsonl", "results log format", "FMT"),
    # CI gating
    Option("threshold", _thresholds, (),
           "a latency or error threshold that gates the exit status, e.g. "
           "'p95(endpoint:newOrder) < 500ms' (repeatable; ini: one per line)", "EXPR",
           multi=True, ini_name="wec_thresholds"),
    Option("abort-on-fail", _bool, False,
           "end the run early once a threshold can no longer pass", flag=True),
    Option("save", _save_name, None,
           "store this run's benchmark.json as a baseline named NAME", "NAME"),
    Option("storage", _storage, ".benchmarks",
           "where baselines are stored (pytest-benchmark's layout)", "DIR"),
    Option("compare", _text, None,
           "compare with a stored baseline: NAME, PATH or latest (the default when bare)",
           "[NAME|PATH|latest]", const="latest"),
    Option("compare-fail", _compare_fail, None,
           "fail when a figure regressed past its bound, e.g. p95:10%,p99:20%,error_rate:0.5",
           "SPEC"),
    Option("dashboard", _dashboard, None,
           "serve the live dashboard of a load run on [HOST:]PORT (a bare PORT binds "
           "127.0.0.1; 0 takes a free port)", "[HOST:]PORT"),
)

_BY_FIELD = {o.field: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The effective settings of a run, resolved once."""

    directory: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    pebble_bin: str | None = None
    redis: str | None = None
    challtestsrv: str | None = None
    db: str | None = None
    domain: str = "wec.example.com"
    names: int = 1
    challenge: str = "http-01"
    account_key: KeyAlg = KeyAlg.ES256
    cert_key: str = "ec256"
    transport: str = "httptools"
    loop: str = "uvloop"
    timeout: float = 30.0
    out: str | None = None
    stack: StackMode = StackMode.AUTO
    token: str | None = None
    listen: str = "127.0.0.1"
    load: int | None = None
    rate: float | None = None
    stages: tuple[Stage, ...] | None = None
    duration: float = 60.0
    grace: float = 30.0
    mix: Mapping[str, float] | None = None
    limit: Mapping[str, int] | None = None
    log_format: str = "jsonl"
    dashboard: tuple[str, int] | None = None
    threshold: tuple[Any, ...] = ()
    abort_on_fail: bool = False
    save: str | None = None
    storage: Any = ".benchmarks"
    compare: str | None = None
    compare_fail: tuple[Any, ...] | None = None
    #: where each non-default value came from, for the report header
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)
    #: the text each non-default value was parsed from (True for a flag), for workers
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def load_mode(self) -> bool:
        return self.load is not None or self.rate is not None or self.stages is not None

    @property
    def model(self) -> str:
        return "open" if self.rate is not None else "closed"

    @property
    def run_length(self) -> float:
        """Seconds of load: the stages' sum when given, else --wec-duration."""
        return sum(d for d, _ in self.stages) if self.stages else self.duration

    def to_plain(self) -> dict[str, Any]:
        """What the settings were resolved from, as plain data (strings, True for a flag),
        with where each came from: :meth:`from_plain` parses it again into equal settings."""
        return {"raw": dict(self.raw), "sources": dict(self.sources)}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> Settings:
        """Settings from :meth:`to_plain`'s data, each value parsed as :func:`resolve` does;
        checks against this host's files are left to the host that resolved them."""
        raw = dict(data.get("raw") or {})
        values: dict[str, Any] = {}
        for field, text in raw.items():
            opt = _BY_FIELD.get(field)
            if opt is None:
                raise ConfigError(f"settings from the controller: unknown option {field!r}")
            try:
                values[field] = True if text is True else opt.parse(str(text))
            except ValueError as exc:
                raise ConfigError(f"settings from the controller: {opt.cli}: {exc}, "
                                  f"got {text!r}") from None
        return cls(**values, sources=dict(data.get("sources") or {}), raw=raw)


def resolve(
    cli: Mapping[str, Any],
    ini: Callable[[str], Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option from the command line, environment and ini, in that order.

    *cli* maps option fields to raw strings (or None when not given, True for flags);
    *ini* returns the raw ini value or None.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    raws: dict[str, Any] = {}
    for opt in OPTIONS:
        raw: Any = cli.get(opt.field)
        where = opt.cli
        if raw is None or raw is False:
            raw = env.get(opt.env)
            where = f"environment variable {opt.env}"
            if raw is None:
                raw = ini(opt.ini)
                where = f"ini option {opt.ini}"
                if raw in (None, "", []):
                    continue
        if raw is True:
            values[opt.field] = raws[opt.field] = True
            sources[opt.field] = where
            continue
        if isinstance(raw, list | tuple):
            raw = "\n".join(str(x) for x in raw)
        text = str(raw).strip()
        try:
            values[opt.field] = opt.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}, got {text!r}") from None
        sources[opt.field] = where
        raws[opt.field] = text
    if values.get("insecure") and values.get("ca_bundle"):
        raise ConfigError("--wec-insecure and --wec-ca-bundle exclude each other")
    if values.get("ca_bundle") and not os.path.isfile(values["ca_bundle"]):
        raise ConfigError(f"{sources['ca_bundle']}: no such file, got {values['ca_bundle']!r}")
    settings = Settings(**values, sources=sources, raw=raws)
    return settings


def option(field: str) -> Option:
    return _BY_FIELD[field]
