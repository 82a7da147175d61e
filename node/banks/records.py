"""The banks' SQL: banks and their entries, exchange tokens, the exchange log (tables in node.store's
migrations). Everything the package writes or reads in the database is here.

A bank is matched only once it is ``ready``, which one short transaction makes it: an import, however large,
becomes visible all at once or not at all, and ``--replace`` swaps the old list for the new one in that same
transaction, so a reader sees either list, never a mix. What leads up to it never holds the database for long,
because a serving node keeps writing (decision rows, verdicts) and would stall behind a two-minute lock:

1. the file is staged, deduplicated and sorted in this connection's temp database, which locks nothing of
   the node's;
2. the entries are copied into ``bank_entries`` under a nameless ``importing`` bank, in short transactions,
   sorted by hash (inserting millions of random hashes into the unique index costs twice as long);
3. the swap makes it ``ready`` (and the replaced list ``deleting``);
4. a ``deleting`` bank's entries go in short transactions too.

A killed import or removal leaves an invisible bank behind; the next import or removal deletes it (an
``importing`` one once its process is gone).
"""
from __future__ import annotations

import json
import os
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from node.banks.formats import KIND_BYTES, Entry
from node.store import Store
from node.tokens import NAME

BANK_NAME = NAME  # the names of banks follow the rule of every name the admin gives on the command line
_BATCH = 10_000
CHUNK = 50_000   # entries copied or deleted per transaction: a fraction of a second of the write lock


