"""``--wec-preset``: named sets of option values, applied under every explicit value."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import pytest

from pytest_wec.errors import ConfigError
from pytest_wec.settings import Settings, presets, resolve
from pytest_wec.settings.presets import PRESETS, preset_header

BOULDER_IP = "64.112.117.122,tls-alpn-01=64.112.117.134"


def _ini(values: dict[str, str]) -> Callable[[str], str | None]:
    """An ini file holding *values* (ini option name -> text)."""
    return lambda name: values.get(name)


def test_the_boulder_preset_sets_what_boulders_dev_environment_needs() -> None:
    s = resolve({"preset": "boulder"}, _ini({}), {})
    assert (s.directory, s.challtestsrv, str(s.ip), s.profile, s.client_ip_header,
            s.rate_limit_wait) == ("http://boulder:4001/directory", "http://boulder:8055",
                                   BOULDER_IP, "shortlived", "X-Real-IP", 10.0)
    assert s.ip is not None and s.ip.routed("tls-alpn-01") == "64.112.117.134"
    assert (s.domain, s.suffix) == (None, "xyz")  # the default names: spread under xyz
    assert s.sources["profile"] == "--wec-preset boulder"
    assert s.sources["preset"] == "--wec-preset"


def test_explicit_values_win_wherever_they_come_from() -> None:
    s = resolve({"preset": "boulder", "directory": "https://ca.test:14000/dir"},
                _ini({"wec_rate_limit_wait": "2s"}), {"WEC_PROFILE": "modern"})
    assert (s.directory, s.profile, s.rate_limit_wait) == ("https://ca.test:14000/dir",
                                                          "modern", 2.0)
    assert s.sources["directory"] == "--wec-directory"
    assert s.sources["profile"] == "environment variable WEC_PROFILE"
    assert s.sources["rate_limit_wait"] == "ini option wec_rate_limit_wait"
    assert s.challtestsrv == "http://boulder:8055"  # not given: the preset's
    # a preset given in the ini file is still under the environment and the command line
    s = resolve({"challtestsrv": "http://127.0.0.1:8055"}, _ini({"wec_preset": "boulder"}),
                {})
    assert (s.challtestsrv, s.directory) == ("http://127.0.0.1:8055",
                                             "http://boulder:4001/directory")
    assert s.sources["directory"] == "ini option wec_preset (boulder)"


def test_an_option_given_empty_keeps_its_default_instead_of_the_presets() -> None:
    """A CA without meta.profiles: ``--wec-profile ''`` asks for none, as without a preset."""
    s = resolve({"preset": "boulder", "profile": ""}, _ini({}), {"WEC_IP": " "})
    assert (s.profile, s.ip) == (None, None)
    assert s.sources["profile"] == "--wec-profile, empty: the default"
    assert "profile" not in s.raw and Settings.from_plain(s.to_plain()) == s
    # without a preset, an empty value is what it was: a bad one
    with pytest.raises(ConfigError, match="--wec-profile: expected a profile name"):
        resolve({"profile": ""}, _ini({}), {})


def test_presets_apply_in_order_and_explicit_exclusions_drop_theirs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(PRESETS)
    table["one"] = MappingProxyType({"suffix": "com", "names": "2", "insecure": "true"})
    table["two"] = MappingProxyType({"names": "3"})
    monkeypatch.setattr(presets, "PRESETS", MappingProxyType(table))
    s = resolve({"preset": "one,two"}, _ini({}), {})
    assert (s.suffix, s.names, s.insecure) == ("com", 3, True)  # the later preset wins
    # an explicit --wec-domain drops the preset's --wec-suffix (they exclude each other),
    # an explicit --wec-ca-bundle its --wec-insecure
    bundle = __file__
    s = resolve({"preset": "one", "domain": "wec.example.com", "ca_bundle": bundle},
                _ini({}), {})
    assert (s.domain, s.suffix, s.insecure, s.ca_bundle) == ("wec.example.com", "xyz",
                                                             False, bundle)
    assert "suffix" not in s.sources and "insecure" not in s.sources


def test_a_preset_combines_with_the_all_but_finalize_load() -> None:
    s = resolve({"preset": "boulder,all-but-finalize"}, _ini({}), {})
    assert s.mix == {"all_but_finalize": 1.0} and s.profile == "shortlived"
    assert s.sources["mix"] == "--wec-preset all-but-finalize"
    # workers parse the same texts again, without applying the presets a second time
    assert Settings.from_plain(s.to_plain()) == s


@pytest.mark.parametrize("text", ["pebble", "boulder,boulder", ""])
def test_an_unknown_preset_is_a_usage_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--wec-preset: expected (one of boulder, "
                                          r"all-but-finalize|each preset once)"):
        resolve({"preset": text or " ,"}, _ini({}), {})


def test_the_header_says_what_the_preset_set_and_what_was_given(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("-p", "no:xdist", "--wec-preset", "boulder",
                                "--wec-profile", "modern")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "wec: settings given: *directory from --wec-preset boulder*",
        f"wec: preset boulder set: directory http://boulder:4001/directory; challtestsrv "
        f"http://boulder:8055; ip {BOULDER_IP}; client-ip-header X-Real-IP; rate-limit-wait "
        "10s; given explicitly, so not from the preset: profile (from --wec-profile)",
        "wec: preset: the host name 'boulder' of --wec-directory and --wec-challtestsrv must "
        "resolve to Boulder's container from this host*",
    ])
    # without the preset's URLs, no word about the host name
    s = resolve({"preset": "boulder", "directory": "http://127.0.0.1:4001/directory",
                 "challtestsrv": "http://127.0.0.1:8055"}, _ini({}), {})
    assert not any("host name" in line for line in preset_header(s.preset, s.sources, s.raw))
