"""Asking about one image instead of receiving bulk lists.

``LookupServer`` answers ``GET /lookup?sha256=..&pixel_sha256=..&phash=..`` for approved peers (signed,
rate limited per peer) with the signed verdicts this node holds for that image: exact keys, then pHash
neighbours within the block distance. Hashes of positives go to nobody else.

``LookupClient`` is the pipeline's ``lookup_peers`` hook: on a cache miss it asks every
``federation.lookup_peers`` peer at once, within the pict-rs budget, and keeps only verdicts whose proofs
verify against issuers listed in peers.yaml.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Sequence
from urllib.parse import urlencode

from aiohttp import web

from node.federation.actors import ActorDirectory
from node.federation.auth import Authenticator
from node.federation.delivery import ACTIVITY_JSON, PeerRequestError, SignedClient
from node.federation.intake import Intake
from node.federation.metrics import FederationMetrics
from node.federation.records import FederationRecords
from node.runtime import Node
from node.web import Refusal, json_response
from protocol.errors import ProtocolError
from protocol.verdict import Fingerprint, Verdict

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


class LookupClient:
    def __init__(self, actor_id: str, peers: Sequence[str], timeout_seconds: float, actors: ActorDirectory,
                 client: SignedClient, intake: Intake, records: FederationRecords,
                 metrics: FederationMetrics) -> None:
        self.peers = [p for p in peers if p != actor_id]
        self.timeout_seconds = timeout_seconds
        self.actors = actors
        self.client = client
        self.intake = intake
        self.records = records
        self.metrics = metrics

    async def lookup_peers(self, fingerprint: Fingerprint, deadline: float) -> list[tuple[Verdict, dict]]:
        """Ask every lookup peer about an image at once, within the deadline (``loop.time()`` based).

        The time limit holds per peer, for all of its steps together (its actor document, the lookup,
        the keys of the issuers it answers with): a slow peer loses only its own answers, not the ones
        the others already gave, which the caller's deadline would cancel with it."""
        loop = asyncio.get_running_loop()
        if not self.peers:
            return []
        timeout = min(self.timeout_seconds, deadline - loop.time())
        if timeout <= 0:
            return []
        query = urlencode({"sha256": fingerprint.sha256, "pixel_sha256": fingerprint.pixel_sha256,
                           **({"phash": fingerprint.phash64} if fingerprint.phash64 else {})})
        results = await asyncio.gather(*(asyncio.wait_for(self._ask(peer, query, timeout), timeout)
                                         for peer in self.peers), return_exceptions=True)
        found: dict[str, tuple[Verdict, dict]] = {}
        for peer, result in zip(self.peers, results):
            if isinstance(result, BaseException):
                log.info("lookup at %s failed: %r", peer, result)
                continue
            for verdict, doc in result:
                found.setdefault(verdict.id, (verdict, doc))
        return list(found.values())

    async def _ask(self, peer: str, query: str, timeout: float) -> list[tuple[Verdict, dict]]:
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
                verdict = (await self.intake.verify_verdicts([doc]))[0]
            except (Refusal, ProtocolError) as exc:  # one bad item (unknown issuer, bad proof) does not spoil the others
                log.info("lookup at %s: verdict refused: %s", peer, exc)
                continue
            if self.records.is_retracted(verdict.id):
                continue
            out.append((verdict, doc))
        self.metrics.received.labels("lookup").inc(len(out))
        return out
