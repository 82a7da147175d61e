"""Remote actors and the keys that speak for them: fetched with a signed GET, cached in the ``peers``
table (through FederationRecords), and held to the pins of peers.yaml.

Two kinds of keys matter per actor: the RSA ``publicKey`` (``#main-key``) that authenticates its HTTP
requests, and the Ed25519 Multikeys under ``assertionMethod`` that verify the proofs of the verdicts it
issues (protocol.activities.parse_actor reads both). Which of them count is decided here, once per
document, into ``PeerActor.proof_keys`` and ``PeerActor.http_keys``; nothing else looks at the document's
keys.

A pin binds keys, not documents. For a peer with ``key_fingerprint``:
  - only the pinned Ed25519 key verifies its verdicts and retractions; a document without it is refused,
    and a document that adds Ed25519 keys is logged and changes nothing (the extra keys are ignored);
  - its HTTP signatures must come from the RSA key pinned with ``rsa_fingerprint``, or else from the RSA
    key of the first document that carried the pinned Ed25519 key (bound in the ``peers`` row). A later
    document with another RSA key is refused, and the document already held stays in force, until the
    admin runs ``verdict-node peers forget-key ACTOR`` (the peer rotated on purpose) or changes the pin.
Without a pin, the keys of the document fetched from the actor's own URL count, as on Mastodon.

A cached document is used until a verification fails; then it is fetched again, once (a key may have
rotated), and never more often than ``refresh_interval``, so a stream of forged requests cannot make us
hammer a peer.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urldefrag

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from node.federation.records import FederationRecords
from protocol import activities, keys
from protocol.errors import ProtocolError
from protocol.verdict import origin_of

log = logging.getLogger("verdict_node.actors")

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class ActorError(Exception):
    """The actor could not be fetched, or its document does not give what we need. The message is for
    the log: it may quote what a remote server answered, so it never goes back to a requester."""


@dataclass(frozen=True)
class KeyPin:
    """What peers.yaml pins for one actor: its Ed25519 key, and optionally its RSA key."""

    ed25519: str
    rsa: str | None = None


@dataclass(frozen=True)
class PeerActor:
    """An actor document that passed its pins: where it lives, and the keys that may speak for it."""

    remote: activities.RemoteActor
    outbox: str | None
    lookup_url: str
    proof_keys: Mapping[str, ed25519.Ed25519PublicKey]
    http_keys: Mapping[str, PublicKey]
    pin: KeyPin | None = None
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    fetched_at: float = 0.0

    @property
    def id(self) -> str:
        return self.remote.id

    @property
    def inbox(self) -> str:
        return self.remote.inbox

    def proof_key(self, verification_method: str) -> ed25519.Ed25519PublicKey:
        """The Ed25519 key for a verdict proof's ``verificationMethod``; ProtocolError for any other key."""
        key = self.proof_keys.get(verification_method)
        if key is None:
            only = f" (only the pinned key {self.pin.ed25519} signs its verdicts)" if self.pin else ""
            raise ProtocolError(f"{verification_method} is not a key that signs {self.id}'s verdicts{only}",
                                "verificationMethod")
        return key

    def http_key(self, key_id: str) -> PublicKey:
        """The key for an HTTP signature's keyId; ProtocolError (field ``keyId``) for any other key."""
        key = self.http_keys.get(key_id)
        if key is None:
            raise ProtocolError(f"{key_id} is not a key that signs {self.id}'s requests", "keyId")
        return key

    @property
    def rsa_fingerprint(self) -> str | None:
        rsa_keys = [k for k in self.http_keys.values() if isinstance(k, rsa.RSAPublicKey)]
        return keys.key_fingerprint(rsa_keys[0]) if rsa_keys else None


def actor_of_key_id(key_id: str) -> str:
    """``https://peer/actor#main-key`` -> ``https://peer/actor`` (Mastodon, Lemmy and Fedify all use a
    fragment of the actor URL)."""
    actor, fragment = urldefrag(key_id)
    if not fragment or origin_of(actor) is None:
        raise ActorError(f"keyId must be <actor URL>#<fragment>, got {key_id[:200]!r}")
    return actor


