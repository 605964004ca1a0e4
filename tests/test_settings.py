"""Options: the --wec-x / wec_x / WEC_X triple, defaults in one place, clear UsageErrors."""

from __future__ import annotations

import pytest

from pytest_wec.plugin import SETTINGS_KEY
from pytest_wec.settings import KeyAlg, parse_duration, parse_stages


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("250ms", 0.25), ("2.5", 2.5), ("1h", 3600),
     ("1m30s", 90)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10x", "", "m", "-5", "1s2h", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_parse_stages() -> None:
    assert parse_stages("30s:10,5m:200,30s:0") == ((30, 10), (300, 200), (30, 0))
    with pytest.raises(ValueError):
        parse_stages("30s")
    with pytest.raises(ValueError):
        parse_stages("0s:10")


def test_defaults(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    s = config.stash[SETTINGS_KEY]
    assert s.domain is None and s.suffix == "xyz"  # names spread over registered domains
    assert s.account_key is KeyAlg.ES256
    assert s.duration == 60 and s.grace == 30
    assert not s.load_mode


def test_precedence_cli_env_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
                                ) -> None:
    pytester.makeini("[pytest]\nwec_domain = ini.example.com\nwec_names = 3\n")
    monkeypatch.setenv("WEC_DOMAIN", "env.example.com")
    s = pytester.parseconfigure().stash[SETTINGS_KEY]
    assert s.domain == "env.example.com"
    assert s.names == 3
    s = pytester.parseconfigure("--wec-domain", "cli.example.com").stash[SETTINGS_KEY]
    assert s.domain == "cli.example.com"
    assert s.sources["domain"] == "--wec-domain"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--wec-duration", "10x"], {},
         "--wec-duration: expected a duration such as 90s, 10m or 1h30m, got '10x'"),
        (["--wec-load", "0"], {}, "--wec-load: expected a whole number >= 1, got '0'"),
        ([], {"WEC_RATE": "fast"}, "environment variable WEC_RATE: expected a number > 0"),
        (["--wec-names", "101"], {}, "--wec-names: expected a number of names from 1 to 100"),
        (["--wec-challenge", "dns-02"], {}, "--wec-challenge: expected one of http-01"),
        (["--wec-account-key", "ED25519"], {}, "--wec-account-key: expected one of ES256"),
        (["--wec-directory", "ftp://x"], {}, "--wec-directory: expected a URL"),
        (["--wec-db", "mysql://x"], {}, "--wec-db: expected a SQLite file path"),
        (["--wec-stages", "30s"], {}, "--wec-stages: expected stages such as 30s:10"),
        (["--wec-mix", "new_order"], {}, "--wec-mix: expected chain weights"),
        (["--wec-limit", "things=3"], {},
         "--wec-limit: unknown resource 'things'; expected hard limits such as"),
        (["--wec-domain", "no_domain"], {}, "--wec-domain: expected a DNS domain"),
        (["--wec-ca-bundle", "/nonexistent.pem"], {}, "--wec-ca-bundle: no such file"),
        (["--wec-compare-runs", "0"], {},
         "--wec-compare-runs: expected a whole number >= 1, got '0'"),
        (["--wec-compare-runs=-1"], {},
         "--wec-compare-runs: expected a whole number >= 1, got '-1'"),
        ([], {"WEC_COMPARE_RUNS": "x"},
         "environment variable WEC_COMPARE_RUNS: expected a whole number >= 1, got 'x'"),
    ],
)
def test_bad_values_are_usage_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str],
    env: dict[str, str], message: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_bad_ini_value_names_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nwec_timeout = soon\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option wec_timeout: expected a duration*'soon'"])


def test_help_needs_no_ca(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*wile-e-coyote*", "*--wec-directory=URL*", "*--wec-load=N*"])


def test_report_header_shows_settings(pytester: pytest.Pytester,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("def test_x(): pass")
    monkeypatch.delenv("WEC_ALLOW_SATURATED", raising=False)  # the suite's (conftest.py)
    result = pytester.runpytest("--wec-names", "2", "-p", "no:xdist")
    result.stdout.fnmatch_lines(["wec: run *; CA embedded Pebble; challenge http-01*",
                                 "wec: settings given: names from --wec-names"])
    assert result.ret == 0
    monkeypatch.setenv("WEC_ALLOW_SATURATED", "yes")
    result = pytester.runpytest("--wec-names", "2", "-p", "no:xdist")
    result.stdout.fnmatch_lines([
        "wec: settings given: allow_saturated from environment variable WEC_ALLOW_SATURATED, "
        "names from --wec-names"])


def test_plain_runs_start_nothing(pytester: pytest.Pytester) -> None:
    """A pytest run that uses no wec fixture makes no run dir and starts no process."""
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("-n", "2")
    assert result.ret == 0
    assert not (pytester.path / "wec-results").exists()


def test_docs_list_every_option() -> None:
    from pathlib import Path

    from pytest_wec.settings import OPTIONS

    text = (Path(__file__).parent.parent / "docs" / "options.md").read_text()
    missing = [o.cli for o in OPTIONS if f"`{o.cli}" not in text or f"`{o.env}`" not in text]
    assert not missing, f"docs/options.md lacks {missing}"


def test_a_bad_url_is_named_without_its_password() -> None:
    from pytest_wec.errors import ConfigError
    from pytest_wec.settings import resolve

    with pytest.raises(ConfigError) as err:
        resolve({"db": "mysql://root:s3cret@127.0.0.1:3306"}, lambda name: None)
    assert "s3cret" not in str(err.value)
    assert "got 'mysql://root:***@127.0.0.1:3306'" in str(err.value)


def test_compare_runs_default_ini_and_cli(pytester: pytest.Pytester) -> None:
    assert pytester.parseconfigure().stash[SETTINGS_KEY].compare_runs == 5
    pytester.makeini("[pytest]\nwec_compare_runs = 3\n")
    assert pytester.parseconfigure().stash[SETTINGS_KEY].compare_runs == 3
    s = pytester.parseconfigure("--wec-compare-runs", "1").stash[SETTINGS_KEY]
    assert (s.compare_runs, s.sources["compare_runs"]) == (1, "--wec-compare-runs")
