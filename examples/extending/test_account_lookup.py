"""A chain of a user's own, taking the plugin's fixtures: ``acme_client`` (the chain's
instrumented ACME client), ``state_db`` (the state DB with its claims) and
``challenge_server`` (where the CA's validation requests are answered). Run once it is a
test; under ``--wec-load`` it runs as a chain, given the same arguments."""

from __future__ import annotations

import asyncio
from typing import Any

from pytest_wec import ChainContext, chain


@chain("account_lookup", produces={"account"})
async def test_account_lookup(wec: ChainContext, acme_client: Any, state_db: Any,
                              challenge_server: Any) -> None:
    account = await wec.new_account()  # saved in the state DB for the chains that need one
    again = await acme_client.new_account(account.key, only_return_existing=True)
    assert again.url == account.url, "onlyReturnExisting finds the account just made"
    counts = await asyncio.to_thread(state_db.counts, wec.directory)
    assert counts.accounts >= 1
    assert challenge_server.publisher is wec.publisher
