"""What sweeps remember, in the node's database (tables from the "storage sweeps" migration in store.py):
runs and their listing cursors, one row per storage item, and the admin's false-positive overrides.

The one hot query is `known_items`: it loads, once per sweep, every item already decided for a source into
a dict, so that skipping a known item costs a stat (done by the listing anyway) and a dict lookup, never
a query or a read per file. An item counts as known when its (size, mtime, etag) are those recorded at
decision time and its outcome is final; `unknown` (no classifier, queue full) and `error` rows are tried
again by the next sweep.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

from node.store import Store
from node.urls import public_url  # noqa: F401 - sweeps commands take it from here
from scanners.sources import Item

#: Outcomes that are final for an unchanged item: a later sweep skips it without reading it. Not
#: `skipped` (a FIFO or link where a file was listed): the file may be back under the same stat.
FINAL_OUTCOMES = ("block", "allow", "video", "unreadable")

#: Actions written before storage is touched: a row left in one of these was cut short by a crash, and
#: `node.recovery.reconcile` settles it.
UNDER_WAY_ACTIONS = ("quarantining", "deleting")
#: Actions a sweep does again on an unchanged item: under way, failed, or refused (a second hard link,
#: a swapped file: tried again, so it is acted on once the cause is gone, and stays in the report).
REDO_ACTIONS = (*UNDER_WAY_ACTIONS, "failed", "refused")



def source_identity(url: str) -> str:
    """A stable name for 'the same storage' across runs: scheme, host, path (for S3 the prefixes too),
    without options that do not change what is listed (timeouts, page sizes, keys)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        return "file://" + os.path.realpath(parts.path if scheme == "file" else url)
    identity = f"{scheme}://{parts.netloc.rpartition('@')[2] if scheme.startswith('pictrs') else parts.netloc}"
    identity += parts.path.rstrip("/") or ""
    if scheme == "s3":
        prefixes = sorted(v for k, v in parse_qsl(parts.query) if k == "prefix")
        if prefixes:
            identity += "?" + urlencode([("prefix", p) for p in prefixes])
    return identity


@dataclass(frozen=True)
class ItemRecord:
    """One decided storage item (a row of sweep_items)."""

    source: str
    key: str
    size: int | None
    mtime: float | None
    etag: str | None
    run_id: int | None
    decided_at: float
    outcome: str
    origin: str | None
    reason: str | None
    sha256: str | None = None
    pixel_sha256: str | None = None
    phash64: str | None = None
    pdq256: str | None = None
    scores: dict[str, float] | None = None
    verdict_ids: tuple[str, ...] = ()
    action: str = "none"
    location: str | None = None
    action_error: str | None = None

    def as_item(self) -> Item:
        """The storage item as it was listed when decided."""
        return Item(self.key, size=self.size, mtime=self.mtime, etag=self.etag)

    def row(self) -> tuple:
        return (self.source, self.key, self.size, self.mtime, self.etag, self.run_id, self.decided_at, self.outcome,
                self.origin, self.reason, self.sha256, self.pixel_sha256, self.phash64, self.pdq256,
                json.dumps(self.scores, sort_keys=True) if self.scores is not None else None,
                json.dumps(list(self.verdict_ids)), self.action, self.location, self.action_error)


_ITEM_COLUMNS = ("source, key, size, mtime, etag, run_id, decided_at, outcome, origin, reason, sha256, pixel_sha256, "
                 "phash64, pdq256, scores, verdict_ids, action, location, action_error")
_UPSERT = (f"INSERT INTO sweep_items ({_ITEM_COLUMNS}) VALUES ({', '.join('?' * 19)}) "
           f"ON CONFLICT(source, key) DO UPDATE SET " +
           ", ".join(f"{c} = excluded.{c}" for c in _ITEM_COLUMNS.split(", ")[2:]))


def record_of(row: Sequence[Any]) -> ItemRecord:
    values = list(row)
    values[14] = json.loads(values[14]) if values[14] else None
    values[15] = tuple(json.loads(values[15] or "[]"))
    return ItemRecord(*values)


