"""Options: every setting is a triple ``--wec-x`` / ``wec_x`` (ini) / ``WEC_X`` (env).

The table :data:`OPTIONS` (:mod:`~pytest_wec.settings.options`, its value parsers in
:mod:`~pytest_wec.settings.parse`) drives both registration (``pytest_addoption``) and
resolution. Precedence: command line, then environment, then ini file, then a preset
(``--wec-preset``, :mod:`~pytest_wec.settings.presets`: it sets only what none of the three
gave), then the default given there (the one place defaults live). Resolution happens once,
into the frozen :class:`Settings` kept in ``config.stash``; a bad value is a
:class:`ConfigError` that names its source and what is allowed, which the plugin turns into
``pytest.UsageError``.

xdist workers do not resolve: the controller hands them the texts its settings were parsed
from, with their sources, as plain data (:meth:`Settings.to_plain` through ``workerinput``),
and they parse those again; neither the environment nor the ini file of the controller's
host reaches a worker on another host.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_wec.errors import ConfigError
from pytest_wec.settings.anyca import ChallengeAddresses, ChallengePorts, check_challenge_ports
from pytest_wec.settings.eab import EabKeys, check_eab
from pytest_wec.settings.limits import DEFAULT_CLIENT_NETWORK, check_client_ips, check_names
from pytest_wec.settings.options import OPTIONS, Option
from pytest_wec.settings.parse import KeyAlg, StackMode, Stage, parse_duration, parse_stages
from pytest_wec.settings.presets import apply_presets, preset_fields

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

    #: the presets applied under the explicit values (pytest_wec.settings.presets)
    preset: tuple[str, ...] = ()
    directory: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    pebble_bin: str | None = None
    pebbles: int | None = None  # embedded Pebbles of a load run; None: one per 50 in flight
    redis: str | None = None
    challtestsrv: str | None = None
    db: str | None = None
    domain: str | None = None  # every random name under it; None: spread under ``suffix``
    suffix: str = "xyz"  # public suffix names are spread under (pytest_wec.worker.names)
    names: int = 1
    #: challenge types chains answer, in order of preference (pytest_wec.settings.anyca)
    challenge: tuple[str, ...] = ("http-01",)
    profile: str | None = None  # certificate profile of every new order (draft acme-profiles)
    ip: ChallengeAddresses | None = None  # where the challenge server answers (--wec-ip)
    account_key: KeyAlg = KeyAlg.ES256
    cert_key: str = "ec256"
    transport: str = "httptools"
    loop: str = "uvloop"
    timeout: float = 30.0
    out: str | None = None
    stack: StackMode = StackMode.AUTO
    token: str | None = None
    listen: str = "127.0.0.1"
    challenge_ports: ChallengePorts | None = None  # the embedded challenge server's, fixed
    eab_kid: str | None = None
    eab_hmac: bytes | None = dataclasses.field(default=None, repr=False)
    eab_file: str | None = None
    eab_single_use: bool = False
    pebble_eab: bool = False
    #: the External Account Binding keys given (eab_kid/eab_hmac or eab_file's), resolved on
    #: the controller only: workers get them in the stack's info (pytest_wec.settings.eab)
    eab: EabKeys | None = dataclasses.field(default=None, compare=False, repr=False)
    load: int | None = None
    rate: float | None = None
    stages: tuple[Stage, ...] | None = None
    duration: float = 60.0
    grace: float = 30.0
    mix: Mapping[str, float] | None = None
    limit: Mapping[str, int] | None = None
    rate_limit_wait: float = 60.0  # closed model: longest wait after a rateLimited refusal
    client_ip_header: str | None = None  # the header each account's address is sent in
    client_ips: ipaddress.IPv4Network | ipaddress.IPv6Network = DEFAULT_CLIENT_NETWORK
    log_format: str = "jsonl"
    dashboard: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None
    otlp: str | None = None  # OTLP/HTTP metrics endpoint
    otlp_interval: float = 5.0
    threshold: tuple[Any, ...] = ()
    abort_on_fail: bool = False
    allow_saturated: bool = False
    save: str | None = None
    storage: Any = ".benchmarks"
    compare: str | None = None
    compare_runs: int = 5  # the saved runs of --wec-compare NAME a baseline is made of
    compare_fail: tuple[Any, ...] | None = None
    #: where each non-default value came from, for the report header
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)
    #: the text each non-default value was parsed from (True for a flag), for workers
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

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
                shown = "(not shown)" if opt.secret else repr(text)
                raise ConfigError(f"settings from the controller: {opt.cli}: {exc}, "
                                  f"got {shown}") from None
        return cls(**values, sources=dict(data.get("sources") or {}), raw=raw)


def resolve(
    cli: Mapping[str, Any],
    ini: Callable[[str], Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option from the command line, environment and ini, in that order,
    then from the presets ``--wec-preset`` names, for the options none of them gave.

    *cli* maps option fields to raw strings (or None when not given, True for flags);
    *ini* returns the raw ini value or None.
    """
    env = os.environ if environ is None else environ
    given = {o.field: found for o in OPTIONS if (found := _given(o, cli, ini, env)) is not None}
    sources: dict[str, str] = {}
    if "preset" in given:  # its values go under the explicit ones (settings.presets)
        raw, where = given["preset"]
        names, _text = _parse(option("preset"), raw, where)
        # an option a preset sets, given empty: its default, neither the preset's nor ""
        cleared = {f: given.pop(f)[1] for f in preset_fields(names)
                   if f in given and isinstance(given[f][0], str) and not given[f][0].strip()}
        given.update(apply_presets(names, {**given, **cleared}, where))
        sources.update({f: f"{w}, empty: the default" for f, w in cleared.items()})
    values: dict[str, Any] = {}
    raws: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.field not in given:
            continue
        raw, where = given[opt.field]
        values[opt.field], raws[opt.field] = _parse(opt, raw, where)
        sources[opt.field] = where
    if values.get("insecure") and values.get("ca_bundle"):
        raise ConfigError("--wec-insecure and --wec-ca-bundle exclude each other")
    if values.get("ca_bundle") and not os.path.isfile(values["ca_bundle"]):
        raise ConfigError(f"{sources['ca_bundle']}: no such file, got {values['ca_bundle']!r}")
    # pytest_wec.settings.limits, pytest_wec.settings.anyca
    for check in (check_names, check_client_ips, check_challenge_ports):
        problem = check(values, sources)
        if problem is not None:
            raise ConfigError(problem)
    values["eab"] = check_eab(values, sources)
    settings = Settings(**values, sources=sources, raw=raws)
    return settings


