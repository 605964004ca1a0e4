"""The challenge server: http-01, tls-alpn-01 and dns-01 responses from Redis.

It runs as its own process (``python -m pytest_wec_challenge_srv``, the name the wheel
installs this folder under, or ``wec challenge-server``), one file per challenge type over
one store, like letsencrypt/challtestsrv:

    store.py       the Redis key schema (shared with the requesters) and the store
    resp.py        the lean Redis client of the store's reads and the seen events
    http01.py      http-01 responder                 tlsalpn01.py   tls-alpn-01 responder
    dns.py         DNS over UDP and TCP              management.py  pebble-challtestsrv API
    dnswire.py     the wire form of the common DNS answers, without dnslib's objects
    history.py     request history (in memory)       server.py      arguments, listeners, main
    seen.py        each validation request answered, published for the waiting chain

Its modules import each other relatively, so that they work under the installed name and
as the repository's top-level ``challenge_srv`` alike.
"""
