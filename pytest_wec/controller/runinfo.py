"""summary.json's ``run``: when the load ran, and what it was asked (controller)."""

from __future__ import annotations

from typing import Any

__all__ = ["run_info_of"]


def run_info_of(session: Any, ended: float) -> dict[str, Any]:
    """The ``run`` keys of a :class:`~pytest_wec.controller.collector.LoadSession` that ended
    at epoch ``ended``; sets the aggregator's ``until`` (the end of the time under load)."""
    s = session.settings
    if session.load_started is not None:
        # the time under load: from the common start to the moment no chain starts
        # (the duration's end, or an earlier stop); start-up and the tail apart
        started = session.load_started
        stop = session.load_ended or started + s.run_length
        load_ended = min(stop, ended)
    else:  # no barrier (a rebuilt or interrupted run): the chains' own span
        started = session._agg.first_start or session._started
        load_ended = min(session._agg.last_end or ended, ended)
    session._agg.until = load_ended
    run_info = {"id": session.run_id, "started": started, "ended": load_ended,
                "duration_s": max(load_ended - started, 0.0), "directory": session.directory,
                "workers": session.workers, "model": s.model, "load": s.load, "rate": s.rate,
                "stages": [[d, t] for d, t in s.stages] if s.stages else None,
                "load_started": session.load_started,
                "load_ended": load_ended if session.load_started is not None else None,
                "startup_s": (round(session.load_started - session.process_started, 3)
                              if session.load_started is not None and session.process_started
                              else None),
                # where start-up went: seconds from pytest's start (None: not known)
                "startup": dict(session.startup_parts),
                "tail_s": round(max(ended - load_ended, 0.0), 3),
                "missing_at_start": list(session.missing),
                "pebbles": [str(d.stack.info["directory"]) for d in session.doctors]}
    return run_info
