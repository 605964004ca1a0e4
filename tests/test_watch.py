"""The controller's watch: the CA's silence told apart from the chains' own waits."""

from __future__ import annotations

import time
from typing import Any

from pytest_wec.controller.watch import Watch
from pytest_wec.wire.stream import WorkerStatus


def _status(worker: str, in_flight: int, last_answer: float,
            waiting: dict[str, int]) -> WorkerStatus:
    return WorkerStatus(worker=worker, session="s-" + worker, t=time.time(),
                        in_flight=in_flight, target_share=0.5, loop_lag_ms=0.0, cpu_pct=1.0,
                        cpu_s=0.1, sent=0, dropped=0, dropped_requests=0, dropped_starts=0,
                        final=False, io="", last_answer=last_answer, waiting=waiting)


def _watch() -> tuple[Watch, list[str]]:
    notes: list[str] = []
    return Watch(time.monotonic() - 30, notes.append, notes.append, stall_after=10.0), notes


def test_chains_waiting_while_the_ca_answers_are_not_a_ca_stall() -> None:
    watch, notes = _watch()
    now = time.monotonic()
    watch.status(_status("gw0", 5, time.time() - 0.2, {"after order": 4, "state DB": 1}), now)
    watch.status(_status("gw1", 3, time.time() - 0.1, {"after order": 2, "request authz": 1}),
                 now)
    watch.tick(now)
    assert watch.stalls == []
    assert len(watch.waits) == 1
    w: dict[str, Any] = watch.waits[0]
    assert w["in_flight"] == 8 and w["waiting"] == {"after order": 6, "state DB": 1,
                                                     "request authz": 1}
    assert notes[-1].startswith("wec: no chain ended for 30.0s with 8 in flight while the CA "
                                "answers (last answer 0.")
    assert notes[-1].endswith("the chains wait on: after order 6, state DB 1, request authz 1")
    assert "stalled" not in " ".join(notes)
    watch.tick(now + 1)
    assert len(watch.waits) == 1, "reported once"


def test_no_answer_from_anyone_is_a_ca_stall() -> None:
    watch, notes = _watch()
    now = time.monotonic()
    watch.status(_status("gw0", 4, time.time() - 25.0, {"request newOrder": 4}), now)
    watch.tick(now)
    assert len(watch.stalls) == 1 and watch.waits == []
    assert notes[-1].startswith("wec: CA stalled: no answer from the CA for 25.")
    assert notes[-1].endswith("with 4 in flight")


def test_a_worker_that_never_saw_an_answer_falls_back_to_ended_chains() -> None:
    watch, _ = _watch()
    now = time.monotonic()
    watch.status(_status("gw0", 2, 0.0, {"request newAccount": 2}), now)
    watch.tick(now)
    assert len(watch.stalls) == 1, "30 s since the start without any answer"


def test_a_worker_is_silent_only_with_chains_in_flight() -> None:
    """One that said it has none in flight (its sink closed, its end record still behind in
    the stream of a controller that fell behind) lost nothing; one with chains did."""
    notes: list[str] = []
    watch = Watch(time.monotonic(), notes.append, notes.append, silent_after=0.5)
    now = time.monotonic()
    watch.status(_status("gw0", 0, time.time(), {}), now)
    watch.status(_status("gw1", 2, time.time(), {"request authz": 2}), now)
    watch.tick(now + 0.4)
    assert watch.workers_lost == []
    watch.tick(now + 0.6)
    assert [w["worker"] for w in watch.workers_lost] == ["gw1"]
    assert watch.workers_lost[0]["in_flight"] == 2
    assert any(n.startswith("wec: worker gw1 went silent") for n in notes)


def test_no_worker_is_judged_silent_while_the_reader_is_behind() -> None:
    """A worker unheard for longer than the silence bound, with chains in flight, is lost;
    not while the controller's reader works through a backlog of the stream (what the
    worker said since is unread), and it is once the reader has caught up."""
    watch, notes = _watch()
    watch.silent_after = 0.5
    now = time.monotonic()
    watch.status(_status("gw0", 2, time.time(), {}), now)
    watch.tick(now + 5, behind=True)
    assert watch.workers_lost == [] and not any("silent" in n for n in notes)
    watch.tick(now + 6)
    assert [w["worker"] for w in watch.workers_lost] == ["gw0"]
