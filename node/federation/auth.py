"""Who may do what, and who signed a request.

``Access`` answers the questions every handler asks (is this actor listed in peers.yaml, does it follow
us, may it read our outbox and lookups). ``Authenticator`` checks an HTTP signature (draft-cavage or RFC
9421: signature, Date window, digest) against the key that speaks for the signer, fetching the signer's
actor document only when that is safe:

- a listed peer, or an actor already known here (it followed us, we follow it): its own actor URL;
- anyone else only for a follow request, only when the admin opened follow requests to strangers, and
  then through the public-addresses-only client (federation.public_fetch);
- what a remote server answered, or that it could not be reached, never goes back to the sender (one
  text for every key failure: KEY_NOT_VERIFIED); the detail goes to our log.
"""
from __future__ import annotations

from typing import Mapping

from aiohttp import web

from node.config import PeerEntry
from node.federation.actors import ActorDirectory, ActorError, PeerActor, actor_of_key_id
from node.federation.records import NONE, FederationRecords
from node.web import Refusal
from protocol import httpsig
from protocol.errors import ProtocolError, SignatureMismatch

#: The one answer when a signer's key cannot be had: what a remote server answered (or that it could not
#: be reached) is never told to the sender, who might have chosen that server to probe our network.
KEY_NOT_VERIFIED = ("the signer's key could not be obtained, or is not the key this node pinned for it "
                    "(this node's log has the detail)")


class Access:
    """The trust and follow state of other actors, as peers.yaml and the ``peers`` table say."""

    def __init__(self, peers: Mapping[str, PeerEntry], records: FederationRecords) -> None:
        self.peers = dict(peers)
        self.records = records

    def configured_peer(self, actor: str) -> PeerEntry | None:
        return self.peers.get(actor)

    def is_approved_follower(self, actor: str) -> bool:
        return self.records.states(actor)[0] == "accepted"

    def may_read(self, actor: str) -> bool:
        """The one rule for who may read here: our outbox (the whole log, or only its Deletes) and lookups.
        A peers.yaml entry with ``share: true``, or a follower the admin approved; nobody else is given the
        hashes of positives. (Removing an entry from peers.yaml leaves an approved follow in place:
        ``verdict-node peers remove`` ends it.)"""
        entry = self.configured_peer(actor)
        return self.is_approved_follower(actor) or (entry is not None and entry.share)

    def is_known(self, actor: str) -> bool:
        """Listed in peers.yaml, or in a follow relation with us in either direction."""
        if self.configured_peer(actor) is not None:
            return True
        return self.records.states(actor) != (NONE, NONE)


def may_be_a_stale_key(exc: ProtocolError) -> bool:
    """Only a signature that does not verify (or names a key we do not have) may be cured by fetching the
    actor again; a stale Date or a wrong digest never is."""
    return isinstance(exc, SignatureMismatch) or exc.field == "keyId"


class Authenticator:
    """Checks the HTTP signature of an incoming request; see the module docstring for what it fetches."""

    def __init__(self, access: Access, actors: ActorDirectory, *, scheme: str, open_follow_requests: bool) -> None:
        self.access = access
        self.actors = actors
        self.scheme = scheme  # RFC 9421 @target-uri behind a TLS-terminating proxy
        self.open_follow_requests = open_follow_requests

    async def authenticate(self, request: web.Request, body: bytes | None, *,
                           follow_request: bool = False) -> PeerActor:
        """The actor that signed this request. Raises Refusal (401 / 403) otherwise.

        A signature that does not verify refetches the actor once (a rotated key). The document of an actor
        not listed in peers.yaml (a stranger, or a follower the admin approved) always comes through the
        public-addresses-only client."""
        try:
            params = httpsig.parse_signature(request.headers)
        except ProtocolError as exc:
            raise Refusal(401, f"signature: {exc}") from None
        try:
            actor_id = actor_of_key_id(params.key_id)
        except ActorError as exc:
            raise Refusal(401, str(exc)) from None
        known = self.access.is_known(actor_id)
        if not known and not (follow_request and self.open_follow_requests):
            raise Refusal(403, f"{actor_id} is not a peer of this node" +
                          (" (it takes follow requests only from the peers its admin listed)" if follow_request else ""))
        unlisted = self.access.configured_peer(actor_id) is None
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
                if attempt == 1 or not may_be_a_stale_key(exc):
                    raise Refusal(401, f"HTTP signature refused: {exc}") from None
                try:
                    actor = await self.actors.get(actor_id, refresh=True, remember=known, stranger=unlisted)
                except ActorError as fetch_error:
                    raise Refusal(401, f"HTTP signature refused: {exc}", detail=str(fetch_error)) from None
        raise AssertionError("unreachable")

    async def reader(self, request: web.Request) -> PeerActor:
        """The signer of a GET that reads what only approved peers may (outbox, lookups); Refusal otherwise."""
        actor = await self.authenticate(request, None)
        if not self.access.may_read(actor.id):
            raise Refusal(403, f"{actor.id} is not an approved peer of this node")
        return actor
