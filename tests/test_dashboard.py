"""The live dashboard: its address option, its HTTP API, the control channel to the workers,
the load session's snapshot, and a real load run driven from a headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pytest_wec.controller.collector import LoadSession
from pytest_wec.controller.dashboard import Dashboard, parse_dashboard_addr
from pytest_wec.errors import ConfigError
from pytest_wec.settings import Settings, resolve
from pytest_wec.wire.control import Control, ControlReader, ControlWriter, parse_control
from pytest_wec.wire.results import ChainResult
from pytest_wec.wire.sink import ResultSink
from pytest_wec.worker.runner import LoadPlan, split_int

ADDR_HELP = ("expected [HOST:]PORT such as 8089, 127.0.0.1:8089, 0.0.0.0:8089 or [::1]:8089, "
             "PORT from 0 to 65535 (0: any free port); a bare PORT binds 127.0.0.1")


# -- the address -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("8089", ("127.0.0.1", 8089)), (" 0 ", ("127.0.0.1", 0)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("localhost:65535", ("localhost", 65535)), ("[::1]:8089", ("::1", 8089)),
    ("wec-ctl.example.com:9000", ("wec-ctl.example.com", 9000)),
])
def test_parse_dashboard_addr(text: str, want: tuple[str, int]) -> None:
    assert parse_dashboard_addr(text) == want


@pytest.mark.parametrize("text", ["", "x", "65536", "-1", "8089:", ":8089", "host:port",
                                  "::1:8089", "[::1]8089", "[127.0.0.1]:80", "a b:80", "1e3"])
def test_parse_dashboard_addr_rejects(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_dashboard_addr(text)
    assert str(exc.value) == ADDR_HELP


def test_dashboard_option_resolves() -> None:
    assert resolve({"dashboard": "9000"}, lambda _: None, {}).dashboard == ("127.0.0.1", 9000)
    assert resolve({}, lambda _: None, {"WEC_DASHBOARD": "[::1]:0"}).dashboard == ("::1", 0)
    assert resolve({}, lambda _: None, {}).dashboard is None
    with pytest.raises(ConfigError) as exc:
        resolve({"dashboard": "80x"}, lambda _: None, {})
    assert str(exc.value) == f"--wec-dashboard: {ADDR_HELP}, got '80x'"


def test_dashboard_option_on_the_command_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("-p", "no:xdist", "--wec-dashboard", "80x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --wec-dashboard: {ADDR_HELP}, got '80x'"])
    result = pytester.runpytest("-p", "no:xdist", "--wec-dashboard", "0")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["wec: --wec-dashboard shows load runs *; no dashboard for "
                                 "this run"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# -- the HTTP API, against a stand-in session ---------------------------------------------


class FakeSession:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.targets: list[float] = []
        self.stops = 0
        self.sinces: list[int] = []
        self.fail: Exception | None = None
        self.ended = False

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        self.sinces.append(since)
        n = 3 + len(self.sinces)  # a second more at every call
        return {"timeline_from": since, "ended": self.ended, "timeline_by": {},
                "timeline": [{"t": t, "chains": t} for t in range(since, n)]}

    def set_target(self, value: float) -> None:
        if self.fail is not None:
            raise self.fail
        self.targets.append(value)

    def request_stop(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.stops += 1


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[FakeSession, str]]:
    settings = getattr(request, "param", None) or Settings(load=2)
    fake = FakeSession(settings)
    dash = Dashboard(fake, "127.0.0.1", 0, token="t0ken")
    url = dash.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#token=t0ken", url)
    try:
        yield fake, url.split("#")[0]
    finally:
        t0 = time.monotonic()
        dash.stop()
        assert time.monotonic() - t0 < 5


AUTH = {"Authorization": "Bearer t0ken"}


def test_api_needs_the_token(served: tuple[FakeSession, str]) -> None:
    fake, base = served
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "t0ken"}):
        r = httpx.post(base + "api/target", json={"value": 3}, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in r.json()["error"]
    assert httpx.get(base + "api/snapshot").status_code == 401
    assert httpx.get(base + "api/snapshot?token=t0ken").status_code == 200
    assert httpx.post(base + "api/stop?token=t0ken", json={}).status_code == 401  # GETs only
    assert fake.targets == [] and fake.stops == 0
    page = httpx.get(base)  # the page itself holds no data
    assert page.status_code == 200 and "WEC.dashboard();" in page.text
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page.text)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"value": ', "bad JSON: "),
    (b'{"value": 2.5}', "value: expected a whole number of chains in flight from 0 to "
                        "1000000, as {\"value\": N}, got 2.5"),
    (b'{"value": -1}', "got -1"), (b'{"value": "3"}', "got '3'"), (b'{"value": true}', "got True"),
    (b'{"value": 1e9}', "got 1000000000.0"), (b'{"target": 3}', "got None"), (b"[3]", "got None"),
])
def test_api_rejects_bad_targets(served: tuple[FakeSession, str], body: bytes,
                                 message: str) -> None:
    fake, base = served
    r = httpx.post(base + "api/target", content=body,
                   headers=AUTH | {"Content-Type": "application/json"})
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert fake.targets == []


def test_api_sets_the_target_and_stops(served: tuple[FakeSession, str]) -> None:
    fake, base = served
    r = httpx.post(base + "api/target", content=b'{"value": 6}', headers=AUTH)
    assert r.status_code == 415  # no JSON content type: no other site's form gets here
    r = httpx.post(base + "api/target", json={"value": 6}, headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"target": 6})
    assert httpx.post(base + "api/target", json={"value": 0.0}, headers=AUTH).json() == \
        {"target": 0}
    assert fake.targets == [6.0, 0.0]
    assert httpx.post(base + "api/stop", json={}, headers=AUTH).json() == {"stopping": True}
    assert fake.stops == 1
    fake.fail = RuntimeError("the run is not running")
    r = httpx.post(base + "api/target", json={"value": 1}, headers=AUTH)
    assert (r.status_code, r.json()) == (409, {"error": "the run is not running"})
    fake.fail = redis.ConnectionError("refused")
    r = httpx.post(base + "api/stop", json={}, headers=AUTH)
    assert r.status_code == 503 and "refused" in r.json()["error"]


@pytest.mark.parametrize("served", [Settings(rate=2.0)], indirect=True)
def test_api_open_model_takes_a_rate(served: tuple[FakeSession, str]) -> None:
    fake, base = served
    r = httpx.post(base + "api/target", json={"value": 2.5}, headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"target": 2.5})
    r = httpx.post(base + "api/target", json={"value": -2}, headers=AUTH)
    assert "chain starts per second" in r.json()["error"]
    assert fake.targets == [2.5]


def test_api_answers_only_loopback_names(served: tuple[FakeSession, str]) -> None:
    _fake, base = served
    port = base.rsplit(":", 1)[1].strip("/")
    r = httpx.get(base + "api/snapshot?token=t0ken", headers={"Host": f"evil.test:{port}"})
    assert r.status_code == 403
    r = httpx.get(base + "api/snapshot?token=t0ken", headers={"Host": f"localhost:{port}"})
    assert r.status_code == 200


def test_events_stream_snapshots_from_the_settling_seconds(
        served: tuple[FakeSession, str]) -> None:
    fake, base = served
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", base + "api/events?token=t0ken", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) == 4:
                break
    assert [e["timeline_from"] for e in events] == [0, 0, 0, 1]  # 4, 5, 6 seconds known
    assert fake.sinces[:4] == [0, 0, 0, 1]


def test_a_page_gets_the_last_snapshot_when_the_dashboard_stops() -> None:
    # the run ends and the dashboard stops well within a tick of the stream: the page still
    # gets the snapshot that says the run ended, rather than a closed connection
    fake = FakeSession(Settings(load=2))
    dash = Dashboard(fake, "127.0.0.1", 0)
    base = dash.start()
    events: list[dict[str, Any]] = []
    stopper = threading.Thread(target=dash.stop)
    t0 = time.monotonic()
    with httpx.stream("GET", base + "api/events", timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    fake.ended = True
                    stopper.start()
    stopper.join(10)
    assert [e["ended"] for e in events] == [False, True]
    assert time.monotonic() - t0 < 5


def test_busy_port_is_an_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError):
            Dashboard(FakeSession(Settings(load=1)), "127.0.0.1", port).start()


# -- the control channel and the load session ---------------------------------------------


def test_shares_of_a_live_target() -> None:
    for total in (0, 1, 5, 6, 7):
        plans = [LoadPlan("closed", i, 3, 2, None, None, 10, 1) for i in range(3)]
        shares = [p.share(total) for p in plans]
        assert sum(shares) == total and shares == [split_int(total, i, 3) for i in range(3)]
    assert LoadPlan("open", 1, 4, None, 2.0, None, 10, 1).share(10.0) == 2.5
    assert parse_control({b"target": b"6.0", b"stop": b"1"}) == Control(6.0, True)
    for junk in (b"abc", b"-1", b"nan", b"inf"):
        assert parse_control({b"target": junk}) == Control(None, False)


@pytest.mark.redis
def test_control_reaches_the_workers(redis_url: str) -> None:
    ns = uuid.uuid4().hex
    writer = ControlWriter(redis_url, ns)

    async def read() -> Control | None:
        reader = ControlReader(redis_url, ns)
        try:
            return await reader.read()
        finally:
            await reader.aclose()

    try:
        writer.stop()
        writer.reset()
        assert asyncio.run(read()) == Control(None, False)
        writer.set_target(6)
        assert asyncio.run(read()) == Control(6.0, False)
        writer.stop()
        assert asyncio.run(read()) == Control(6.0, True)
    finally:
        writer.close()


def chain(k: int, worker: str) -> ChainResult:
    now = time.time()
    return {"chain_id": f"{worker}-{k}", "chain": "new_order", "worker": worker,
            "scheduled": now - 0.02, "started": now - 0.02, "took": 0.02, "ok": True,
            "outcome": "ok", "error": None, "certificates": 1,
            "requests": [{"chain_id": f"{worker}-{k}", "chain": "new_order",
                          "endpoint": "newOrder", "method": "POST", "status": 201,
                          "started": now - 0.01, "took": 0.005, "ok": True, "error": None,
                          "problem": None}]}


@pytest.mark.redis
def test_load_session_snapshot_and_control(redis_url: str, tmp_path: Path) -> None:
    ls = LoadSession(Settings(load=4, duration=30), tmp_path, "20261128-000000-abcdef",
                     redis_url, uuid.uuid4().hex, "https://ca.test/dir", 1, lambda _l: None,
                     state_counts=lambda: {"accounts": 3}, progress_interval=0.1)
    ls.start()

    async def worker() -> None:
        async with ResultSink(redis_url, ls.namespace, "gw0", flush_interval=0.05,
                              heartbeat_interval=0.1) as sink:
            sink.set_status(in_flight=3, target_share=4.0)
            for k in range(40):
                sink.add(chain(k, "gw0"))
                await asyncio.sleep(0.03)
            await asyncio.sleep(0.3)

    asyncio.run(worker())
    snap = ls.snapshot()
    assert snap["totals"]["chains"] == 40 and snap["chains"]["new_order"]["count"] == 40
    assert snap["target"] == 4.0 and snap["state"] == {"accounts": 3}
    assert snap["run"]["id"] == "20261128-000000-abcdef" and not snap["ended"]
    assert len(snap["timeline"]) == int(snap["elapsed_s"]) >= 1
    assert snap["timeline_by"]["endpoints"]["newOrder"]["count"]
    assert [w["worker"] for w in snap["workers"]] == ["gw0"]
    assert snap["window"]["chains_per_s"] > 0
    json.dumps(snap)  # plain data
    assert ls.snapshot(since=10_000)["timeline"] == []

    ls.set_target(7)
    assert ls.snapshot()["target"] == 7.0
    client = redis.Redis.from_url(redis_url)
    try:
        key = f"wec:{ls.namespace}:control"
        assert parse_control(client.hgetall(key)) == Control(7.0, False)  # type: ignore[arg-type]
        ls.request_stop()
        assert parse_control(client.hgetall(key)).stop  # type: ignore[arg-type]
    finally:
        client.close()
    assert ls.snapshot()["stopping"]
    with pytest.raises(RuntimeError):
        ls.set_target(3)
    summary = ls.finish(timeout=5)
    assert [{k: v for k, v in c.items() if k != "at_s"} for c in summary["controls"]] == \
        [{"target": 7.0}, {"stop": True}]
    assert ls.report_path.is_file() and ls.snapshot()["ended"]
    assert ls.snapshot()["elapsed_s"] == ls.snapshot()["elapsed_s"]  # time stops at the end


# -- a real load run, driven from the page ------------------------------------------------


DURATION = 60  # seconds; the test stops the run long before


def _lines(proc: subprocess.Popen[str], out: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)


@pytest.mark.pebble
@pytest.mark.redis
def test_dashboard_drives_a_real_run(browser: Any, tmp_path: Path) -> None:
    if shutil.which("pebble") is None or shutil.which("redis-server") is None:
        pytest.skip("needs the pebble and redis-server binaries")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "pytest_wec_chains",
           "-p", "no:cacheprovider", "-n", "2", "--wec-load", "2",
           "--wec-duration", f"{DURATION}s", "--wec-grace", "10s",
           "--wec-dashboard", "0", "--wec-out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEC_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
    shots = os.environ.get("WEC_SCREENSHOTS")
    page = None
    console: list[str] = []
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = [m for line in list(lines) if (m := re.match(r"wec: dashboard (\S+)", line))]
            url = found[0].group(1) if found else None
            time.sleep(0.1)
        assert url is not None, "".join(lines)
        t_start = time.monotonic()
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))  # for a failure
        page.on("pageerror", lambda e: console.append(f"page error: {e}"))
        page.goto(url)
        page.wait_for_function("() => WEC.updates >= 1 && WEC.series.timeline.length >= 2",
                               timeout=30_000)
        assert page.locator("#chart-throughput canvas").count() == 1
        assert page.locator("#chart-latency canvas").count() == 1
        n = page.evaluate("WEC.charts.throughput.data[0].length")
        page.wait_for_function(f"() => WEC.charts.throughput.data[0].length >= {n + 2}",
                               timeout=10_000)  # the charts grow
        assert page.locator("#table-chains tbody tr").count() >= 1
        assert page.locator("#table-workers tbody tr").count() == 2

        def set_load(value: int, shares: str, in_flight: str) -> None:
            page.fill("#target-value", str(value))
            page.click("#set-target")
            page.wait_for_function("() => document.getElementById('control-msg')"
                                   f".textContent === 'target set to {value}'")
            # every worker takes its exact share, and the chains in flight follow
            page.wait_for_function(
                "() => WEC.data.workers.filter(w => w.state === 'running').map(w => w.target)"
                f".sort().join() === '{shares}'", timeout=5_000)
            try:
                page.wait_for_function(f"() => WEC.data.in_flight {in_flight}", timeout=8_000)
            except Exception as exc:
                seen = page.evaluate("JSON.stringify([WEC.updates, WEC.data.in_flight, "
                                     "WEC.data.workers, WEC.data.ca_events])")
                raise AssertionError(f"in flight not {in_flight} ({exc}): updates, in flight, "
                                     f"workers, CA events {seen}; run:\n"
                                     + "".join(lines[-40:])) from None

        set_load(6, "3,3", ">= 5")
        assert int(page.locator("#in-flight-card .v").inner_text()) >= 5
        if shots:
            page.wait_for_timeout(2000)
            page.screenshot(path=str(Path(shots) / "dashboard.png"), full_page=True)
        set_load(1, "0,1", "<= 1")

        page.click("#stop")
        assert page.locator("#stop").inner_text() == "Confirm stop"
        page.click("#stop")
        try:  # the next snapshot says so (on a loaded machine, seconds later)
            page.wait_for_function("() => WEC.data.stopping || WEC.data.ended", timeout=15_000)
        except Exception as exc:
            msg = page.evaluate("document.getElementById('control-msg').textContent")
            updates = page.evaluate("WEC.updates")
            raise AssertionError(f"the stop was not seen ({exc}); control: {msg!r}; updates "
                                 f"{updates}, console {console[-10:]}; run:\n"
                                 + "".join(lines[-40:])) from None
        assert proc.wait(timeout=60) == 0, "".join(lines)
        assert time.monotonic() - t_start < DURATION  # ended early
    finally:
        if page is not None:
            page.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    text = "".join(lines)
    assert "stop requested from the dashboard" in text or "wec: report" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["duration_s"] < DURATION - 10 and summary["totals"]["chains"] > 0
    assert (out / "benchmark.json").is_file()

    # report.html from disk, with every request but file: refused
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    requests: list[str] = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
        "file:") else (requests.append(route.request.url), route.abort()))
    report = context.new_page()
    try:
        report.goto((out / "report.html").as_uri())
        report.wait_for_function("() => window.WEC && WEC.ready === true")
        assert report.locator("canvas").count() >= 2
        assert report.evaluate("WEC.series.timeline.length") > 0
        assert report.evaluate("WEC.charts.throughput.data[1].some(v => v > 0)")
        assert report.locator("#table-chains tbody tr").count() >= 1
        assert "127.0.0.1:0 (--wec-dashboard)" in " ".join(
            report.locator("#table-settings").inner_text().split())
        assert report.locator("#table-controls").inner_text().count("load ") == 2
        assert "stop" in report.locator("#table-controls").inner_text()
        assert "load 2 (changed live)" in report.locator("#run-meta").inner_text()
        if shots:
            report.screenshot(path=str(Path(shots) / "report.png"), full_page=True)
        assert requests == []
    finally:
        context.close()
