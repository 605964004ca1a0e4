"""The wec test chains: one file per chain, each an ordinary pytest test.

Run once (``pytest --pyargs chains``) they are an integration suite for an ACME CA; under
``--wec-load``/``--wec-rate`` the same chains run concurrently as a load test.
"""
