"""``POST /inbox``: signed activities from peers, dispatched by type, each processed once.

A body is read up to 1 MB and parsed strictly before anything else; the signature is checked against
the key that speaks for the activity's actor (federation.auth), and the activity id is remembered so a
retried delivery changes nothing. Follow, Accept, Reject and Undo go to the follow state machine; Create,
Update and Announce carry verdicts, Delete retracts one (federation.intake); a Create batch from a peer we
follow also moves our backfill cursor over it (federation.backfill). A forged or malformed activity is
refused with a 4xx and stores nothing.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from node.federation.actors import PeerActor
from node.federation.auth import Authenticator
from node.federation.delivery import DeliveryQueue, read_limited
from node.federation.follows import Follows
from node.federation.intake import Intake
from node.federation.records import FederationRecords
from node.web import Refusal, json_response
from protocol import activities
from protocol.activities import Activity
from protocol.errors import ProtocolError

MAX_INBOX_BYTES = 1_000_000

Handler = Callable[[PeerActor, Activity], Awaitable[dict[str, Any]]]
PushedBatch = Callable[[PeerActor, str], None]


class Inbox:
    def __init__(self, auth: Authenticator, follows: Follows, intake: Intake, records: FederationRecords,
                 delivery: DeliveryQueue, give_up_after_hours: float, on_batch: PushedBatch) -> None:
        self.auth = auth
        self.on_batch = on_batch
        self.intake = intake
        self.records = records
        self.delivery = delivery
        self.give_up_after_hours = give_up_after_hours
        self.handlers: dict[str, Handler] = {
            "Follow": follows.on_follow, "Accept": follows.on_accept, "Reject": follows.on_reject,
            "Undo": follows.on_undo, "Create": self.on_verdicts, "Update": self.on_verdicts,
            "Announce": self.on_verdicts, "Delete": self.on_delete,
        }

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_INBOX_BYTES:
            raise Refusal(413, f"body larger than {MAX_INBOX_BYTES} bytes")
        body = await read_limited(request.content, MAX_INBOX_BYTES)
        if body is None:
            raise Refusal(413, f"body larger than {MAX_INBOX_BYTES} bytes")
        try:
            activity = activities.parse_activity(body)
        except ProtocolError as exc:
            raise Refusal(400, f"activity: {exc}") from None
        actor = await self.auth.authenticate(request, body, follow_request=activity.type == "Follow")
        if activity.actor != actor.id:
            raise Refusal(401, "the signing key's owner is not the activity's actor")
        self.delivery.retry_now(actor.inbox)  # it is alive: its backlog need not wait for the backoff
        if self.records.seen(activity.id):
            return json_response({"status": "already processed"}, 202)
        handler = self.handlers.get(activity.type)
        if handler is None:
            raise Refusal(422, f"activity type {activity.type} is not handled here")
        result = await handler(actor, activity)
        self.records.mark_seen(activity.id)
        return json_response({"status": "accepted", **(result or {})}, 202)

    async def on_verdicts(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        """protocol.activities already refused a Create/Update carrying another issuer's verdict; an
        Announce relays other issuers' verdicts, each trusted only as its issuer is."""
        received = await self.intake.take_verdicts(activity.verdicts, parsed=activity.parsed_verdicts)
        if activity.type == "Create":
            self.on_batch(actor, activity.id)
        return {"stored": received.stored, "duplicates": received.duplicates}

    async def on_delete(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        return {"retracted": await self.intake.take_retraction(activity, signed_by=actor.id)}

    def forget_old_activity_ids(self) -> int:
        """Activity ids are remembered (for idempotency) well past the longest a sender retries; after
        that a replay would also fail the signature's Date window, and verdicts are idempotent anyway."""
        horizon = time.time() - max(30 * 86400.0, 2 * self.give_up_after_hours * 3600.0)
        return self.records.forget_seen_before(horizon)
