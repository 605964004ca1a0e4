"""A plugin of a user's own, beside pytest-wec: an output sink and a summary hook
(``pytest_wec.newhooks``). Put hooks like these in a conftest.py or a plugin module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytest


class JsonLinesSink:
    """One line per chain run (name, outcome, seconds) in the run directory: where a real
    sink would write to a database or a message bus."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[str] = path.open("w", encoding="utf-8")
        self.count = 0

    def add(self, result: Any) -> None:
        self.file.write(json.dumps({"chain": result["chain"], "outcome": result["outcome"],
                                    "took": result["took"]}) + "\n")
        self.count += 1

    def close(self, summary: dict[str, Any]) -> None:
        self.file.close()


def pytest_wec_output_sinks(config: pytest.Config, run_dir: Path) -> list[Any]:
    sink = JsonLinesSink(run_dir / "chains.jsonl")
    config.stash[SINK] = sink
    return [sink]


def pytest_wec_summary(summary: dict[str, Any], config: pytest.Config) -> None:
    sink = config.stash.get(SINK, None)
    summary["example"] = {"chains_seen_by_sink": sink.count if sink else 0}


SINK = pytest.StashKey[JsonLinesSink]()