class SweepRecords:
    """Queries over the sweep tables of one Store (usable from any thread: Store gives each its connection)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- runs ------------------------------------------------------------------------------------

    def start_run(self, source: str, url: str, mode: str, action: str) -> int:
        now = time.time()
        cur = self.store.conn.execute(
            "INSERT INTO sweep_runs (source, url, mode, action, started_at, updated_at) VALUES (?,?,?,?,?,?)",
            (source, public_url(url), mode, action, now, now))
        return int(cur.lastrowid)

    def unfinished_run(self, source: str, mode: str) -> dict[str, Any] | None:
        """The newest run of this mode that did not finish (a killed `scan --all`), to resume."""
        rows = list(self.store.db.query(
            "SELECT * FROM sweep_runs WHERE source = ? AND mode = ? AND finished_at IS NULL ORDER BY id DESC LIMIT 1",
            [source, mode]))
        return rows[0] if rows else None

    def last_cursor(self, source: str, mode: str) -> str | None:
        """The cursor of the newest run of this mode (a daemon's next incremental bound)."""
        row = self.store.conn.execute(
            "SELECT cursor FROM sweep_runs WHERE source = ? AND mode = ? AND cursor IS NOT NULL ORDER BY id DESC LIMIT 1",
            (source, mode)).fetchone()
        return row[0] if row else None

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        rows = list(self.store.db.query("SELECT * FROM sweep_runs WHERE id = ?", [run_id]))
        return rows[0] if rows else None

    def expected_items(self, source: str) -> int | None:
        """How many items a full sweep of this source will list (the progress bar's ETA): the last finished
        `--all` run's count, else the items recorded so far; None when nothing is known yet."""
        row = self.store.conn.execute(
            "SELECT stats FROM sweep_runs WHERE source = ? AND finished_at IS NOT NULL AND mode = 'all' "
            "ORDER BY id DESC LIMIT 1", (source,)).fetchone()
        if row and row[0]:
            return int(json.loads(row[0]).get("listed") or 0) or None
        count = self.store.conn.execute("SELECT COUNT(*) FROM sweep_items WHERE source = ?", (source,)).fetchone()[0]
        return int(count) or None

    def finish_run(self, run_id: int, cursor: str | None, stats: dict[str, Any]) -> None:
        now = time.time()
        self.store.conn.execute("UPDATE sweep_runs SET finished_at = ?, updated_at = ?, cursor = ?, stats = ? WHERE id = ?",
                                (now, now, cursor, json.dumps(stats, sort_keys=True), run_id))

    # -- items -----------------------------------------------------------------------------------

    def known_items(self, source: str, *, redo_dry_run: bool = False
                    ) -> dict[str, tuple[int | None, float | None, str | None]]:
        """key -> (size, mtime, etag) of every item with a final outcome: the in-memory known-check.

        Not known (so processed again, from the verdict store, without inference): an action that was
        interrupted or failed, and with ``redo_dry_run`` the positives of a dry run (a real sweep acts
        on them)."""
        marks = ",".join("?" * len(FINAL_OUTCOMES))
        unsettled = [*REDO_ACTIONS] + (["dry-run"] if redo_dry_run else [])
        rows = self.store.conn.execute(
            f"SELECT key, size, mtime, etag FROM sweep_items WHERE source = ? AND outcome IN ({marks}) "
            f"AND action NOT IN ({','.join('?' * len(unsettled))})",
            (source, *FINAL_OUTCOMES, *unsettled))
        return {key: (size, mtime, etag) for key, size, mtime, etag in rows}

    def commit(self, records: Iterable[ItemRecord], run_id: int | None = None, cursor: str | None = None,
               stats: dict[str, Any] | None = None) -> None:
        """Write item rows and (optionally) the run's cursor in ONE transaction: a cursor is never ahead of
        the rows it covers, so a killed sweep resumes without losing a decision."""
        conn = self.store.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, [r.row() for r in records])
            if run_id is not None:
                conn.execute("UPDATE sweep_runs SET cursor = COALESCE(?, cursor), stats = COALESCE(?, stats), "
                             "updated_at = ? WHERE id = ?",
                             (cursor, json.dumps(stats, sort_keys=True) if stats is not None else None,
                              time.time(), run_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def under_way(self, source: str) -> list[ItemRecord]:
        """Rows of this source whose action was cut short (see UNDER_WAY_ACTIONS)."""
        rows = self.store.conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM sweep_items WHERE source = ? AND action IN "
            f"({','.join('?' * len(UNDER_WAY_ACTIONS))}) ORDER BY key", (source, *UNDER_WAY_ACTIONS)).fetchall()
        return [record_of(r) for r in rows]

    def item(self, source: str, key: str) -> ItemRecord | None:
        row = self.store.conn.execute(f"SELECT {_ITEM_COLUMNS} FROM sweep_items WHERE source = ? AND key = ?",
                                      (source, key)).fetchone()
        return record_of(row) if row else None

    def find(self, ref: str) -> list[ItemRecord]:
        """Items matching a quarantine location, a storage key, or a sha256 (newest decision first)."""
        rows = self.store.conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM sweep_items WHERE location = ?1 OR key = ?1 OR sha256 = ?1 "
            f"ORDER BY decided_at DESC", (ref,)).fetchall()
        return [record_of(r) for r in rows]

    def run_items(self, run_id: int, outcome: str | None = None, action: str | None = None) -> list[ItemRecord]:
        where, params = ["run_id = ?"], [run_id]
        if outcome:
            where.append("outcome = ?")
            params.append(outcome)
        if action:
            where.append("action = ?")
            params.append(action)
        rows = self.store.conn.execute(f"SELECT {_ITEM_COLUMNS} FROM sweep_items WHERE {' AND '.join(where)} "
                                       f"ORDER BY key", params).fetchall()
        return [record_of(r) for r in rows]

    def positives(self, since: float | None = None, source: str | None = None) -> list[ItemRecord]:
        where, params = ["outcome = 'block'"], []
        if since is not None:
            where.append("decided_at >= ?")
            params.append(since)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        rows = self.store.conn.execute(f"SELECT {_ITEM_COLUMNS} FROM sweep_items WHERE {' AND '.join(where)} "
                                       f"ORDER BY decided_at, key", params).fetchall()
        return [record_of(r) for r in rows]

    def count(self, source: str | None = None) -> dict[str, int]:
        """Items per outcome (tests, summaries)."""
        where, params = ("WHERE source = ?", [source]) if source else ("", [])
        return {o: n for o, n in self.store.conn.execute(
            f"SELECT outcome, COUNT(*) FROM sweep_items {where} GROUP BY outcome", params)}

    # -- overrides -------------------------------------------------------------------------------

    def add_override(self, sha256: str, pixel_sha256: str | None, reason: str, source: str | None,
                     key: str | None) -> None:
        self.store.conn.execute(
            "INSERT INTO sweep_overrides (sha256, pixel_sha256, created_at, reason, source, key) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(sha256) DO UPDATE SET reason = excluded.reason, created_at = excluded.created_at",
            (sha256, pixel_sha256, time.time(), reason, source, key))

    def overrides(self) -> set[str]:
        """Every overridden key (byte sha256 and pixel sha256 alike: both are 64 hex digits of one image)."""
        out: set[str] = set()
        for sha, pixel in self.store.conn.execute("SELECT sha256, pixel_sha256 FROM sweep_overrides"):
            out.add(sha)
            if pixel:
                out.add(pixel)
        return out
