"""The repository's own pytest wiring.

The plugin itself is installed as the ``wec`` pytest11 entry point (pyproject.toml), so
nothing needs registering here; this file only keeps pytest from collecting what is not a
test (benchmarks are run as scripts, see bench/README.md).
"""

collect_ignore = ["bench", "wec-results", "build"]
