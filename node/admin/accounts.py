"""Console accounts: a name and an argon2id hash of its password, never the password itself.

`verdict-node admin add NAME` makes the password (random, printed once): an admin never chooses a weak
one at a prompt, and nothing but its hash reaches the database. The first login with it is asked to choose
a new one (``must_change``), so the printed password stops working once it has been used.
"""
from __future__ import annotations

import functools
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from node.store import Store

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}\Z")
MIN_PASSWORD = 12

_HASHER = PasswordHasher()  # argon2id with the library's current recommended costs
@functools.cache
def _dummy_hash() -> str:
    """Verified against when the account does not exist, so that a login takes as long for an unknown name
    (made on first use: hashing costs 64 MiB and tens of ms, not to be paid by every import)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """An account operation refused, phrased for the admin."""


@dataclass(frozen=True)
class Account:
    name: str
    created_at: float
    must_change: bool
    last_login_at: float | None
    sessions: int = 0


class Accounts:
    """The admin_accounts table (node.migrations "review console")."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str) -> str:
        """Create the account and return its one-time password."""
        if not NAME.match(name):
            raise AccountError(f"account name {name!r}: use 1-32 lowercase letters, digits, '.', '_' or '-'")
        password = secrets.token_urlsafe(15)
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM admin_accounts WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"account {name} exists already (remove it first to issue a new password)")
            conn.execute("INSERT INTO admin_accounts (name, password_hash, created_at, must_change) VALUES (?,?,?,1)",
                         (name, _HASHER.hash(password), time.time()))
        return password

    def remove(self, name: str) -> int:
        """Delete the account and its sessions; returns how many sessions ended."""
        with self.store.transaction() as conn:
            if not conn.execute("SELECT 1 FROM admin_accounts WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"no account {name}")
            ended = conn.execute("DELETE FROM admin_sessions WHERE account = ?", (name,)).rowcount
            conn.execute("DELETE FROM admin_accounts WHERE name = ?", (name,))
        return int(ended)

    def list(self) -> list[Account]:
        rows = self.store.conn.execute(
            "SELECT a.name, a.created_at, a.must_change, a.last_login_at, "
            "(SELECT count(*) FROM admin_sessions s WHERE s.account = a.name) FROM admin_accounts a ORDER BY a.name")
        return [Account(n, c, bool(m), last, int(s)) for n, c, m, last, s in rows]

    def get(self, name: str) -> Account | None:
        return next((a for a in self.list() if a.name == name), None)

    def any(self) -> bool:
        return self.store.conn.execute("SELECT 1 FROM admin_accounts LIMIT 1").fetchone() is not None

    def verify(self, name: str, password: str) -> bool:
        """Whether the password is this account's. An unknown name costs the same hashing work."""
        row = self.store.conn.execute("SELECT password_hash FROM admin_accounts WHERE name = ?", (name,)).fetchone()
        try:
            ok = _HASHER.verify(row[0] if row else _dummy_hash(), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if not row:
            return False
        if ok and _HASHER.check_needs_rehash(row[0]):
            self._set_hash(name, password, must_change=None)
        return ok

    def set_password(self, name: str, password: str) -> None:
        """The admin's own new password (ends the one-time one)."""
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the new password must have at least {MIN_PASSWORD} characters")
        self._set_hash(name, password, must_change=False)

    def _set_hash(self, name: str, password: str, *, must_change: bool | None) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE admin_accounts SET password_hash = ?, must_change = coalesce(?, must_change) "
                         "WHERE name = ?", (_HASHER.hash(password), None if must_change is None else int(must_change),
                                            name))

    def logged_in(self, name: str) -> None:
        self.store.conn.execute("UPDATE admin_accounts SET last_login_at = ? WHERE name = ?", (time.time(), name))
