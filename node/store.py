"""The node's SQLite database: verdicts (own and peers'), one decision row per image seen, peers, and the
tables federation needs (outbox log, deliveries, seen activity ids).

WAL with synchronous=NORMAL: readers never block the writer and a commit costs no fsync (a power cut may
lose the last commits, never corrupt the file). SQLite connections must not cross threads, so `Store`
hands each thread its own connection (`store.db`).

The schema is node.migrations.MIGRATIONS, an append-only list: the database records how many have run
(`PRAGMA user_version`) and runs the rest in order at open.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlite_utils

from node.migrations import MIGRATIONS, Migration
from protocol.verdict import Fingerprint, ModelInfo, Verdict


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer verdict-node: refuse to touch it."""


#: How a verdict reached this node: issued here, pushed to our inbox (a Create or a relaying Announce), read
#: from a followed peer's outbox (backfill), or answered by a lookup peer.
VERDICT_ORIGINS = ("own", "push", "backfill", "lookup")

_VERDICT_COLUMNS = ("id, verdict_id, issuer, sha256, pixel_sha256, phash64, pdq256, preprocessing, scores, label, "
                    "model_name, model_version, model_rules, published, supersedes, md5")


def verdict_from_row(row: Sequence[Any]) -> Verdict:
    """Rebuild a Verdict from the columns in `_VERDICT_COLUMNS` order (the proof stays in `document`)."""
    (_rowid, verdict_id, issuer, sha256, pixel_sha256, phash64, pdq256, preprocessing, scores, label,
     model_name, model_version, model_rules, published, supersedes, md5) = row
    return Verdict(
        id=verdict_id, issuer=issuer,
        fingerprint=Fingerprint(sha256=sha256, pixel_sha256=pixel_sha256, phash64=phash64 or "",
                                preprocessing=preprocessing or "", pdq256=pdq256, md5=md5),
        scores=json.loads(scores), label=label,
        model=ModelInfo(name=model_name, version=model_version, rules=model_rules),
        published=published, supersedes=supersedes)


@dataclass(frozen=True)
class StoredVerdict:
    """A verdict with its rowid (the perceptual index key) and which key matched."""

    rowid: int
    verdict: Verdict
    own: bool
    match: str = "sha256"


def _stored_verdict(row: Sequence[Any], match: str = "sha256") -> StoredVerdict:
    """A row of `_VERDICT_COLUMNS` followed by `own`."""
    return StoredVerdict(row[0], verdict_from_row(row[:-1]), bool(row[-1]), match)


