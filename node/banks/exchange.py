"""The exchange feed: this node's own block verdicts as signals (PDQ, MD5), for tools that cannot sign HTTP
Signatures (HMA, python-threatexchange through the verdict_tx extension).

    GET /exchange/v1/signals?since=<cursor>&limit=<n>     Authorization: Bearer vnx_...

Pages ``exchange_log`` oldest first: an ``add`` entry for every own verdict labelled csam (its csam score
reached the node's threshold when it was signed), a ``delete`` entry when one is retracted (the database's
triggers write both, whichever process stored the verdict). nsfw verdicts stay out: the lists this feeds are
CSAM lists, and a node's nsfw threshold is its own taste. A page holds at most MAX_PAGE entries; ``cursor`` is where the next page starts and ``more`` says
whether one is waiting.

What never appears: bank entries (they are not verdicts), peers' verdicts (they were shared with us under
our trust, not for us to pass on), safe and nsfw verdicts, scores, and anything of the images but these
hashes.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from node.banks.tokens import ExchangeTokens
from node.store import Store
from node.web import Refusal, json_response

log = logging.getLogger("verdict_node.banks")

API_PREFIX = "/exchange/v1"
DEFAULT_PAGE = 500
MAX_PAGE = 1000
_DIGITS = re.compile(r"[0-9]{1,19}\Z")
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="verdict-node exchange"'}


class ExchangeFeed:
    def __init__(self, store: Store, tokens: ExchangeTokens, actor_id: str, registry: CollectorRegistry) -> None:
        self.store = store
        self.tokens = tokens
        self.actor_id = actor_id
        self.requests = Counter("verdictnode_exchange_requests_total",
                                "Requests to the exchange feed, by result (ok, unauthorized, bad_request).",
                                ["result"], registry=registry)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{API_PREFIX}/signals", self.signals)

    def page(self, since: int, limit: int) -> dict[str, Any]:
        """Up to ``limit`` log entries after ``since``, oldest first."""
        rows = self.store.conn.execute(
            "SELECT l.seq, l.change, l.logged_at, v.verdict_id, v.label, v.published, v.pdq256, v.md5 "
            "FROM exchange_log l JOIN verdicts v ON v.id = l.verdict_rowid "
            "WHERE l.seq > ? AND v.own = 1 ORDER BY l.seq LIMIT ?", (since, limit + 1)).fetchall()
        more = len(rows) > limit
        entries = [_entry(row) for row in rows[:limit]]
        cursor = entries[-1]["seq"] if entries else since
        return {"node": self.actor_id, "entries": entries, "cursor": cursor, "more": more}

    async def signals(self, request: web.Request) -> web.Response:
        reader = self._authenticate(request)
        try:
            since = _integer(request.query.get("since", "0"), "since", 0, 10**18)
            limit = _integer(request.query.get("limit", str(DEFAULT_PAGE)), "limit", 1, MAX_PAGE)
        except Refusal:
            self.requests.labels("bad_request").inc()
            raise
        self.requests.labels("ok").inc()
        log.debug("exchange page for %s from %d", reader, since)
        return json_response(self.page(since, limit))

    def _authenticate(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        name = self.tokens.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            self.requests.labels("unauthorized").inc()
            raise Refusal(401, "a valid exchange token is required (Authorization: Bearer ...)", headers=_UNAUTHORIZED)
        return name


def _entry(row: tuple) -> dict[str, Any]:
    seq, change, logged_at, verdict_id, label, published, pdq256, md5 = row
    signals = {kind: value for kind, value in (("pdq", pdq256), ("md5", md5)) if value}
    return {"seq": seq, "change": change, "id": verdict_id, "label": label, "published": published,
            "logged_at": int(logged_at), "signals": signals}


def _integer(text: str, name: str, low: int, high: int) -> int:
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise Refusal(400, f"{name} must be an integer from {low} to {high}")
    return int(text)
