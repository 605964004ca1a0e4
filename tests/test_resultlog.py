"""Results log: JSONL and msgpack round trips, torn tails, ``wec convert``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_wec.controller.resultlog import (
    ResultLogError,
    ResultLogWriter,
    convert,
    convert_main,
    detect_format,
    read_results,
)
from pytest_wec.wire.results import ChainResult

ROOT = Path(__file__).resolve().parent.parent


def make_chain(k: int) -> ChainResult:
    cid = f"gw0-{k}"
    return {"chain_id": cid, "chain": "NewCertificateChain", "worker": "gw0",
            "scheduled": 1.7e9 + k / 3, "started": 1.7e9 + k / 3 + 0.001, "took": 0.25 + k / 7,
            "ok": k % 5 != 0, "outcome": "ok" if k % 5 else "failed",
            "error": None if k % 5 else "urn:ietf:params:acme:error:badCSR :: ünïcode detail",
            "certificates": int(k % 5 != 0),
            "requests": [{"chain_id": cid, "chain": "NewCertificateChain", "endpoint": ep,
                          "method": "POST", "status": 200, "started": 1.7e9 + k, "took": 0.01,
                          "ok": True, "error": None, "problem": None}
                         for ep in ("newOrder", "finalize")]}


CHAINS = [make_chain(k) for k in range(250)]


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"results.{fmt}"
    with ResultLogWriter(path, fmt) as w:
        w.write(CHAINS[0])
        w.write_many(CHAINS[1:])
        assert w.count == len(CHAINS)
    assert detect_format(path) == fmt
    assert list(read_results(path)) == CHAINS


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_torn_last_record_is_tolerated(tmp_path: Path, fmt: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / f"results.{fmt}"
    with ResultLogWriter(path, fmt) as w:
        w.write_many(CHAINS[:10])
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # the writer was killed in the middle of the last record
    assert list(read_results(path)) == CHAINS[:9]
    assert "torn last" in caplog.text


def test_damaged_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultLogWriter(path) as w:
        w.write_many(CHAINS[:3])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"chain": "x", "requ\n' + lines[2])
    with pytest.raises(ResultLogError, match=r"results.jsonl:2: not JSON"):
        list(read_results(path))


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_resultlog import make_chain
    from pytest_wec.controller.resultlog import ResultLogWriter

    w = ResultLogWriter({path!r}, {fmt!r}, flush_interval=0.05)
    k = 0
    while True:
        w.write(make_chain(k))
        k += 1
        if k == 200:
            print("written", flush=True)
        time.sleep(0.0005)
""")


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_killed_writer_leaves_a_readable_log(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"results.{fmt}"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), path=str(path), fmt=fmt))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    got = list(read_results(path))
    assert len(got) >= 100  # all but the last flush interval
    assert got == [make_chain(k) for k in range(len(got))]


def test_convert_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    with ResultLogWriter(src) as w:
        w.write_many(CHAINS)
    mid, back = tmp_path / "b.msgpack", tmp_path / "c.jsonl"
    assert convert_main([str(src), str(mid)]) == 0  # format from the suffix
    assert detect_format(mid) == "msgpack"
    assert convert_main([str(mid), str(back), "--format", "jsonl"]) == 0
    assert back.read_bytes() == src.read_bytes()
    assert list(read_results(back)) == CHAINS
    assert convert(back, tmp_path / "d", "msgpack") == len(CHAINS)
    assert detect_format(tmp_path / "d") == "msgpack"


def test_convert_main_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert convert_main([str(tmp_path / "missing.jsonl"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wec convert: error: No such file or directory")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a log")
    assert convert_main([str(garbage), str(tmp_path / "y.jsonl")]) == 2
    assert "not a results log" in capsys.readouterr().err
    assert not (tmp_path / "y.jsonl").exists()
    assert convert_main([str(garbage), str(tmp_path / "z"), "--format", "xml"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert convert_main([]) == 2
