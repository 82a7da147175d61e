"""Asking about one image instead of receiving bulk lists.

``LookupServer`` answers ``GET /lookup?sha256=..&pixel_sha256=..&phash=..`` for the actors who may read
here (federation.auth.Access.may_read: a peers.yaml entry with ``share: true``, or an approved follower;
signed, rate limited per peer) with the signed verdicts this node holds for that image: exact keys, then
pHash neighbours within the block distance. Hashes of positives go to nobody else.

``LookupClient`` is the pipeline's ``lookup_peers`` hook: on a cache miss it asks every
``federation.lookup_peers`` peer at once, within the pict-rs budget, and keeps only verdicts whose proofs
verify against issuers listed in peers.yaml. A peer that gives no usable answer is one line of the
answer's reason, in our own words (``lookup at https://a.example refused: not a peer of that node``):
status and a short reason, never what its server wrote (that goes to our log). Every issuer it learns
verdicts of is handed to ``on_issuer``, which reads that issuer's retractions from then on
(federation.retractions).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from aiohttp import web

from node.federation.actors import ActorDirectory, ActorError
from node.federation.auth import Authenticator
from node.federation.delivery import ACTIVITY_JSON, PeerRequestError, SignedClient
from node.federation.intake import Intake
from node.federation.metrics import FederationMetrics
from node.federation.records import FederationRecords
from node.hooks import PeerAnswers
from node.runtime import Node
from node.web import Refusal, json_response
from protocol.errors import ProtocolError
from protocol.verdict import Fingerprint, Verdict, origin_of

log = logging.getLogger("verdict_node.federation")

MAX_LOOKUP_RESULTS = 50
AS_PUBLIC_CONTEXT = "https://www.w3.org/ns/activitystreams"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")


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


class LookupServer:
    def __init__(self, node: Node, auth: Authenticator, rate_per_second: float) -> None:
        self.node = node
        self.auth = auth
        self.limiter = TokenBucket(rate_per_second, max(1.0, rate_per_second * 2))

    async def handle(self, request: web.Request) -> web.Response:
        actor = await self.auth.reader(request)
        wait = self.limiter.take(actor.id)
        if wait > 0:
            raise Refusal(429, f"rate limited; retry in {wait:.1f} s", headers={"Retry-After": "1"})
        query = request.query
        sha256, pixel, phash = query.get("sha256", ""), query.get("pixel_sha256", ""), query.get("phash", "")
        if (sha256 and not _HEX64.match(sha256)) or (pixel and not _HEX64.match(pixel)) or \
                (phash and not _HEX16.match(phash)) or not (sha256 or pixel or phash):
            raise Refusal(400, "give sha256 / pixel_sha256 (64 hex) and/or phash (16 hex)")
        items = self.local_matches(sha256 or None, pixel or None, phash or None)
        return json_response({"@context": AS_PUBLIC_CONTEXT, "type": "OrderedCollection",
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


def lookup_problem(peer: str, exc: BaseException, timeout: float) -> str:
    """Why a lookup peer gave no usable answer, for the answer's reason: our own words (a status and a short
    reason), bounded; what the peer's server wrote stays in our log."""
    where = f"lookup at {origin_of(peer) or peer}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"{where}: no answer within {timeout:g} s"
    if isinstance(exc, ActorError):
        return f"{where} failed: its actor document could not be fetched, or lacks the key pinned for it"
    if isinstance(exc, PeerRequestError):
        status = exc.status
        if status == 403:
            return f"{where} refused: not a peer of that node"
        if status == 401:
            return f"{where} refused: it did not accept this node's signature"
        if status == 429:
            return f"{where}: rate limited"
        if status is None:
            return f"{where} failed: cannot reach it"
        if 200 <= status < 300:
            return f"{where} failed: its answer is not a collection of verdicts"
        return f"{where} failed: HTTP {status}"
    return f"{where} failed: {type(exc).__name__}"