@dataclass(frozen=True)
class BankInfo:
    """One ready bank, as `banks list` shows it and the matcher loads it."""

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
        """Store ``entries`` as bank ``name``. ``accept`` is asked once the whole file has been read: False
        (bad lines) refuses the import before anything was written."""
        check_bank_name(name)
        self.clean_up()
        if not replace and self._ready_id(name) is not None:
            raise ImportRefused(f"bank {name!r} exists (import with --replace to swap its entries, or "
                                f"`verdict-node banks remove {name}` first)")
        conn = self.store.conn
        try:
            read = self._stage(conn, entries)
            if not accept():
                raise ImportRefused("nothing imported")
            stored = int(conn.execute("SELECT COUNT(*) FROM temp.bank_sorted").fetchone()[0])
            counts = {kind: int(n) for kind, n in conn.execute(
                "SELECT kind, COUNT(*) FROM temp.bank_sorted GROUP BY kind ORDER BY kind")}
            bank_id = self._copy(conn, stored, fmt, source)
        finally:
            conn.execute("DROP TABLE IF EXISTS temp.bank_import")
            conn.execute("DROP TABLE IF EXISTS temp.bank_sorted")
        try:
            with self.store.transaction() as c:
                old = c.execute("SELECT id FROM banks WHERE name = ? AND state = 'ready'", (name,)).fetchone()
                if old and not replace:
                    raise ImportRefused(f"bank {name!r} was imported meanwhile by another process")
                if old:
                    c.execute("UPDATE banks SET name = NULL, state = 'deleting' WHERE id = ?", (old[0],))
                c.execute("UPDATE banks SET name = ?, state = 'ready', counts = ?, importer_pid = NULL WHERE id = ?",
                          (name, json.dumps(counts, sort_keys=True), bank_id))
        except BaseException:
            self._mark_deleting(bank_id)
            self.clean_up()
            raise
        self.clean_up()
        return ImportCounts(counts, read - stored)

    def _stage(self, conn: Any, entries: Iterable[Entry]) -> int:
        """The file's entries, one per kind and hash, in hash order, in temp.bank_sorted; returns how many
        entries the file had (duplicates included)."""
        read = 0
        conn.execute("DROP TABLE IF EXISTS temp.bank_import")
        conn.execute("DROP TABLE IF EXISTS temp.bank_sorted")
        conn.execute("BEGIN")   # writes only the temp database: the node's stays free for other writers
        try:
            conn.execute("CREATE TEMP TABLE bank_import (kind TEXT, hash BLOB, note TEXT)")
            for batch in _batches(entries):
                conn.executemany("INSERT INTO temp.bank_import VALUES (?, ?, ?)",
                                 [(e.kind, e.digest, e.note) for e in batch])
                read += len(batch)
            conn.execute("CREATE TEMP TABLE bank_sorted AS SELECT kind, hash, MIN(note) AS note "
                         "FROM temp.bank_import GROUP BY hash, kind ORDER BY hash, kind")
            conn.execute("DROP TABLE temp.bank_import")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return read

    def _copy(self, conn: Any, stored: int, fmt: str, source: str | None) -> int:
        """A nameless importing bank holding temp.bank_sorted's rows; returns its id."""
        with self.store.transaction() as c:
            bank_id = int(c.execute(
                "INSERT INTO banks (name, state, importer_pid, source, format, imported_at) "
                "VALUES (NULL, 'importing', ?, ?, ?, ?)", (os.getpid(), source, fmt, time.time())).lastrowid)
        first = last = None
        try:
            for low in range(1, stored + 1, CHUNK):
                with self.store.transaction() as c:
                    if first is None:
                        first = _max_entry_id(c) + 1
                    cursor = c.execute(
                        "INSERT OR IGNORE INTO bank_entries (bank_id, kind, hash, note) SELECT ?, kind, hash, note "
                        "FROM temp.bank_sorted WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                        (bank_id, low, low + CHUNK - 1))
                    last = cursor.lastrowid
                    c.execute("UPDATE banks SET first_entry = ?, last_entry = ? WHERE id = ?", (first, last, bank_id))
        except BaseException:
            self._mark_deleting(bank_id)
            raise
        return bank_id

    def remove(self, name: str) -> bool:
        """Stop matching bank ``name`` at once (one short transaction), then delete its entries."""
        with self.store.transaction() as conn:
            changed = conn.execute("UPDATE banks SET name = NULL, state = 'deleting' WHERE name = ? AND "
                                   "state = 'ready'", (name,)).rowcount
        self.clean_up()
        return changed == 1

    def clean_up(self) -> None:
        """Delete what no reader can see: removed and replaced banks, and imports whose process is gone."""
        for bank_id, state, pid, first, last in self.store.conn.execute(
                "SELECT id, state, importer_pid, first_entry, last_entry FROM banks WHERE state != 'ready'"
                ).fetchall():
            if state == "importing" and (pid == os.getpid() or _alive(pid)):
                continue
            if first is not None:
                for low in range(first, last + 1, CHUNK):
                    with self.store.transaction() as conn:
                        conn.execute("DELETE FROM bank_entries WHERE id BETWEEN ? AND ? AND bank_id = ?",
                                     (low, min(last, low + CHUNK - 1), bank_id))
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM banks WHERE id = ?", (bank_id,))

    def _mark_deleting(self, bank_id: int) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE banks SET name = NULL, state = 'deleting' WHERE id = ?", (bank_id,))

    def _ready_id(self, name: str) -> int | None:
        row = self.store.conn.execute("SELECT id FROM banks WHERE name = ? AND state = 'ready'", (name,)).fetchone()
        return int(row[0]) if row else None

    def banks(self) -> list[BankInfo]:
        rows = self.store.conn.execute(
            "SELECT id, name, source, format, imported_at, counts, first_entry, last_entry FROM banks "
            "WHERE state = 'ready' ORDER BY name").fetchall()
        return [BankInfo(r[0], r[1], r[2], r[3], r[4], {k: int(v) for k, v in json.loads(r[5]).items()}, r[6], r[7])
                for r in rows]

    # -- what the matcher reads -----------------------------------------------------------------

    def find_exact(self, keys: dict[str, bytes]) -> tuple[str, str, bytes] | None:
        """(bank name, kind, hash) of an entry of a ready bank equal to one of ``keys`` ({kind: raw hash})."""
        if not keys:
            return None
        digests = list(keys.values())
        marks = ",".join("?" * len(digests))
        for bank, kind, digest in self.store.conn.execute(
                f"SELECT b.name, e.kind, e.hash FROM bank_entries e JOIN banks b ON b.id = e.bank_id "
                f"WHERE e.hash IN ({marks}) AND b.state = 'ready' ORDER BY b.name", digests):
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


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
