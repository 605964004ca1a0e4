"""The embedded stack: started as a user would start it, stopped leaving no process."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path

import pytest

from pytest_wec.errors import StackError
from pytest_wec.settings import Settings
from pytest_wec.stack import Stack
from pytest_wec.stack._procs import find_binary

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_stack_starts_and_stops_everything(tmp_path: Path) -> None:
    stack = Stack.start(Settings(), tmp_path, "t1")
    pids = [p.pid for p in stack.procs]
    try:
        assert [p.name for p in stack.procs] == ["redis-server", "challenge-server", "pebble"]
        info = stack.info
        ctx = ssl.create_default_context(cafile=info["ca_bundle"])
        with urllib.request.urlopen(info["directory"], context=ctx, timeout=5) as resp:
            directory = json.load(resp)
        assert "newAccount" in directory and "newOrder" in directory
        cfg = json.loads((tmp_path / "pebble-config.json").read_text())["pebble"]
        assert cfg["httpPort"] != 5002 and cfg["tlsPort"] != 5001
        assert (tmp_path / "pebble.log").exists() and (tmp_path / "redis.log").exists()
        assert all(_alive(pid) for pid in pids)
    finally:
        stack.stop()
    assert not any(_alive(pid) for pid in pids)


def test_missing_binary_names_it_and_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"^pebble-nope: not found; install it with: sudo "
                       r"apt-get install pebble") as ei:
        find_binary("pebble", "pebble-nope")
    assert ei.value is not None
    with pytest.raises(StackError,
                       match=r"^pebble: not found on PATH; install it with: sudo apt-get "
                             r"install pebble"):
        old = os.environ["PATH"]
        os.environ["PATH"] = str(tmp_path)
        try:
            find_binary("pebble")
        finally:
            os.environ["PATH"] = old


def test_missing_pebble_fails_the_run_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_wec import chain

        @chain("new_account", produces={"account"})
        async def test_x(wec):
            await wec.new_account()
        """
    )
    result = pytester.runpytest_subprocess("--wec-pebble-bin", "/nonexistent/pebble",
                                           "-p", "no:xdist")
    result.stdout.fnmatch_lines(["*wec stack: /nonexistent/pebble: not found*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in result.stdout.str()


def test_missing_pebble_under_xdist_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_chain="""
        from pytest_wec import chain

        @chain("new_account", produces={"account"})
        async def test_x(wec):
            await wec.new_account()
        """
    )
    result = pytester.runpytest_subprocess("--wec-pebble-bin", "/nonexistent/pebble", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: wec stack: /nonexistent/pebble: not found*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_unwritable_out_dir_is_a_clear_error_before_the_run(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--pyargs", "pytest_wec_chains", "--wec-load", "1",
                                           "--wec-duration", "5s", "--wec-out",
                                           "/proc/wec-cannot-be-here", "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --wec-out: cannot write to /proc/wec-cannot-be-here*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_wec_stack_command_with_a_relative_run_directory(tmp_path: Path) -> None:
    """``wec stack --wec-out DIR`` with DIR relative to where it is typed: the stack runs in
    DIR under that directory, answers, and stops on Ctrl-C leaving no process."""
    import signal
    import subprocess
    import sys
    import time

    wec = Path(sys.executable).with_name("wec")
    proc = subprocess.Popen([str(wec), "stack", "--wec-out", "rel"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops the stack."):
                break
        assert lines and lines[-1].startswith("Ctrl-C"), "".join(lines)
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        assert fields["run dir"].strip() == str(tmp_path / "rel")
        assert fields["CA bundle"].strip() == str(tmp_path / "rel" / "pebble-ca.pem")
        ctx = ssl.create_default_context(cafile=fields["CA bundle"].strip())
        with urllib.request.urlopen(fields["ACME directory"].strip(), context=ctx,
                                    timeout=10) as resp:
            assert "newOrder" in json.load(resp)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, "".join(lines) + out
    assert (tmp_path / "rel" / "pebble.log").is_file()
