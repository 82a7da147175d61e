"""What federation remembers, in the node's database: who follows whom (the ``peers`` table), actor
documents and key bindings, activity ids seen (idempotent inbox), retractions, the outbox log and the
collector's cursor. Every federation SQL statement outside the delivery queue lives here, so the rest of
the package reads as what it does, not as queries.

Everything here reads and writes the database, not process memory: CLI commands (approve, retract) and the
server see the same state, and the server polls the tables for what the commands queued.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Iterator, Sequence

from node.store import Store

#: Outbox entries of type Verdict hold one signed verdict of ours; the others hold a whole activity.
VERDICT_ENTRY = "Verdict"
#: Types whose entries form the public change log (pages); Accept/Reject/Follow/Undo go to one peer only.
LOG_TYPES = (VERDICT_ENTRY, "Delete")
#: Follow states, both directions: none | pending | accepted | rejected.
NONE = "none"


class FederationRecords:
    """Queries of one Store, named for what they mean."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def conn(self) -> sqlite3.Connection:
        return self.store.conn

    # -- follow states ---------------------------------------------------------------------------------

    def states(self, actor: str) -> tuple[str, str]:
        """(they follow us, we follow them)."""
        row = self.conn.execute("SELECT follower_state, following_state FROM peers WHERE actor = ?",
                                (actor,)).fetchone()
        return (row[0] or NONE, row[1] or NONE) if row else (NONE, NONE)

    def peer_row(self, actor: str) -> dict[str, Any] | None:
        rows = list(self.store.db.query("SELECT * FROM peers WHERE actor = ?", [actor]))
        return rows[0] if rows else None

    def ensure_listed(self, actor: str, trust: str) -> None:
        """A row for a peers.yaml entry, with its trust level, before anything else runs."""
        self.conn.execute("INSERT INTO peers (actor, trust, following_state, follower_state, updated_at) "
                          "VALUES (?, ?, 'none', 'none', ?) ON CONFLICT(actor) DO UPDATE SET trust = excluded.trust",
                          (actor, trust, time.time()))

    def set_follower(self, conn: sqlite3.Connection, actor: str, state: str, follow_id: str | None) -> None:
        conn.execute("UPDATE peers SET follower_state = ?, their_follow_id = ?, updated_at = ? WHERE actor = ?",
                     (state, follow_id, time.time(), actor))

    def set_follower_state(self, conn: sqlite3.Connection, actor: str, state: str) -> None:
        conn.execute("UPDATE peers SET follower_state = ?, updated_at = ? WHERE actor = ?", (state, time.time(), actor))

    def our_follow(self, actor: str) -> tuple[str | None, str]:
        """(id of the Follow we sent, following state)."""
        row = self.conn.execute("SELECT our_follow_id, following_state FROM peers WHERE actor = ?",
                                (actor,)).fetchone()
        return (row[0], row[1] or NONE) if row else (None, NONE)

    def our_follows_among(self, seqs: Sequence[int]) -> list[str]:
        """Actors whose pending Follow from us is among these outbox entries."""
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        return [row[0] for row in self.conn.execute(
            f"SELECT p.actor FROM outbox o JOIN peers p ON p.our_follow_id = o.activity_id "
            f"WHERE o.seq IN ({marks}) AND o.type = 'Follow' AND p.following_state = 'pending'", list(seqs))]

    def their_follow_id(self, actor: str) -> str | None:
        row = self.conn.execute("SELECT their_follow_id FROM peers WHERE actor = ?", (actor,)).fetchone()
        return row[0] if row else None

    def set_following(self, conn: sqlite3.Connection, actor: str, state: str, follow_id: str | None = None) -> None:
        if follow_id is None:
            conn.execute("UPDATE peers SET following_state = ?, updated_at = ? WHERE actor = ?",
                         (state, time.time(), actor))
        else:
            conn.execute("UPDATE peers SET following_state = ?, our_follow_id = ?, updated_at = ? WHERE actor = ?",
                         (state, follow_id, time.time(), actor))

    def forget_follows(self, conn: sqlite3.Connection, actor: str) -> None:
        """Both directions ended (``peers remove``): the next follow starts from scratch."""
        conn.execute("UPDATE peers SET follower_state = 'none', following_state = 'none', their_follow_id = NULL, "
                     "our_follow_id = NULL, backfill_cursor = NULL, updated_at = ? WHERE actor = ?",
                     (time.time(), actor))

    def approved_follower_inboxes(self, conn: sqlite3.Connection | None = None) -> list[str]:
        return [row[0] for row in (conn or self.conn).execute(
            "SELECT DISTINCT inbox FROM peers WHERE follower_state = 'accepted' AND inbox IS NOT NULL")]

    def peer_listing(self) -> dict[str, dict[str, Any]]:
        """Per actor: follow states, pins and the delivery backlog, for ``peers list``."""
        return {r["actor"]: r for r in self.store.db.query(
            "SELECT p.actor, p.inbox, p.follower_state, p.following_state, p.key_fingerprint, p.backfill_cursor, "
            "p.bound_rsa_fingerprint, "
            "(SELECT COUNT(*) FROM deliveries d WHERE d.inbox = p.inbox AND d.delivered_at IS NULL) AS queued, "
            "(SELECT last_error FROM deliveries d WHERE d.inbox = p.inbox AND d.last_error IS NOT NULL "
            " ORDER BY d.id DESC LIMIT 1) AS last_error FROM peers p")}

    # -- actor documents and key bindings --------------------------------------------------------------

    def actor_document(self, actor: str) -> tuple[str | None, float] | None:
        """(the cached document's JSON or None when forgotten, when it was fetched); None: no row."""
        row = self.conn.execute("SELECT actor_document, updated_at FROM peers WHERE actor = ?", (actor,)).fetchone()
        return (row[0], row[1] or 0.0) if row else None

    def save_actor(self, actor: str, inbox: str, shared_inbox: str | None, rsa_pem: str | None,
                   ed25519_multikey: str | None, ed25519_fingerprint: str | None, document: Any,
                   fetched_at: float) -> None:
        self.conn.execute(
            "INSERT INTO peers (actor, inbox, shared_inbox, public_key_pem, ed25519_multikey, key_fingerprint, "
            "actor_document, updated_at, following_state, follower_state) VALUES (?,?,?,?,?,?,?,?, 'none', 'none') "
            "ON CONFLICT(actor) DO UPDATE SET inbox=excluded.inbox, shared_inbox=excluded.shared_inbox, "
            "public_key_pem=excluded.public_key_pem, ed25519_multikey=excluded.ed25519_multikey, "
            "key_fingerprint=excluded.key_fingerprint, actor_document=excluded.actor_document, "
            "updated_at=excluded.updated_at",
            (actor, inbox, shared_inbox, rsa_pem, ed25519_multikey, ed25519_fingerprint,
             json.dumps(document, separators=(",", ":")), fetched_at))

    def bound_rsa(self, actor: str) -> tuple[str | None, str | None]:
        """(bound RSA fingerprint, the Ed25519 pin it was bound under)."""
        row = self.conn.execute("SELECT bound_rsa_fingerprint, bound_under_pin FROM peers WHERE actor = ?",
                                (actor,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def bind_rsa(self, actor: str, rsa_fingerprint: str, pin: str) -> None:
        self.conn.execute("UPDATE peers SET bound_rsa_fingerprint = ?, bound_under_pin = ?, bound_at = ? "
                          "WHERE actor = ?", (rsa_fingerprint, pin, time.time(), actor))

    def forget_key(self, conn: sqlite3.Connection, actor: str) -> None:
        """Drop the bound RSA key and the cached document: the next document that carries the pin binds anew."""
        conn.execute("UPDATE peers SET bound_rsa_fingerprint = NULL, bound_under_pin = NULL, bound_at = NULL, "
                     "actor_document = NULL WHERE actor = ?", (actor,))

    # -- activity ids (idempotent inbox) ---------------------------------------------------------------

    def seen(self, activity_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM seen_activities WHERE activity_id = ?",
                                 (activity_id,)).fetchone() is not None

    def mark_seen(self, activity_id: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO seen_activities (activity_id, received_at) VALUES (?, ?)",
                          (activity_id, time.time()))

    def forget_seen_before(self, horizon: float) -> int:
        return self.conn.execute("DELETE FROM seen_activities WHERE received_at < ?", (horizon,)).rowcount

    # -- retractions -------------------------------------------------------------------------------------

    def retraction_reason(self, verdict_id: str, conn: sqlite3.Connection | None = None) -> str | None:
        """The recorded reason when the verdict was retracted (its Delete may arrive before it), else None."""
        row = (conn or self.conn).execute("SELECT reason FROM retractions WHERE verdict_id = ?", (verdict_id,)).fetchone()
        return row[0] if row else None

    def is_retracted(self, verdict_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM retractions WHERE verdict_id = ?", (verdict_id,)).fetchone() is not None

    def record_retraction(self, verdict_id: str, issuer: str, reason: str, activity_id: str | None,
                          conn: sqlite3.Connection | None = None) -> bool:
        """Remember a retraction (it may arrive before its verdict, or without it); False when it was
        already recorded (a Delete read again by a backfill is not news)."""
        return (conn or self.conn).execute(
            "INSERT OR IGNORE INTO retractions (verdict_id, issuer, reason, retracted_at, activity_id) "
            "VALUES (?,?,?,?,?)", (verdict_id, issuer, reason, time.time(), activity_id)).rowcount == 1

    # -- the outbox log and its collector ----------------------------------------------------------------

    def state(self, key: str, default: str) -> str:
        row = self.conn.execute("SELECT value FROM federation_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: str, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute("INSERT INTO federation_state (key, value) VALUES (?, ?) "
                                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def append_own_verdicts(self, conn: sqlite3.Connection, after_rowid: int, limit: int) -> tuple[int | None, int]:
        """Copy own verdicts stored after ``after_rowid`` (at most ``limit``) into the outbox log, as stored
        (no JSON work: this runs per verdict), and queue them for every approved follower. Returns (the last
        rowid taken or None when there was nothing, entries appended)."""
        last = conn.execute("SELECT MAX(id) FROM (SELECT id FROM verdicts WHERE own = 1 AND id > ? "
                            "ORDER BY id LIMIT ?)", (after_rowid, limit)).fetchone()[0]
        if last is None:
            return None, 0
        now = time.time()
        seq_before = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        added = conn.execute(
            "INSERT INTO outbox (activity_id, type, object_id, audience, created_at, document) "
            "SELECT verdict_id || '/create', ?, verdict_id, NULL, ?, document FROM verdicts "
            "WHERE own = 1 AND id > ? AND id <= ? AND document IS NOT NULL ORDER BY id",
            (VERDICT_ENTRY, now, after_rowid, last)).rowcount
        conn.execute(
            "INSERT OR IGNORE INTO deliveries (outbox_seq, inbox, attempts, next_attempt_at) "
            "SELECT o.seq, p.inbox, 0, ? FROM outbox o JOIN peers p ON p.follower_state = 'accepted' "
            "AND p.inbox IS NOT NULL WHERE o.seq > ? ORDER BY o.seq", (now, seq_before))
        return last, added

    def last_seq(self) -> int:
        """The highest outbox seq (log entries and the answers addressed to one peer alike)."""
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])

    def log_page(self, since: int, size: int, types: Sequence[str] = LOG_TYPES,
                 upto: int | None = None) -> list[tuple[int, str, str]]:
        """(seq, type, document) of public log entries of ``types`` after ``since`` (and at most ``upto``),
        oldest first."""
        return self.conn.execute(
            f"SELECT seq, type, document FROM outbox WHERE seq > ? AND seq <= ? AND audience IS NULL "
            f"AND type IN ({','.join('?' * len(types))}) ORDER BY seq LIMIT ?",
            (since, upto if upto is not None else 2 ** 62, *types, size)).fetchall()

    def log_size(self) -> int:
        return self.conn.execute(
            f"SELECT COUNT(*) FROM outbox WHERE audience IS NULL AND type IN ({','.join('?' * len(LOG_TYPES))})",
            LOG_TYPES).fetchone()[0]

    # -- backfill cursors --------------------------------------------------------------------------------

    def backfill_cursor(self, actor: str) -> int:
        row = self.conn.execute("SELECT backfill_cursor FROM peers WHERE actor = ?", (actor,)).fetchone()
        return int(row[0]) if row and row[0] else 0

    def set_backfill_cursor(self, actor: str, cursor: int) -> None:
        """Move the cursor forward only: a push and a backfill may both advance it, in either order, and
        each says "everything up to here is held"."""
        self.conn.execute("UPDATE peers SET backfill_cursor = ? WHERE actor = ? AND "
                          "COALESCE(CAST(backfill_cursor AS INTEGER), 0) < ?", (str(cursor), actor, cursor))

    # -- retraction cursors (issuers whose verdicts we hold without following them) --------------------

    _DELETES_CURSOR = "deletes_cursor "

    def public_run_start(self, seq: int) -> int:
        """The first seq after the public log entry before ``seq`` (1 when there is none). A pushed batch is
        named from there, so the entries only one follower saw (an Accept, a Follow) between two batches do
        not look like a gap in the log to the others."""
        return self.conn.execute(
            f"SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox WHERE seq < ? AND audience IS NULL "
            f"AND type IN ({','.join('?' * len(LOG_TYPES))})", (seq, *LOG_TYPES)).fetchone()[0]

    def holds_lookup_verdicts(self, issuer: str) -> bool:
        """Do we hold an active verdict of ``issuer`` that reached us by lookup (the ones whose retractions
        nothing else would bring)?"""
        return self.conn.execute("SELECT 1 FROM verdicts WHERE issuer = ? AND origin = 'lookup' "
                                 "AND retracted_at IS NULL LIMIT 1", (issuer,)).fetchone() is not None

    def deletes_cursor(self, issuer: str) -> int | None:
        """Where we are in the issuer's Deletes; None when we do not read them."""
        value = self.state(self._DELETES_CURSOR + issuer, "")
        return int(value) if value.isdigit() else None

    def set_deletes_cursor(self, issuer: str, cursor: int) -> None:
        self.set_state(self._DELETES_CURSOR + issuer, str(cursor))

    def watched_issuers(self) -> list[str]:
        """Issuers whose Deletes we read (each has a cursor, so the list survives a restart)."""
        return [row[0][len(self._DELETES_CURSOR):] for row in self.conn.execute(
            "SELECT key FROM federation_state WHERE key LIKE ? ORDER BY key", (self._DELETES_CURSOR + "%",))]

    # -- verdicts as the `verdicts` command lists them ---------------------------------------------------

    def list_verdicts(self, *, issuer: str | None, own: bool | None, retracted: bool,
                      limit: int) -> Iterator[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if own is not None:
            where.append("own = ?")
            params.append(int(own))
        if issuer:
            where.append("issuer = ?")
            params.append(issuer)
        where.append("retracted_at IS NOT NULL" if retracted else "retracted_at IS NULL")
        rows: Sequence[dict[str, Any]] = list(self.store.db.query(
            f"SELECT verdict_id, issuer, own, label, scores, model_name, published, sha256, phash64, retracted_at, "
            f"retract_reason FROM verdicts WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", [*params, limit]))
        for r in rows:
            yield {**r, "own": bool(r["own"]), "scores": json.loads(r["scores"])}