_REFUSED_VERDICT = {403: "its issuer is not a peer in peers.yaml", 401: "its proof does not verify"}


class LookupClient:
    def __init__(self, actor_id: str, peers: Sequence[str], timeout_seconds: float, actors: ActorDirectory,
                 client: SignedClient, intake: Intake, records: FederationRecords,
                 metrics: FederationMetrics, on_issuer: Callable[[str], None] = lambda issuer: None) -> None:
        self.peers = [p for p in peers if p != actor_id]
        self.timeout_seconds = timeout_seconds
        self.actors = actors
        self.client = client
        self.intake = intake
        self.records = records
        self.metrics = metrics
        self.on_issuer = on_issuer

    async def lookup_peers(self, fingerprint: Fingerprint, deadline: float) -> PeerAnswers:
        """Ask every lookup peer about an image at once, within the deadline (``loop.time()`` based).

        The time limit holds per peer, for all of its steps together (its actor document, the lookup,
        the keys of the issuers it answers with): a slow peer loses only its own answers, not the ones
        the others already gave, which the caller's deadline would cancel with it."""
        loop = asyncio.get_running_loop()
        if not self.peers:
            return PeerAnswers([])
        timeout = min(self.timeout_seconds, deadline - loop.time())
        if timeout <= 0:
            return PeerAnswers([], ("no time left in the pict-rs budget to ask the lookup peers",))
        query = urlencode({"sha256": fingerprint.sha256, "pixel_sha256": fingerprint.pixel_sha256,
                           **({"phash": fingerprint.phash64} if fingerprint.phash64 else {})})
        results = await asyncio.gather(*(asyncio.wait_for(self._ask(peer, query, timeout), timeout)
                                         for peer in self.peers), return_exceptions=True)
        found: dict[str, tuple[Verdict, dict]] = {}
        problems: list[str] = []
        for peer, result in zip(self.peers, results):
            if isinstance(result, BaseException):
                log.info("lookup at %s failed: %r", peer, result)
                problems.append(lookup_problem(peer, result, timeout))
                continue
            verdicts, refused = result
            problems.extend(refused)
            for verdict, doc in verdicts:
                found.setdefault(verdict.id, (verdict, doc))
        for verdict, _ in found.values():
            self.on_issuer(verdict.issuer)
        return PeerAnswers(list(found.values()), tuple(problems))

    async def _ask(self, peer: str, query: str, timeout: float) -> tuple[list[tuple[Verdict, dict]], list[str]]:
        """The verified, unretracted verdicts one peer answers with, and a line per kind of verdict refused."""
        actor = await self.actors.get(peer)
        url = actor.lookup_url
        answer = await self.client.get_json(f"{url}?{query}", timeout=timeout)
        items = answer.get("orderedItems") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise PeerRequestError(f"{url}: not a collection", 200)
        out = []
        refused: dict[str, int] = {}
        for doc in items[:MAX_LOOKUP_RESULTS]:
            if not isinstance(doc, dict):
                continue
            try:
                verdict = (await self.intake.verify_verdicts([doc]))[0]
            except (Refusal, ProtocolError) as exc:  # one bad item (unknown issuer, bad proof) does not spoil the others
                log.info("lookup at %s: verdict refused: %s", peer, exc)
                why = _REFUSED_VERDICT.get(exc.status, "it is malformed") if isinstance(exc, Refusal) else \
                    "it is malformed"
                refused[why] = refused.get(why, 0) + 1
                continue
            if self.records.is_retracted(verdict.id):
                continue  # retracted by its issuer (we hold the Delete): the policy says so if it matched locally
            out.append((verdict, doc))
        self.metrics.received.labels("lookup").inc(len(out))
        where = f"lookup at {origin_of(peer) or peer}"
        return out, [f"{where}: {count} verdict(s) refused: {why}" for why, count in refused.items()]