@dataclass(frozen=True)
class ActorDocument:
    """An actor document as read, before any pin is applied."""

    remote: activities.RemoteActor
    outbox: str | None
    lookup_url: str
    document: Mapping[str, Any]
    fetched_at: float


def read_document(doc: Any, expected_id: str, fetched_at: float) -> ActorDocument:
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
    return ActorDocument(remote, outbox, lookup, doc, fetched_at)


def apply_pin(parsed: ActorDocument, pin: KeyPin | None, bound_rsa: str | None) -> tuple[PeerActor, list[str]]:
    """The keys that count for this document under ``pin`` (and the RSA key bound earlier under the same
    pin, if any), plus notes for the log about keys that were ignored. Raises ActorError when the document
    does not carry the pinned keys. Pure: no I/O, so every way to fool it is a unit test."""
    remote = parsed.remote
    notes: list[str] = []
    if pin is None:
        return PeerActor(remote, parsed.outbox, parsed.lookup_url, dict(remote.ed25519_keys),
                         {**remote.ed25519_keys, **remote.rsa_keys}, None, parsed.document,
                         parsed.fetched_at), notes
    pinned = {kid: k for kid, k in remote.ed25519_keys.items() if keys.key_fingerprint(k) == pin.ed25519}
    if not pinned:
        raise ActorError(f"actor {remote.id} does not carry the key pinned in peers.yaml ({pin.ed25519})")
    extra = sorted(set(remote.ed25519_keys) - set(pinned))
    if extra:
        notes.append(f"actor document of {remote.id} carries Ed25519 key(s) besides the pinned one, ignored: "
                     f"{', '.join(extra)}")
    expected_rsa = pin.rsa or bound_rsa
    rsa_keys = dict(remote.rsa_keys)
    if expected_rsa is not None:
        chosen = {kid: k for kid, k in rsa_keys.items() if keys.key_fingerprint(k) == expected_rsa}
        if not chosen:
            presented = ", ".join(sorted(keys.key_fingerprint(k) for k in rsa_keys.values())) or "none"
            how = ("pinned in peers.yaml (rsa_fingerprint)" if pin.rsa else
                   "bound to the first document that carried the pinned key; if the peer rotated it on "
                   f"purpose, run `verdict-node peers forget-key {remote.id}`")
            raise ActorError(f"actor {remote.id} presents RSA key {presented}, not {expected_rsa} ({how})")
    else:
        chosen = dict(list(rsa_keys.items())[:1])  # first contact under this pin: its main key is bound
    if len(rsa_keys) > len(chosen):
        notes.append(f"actor document of {remote.id} carries RSA key(s) besides the one in force, ignored: "
                     f"{', '.join(sorted(set(rsa_keys) - set(chosen)))}")
    return PeerActor(remote, parsed.outbox, parsed.lookup_url, pinned, {**pinned, **chosen}, pin,
                     parsed.document, parsed.fetched_at), notes


Fetcher = Callable[[str], Awaitable[Any]]


