"""Servers for testing the load tester itself (not needed by a load run).

:mod:`pytest_wec.testing.hostile_ca` is an ACME server whose resources misbehave.
"""
