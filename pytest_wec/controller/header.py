"""The run's first lines (controller): pytest's report header with the effective settings,
and the warnings about where the stack listens."""

from __future__ import annotations

import pytest

from pytest_wec.controller.xdist import tx_specs
from pytest_wec.settings import Settings, StackMode

__all__ = ["header_lines"]


def header_lines(settings: Settings, config: pytest.Config, run_id: str) -> list[str]:
    """The run, the CA, the challenge and keys, where each given setting came from, and the
    listen warnings."""
    from pytest_wec.worker.names import names_description

    s = settings
    ca = s.directory or "embedded Pebble"
    lines = [
        f"wec: run {run_id}; CA {ca}; challenge {','.join(s.challenge)}; "
        f"{names_description(s.domain, s.suffix)}; "
        f"account key {s.account_key.value}; cert key {s.cert_key}; "
        f"transport {s.transport}; stack {s.stack.value}",
    ]
    given = ", ".join(f"{k} from {v}" for k, v in sorted(s.sources.items()))
    if given:
        lines.append(f"wec: settings given: {given}")
    if s.preset:  # what each preset set, and what explicit options kept from it
        from pytest_wec.settings.presets import preset_header

        lines += preset_header(s.preset, s.sources, s.raw)
    from pytest_wec.controller.anyca import challenge_header

    lines += challenge_header(s) + listen_warnings(s, config)
    workers = getattr(config.option, "numprocesses", None)
    if s.load_mode and isinstance(workers, int):  # xdist's -n N, each worker a process here
        from pytest_wec.bytecode import rewrite_hint

        lines += [hint] if (hint := rewrite_hint(workers)) else []
    return lines


def listen_warnings(s: Settings, config: pytest.Config) -> list[str]:
    """Remote workers that cannot reach a loopback stack; an open management API."""
    from pytest_wec.stack._procs import is_loopback

    embedded = s.directory is None or s.redis is None or s.challtestsrv is None
    remote = [t for t in tx_specs(config) if "ssh=" in t or "socket=" in t]
    if is_loopback(s.listen):
        line = (f"wec: warning: workers on other hosts ({', '.join(remote)}) cannot reach "
                f"a stack bound to {s.listen}; give --wec-listen an address of this host "
                "they reach") if remote and embedded else None
    else:
        line = (f"wec: warning: the challenge server's management API listens on "
                f"{s.listen} without --wec-token; whoever reaches it can change its "
                "answers") if s.challtestsrv is None and not s.token else None
    if line is None or s.stack is StackMode.OFF:
        return []
    return [line]
