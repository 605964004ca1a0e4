"""The ``wec`` command.

    wec run [PYTEST ARGS...]      the chains against the embedded stack
                                  (pytest --pyargs pytest_wec_chains)
    wec stack [OPTIONS]           start the embedded stack in the foreground, print its URLs
    wec challenge-server [...]    the challenge server alone (see --help)
    wec convert SRC DST           results log: JSONL <-> msgpack
    wec report RESULTS_LOG        rebuild summary.json, benchmark.json and report.html from a
                                  results log
    wec compile [--check]         write the bytecode caches (pytest-wec's pycs, pytest's
                                  rewritten plugins and chains) once, for environments with
                                  PYTHONDONTWRITEBYTECODE=1; again after upgrading pytest or
                                  pytest-wec. --check: exit 1 naming what is missing
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

__all__ = ["main"]

USAGE = __doc__ or ""


def _run(argv: list[str]) -> int:
    """``pytest --pyargs pytest_wec_chains`` (the shipped chains, by their installed name)
    plus *argv*; ends by printing where the report is."""
    import os

    import pytest

    from pytest_wec._shipped import CHAINS
    from pytest_wec.controller.run import new_run_id

    out: str | None = None
    for i, a in enumerate(argv):
        if a == "--wec-out" and i + 1 < len(argv):
            out = argv[i + 1]
        elif a.startswith("--wec-out="):
            out = a.split("=", 1)[1]
    out = out or os.environ.get("WEC_OUT")
    extra: list[str] = []
    if out is None:
        out = str(Path("wec-results") / new_run_id())
        extra = ["--wec-out", out]
    code = int(pytest.main(["--pyargs", CHAINS, "-p", "no:cacheprovider", *extra, *argv]))
    for name in ("report.html", "summary.json"):
        path = Path(out) / name
        if path.exists():
            print(f"wec: report: {path.resolve()}")
            break
    return code


def _stack(argv: list[str]) -> int:
    from pytest_wec.controller.run import new_run_id
    from pytest_wec.errors import ConfigError, StackError
    from pytest_wec.settings import OPTIONS, resolve
    from pytest_wec.stack import Stack

    parser = argparse.ArgumentParser(prog="wec stack", description=(
        "Start the embedded stack (redis-server, challenge server, Pebble) in the foreground "
        "and print its URLs; Ctrl-C stops it."))
    for opt in OPTIONS:
        if opt.name in ("directory", "redis", "challtestsrv", "pebble-bin", "out", "token",
                        "listen", "insecure", "ca-bundle",
                        "pebble-eab", "eab-kid", "eab-hmac", "eab-file"):
            if opt.flag:
                parser.add_argument(opt.cli, action="store_true", default=None,
                                    dest=opt.field, help=opt.help)
            else:
                parser.add_argument(opt.cli, dest=opt.field, metavar=opt.metavar,
                                    help=opt.help)
    ns = parser.parse_args(argv)
    try:
        settings = resolve(vars(ns), lambda _name: None)
    except ConfigError as exc:
        print(f"wec stack: error: {exc}", file=sys.stderr)
        return 2
    run_id = new_run_id()
    run_dir = Path(settings.out or Path("wec-results") / run_id).absolute()
    try:
        stack = Stack.start(settings, run_dir, run_id)
    except StackError as exc:
        print(f"wec stack: error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    info = stack.info
    print(f"run id:            {run_id}")
    print(f"run dir:           {run_dir}")
    print(f"ACME directory:    {info['directory']}")
    if info["ca_bundle"]:
        print(f"CA bundle:         {info['ca_bundle']}")
    if info["pebble_management"]:
        print(f"Pebble management: {info['pebble_management']}")
    print(f"Redis:             {info['redis_url']}")
    print(f"Redis namespace:   {info['namespace']}")
    if info["dns"]:
        print(f"challenge DNS:     {info['dns']}")
    if info["challenge_management"]:
        print(f"challenge server:  {info['challenge_management']}")
    eab = info.get("eab")
    if settings.pebble_eab and eab:  # the embedded Pebble requires External Account Binding
        from pytest_wec.stack._eab import KEYS_FILE

        generated = run_dir / KEYS_FILE
        print(f"EAB keys:          {generated if generated.exists() else eab['source']}")
    print("Ctrl-C stops the stack.", flush=True)
    try:
        while not stop.wait(1.0):
            dead = [name for name, ok in stack.alive().items() if not ok]
            if dead:
                print(f"wec stack: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
    finally:
        stack.stop()
    return 0


def _challenge_server(argv: list[str]) -> int:
    if TYPE_CHECKING:  # the checkout's folder; installed as pytest_wec_challenge_srv
        from challenge_srv.server import main as srv_main
    else:
        from pytest_wec_challenge_srv.server import main as srv_main

    return srv_main(argv)


def _convert(argv: list[str]) -> int:
    from pytest_wec.controller.resultlog import convert_main

    return convert_main(argv)


def _compile(argv: list[str]) -> int:
    from pytest_wec.bytecode import compile_main

    return compile_main(argv)


def _report(argv: list[str]) -> int:
    from pytest_wec.controller.collector import report_main

    return report_main(argv)


COMMANDS = {
    "run": _run,
    "stack": _stack,
    "challenge-server": _challenge_server,
    "convert": _convert,
    "report": _report,
    "compile": _compile,
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0 if args else 2
    cmd = COMMANDS.get(args[0])
    if cmd is None:
        print(f"wec: unknown command {args[0]!r}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return cmd(args[1:])


if __name__ == "__main__":
    sys.exit(main())
