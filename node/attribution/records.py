"""The attribution feature's SQL (tables of the "attribution cache" migration): the cache of lookups, the
explicit admin actions and their answers, and how far the follower of new positives has read."""
from __future__ import annotations

import json
import time
from typing import Any

from node.hooks import Attribution
from node.store import Store


def cache_key(sha256: str, source: str | None, key: str | None, search_text: bool) -> str:
    return f"{sha256}|{source or ''}|{key or ''}|{'text' if search_text else ''}"


class AttributionRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- the cache -------------------------------------------------------------------------------

    def cached(self, key: str) -> Attribution | None:
        row = self.store.conn.execute("SELECT found, summary, details, looked_up_at FROM attribution_cache"
                                      " WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Attribution(looked_up_at=row[3], found=bool(row[0]), summary=row[1], details=json.loads(row[2]))

    def remember(self, key: str, sha256: str, attribution: Attribution) -> None:
        with self.store.transaction() as conn:
            conn.execute("INSERT INTO attribution_cache (key, sha256, found, summary, details, looked_up_at)"
                         " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET found = excluded.found,"
                         " summary = excluded.summary, details = excluded.details,"
                         " looked_up_at = excluded.looked_up_at",
                         (key, sha256, int(attribution.found), attribution.summary,
                          json.dumps(attribution.details, sort_keys=True), attribution.looked_up_at))

    def latest_for(self, sha256: str) -> Attribution | None:
        """The newest cached attribution of these bytes, wherever they were met (for evidence records)."""
        row = self.store.conn.execute("SELECT found, summary, details, looked_up_at FROM attribution_cache"
                                      " WHERE sha256 = ? ORDER BY found DESC, looked_up_at DESC LIMIT 1",
                                      (sha256,)).fetchone()
        if row is None:
            return None
        return Attribution(looked_up_at=row[3], found=bool(row[0]), summary=row[1], details=json.loads(row[2]))

    def cached_count(self) -> int:
        return int(self.store.conn.execute("SELECT count(*) FROM attribution_cache").fetchone()[0])

    # -- admin actions ---------------------------------------------------------------------------

    def record_action(self, *, actor: str, kind: str, target: int | str, reason: str, ok: bool, answer: str,
                      at: float | None = None) -> int:
        with self.store.transaction() as conn:
            cur = conn.execute("INSERT INTO attribution_actions (at, actor, kind, target, reason, ok, answer)"
                               " VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (time.time() if at is None else at, actor, kind, str(target), reason, int(ok), answer))
            return int(cur.lastrowid)

    def actions(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; ``target_id`` is Lemmy's id (None for an image, whose ``target`` is its alias)."""
        rows = self.store.conn.execute("SELECT id, at, actor, kind, target, reason, ok, answer FROM"
                                       " attribution_actions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        names = ("id", "at", "actor", "kind", "target", "reason", "ok", "answer")
        return [{**dict(zip(names, r)), "ok": bool(r[6]),
                 "target_id": int(r[4]) if r[3] != "image" and str(r[4]).isdigit() else None} for r in rows]

    # -- the follower's position -----------------------------------------------------------------

    def position(self, name: str) -> float | None:
        row = self.store.conn.execute("SELECT position FROM attribution_progress WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    def set_position(self, name: str, position: float) -> None:
        with self.store.transaction() as conn:
            conn.execute("INSERT INTO attribution_progress (name, position) VALUES (?, ?) ON CONFLICT (name)"
                         " DO UPDATE SET position = excluded.position", (name, position))

    def new_positive_decisions(self, after_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """Positives the pict-rs hook (and other non-sweep callers) decided after ``after_id``: rejections and
        blocks on a verdict, a peer's, a bank's or inference, not those of an unreadable body or a missing
        classifier. Sweep items are followed through their own records, which know the source."""
        rows = self.store.conn.execute(
            "SELECT id, created_at, source, source_key, sha256, origin FROM decisions WHERE id > ?"
            " AND decision IN ('reject', 'block') AND origin NOT IN ('unavailable', 'media')"
            " AND source != 'sweep' AND sha256 IS NOT NULL"
            " ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [dict(zip(("id", "created_at", "source", "source_key", "sha256", "origin"), r)) for r in rows]
