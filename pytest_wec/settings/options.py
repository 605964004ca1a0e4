"""The options table: every setting's name, parser, default and help, in one place.

:data:`OPTIONS` drives both registration (``pytest_addoption``) and resolution
(:func:`~pytest_wec.settings.resolve`); an :class:`Option` derives its ``--wec-x`` / ``wec_x``
(ini) / ``WEC_X`` (env) names from its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_wec.settings.parse import (
    KeyAlg,
    StackMode,
    _bool,
    _choice,
    _compare_fail,
    _dashboard,
    _db_url,
    _domain,
    _enum,
    _limits,
    _listen,
    _mix,
    _names,
    _pebbles,
    _positive_duration,
    _positive_float,
    _positive_int,
    _save_name,
    _storage,
    _text,
    _thresholds,
    _url,
    parse_duration,
    parse_stages,
)

__all__ = ["OPTIONS", "Option"]


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
    Option("pebbles", _pebbles, None,
           "embedded Pebbles a load run spreads over, one per group of workers: a number, or "
           "auto (one per 50 chains in flight or 25 starts/s, at most one per worker)", "N"),
    Option("redis", _url("redis", "rediss", "unix"), None,
           "Redis URL to use instead of starting redis-server", "URL"),
    Option("challtestsrv", _url("http", "https"), None,
           "publish challenges through this challtestsrv management API "
           "(e.g. Boulder's chall-test-srv) instead of the embedded challenge server", "URL"),
    Option("db", _db_url, None,
           "state DB: a SQLite file path, postgresql://... or mysql://.../DB (MySQL 8, "
           "MariaDB 10.6 or newer; mariadb:// too) (default: state.db in the run dir)",
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
           "start the embedded stack: auto (when a test or the load first needs it), on, off",
           "MODE"),
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
    Option("mix", _mix, None,
           "chain weights, e.g. new_order=5,revoke_certificate=1: runs the chains named "
           "only; *=W weighs the others", "SPEC"),
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
    Option("allow-saturated", _bool, False,
           "do not fail a load run whose generator was saturated or fell short of the asked "
           "rate (docs/load-mode.md); the verdict is still printed and in summary.json",
           flag=True),
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
    Option("metrics", _dashboard, None,
           "serve /metrics (Prometheus' text format) of a load run on [HOST:]PORT (a bare PORT "
           "binds 127.0.0.1; 0 takes a free port; needs the extra metrics)", "[HOST:]PORT"),
)
