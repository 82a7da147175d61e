"""Pulling what a push missed: the outboxes of the peers we follow, read from the cursor we remember.

A follower reads a peer's log from its saved cursor to the end at start, when the follow is accepted,
when a pushed batch shows a gap after the cursor, and every ``backfill_interval_seconds``; never after
each push. A pushed batch carries its place in the log (this node's outbox names batches
``<outbox>/batches/<first>-<last>``), so a batch that continues the cursor moves it on and one that leaves a
gap starts a backfill. The cursor only moves forward and is saved after each page, so an interrupted
backfill resumes where it stopped and a node that was down gets every verdict, exactly once.

``read_log`` is the one reader of a peer's change log, also used for the retractions alone
(federation.retractions).
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from node.federation.actors import ActorDirectory, ActorError, PeerActor
from node.federation.delivery import PeerRequestError, SignedClient
from node.federation.intake import Intake
from node.federation.records import FederationRecords
from node.web import Refusal
from protocol import activities
from protocol.activities import Activity
from protocol.errors import ProtocolError

log = logging.getLogger("verdict_node.federation")

_BATCH = re.compile(r"/batches/(\d{1,18})-(\d{1,18})\Z")


def since_of(url: str, outbox: str) -> int | None:
    """The ``since`` cursor of a next-page URL on ``outbox``, or None when it is not such a URL."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}{parts.path}" != outbox:
        return None
    values = parse_qs(parts.query).get("since")
    if not values or not values[0].isdigit():
        return None
    return int(values[0])


def pushed_range(activity_id: str, outbox: str) -> tuple[int, int] | None:
    """(first, last) log seqs of a pushed batch named ``<outbox>/batches/<first>-<last>``; None for any other
    id (another implementation's, or not a batch of this outbox)."""
    if not activity_id.startswith(f"{outbox}/batches/"):
        return None
    found = _BATCH.search(activity_id)
    if found is None:
        return None
    first, last = int(found.group(1)), int(found.group(2))
    return (first, last) if first <= last else None


@dataclass
class Taken:
    """What reading a log stored: new verdicts, verdicts already held, retractions not known before."""

    stored: int = 0
    duplicates: int = 0
    retractions: int = 0


async def read_log(client: SignedClient, actor: PeerActor, cursor: int, *, part: str | None,
                   on_entry: Callable[[Activity], Awaitable[None]], save_cursor: Callable[[int], None]) -> None:
    """Read ``actor``'s outbox from ``cursor`` to its end (``part``: ``Delete`` for the retractions alone),
    handing each entry to ``on_entry`` and saving the cursor after each page. Raises ActorError when the
    log is not what it must be (another actor's items, a next link that does not move forward)."""
    if not actor.outbox:
        raise ActorError(f"{actor.id} publishes no outbox")
    extra = {"type": part} if part else {}
    while True:
        page = await client.get_json(f"{actor.outbox}?{urlencode({'since': cursor, **extra})}")
        if not isinstance(page, dict) or not isinstance(page.get("orderedItems"), list):
            raise ActorError(f"{actor.outbox}: not an OrderedCollectionPage")
        items = page["orderedItems"]
        for item in items:
            entry = activities.parse_activity(item)
            if entry.actor != actor.id:
                raise ActorError(f"{actor.outbox}: an item of another actor")
            await on_entry(entry)
        next_url = page.get("next")
        next_cursor = since_of(next_url, actor.outbox) if isinstance(next_url, str) else None
        if next_cursor is not None and next_cursor > cursor:
            cursor = next_cursor
            save_cursor(cursor)
        elif items and next_cursor is not None:
            raise ActorError(f"{actor.outbox}: next page does not move forward")
        if not items or next_cursor is None:
            return


class Backfill:
    def __init__(self, actors: ActorDirectory, client: SignedClient, intake: Intake,
                 records: FederationRecords) -> None:
        self.actors = actors
        self.client = client
        self.intake = intake
        self.records = records
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def start(self, actor_id: str) -> None:
        """Backfill from ``actor_id`` in the background. One already under way reads once more when it is
        done: what made us ask (a gap) may lie past the page it has read last."""
        task = self._running.get(actor_id)
        if task is not None and not task.done():
            self._again.add(actor_id)
            return
        self._running[actor_id] = asyncio.create_task(self._logged(actor_id), name=f"backfill {actor_id}")

    async def stop(self) -> None:
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    def after_push(self, actor: PeerActor, activity_id: str) -> None:
        """A batch from a peer we follow was stored: move the cursor over it when it continues the cursor,
        backfill when it leaves a gap (entries between the cursor and the batch never reached us)."""
        if not actor.outbox or self.records.states(actor.id)[1] != "accepted":
            return
        span = pushed_range(activity_id, actor.outbox)
        if span is None:
            return
        first, last = span
        cursor = self.records.backfill_cursor(actor.id)
        if first <= cursor + 1:
            self.records.set_backfill_cursor(actor.id, last)
        else:
            log.info("a push from %s starts at entry %d, our cursor is at %d: backfilling the gap",
                     actor.id, first, cursor)
            self.start(actor.id)

    async def _logged(self, actor_id: str) -> None:
        while True:
            self._again.discard(actor_id)
            try:
                taken = await self.backfill(actor_id)
                if taken.stored or taken.retractions:
                    log.info("backfilled from %s: %d new verdict(s), %d retraction(s) (%d verdict(s) already held)",
                             actor_id, taken.stored, taken.retractions, taken.duplicates)
            except (ActorError, PeerRequestError, Refusal, ProtocolError) as exc:
                log.warning("backfill from %s stopped: %s", actor_id,
                            exc.for_log() if isinstance(exc, Refusal) else exc)
                return
            if actor_id not in self._again:
                return

    async def backfill(self, actor_id: str) -> Taken:
        """Read the peer's outbox from the cursor we remember to its end, storing what we lack."""
        actor = await self.actors.get(actor_id)
        taken = Taken()

        async def on_entry(entry: Activity) -> None:
            if entry.type in ("Create", "Update", "Announce"):
                received = await self.intake.take_verdicts(entry.verdicts, each=True, parsed=entry.parsed_verdicts,
                                                           origin="backfill")
                taken.stored += received.stored
                taken.duplicates += received.duplicates
            elif entry.type == "Delete":
                try:  # read from the issuer's own outbox over a signed fetch: as good as its signature
                    taken.retractions += int(await self.intake.take_retraction(entry, signed_by=actor_id))
                except Refusal as refusal:  # not applied; not a reason to stop reading either
                    log.warning("backfill from %s: %s refused: %s", actor_id, entry.id, refusal.for_log())

        await read_log(self.client, actor, self.records.backfill_cursor(actor_id), part=None, on_entry=on_entry,
                       save_cursor=lambda cursor: self.records.set_backfill_cursor(actor_id, cursor))
        return taken
