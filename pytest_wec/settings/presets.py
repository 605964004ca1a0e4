"""Presets: named sets of option values for a known CA setup (``--wec-preset``).

A preset is a mapping of option field -> the raw text the option would be given, applied
by :func:`~pytest_wec.settings.resolve` *under* every explicit value: an option given on
the command line, in the environment or in the ini file keeps its value, whatever the
preset says, and a preset value is dropped when an explicit option excludes it (an
explicit ``--wec-insecure`` drops a preset's CA bundle). Several presets apply in the
order given (``--wec-preset boulder,all-but-finalize``), a later one winning where two
set the same option. An option a preset sets that is given empty (``--wec-profile ''``,
``WEC_PROFILE=``) keeps its default instead. What a preset set is then parsed and checked
like any other value, and recorded with the source ``--wec-preset NAME``, so that the
report header, report.html and any usage error about the value say where it came from.

``boulder``
    Boulder's docker-compose development environment, reached from the host running
    pytest, as read from Boulder's ``docker-compose.yml``, ``test/startservers.py``,
    ``test/config*/wfe2.json`` and ``test/integration`` (docs/boulder.md says which value
    comes from where). The host name ``boulder`` must resolve to the Boulder container
    (``/etc/hosts`` or a docker network): a preset cannot know it.
``all-but-finalize``
    Boulder's request for "every step but finalize" load (its issue 7116): the load runs
    the ``all_but_finalize`` chain only (new account, order, validation, no issuance).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["BOULDER_HOST", "EXCLUDED_BY", "PRESETS", "apply_presets", "parse_presets",
           "preset_fields", "preset_header", "preset_source"]

#: the host name the ``boulder`` preset's URLs name (resolved by the user's host)
BOULDER_HOST = "boulder"

PRESETS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "boulder": MappingProxyType({
        # WFE2's plain HTTP listener, :4001, published by docker-compose.yml
        "directory": f"http://{BOULDER_HOST}:4001/directory",
        # chall-test-srv's management API (startservers.py: --management :8055)
        "challtestsrv": f"http://{BOULDER_HOST}:8055",
        # chall-test-srv answers http-01 on 64.112.117.122 and tls-alpn-01 on
        # 64.112.117.134 (startservers.py); the IP its DNS answers for every name is
        # FAKE_DNS, the http-01 one; names validated by tls-alpn-01 get an A record
        "ip": "64.112.117.122,tls-alpn-01=64.112.117.134",
        # Boulder issues for IP identifiers under the shortlived profile only
        "profile": "shortlived",
        # the WFE takes the client's address from X-Real-IP (web.ExtractRequesterIP):
        # NewRegistrationsPerIPAddress counts each account's own address
        "client-ip-header": "X-Real-IP",
        # the limits a run meets in the dev config are per identifier set (renewals, the
        # fixed IP identifiers), with Retry-After in hours: the next chain orders others
        "rate-limit-wait": "10s",
    }),
    "all-but-finalize": MappingProxyType({
        "mix": "all_but_finalize=1",
    }),
})

#: option field -> the fields whose explicit value drops a preset's value for it
EXCLUDED_BY: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "ca_bundle": ("insecure",),
    "insecure": ("ca_bundle",),
    "suffix": ("domain",),
    "domain": ("suffix",),
    "eab_kid": ("eab_file",),
    "eab_hmac": ("eab_file",),
    "eab_file": ("eab_kid", "eab_hmac"),
})


def parse_presets(text: str) -> tuple[str, ...]:
    """``boulder`` or ``boulder,all-but-finalize``: the presets, in the order applied."""
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in PRESETS]
    if not names or unknown:
        raise ValueError(f"expected one of {', '.join(PRESETS)}, or several separated by "
                         "commas (applied in order)")
    if len(set(names)) != len(names):
        raise ValueError("expected each preset once")
    return names


def preset_fields(names: tuple[str, ...]) -> set[str]:
    """The option fields the presets *names* set."""
    return {option.replace("-", "_") for name in names for option in PRESETS[name]}


def preset_source(name: str, where: str) -> str:
    """The source a value preset *name* set is recorded with, ``--wec-preset`` itself
    having been given *where* (``--wec-preset``, ``environment variable WEC_PRESET``,
    ``ini option wec_preset``)."""
    return f"--wec-preset {name}" if where == "--wec-preset" else f"{where} ({name})"


def apply_presets(names: tuple[str, ...], explicit: Mapping[str, Any],
                  where: str) -> dict[str, tuple[str, str]]:
    """What the presets *names* set under the *explicit* values (field -> raw value):
    field -> (raw text, source), for the fields not given explicitly and not excluded by
    one that was. *where* names where ``--wec-preset`` itself was given."""
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        for option, text in PRESETS[name].items():
            field = option.replace("-", "_")
            if field in explicit or any(f in explicit for f in EXCLUDED_BY.get(field, ())):
                continue
            out[field] = (text, preset_source(name, where))
    return out


def preset_header(names: tuple[str, ...], sources: Mapping[str, str],
                  raw: Mapping[str, Any]) -> list[str]:
    """The report header's lines for the presets: what each set, what explicit options
    overrode, and the host name the run's URLs name when a preset chose it."""
    where = sources.get("preset", "--wec-preset")
    lines = []
    for name in names:
        mine = preset_source(name, where)
        set_, over = [], []
        for option in PRESETS[name]:
            field = option.replace("-", "_")
            if sources.get(field) == mine:
                set_.append(f"{option} {raw.get(field)}")
            elif field in sources and not sources[field].startswith("--wec-preset") \
                    and not sources[field].startswith(where + " ("):
                over.append(f"{option} (from {sources[field]})")
        text = f"wec: preset {name} set: {'; '.join(set_) or 'nothing'}"
        if over:
            text += f"; given explicitly, so not from the preset: {', '.join(over)}"
        lines.append(text)
    preset_urls = [f for f in ("directory", "challtestsrv")
                   if f"//{BOULDER_HOST}:" in str(raw.get(f, ""))
                   and sources.get(f) in {preset_source(n, where) for n in names}]
    if preset_urls:
        lines.append(f"wec: preset: the host name {BOULDER_HOST!r} of "
                     f"{' and '.join('--wec-' + f for f in preset_urls)} must resolve to "
                     "Boulder's container from this host (e.g. '10.77.77.77 boulder' in "
                     "/etc/hosts; docs/boulder.md)")
    return lines
