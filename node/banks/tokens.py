"""Who may read the exchange feed: one bearer token per reader (an HMA instance, a python-threatexchange
CLI), named, revocable. Only the token's sha256 is stored, so a copy of the database gives no reader access.

Every request is checked against the table (a revocation by `verdict-node exchange-tokens remove` in another
process counts from the next request on), and the presented token's hash is compared with every stored hash
in constant time, so neither a match nor its position shows in the answer's timing.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from node.banks.records import BANK_NAME
from node.store import Store

TOKEN_PREFIX = "vnx_"
MAX_TOKEN_CHARS = 200
_SEEN_EVERY = 60.0   # seconds: last_used_at is written at most this often per token


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    name: str
    created_at: float
    last_used_at: float | None


class ExchangeTokens:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str) -> str:
        """Register a reader and return its token (shown once; only the hash is kept)."""
        if not BANK_NAME.match(name):
            raise ValueError(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM exchange_tokens WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"token {name!r} exists (remove it first to issue a new one)")
            conn.execute("INSERT INTO exchange_tokens (name, token_sha256, created_at) VALUES (?, ?, ?)",
                         (name, token_sha256(token), time.time()))
        return token

    def remove(self, name: str) -> bool:
        return self.store.conn.execute("DELETE FROM exchange_tokens WHERE name = ?", (name,)).rowcount == 1

    def records(self) -> list[TokenRecord]:
        return [TokenRecord(*row) for row in self.store.conn.execute(
            "SELECT name, created_at, last_used_at FROM exchange_tokens ORDER BY name")]

    def authenticate(self, token: str | None) -> str | None:
        """The reader's name, or None for a missing, malformed, unknown or revoked token."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
            return None
        presented = token_sha256(token).encode()
        found: tuple[str, float | None] | None = None
        for name, stored, last_used in self.store.conn.execute(
                "SELECT name, token_sha256, last_used_at FROM exchange_tokens").fetchall():
            if hmac.compare_digest(presented, stored.encode()) and found is None:
                found = (name, last_used)
        if found is None:
            return None
        name, last_used = found
        now = time.time()
        if last_used is None or now - last_used >= _SEEN_EVERY:
            self.store.conn.execute("UPDATE exchange_tokens SET last_used_at = ? WHERE name = ?", (now, name))
        return name
