"""One node's federation, put together: the parts of this package wired to one Node, and the background
work of a serving node (collector, delivery, follows, periodic backfill).

Verdict flow (a FIRES-style change log, pushed and pulled):
  own verdict stored -> outbox collector -> log + deliveries -> follower inboxes (batches of 100, or 1 s)
  follower: inbox -> intake (proofs verified, issuer listed) -> store + indexes -> policy
  follower, at start / on accept / on a gap after a push / every backfill_interval_seconds: backfill
  cache miss on a node with lookup_peers: lookup client -> peers' /lookup -> intake
  issuers whose verdicts we hold without following them: their Deletes, every poll_seconds
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from node.config import PeerEntry
from node.federation.actors import ActorDirectory, KeyPin
from node.federation.auth import Access, Authenticator
from node.federation.backfill import Backfill
from node.federation.delivery import DeliveryQueue, SignedClient
from node.federation.follows import Follows
from node.federation.identity import Identity, NodeUrls
from node.federation.inbox import Inbox
from node.federation.intake import Intake
from node.federation.lookup import LookupClient, LookupServer
from node.federation.metrics import FederationMetrics
from node.federation.outbox import Outbox, create_text
from node.federation.public_fetch import (FETCH_SECONDS, MAX_DOCUMENT_BYTES, allow_loopback_from_env,
                                          check_stranger_url, stranger_connector)
from node.federation.records import FederationRecords
from node.federation.retractions import RetractionReader
from node.runtime import Node

log = logging.getLogger("verdict_node.federation")


class Federation:
    """The parts, built once per node; ``run`` is the serving node's background task."""

    def __init__(self, node: Node) -> None:
        settings = node.config.federation
        self.node = node
        self.settings = settings
        self.urls = urls = NodeUrls(node.config.node.url)
        self.metrics = metrics = FederationMetrics(node.metrics.registry)
        self.records = records = FederationRecords(node.store)
        self.client = SignedClient(node.actor_id, node.rsa_key, total_timeout=settings.request_timeout_seconds)
        # Documents of actors nobody listed: public addresses only, small and quick (see public_fetch).
        self.allow_loopback = allow_loopback_from_env()
        self.stranger_client = SignedClient(
            node.actor_id, node.rsa_key, total_timeout=FETCH_SECONDS, connect_timeout=FETCH_SECONDS,
            read_timeout=FETCH_SECONDS, max_response_bytes=MAX_DOCUMENT_BYTES,
            connector=lambda: stranger_connector(allow_loopback=self.allow_loopback))
        self.actors = actors = ActorDirectory(
            records, self._fetch_listed,
            pins=pins_of(node.peers), fetch_stranger=self._fetch_stranger)
        self.access = access = Access({p.actor: p for p in node.peers}, records)
        self.auth = auth = Authenticator(access, actors, scheme=urlsplit(urls.base).scheme,
                                         open_follow_requests=settings.open_follow_requests)
        self.delivery = delivery = DeliveryQueue(
            node.store, self.client, lambda texts, first, last: create_text(urls, texts, records.public_run_start(first), last).encode(),
            batch_max=settings.batch_max, batch_wait=settings.batch_wait_seconds,
            poll_interval=settings.poll_seconds, retry_base=settings.retry_base_seconds,
            retry_cap=settings.retry_max_seconds, give_up_after=settings.give_up_after_hours * 3600.0,
            request_timeout=settings.request_timeout_seconds)
        delivery.on_result = lambda result, entries: metrics.deliveries.labels(result).inc(entries)
        self.intake = intake = Intake(node, access, actors, records, metrics)
        self.backfill = Backfill(actors, self.client, intake, records)
        self.follows = Follows(node.actor_id, access, actors, records, delivery, self.backfill.start,
                               retry_refused=settings.backfill_interval_seconds)
        delivery.on_refused = self.follows.on_refused
        self.inbox = Inbox(auth, self.follows, intake, records, delivery, settings.give_up_after_hours,
                           self.backfill.after_push)
        self.outbox = Outbox(urls, records, delivery, auth, metrics, settings.poll_seconds)
        self.identity = Identity(node, urls)
        self.lookup_server = LookupServer(node, auth, settings.lookup_rate_per_second)
        self.retractions = RetractionReader(access, actors, self.client, intake, records, settings.lookup_peers,
                                            settings.poll_seconds)
        self.lookup_client = LookupClient(node.actor_id, settings.lookup_peers, settings.lookup_timeout_seconds,
                                          actors, self.client, intake, records, metrics,
                                          on_issuer=self.retractions.watch)
        self._tasks: list[asyncio.Task[Any]] = []
        self._peers_changed = asyncio.Event()

    def apply_peers(self, peers: list[PeerEntry]) -> None:
        """A new peers.yaml is in force (Node.reload_peers): who may read and be followed, and the key pins,
        all swapped before the next request; new entries get their rows and are followed at once."""
        self.access.peers = {p.actor: p for p in peers}
        self.actors.set_pins(pins_of(peers))
        self.follows.sync_peers()
        self._peers_changed.set()

    async def _fetch_listed(self, url: str) -> Any:
        return await self.client.get_json(url, timeout=self.settings.request_timeout_seconds)

    async def _fetch_stranger(self, url: str) -> Any:
        """The actor document of an actor not in peers.yaml: the URL's checks first, then the
        public-addresses-only client."""
        check_stranger_url(url, allow_loopback=self.allow_loopback)
        return await self.stranger_client.get_json(url)

    async def run(self, node: Node) -> None:
        """Background work of a serving node: collector, delivery, follows and periodic backfill."""
        self.follows.sync_peers()
        self.delivery.start()
        try:
            self._tasks.append(asyncio.create_task(self.outbox.collect_loop(), name="outbox-collector"))
            self._tasks.append(asyncio.create_task(self.retractions.run(), name="retractions"))
            next_backfill = time.monotonic()  # at start, then every backfill_interval_seconds
            while True:
                self._peers_changed.clear()
                await self.follows.ensure_follows()
                if time.monotonic() >= next_backfill:
                    next_backfill = time.monotonic() + self.settings.backfill_interval_seconds
                    for entry in self.access.peers.values():
                        if self.records.states(entry.actor)[1] == "accepted":
                            self.backfill.start(entry.actor)
                    self.inbox.forget_old_activity_ids()
                try:  # a new peers.yaml is followed at once, not at the next round
                    await asyncio.wait_for(self._peers_changed.wait(),
                                           min(10.0, self.settings.backfill_interval_seconds))
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.backfill.stop()
            await self.delivery.stop()
            await self.close()

    async def close(self) -> None:
        """Close the HTTP clients (a CLI command that only asked lookups has no run loop to do it)."""
        await self.client.close()
        await self.stranger_client.close()


def pins_of(peers: list[PeerEntry]) -> dict[str, KeyPin]:
    """The key pins peers.yaml sets (entries with ``key_fingerprint``)."""
    return {p.actor: KeyPin(p.key_fingerprint, p.rsa_fingerprint) for p in peers if p.key_fingerprint}
