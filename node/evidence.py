"""Evidence records: for every positive an admin confirmed, what a report to the authorities needs without
the image itself (hashes, size and type, when and where it was stored, the uploader and the posts that use
it, the node's decision and the verdicts behind it, and the review), kept while the quarantined file is.

The core holds them because more than one feature writes or reads them: the review console confirms
positives, sweeps must not destroy a file that evidence still needs (``protecting``), attribution fills in
who uploaded it, and `verdict-node evidence export` hands them on. A record is never deleted by the node;
``retain_until`` (``evidence.retain_days`` after the review) only says until when its file is protected.
"""
from __future__ import annotations

import csv
import io
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

    def every(self, *, since: float | None = None) -> list[dict[str, Any]]:
        """Every record (reviewed at or after ``since``), oldest first: what an export hands on."""
        rows = self.store.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM evidence WHERE reviewed_at >= ?"
                                       " ORDER BY id", (since or 0.0,)).fetchall()
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


_REFUSAL = "evidence record "


def protection_reason(record: dict[str, Any]) -> str:
    """One line for a refusal: which record keeps the file and until when."""
    until = time.strftime("%Y-%m-%d", time.gmtime(record["retain_until"]))
    return (f"{_REFUSAL}{record['id']} (sha256 {record['sha256'][:16]}…, confirmed by {record['reviewer']})"
            f" keeps this file until {until} (evidence.retain_days); pass --force to destroy it anyway")


# -- export (`verdict-node evidence export`) ------------------------------------------------------------

def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _uploaders(attribution: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The people the attribution names as uploaders: Lemmy's uploads and Mastodon's accounts."""
    if not attribution:
        return []
    found = []
    for upload in (attribution.get("lemmy") or {}).get("uploads") or []:
        if upload.get("uploader"):
            found.append({**upload["uploader"], "alias": upload.get("alias"), "uploaded_at": upload.get("uploaded_at")})
        elif upload.get("federated_thumbnail"):
            found.append({"federated_thumbnail": True, "alias": upload.get("alias"),
                          "remote_post": (upload.get("remote_post") or {}).get("ap_id")})
    for media in attribution.get("mastodon") or []:
        account = media.get("account")
        if account:
            found.append({"name": account.get("handle"), "actor_url": account.get("url"),
                          "created_at": account.get("created_at"), "media_attachment": media.get("attachment_id")})
    return found


def _links(attribution: dict[str, Any] | None) -> list[str]:
    """Public links of the posts, comments and statuses that use the image."""
    if not attribution:
        return []
    lemmy = attribution.get("lemmy") or {}
    links = [p.get("ap_id") for p in lemmy.get("posts") or []] + [c.get("ap_id") for c in lemmy.get("comments") or []]
    links += [(m.get("status") or {}).get("url") for m in attribution.get("mastodon") or []]
    return [link for link in links if link]


def export_record(record: dict[str, Any]) -> dict[str, Any]:
    """One record as exported: every column, times also in UTC ISO 8601, and what the attribution and the
    decision say pulled out (uploaders, public links, the verdicts used) next to their full JSON."""
    decision = record.get("decision") or {}
    attribution = record.get("attribution")
    out = dict(record)
    for name in ("created_at", "stored_at", "attributed_at", "reviewed_at", "retain_until"):
        out[f"{name}_utc"] = _iso(record.get(name))
    out["outcome"] = decision.get("outcome")
    out["reason"] = decision.get("reason")
    out["origin"] = decision.get("origin")
    out["verdicts"] = decision.get("verdicts") or decision.get("verdict_ids") or []
    out["attribution_summary"] = (attribution or {}).get("summary")
    out["pictrs_aliases"] = ((attribution or {}).get("pictrs") or {}).get("aliases") or []
    out["uploaders"] = _uploaders(attribution)
    out["public_links"] = _links(attribution)
    return out


def refused_for_evidence(action_error: str | None) -> bool:
    """Whether a sweep item's refusal (its action_error) was this retention, not a changed or linked file."""
    return (action_error or "").startswith(_REFUSAL)


# A spreadsheet runs a cell that starts with one of these as a formula: text from another system's database
# (a user name, a post title) or a review note must stay text when the export is opened.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


#: CSV columns, in order; lists and mappings are written as JSON in their cell.
CSV_COLUMNS = ("id", "sha256", "md5", "pixel_sha256", "pdq256", "phash64", "size", "media_type", "source", "key",
               "location", "stored_at_utc", "created_at_utc", "outcome", "reason", "origin", "verdicts",
               "attribution_summary", "pictrs_aliases", "uploaders", "public_links", "attributed_at_utc",
               "reviewer", "reviewed_at_utc", "review_note", "retain_until_utc", "decision", "attribution")


def render_export(records: list[dict[str, Any]], fmt: str) -> str:
    """``json`` (a list of export_record objects) or ``csv`` (CSV_COLUMNS)."""
    rows = [export_record(r) for r in records]
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if fmt != "csv":
        raise ValueError(f"format must be json or csv, got {fmt!r}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return buffer.getvalue()
