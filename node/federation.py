"""Federation: nodes share signed verdicts, so an image a trusted peer already classified skips inference.

The node is an ActivityPub actor (``/actor``, WebFinger, NodeInfo) that is locked: only peers listed in
peers.yaml are accepted as followers automatically; anyone else waits for ``verdict-node peers approve``.

Verdict flow (FIRES-style change log, pushed and pulled):
  - every own verdict (whoever stored it: the server's pipeline or a CLI sweep) is appended to the
    ``outbox`` log by the collector, and queued for every approved follower (node.delivery batches
    up to 100 verdicts, or 1 s, into one ``Create``);
  - ``GET /outbox?since=<cursor>`` pages the log oldest first, 100 per page, for approved followers
    only; a follower backfills from the cursor it remembers when its follow is accepted, at start
    and every ``backfill_interval_seconds``, so nothing issued while it was away is missed;
  - ``POST /inbox`` takes signed activities. Every verdict's FEP-8b32 proof is checked against its
    issuer's Ed25519 key, and its issuer must be a peer in peers.yaml, before anything is stored;
  - ``GET /lookup`` answers one fingerprint for approved peers (rate limited), and a node without a
    classifier asks its ``lookup_peers`` on a cache miss (the pipeline's ``lookup_peers`` hook);
  - a retraction is a ``Delete`` of the verdict, signed with a proof too; receivers stop using the
    verdict at once and record why.

Everything here reads and writes the database, not process memory, so CLI commands that change
follows or retract verdicts work whether or not the server runs: the server polls the tables.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web
from prometheus_client import Counter

from node.actors import ActorDirectory, ActorError, KeyPin, PeerActor, actor_of_key_id
from node.config import ConfigError, resolve_config
from node.store import Store
from node.delivery import (ACTIVITY_JSON, VERDICT_ENTRY, DeliveryQueue, PeerRequestError, SignedClient,
                           drop_log_deliveries, enqueue, read_limited)
from node.public_fetch import (FETCH_SECONDS, MAX_DOCUMENT_BYTES, allow_loopback_from_env, check_stranger_url,
                               stranger_connector)
from protocol import activities, httpsig, proofs
from protocol.activities import Activity
from protocol.keys import load_private_key
from protocol.errors import ProtocolError, SignatureMismatch
from protocol.verdict import Fingerprint, Verdict, verify_parsed_verdict, verify_verdict

if TYPE_CHECKING:
    from node.config import NodeConfig, PeerEntry
    from node.runtime import Node

log = logging.getLogger("verdict_node.federation")

SOFTWARE = "verdict-node"
MAX_INBOX_BYTES = 1_000_000
PAGE_SIZE = 100
MAX_LOOKUP_RESULTS = 50
JRD_JSON = "application/jrd+json"
NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"
AS_PUBLIC_CONTEXT = "https://www.w3.org/ns/activitystreams"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
# Types whose entries form the public change log (pages); Accept/Reject/Follow/Undo go to one peer only.
LOG_TYPES = (VERDICT_ENTRY, "Delete")


#: The one answer when a signer's key cannot be had: what a remote server answered (or that it could not
#: be reached) is never told to the sender, who might have chosen that server to probe our network.
KEY_NOT_VERIFIED = ("the signer's key could not be obtained, or is not the key this node pinned for it "
                    "(this node's log has the detail)")


class Refusal(Exception):
    """Refuse a request with an HTTP status and a one-line reason (nothing has been stored). ``detail`` is
    for our log only: it may hold what a remote server answered."""

    def __init__(self, status: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    def for_log(self) -> str:
        return f"{self} ({self.detail})" if self.detail else str(self)


def _json_response(data: Any, status: int = 200, content_type: str = "application/json",
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status,
                        content_type=content_type, headers=headers)


def _refusal_response(refusal: Refusal) -> web.Response:
    return _json_response({"error": str(refusal)}, refusal.status)


class TokenBucket:
    """Per-key rate limiter: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until a token is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


@dataclass(frozen=True)
class Received:
    """Outcome of taking verdicts in: how many were new, how many we already had."""

    stored: int = 0
    duplicates: int = 0


