"""Our change log (FIRES style): every own verdict, and every retraction of one, appended in order and
paged to approved followers with a cursor; the collector that appends what any process stored.

- Own verdicts are stored by whoever decided the image (the server's pipeline, a CLI sweep in another
  process); the collector copies those not yet in the log into it, and queues them for every approved
  follower, in one transaction, so nothing is published twice or lost across restarts.
- ``GET /outbox?since=<cursor>`` pages the log oldest first, 100 entries a page, for approved readers
  only (federation.auth.Access.may_read: who may look up may read); consecutive verdicts are grouped into
  Creates exactly as deliveries group them. ``&type=Delete`` pages the retractions alone: what a node that
  only looks verdicts up needs, to stop using those we took back. A page's ``next`` is the reader's cursor;
  at the end of the log it points past every entry so far (answers addressed to one peer included), so the
  next pushed batch continues that cursor with no gap.
- ``retract`` (the `verdicts retract` command, and `release` of a sweep's positive) appends a signed
  Delete of our verdict and queues it for every approved follower.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Sequence
from urllib.parse import urlencode

from aiohttp import web

from node.federation.auth import Authenticator
from node.federation.delivery import ACTIVITY_JSON, DeliveryQueue, enqueue
from node.federation.identity import NodeUrls
from node.federation.metrics import FederationMetrics
from node.federation.records import LOG_TYPES, VERDICT_ENTRY, FederationRecords
from node.config import NodeConfig
from node.store import Store
from node.web import Refusal, json_response
from protocol import activities, proofs
from protocol.verdict import Verdict

log = logging.getLogger("verdict_node.federation")

PAGE_SIZE = 100
AS_PUBLIC_CONTEXT = "https://www.w3.org/ns/activitystreams"
_COLLECTED = "collected_rowid"
#: ``?type=`` values a reader may ask for: one part of the log instead of all of it.
LOG_PARTS = {"Delete": ("Delete",)}


def create_text(urls: NodeUrls, verdict_texts: Sequence[str], first_seq: int, last_seq: int) -> str:
    """The Create carrying the verdicts of consecutive log entries, as JSON text: what the delivery
    queue sends and what outbox pages list. protocol.activities builds (and checks) the envelope
    around the first verdict; the stored documents are then spliced in verbatim (each was checked
    when it was signed), so a batch of 100 costs no re-encoding of 100 verdicts."""
    envelope = activities.create(urls.actor, [json.loads(verdict_texts[0])], [urls.followers],
                                 activity_id=f"{urls.outbox}/batches/{first_seq}-{last_seq}")
    del envelope["object"]
    head = json.dumps(envelope, separators=(",", ":"))
    return f'{head[:-1]},"object":[{",".join(verdict_texts)}]}}'


class Outbox:
    def __init__(self, urls: NodeUrls, records: FederationRecords, delivery: DeliveryQueue, auth: Authenticator,
                 metrics: FederationMetrics, poll_seconds: float) -> None:
        self.urls = urls
        self.records = records
        self.delivery = delivery
        self.auth = auth
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()

    # -- the collector ------------------------------------------------------------------------------------

    def collect_own_verdicts(self, limit: int = 1000) -> int:
        """Append own verdicts not yet in the log and queue them for every approved follower, in one
        transaction. Returns how many (at least 1 when the cursor moved, so the caller looks again)."""
        with self.records.store.transaction() as conn:
            cursor = int(self.records.state(_COLLECTED, "0"))
            last, added = self.records.append_own_verdicts(conn, cursor, limit)
            if last is None:
                return 0
            self.records.set_state(_COLLECTED, str(last), conn)
        self.metrics.outbox_entries.labels(VERDICT_ENTRY).inc(added)
        self.delivery.wake()
        return added or 1  # rows without a document are skipped, but the cursor moved: look again

    def on_own_verdict(self, verdict: Verdict, document: dict) -> None:
        """Pipeline hook: a new own verdict is in the store; let the collector pick it up now."""
        self._wake.set()

    async def collect_loop(self) -> None:
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            try:
                while self.collect_own_verdicts() > 0:
                    await asyncio.sleep(0)
            except Exception:  # a busy database must not stop publishing for good
                log.exception("outbox collector failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    # -- reading the log ----------------------------------------------------------------------------------

    def page(self, since: int, part: str | None = None) -> dict[str, Any]:
        """Up to PAGE_SIZE log entries after the cursor ``since``, oldest first (only ``part``'s types when
        given, see LOG_PARTS)."""
        top = self.records.last_seq()  # read first: an entry appended meanwhile has a higher seq
        rows = self.records.log_page(since, PAGE_SIZE, LOG_PARTS[part] if part else LOG_TYPES, upto=top)
        items: list[Any] = []
        run: list[tuple[int, str]] = []
        for seq, kind, document in [*rows, (None, None, None)]:
            if kind == VERDICT_ENTRY:
                run.append((seq, document))
                continue
            if run:
                items.append(json.loads(create_text(self.urls, [d for _, d in run], run[0][0], run[-1][0])))
                run = []
            if document is not None:
                items.append(json.loads(document))
        extra = {"type": part} if part else {}
        page: dict[str, Any] = {
            "@context": AS_PUBLIC_CONTEXT,
            "id": f"{self.urls.outbox}?{urlencode({'since': since, **extra})}",
            "type": "OrderedCollectionPage",
            "partOf": self.urls.outbox,
            "orderedItems": items,
        }
        # The next link is the reader's cursor (an empty page behind it says "you are up to date", FIRES
        # pages the same way). A page that reaches the end of the log moves it to the last seq of all,
        # past entries the reader never sees (Accepts and Follows addressed to one peer).
        cursor = rows[-1][0] if len(rows) == PAGE_SIZE else top
        if cursor > since:
            page["next"] = f"{self.urls.outbox}?{urlencode({'since': cursor, **extra})}"
        return page

    async def handle(self, request: web.Request) -> web.Response:
        actor = await self.auth.reader(request)
        self.delivery.retry_now(actor.inbox)
        since_text = request.query.get("since")
        if since_text is None:
            return json_response({"@context": AS_PUBLIC_CONTEXT, "id": self.urls.outbox, "type": "OrderedCollection",
                                  "totalItems": self.records.log_size(), "first": f"{self.urls.outbox}?since=0"},
                                 content_type=ACTIVITY_JSON)
        if not since_text.isdigit() or len(since_text) > 18:
            raise Refusal(400, "since must be a cursor from a previous page")
        part = request.query.get("type")
        if part is not None and part not in LOG_PARTS:
            raise Refusal(400, f"type must be one of {', '.join(LOG_PARTS)}")
        self.metrics.outbox_reads.labels("deletes" if part else "log").inc()
        return json_response(self.page(int(since_text), part), content_type=ACTIVITY_JSON)


def retract(store: Store, config: NodeConfig, ed25519_key: Any, verdict_id: str, reason: str) -> str:
    """Retract a verdict. Our own: stop using it here and publish a signed Delete to every approved
    follower (and to the outbox log, for those that backfill later). A peer's: stop using it here only.
    Raises LookupError for a verdict this node does not hold."""
    held = store.get_verdict(verdict_id)
    if held is None:
        raise LookupError(f"no verdict {verdict_id} here")
    records = FederationRecords(store)
    actor_id = config.actor_id
    with store.transaction() as conn:
        if held.own:
            delete = activities.delete(actor_id, verdict_id, reason, [NodeUrls(config.node.url).followers])
            signed = proofs.sign(delete, ed25519_key, activities.ed25519_key_id(actor_id))
            enqueue(conn, signed, records.approved_follower_inboxes(conn))
        records.record_retraction(verdict_id, held.verdict.issuer, reason, None, conn)
        store.retract_verdict(verdict_id, reason)
    if held.own:
        return f"retracted {verdict_id}; a Delete is queued for every approved follower"
    return (f"retracted {verdict_id} here (it is {held.verdict.issuer}'s verdict: only its issuer can retract it "
            f"everywhere)")
