"""Store: schema migrations, verdict queries, batched decision rows that survive a reopen."""
from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import threading

import pytest

from node.migrations import MIGRATIONS, Migration
from node.store import Store
from protocol.verdict import Fingerprint, ModelInfo, Verdict

MODEL = ModelInfo(name="tiny", version="1", rules="test")


def make_verdict(n: int, *, issuer: str = "https://a.example/actor", label: str = "safe",
                 phash: str | None = None, pixel: str | None = None) -> Verdict:
    fp = Fingerprint(sha256=f"{n:064x}", pixel_sha256=pixel or f"{n + 10_000:064x}",
                     phash64=phash or f"{n:016x}", preprocessing="p1", pdq256=None)
    return Verdict(id=f"{issuer}/verdicts/{n}", issuer=issuer, fingerprint=fp,
                   scores={"csam": 0.1 * (n % 10), "nsfw": 0.2}, label=label, model=MODEL,
                   published="2026-01-01T00:00:00Z")


def test_wal_and_schema_version(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.schema_version == len(MIGRATIONS)
    assert {"verdicts", "decisions", "peers", "outbox", "deliveries", "seen_activities"} <= set(store.db.table_names())
    store.close()


def test_appended_migration_runs_once_on_an_existing_database(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    extra = [*MIGRATIONS, Migration("later feature", "CREATE TABLE later (x INTEGER);\nINSERT INTO later VALUES (1);")]
    store = Store(path, migrations=extra)
    assert store.schema_version == len(MIGRATIONS) + 1
    store.close()
    store = Store(path, migrations=extra)  # reopening does not run it again
    assert store.conn.execute("SELECT COUNT(*) FROM later").fetchone()[0] == 1
    store.close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        Store(path)  # an older program refuses a newer schema instead of corrupting it


def test_failed_migration_rolls_back(tmp_path):
    path = tmp_path / "db.sqlite"
    broken = [*MIGRATIONS, Migration("broken", "CREATE TABLE t1 (x);\nTHIS IS NOT SQL;")]
    with pytest.raises(sqlite3.OperationalError):
        Store(path, migrations=broken)
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    assert "t1" not in store.db.table_names()
    store.close()


def test_verdict_roundtrip_exact_and_rowid_queries(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    v = make_verdict(7)
    rowid, inserted = store.insert_verdict(v, {"id": v.id, "proof": {"x": 1}}, own=True)
    assert inserted
    assert store.insert_verdict(v, None, own=True) == (rowid, False)  # idempotent on verdict id
    (hit,) = store.find_exact(v.fingerprint.sha256, "nothing")
    assert hit.verdict == v and hit.match == "sha256" and hit.own and hit.rowid == rowid
    (hit,) = store.find_exact("0" * 64 + "x", v.fingerprint.pixel_sha256)
    assert hit.match == "pixel_sha256"
    assert store.find_exact("nope", "nope") == []
    assert store.verdicts_by_rowid([rowid, rowid, 999])[rowid].verdict == v
    assert store.verdict_document(v.id)["proof"] == {"x": 1}
    assert list(store.active_perceptual()) == [(rowid, v.fingerprint.phash64, None)]
    assert store.retract_verdict(v.id, "false positive") == rowid
    assert store.retract_verdict(v.id, "again") is None
    assert store.find_exact(v.fingerprint.sha256, None) == []
    assert list(store.active_perceptual()) == []
    store.close()


def test_md5_is_stored_and_a_database_from_before_it_keeps_its_verdicts(tmp_path):
    """A database migrated before the md5 column existed gains it; its old verdicts read back without md5."""
    path = tmp_path / "db.sqlite"
    before = MIGRATIONS[:[m.name for m in MIGRATIONS].index("fingerprint md5")]
    store = Store(path, migrations=before)
    old = make_verdict(1)
    store.conn.execute("INSERT INTO verdicts (verdict_id, issuer, received_at, sha256, pixel_sha256, scores, label, "
                       "model_name, model_version, model_rules, published) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (old.id, old.issuer, 0.0, old.fingerprint.sha256, old.fingerprint.pixel_sha256, "{}",
                        "safe", "tiny", "1", "test", old.published))
    store.close()
    store = Store(path)
    (hit,) = store.find_exact(old.fingerprint.sha256, None)
    assert hit.verdict.fingerprint.md5 is None
    new = make_verdict(2)
    new = dataclasses.replace(new, fingerprint=dataclasses.replace(new.fingerprint, md5="ab" * 16))
    store.insert_verdict(new, None, own=True)
    (hit,) = store.find_exact(new.fingerprint.sha256, None)
    assert hit.verdict == new and hit.verdict.fingerprint.md5 == "ab" * 16
    store.close()


def test_decisions_are_batched_and_flushed_on_close(tmp_path):
    path = tmp_path / "db.sqlite"
    store = Store(path)
    for i in range(10):
        store.record_decision(source="pictrs", decision="accept", reason="test", origin="cache",
                              sha256=f"{i:064x}", verdict_ids=["v1"], elapsed_ms=1.0)
    assert store.pending_decisions == 10
    assert store.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0  # not yet written
    store.close()
    store = Store(path)
    rows = store.decisions(limit=100)
    assert len(rows) == 10 and rows[0]["verdict_ids"] == '["v1"]'
    assert store.counts()["decisions"] == 10
    store.close()


def test_each_thread_gets_its_own_connection(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.insert_verdict(make_verdict(1), None, own=False)
    seen = []

    def reader():
        seen.append((store.conn is not None, len(store.find_exact(f"{1:064x}", None))))

    t = threading.Thread(target=reader)
    t.start()
    t.join()
    assert seen == [(True, 1)]
    assert len(store._connections) == 2
    assert store.counts() == {"own_verdicts": 0, "peer_verdicts": 1, "decisions": 0}
    store.close()


def test_find_by_bytes_is_complete_only_when_an_own_verdict_vouches_for_the_pixel_key(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    own = make_verdict(1, issuer="https://me.example/actor", pixel="p" * 64)
    # A peer's verdict on other bytes with the same pixels (e.g. before exiftool), and an unrelated one.
    twin = make_verdict(2, issuer="https://peer.example/actor", pixel="p" * 64, label="csam")
    make_other = make_verdict(3, issuer="https://peer.example/actor")
    for v, is_own in ((own, True), (twin, False), (make_other, False)):
        store.insert_verdict(v, None, own=is_own)
    hits, complete = store.find_by_bytes(own.fingerprint.sha256)
    assert complete
    assert {(h.verdict.id, h.match) for h in hits} == {(own.id, "sha256"), (twin.id, "pixel_sha256")}
    assert {h.verdict.id for h in hits} == {h.verdict.id for h in store.find_exact(own.fingerprint.sha256, "p" * 64)}
    hits, complete = store.find_by_bytes(twin.fingerprint.sha256)  # only a peer's word for these bytes
    assert not complete and [h.verdict.id for h in hits] == [twin.id]
    assert store.find_by_bytes("f" * 64) == ([], False)
    store.close()


def test_database_files_are_owner_only_and_lax_modes_are_tightened_at_open(tmp_path):
    path = tmp_path / "db.sqlite"
    members = [path, tmp_path / "db.sqlite-wal", tmp_path / "db.sqlite-shm"]
    old_umask = os.umask(0o022)  # the common default: new files world-readable
    try:
        store = Store(path)
        store.insert_verdict(make_verdict(1), None, own=True)  # a write: the -wal and -shm files exist now
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in members} == {p.name: 0o600 for p in members}

        for p in members:  # as an older version (or a restored backup) left them
            os.chmod(p, 0o644)
        again = Store(path)
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in members} == {p.name: 0o600 for p in members}
        again.close()
        store.close()
    finally:
        os.umask(old_umask)
