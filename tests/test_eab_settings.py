"""External Account Binding settings and key shares, without a CA: the options' values,
their usage errors (before anything starts), the key file, and which key each account of
each worker takes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from pytest_wec.errors import ConfigError
from pytest_wec.plugin import SETTINGS_KEY
from pytest_wec.settings import Settings, resolve
from pytest_wec.settings.eab import (
    EabKey,
    EabKeys,
    parse_hmac,
    read_file,
)
from pytest_wec.stack._eab import KEYS_FILE, redacted, stack_eab
from pytest_wec.worker.context import NoContext
from pytest_wec.worker.eab import EabKeysUsedUp, EabPool, pool_from_info, share_of

MAC = bytes(range(32))
MAC_B64 = base64.urlsafe_b64encode(MAC).rstrip(b"=").decode()  # 43 characters, unpadded


def _keys(n: int, *, single_use: bool = False) -> EabKeys:
    return EabKeys(tuple(EabKey(f"kid-{i}", bytes([i]) * 32) for i in range(1, n + 1)),
                   single_use, "--wec-eab-file keys.txt")


# -- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [MAC_B64, MAC_B64 + "=", f"  {MAC_B64}\n"])
def test_hmac_is_base64url_padded_or_not(text: str) -> None:
    assert parse_hmac(text) == MAC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "got an empty one"),
        ("abc+def/", "character 4 of 8 is not ('+' and '/' are base64, not base64url"),
        ("abc def", "character 4 of 7 is not"),
        ("abcde", "5 characters cannot be base64url"),
        ("ab=c", "4 characters cannot be base64url"),
        ("abc==", "5 characters cannot be base64url"),
        ("==", "2 characters cannot be base64url"),
        ("====", "4 characters cannot be base64url"),
    ],
)
def test_malformed_hmac(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="expected") as err:
        parse_hmac(text)
    assert message in str(err.value)


def test_key_file_format(tmp_path: Path) -> None:
    f = tmp_path / "keys.txt"
    f.write_text(f"# from the CA\n\nkid-1 {MAC_B64}\n  kid-2\t{MAC_B64}=  \n#kid-3 x\n")
    keys = read_file(f)
    assert [k.kid for k in keys] == ["kid-1", "kid-2"]
    assert all(k.hmac == MAC for k in keys)
    assert MAC_B64 not in repr(keys)  # an HMAC key never shows in a repr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys in it"),
        ("# only a comment\n\n", "no keys in it"),
        (f"kid-1 {MAC_B64}\nkid-2\n", "line 2: expected 'KID HMAC' (two fields), got 1 field"),
        (f"kid-1 {MAC_B64} single\n", "line 1: expected 'KID HMAC' (two fields), got 3 fields"),
        ("kid-1 not+base64url\n", "line 1 (key id 'kid-1'): expected a base64url HMAC key"),
        (f"kid-1 {MAC_B64}\nkid-1 {MAC_B64}\n", "line 2: key id 'kid-1' again (first on line 1)"),
    ],
)
def test_bad_key_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "keys.txt"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        read_file(f)
    assert message in str(err.value)


# -- usage errors, before anything starts ------------------------------------------------------
def test_usage_errors(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad value or combination stops pytest with one ERROR line, and nothing ran."""
    empty = pytester.path / "empty.txt"
    empty.write_text("# no keys yet\n")
    bad_line = pytester.path / "bad.txt"
    bad_line.write_text(f"kid-1 {MAC_B64}\nkid-2\n")
    secret = "s3cret+" + MAC_B64
    cases = [
        (["--wec-eab-kid", "kid-1", "--wec-eab-hmac", secret], {},
         "--wec-eab-hmac: expected a base64url HMAC key (A-Z a-z 0-9 - _, '=' padding at the "
         "end), character 7 of 50 is not ('+' and '/' are base64, not base64url*"
         "(the value is not shown)"),
        (["--wec-eab-kid", "kid-1"], {},
         "--wec-eab-kid needs --wec-eab-hmac too: a binding is a key id and its HMAC key"),
        ([], {"WEC_EAB_HMAC": MAC_B64},
         "environment variable WEC_EAB_HMAC needs --wec-eab-kid too*"),
        (["--wec-eab-kid", "two words", "--wec-eab-hmac", MAC_B64], {},
         "--wec-eab-kid: expected the key id the CA gave (no spaces), got 'two words'"),
        (["--wec-eab-file", str(pytester.path / "missing.txt")], {},
         "--wec-eab-file: no such file, got '*missing.txt'"),
        (["--wec-eab-file", str(pytester.path)], {},
         "--wec-eab-file: a directory, not a file of keys*"),
        (["--wec-eab-file", str(empty)], {},
         "--wec-eab-file: no keys in it (expected one 'KID HMAC' a line), got '*empty.txt'"),
        ([], {"WEC_EAB_FILE": str(bad_line)},
         "environment variable WEC_EAB_FILE: line 2: expected 'KID HMAC' (two fields)*"),
        (["--wec-eab-file", str(bad_line), "--wec-eab-kid", "k", "--wec-eab-hmac", MAC_B64],
         {}, "--wec-eab-file and --wec-eab-kid/--wec-eab-hmac exclude each other*"),
        (["--wec-eab-single-use"], {},
         "--wec-eab-single-use: no keys to use once; give --wec-eab-kid and --wec-eab-hmac*"),
        (["--wec-pebble-eab", "--wec-directory", "https://ca.test/dir"], {},
         "--wec-pebble-eab configures the embedded Pebble; with --wec-directory there is none*"),
    ]
    pytester.makepyfile("def test_x(): pass")
    for args, env, message in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            result = pytester.runpytest(*args)
        out = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, (args, env, out)
        result.stderr.fnmatch_lines([f"ERROR: {message}*"])
        assert "INTERNALERROR" not in out
        assert "s3cret" not in out and "collected" not in out