class ActorDirectory:
    """Cache of remote actors (memory, backed by the ``peers`` table), holding each to its pin.

    ``fetch_json`` fetches the actors the admin listed; ``fetch_stranger`` (when given) fetches any other
    actor, through the public-addresses-only client."""

    def __init__(self, records: FederationRecords, fetch_json: Fetcher, pins: Mapping[str, KeyPin | None] | None = None,
                 refresh_interval: float = 30.0, fetch_stranger: Fetcher | None = None) -> None:
        self.records = records
        self.fetch_json = fetch_json
        self.fetch_stranger = fetch_stranger
        self.pins: dict[str, KeyPin] = {k: v for k, v in (pins or {}).items() if v}
        self.refresh_interval = refresh_interval
        self._cache: dict[str, PeerActor] = {}

    def set_pins(self, pins: Mapping[str, KeyPin | None]) -> None:
        """The pins of a new peers.yaml: a cached document held under another pin (or none) is dropped, so
        the next use reads it again and holds it to the new pin."""
        new = {k: v for k, v in pins.items() if v}
        for actor_id in set(self.pins) | set(new):
            if self.pins.get(actor_id) != new.get(actor_id):
                self._cache.pop(actor_id, None)
        self.pins = new

    def bound_rsa(self, actor_id: str) -> str | None:
        """The RSA fingerprint bound for this actor under its current pin (None: nothing bound yet)."""
        pin = self.pins.get(actor_id)
        if pin is None:
            return None
        bound, under = self.records.bound_rsa(actor_id)
        return bound if bound and under == pin.ed25519 else None

    def _pinned(self, parsed: ActorDocument, *, log_notes: bool) -> PeerActor:
        actor, notes = apply_pin(parsed, self.pins.get(parsed.remote.id), self.bound_rsa(parsed.remote.id))
        for note in notes if log_notes else ():
            log.warning("%s", note)
        return actor

    def cached(self, actor_id: str) -> PeerActor | None:
        actor = self._cache.get(actor_id)
        if actor is not None:
            return actor
        row = self.records.actor_document(actor_id)
        if not row or not row[0]:
            return None
        try:
            actor = self._pinned(read_document(json.loads(row[0]), actor_id, row[1]), log_notes=False)
        except (ActorError, ValueError):
            return None
        self._cache[actor_id] = actor
        return actor

    async def get(self, actor_id: str, *, refresh: bool = False, remember: bool = True,
                  stranger: bool = False) -> PeerActor:
        """The actor, from cache or fetched. ``refresh`` refetches unless we fetched it moments ago;
        ``remember=False`` leaves a fetched document out of the cache (a stranger not yet verified);
        ``stranger`` fetches with ``fetch_stranger``. A fetched document that fails
        its pins raises ActorError and leaves the document held before in force."""
        actor = self.cached(actor_id)
        if actor is not None and refresh and self._forgotten(actor_id):
            self._cache.pop(actor_id, None)  # `peers forget-key` ran in another process: fetch now
            actor = None
        if actor is not None and (not refresh or time.time() - actor.fetched_at < self.refresh_interval):
            return actor
        fetch = self.fetch_stranger if stranger and self.fetch_stranger is not None else self.fetch_json
        try:
            doc = await fetch(actor_id)
        except Exception as exc:  # network, status, JSON, refused address: all mean "cannot get the key"
            raise ActorError(f"cannot fetch actor {actor_id}: {exc}") from None
        try:
            fresh = self._pinned(read_document(doc, actor_id, time.time()), log_notes=True)
        except ActorError as exc:
            if actor_id in self.pins:  # a pinned peer's document changed its keys: the admin must hear of it
                log.warning("refused a new actor document: %s; the document held before stays in force", exc)
            raise
        if remember:
            self.remember(fresh)
        return fresh

    def _forgotten(self, actor_id: str) -> bool:
        row = self.records.actor_document(actor_id)
        return row is not None and row[0] is None

    def remember(self, actor: PeerActor) -> None:
        """Cache a document that passed its pins; under a pin, bind its RSA key if none is bound yet."""
        self._cache[actor.id] = actor
        remote = actor.remote
        first_ed = next(iter(actor.proof_keys.values()), None)
        rsa_pem = next((keys.rsa_public_pem(k) for k in actor.http_keys.values() if isinstance(k, rsa.RSAPublicKey)),
                       None)
        self.records.save_actor(actor.id, remote.inbox, remote.shared_inbox, rsa_pem,
                                keys.ed25519_multikey(first_ed) if first_ed else None,
                                keys.key_fingerprint(first_ed) if first_ed else None, actor.document, actor.fetched_at)
        if actor.pin is not None and actor.pin.rsa is None and self.bound_rsa(actor.id) is None \
                and actor.rsa_fingerprint is not None:
            self.records.bind_rsa(actor.id, actor.rsa_fingerprint, actor.pin.ed25519)
            log.info("bound RSA key %s of %s (first document that carried its pinned key %s)",
                     actor.rsa_fingerprint, actor.id, actor.pin.ed25519)
