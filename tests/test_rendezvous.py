"""The rendezvous between workers and the controller: stack on demand and the load barrier,
over a real socket (no CA needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from pytest_wec.controller.rendezvous import Rendezvous
from pytest_wec.wire.rendezvous import RendezvousError, ask

pytestmark = pytest.mark.timeout(60)


def _raw(address: str, data: bytes) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def test_stack_starts_once_for_every_asker() -> None:
    calls = []

    def start() -> tuple[dict[str, Any], str | None]:
        calls.append(threading.current_thread().name)
        time.sleep(0.2)
        return {"directory": "https://127.0.0.1:1/dir"}, "PEM"

    rv = Rendezvous("127.0.0.1", start, workers=4)
    address = rv.start()
    try:
        answers: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda: answers.append(
            ask(address, rv.token, "stack", 10))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(calls) == 1, "the stack starts once, whoever asks first"
        assert [a["stack"]["directory"] for a in answers] == ["https://127.0.0.1:1/dir"] * 4
        assert {a["ca_pem"] for a in answers} == {"PEM"}
    finally:
        rv.close()


def test_a_stack_that_cannot_start_is_the_same_error_for_all() -> None:
    def start() -> tuple[dict[str, Any], str | None]:
        raise RuntimeError("pebble: not found")

    rv = Rendezvous("127.0.0.1", start)
    address = rv.start()
    try:
        for _ in range(2):
            with pytest.raises(RendezvousError, match="pebble: not found"):
                ask(address, rv.token, "stack", 5)
    finally:
        rv.close()


def test_bad_requests_get_a_clear_error_and_the_server_goes_on() -> None:
    rv = Rendezvous("127.0.0.1", lambda: ({}, None))
    address = rv.start()
    try:
        with pytest.raises(RendezvousError, match="bad token"):
            ask(address, "wrong", "stack", 5)
        with pytest.raises(RendezvousError, match="unknown op 'explode'"):
            ask(address, rv.token, "explode", 5)
        with pytest.raises(RendezvousError, match="ready needs a worker name"):
            ask(address, rv.token, "ready", 5)
        assert _raw(address, b"not json\n")["error"] == "bad request: a line that is not JSON"
        assert "version 1" in _raw(address, b'{"v": 9}\n')["error"]
        assert "version 1" in _raw(address, b"[1, 2]\n")["error"]
        assert ask(address, rv.token, "stack", 5)["ok"] is True, "still serving"
    finally:
        rv.close()


def test_unreachable_controller_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RendezvousError, match=f"cannot reach the controller at 127.0.0.1:{port}"):
        ask(f"127.0.0.1:{port}", "t", "stack", 2)


def test_barrier_answers_everyone_at_one_instant() -> None:
    rv = Rendezvous("127.0.0.1", lambda: ({}, None), workers=3, start_in=0.3)
    opened: list[float] = []
    rv.on_open = opened.append
    address = rv.start()
    try:
        got: dict[str, tuple[float, float]] = {}

        def worker(name: str, delay: float) -> None:
            time.sleep(delay)
            answer = ask(address, rv.token, "ready", 10, worker=name)
            got[name] = (time.time(), answer["load_started"])

        threads = [threading.Thread(target=worker, args=(f"gw{i}", 0.4 * i)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(got) == ["gw0", "gw1", "gw2"]
        answered = [at for at, _ in got.values()]
        assert max(answered) - min(answered) < 0.1, "all answered together, after the last"
        assert min(answered) >= 0.0
        assert {start for _, start in got.values()} == {opened[0]}, "one common start"
        assert opened[0] - max(answered) == pytest.approx(0.3, abs=0.1)
        late = ask(address, rv.token, "ready", 5, worker="gw9")
        assert late["load_started"] == opened[0] and late["start_in"] < 0.3
        assert rv.late == ["gw9"]
    finally:
        rv.close()


def test_barrier_opens_without_a_worker_that_went_down_or_never_came() -> None:
    rv = Rendezvous("127.0.0.1", lambda: ({}, None), workers=2, barrier_timeout=60)
    address = rv.start()
    try:
        timer = threading.Timer(0.5, rv.worker_down, args=("gw1",))
        timer.start()
        t0 = time.monotonic()
        ask(address, rv.token, "ready", 10, worker="gw0")
        assert time.monotonic() - t0 < 5, "a worker that went down is not waited for"
    finally:
        rv.close()
    rv = Rendezvous("127.0.0.1", lambda: ({}, None), workers=2, barrier_timeout=0.5)
    address = rv.start()
    try:
        ask(address, rv.token, "ready", 10, worker="gw0")
        assert rv.missing == ["1 worker(s)"]
    finally:
        rv.close()
