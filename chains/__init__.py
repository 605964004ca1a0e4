"""The wec test chains: one file per chain, each an ordinary pytest test.

Run once (``pytest --pyargs pytest_wec_chains``) they are an integration suite for an ACME
CA; under ``--wec-load``/``--wec-rate`` the same chains run concurrently as a load test.

The wheel installs this folder as ``pytest_wec_chains``; in the repository it is also the
top-level ``chains`` (``pytest chains``, or ``pytest --pyargs chains`` from the repository's
root). The chains import each other relatively (``from ._checks import ...``), so that they
work under either name.
"""
