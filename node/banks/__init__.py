"""Hash banks and the exchange: import the industry's lists of known-bad hashes (NCMEC, StopNCII, Tech
Coalition lists, shared through ThreatExchange and HMA) and match uploads against them first; and serve this
node's own block verdicts as a feed that HMA and python-threatexchange can pull.

A bank is a block-only source that never becomes a verdict: a match blocks before inference and is recorded
(the bank's name and the matched entry), but nothing of a bank is signed, federated, answered in lookups or
exported (many lists are shared under access agreements).

  formats   reading bank files (python-threatexchange's local-file format, CSV) as hostile input
  records   the package's SQL: banks and entries, exchange tokens, the exchange log
  matcher   the pipeline's BankCheck: exact keys in the database, perceptual hashes in memory
  tokens    exchange tokens (only their hashes stored)
  exchange  the /exchange/v1 feed
  commands  `verdict-node banks import|list|remove` and `verdict-node exchange-tokens add|list|remove`
"""
from __future__ import annotations

import asyncio
import logging

from node.banks.exchange import ExchangeFeed
from node.banks.matcher import BankMatcher
from node.banks.records import BankRecords
from node.banks.tokens import ExchangeTokens
from node.runtime import Node

log = logging.getLogger("verdict_node.banks")

REFRESH_SECONDS = 2.0


class Banks:
    """The banks feature of one node (``node.features.get(Banks)``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.records = BankRecords(node.store)
        self.matcher = BankMatcher(self.records, node.config.banks, node.metrics.registry)
        self.feed = ExchangeFeed(node.store, ExchangeTokens(node.store), node.actor_id, node.metrics.registry)

    async def keep_fresh(self, node: Node) -> None:
        """Pick up banks imported or removed by other processes; a change ends memoised decisions."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                if await loop.run_in_executor(node.executor, self.matcher.refresh):
                    node.store.generation += 1
            except Exception:  # noqa: BLE001 - a busy database must not stop matching for good
                log.exception("reloading the hash banks failed; retrying")


def install(node: Node) -> Banks:
    """Banks for a node that decides images (serve, scan): the pipeline's bank_check, loaded now (a bank is
    matched from the first image on), kept fresh in the background, and the exchange feed's routes."""
    banks = Banks(node)
    banks.matcher.refresh()
    node.features.add(banks)
    node.bank_check = banks.matcher
    node.background.append(banks.keep_fresh)
    node.app_setups.append(lambda app, _node: banks.feed.add_routes(app))
    return banks
