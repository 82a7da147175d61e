"""The review queue: every image the node took out of circulation that no admin has reviewed yet.

Three kinds meet here:
  - ``sweep``: a swept file that was blocked and quarantined (sweep_items outcome block, action quarantined);
    its bytes are in the quarantine, so it has a preview;
  - ``hook``: an upload the pict-rs hook rejected (decisions source pictrs, decision reject); pict-rs keeps
    no file of a rejected upload, so there is nothing to look at, only the record;
  - ``peer``: an image blocked on a peer's verdict by any other caller (decisions origin peer, decision
    block or reject; sweeps' own rows are the sweep items above).
Decision rows are grouped by the bytes (sha256): one upload retried ten times is one item. An item leaves
the queue once a review is recorded for its reference (admin_reviews).

The queue is read into memory (at most ``SCAN_LIMIT`` of each kind, newest first) and filtered, sorted and
paged there: the filters need the scores of the verdicts behind each item, which live in another table,
and a review queue that holds more than a few thousand items needs a sweep report, not a web page.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from node.policy import Thresholds
from protocol.verdict import CATEGORIES
from node.store import Store

SCAN_LIMIT = 5000
PAGE_SIZE = 25
KINDS = ("sweep", "hook", "peer")
SORTS = {"newest": "newest first", "oldest": "oldest first", "score": "highest score first"}


@dataclass(frozen=True)
class UsedVerdict:
    """A verdict behind an item's decision, as the console shows it."""

    verdict_id: str
    issuer: str
    own: bool
    scores: dict[str, float]
    label: str
    retracted: str | None  # the reason, when retracted


@dataclass(frozen=True)
class QueueItem:
    ref: str                       # sweep-<rowid> | bytes-<sha256>
    kind: str                      # sweep | hook | peer
    source: str                    # a sweep source's identity, or the decision's source (pictrs, ...)
    key: str                       # storage key, or the decision's source key ('' when pict-rs named none)
    sha256: str | None
    pixel_sha256: str | None
    phash64: str | None
    pdq256: str | None
    reason: str
    origin: str | None             # cache | peer | inference | media | unavailable | bank ...
    verdicts: tuple[UsedVerdict, ...]
    scores: dict[str, float]
    first_seen: float
    decided_at: float
    location: str | None = None    # the quarantined file (sweep items)
    size: int | None = None
    media_type: str | None = None
    media_flags: dict[str, Any] = field(default_factory=dict)
    times_seen: int = 1
    run_id: int | None = None

    @property
    def has_file(self) -> bool:
        return self.kind == "sweep" and bool(self.location)

    @property
    def issuers(self) -> set[str]:
        return {v.issuer for v in self.verdicts if not v.own}

    def top_score(self, category: str | None = None) -> float:
        if category:
            return self.scores.get(category, 0.0)
        return max(self.scores.values(), default=0.0)

    @property
    def label(self) -> str:
        """The item's name in lists: its storage key, or for an upload pict-rs named no alias of, its bytes."""
        return self.key or f"upload {(self.sha256 or '?')[:12]}…"

    @property
    def audit_target(self) -> str:
        """How the audit log names the item: its reference, where it was, and its bytes."""
        return f"{self.ref} {self.source} {self.label} sha256 {self.sha256 or '?'}"

    def title(self) -> str:
        if not self.key:
            return f"{self.kind} item: upload sha256 {(self.sha256 or '?')[:12]}… (pict-rs names no alias)"
        return f"{self.kind} item {self.key} (sha256 {(self.sha256 or '?')[:12]}…)"


