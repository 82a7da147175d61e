"""Who may read the exchange feed: one bearer token per reader (an HMA instance, a python-threatexchange
CLI), named, revocable, kept only as a hash (node.tokens), with when each reader last came."""
from __future__ import annotations

import time
from dataclasses import dataclass

from node.store import Store
from node.tokens import BearerTokens

TOKEN_PREFIX = "vnx_"
_SEEN_EVERY = 60.0   # seconds: last_used_at is written at most this often per token


@dataclass(frozen=True)
class TokenRecord:
    name: str
    created_at: float
    last_used_at: float | None


class ExchangeTokens:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.tokens = BearerTokens(store, table="exchange_tokens", prefix=TOKEN_PREFIX, what="exchange token")

    def add(self, name: str) -> str:
        """Register a reader and return its token (shown once; only the hash is kept)."""
        return self.tokens.add(name)

    def remove(self, name: str) -> bool:
        return self.tokens.remove(name)

    def records(self) -> list[TokenRecord]:
        return [TokenRecord(*row) for row in self.store.conn.execute(
            "SELECT name, created_at, last_used_at FROM exchange_tokens ORDER BY name")]

    def authenticate(self, token: str | None) -> str | None:
        """The reader's name, or None for a missing, malformed, unknown or revoked token."""
        name = self.tokens.authenticate(token)
        if name is None:
            return None
        row = self.store.conn.execute("SELECT last_used_at FROM exchange_tokens WHERE name = ?", (name,)).fetchone()
        now = time.time()
        if row is not None and (row[0] is None or now - row[0] >= _SEEN_EVERY):
            self.store.conn.execute("UPDATE exchange_tokens SET last_used_at = ? WHERE name = ?", (now, name))
        return name
