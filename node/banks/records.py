"""The banks' SQL: banks and their entries, exchange tokens, the exchange log (tables in node.store's
migrations). Everything the package writes or reads in the database is here.

An import is one transaction: a killed or refused import leaves nothing behind, and ``--replace`` swaps the
old entries for the new ones at its commit, so a reader sees either list, never a mix. Duplicates within a
file are left out by grouping (one entry per kind and hash, whatever the file repeats). Entries of one import
have consecutive ids (no other writer runs inside a BEGIN IMMEDIATE transaction), which lets a bank be loaded
and deleted by id range instead of scanning the whole table.
"""
from __future__ import annotations

import json
import re
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from node.banks.formats import KIND_BYTES, Entry
from node.store import Store

BANK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BATCH = 10_000


@dataclass(frozen=True)
class BankInfo:
    """One bank as `banks list` shows it and the matcher loads it."""

    id: int
    name: str
    source: str | None
    format: str
    imported_at: float
    counts: dict[str, int]
    first_entry: int | None
    last_entry: int | None

    @property
    def entries(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ImportCounts:
    """What one import stored: entries by kind, and duplicates (within the file) left out."""

    counts: dict[str, int]
    duplicates: int

    @property
    def entries(self) -> int:
        return sum(self.counts.values())


class ImportRefused(Exception):
    """The import did not happen (a bad name, an existing bank without --replace, bad lines): nothing
    was written."""


def check_bank_name(name: str) -> None:
    if not BANK_NAME.match(name):
        raise ImportRefused(f"bank name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")


class BankRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- banks ----------------------------------------------------------------------------------

    def import_entries(self, name: str, entries: Iterable[Entry], *, fmt: str, source: str | None,
                       replace: bool, accept: Callable[[], bool]) -> ImportCounts:
        """Store ``entries`` as bank ``name`` in one transaction. ``accept`` is asked once every entry is
        written (the reader has seen the whole file by then): False rolls everything back."""
        check_bank_name(name)
        read = inserted = 0
        with self.store.transaction() as conn:
            existing = conn.execute("SELECT id, first_entry, last_entry FROM banks WHERE name = ?",
                                    (name,)).fetchone()
            if existing and not replace:
                raise ImportRefused(f"bank {name!r} exists (import with --replace to swap its entries, or "
                                    f"`verdict-node banks remove {name}` first)")
            bank_id = conn.execute(
                "INSERT INTO banks (name, source, format, imported_at) VALUES (NULL, ?, ?, ?)",
                (source, fmt, time.time())).lastrowid
            # The file's entries go to a scratch table first and into bank_entries sorted by hash: inserting
            # millions of random hashes straight into the unique index costs twice as long.
            conn.execute("DROP TABLE IF EXISTS temp.bank_import")
            conn.execute("CREATE TEMP TABLE bank_import (kind TEXT, hash BLOB, note TEXT)")
            for batch in _batches(entries):
                conn.executemany("INSERT INTO temp.bank_import VALUES (?, ?, ?)",
                                 [(e.kind, e.digest, e.note) for e in batch])
                read += len(batch)
            if not accept():
                raise ImportRefused("nothing imported")
            before = _max_entry_id(conn)
            changes = conn.total_changes
            conn.execute("INSERT OR IGNORE INTO bank_entries (bank_id, kind, hash, note) SELECT ?, kind, hash, "
                         "MIN(note) FROM temp.bank_import GROUP BY hash, kind ORDER BY hash, kind", (bank_id,))
            inserted = conn.total_changes - changes
            conn.execute("DROP TABLE temp.bank_import")
            first, last = (before + 1, _max_entry_id(conn)) if inserted else (None, None)
            stored = dict(conn.execute("SELECT kind, COUNT(*) FROM bank_entries WHERE id BETWEEN ? AND ? "
                                       "GROUP BY kind", (first or 0, last or -1)).fetchall())
            counts = {kind: int(stored[kind]) for kind in KIND_BYTES if stored.get(kind)}
            if existing:
                self._delete(conn, *existing)
            conn.execute("UPDATE banks SET name = ?, counts = ?, first_entry = ?, last_entry = ? WHERE id = ?",
                         (name, json.dumps(counts, sort_keys=True), first, last, bank_id))
        return ImportCounts(counts, read - inserted)

    def remove(self, name: str) -> bool:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT id, first_entry, last_entry FROM banks WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            self._delete(conn, *row)
        return True

    @staticmethod
    def _delete(conn: Any, bank_id: int, first: int | None, last: int | None) -> None:
        if first is not None:
            conn.execute("DELETE FROM bank_entries WHERE id BETWEEN ? AND ? AND bank_id = ?", (first, last, bank_id))
        conn.execute("DELETE FROM banks WHERE id = ?", (bank_id,))

    def banks(self) -> list[BankInfo]:
        rows = self.store.conn.execute(
            "SELECT id, name, source, format, imported_at, counts, first_entry, last_entry FROM banks "
            "WHERE name IS NOT NULL ORDER BY name").fetchall()
        return [BankInfo(r[0], r[1], r[2], r[3], r[4], {k: int(v) for k, v in json.loads(r[5]).items()}, r[6], r[7])
                for r in rows]

    # -- what the matcher reads -----------------------------------------------------------------

    def find_exact(self, keys: dict[str, bytes]) -> tuple[str, str, bytes] | None:
        """(bank name, kind, hash) of an entry equal to one of ``keys`` ({kind: raw hash}), or None."""
        if not keys:
            return None
        digests = list(keys.values())
        marks = ",".join("?" * len(digests))
        for bank, kind, digest in self.store.conn.execute(
                f"SELECT b.name, e.kind, e.hash FROM bank_entries e JOIN banks b ON b.id = e.bank_id "
                f"WHERE e.hash IN ({marks}) AND b.name IS NOT NULL ORDER BY b.name", digests):
            if keys.get(kind) == digest:
                return bank, kind, digest
        return None

    def entry_hash(self, entry_id: int) -> bytes:
        row = self.store.conn.execute("SELECT hash FROM bank_entries WHERE id = ?", (entry_id,)).fetchone()
        return bytes(row[0]) if row else b""

    def perceptual_entries(self, bank: BankInfo, kind: str) -> tuple[array, bytes]:
        """(entry ids, their hashes one after the other) of one kind in a bank, read by id range."""
        ids = array("q")
        hashes = bytearray()
        if bank.first_entry is None:
            return ids, bytes(hashes)
        cursor = self.store.conn.execute(
            "SELECT id, hash FROM bank_entries WHERE id BETWEEN ? AND ? AND bank_id = ? AND kind = ? ORDER BY id",
            (bank.first_entry, bank.last_entry, bank.id, kind))
        size = KIND_BYTES[kind]
        while rows := cursor.fetchmany(_BATCH):
            for entry_id, digest in rows:
                if len(digest) == size:   # written by our import only; a hand-edited row must not break loading
                    ids.append(entry_id)
                    hashes += digest
        return ids, bytes(hashes)


def _max_entry_id(conn: Any) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM bank_entries").fetchone()[0])


def _batches(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