def test_ini_and_env_forms(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = pytester.path / "keys.txt"
    keys.write_text(f"kid-a {MAC_B64}\nkid-b {MAC_B64}\n")
    pytester.makeini(f"[pytest]\nwec_eab_file = {keys}\nwec_eab_single_use = true\n")
    s = pytester.parseconfigure().stash[SETTINGS_KEY]
    assert s.eab is not None and [k.kid for k in s.eab.keys] == ["kid-a", "kid-b"]
    assert s.eab.single_use and s.eab.source == f"--wec-eab-file {keys}"
    assert s.sources["eab_file"] == "ini option wec_eab_file"
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("WEC_EAB_KID", "kid-env")
    monkeypatch.setenv("WEC_EAB_HMAC", MAC_B64)
    s = pytester.parseconfigure("--wec-pebble-eab").stash[SETTINGS_KEY]
    assert s.pebble_eab and s.eab == EabKeys((EabKey("kid-env", MAC),), False, "--wec-eab-kid")
    assert MAC_B64 not in repr(s)  # nor in the settings' repr (raw texts included)


def test_workers_parse_the_settings_without_the_file(tmp_path: Path) -> None:
    """A worker on another host re-parses the texts; it never reads the file (its keys come
    in the stack's info), and a bad HMAC key is not echoed there either."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"kid-1 {MAC_B64}\n")
    s = resolve({"eab_file": str(keys)}, lambda name: None)
    keys.unlink()
    back = Settings.from_plain(s.to_plain())
    assert back.eab_file == str(keys) and back.eab is None
    with pytest.raises(ConfigError) as err:
        Settings.from_plain({"raw": {"eab_hmac": "s3cret+x"}, "sources": {}})
    assert "s3cret" not in str(err.value) and "(not shown)" in str(err.value)


# -- the stack: generated keys for the embedded Pebble ---------------------------------------
def test_pebble_eab_generates_keys_when_none_given(tmp_path: Path) -> None:
    s = resolve({"pebble_eab": True}, lambda name: None)
    keys, pebble = stack_eab(s, tmp_path)
    assert keys is not None and pebble is not None and keys.source == "--wec-pebble-eab"
    assert len(keys.keys) == 8 and pebble == keys.mac_keys()
    assert all(len(k.hmac) == 32 for k in keys.keys)
    assert len({k.hmac for k in keys.keys}) == 8  # fresh random keys
    written = tmp_path / KEYS_FILE
    assert read_file(written) == keys.keys  # the --wec-eab-file format
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    line = redacted(keys.to_plain())
    assert line is not None and "wec-eab-1" in line
    assert not any(k.hmac_b64 in line for k in keys.keys)


def test_pebble_eab_knows_the_keys_given(tmp_path: Path) -> None:
    s = resolve({"pebble_eab": True, "eab_kid": "mine", "eab_hmac": MAC_B64 + "="},
                lambda name: None)
    keys, pebble = stack_eab(s, tmp_path)
    assert pebble == {"mine": MAC_B64} and keys is s.eab
    assert not (tmp_path / KEYS_FILE).exists()
    plain = resolve({"eab_kid": "mine", "eab_hmac": MAC_B64}, lambda name: None)
    assert stack_eab(plain, tmp_path) == (plain.eab, None)  # keys, and no Pebble to configure


# -- which key each account takes ------------------------------------------------------------
def test_single_use_keys_are_shared_out_and_never_sent_twice() -> None:
    keys = _keys(7, single_use=True)
    taken: list[str] = []
    for i in range(3):
        pool = EabPool(keys, f"gw{i}", i, 3)
        while pool.left:
            taken.append(pool.take().kid)
        with pytest.raises(EabKeysUsedUp) as err:
            pool.take()
        assert isinstance(err.value, NoContext)  # skipped under load
        keys_of = ", ".join(str(k) for k in range(i + 1, 8, 3))
        assert f"worker gw{i}'s share of the 7 single-use key(s) of --wec-eab-file keys.txt " \
               f"(one key in 3: keys {keys_of}) was each sent once" in str(err.value)
        assert "a single-use key is never sent twice" in str(err.value)
    assert sorted(taken) == sorted(k.kid for k in keys.keys)  # each once, none lost


def test_one_process_takes_every_single_use_key() -> None:
    pool = EabPool(_keys(2, single_use=True))
    assert [pool.take().kid, pool.take().kid] == ["kid-1", "kid-2"]
    with pytest.raises(EabKeysUsedUp) as err:
        pool.take()
    assert "the 2 single-use key(s) of --wec-eab-file keys.txt were each sent once" in \
        str(err.value)


@pytest.mark.parametrize(("index", "workers", "why"), [
    (3, 2, "it replaced a dead worker"),  # xdist's replacement of a dead worker: gw3 of 2
    (2, 3, "is empty"),  # more workers than keys
    (1, 0, "the run's number of workers is unknown"),
])
def test_workers_without_a_share(index: int, workers: int, why: str) -> None:
    pool = EabPool(_keys(2, single_use=True), f"gw{index}", index, workers)
    with pytest.raises(EabKeysUsedUp, match=why):
        pool.take()


def test_reusable_keys_go_round_from_each_workers_own_start() -> None:
    keys = _keys(3)
    first = EabPool(keys, "gw0", 0, 2)
    second = EabPool(keys, "gw1", 1, 2)
    assert [first.take().kid for _ in range(4)] == ["kid-1", "kid-2", "kid-3", "kid-1"]
    assert [second.take().kid for _ in range(4)] == ["kid-2", "kid-3", "kid-1", "kid-2"]
    assert first.taken == {"kid-1": 2, "kid-2": 1, "kid-3": 1} and first.left is None


def test_share_of(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    assert share_of("main") == (0, 1)
    assert share_of("gw2") == (2, 4)
    assert share_of("gw2", 3) == (2, 3)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert share_of("gw2") == (2, 0)


def test_pool_from_the_stack_info() -> None:
    keys = _keys(4, single_use=True)
    assert pool_from_info({"eab": None}, "main") is None
    pool = pool_from_info({"eab": keys.to_plain()}, "main")
    assert pool is not None and pool.keys == keys and pool.left == 4
