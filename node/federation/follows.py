"""The follow state machine, both directions, and the admin's decisions about it.

State lives in the ``peers`` table (``follower_state``: they follow us; ``following_state``: we follow
them: none | pending | accepted | rejected). A peers.yaml entry with ``share: true`` that asks to follow is
accepted at once; anyone else waits for ``verdict-node peers approve``. We follow every entry with
``follow: true``; a Follow the peer refused outright (a 4xx: most often it does not list us yet, because
its admin has not added us) or answered with a Reject is sent again after ``retry_refused`` seconds, so
two admins may add each other in either order, and a refusal is not answered with a Follow a second.
Every answer to a peer (Accept, Reject, Undo) is queued in the outbox/deliveries tables, so the admin's
commands work on the data directory whether or not the server runs: a running server sends what they
queued within ``federation.poll_seconds``.

Trust levels themselves (full / block-only / observe) are set in peers.yaml, not here: approving a
follower only lets it receive our verdicts and ask lookups; its own verdicts count only if peers.yaml
lists it.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from node.federation.actors import ActorDirectory, ActorError, PeerActor
from node.federation.auth import Access
from node.federation.delivery import DeliveryQueue, drop_log_deliveries, enqueue
from node.federation.records import NONE, FederationRecords
from node.store import Store
from node.web import Refusal
from protocol import activities
from protocol.activities import Activity

log = logging.getLogger("verdict_node.federation")


class Follows:
    """The server side: follow activities from peers, and following the peers in peers.yaml."""

    def __init__(self, actor_id: str, access: Access, actors: ActorDirectory, records: FederationRecords,
                 delivery: DeliveryQueue, start_backfill: Callable[[str], None], retry_refused: float) -> None:
        self.actor_id = actor_id
        self.access = access
        self.actors = actors
        self.records = records
        self.delivery = delivery
        self.start_backfill = start_backfill
        self.retry_refused = retry_refused
        self._refused_at: dict[str, float] = {}

    async def on_follow(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        if activity.object_id != self.actor_id:
            raise Refusal(422, "Follow must name this node's actor as object")
        entry = self.access.configured_peer(actor.id)
        follower, _ = self.records.states(actor.id)
        if entry is not None and entry.share:
            state = "accepted"
        elif follower in ("accepted", "rejected"):
            state = follower  # an admin already decided; a repeated Follow changes nothing
        else:
            state = "pending"
        with self.records.store.transaction() as conn:
            self.records.set_follower(conn, actor.id, state, activity.id)
            if state in ("accepted", "rejected"):
                answer = activities.accept if state == "accepted" else activities.reject
                enqueue(conn, answer(self.actor_id, activity.raw), [actor.inbox], audience=[actor.id])
        self.delivery.wake(actor.inbox)
        log.info("follow from %s: %s", actor.id, state)
        if entry is not None and entry.follow and self.records.states(actor.id)[1] == NONE:
            self.follow(actor)  # a configured peer is up: no need to wait for the next ensure_follows
        return {"follow": state}

    async def on_accept(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        return self._answered(actor, activity, "accepted")

    async def on_reject(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        return self._answered(actor, activity, "rejected")

    def _answered(self, actor: PeerActor, activity: Activity, state: str) -> dict[str, Any]:
        follow_id, following = self.records.our_follow(actor.id)
        if following == NONE or activity.object_id != follow_id:
            raise Refusal(422, "this answers no Follow we sent")
        self.records.set_following(self.records.conn, actor.id, state)
        if state == "accepted":
            self.start_backfill(actor.id)
        else:
            self._refused_at[actor.id] = time.monotonic()  # asked again after retry_refused, not at once
        log.info("%s %s our follow", actor.id, state)
        return {"following": state}

    async def on_undo(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        their_follow = self.records.their_follow_id(actor.id)
        is_follow = activity.inner.type == "Follow" if activity.inner is not None else \
            bool(their_follow and activity.object_id == their_follow)
        if not is_follow:
            raise Refusal(422, "only Undo of a Follow is handled")
        with self.records.store.transaction() as conn:
            self.records.set_follower(conn, actor.id, NONE, None)
            drop_log_deliveries(conn, actor.inbox)
        return {"follow": NONE}

    def sync_peers(self) -> None:
        """Make sure each peers.yaml entry has a row, with its trust level, before anything else runs."""
        for entry in self.access.peers.values():
            self.records.ensure_listed(entry.actor, entry.trust)

    def on_refused(self, inbox: str, seqs: list[int]) -> None:
        """Deliveries to ``inbox`` were refused for good: a Follow of ours among them is not pending any more,
        and is asked again after ``retry_refused`` seconds (ensure_follows)."""
        for actor in self.records.our_follows_among(seqs):
            self.records.set_following(self.records.conn, actor, NONE)
            self._refused_at[actor] = time.monotonic()
            log.warning("%s refused our follow request (it does not list this node in its peers.yaml, or its "
                        "admin refused); asking again in %.0f s", actor, self.retry_refused)

    async def ensure_follows(self) -> None:
        """Follow every peers.yaml entry with ``follow: true`` that we do not follow yet (backfills run at
        start, on accept, on a gap and at their interval: not here)."""
        for entry in self.access.peers.values():
            if not entry.follow or entry.actor == self.actor_id:
                continue
            following = self.records.states(entry.actor)[1]
            if following in ("accepted", "pending"):
                continue
            if time.monotonic() - self._refused_at.get(entry.actor, float("-inf")) < self.retry_refused:
                continue
            try:
                actor = await self.actors.get(entry.actor)
            except ActorError as exc:
                log.info("cannot follow %s yet: %s", entry.actor, exc)
                continue
            self.follow(actor)

    def follow(self, actor: PeerActor) -> None:
        activity = activities.follow(self.actor_id, actor.id)
        with self.records.store.transaction() as conn:
            enqueue(conn, activity, [actor.inbox], audience=[actor.id])
            self.records.set_following(conn, actor.id, "pending", activity["id"])
        self.delivery.wake(actor.inbox)


# -- the admin's side (`verdict-node peers ...`), on the data directory --------------------------------------

class PeerCommandError(Exception):
    """A peers command that cannot be done, phrased for the admin."""


def _follow_of(row: dict[str, Any], our_actor: str) -> dict[str, Any]:
    """The peer's Follow as Accept/Reject embed it (Mastodon matches it by id)."""
    return {"id": row["their_follow_id"], "type": "Follow", "actor": row["actor"], "object": our_actor}