class Federation:
    """All federation state of one node; routes, hooks and background loops are installed by ``install``."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.config = node.config
        self.settings = node.config.federation
        self.store = node.store
        self.actor_id = node.actor_id
        self.base_url = node.config.node.url
        self.inbox_url = f"{self.base_url}/inbox"
        self.outbox_url = f"{self.base_url}/outbox"
        self.lookup_url = f"{self.base_url}/lookup"
        self.followers_url = f"{self.base_url}/followers"
        self.scheme = urlsplit(self.base_url).scheme  # RFC 9421 @target-uri behind a TLS-terminating proxy
        self.peers: dict[str, "PeerEntry"] = {p.actor: p for p in node.peers}
        self.client = SignedClient(self.actor_id, node.rsa_key,
                                   total_timeout=self.settings.request_timeout_seconds)
        # Documents of actors nobody listed: public addresses only, small and quick (see node.public_fetch).
        self.allow_loopback = allow_loopback_from_env()
        self.stranger_client = SignedClient(
            self.actor_id, node.rsa_key, total_timeout=FETCH_SECONDS, connect_timeout=FETCH_SECONDS,
            read_timeout=FETCH_SECONDS, max_response_bytes=MAX_DOCUMENT_BYTES,
            connector=lambda: stranger_connector(allow_loopback=self.allow_loopback))
        self.actors = ActorDirectory(
            self.store, self._fetch_actor_document,
            pins={p.actor: KeyPin(p.key_fingerprint, p.rsa_fingerprint) for p in node.peers if p.key_fingerprint},
            fetch_stranger=self._fetch_stranger_document)
        self.delivery = DeliveryQueue(
            self.store, self.client, self._batch_body,
            batch_max=self.settings.batch_max, batch_wait=self.settings.batch_wait_seconds,
            poll_interval=self.settings.poll_seconds, retry_base=self.settings.retry_base_seconds,
            retry_cap=self.settings.retry_max_seconds, give_up_after=self.settings.give_up_after_hours * 3600.0,
            request_timeout=self.settings.request_timeout_seconds)
        self.lookup_limiter = TokenBucket(self.settings.lookup_rate_per_second,
                                          max(1.0, self.settings.lookup_rate_per_second * 2))
        self._collect_wake = asyncio.Event()
        self._backfilling: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        r = node.metrics.registry
        self.received_counter = Counter("verdictnode_federation_verdicts_received_total",
                                        "Peer verdicts taken in through inbox, backfill or lookup, by result.",
                                        ["result"], registry=r)
        self.refused_counter = Counter("verdictnode_federation_refused_total",
                                       "Federation requests refused, by HTTP status.", ["status"], registry=r)
        self.retractions_counter = Counter("verdictnode_federation_retractions_received_total",
                                           "Retractions received from peers' issuers and applied.", registry=r)
        self.outbox_counter = Counter("verdictnode_federation_outbox_entries_total",
                                      "Entries appended to the outbox log, by type.", ["type"], registry=r)
        deliveries = Counter("verdictnode_federation_deliveries_total",
                             "Outbox entries sent to peers' inboxes, by result (delivered, retry, dropped).",
                             ["result"], registry=r)
        self.delivery.on_result = lambda result, entries: deliveries.labels(result).inc(entries)

    # ------------------------------------------------------------------------------------------------
    # identity documents

    @property
    def username(self) -> str:
        return re.sub(r"[^a-z0-9_.-]+", "-", self.config.node.name.lower()).strip("-") or "node"

    def actor_document(self) -> dict[str, Any]:
        doc = activities.actor_document(self.actor_id, self.node.rsa_key, self.node.ed25519_key,
                                        preferred_username=self.username, name=self.config.node.name,
                                        inbox=self.inbox_url, outbox=self.outbox_url)
        # Where approved peers ask about one fingerprint (node.actors reads it back).
        doc["endpoints"]["verdictLookup"] = self.lookup_url
        return doc

    async def handle_actor(self, request: web.Request) -> web.Response:
        return _json_response(self.actor_document(), content_type=ACTIVITY_JSON)

    async def handle_webfinger(self, request: web.Request) -> web.Response:
        resource = request.query.get("resource", "")
        host = urlsplit(self.base_url).netloc
        if resource not in (f"acct:{self.username}@{host}", self.actor_id):
            return _json_response({"error": f"no such resource here (try acct:{self.username}@{host})"}, 404)
        return _json_response({
            "subject": f"acct:{self.username}@{host}",
            "aliases": [self.actor_id],
            "links": [{"rel": "self", "type": ACTIVITY_JSON, "href": self.actor_id}],
        }, content_type=JRD_JSON)

    async def handle_nodeinfo_index(self, request: web.Request) -> web.Response:
        return _json_response({"links": [{"rel": NODEINFO_SCHEMA, "href": f"{self.base_url}/nodeinfo/2.1"}]})

    async def handle_nodeinfo(self, request: web.Request) -> web.Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            software_version = version("verdict-node")
        except PackageNotFoundError:
            software_version = "0.0.0"
        return _json_response({
            "version": "2.1",
            "software": {"name": SOFTWARE, "version": software_version},
            "protocols": ["activitypub"],
            "services": {"inbound": [], "outbound": []},
            "openRegistrations": False,
            "usage": {"users": {"total": 1}},
            "metadata": {"actor": self.actor_id, "inbox": self.inbox_url, "outbox": self.outbox_url,
                         "lookup": self.lookup_url, "manuallyApprovesFollowers": True,
                         # What a peer's admin lists under known_models (NAME@RULES) to use our scores.
                         "model": (f"{model.name}@{model.rules}" if (model := self.node.model) else None)},
        }, content_type=f'application/json; profile="{NODEINFO_SCHEMA}#"')

    # ------------------------------------------------------------------------------------------------
    # who may do what

    def configured_peer(self, actor: str) -> "PeerEntry | None":
        return self.peers.get(actor)

    def _states(self, actor: str) -> tuple[str, str]:
        row = self.store.conn.execute("SELECT follower_state, following_state FROM peers WHERE actor = ?",
                                      (actor,)).fetchone()
        return (row[0] or "none", row[1] or "none") if row else ("none", "none")

    def is_approved_follower(self, actor: str) -> bool:
        return self._states(actor)[0] == "accepted"

    def may_read(self, actor: str) -> bool:
        """Approved followers, and peers.yaml entries we share with, may read our outbox and lookups."""
        entry = self.configured_peer(actor)
        return self.is_approved_follower(actor) or (entry is not None and entry.share)

    def _known_sender(self, actor: str) -> bool:
        if self.configured_peer(actor) is not None:
            return True
        follower, following = self._states(actor)
        return follower != "none" or following != "none"

    # ------------------------------------------------------------------------------------------------
    # authenticating requests

    async def _fetch_actor_document(self, url: str) -> Any:
        return await self.client.get_json(url, timeout=self.settings.request_timeout_seconds)

    async def _fetch_stranger_document(self, url: str) -> Any:
        """The actor document of a sender nobody listed (open follow requests): the URL's checks first,
        then the public-addresses-only client."""
        check_stranger_url(url, allow_loopback=self.allow_loopback)
        return await self.stranger_client.get_json(url)

    async def authenticate(self, request: web.Request, body: bytes | None, *,
                           follow_request: bool = False) -> PeerActor:
        """The actor that signed this request, after checking the signature, Date window and digest.

        A sender that is neither listed in peers.yaml nor already known here is refused before anything
        is fetched, unless this is a follow request and the admin opened follow requests to strangers.
        The document of any actor not listed in peers.yaml (a stranger, or a follower the admin approved)
        comes through the public-addresses-only client. A signature that does not verify refetches the
        actor once (a rotated key). Whatever a remote server answered stays in our log."""
        try:
            params = httpsig.parse_signature(request.headers)
        except ProtocolError as exc:
            raise Refusal(401, f"signature: {exc}") from None
        try:
            actor_id = actor_of_key_id(params.key_id)
        except ActorError as exc:
            raise Refusal(401, str(exc)) from None
        known = self._known_sender(actor_id)
        if not known and not (follow_request and self.settings.open_follow_requests):
            raise Refusal(403, f"{actor_id} is not a peer of this node" +
                          (" (it takes follow requests only from the peers its admin listed)" if follow_request else ""))
        unlisted = self.configured_peer(actor_id) is None
        try:  # a stranger's document is kept only once its signature verified
            actor = await self.actors.get(actor_id, remember=known, stranger=unlisted)
        except ActorError as exc:
            raise Refusal(401, KEY_NOT_VERIFIED, detail=str(exc)) from None
        for attempt in (0, 1):
            try:
                httpsig.verify_request(request.method, request.raw_path, request.headers, body, params,
                                       actor.http_key(params.key_id), scheme=self.scheme)
                if not known:
                    self.actors.remember(actor)
                return actor
            except ProtocolError as exc:
                if attempt == 1 or not _may_be_a_stale_key(exc):
                    raise Refusal(401, f"HTTP signature refused: {exc}") from None
                try:
                    actor = await self.actors.get(actor_id, refresh=True, remember=known, stranger=unlisted)
                except ActorError as fetch_error:
                    raise Refusal(401, f"HTTP signature refused: {exc}", detail=str(fetch_error)) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------------
    # inbox

    async def handle_inbox(self, request: web.Request) -> web.Response:
        try:
            return await self._inbox(request)
        except Refusal as refusal:
            self.refused_counter.labels(str(refusal.status)).inc()
            log.info("inbox refused (%d): %s", refusal.status, refusal.for_log())
            return _refusal_response(refusal)

    async def _inbox(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_INBOX_BYTES:
            raise Refusal(413, f"body larger than {MAX_INBOX_BYTES} bytes")
        body = await read_limited(request.content, MAX_INBOX_BYTES)
        if body is None:
            raise Refusal(413, f"body larger than {MAX_INBOX_BYTES} bytes")
        try:
            activity = activities.parse_activity(body)
        except ProtocolError as exc:
            raise Refusal(400, f"activity: {exc}") from None
        actor = await self.authenticate(request, body, follow_request=activity.type == "Follow")
        if activity.actor != actor.id:
            raise Refusal(401, "the signing key's owner is not the activity's actor")
        self.delivery.retry_now(actor.inbox)  # it is alive: its backlog need not wait for the backoff
        if self._seen(activity.id):
            return _json_response({"status": "already processed"}, 202)
        handler = getattr(self, f"_on_{activity.type.lower()}", None)
        if handler is None:
            raise Refusal(422, f"activity type {activity.type} is not handled here")
        result = await handler(actor, activity)
        self._mark_seen(activity.id)
        return _json_response({"status": "accepted", **(result or {})}, 202)

    def forget_old_activity_ids(self) -> int:
        """Activity ids are remembered (for idempotency) well past the longest a sender retries; after
        that a replay would also fail the signature's Date window, and verdicts are idempotent anyway."""
        horizon = time.time() - max(30 * 86400.0, 2 * self.settings.give_up_after_hours * 3600.0)
        return self.store.conn.execute("DELETE FROM seen_activities WHERE received_at < ?", (horizon,)).rowcount

    def _seen(self, activity_id: str) -> bool:
        return self.store.conn.execute("SELECT 1 FROM seen_activities WHERE activity_id = ?",
                                       (activity_id,)).fetchone() is not None

    def _mark_seen(self, activity_id: str) -> None:
        self.store.conn.execute("INSERT OR IGNORE INTO seen_activities (activity_id, received_at) VALUES (?, ?)",
                                (activity_id, time.time()))

    # -- follows --------------------------------------------------------------------------------------

    async def _on_follow(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        if activity.object_id != self.actor_id:
            raise Refusal(422, "Follow must name this node's actor as object")
        entry = self.configured_peer(actor.id)
        follower, _ = self._states(actor.id)
        if entry is not None and entry.share:
            state = "accepted"
        elif follower in ("accepted", "rejected"):
            state = follower  # an admin already decided; a repeated Follow changes nothing
        else:
            state = "pending"
        with self.store.transaction() as conn:
            conn.execute("UPDATE peers SET follower_state = ?, their_follow_id = ?, updated_at = ? WHERE actor = ?",
                         (state, activity.id, time.time(), actor.id))
            if state in ("accepted", "rejected"):
                answer = activities.accept if state == "accepted" else activities.reject
                enqueue(conn, answer(self.actor_id, activity.raw), [actor.inbox], audience=[actor.id])
        self.delivery.wake(actor.inbox)
        log.info("follow from %s: %s", actor.id, state)
        if entry is not None and entry.follow and self._states(actor.id)[1] == "none":
            self.follow(actor)  # a configured peer is up: no need to wait for the next ensure_follows
        return {"follow": state}

    async def _on_accept(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        return self._follow_answered(actor, activity, "accepted")

    async def _on_reject(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        return self._follow_answered(actor, activity, "rejected")

    def _follow_answered(self, actor: PeerActor, activity: Activity, state: str) -> dict[str, Any]:
        row = self.store.conn.execute("SELECT our_follow_id, following_state FROM peers WHERE actor = ?",
                                      (actor.id,)).fetchone()
        if not row or (row[1] or "none") == "none" or activity.object_id != row[0]:
            raise Refusal(422, "this answers no Follow we sent")
        self.store.conn.execute("UPDATE peers SET following_state = ?, updated_at = ? WHERE actor = ?",
                                (state, time.time(), actor.id))
        if state == "accepted":
            self.start_backfill(actor.id)
        log.info("%s %s our follow", actor.id, state)
        return {"following": state}

    async def _on_undo(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        row = self.store.conn.execute("SELECT their_follow_id FROM peers WHERE actor = ?", (actor.id,)).fetchone()
        is_follow = activity.inner.type == "Follow" if activity.inner is not None else \
            bool(row and activity.object_id == row[0])
        if not is_follow:
            raise Refusal(422, "only Undo of a Follow is handled")
        with self.store.transaction() as conn:
            conn.execute("UPDATE peers SET follower_state = 'none', their_follow_id = NULL, updated_at = ? "
                         "WHERE actor = ?", (time.time(), actor.id))
            drop_log_deliveries(conn, actor.inbox)
        return {"follow": "none"}

    # -- verdicts -------------------------------------------------------------------------------------

    async def _on_create(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        """protocol.activities already refused a Create/Update carrying another issuer's verdict; an
        Announce relays other issuers' verdicts, each trusted only as its issuer is (take_verdicts)."""
        received = await self.take_verdicts(activity.verdicts, parsed=activity.parsed_verdicts)
        return {"stored": received.stored, "duplicates": received.duplicates}

    _on_update = _on_announce = _on_create

    async def _on_delete(self, actor: PeerActor, activity: Activity) -> dict[str, Any]:
        return {"retracted": await self.take_retraction(activity, signed_by=actor.id)}

    async def _issuers(self, issuers: Iterable[str], *, refresh: bool = False) -> dict[str, PeerActor]:
        found: dict[str, PeerActor] = {}
        for issuer in set(issuers):
            if self.configured_peer(issuer) is None:
                raise Refusal(403, f"verdict issuer {issuer} is not a peer in peers.yaml")
            try:
                found[issuer] = await self.actors.get(issuer, refresh=refresh)
            except ActorError as exc:
                raise Refusal(401, f"verdict issuer {issuer}: {KEY_NOT_VERIFIED}", detail=str(exc)) from None
        return found

    @staticmethod
    def _proof_key_resolver(issuers: Mapping[str, PeerActor]) -> Any:
        """verificationMethod -> key, only among the keys that sign each issuer's verdicts (for a pinned
        peer: the pinned key alone, whatever else its document lists)."""
        def resolve(method: str) -> Any:
            actor = issuers.get(method.split("#", 1)[0])
            if actor is None:
                raise proofs.ProofError(f"{method} is not a key of a known issuer", "verificationMethod")
            return actor.proof_key(method)

        return resolve

    async def verify_verdicts(self, docs: Sequence[Mapping[str, Any]],
                              parsed: Sequence[Verdict] | None = None) -> list[Verdict]:
        """Verify every document's proof against its issuer's key (the issuer must be a configured peer).
        All or nothing: one bad verdict refuses the batch, so a forged one cannot ride along. ``parsed``:
        the documents as protocol.activities already parsed them (same order), so they are not parsed twice."""
        issuers = [d.get("attributedTo") for d in docs]
        if any(not isinstance(i, str) for i in issuers):
            raise Refusal(400, "verdict without attributedTo")
        actors = await self._issuers(issuers)
        try:
            return await self._verify_off_loop(docs, parsed, actors)
        except ProtocolError as first:
            try:  # the issuer may have rotated its key: fetch it again, once
                actors = await self._issuers(issuers, refresh=True)
                return await self._verify_off_loop(docs, parsed, actors)
            except ProtocolError:
                raise Refusal(401, f"verdict: {first}") from None

    async def _verify_off_loop(self, docs: Sequence[Mapping[str, Any]], parsed: Sequence[Verdict] | None,
                               actors: Mapping[str, PeerActor]) -> list[Verdict]:
        """A batch of 100 proofs is tens of milliseconds of CPU: a worker thread does it, so the event
        loop keeps answering pict-rs meanwhile (the interpreter switches threads every few ms)."""
        resolve = self._proof_key_resolver(actors)
        if parsed is None:
            work = lambda: [verify_verdict(dict(doc), resolve) for doc in docs]  # noqa: E731
        else:
            work = lambda: [verify_parsed_verdict(verdict, dict(doc), resolve)  # noqa: E731
                            for verdict, doc in zip(parsed, docs, strict=True)]
        return await asyncio.to_thread(work) if len(docs) > 8 else work()

    async def take_verdicts(self, docs: Sequence[Mapping[str, Any]], *, each: bool = False,
                            parsed: Sequence[Verdict] | None = None) -> Received:
        """Verify, then store and index verdicts received from peers. From the inbox a batch is all or
        nothing (the sender learns at once that something was forged); ``each`` (backfill) keeps the
        verdicts that verify and counts the others, so one bad entry cannot hide a hundred good ones.
        ``parsed``: see verify_verdicts."""
        if not docs:
            return Received()
        if not each:
            verdicts = await self.verify_verdicts(docs, parsed)
            return self._store_verdicts([(v, dict(d)) for v, d in zip(verdicts, docs)])
        good: list[tuple[Verdict, dict[str, Any]]] = []
        for index, doc in enumerate(docs):
            try:
                one = None if parsed is None else parsed[index:index + 1]
                good.append(((await self.verify_verdicts([doc], one))[0], dict(doc)))
            except Refusal as refusal:
                self.received_counter.labels("refused").inc()
                log.warning("verdict %s refused: %s", str(doc.get("id"))[:200], refusal)
        return self._store_verdicts(good)

    def _store_verdicts(self, pairs: Sequence[tuple[Verdict, dict[str, Any]]]) -> Received:
        stored = duplicates = 0
        with self.store.transaction() as conn:
            for verdict, doc in pairs:
                if verdict.issuer == self.actor_id:
                    duplicates += 1  # our own verdicts come only from our store
                    continue
                _, inserted = self.node.add_verdict(verdict, doc, own=False)
                if not inserted:
                    duplicates += 1
                    continue
                stored += 1
                retraction = conn.execute("SELECT reason FROM retractions WHERE verdict_id = ?",
                                          (verdict.id,)).fetchone()
                if retraction is not None:  # its Delete overtook it
                    self.node.retract_verdict(verdict.id, retraction[0])
                if verdict.supersedes:
                    self._record_retraction(verdict.supersedes, verdict.issuer, f"superseded by {verdict.id}", None)
        if stored:
            self.received_counter.labels("stored").inc(stored)
        if duplicates:
            self.received_counter.labels("duplicate").inc(duplicates)
        return Received(stored, duplicates)

    async def take_retraction(self, activity: Activity, *, signed_by: str) -> bool:
        """Apply a verdict's Delete: the verdict stops counting at once (store and indexes) and the reason
        is recorded. Only the issuer may retract (protocol.activities checked that the verdict id is on
        the actor's origin); a Delete relayed by someone else must carry the issuer's proof."""
        issuer, verdict_id = activity.actor, activity.object_id
        assert verdict_id is not None
        if self.configured_peer(issuer) is None:
            raise Refusal(403, f"{issuer} is not a peer in peers.yaml")
        # A pinned issuer's retractions need its pinned key as much as its verdicts do: an HTTP signature
        # (an RSA key bound on first contact) is not enough to take its blocks away.
        if signed_by != issuer or issuer in self.actors.pins or "proof" in activity.raw:
            actors = await self._issuers([issuer])
            try:
                proofs.verify(dict(activity.raw), self._proof_key_resolver(actors))
            except ProtocolError as exc:
                kind = "relayed retraction" if signed_by != issuer else "retraction"
                raise Refusal(401, f"{kind}: {exc}") from None
        held = self.store.get_verdict(verdict_id)
        if held is not None and held.verdict.issuer != issuer:
            raise Refusal(403, "only a verdict's issuer may retract it")
        reason = activity.reason or "retracted by its issuer"
        self.retractions_counter.inc()
        return self._record_retraction(verdict_id, issuer, reason, activity.id)

    def _record_retraction(self, verdict_id: str, issuer: str, reason: str, activity_id: str | None) -> bool:
        self.store.conn.execute(
            "INSERT OR IGNORE INTO retractions (verdict_id, issuer, reason, retracted_at, activity_id) "
            "VALUES (?,?,?,?,?)", (verdict_id, issuer, reason, time.time(), activity_id))
        return self.node.retract_verdict(verdict_id, reason)

    # ------------------------------------------------------------------------------------------------
    # outbox: the change log

    def create_text(self, verdict_texts: Sequence[str], first_seq: int, last_seq: int) -> str:
        """The Create carrying the verdicts of consecutive log entries, as JSON text: what the delivery
        queue sends and what outbox pages list. protocol.activities builds (and checks) the envelope
        around the first verdict; the stored documents are then spliced in verbatim (each was checked
        when it was signed), so a batch of 100 costs no re-encoding of 100 verdicts."""
        envelope = activities.create(self.actor_id, [json.loads(verdict_texts[0])], [self.followers_url],
                                     activity_id=f"{self.outbox_url}/batches/{first_seq}-{last_seq}")
        del envelope["object"]
        head = json.dumps(envelope, separators=(",", ":"))
        return f'{head[:-1]},"object":[{",".join(verdict_texts)}]}}'

    def _batch_body(self, verdict_texts: list[str], first_seq: int, last_seq: int) -> bytes:
        return self.create_text(verdict_texts, first_seq, last_seq).encode()

    def collect_own_verdicts(self, limit: int = 1000) -> int:
        """Append own verdicts not yet in the log (stored by the pipeline, a sweep, or another process)
        and queue them for every approved follower, in one transaction. Returns how many."""
        # Plain SQL, no JSON work: the signed documents are copied as stored (this runs per verdict).
        now = time.time()
        with self.store.transaction() as conn:
            cursor = int(self._state("collected_rowid", "0"))
            last = conn.execute("SELECT MAX(id) FROM (SELECT id FROM verdicts WHERE own = 1 AND id > ? "
                                "ORDER BY id LIMIT ?)", (cursor, limit)).fetchone()[0]
            if last is None:
                return 0
            seq_before = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            added = conn.execute(
                "INSERT INTO outbox (activity_id, type, object_id, audience, created_at, document) "
                "SELECT verdict_id || '/create', ?, verdict_id, NULL, ?, document FROM verdicts "
                "WHERE own = 1 AND id > ? AND id <= ? AND document IS NOT NULL ORDER BY id",
                (VERDICT_ENTRY, now, cursor, last)).rowcount
            conn.execute(
                "INSERT OR IGNORE INTO deliveries (outbox_seq, inbox, attempts, next_attempt_at) "
                "SELECT o.seq, p.inbox, 0, ? FROM outbox o JOIN peers p ON p.follower_state = 'accepted' "
                "AND p.inbox IS NOT NULL WHERE o.seq > ? ORDER BY o.seq", (now, seq_before))
            self._set_state("collected_rowid", str(last))
        self.outbox_counter.labels(VERDICT_ENTRY).inc(added)
        self.delivery.wake()
        return added or 1  # rows without a document are skipped, but the cursor moved: look again

    def _state(self, key: str, default: str) -> str:
        row = self.store.conn.execute("SELECT value FROM federation_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _set_state(self, key: str, value: str) -> None:
        self.store.conn.execute("INSERT INTO federation_state (key, value) VALUES (?, ?) "
                                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def on_own_verdict(self, verdict: Verdict, document: dict) -> None:
        """Pipeline hook: a new own verdict is in the store; let the collector pick it up now."""
        if self._collect_wake is not None:
            self._collect_wake.set()

    def outbox_page(self, since: int) -> dict[str, Any]:
        """Up to PAGE_SIZE log entries after the cursor ``since``, oldest first; consecutive verdicts are
        grouped into Creates exactly as deliveries group them."""
        rows = self.store.conn.execute(
            f"SELECT seq, type, document FROM outbox WHERE seq > ? AND audience IS NULL "
            f"AND type IN ({','.join('?' * len(LOG_TYPES))}) ORDER BY seq LIMIT ?",
            (since, *LOG_TYPES, PAGE_SIZE)).fetchall()
        items: list[Any] = []
        run: list[tuple[int, str]] = []
        for seq, kind, document in [*rows, (None, None, None)]:
            if kind == VERDICT_ENTRY:
                run.append((seq, document))
                continue
            if run:
                items.append(json.loads(self.create_text([d for _, d in run], run[0][0], run[-1][0])))
                run = []
            if document is not None:
                items.append(json.loads(document))
        page: dict[str, Any] = {
            "@context": AS_PUBLIC_CONTEXT,
            "id": f"{self.outbox_url}?{urlencode({'since': since})}",
            "type": "OrderedCollectionPage",
            "partOf": self.outbox_url,
            "orderedItems": items,
        }
        if rows:
            # Always a next link after a non-empty page: it is the reader's cursor, and an empty page
            # behind it says "you are up to date" (FIRES pages the same way).
            page["next"] = f"{self.outbox_url}?{urlencode({'since': rows[-1][0]})}"
        return page

    async def handle_outbox(self, request: web.Request) -> web.Response:
        try:
            actor = await self.authenticate(request, None)
            if not self.may_read(actor.id):
                raise Refusal(403, f"{actor.id} is not an approved follower")
        except Refusal as refusal:
            self.refused_counter.labels(str(refusal.status)).inc()
            log.info("outbox read refused (%d): %s", refusal.status, refusal.for_log())
            return _refusal_response(refusal)
        self.delivery.retry_now(actor.inbox)
        since_text = request.query.get("since")
        if since_text is None:
            total = self.store.conn.execute(
                f"SELECT COUNT(*) FROM outbox WHERE audience IS NULL AND type IN ({','.join('?' * len(LOG_TYPES))})",
                LOG_TYPES).fetchone()[0]
            return _json_response({"@context": AS_PUBLIC_CONTEXT, "id": self.outbox_url, "type": "OrderedCollection",
                                   "totalItems": total, "first": f"{self.outbox_url}?since=0"},
                                  content_type=ACTIVITY_JSON)
        if not since_text.isdigit() or len(since_text) > 18:
            return _json_response({"error": "since must be a cursor from a previous page"}, 400)
        return _json_response(self.outbox_page(int(since_text)), content_type=ACTIVITY_JSON)

    # ------------------------------------------------------------------------------------------------
    # backfill (pull) from the peers we follow

    def start_backfill(self, actor_id: str) -> None:
        task = self._backfilling.get(actor_id)
        if task is not None and not task.done():
            return
        self._backfilling[actor_id] = asyncio.create_task(self._backfill_logged(actor_id), name=f"backfill {actor_id}")

    async def _backfill_logged(self, actor_id: str) -> None:
        try:
            count = await self.backfill(actor_id)
            if count:
                log.info("backfilled %d entries from %s", count, actor_id)
        except (ActorError, PeerRequestError, Refusal, ProtocolError) as exc:
            log.warning("backfill from %s stopped: %s", actor_id, exc)

    async def backfill(self, actor_id: str) -> int:
        """Read the peer's outbox from the cursor we remember to its end, storing what we lack.
        The cursor is saved after each page, so an interrupted backfill resumes where it stopped."""
        actor = await self.actors.get(actor_id)
        if not actor.outbox:
            raise ActorError(f"{actor_id} publishes no outbox")
        row = self.store.conn.execute("SELECT backfill_cursor FROM peers WHERE actor = ?", (actor_id,)).fetchone()
        cursor = int(row[0]) if row and row[0] else 0
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
                    await self.take_verdicts(entry.verdicts, each=True, parsed=entry.parsed_verdicts)
                elif entry.type == "Delete":
                    try:  # read from the issuer's own outbox over a signed fetch: as good as its signature
                        await self.take_retraction(entry, signed_by=actor_id)
                    except Refusal as refusal:  # not applied; not a reason to stop reading either
                        log.warning("backfill from %s: %s refused: %s", actor_id, entry.id, refusal)
                taken += 1
            next_url = page.get("next")
            if not page["orderedItems"] or not isinstance(next_url, str):
                return taken
            next_cursor = _since_of(next_url, actor.outbox)
            if next_cursor is None or next_cursor <= cursor:
                raise ActorError(f"{actor.outbox}: next page does not move forward")
            cursor = next_cursor
            self.store.conn.execute("UPDATE peers SET backfill_cursor = ? WHERE actor = ?", (str(cursor), actor_id))

    # ------------------------------------------------------------------------------------------------
    # lookups

    async def handle_lookup(self, request: web.Request) -> web.Response:
        try:
            actor = await self.authenticate(request, None)
            if not self.may_read(actor.id):
                raise Refusal(403, f"{actor.id} is not an approved peer")
            wait = self.lookup_limiter.take(actor.id)
            if wait > 0:
                raise Refusal(429, f"rate limited; retry in {wait:.1f} s")
        except Refusal as refusal:
            self.refused_counter.labels(str(refusal.status)).inc()
            if refusal.status != 429:
                log.info("lookup refused (%d): %s", refusal.status, refusal.for_log())
            headers = {"Retry-After": "1"} if refusal.status == 429 else None
            return _json_response({"error": str(refusal)}, refusal.status, headers=headers)
        query = request.query
        sha256, pixel, phash = query.get("sha256", ""), query.get("pixel_sha256", ""), query.get("phash", "")
        if (sha256 and not _HEX64.match(sha256)) or (pixel and not _HEX64.match(pixel)) or \
                (phash and not _HEX16.match(phash)) or not (sha256 or pixel or phash):
            return _json_response({"error": "give sha256 / pixel_sha256 (64 hex) and/or phash (16 hex)"}, 400)
        items = self.local_matches(sha256 or None, pixel or None, phash or None)
        return _json_response({"@context": AS_PUBLIC_CONTEXT, "type": "OrderedCollection",
                               "totalItems": len(items), "orderedItems": items}, content_type=ACTIVITY_JSON)

    def local_matches(self, sha256: str | None, pixel_sha256: str | None, phash: str | None) -> list[dict[str, Any]]:
        """Signed documents of the active verdicts we hold for a fingerprint: exact keys, then pHash
        neighbours within the block distance."""
        node = self.node
        ids: list[str] = []
        if sha256 or pixel_sha256:
            ids += [hit.verdict.id for hit in node.store.find_exact(sha256 or "", pixel_sha256)]
        if phash:
            refs = [ref for ref, _ in node.phash_index.search(phash, node.policy.block_phash_distance)]
            ids += [hit.verdict.id for hit in node.store.verdicts_by_rowid(refs).values()]
        docs = []
        for verdict_id in list(dict.fromkeys(ids))[:MAX_LOOKUP_RESULTS]:
            doc = node.store.verdict_document(verdict_id)
            if doc is not None:
                docs.append(doc)
        return docs

    async def lookup_peers(self, fingerprint: Fingerprint, deadline: float) -> list[tuple[Verdict, dict]]:
        """Pipeline hook: ask every ``lookup_peers`` peer about an image at once, within the deadline
        (``loop.time()`` based); keep only verdicts whose proofs verify against configured issuers.

        The time limit holds per peer, for all of its steps together (its actor document, the lookup,
        the keys of the issuers it answers with): a slow peer loses only its own answers, not the ones
        the others already gave, which the caller's deadline would cancel with it."""
        loop = asyncio.get_running_loop()
        peers = [p for p in self.settings.lookup_peers if p != self.actor_id]
        if not peers:
            return []
        timeout = min(self.settings.lookup_timeout_seconds, deadline - loop.time())
        if timeout <= 0:
            return []
        query = urlencode({"sha256": fingerprint.sha256, "pixel_sha256": fingerprint.pixel_sha256,
                           **({"phash": fingerprint.phash64} if fingerprint.phash64 else {})})
        results = await asyncio.gather(*(asyncio.wait_for(self._lookup_one(peer, query, timeout), timeout)
                                         for peer in peers), return_exceptions=True)
        found: dict[str, tuple[Verdict, dict]] = {}
        for peer, result in zip(peers, results):
            if isinstance(result, BaseException):
                log.info("lookup at %s failed: %r", peer, result)
                continue
            for verdict, doc in result:
                found.setdefault(verdict.id, (verdict, doc))
        return list(found.values())

    async def _lookup_one(self, peer: str, query: str, timeout: float) -> list[tuple[Verdict, dict]]:
        actor = await self.actors.get(peer)
        url = actor.lookup_url
        answer = await self.client.get_json(f"{url}?{query}", timeout=timeout)
        items = answer.get("orderedItems") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise PeerRequestError(f"{url}: not a collection")
        out = []
        for doc in items[:MAX_LOOKUP_RESULTS]:
            if not isinstance(doc, dict):
                continue
            try:
                verdict = (await self.verify_verdicts([doc]))[0]
            except (Refusal, ProtocolError) as exc:  # one bad item (unknown issuer, bad proof) does not spoil the others
                log.info("lookup at %s: verdict refused: %s", peer, exc)
                continue
            if self.store.conn.execute("SELECT 1 FROM retractions WHERE verdict_id = ?", (verdict.id,)).fetchone():
                continue
            out.append((verdict, doc))
        self.received_counter.labels("lookup").inc(len(out))
        return out

    # ------------------------------------------------------------------------------------------------
    # following the peers in peers.yaml

    def sync_peers(self) -> None:
        """Make sure each peers.yaml entry has a row, with its trust level, before anything else runs."""
        now = time.time()
        for entry in self.peers.values():
            self.store.conn.execute(
                "INSERT INTO peers (actor, trust, following_state, follower_state, updated_at) "
                "VALUES (?, ?, 'none', 'none', ?) ON CONFLICT(actor) DO UPDATE SET trust = excluded.trust",
                (entry.actor, entry.trust, now))

    async def ensure_follows(self) -> None:
        """Follow every peers.yaml entry with ``follow: true`` that we do not follow yet; backfill those we do."""
        for entry in self.peers.values():
            if not entry.follow or entry.actor == self.actor_id:
                continue
            _, following = self._states(entry.actor)
            if following == "accepted":
                self.start_backfill(entry.actor)
                continue
            if following == "pending":
                continue
            try:
                actor = await self.actors.get(entry.actor)
            except ActorError as exc:
                log.info("cannot follow %s yet: %s", entry.actor, exc)
                continue
            self.follow(actor)

    def follow(self, actor: PeerActor) -> None:
        activity = activities.follow(self.actor_id, actor.id)
        with self.store.transaction() as conn:
            enqueue(conn, activity, [actor.inbox], audience=[actor.id])
            conn.execute("UPDATE peers SET following_state = 'pending', our_follow_id = ?, updated_at = ? "
                         "WHERE actor = ?", (activity["id"], time.time(), actor.id))
        self.delivery.wake(actor.inbox)

    # ------------------------------------------------------------------------------------------------
    # lifecycle

    def setup_routes(self, app: web.Application, node: "Node") -> None:
        app.router.add_get("/actor", self.handle_actor)
        app.router.add_get("/.well-known/webfinger", self.handle_webfinger)
        app.router.add_get("/.well-known/nodeinfo", self.handle_nodeinfo_index)
        app.router.add_get("/nodeinfo/2.1", self.handle_nodeinfo)
        app.router.add_post("/inbox", self.handle_inbox)
        app.router.add_get("/outbox", self.handle_outbox)
        app.router.add_get("/lookup", self.handle_lookup)

    async def run(self, node: "Node") -> None:
        """Background work of a serving node: collector, delivery, follows and periodic backfill."""
        self._collect_wake = asyncio.Event()
        self.sync_peers()
        self.delivery.start()
        try:
            collector = asyncio.create_task(self._collect_loop(), name="outbox-collector")
            self._tasks.append(collector)
            next_backfill = time.monotonic() + self.settings.backfill_interval_seconds
            while True:
                await self.ensure_follows()
                if time.monotonic() >= next_backfill:
                    next_backfill = time.monotonic() + self.settings.backfill_interval_seconds
                    for entry in self.peers.values():
                        if self._states(entry.actor)[1] == "accepted":
                            self.start_backfill(entry.actor)
                    self.forget_old_activity_ids()
                await asyncio.sleep(min(10.0, self.settings.backfill_interval_seconds))
        finally:
            for task in [*self._tasks, *self._backfilling.values()]:
                task.cancel()
            await asyncio.gather(*self._tasks, *self._backfilling.values(), return_exceptions=True)
            await self.delivery.stop()
            await self.client.close()
            await self.stranger_client.close()

    async def _collect_loop(self) -> None:
        assert self._collect_wake is not None
        while True:
            self._collect_wake.clear()
            try:
                while self.collect_own_verdicts() > 0:
                    await asyncio.sleep(0)
            except Exception:  # a busy database must not stop publishing for good
                log.exception("outbox collector failed; retrying")
            try:
                await asyncio.wait_for(self._collect_wake.wait(), self.settings.poll_seconds)
            except asyncio.TimeoutError:
                pass


# ----------------------------------------------------------------------------------------------------
# helpers

def _may_be_a_stale_key(exc: ProtocolError) -> bool:
    """Only a signature that does not verify (or names a key we do not have) may be cured by fetching the
    actor again; a stale Date or a wrong digest never is."""
    return isinstance(exc, SignatureMismatch) or exc.field == "keyId"


def approved_follower_inboxes(conn: Any) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT inbox FROM peers WHERE follower_state = 'accepted' AND inbox IS NOT NULL")]


def _since_of(url: str, outbox: str) -> int | None:
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}{parts.path}" != outbox:
        return None
    values = parse_qs(parts.query).get("since")
    if not values or not values[0].isdigit():
        return None
    return int(values[0])


def install(node: "Node") -> None:
    """Extension entry point (node.runtime.EXTENSIONS): routes, hooks and background loops."""
    federation = Federation(node)
    node.federation = federation  # type: ignore[attr-defined]
    node.app_setups.append(federation.setup_routes)
    node.on_own_verdict.append(federation.on_own_verdict)
    node.background.append(federation.run)
    if federation.settings.lookup_peers:
        node.lookup_peers = federation.lookup_peers
    for actor in federation.settings.lookup_peers:
        if actor not in federation.peers:
            log.warning("federation.lookup_peers: %s is not in peers.yaml: its answers are used only for "
                        "verdicts of issuers that are", actor)


# ----------------------------------------------------------------------------------------------------
# `verdict-node verdicts ...`: act on the data directory; a running server sends what is queued.

def retract(store: Store, config: "NodeConfig", ed25519_key: Any, verdict_id: str, reason: str) -> str:
    """Retract a verdict. Our own: stop using it here and publish a signed Delete to every approved
    follower (and to the outbox log, for those that backfill later). A peer's: stop using it here only."""
    held = store.get_verdict(verdict_id)
    if held is None:
        raise LookupError(f"no verdict {verdict_id} here")
    actor_id = config.actor_id
    with store.transaction() as conn:
        if held.own:
            delete = activities.delete(actor_id, verdict_id, reason, [f"{config.node.url}/followers"])
            signed = proofs.sign(delete, ed25519_key, activities.ed25519_key_id(actor_id))
            enqueue(conn, signed, approved_follower_inboxes(conn))
        conn.execute("INSERT OR IGNORE INTO retractions (verdict_id, issuer, reason, retracted_at, activity_id) "
                     "VALUES (?,?,?,?,?)", (verdict_id, held.verdict.issuer, reason, time.time(), None))
        store.retract_verdict(verdict_id, reason)
    if held.own:
        return f"retracted {verdict_id}; a Delete is queued for every approved follower"
    return f"retracted {verdict_id} here (it is {held.verdict.issuer}'s verdict: only its issuer can retract it everywhere)"


def list_verdicts(store: Store, *, issuer: str | None, own: bool | None, retracted: bool,
                  limit: int) -> list[dict]:
    where, params = [], []
    if own is not None:
        where.append("own = ?")
        params.append(int(own))
    if issuer:
        where.append("issuer = ?")
        params.append(issuer)
    where.append("retracted_at IS NOT NULL" if retracted else "retracted_at IS NULL")
    rows = store.db.query(
        f"SELECT verdict_id, issuer, own, label, scores, model_name, published, sha256, phash64, retracted_at, "
        f"retract_reason FROM verdicts WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", [*params, limit])
    return [{**r, "own": bool(r["own"]), "scores": json.loads(r["scores"])} for r in rows]


def cmd_verdicts(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = Store(config.database_path)
    try:
        if args.verdicts_command == "list":
            own = {"own": True, "peers": False, "all": None}[args.which]
            rows = list_verdicts(store, issuer=args.issuer, own=own, retracted=args.retracted, limit=args.limit)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            for r in rows:
                scores = " ".join(f"{k}={v:.3f}" for k, v in sorted(r["scores"].items()))
                line = f"{r['verdict_id']}  {r['label']:<5} {scores}  {'own' if r['own'] else r['issuer']}"
                if r["retracted_at"]:
                    line += f"  RETRACTED: {r['retract_reason']}"
                print(line)
            return 0
        try:
            print(retract(store, config, load_private_key(config.ed25519_key_path), args.verdict_id, args.reason))
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        store.close()
