"""Retractions of verdicts learned by lookup, without following their issuer.

A node that follows an issuer gets its Deletes pushed and backfilled with the rest of its log. A node that
only looks verdicts up follows nobody, so nothing would tell it that the issuer took a verdict back: it
would keep allowing (or blocking) with it, across restarts. So for every issuer in peers.yaml whose
verdicts it learned by lookup, and that it does not follow, the node reads the Deletes of the issuer's
change log (``GET /outbox?since=<cursor>&type=Delete``; whoever may look up there may read it) every
``federation.poll_seconds``, from a cursor kept in the database. A retracted verdict stops counting within
that time plus one lookup round, and a restart resumes from the cursor.

An issuer starts being read when a lookup first answers with one of its verdicts, and every lookup peer is
read from the start (they are who answers).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from node.federation.actors import ActorDirectory, ActorError
from node.federation.auth import Access
from node.federation.backfill import read_log
from node.federation.delivery import PeerRequestError, SignedClient
from node.federation.intake import Intake
from node.federation.records import FederationRecords
from node.web import Refusal
from protocol.activities import Activity
from protocol.errors import ProtocolError

log = logging.getLogger("verdict_node.federation")


class RetractionReader:
    """Reads the Deletes of the issuers whose verdicts this node holds without following them."""

    def __init__(self, access: Access, actors: ActorDirectory, client: SignedClient, intake: Intake,
                 records: FederationRecords, lookup_peers: Iterable[str], interval: float) -> None:
        self.access = access
        self.actors = actors
        self.client = client
        self.intake = intake
        self.records = records
        self.interval = interval
        self.lookup_peers = list(lookup_peers)
        self._problems: dict[str, str] = {}  # last failure per issuer, logged once until it changes

    def watch(self, issuer: str) -> None:
        """Read ``issuer``'s Deletes from now on (from the start of its log: a Delete never precedes its
        verdict there, and reading only Deletes is cheap)."""
        if self.records.deletes_cursor(issuer) is None:
            self.records.set_deletes_cursor(issuer, 0)

    def issuers(self) -> list[str]:
        """Watched issuers still listed in peers.yaml whose log we do not read anyway (not followed), and of
        which we hold an active verdict learned by lookup: reading the others costs them a request every
        ``poll_seconds`` for nothing. (A skipped issuer keeps its cursor: reading resumes from there once a
        lookup brings one of its verdicts.)"""
        return [issuer for issuer in self.records.watched_issuers()
                if self.access.configured_peer(issuer) is not None and self.records.states(issuer)[1] != "accepted"
                and self.records.holds_lookup_verdicts(issuer)]

    async def run(self) -> None:
        for peer in self.lookup_peers:
            self.watch(peer)
        while True:
            for issuer in self.issuers():
                await self.read(issuer)
            await asyncio.sleep(self.interval)

    async def read(self, issuer: str) -> int:
        """Apply the issuer's Deletes after our cursor; how many were news."""
        applied = 0

        async def on_entry(entry: Activity) -> None:
            nonlocal applied
            if entry.type != "Delete":
                return
            try:  # read from the issuer's own outbox over a signed fetch: as good as its signature
                applied += int(await self.intake.take_retraction(entry, signed_by=issuer))
            except Refusal as refusal:
                log.warning("retractions of %s: %s refused: %s", issuer, entry.id, refusal.for_log())

        try:
            actor = await self.actors.get(issuer)
            await read_log(self.client, actor, self.records.deletes_cursor(issuer) or 0, part="Delete",
                           on_entry=on_entry,
                           save_cursor=lambda cursor: self.records.set_deletes_cursor(issuer, cursor))
        except (ActorError, PeerRequestError, Refusal, ProtocolError) as exc:
            problem = exc.for_log() if isinstance(exc, Refusal) else str(exc)
            if self._problems.get(issuer) != problem:
                log.warning("cannot read the retractions of %s (its verdicts learned by lookup keep counting "
                            "until it can be read): %s", issuer, problem)
                self._problems[issuer] = problem
            return applied
        self._problems.pop(issuer, None)
        if applied:
            log.info("read %d retraction(s) of %s", applied, issuer)
        return applied