@dataclass(frozen=True)
class Filters:
    """What the queue page asks for (every field from the query string, checked here)."""

    kind: str = ""
    category: str = ""
    min_score: float | None = None
    peer: str = ""
    since: float | None = None
    until: float | None = None
    sort: str = "newest"
    page: int = 1

    @classmethod
    def parse(cls, query: Any) -> tuple["Filters", list[str]]:
        """Filters from a query mapping, and one line per value that was ignored and why."""
        problems: list[str] = []
        kind = query.get("kind", "")
        if kind not in ("", *KINDS):
            problems.append(f"unknown kind {kind!r} ignored (use sweep, hook or peer)")
            kind = ""
        category = query.get("category", "")
        if category not in ("", *CATEGORIES):
            problems.append(f"unknown category {category!r} ignored (use {', '.join(CATEGORIES)})")
            category = ""
        min_score = _number(query.get("min_score", ""), "min_score", problems, 0.0, 1.0)
        sort = query.get("sort", "newest")
        if sort not in SORTS:
            problems.append(f"unknown sort {sort!r} ignored")
            sort = "newest"
        page = _number(query.get("page", ""), "page", problems, 1, 1_000_000)
        return cls(kind=kind, category=category, min_score=min_score, peer=query.get("peer", "").strip(),
                   since=_date(query.get("since", ""), "since", problems, 0),
                   until=_date(query.get("until", ""), "until", problems, 86400),
                   sort=sort, page=int(page or 1)), problems

    def matches(self, item: QueueItem, thresholds: Thresholds) -> bool:
        if self.kind and item.kind != self.kind and not (self.kind == "peer" and item.origin == "peer"):
            return False
        if self.category:
            limit = getattr(thresholds, self.category)
            if item.scores.get(self.category) is None or (limit is not None and item.scores[self.category] < limit):
                return False
        if self.min_score is not None and item.top_score(self.category or None) < self.min_score:
            return False
        if self.peer and not any(self.peer in issuer for issuer in item.issuers):
            return False
        if self.since is not None and item.decided_at < self.since:
            return False
        return not (self.until is not None and item.decided_at >= self.until)

    def query(self, **changes: Any) -> dict[str, str]:
        """These filters as query parameters (for links to other pages or sorts)."""
        values = {"kind": self.kind, "category": self.category, "peer": self.peer, "sort": self.sort,
                  "min_score": "" if self.min_score is None else f"{self.min_score:g}",
                  "since": _day(self.since), "until": _day(self.until - 86400 if self.until else None),
                  "page": str(self.page)}
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


def _number(text: str, name: str, problems: list[str], lo: float, hi: float) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{name} {text!r} is not a number: ignored")
        return None
    if not lo <= value <= hi:
        problems.append(f"{name} {text} is outside [{lo:g}, {hi:g}]: ignored")
        return None
    return value


def _date(text: str, name: str, problems: list[str], plus: float) -> float | None:
    if not text:
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%d")) - time.timezone + plus
    except ValueError:
        problems.append(f"{name} {text!r} is not a date (YYYY-MM-DD): ignored")
        return None


def _day(when: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when)) if when else ""


@dataclass(frozen=True)
class Page:
    items: list[QueueItem]
    total: int
    page: int
    pages: int


