"""Named bearer tokens, kept only as hashes: one per remote worker (table ``workers``) and one per reader of
the exchange feed (table ``exchange_tokens``).

A token is a random 256-bit secret with a kind prefix (``vnw_`` workers, ``vnx_`` exchange readers), shown
once when it is made. The database keeps its SHA-256, so a copy of the database gives nobody access, and
a token is found by that hash (an indexed lookup: its timing says nothing about any stored secret). Every
request is checked against the table, so a removal by the CLI in another process counts from the next
request on.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time

from node.store import Store

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_TOKEN_CHARS = 200


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class BearerTokens:
    """The tokens of one table with columns (name PRIMARY KEY, token_sha256 UNIQUE, created_at, ...)."""

    def __init__(self, store: Store, *, table: str, prefix: str, what: str) -> None:
        self.store = store
        self.table = table    # a name from our code, never from a request
        self.prefix = prefix
        self.what = what      # "worker", "exchange token": how messages name one

    def add(self, name: str) -> str:
        """Register ``name`` and return its token (shown once; only the hash is kept)."""
        if not NAME.match(name):
            raise ValueError(f"{self.what} name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = self.prefix + secrets.token_urlsafe(32)
        with self.store.transaction() as conn:
            if conn.execute(f"SELECT 1 FROM {self.table} WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"{self.what} {name!r} already exists (remove it first to issue a new token)")
            conn.execute(f"INSERT INTO {self.table} (name, token_sha256, created_at) VALUES (?, ?, ?)",
                         (name, token_sha256(token), time.time()))
        return token

    def remove(self, name: str) -> bool:
        return self.store.conn.execute(f"DELETE FROM {self.table} WHERE name = ?", (name,)).rowcount == 1

    def authenticate(self, token: str | None) -> str | None:
        """The name a token belongs to, or None for a missing, malformed, unknown or revoked one."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.startswith(self.prefix):
            return None
        row = self.store.conn.execute(f"SELECT name FROM {self.table} WHERE token_sha256 = ?",
                                      (token_sha256(token),)).fetchone()
        return row[0] if row else None

    def names(self) -> set[str]:
        return {row[0] for row in self.store.conn.execute(f"SELECT name FROM {self.table}")}
