"""The schema of the node's database, as an append-only list of migrations.

The database records how many have run (`PRAGMA user_version`) and node.store runs the rest in order at
open, each in one transaction. To change the schema, APPEND a new `Migration`; never edit one that has
shipped: databases in the field have run it as it was.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: a name (for humans) and SQL run in one transaction."""

    name: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration("initial schema", """
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,                 -- rowid: the key of the in-memory perceptual indexes
    verdict_id TEXT NOT NULL UNIQUE,        -- the AS2 id (URL) of the verdict
    issuer TEXT NOT NULL,                   -- actor id of the node that signed it
    own INTEGER NOT NULL DEFAULT 0,         -- 1 when this node issued it
    received_at REAL NOT NULL,              -- unix time we stored it
    sha256 TEXT NOT NULL,
    pixel_sha256 TEXT NOT NULL,
    phash64 TEXT,
    pdq256 TEXT,
    preprocessing TEXT,
    scores TEXT NOT NULL,                   -- JSON {category: score}
    label TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_rules TEXT NOT NULL,
    published TEXT NOT NULL,
    supersedes TEXT,
    retracted_at REAL,                      -- set when the issuer retracts it (or an admin does)
    retract_reason TEXT,
    document TEXT                           -- the signed AS2 document, as received / issued
);
CREATE INDEX verdicts_sha256 ON verdicts(sha256);
CREATE INDEX verdicts_pixel_sha256 ON verdicts(pixel_sha256);
CREATE INDEX verdicts_issuer ON verdicts(issuer);

CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    source TEXT NOT NULL,                   -- pictrs | sweep | check | ...
    source_key TEXT,                        -- e.g. the storage key of a sweep item
    sha256 TEXT,
    pixel_sha256 TEXT,
    phash64 TEXT,
    pdq256 TEXT,
    media_type TEXT,
    decision TEXT NOT NULL,                 -- accept | reject (pict-rs) or block | allow | unknown
    reason TEXT NOT NULL,
    origin TEXT NOT NULL,                   -- cache | peer | inference | unavailable | media
    verdict_ids TEXT NOT NULL DEFAULT '[]', -- JSON list of the verdicts used
    inferred INTEGER NOT NULL DEFAULT 0,    -- 1 when inference ran for this request
    elapsed_ms REAL
);
CREATE INDEX decisions_sha256 ON decisions(sha256);
CREATE INDEX decisions_created_at ON decisions(created_at);

CREATE TABLE peers (
    actor TEXT PRIMARY KEY,
    inbox TEXT,
    shared_inbox TEXT,
    public_key_pem TEXT,                    -- RSA key for HTTP signatures
    ed25519_multikey TEXT,                  -- assertionMethod key for verdict proofs
    key_fingerprint TEXT,
    trust TEXT,                             -- full | block-only | observe
    following_state TEXT,                   -- we follow them: none | pending | accepted | rejected
    follower_state TEXT,                    -- they follow us: none | pending | accepted | rejected
    actor_document TEXT,
    updated_at REAL
);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the cursor (FIRES-style change log): never reused
    activity_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    object_id TEXT,
    audience TEXT,                          -- JSON list, or null for all approved followers
    created_at REAL NOT NULL,
    document TEXT NOT NULL
);

CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    outbox_seq INTEGER NOT NULL REFERENCES outbox(seq),
    inbox TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (outbox_seq, inbox)
);
CREATE INDEX deliveries_pending ON deliveries(delivered_at, next_attempt_at);

CREATE TABLE seen_activities (
    activity_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL
);
"""),
    # Remote GPU workers (node/worker_registry.py): one row per worker; only the token's sha256 is kept.
    Migration("remote workers", """
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_seen_at REAL,                      -- last authenticated request (unix time)
    model TEXT,                             -- JSON ModelInfo the worker last reported
    leased_jobs INTEGER NOT NULL DEFAULT 0, -- images it holds now (as of the node's last update)
    jobs_done INTEGER NOT NULL DEFAULT 0,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_per_s REAL,                      -- frames returned per second over the last minute
    last_refusal TEXT                       -- why the node last refused it (model mismatch)
);
"""),
    # Federation (node/federation.py): follow ids, backfill cursors, retractions that arrive before
    # (or without) their verdict, the outbox collector's cursor, and the per-inbox delivery order.
    Migration("federation state", """
ALTER TABLE peers ADD COLUMN their_follow_id TEXT;      -- the Follow they sent us (Accept/Reject name it)
ALTER TABLE peers ADD COLUMN our_follow_id TEXT;        -- the Follow we sent them
ALTER TABLE peers ADD COLUMN backfill_cursor TEXT;      -- last outbox seq of theirs we have read
CREATE TABLE retractions (
    verdict_id TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    reason TEXT,
    retracted_at REAL NOT NULL,
    activity_id TEXT
);
CREATE TABLE federation_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE INDEX deliveries_inbox ON deliveries(inbox, delivered_at, outbox_seq);
CREATE INDEX verdicts_own ON verdicts(own, id);
"""),
    # Storage sweeps (node/sweeps/): runs with their listing cursor, one row per
    # storage item (its stat at decision time, so a later sweep skips it on a stat alone), and the
    # admin's false-positive overrides (released items are never quarantined again).
    Migration("storage sweeps", """
CREATE TABLE sweep_runs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,                   -- source identity (URL without secrets)
    url TEXT NOT NULL,                      -- URL to reopen it (secret query parameters removed)
    mode TEXT NOT NULL,                     -- all | since | daemon
    action TEXT NOT NULL,                   -- quarantine | delete | dry-run
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    cursor TEXT,                            -- the source's checkpoint after the last fully processed batch
    stats TEXT                              -- JSON counters
);
CREATE INDEX sweep_runs_source ON sweep_runs(source, mode, finished_at);
CREATE TABLE sweep_items (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER,
    mtime REAL,
    etag TEXT,
    run_id INTEGER,
    decided_at REAL NOT NULL,
    outcome TEXT NOT NULL,                  -- block | allow | unknown | video | unreadable | error
    origin TEXT,                            -- cache | peer | inference | media | unavailable | override | read
    reason TEXT,
    sha256 TEXT,
    pixel_sha256 TEXT,
    phash64 TEXT,
    pdq256 TEXT,
    scores TEXT,                            -- JSON
    verdict_ids TEXT,                       -- JSON list
    action TEXT NOT NULL DEFAULT 'none',    -- none | quarantining | quarantined | deleting | deleted | dry-run | released | failed
    location TEXT,                          -- where a quarantined item is (for release)
    action_error TEXT,
    PRIMARY KEY (source, key)
);
CREATE INDEX sweep_items_outcome ON sweep_items(outcome, decided_at);
CREATE INDEX sweep_items_run ON sweep_items(run_id, outcome);
CREATE INDEX sweep_items_location ON sweep_items(location);
CREATE TABLE sweep_overrides (
    sha256 TEXT PRIMARY KEY,
    pixel_sha256 TEXT,
    created_at REAL NOT NULL,
    reason TEXT,
    source TEXT,
    key TEXT
);
CREATE INDEX sweep_overrides_pixel ON sweep_overrides(pixel_sha256);
"""),
    # Another process (a CLI retraction, a sweep) may change verdicts under a running server: it finds
    # them by rowid (new ones) and by retracted_at (retracted ones), see Node.sync_with_store.
    Migration("verdicts retracted_at index", """
CREATE INDEX verdicts_retracted_at ON verdicts(retracted_at);
"""),
    # Federation: find a peer's deliveries that are backing off without scanning its whole backlog.
    Migration("deliveries retry index", """
CREATE INDEX deliveries_retry ON deliveries(inbox, next_attempt_at);
"""),
    # A pinned peer's RSA key (HTTP signatures) is bound to the first actor document that carried the
    # pinned Ed25519 key; a document with another RSA key is refused until the admin forgets the binding.
    Migration("peer key bindings", """
ALTER TABLE peers ADD COLUMN bound_rsa_fingerprint TEXT;  -- the RSA key bound under the pin below
ALTER TABLE peers ADD COLUMN bound_under_pin TEXT;        -- the Ed25519 pin in force when it was bound
ALTER TABLE peers ADD COLUMN bound_at REAL;
"""),
    # How each verdict reached this node (own, push, backfill, lookup), and per decision the origin of the
    # deciding verdict and the media flags (trailing data, truncation, animation): answers and records
    # tell a lookup from a pushed verdict, and show what was glued to an image.
    Migration("verdict origins and media flags", """
ALTER TABLE verdicts ADD COLUMN origin TEXT;              -- own | push | backfill | lookup (null: before this)
ALTER TABLE decisions ADD COLUMN verdict_origin TEXT;     -- the deciding verdict's origin, as the answer says
ALTER TABLE decisions ADD COLUMN media_flags TEXT;        -- JSON {trailing_bytes, truncated, animated}
"""),
    # The md5 of the bytes joins the fingerprint (it is what hash lists carry); older verdicts have none.
    Migration("fingerprint md5", """
ALTER TABLE verdicts ADD COLUMN md5 TEXT;
"""),
    # Hash banks (node/banks/): imported lists of known-bad hashes, never federated or exported.
    Migration("hash banks", """
CREATE TABLE banks (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE,                       -- NULL unless state is ready: only ready banks are matched
    state TEXT NOT NULL,                    -- importing | ready | deleting
    importer_pid INTEGER,                   -- the importing process (a dead one's leftovers are deleted)
    source TEXT,                            -- the file it was imported from
    format TEXT NOT NULL,                   -- te | csv
    imported_at REAL NOT NULL,
    counts TEXT NOT NULL DEFAULT '{}',      -- JSON {kind: entries}
    first_entry INTEGER,                    -- its entries lie among the bank_entries ids first_entry..last_entry
    last_entry INTEGER
);
CREATE TABLE bank_entries (
    id INTEGER PRIMARY KEY,                 -- the key of the in-memory perceptual indexes
    bank_id INTEGER NOT NULL,               -- banks.id (deleted with their bank, by id range)
    kind TEXT NOT NULL,                     -- md5 | sha256 | pdq | phash
    hash BLOB NOT NULL,                     -- the raw bytes (16, 32, 32 or 8)
    note TEXT
);
CREATE UNIQUE INDEX bank_entries_hash ON bank_entries(hash, kind, bank_id);
"""),
    # The exchange feed (node/banks/exchange.py) pages exchange_log, which the triggers fill for every own
    # csam verdict and its retraction, whichever process stored it; only token hashes are kept.
    Migration("exchange feed", """
CREATE TABLE exchange_tokens (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_used_at REAL
);
CREATE TABLE exchange_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the feed's cursor: never reused
    verdict_rowid INTEGER NOT NULL,
    change TEXT NOT NULL,                   -- add | delete
    logged_at REAL NOT NULL
);
CREATE TRIGGER exchange_log_add AFTER INSERT ON verdicts
WHEN NEW.own = 1 AND NEW.label = 'csam' AND NEW.retracted_at IS NULL
BEGIN
    INSERT INTO exchange_log (verdict_rowid, change, logged_at)
    VALUES (NEW.id, 'add', (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER exchange_log_delete AFTER UPDATE OF retracted_at ON verdicts
WHEN NEW.own = 1 AND NEW.label = 'csam' AND OLD.retracted_at IS NULL AND NEW.retracted_at IS NOT NULL
BEGIN
    INSERT INTO exchange_log (verdict_rowid, change, logged_at)
    VALUES (NEW.id, 'delete', (julianday('now') - 2440587.5) * 86400.0);
END;
INSERT INTO exchange_log (verdict_rowid, change, logged_at)
    SELECT id, 'add', received_at FROM verdicts
    WHERE own = 1 AND label = 'csam' AND retracted_at IS NULL ORDER BY id;
"""),
    # Evidence records (node.evidence): one per confirmed positive, what a report to the authorities needs
    # without the image itself. `key` is '' rather than NULL so that UNIQUE holds for hook rejections too.
    Migration("evidence records", """
CREATE TABLE evidence (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    sha256 TEXT NOT NULL,
    md5 TEXT,
    pixel_sha256 TEXT,
    pdq256 TEXT,
    phash64 TEXT,
    size INTEGER,
    media_type TEXT,
    source TEXT NOT NULL,                   -- pictrs (the hook) | a sweep source's identity | peer
    key TEXT NOT NULL DEFAULT '',           -- storage key or pict-rs alias, '' when unknown
    location TEXT,                          -- where the quarantined file is kept
    stored_at REAL,                         -- when the node first met these bytes there
    decision TEXT NOT NULL,                 -- JSON: outcome, reason, origin, scores, verdicts used
    attribution TEXT,                       -- JSON: node.hooks.Attribution.details, when looked up
    attributed_at REAL,
    reviewer TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    review_note TEXT NOT NULL DEFAULT '',
    retain_until REAL NOT NULL,
    UNIQUE (sha256, source, key)
);
CREATE INDEX evidence_sha256 ON evidence(sha256);
"""),
    # Attribution (node.attribution): what pict-rs, Lemmy and Mastodon said of an image, cached with the time
    # it was looked up; the explicit admin actions (Lemmy purges) and their answers; and how far the
    # background follower of new positives has read.
    Migration("attribution cache", """
CREATE TABLE attribution_cache (
    key TEXT PRIMARY KEY,                   -- sha256|source|storage key|search_text flag
    sha256 TEXT NOT NULL,
    found INTEGER NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,                  -- JSON: node.hooks.Attribution.details
    looked_up_at REAL NOT NULL
);
CREATE INDEX attribution_cache_sha256 ON attribution_cache(sha256);
CREATE TABLE attribution_actions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,                    -- who asked (admin account or OS user)
    kind TEXT NOT NULL,                     -- post | comment | person | image
    target TEXT NOT NULL,                   -- Lemmy's id, or the image's alias
    reason TEXT NOT NULL,
    ok INTEGER NOT NULL,
    answer TEXT NOT NULL                    -- the one line saying what Lemmy answered
);
CREATE TABLE attribution_progress (
    name TEXT PRIMARY KEY,                  -- decisions | sweep_items
    position REAL NOT NULL
);
"""),
    # The review console (node/admin/): accounts (argon2id hashes only), sessions (token hashes only, with
    # their CSRF token), the audit log of every admin action and reveal, and the reviews that take an item
    # out of the queue. `item` is the queue's reference of the item (node/admin/queue.py).
    Migration("review console", """
CREATE TABLE admin_accounts (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,            -- argon2id, PHC string
    created_at REAL NOT NULL,
    must_change INTEGER NOT NULL DEFAULT 1, -- 1 while the one-time password printed by `admin add` is in use
    last_login_at REAL
);
CREATE TABLE admin_sessions (
    token_sha256 TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES admin_accounts(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    client TEXT
);
CREATE INDEX admin_sessions_account ON admin_sessions(account);
CREATE TABLE admin_audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,                    -- the account, or the name tried at a failed login
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL,
    client TEXT
);
CREATE INDEX admin_audit_at ON admin_audit(at);
CREATE TABLE admin_reviews (
    item TEXT PRIMARY KEY,
    sha256 TEXT,
    decision TEXT NOT NULL,                 -- confirmed | released | deleted | retracted-peer
    reviewer TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
"""),
]