def _row(records: FederationRecords, actor: str) -> dict[str, Any]:
    row = records.peer_row(actor)
    if row is None:
        raise PeerCommandError(f"{actor} is not known here (no follow request from it, not in peers.yaml)")
    return row


def _asked_to_follow(row: dict[str, Any]) -> None:
    if not row.get("their_follow_id") or not row.get("inbox"):
        raise PeerCommandError(f"{row['actor']} has not asked to follow this node")


def approve(store: Store, our_actor: str, actor: str) -> str:
    """Accept a pending (or earlier rejected) follow request: the peer starts receiving our verdicts."""
    records = FederationRecords(store)
    row = _row(records, actor)
    _asked_to_follow(row)
    if row["follower_state"] == "accepted":
        return f"{actor} already follows this node"
    with store.transaction() as conn:
        records.set_follower_state(conn, actor, "accepted")
        enqueue(conn, activities.accept(our_actor, _follow_of(row, our_actor)), [row["inbox"]], audience=[actor])
    return f"approved {actor}: an Accept is queued; it receives new verdicts now and backfills the older ones"


def reject(store: Store, our_actor: str, actor: str) -> str:
    """Refuse a follow request (or end an approved follow): a Reject is sent and nothing more goes there."""
    records = FederationRecords(store)
    row = _row(records, actor)
    _asked_to_follow(row)
    with store.transaction() as conn:
        records.set_follower_state(conn, actor, "rejected")
        drop_log_deliveries(conn, row["inbox"])
        enqueue(conn, activities.reject(our_actor, _follow_of(row, our_actor)), [row["inbox"]], audience=[actor])
    return f"rejected {actor}"


def remove(store: Store, our_actor: str, actor: str) -> str:
    """End both directions: Reject its follow (Mastodon's way to remove a follower) and Undo ours."""
    records = FederationRecords(store)
    row = _row(records, actor)
    done = []
    with store.transaction() as conn:
        if row.get("follower_state") not in (None, NONE) and row.get("their_follow_id") and row.get("inbox"):
            drop_log_deliveries(conn, row["inbox"])
            enqueue(conn, activities.reject(our_actor, _follow_of(row, our_actor)), [row["inbox"]], audience=[actor])
            done.append("removed as follower")
        if row.get("following_state") not in (None, NONE) and row.get("our_follow_id") and row.get("inbox"):
            ours = {"id": row["our_follow_id"], "type": "Follow", "actor": our_actor, "object": actor, "to": [actor]}
            enqueue(conn, activities.undo(our_actor, ours), [row["inbox"]], audience=[actor])
            done.append("unfollowed")
        records.forget_follows(conn, actor)
    return f"{actor}: {', '.join(done) or 'no follow in either direction'}"


def forget_key(store: Store, our_actor: str, actor: str) -> str:
    """End the binding of a pinned peer's RSA key (it rotated the key on purpose): the next actor document
    that carries the pinned Ed25519 key binds its RSA key anew. The Ed25519 pin itself lives in peers.yaml."""
    records = FederationRecords(store)
    row = _row(records, actor)
    if not row.get("bound_rsa_fingerprint"):
        return f"{actor}: no RSA key is bound (it binds on the next document that carries the pinned key)"
    with store.transaction() as conn:
        records.forget_key(conn, actor)
    return (f"{actor}: forgot RSA key {row['bound_rsa_fingerprint']}; the next actor document that carries the "
            f"pinned Ed25519 key binds its RSA key (a running server does so at that peer's next request)")
