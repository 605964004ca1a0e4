"""Chains against a CA given by URL, with challenges published through a challtestsrv.

An "external" Pebble and Debian's pebble-challtestsrv are started here by hand (not by the
plugin); the chains reach them only through --wec-directory, --wec-ca-bundle and
--wec-challtestsrv, as they would reach Boulder's dev environment.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_wec.stack._pebble import start_pebble
from pytest_wec.stack._procs import ManagedProcess, free_port

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("pebble-challtestsrv") is None,
                       reason="pebble-challtestsrv is not installed (apt-get install pebble)"),
]


@pytest.fixture(scope="module")
def external_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    run_dir: Path = tmp_path_factory.mktemp("external")
    http, tls, dns, mgmt = free_port(), free_port(), free_port(), free_port()
    cts = ManagedProcess("pebble-challtestsrv", [
        "pebble-challtestsrv", "-http01", f"127.0.0.1:{http}", "-tlsalpn01",
        f"127.0.0.1:{tls}", "-dns01", f"127.0.0.1:{dns}", "-https01", "",
        "-management", f"127.0.0.1:{mgmt}", "-defaultIPv6", "",
    ], run_dir / "challtestsrv.log")

    def mgmt_up() -> bool:
        req = urllib.request.Request(f"http://127.0.0.1:{mgmt}/clear-request-history",
                                     data=b'{"host":"x","type":"http"}', method="POST")
        with urllib.request.urlopen(req, timeout=1):
            return True

    cts.wait_ready(mgmt_up, 10, "management API answering")
    pebble, info = start_pebble(run_dir, http_port=http, tls_port=tls,
                                dns_server=f"127.0.0.1:{dns}")
    try:
        yield {"directory": info.directory, "ca_bundle": str(info.ca_bundle),
               "challtestsrv": f"http://127.0.0.1:{mgmt}"}
    finally:
        pebble.stop()
        cts.stop()


def test_chain_subset_against_external_ca(pytester: pytest.Pytester,
                                          external_ca: dict[str, str]) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "-p", "no:cacheprovider",
        "-k", "new_account or new_order or new_certificate",
        "--wec-directory", external_ca["directory"],
        "--wec-ca-bundle", external_ca["ca_bundle"],
        "--wec-challtestsrv", external_ca["challtestsrv"],
        "--wec-out", str(pytester.path / "out"),
    )
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert outcomes.get("passed", 0) >= 10
    result.stdout.fnmatch_lines([f"wec: run *; CA {external_ca['directory']}; *"])
    # the plugin started no Pebble of its own
    assert not (pytester.path / "out" / "pebble.log").exists()


def test_external_ca_with_dns01(pytester: pytest.Pytester, external_ca: dict[str, str]) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs", "pytest_wec_chains", "-p", "no:xdist", "-p", "no:cacheprovider",
        "-k", "test_new_order and not each",
        "--wec-directory", external_ca["directory"],
        "--wec-ca-bundle", external_ca["ca_bundle"],
        "--wec-challtestsrv", external_ca["challtestsrv"],
        "--wec-challenge", "dns-01", "--wec-names", "3",
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=1)