class ReviewQueue:
    """Reads the queue and records reviews (the admin_reviews table)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reading ---------------------------------------------------------------------------------

    def all(self) -> list[QueueItem]:
        """Every unreviewed item, newest first."""
        items = self._sweep_items() + self._decision_items()
        return sorted(items, key=lambda i: i.decided_at, reverse=True)

    def page(self, filters: Filters, thresholds: Thresholds, size: int = PAGE_SIZE) -> Page:
        chosen = [i for i in self.all() if filters.matches(i, thresholds)]
        if filters.sort == "oldest":
            chosen.reverse()
        elif filters.sort == "score":
            chosen.sort(key=lambda i: i.top_score(filters.category or None), reverse=True)
        pages = max(1, -(-len(chosen) // size))
        page = min(filters.page, pages)
        return Page(chosen[(page - 1) * size: page * size], len(chosen), page, pages)

    def depth(self) -> int:
        return len(self.all())

    def depth_at(self, moments: Sequence[float]) -> list[int]:
        """How many items awaited review at each moment (the overview's depth per day): an item counts from
        its decision until its review."""
        reviewed = dict(self.store.conn.execute("SELECT item, reviewed_at FROM admin_reviews"))
        spans = [(i.decided_at, reviewed.get(i.ref))
                 for i in self._sweep_items(reviewed_too=True) + self._decision_items(reviewed_too=True)]
        return [sum(1 for start, end in spans if start <= t and (end is None or end > t)) for t in moments]

    def get(self, ref: str, *, reviewed_too: bool = False) -> QueueItem | None:
        """One item by reference (also once reviewed, with ``reviewed_too``: its page stays readable)."""
        if ref.startswith("sweep-") and ref[6:].isdigit():
            found = self._sweep_items(rowid=int(ref[6:]), reviewed_too=reviewed_too)
        elif ref.startswith("bytes-") and len(ref) == 70:
            found = self._decision_items(sha256=ref[6:], reviewed_too=reviewed_too)
        else:
            return None
        return found[0] if found else None

    def _sweep_items(self, rowid: int | None = None, reviewed_too: bool = False) -> list[QueueItem]:
        where = "rowid = ?" if rowid is not None else "outcome = 'block' AND action = 'quarantined'"
        if not reviewed_too:
            where += " AND 'sweep-' || rowid NOT IN (SELECT item FROM admin_reviews)"
        rows = self.store.conn.execute(
            "SELECT rowid, source, key, size, decided_at, reason, origin, sha256, pixel_sha256, phash64, pdq256,"
            f" scores, verdict_ids, location, run_id FROM sweep_items WHERE {where} ORDER BY decided_at DESC LIMIT ?",
            ((rowid,) if rowid is not None else ()) + (SCAN_LIMIT,)).fetchall()
        seen = self._first_seen(r[7] for r in rows)
        out = []
        for (rid, source, key, size, decided, reason, origin, sha, pixel, phash, pdq, scores, vids, location,
             run_id) in rows:
            verdicts = self.verdicts(json.loads(vids or "[]"))
            out.append(QueueItem(
                ref=f"sweep-{rid}", kind="sweep", source=source, key=key, sha256=sha, pixel_sha256=pixel,
                phash64=phash, pdq256=pdq, reason=reason or "", origin=origin, verdicts=verdicts,
                scores=json.loads(scores) if scores else _max_scores(verdicts),
                first_seen=min(decided, seen.get(sha, decided)), decided_at=decided, location=location, size=size,
                run_id=run_id))
        return out

    def _decision_items(self, sha256: str | None = None, reviewed_too: bool = False) -> list[QueueItem]:
        chosen = ("source != 'sweep' AND sha256 IS NOT NULL AND ((source = 'pictrs' AND decision = 'reject')"
                  " OR (origin = 'peer' AND decision IN ('block', 'reject')))")
        params: list[Any] = []
        if sha256 is not None:
            chosen += " AND sha256 = ?"
            params.append(sha256)
        reviewed = "" if reviewed_too else "WHERE 'bytes-' || d.sha256 NOT IN (SELECT item FROM admin_reviews)"
        rows = self.store.conn.execute(
            "SELECT d.source, d.source_key, d.created_at, d.reason, d.origin, d.sha256, d.pixel_sha256, d.phash64,"
            " d.pdq256, d.verdict_ids, d.media_type, d.media_flags, g.first, g.n FROM decisions d JOIN"
            f" (SELECT max(id) AS last, min(created_at) AS first, count(*) AS n FROM decisions WHERE {chosen}"
            f" GROUP BY sha256) g ON d.id = g.last {reviewed} ORDER BY d.id DESC LIMIT ?",
            (*params, SCAN_LIMIT)).fetchall()
        out = []
        for (source, key, created, reason, origin, sha, pixel, phash, pdq, vids, media_type, flags, first,
             count) in rows:
            verdicts = self.verdicts(json.loads(vids or "[]"))
            out.append(QueueItem(
                ref=f"bytes-{sha}", kind="hook" if source == "pictrs" else "peer", source=source, key=key or "",
                sha256=sha, pixel_sha256=pixel, phash64=phash, pdq256=pdq, reason=reason, origin=origin,
                verdicts=verdicts, scores=_max_scores(verdicts), first_seen=first, decided_at=created,
                media_type=media_type, media_flags=json.loads(flags) if flags else {}, times_seen=count))
        return out

    def verdicts(self, verdict_ids: Iterable[str]) -> tuple[UsedVerdict, ...]:
        ids = list(verdict_ids)
        if not ids:
            return ()
        rows = self.store.conn.execute(
            f"SELECT verdict_id, issuer, own, scores, label, retracted_at, retract_reason FROM verdicts"
            f" WHERE verdict_id IN ({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: UsedVerdict(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4],
                                   (r[6] or "retracted") if r[5] is not None else None) for r in rows}
        return tuple(by_id[i] for i in ids if i in by_id)

    def _first_seen(self, sha256s: Iterable[str | None]) -> dict[str, float]:
        keys = [s for s in set(sha256s) if s]
        out: dict[str, float] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            out.update(self.store.conn.execute(
                f"SELECT sha256, min(created_at) FROM decisions WHERE sha256 IN ({','.join('?' * len(chunk))})"
                " GROUP BY sha256", chunk).fetchall())
        return out

    # -- reviews ---------------------------------------------------------------------------------

    def mark_reviewed(self, item: QueueItem, decision: str, reviewer: str, note: str = "") -> None:
        self.store.conn.execute(
            "INSERT INTO admin_reviews (item, sha256, decision, reviewer, reviewed_at, note) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT (item) DO UPDATE SET decision = excluded.decision, reviewer = excluded.reviewer,"
            " reviewed_at = excluded.reviewed_at, note = excluded.note",
            (item.ref, item.sha256, decision, reviewer, time.time(), note))

    def review_of(self, ref: str) -> dict[str, Any] | None:
        row = self.store.conn.execute("SELECT decision, reviewer, reviewed_at, note FROM admin_reviews WHERE item = ?",
                                      (ref,)).fetchone()
        return dict(zip(("decision", "reviewer", "reviewed_at", "note"), row)) if row else None


def _max_scores(verdicts: Iterable[UsedVerdict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in verdicts:
        for category, score in v.scores.items():
            out[category] = max(out.get(category, 0.0), float(score))
    return out
