"""`verdict-node report`: the positives sweeps found, one row each, for follow-up (review, reports to the
authorities): where the item is (source, key, quarantine location), when it was decided, its fingerprint,
the scores, and on whose word (our own inference, or which peer's signed verdict).
"""
from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timezone
from typing import Any

from node.sweeps.records import ItemRecord, SweepRecords
from node.sweeps.times import parse_duration

FIELDS = ("source", "key", "decided_at", "action", "location", "sha256", "pixel_sha256", "phash64", "pdq256",
          "scores", "verdict_from", "issuers", "verdict_ids", "reason", "action_error")


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_since(text: str, now: float | None = None) -> float:
    """A duration back ('7d', '20m') or a UTC time ('2026-01-31T00:00:00Z', '2026-01-31')."""
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: not a duration (7d) or a UTC time (2026-01-31T00:00:00Z): {text!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _issuers(records: SweepRecords, verdict_ids: tuple[str, ...]) -> list[tuple[str, bool]]:
    out = []
    for verdict_id in verdict_ids:
        row = records.store.conn.execute("SELECT issuer, own FROM verdicts WHERE verdict_id = ?", (verdict_id,)).fetchone()
        if row:
            out.append((row[0], bool(row[1])))
    return out


def verdict_from(record: ItemRecord, issuers: list[tuple[str, bool]]) -> str:
    """'own inference' | 'own verdict' (an earlier inference of ours) | 'peer <actor>' (joined by '; ')."""
    if record.origin == "inference":
        return "own inference"
    parts = []
    for issuer, own in issuers:
        label = "own verdict" if own else f"peer {issuer}"
        if label not in parts:
            parts.append(label)
    return "; ".join(parts) or (record.origin or "unknown")


def report_rows(records: SweepRecords, since: float | None = None, source: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for record in records.positives(since, source):
        issuers = _issuers(records, record.verdict_ids)
        rows.append({
            "source": record.source, "key": record.key, "decided_at": utc(record.decided_at), "action": record.action,
            "location": record.location, "sha256": record.sha256, "pixel_sha256": record.pixel_sha256,
            "phash64": record.phash64, "pdq256": record.pdq256, "scores": record.scores or {},
            "verdict_from": verdict_from(record, issuers), "issuers": sorted({i for i, _ in issuers}),
            "verdict_ids": list(record.verdict_ids), "reason": record.reason,
            # why an action was refused, failed, or needs the admin's review after an interruption
            "action_error": record.action_error,
        })
    return rows


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        flat["scores"] = json.dumps(row["scores"], sort_keys=True)
        flat["issuers"] = " ".join(row["issuers"])
        flat["verdict_ids"] = " ".join(row["verdict_ids"])
        writer.writerow({k: ("" if v is None else v) for k, v in flat.items()})
    return buf.getvalue()
