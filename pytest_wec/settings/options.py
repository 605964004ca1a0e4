"""The options table: every setting's name, parser, default and help, in one place.

:data:`OPTIONS` drives both registration (``pytest_addoption``) and resolution
(:func:`~pytest_wec.settings.resolve`); an :class:`Option` derives its ``--wec-x`` / ``wec_x``
(ini) / ``WEC_X`` (env) names from its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_wec.settings.anyca import (
    parse_challenge_ports,
    parse_challenges,
    parse_ips,
    parse_profile,
)
from pytest_wec.settings.limits import (
    DEFAULT_CLIENT_IPS,
    parse_client_ip_header,
    parse_client_ips,
    parse_suffix,
)
from pytest_wec.settings.parse import (
    KeyAlg,
    StackMode,
    _bool,
    _choice,
    _compare_fail,
    _dashboard,
    _db_url,
    _domain,
    _eab_file,
    _eab_hmac,
    _eab_kid,
    _enum,
    _limits,
    _listen,
    _mix,
    _names,
    _otlp_url,
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
from pytest_wec.settings.presets import parse_presets

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
    secret: bool = False  # never echoed in a usage error (an HMAC key)

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
    # named sets of the values below, applied under explicit ones (pytest_wec.settings.presets)
    Option("preset", parse_presets, (),
           "set the options a known CA setup needs, each overridable by giving it: boulder "
           "(Boulder's docker-compose dev environment), all-but-finalize (load of every step "
           "but finalize); several: boulder,all-but-finalize", "NAME[,NAME]"),
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
    Option("domain", _domain, None,
           "put every random name under this one domain (<hex>.DOMAIN); default: a "
           "registered domain of its own per order, under --wec-suffix", "DOMAIN"),
    Option("suffix", parse_suffix, "xyz",
           "public suffix (Public Suffix List) random names are spread under, one registered "
           "domain per order: <hex>.wec-<hex>.SUFFIX", "SUFFIX"),
    Option("names", _names, 1, "names per order, 1 to 100", "N"),
    Option("challenge", parse_challenges, ("http-01",),
           "challenge types chains answer, in order of preference (http-01, dns-01, "
           "tls-alpn-01; e.g. tls-alpn-01,http-01): each authorization is answered with the "
           "first listed type the CA offers for it; none offered: the chain is skipped",
           "TYPES"),
    Option("profile", parse_profile, None,
           "certificate profile every new order asks for (draft-aaron-acme-profiles; "
           "Boulder's test config: legacy, modern, shortlived); checked at start against the "
           "directory's meta.profiles", "NAME"),
    Option("ip", parse_ips, None,
           "IP address where the challenge server answers, optionally per challenge type "
           "(10.77.77.77,tls-alpn-01=10.88.88.88): the IP identifiers chains order, and a "
           "type's own address gets its DNS names routed there (A/AAAA records) while its "
           "challenge is published (default: --wec-listen with the embedded challenge "
           "server)", "SPEC"),
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
    Option("challenge-ports", parse_challenge_ports, None,
           "fixed ports of the embedded challenge server, for a CA that must be told them "
           "before it starts, e.g. http-01=5002,tls-alpn-01=5001,dns=8053 (management=PORT "
           "too; the others take free ports); with --wec-challtestsrv, where that server "
           "answers, for the embedded Pebble", "SPEC"),
    # External Account Binding (RFC 8555 §7.3.4; pytest_wec.settings.eab)
    Option("eab-kid", _eab_kid, None,
           "key id of the External Account Binding every new account sends (with "
           "--wec-eab-hmac), for a CA that requires one", "KID"),
    Option("eab-hmac", _eab_hmac, None,
           "HMAC key of --wec-eab-kid, base64url as the CA hands it out", "KEY", secret=True),
    Option("eab-file", _eab_file, None,
           "file of External Account Binding keys, one 'KID HMAC' a line (# comments): each "
           "new account takes the next, in turn", "PATH"),
    Option("eab-single-use", _bool, False,
           "the CA takes each EAB key once: no key is sent twice in a run (xdist workers "
           "share the keys out); an account past the last one fails, or under load is "
           "skipped", flag=True),
    Option("pebble-eab", _bool, False,
           "the embedded Pebble requires External Account Binding; its keys are those given "
           "(--wec-eab-kid, --wec-eab-file), else 8 generated ones (eab-keys.txt in the run "
           "dir)", flag=True),
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
    # CAs with rate limits (docs/load-mode.md, "Rate limits")
    Option("rate-limit-wait", parse_duration, 60.0,
           "closed model: longest a virtual user refused with rateLimited waits before its "
           "next chain (the answer's Retry-After, at most this and the time left; 0: never "
           "waits)", "DURATION"),
    Option("client-ip-header", parse_client_ip_header, None,
           "send each account's own client address in this header (e.g. X-Real-IP), for a "
           "CA that trusts it; off by default", "NAME"),
    Option("client-ips", parse_client_ips, DEFAULT_CLIENT_IPS,
           "the range --wec-client-ip-header's addresses are spread over, one per account",
           "CIDR"),
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
    Option("compare-runs", _positive_int, 5,
           "the baseline of --wec-compare NAME (or latest): the median of the last K runs saved "
           "as NAME on this machine id, its noise at least their spread (1: the newest alone)",
           "K"),
    Option("compare-fail", _compare_fail, None,
           "fail when a figure regressed past its bound, e.g. p95:10%,p99:20%,error_rate:0.5",
           "SPEC"),
    Option("dashboard", _dashboard, None,
           "serve the live dashboard of a load run on [HOST:]PORT (a bare PORT binds "
           "127.0.0.1; 0 takes a free port)", "[HOST:]PORT"),
    Option("metrics", _dashboard, None,
           "serve /metrics (Prometheus' text format) of a load run on [HOST:]PORT (a bare PORT "
           "binds 127.0.0.1; 0 takes a free port; needs the extra metrics)", "[HOST:]PORT"),
    Option("otlp", _otlp_url, None,
           "push a load run's metrics over OTLP/HTTP (protobuf) to URL, e.g. "
           "http://127.0.0.1:4318/v1/metrics (without a path: /v1/metrics); needs the extra "
           "otlp", "URL"),
    Option("otlp-interval", _positive_duration, 5.0,
           "how often --wec-otlp pushes; and once more at the run's end", "DURATION"),
)
