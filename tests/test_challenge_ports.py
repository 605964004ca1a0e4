"""--wec-challenge-ports: the embedded challenge server on fixed ports, for a CA that must be
told its validation ports before it starts; printed in the header, the terminal and
summary.json; a port in use is a usage error. Runs against the embedded Pebble, started as
the product starts it (told the fixed ports as its httpPort, tlsPort and DNS)."""

from __future__ import annotations

import json
import socket

import pytest
from _anyca import needs_stack, run_chains

from pytest_wec.settings import resolve
from pytest_wec.settings.anyca import ChallengePorts, parse_challenge_ports
from pytest_wec.stack._challsrv import challtestsrv_ports
from pytest_wec.stack._procs import free_port

pytestmark = [pytest.mark.timeout(240)]


def test_ports_by_listener() -> None:
    ports = parse_challenge_ports("http-01=5002, tls-alpn-01=5001,dns=8053,management=8055")
    assert ports == ChallengePorts({"http-01": 5002, "tls-alpn-01": 5001, "dns": 8053,
                                    "management": 8055})
    assert parse_challenge_ports("dns-01=53").ports == {"dns": 53}  # the type's name works too


@pytest.mark.parametrize(("text", "why"), [
    ("", "expected ports such as"), ("http-01", "expected ports such as"),
    ("http-01=0", "ports 1 to 65535"), ("http-01=70000", "ports 1 to 65535"),
    ("smtp=25", "listeners: http-01, tls-alpn-01, dns, management"),
    ("http-01=5002,http-01=5003", "http-01 given twice"),
    ("http-01=5002,dns=5002", "http-01 and dns cannot share port 5002"),
])
def test_bad_ports(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_challenge_ports(text)


def test_nothing_to_fix_with_a_challtestsrv_and_an_external_ca() -> None:
    from pytest_wec.errors import ConfigError

    with pytest.raises(ConfigError, match="has nothing to fix"):
        resolve({"challenge_ports": "http-01=5002", "challtestsrv": "http://127.0.0.1:8055",
                 "directory": "https://ca.test/dir"}, lambda name: None, {})
    with pytest.raises(ConfigError, match="the management port is that URL's"):
        resolve({"challenge_ports": "management=9", "challtestsrv": "http://127.0.0.1:8055"},
                lambda name: None, {})


def test_an_embedded_pebble_is_told_where_a_challtestsrv_answers() -> None:
    assert challtestsrv_ports("http://10.77.77.77:8055", None) == (5002, 5001,
                                                                    "10.77.77.77:8053")
    assert challtestsrv_ports("http://[::1]:8055", {"http-01": 80, "dns": 53}) == (
        80, 5001, "[::1]:53")


def _three_free_ports() -> dict[str, int]:
    """Ports free for TCP (and, for dns, UDP) on loopback now."""
    ports: dict[str, int] = {}
    while len(ports) < 3:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports.values():
            ports[("http-01", "tls-alpn-01", "dns")[len(ports)]] = port
    return ports


@pytest.mark.pebble
@needs_stack
def test_fixed_ports_validate_and_are_reported(pytester: pytest.Pytester) -> None:
    ports = _three_free_ports()
    spec = ",".join(f"{k}={v}" for k, v in ports.items())
    once = run_chains(pytester, "--wec-challenge-ports", spec, "-k",
                      "test_new_order_each_challenge", out="once")
    assert once.ret == 0, once.stdout.str()[-3000:]
    once.assert_outcomes(passed=3)  # http-01, dns-01 and tls-alpn-01, each on its port
    header = (f"wec: challenge server ports http-01 {ports['http-01']}, tls-alpn-01 "
              f"{ports['tls-alpn-01']}, dns {ports['dns']} (fixed on 127.0.0.1, the others "
              "free)")
    once.stdout.fnmatch_lines([header])
    once.stdout.fnmatch_lines([
        f"wec: challenge server: http-01 127.0.0.1:{ports['http-01']}, tls-alpn-01 "
        f"127.0.0.1:{ports['tls-alpn-01']}, dns 127.0.0.1:{ports['dns']}, management "
        "127.0.0.1:*"])
    load = run_chains(pytester, "--wec-challenge-ports", spec, "--wec-load", "2",
                      "--wec-duration", "2s", "--wec-mix", "new_account=1,new_order=2,*=0",
                      out="load")
    assert load.ret == 0, load.stdout.str()[-3000:]
    summary = json.loads((pytester.path / "load" / "summary.json").read_text())
    where = summary["challenge_server"]
    assert {k: where[k] for k in ports} == {k: f"127.0.0.1:{v}" for k, v in ports.items()}
    assert summary["totals"]["chains_failed"] == 0, summary["errors"]
    config = json.loads((pytester.path / "load" / "pebble-config.json").read_text())
    assert (config["pebble"]["httpPort"], config["pebble"]["tlsPort"]) == (
        ports["http-01"], ports["tls-alpn-01"])


def test_a_port_in_use_is_a_usage_error(pytester: pytest.Pytester) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        pytester.makepyfile("def test_x(): pass")
        result = pytester.runpytest_subprocess(
            "-p", "no:xdist", "-p", "no:cacheprovider",
            "--wec-challenge-ports", f"http-01={port}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: --wec-challenge-ports: the http-01 port {port} (TCP) cannot be bound on "
        "127.0.0.1: *in use*"])
    assert not (pytester.path / "wec-results").exists()  # nothing started
