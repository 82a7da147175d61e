"""Remote actors and their keys: fetched with a signed GET, cached in the ``peers`` table, checked
against the fingerprint pinned in peers.yaml.

Two kinds of keys matter per actor: the RSA ``publicKey`` (``#main-key``) that authenticates its HTTP
requests, and the Ed25519 Multikeys under ``assertionMethod`` that verify the proofs of the verdicts it
issues (protocol.activities.parse_actor reads both). A cached document is used until a verification
fails; then it is fetched again, once (a key may have rotated), and never more often than
``refresh_interval`` so a stream of forged requests cannot make us hammer a peer.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urldefrag

from protocol import activities, keys
from protocol.errors import ProtocolError
from protocol.verdict import origin_of

log = logging.getLogger("verdict_node.actors")


class ActorError(Exception):
    """The actor could not be fetched, or its document does not give what we need."""


@dataclass(frozen=True)
class PeerActor:
    """A verified-enough actor document: protocol's parsed keys plus the collections we use."""

    remote: activities.RemoteActor
    outbox: str | None
    lookup_url: str
    document: Mapping[str, Any] = field(compare=False, repr=False)
    fetched_at: float = 0.0

    @property
    def id(self) -> str:
        return self.remote.id

    @property
    def inbox(self) -> str:
        return self.remote.inbox

    def key_fingerprints(self) -> set[str]:
        return {keys.key_fingerprint(k) for k in (*self.remote.ed25519_keys.values(), *self.remote.rsa_keys.values())}


def actor_of_key_id(key_id: str) -> str:
    """``https://peer/actor#main-key`` -> ``https://peer/actor`` (Mastodon, Lemmy and Fedify all use a
    fragment of the actor URL)."""
    actor, fragment = urldefrag(key_id)
    if not fragment or origin_of(actor) is None:
        raise ActorError(f"keyId must be <actor URL>#<fragment>, got {key_id[:200]!r}")
    return actor


def read_actor(doc: Any, expected_id: str, fetched_at: float = 0.0) -> PeerActor:
    """Parse a fetched actor document; its id must be the URL we fetched (nobody speaks for another)."""
    try:
        remote = activities.parse_actor(doc)
    except ProtocolError as exc:
        raise ActorError(f"actor document of {expected_id}: {exc}") from None
    if remote.id != expected_id:
        raise ActorError(f"actor document id {remote.id!r} is not {expected_id!r}")
    origin = origin_of(expected_id)
    outbox = doc.get("outbox")
    outbox = outbox if isinstance(outbox, str) and origin_of(outbox) == origin else None
    endpoints = doc.get("endpoints") if isinstance(doc.get("endpoints"), dict) else {}
    lookup = endpoints.get("verdictLookup")
    lookup = lookup if isinstance(lookup, str) and origin_of(lookup) == origin else f"{origin}/lookup"
    return PeerActor(remote, outbox, lookup, doc, fetched_at)


Fetcher = Callable[[str], Awaitable[Any]]


class ActorDirectory:
    """Cache of remote actors (memory, backed by the ``peers`` table).

    ``pins`` maps actor id -> pinned key fingerprint (peers.yaml ``key_fingerprint``): an actor document
    that does not carry that key is refused as a whole, so a hijacked domain cannot swap in its keys."""

    def __init__(self, store: Any, fetch_json: Fetcher, pins: Mapping[str, str | None] | None = None,
                 refresh_interval: float = 30.0) -> None:
        self.store = store
        self.fetch_json = fetch_json
        self.pins = {k: v for k, v in (pins or {}).items() if v}
        self.refresh_interval = refresh_interval
        self._cache: dict[str, PeerActor] = {}

    def cached(self, actor_id: str) -> PeerActor | None:
        actor = self._cache.get(actor_id)
        if actor is not None:
            return actor
        row = self.store.conn.execute("SELECT actor_document, updated_at FROM peers WHERE actor = ?",
                                      (actor_id,)).fetchone()
        if not row or not row[0]:
            return None
        try:
            actor = self._checked(read_actor(json.loads(row[0]), actor_id, row[1] or 0.0))
        except (ActorError, ValueError):
            return None
        self._cache[actor_id] = actor
        return actor

    async def get(self, actor_id: str, *, refresh: bool = False, remember: bool = True) -> PeerActor:
        """The actor, from cache or fetched. ``refresh`` refetches unless we fetched it moments ago;
        ``remember=False`` leaves a fetched document out of the cache (a stranger not yet verified)."""
        actor = self.cached(actor_id)
        if actor is not None and (not refresh or time.time() - actor.fetched_at < self.refresh_interval):
            return actor
        try:
            doc = await self.fetch_json(actor_id)
        except Exception as exc:  # network, status, JSON: all mean "cannot get the key"
            raise ActorError(f"cannot fetch actor {actor_id}: {exc}") from None
        actor = self._checked(read_actor(doc, actor_id, time.time()))
        if remember:
            self.remember(actor)
        return actor

    def _checked(self, actor: PeerActor) -> PeerActor:
        pin = self.pins.get(actor.id)
        if pin and pin not in actor.key_fingerprints():
            raise ActorError(f"actor {actor.id} does not carry the key pinned in peers.yaml ({pin})")
        return actor

    def remember(self, actor: PeerActor) -> None:
        self._cache[actor.id] = actor
        remote = actor.remote
        first_ed = next(iter(remote.ed25519_keys.values()), None)
        first_rsa = next(iter(remote.rsa_keys.values()), None)
        self.store.conn.execute(
            "INSERT INTO peers (actor, inbox, shared_inbox, public_key_pem, ed25519_multikey, key_fingerprint, "
            "actor_document, updated_at, following_state, follower_state) VALUES (?,?,?,?,?,?,?,?, 'none', 'none') "
            "ON CONFLICT(actor) DO UPDATE SET inbox=excluded.inbox, shared_inbox=excluded.shared_inbox, "
            "public_key_pem=excluded.public_key_pem, ed25519_multikey=excluded.ed25519_multikey, "
            "key_fingerprint=excluded.key_fingerprint, actor_document=excluded.actor_document, "
            "updated_at=excluded.updated_at",
            (actor.id, remote.inbox, remote.shared_inbox, keys.rsa_public_pem(first_rsa) if first_rsa else None,
             keys.ed25519_multikey(first_ed) if first_ed else None,
             keys.key_fingerprint(first_ed) if first_ed else None,
             json.dumps(actor.document, separators=(",", ":")), actor.fetched_at))
