"""Pulling what a push missed: the outboxes of the peers we follow, read from the cursor we remember.

A follower reads a peer's log from its saved cursor to the end when the follow is accepted, at start and
every ``backfill_interval_seconds``, so a node that was down gets every verdict exactly once. The cursor
is saved after each page, so an interrupted backfill resumes where it stopped.
"""
from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs, urlencode, urlsplit

from node.federation.actors import ActorDirectory, ActorError
from node.federation.delivery import PeerRequestError, SignedClient
from node.federation.intake import Intake
from node.federation.records import FederationRecords
from node.web import Refusal
from protocol import activities
from protocol.errors import ProtocolError

log = logging.getLogger("verdict_node.federation")


def since_of(url: str, outbox: str) -> int | None:
    """The ``since`` cursor of a next-page URL on ``outbox``, or None when it is not such a URL."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}{parts.path}" != outbox:
        return None
    values = parse_qs(parts.query).get("since")
    if not values or not values[0].isdigit():
        return None
    return int(values[0])


class Backfill:
    def __init__(self, actors: ActorDirectory, client: SignedClient, intake: Intake,
                 records: FederationRecords) -> None:
        self.actors = actors
        self.client = client
        self.intake = intake
        self.records = records
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, actor_id: str) -> None:
        """Backfill from ``actor_id`` in the background, unless that is already under way."""
        task = self._running.get(actor_id)
        if task is not None and not task.done():
            return
        self._running[actor_id] = asyncio.create_task(self._logged(actor_id), name=f"backfill {actor_id}")

    async def stop(self) -> None:
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _logged(self, actor_id: str) -> None:
        try:
            count = await self.backfill(actor_id)
            if count:
                log.info("backfilled %d entries from %s", count, actor_id)
        except (ActorError, PeerRequestError, Refusal, ProtocolError) as exc:
            log.warning("backfill from %s stopped: %s", actor_id, exc.for_log() if isinstance(exc, Refusal) else exc)

    async def backfill(self, actor_id: str) -> int:
        """Read the peer's outbox from the cursor we remember to its end, storing what we lack."""
        actor = await self.actors.get(actor_id)
        if not actor.outbox:
            raise ActorError(f"{actor_id} publishes no outbox")
        cursor = self.records.backfill_cursor(actor_id)
        taken = 0
        while True:
            page = await self.client.get_json(f"{actor.outbox}?{urlencode({'since': cursor})}")
            if not isinstance(page, dict) or not isinstance(page.get("orderedItems"), list):
                raise ActorError(f"{actor.outbox}: not an OrderedCollectionPage")
            for item in page["orderedItems"]:
                entry = activities.parse_activity(item)
                if entry.actor != actor_id:
                    raise ActorError(f"{actor.outbox}: an item of another actor")
                if entry.type in ("Create", "Update", "Announce"):
                    await self.intake.take_verdicts(entry.verdicts, each=True, parsed=entry.parsed_verdicts)
                elif entry.type == "Delete":
                    try:  # read from the issuer's own outbox over a signed fetch: as good as its signature
                        await self.intake.take_retraction(entry, signed_by=actor_id)
                    except Refusal as refusal:  # not applied; not a reason to stop reading either
                        log.warning("backfill from %s: %s refused: %s", actor_id, entry.id, refusal.for_log())
                taken += 1
            next_url = page.get("next")
            if not page["orderedItems"] or not isinstance(next_url, str):
                return taken
            next_cursor = since_of(next_url, actor.outbox)
            if next_cursor is None or next_cursor <= cursor:
                raise ActorError(f"{actor.outbox}: next page does not move forward")
            cursor = next_cursor
            self.records.set_backfill_cursor(actor_id, cursor)