def _owner_only(path: Path) -> None:
    """Make the database and its -wal / -shm files readable and writable by this user only.

    They hold every decision and verdict, the worker token hashes and the peers' state, so the umask (often
    022: world-readable) must not decide. The file is created 0600 before SQLite opens it, so it never
    exists with a laxer mode; SQLite gives the -wal and -shm files it creates the database file's mode. Files
    left group- or world-accessible (an older version, a restored backup) lose those bits here."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for member in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(member.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(member, mode & 0o700)


class Store:
    """One SQLite file; a connection per thread; decision rows written in batches.

    `record_decision` only queues the row; `flush()` writes the queue in one transaction. The server
    flushes from a background task and on shutdown (`close()` flushes too), so a busy pict-rs endpoint
    pays one commit per batch, not per request."""

    FLUSH_AT = 512

    def __init__(self, path: str | Path, migrations: Sequence[Migration] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _owner_only(self.path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        # Bumped by every verdict change made through this Store: caches of decisions compare it.
        self.generation = 0
        self._migrations = list(MIGRATIONS if migrations is None else migrations)
        self.migrate()

    # -- connections -----------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of this thread's connection (for ad-hoc queries and other modules' tables)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite_utils.Database(self.conn)
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside one write transaction (BEGIN IMMEDIATE: writers queue at the
        start instead of failing half-way), committed at the end or rolled back on any exception."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- migrations ------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Run the migrations this file has not seen yet, each in its own transaction."""
        conn = self.conn
        current = self.schema_version
        if current > len(self._migrations):
            raise SchemaTooNew(f"{self.path}: schema version {current} is newer than this program "
                               f"({len(self._migrations)} migrations); upgrade verdict-node")
        for number, migration in enumerate(self._migrations[current:], start=current + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(migration.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- verdicts --------------------------------------------------------------------------------

    def insert_verdict(self, verdict: Verdict, document: Mapping[str, Any] | None, *, own: bool,
                       origin: str | None = None) -> tuple[int, bool]:
        """Store a verdict (idempotent on its id: the first origin stays). ``origin``: one of VERDICT_ORIGINS
        (default: own for own verdicts, push for others). Returns (rowid, inserted_now)."""
        origin = origin or ("own" if own else "push")
        if origin not in VERDICT_ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(VERDICT_ORIGINS)}, got {origin!r}")
        fp = verdict.fingerprint
        conn = self.conn
        cur = conn.execute(
            "INSERT OR IGNORE INTO verdicts (verdict_id, issuer, own, received_at, sha256, pixel_sha256, phash64, "
            "pdq256, preprocessing, scores, label, model_name, model_version, model_rules, published, supersedes, "
            "document, md5, origin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (verdict.id, verdict.issuer, int(own), time.time(), fp.sha256, fp.pixel_sha256, fp.phash64 or None,
             fp.pdq256, fp.preprocessing, json.dumps(dict(verdict.scores), sort_keys=True), verdict.label,
             verdict.model.name, verdict.model.version, verdict.model.rules, verdict.published, verdict.supersedes,
             json.dumps(document, sort_keys=True) if document is not None else None, fp.md5, origin))
        if cur.rowcount == 1:
            self.generation += 1
            return int(cur.lastrowid), True
        row = conn.execute("SELECT id FROM verdicts WHERE verdict_id = ?", (verdict.id,)).fetchone()
        return int(row[0]), False

    def find_exact(self, sha256: str, pixel_sha256: str | None) -> list[StoredVerdict]:
        """Active verdicts whose byte sha256 or pixel sha256 equals ours (a row matching both counts once,
        as a sha256 match)."""
        rows = self.conn.execute(
            f"SELECT {_VERDICT_COLUMNS}, own FROM verdicts WHERE retracted_at IS NULL AND "
            f"(sha256 = ? OR pixel_sha256 = ?)", (sha256, pixel_sha256 or "")).fetchall()
        return [_stored_verdict(row, "sha256" if row[3] == sha256 else "pixel_sha256") for row in rows]

    def find_exact_retracted(self, sha256: str, pixel_sha256: str | None,
                             limit: int = 10) -> list[tuple[StoredVerdict, str]]:
        """Retracted verdicts on these exact keys, with the recorded reason: they never count, but an answer
        that falls back to on_unavailable says that they matched and why they did not count."""
        rows = self.conn.execute(
            f"SELECT {_VERDICT_COLUMNS}, own, retract_reason FROM verdicts WHERE retracted_at IS NOT NULL AND "
            f"(sha256 = ? OR pixel_sha256 = ?) ORDER BY id DESC LIMIT ?", (sha256, pixel_sha256 or "", limit)).fetchall()
        return [(_stored_verdict(row[:-1], "sha256" if row[3] == sha256 else "pixel_sha256"),
                 row[-1] or "retracted") for row in rows]

    def verdict_origin(self, verdict_id: str) -> str | None:
        """How a stored verdict reached this node (see VERDICT_ORIGINS); None for rows stored before origins
        were recorded, or an unknown id."""
        row = self.conn.execute("SELECT origin, own FROM verdicts WHERE verdict_id = ?", (verdict_id,)).fetchone()
        if row is None:
            return None
        return row[0] or ("own" if row[1] else None)

    def find_by_bytes(self, sha256: str) -> tuple[list[StoredVerdict], bool]:
        """The fast path for bytes seen before, without computing their pixel key: verdicts on this sha256,
        plus verdicts on the pixel key that WE computed for these bytes (an own verdict's pixel_sha256).
        Returns (hits, complete): complete is True when an own verdict vouched for the pixel key, so the
        result equals `find_exact(sha256, pixel_sha256)` and the caller need not compute the pixel key."""
        rows = self.conn.execute(
            f"SELECT {_VERDICT_COLUMNS}, own FROM verdicts WHERE retracted_at IS NULL AND (sha256 = ?1 OR "
            f"pixel_sha256 IN (SELECT pixel_sha256 FROM verdicts WHERE sha256 = ?1 AND own = 1))",
            (sha256,)).fetchall()
        out = []
        complete = False
        for row in rows:
            exact = row[3] == sha256
            complete = complete or (exact and bool(row[-1]))
            out.append(_stored_verdict(row, "sha256" if exact else "pixel_sha256"))
        return out, complete

    def verdicts_by_rowid(self, rowids: Iterable[int]) -> dict[int, StoredVerdict]:
        """Active verdicts for index hits (rowids from HammingIndex)."""
        ids = list(dict.fromkeys(int(r) for r in rowids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(
            f"SELECT {_VERDICT_COLUMNS}, own FROM verdicts WHERE retracted_at IS NULL AND id IN ({marks})",
            ids).fetchall()
        return {row[0]: _stored_verdict(row) for row in rows}

    def get_verdict(self, verdict_id: str) -> StoredVerdict | None:
        row = self.conn.execute(f"SELECT {_VERDICT_COLUMNS}, own FROM verdicts WHERE verdict_id = ?",
                                (verdict_id,)).fetchone()
        return _stored_verdict(row) if row else None

    def verdict_document(self, verdict_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT document FROM verdicts WHERE verdict_id = ?", (verdict_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def active_perceptual(self) -> Iterator[tuple[int, str | None, str | None]]:
        """(rowid, phash64, pdq256) of every active verdict, to load the in-memory indexes at start."""
        yield from self.conn.execute(
            "SELECT id, phash64, pdq256 FROM verdicts WHERE retracted_at IS NULL "
            "AND (phash64 IS NOT NULL OR pdq256 IS NOT NULL)")

    def max_verdict_rowid(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM verdicts").fetchone()[0])

    def verdicts_after(self, rowid: int) -> list[tuple[int, str | None, str | None, bool]]:
        """(rowid, phash64, pdq256, retracted) of verdicts stored after `rowid` (by any process)."""
        return [(r[0], r[1], r[2], r[3] is not None) for r in self.conn.execute(
            "SELECT id, phash64, pdq256, retracted_at FROM verdicts WHERE id > ? ORDER BY id", (rowid,))]

    def retracted_since(self, when: float) -> list[int]:
        """Rowids of verdicts retracted at or after `when` (unix time), by any process."""
        return [r[0] for r in self.conn.execute("SELECT id FROM verdicts WHERE retracted_at >= ?", (when,))]

    def retract_verdict(self, verdict_id: str, reason: str) -> int | None:
        """Mark a verdict retracted; returns its rowid (to drop from the indexes) or None if unknown/already."""
        conn = self.conn
        row = conn.execute("SELECT id FROM verdicts WHERE verdict_id = ? AND retracted_at IS NULL",
                           (verdict_id,)).fetchone()
        if not row:
            return None
        conn.execute("UPDATE verdicts SET retracted_at = ?, retract_reason = ? WHERE id = ?",
                     (time.time(), reason, row[0]))
        self.generation += 1
        return int(row[0])

    def released(self, sha256: str, pixel_sha256: str | None) -> bool:
        """True when the admin released these bytes (or these pixels) as a false positive: the pict-rs hook
        asks this before inference, so a released image is not classified and published again. (The
        overrides table is written by `verdict-node release`.)"""
        return self.conn.execute(
            "SELECT 1 FROM sweep_overrides WHERE sha256 IN (?1, ?2) OR pixel_sha256 IN (?1, ?2) LIMIT 1",
            (sha256, pixel_sha256 or sha256)).fetchone() is not None

    def own_models(self) -> set[tuple[str, str]]:
        """(name, rules) of every model behind our own verdicts: their scores stay comparable with our
        thresholds even while that model is not loaded (weights missing, classifier none)."""
        return {(n, r) for n, r in self.conn.execute(
            "SELECT DISTINCT model_name, model_rules FROM verdicts WHERE own = 1")}

    # -- decisions -------------------------------------------------------------------------------

    def record_decision(self, *, source: str, decision: str, reason: str, origin: str,
                        fingerprint: Fingerprint | None = None, sha256: str | None = None,
                        pixel_sha256: str | None = None, source_key: str | None = None,
                        media_type: str | None = None, verdict_ids: Sequence[str] = (), inferred: bool = False,
                        elapsed_ms: float | None = None, verdict_origin: str | None = None,
                        media_flags: Mapping[str, Any] | None = None) -> None:
        """Queue one decision row (written by `flush`, at once when FLUSH_AT rows are pending)."""
        row = {
            "created_at": time.time(), "source": source, "source_key": source_key,
            "sha256": fingerprint.sha256 if fingerprint else sha256,
            "pixel_sha256": fingerprint.pixel_sha256 if fingerprint else pixel_sha256,
            "phash64": (fingerprint.phash64 or None) if fingerprint else None,
            "pdq256": fingerprint.pdq256 if fingerprint else None,
            "media_type": media_type, "decision": decision, "reason": reason, "origin": origin,
            "verdict_ids": json.dumps(list(verdict_ids)), "inferred": int(inferred), "elapsed_ms": elapsed_ms,
            "verdict_origin": verdict_origin,
            "media_flags": json.dumps(dict(media_flags), sort_keys=True) if media_flags is not None else None,
        }
        with self._lock:
            self._pending.append(row)
            full = len(self._pending) >= self.FLUSH_AT
        if full:
            self.flush()

    @property
    def pending_decisions(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write queued decision rows in one transaction; returns how many."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        columns = list(rows[0])
        sql = f"INSERT INTO decisions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, [tuple(r[c] for c in columns) for r in rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            with self._lock:
                self._pending[:0] = rows  # keep them for the next try
            raise
        return len(rows)

    def decisions(self, sha256: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Recent decision rows (newest first), optionally for one image."""
        where, params = ("WHERE sha256 = ?", [sha256]) if sha256 else ("", [])
        return list(self.db.query(f"SELECT * FROM decisions {where} ORDER BY id DESC LIMIT ?", [*params, limit]))

    # -- counts (healthz, CLI) -------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        conn = self.conn
        own, peers = conn.execute(
            "SELECT COALESCE(SUM(own), 0), COALESCE(SUM(1 - own), 0) FROM verdicts WHERE retracted_at IS NULL").fetchone()
        decisions = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] + len(self._pending)
        return {"own_verdicts": int(own), "peer_verdicts": int(peers), "decisions": int(decisions)}


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement keeps ';' inside literals/triggers whole)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
