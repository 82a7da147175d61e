"""Peers' verdicts and retractions coming in (inbox, backfill, lookups): verified, then stored and indexed.

Every verdict's FEP-8b32 proof is checked against its issuer's key before anything is stored, and its
issuer must be a peer in peers.yaml; that holds for a verdict relayed by someone else (Announce) and for
one a lookup peer answered with. For a pinned issuer only the pinned key counts (federation.actors), for
its verdicts and for its retractions alike.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from node.federation.actors import ActorDirectory, ActorError, PeerActor
from node.federation.auth import KEY_NOT_VERIFIED, Access
from node.federation.metrics import FederationMetrics
from node.federation.records import FederationRecords
from node.runtime import Node
from node.web import Refusal
from protocol import proofs
from protocol.activities import Activity
from protocol.errors import ProtocolError
from protocol.verdict import Verdict, verify_parsed_verdict, verify_verdict

log = logging.getLogger("verdict_node.federation")


@dataclass(frozen=True)
class Received:
    """Outcome of taking verdicts in: how many were new, how many we already had."""

    stored: int = 0
    duplicates: int = 0


def proof_key_resolver(issuers: Mapping[str, PeerActor]) -> Callable[[str], Any]:
    """verificationMethod -> key, only among the keys that sign each issuer's verdicts (for a pinned peer:
    the pinned key alone, whatever else its document lists)."""
    def resolve(method: str) -> Any:
        actor = issuers.get(method.split("#", 1)[0])
        if actor is None:
            raise proofs.ProofError(f"{method} is not a key of a known issuer", "verificationMethod")
        return actor.proof_key(method)

    return resolve


class Intake:
    def __init__(self, node: Node, access: Access, actors: ActorDirectory, records: FederationRecords,
                 metrics: FederationMetrics) -> None:
        self.node = node
        self.access = access
        self.actors = actors
        self.records = records
        self.metrics = metrics

    async def _issuers(self, issuers: Iterable[str], *, refresh: bool = False) -> dict[str, PeerActor]:
        found: dict[str, PeerActor] = {}
        for issuer in set(issuers):
            if self.access.configured_peer(issuer) is None:
                raise Refusal(403, f"verdict issuer {issuer} is not a peer in peers.yaml")
            try:
                found[issuer] = await self.actors.get(issuer, refresh=refresh)
            except ActorError as exc:
                raise Refusal(401, f"verdict issuer {issuer}: {KEY_NOT_VERIFIED}", detail=str(exc)) from None
        return found

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

    @staticmethod
    async def _verify_off_loop(docs: Sequence[Mapping[str, Any]], parsed: Sequence[Verdict] | None,
                               actors: Mapping[str, PeerActor]) -> list[Verdict]:
        """A batch of 100 proofs is tens of milliseconds of CPU: a worker thread does it, so the event
        loop keeps answering pict-rs meanwhile (the interpreter switches threads every few ms)."""
        resolve = proof_key_resolver(actors)
        if parsed is None:
            work = lambda: [verify_verdict(dict(doc), resolve) for doc in docs]  # noqa: E731
        else:
            work = lambda: [verify_parsed_verdict(verdict, dict(doc), resolve)  # noqa: E731
                            for verdict, doc in zip(parsed, docs, strict=True)]
        return await asyncio.to_thread(work) if len(docs) > 8 else work()

    async def take_verdicts(self, docs: Sequence[Mapping[str, Any]], *, each: bool = False,
                            parsed: Sequence[Verdict] | None = None, origin: str = "push") -> Received:
        """Verify, then store and index verdicts received from peers. From the inbox a batch is all or
        nothing (the sender learns at once that something was forged); ``each`` (backfill) keeps the
        verdicts that verify and counts the others, so one bad entry cannot hide a hundred good ones.
        ``parsed``: see verify_verdicts. ``origin``: how they reached us (push, backfill), stored with them."""
        if not docs:
            return Received()
        if not each:
            verdicts = await self.verify_verdicts(docs, parsed)
            return self._store_verdicts([(v, dict(d)) for v, d in zip(verdicts, docs)], origin)
        good: list[tuple[Verdict, dict[str, Any]]] = []
        for index, doc in enumerate(docs):
            try:
                one = None if parsed is None else parsed[index:index + 1]
                good.append(((await self.verify_verdicts([doc], one))[0], dict(doc)))
            except Refusal as refusal:
                self.metrics.received.labels("refused").inc()
                log.warning("verdict %s refused: %s", str(doc.get("id"))[:200], refusal.for_log())
        return self._store_verdicts(good, origin)

    def _store_verdicts(self, pairs: Sequence[tuple[Verdict, dict[str, Any]]], origin: str) -> Received:
        stored = duplicates = 0
        with self.node.store.transaction() as conn:
            for verdict, doc in pairs:
                if verdict.issuer == self.node.actor_id:
                    duplicates += 1  # our own verdicts come only from our store
                    continue
                _, inserted = self.node.add_verdict(verdict, doc, own=False, origin=origin)
                if not inserted:
                    duplicates += 1
                    continue
                stored += 1
                reason = self.records.retraction_reason(verdict.id, conn)
                if reason is not None:  # its Delete overtook it
                    self.node.retract_verdict(verdict.id, reason)
                if verdict.supersedes:
                    self.record_retraction(verdict.supersedes, verdict.issuer, f"superseded by {verdict.id}", None)
        if stored:
            self.metrics.received.labels("stored").inc(stored)
        if duplicates:
            self.metrics.received.labels("duplicate").inc(duplicates)
        return Received(stored, duplicates)

    async def take_retraction(self, activity: Activity, *, signed_by: str) -> bool:
        """Apply a verdict's Delete: the verdict stops counting at once (store and indexes) and the reason
        is recorded; False when it was known already (a Delete read again changes nothing). Only the issuer
        may retract (protocol.activities checked that the verdict id is on the actor's origin); a Delete
        relayed by someone else must carry the issuer's proof, and so must any Delete by a pinned issuer: an
        HTTP signature (an RSA key bound on first contact) is not enough to take its blocks away."""
        issuer, verdict_id = activity.actor, activity.object_id
        assert verdict_id is not None
        if self.access.configured_peer(issuer) is None:
            raise Refusal(403, f"{issuer} is not a peer in peers.yaml")
        if signed_by != issuer or issuer in self.actors.pins or "proof" in activity.raw:
            actors = await self._issuers([issuer])
            try:
                proofs.verify(dict(activity.raw), proof_key_resolver(actors))
            except ProtocolError as exc:
                kind = "relayed retraction" if signed_by != issuer else "retraction"
                raise Refusal(401, f"{kind}: {exc}") from None
        held = self.node.store.get_verdict(verdict_id)
        if held is not None and held.verdict.issuer != issuer:
            raise Refusal(403, "only a verdict's issuer may retract it")
        reason = activity.reason or "retracted by its issuer"
        news = self.record_retraction(verdict_id, issuer, reason, activity.id)
        if news:
            self.metrics.retractions.inc()
        return news

    def record_retraction(self, verdict_id: str, issuer: str, reason: str, activity_id: str | None) -> bool:
        """Record a retraction and stop using the verdict; True when either is new."""
        recorded = self.records.record_retraction(verdict_id, issuer, reason, activity_id)
        return self.node.retract_verdict(verdict_id, reason) or recorded
