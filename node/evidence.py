"""Evidence records: for every positive an admin confirmed, what a report to the authorities needs without
the image itself (hashes, size and type, when and where it was stored, the uploader and the posts that use
it, the node's decision and the verdicts behind it, and the review), kept while the quarantined file is.

The core holds them because more than one feature writes or reads them: the review console confirms
positives, sweeps must not destroy a file that evidence still needs (``protecting``), attribution fills in
who uploaded it, and `verdict-node evidence export` hands them on. A record is never deleted by the node;
``retain_until`` (``evidence.retain_days`` after the review) only says until when its file is protected.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from node.store import Store

DAY = 86400.0


@dataclass(frozen=True)
class Positive:
    """What the node knows of one positive when an admin confirms it. ``source`` is ``pictrs`` for a hook
    rejection, a sweep source's identity for a swept file; ``key`` is the storage key or pict-rs alias ('' when
    unknown: the hook is told no alias); ``decision`` holds outcome, reason, origin, scores and the verdicts
    used, each with its issuer."""

    sha256: str
    source: str
    key: str = ""
    md5: str | None = None
    pixel_sha256: str | None = None
    pdq256: str | None = None
    phash64: str | None = None
    size: int | None = None
    media_type: str | None = None
    location: str | None = None
    stored_at: float | None = None
    decision: dict[str, Any] = field(default_factory=dict)


_COLUMNS = ("id", "created_at", "sha256", "md5", "pixel_sha256", "pdq256", "phash64", "size", "media_type",
            "source", "key", "location", "stored_at", "decision", "attribution", "attributed_at", "reviewer",
            "reviewed_at", "review_note", "retain_until")
_JSON = ("decision", "attribution")


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(_COLUMNS, row))
    for name in _JSON:
        if record[name] is not None:
            record[name] = json.loads(record[name])
    return record


class EvidenceRecords:
    """The evidence table (node.migrations "evidence records"). Rows are plain dicts of the columns, with
    ``decision`` and ``attribution`` decoded."""

    def __init__(self, store: Store, retain_days: float) -> None:
        self.store = store
        self.retain_days = retain_days

    def confirm(self, positive: Positive, *, reviewer: str, note: str = "", now: float | None = None) -> int:
        """Record (or, for the same bytes at the same place, renew) the evidence of a reviewed positive and
        return its id. A second confirmation keeps the first record's creation time and any attribution."""
        now = time.time() if now is None else now
        values = asdict(positive)
        values["decision"] = json.dumps(positive.decision, sort_keys=True)
        retain_until = now + self.retain_days * DAY
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO evidence (created_at, sha256, md5, pixel_sha256, pdq256, phash64, size, media_type,"
                " source, key, location, stored_at, decision, reviewer, reviewed_at, review_note, retain_until)"
                " VALUES (:now, :sha256, :md5, :pixel_sha256, :pdq256, :phash64, :size, :media_type, :source,"
                " :key, :location, :stored_at, :decision, :reviewer, :now, :note, :retain_until)"
                " ON CONFLICT (sha256, source, key) DO UPDATE SET md5 = coalesce(excluded.md5, md5),"
                " location = coalesce(excluded.location, location), decision = excluded.decision,"
                " reviewer = excluded.reviewer, reviewed_at = excluded.reviewed_at,"
                " review_note = excluded.review_note, retain_until = max(retain_until, excluded.retain_until)",
                {**values, "now": now, "reviewer": reviewer, "note": note, "retain_until": retain_until})
            (record_id,) = conn.execute("SELECT id FROM evidence WHERE sha256 = ? AND source = ? AND key = ?",
                                        (positive.sha256, positive.source, positive.key)).fetchone()
        return int(record_id)

    def attach_attribution(self, record_id: int, details: dict[str, Any], looked_up_at: float) -> None:
        """Store who uploaded the bytes and where they are used (node.hooks.Attribution.details)."""
        with self.store.transaction() as conn:
            conn.execute("UPDATE evidence SET attribution = ?, attributed_at = ? WHERE id = ?",
                         (json.dumps(details, sort_keys=True), looked_up_at, record_id))

    def get(self, record_id: int) -> dict[str, Any] | None:
        row = self.store.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM evidence WHERE id = ?",
                                      (record_id,)).fetchone()
        return _record(row) if row else None

    def for_sha256(self, sha256: str) -> list[dict[str, Any]]:
        rows = self.store.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM evidence WHERE sha256 = ? ORDER BY id",
                                       (sha256,)).fetchall()
        return [_record(r) for r in rows]

    def list(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest review first."""
        rows = self.store.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM evidence ORDER BY reviewed_at DESC,"
                                       " id DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [_record(r) for r in rows]

    def unattributed(self, limit: int = 20) -> list[dict[str, Any]]:
        """Records whose attribution was not looked up yet, oldest first (attribution fills them in)."""
        rows = self.store.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM evidence WHERE attribution IS NULL"
                                       " ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def count(self) -> int:
        return int(self.store.conn.execute("SELECT count(*) FROM evidence").fetchone()[0])

    def protecting(self, sha256: str | None, *, location: str | None = None,
                   now: float | None = None) -> dict[str, Any] | None:
        """The record, if any, whose retention still covers these bytes (by sha256) or this quarantined file
        (by location): whoever would destroy them must refuse unless forced, naming the record."""
        if not sha256 and not location:
            return None
        now = time.time() if now is None else now
        row = self.store.conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM evidence WHERE (sha256 = ? OR (location IS NOT NULL AND"
            " location = ?)) AND retain_until > ? ORDER BY retain_until DESC LIMIT 1",
            (sha256 or "", location or "", now)).fetchone()
        return _record(row) if row else None


def protection_reason(record: dict[str, Any]) -> str:
    """One line for a refusal: which record keeps the file and until when."""
    until = time.strftime("%Y-%m-%d", time.gmtime(record["retain_until"]))
    return (f"evidence record {record['id']} (sha256 {record['sha256'][:16]}…, confirmed by {record['reviewer']})"
            f" keeps this file until {until} (evidence.retain_days); pass --force to destroy it anyway")