def _given(opt: Option, cli: Mapping[str, Any], ini: Callable[[str], Any],
           env: Mapping[str, str]) -> tuple[Any, str] | None:
    """The raw value *opt* was given explicitly and where: the command line, else the
    environment, else the ini file; None when none gives it."""
    raw: Any = cli.get(opt.field)
    where = opt.cli
    if raw is None or raw is False:
        raw = env.get(opt.env)
        where = f"environment variable {opt.env}"
        if raw is None:
            raw = ini(opt.ini)
            where = f"ini option {opt.ini}"
            if raw in (None, "", []):
                return None
    return raw, where


def _parse(opt: Option, raw: Any, where: str) -> tuple[Any, Any]:
    """(value, text) of *raw* as given *where*: True for a flag, else the option's parse
    of the text (an ini list joined by lines); a ConfigError naming *where* when bad."""
    if raw is True:
        return True, True
    if isinstance(raw, list | tuple):
        raw = "\n".join(str(x) for x in raw)
    text = str(raw).strip()
    try:
        return opt.parse(text), text
    except ValueError as exc:
        if opt.secret:
            raise ConfigError(f"{where}: {exc} (the value is not shown)") from None
        raise ConfigError(f"{where}: {exc}, got {_masked(text)!r}") from None


def option(field: str) -> Option:
    return _BY_FIELD[field]


_PASSWORD = re.compile(r"(//[^:/@\s]*:)[^@/\s]*@")


def _masked(text: str) -> str:
    """A value as a usage error may print it: a URL's password replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", text)
