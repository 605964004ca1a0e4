"""Options: every setting is a triple ``--wec-x`` / ``wec_x`` (ini) / ``WEC_X`` (env).

The table :data:`OPTIONS` (:mod:`~pytest_wec.settings.options`, its value parsers in
:mod:`~pytest_wec.settings.parse`) drives both registration (``pytest_addoption``) and
resolution. Precedence: command line, then environment, then ini file, then the default
given there (the one place defaults live). Resolution happens once, into the frozen
:class:`Settings` kept in ``config.stash``; a bad value is a :class:`ConfigError` that names
its source and what is allowed, which the plugin turns into ``pytest.UsageError``.

xdist workers do not resolve: the controller hands them the texts its settings were parsed
from, with their sources, as plain data (:meth:`Settings.to_plain` through ``workerinput``),
and they parse those again; neither the environment nor the ini file of the controller's
host reaches a worker on another host.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_wec.errors import ConfigError
from pytest_wec.settings.options import OPTIONS, Option
from pytest_wec.settings.parse import KeyAlg, StackMode, Stage, parse_duration, parse_stages

__all__ = [
    "OPTIONS",
    "KeyAlg",
    "Option",
    "Settings",
    "StackMode",
    "Stage",
    "parse_duration",
    "parse_stages",
    "resolve",
]

_BY_FIELD = {o.field: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The effective settings of a run, resolved once."""

    directory: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    pebble_bin: str | None = None
    pebbles: int | None = None  # embedded Pebbles of a load run; None: one per 50 in flight
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
    metrics: tuple[str, int] | None = None
    threshold: tuple[Any, ...] = ()
    abort_on_fail: bool = False
    allow_saturated: bool = False
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
            raise ConfigError(f"{where}: {exc}, got {_masked(text)!r}") from None
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


_PASSWORD = re.compile(r"(//[^:/@\s]*:)[^@/\s]*@")


def _masked(text: str) -> str:
    """A value as a usage error may print it: a URL's password replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", text)
