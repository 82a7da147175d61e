"""Console sessions, their CSRF tokens, and the login rate limit.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure when the request came over
https); the database keeps only its sha256, so a copy of the database logs nobody in. Each session has
its own CSRF token, put in every form and compared in constant time on every POST: SameSite already keeps
other sites' forms out, the token also covers browsers and proxies that do not honour it. A session ends
after ``admin.session_idle_minutes`` without a request, ``admin.session_max_hours`` after the login, at
logout, or when its account is removed.
"""
from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from node.store import Store
from node.tokens import token_sha256

COOKIE = "vn_console"


@dataclass(frozen=True)
class Session:
    account: str
    csrf: str
    created_at: float
    last_seen_at: float
    token_sha256: str

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """The admin_sessions table."""

    def __init__(self, store: Store, *, idle_seconds: float, max_seconds: float) -> None:
        self.store = store
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds

    def start(self, account: str, client: str | None) -> str:
        """A new session for ``account``; returns the cookie's token (shown to nobody else)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM admin_sessions WHERE last_seen_at < ? OR created_at < ?",
                         (now - self.idle_seconds, now - self.max_seconds))
            conn.execute("INSERT INTO admin_sessions (token_sha256, account, csrf, created_at, last_seen_at, client) "
                         "VALUES (?,?,?,?,?,?)", (token_sha256(token), account, secrets.token_urlsafe(32), now, now, client))
        return token

    def find(self, token: str | None, *, now: float | None = None) -> Session | None:
        """The live session of this cookie (and its idle clock restarted), or None."""
        if not token:
            return None
        now = time.time() if now is None else now
        digest = token_sha256(token)
        row = self.store.conn.execute("SELECT account, csrf, created_at, last_seen_at FROM admin_sessions "
                                      "WHERE token_sha256 = ?", (digest,)).fetchone()
        if row is None:
            return None
        account, csrf, created, seen = row
        if now - seen > self.idle_seconds or now - created > self.max_seconds:
            self.store.conn.execute("DELETE FROM admin_sessions WHERE token_sha256 = ?", (digest,))
            return None
        self.store.conn.execute("UPDATE admin_sessions SET last_seen_at = ? WHERE token_sha256 = ?", (now, digest))
        return Session(account, csrf, created, now, digest)

    def end(self, session: Session) -> None:
        self.store.conn.execute("DELETE FROM admin_sessions WHERE token_sha256 = ?", (session.token_sha256,))

    def end_others(self, session: Session) -> None:
        """After a password change: every other session of the account ends."""
        self.store.conn.execute("DELETE FROM admin_sessions WHERE account = ? AND token_sha256 != ?",
                                (session.account, session.token_sha256))


class LoginLimiter:
    """At most ``max_failures`` failed logins per account name and per client address within ``window``
    seconds; past that, logins are refused without checking the password until the oldest failure leaves
    the window. Kept in memory: a restart forgets it, which costs a guesser a restart of our service."""

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        """The failures still in the window; a key whose failures all left it is forgotten, so that names
        and addresses tried once do not pile up in memory."""
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, name: str, client: str | None, now: float | None = None) -> float | None:
        """Seconds until a login may be tried again, or None when it may now."""
        now = time.time() if now is None else now
        waits = []
        for key in (f"account:{name}", f"client:{client}"):
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                waits.append(times[0] + self.window - now)
        return max(waits) if waits else None

    def failed(self, name: str, client: str | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for key in (f"account:{name}", f"client:{client}"):
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, name: str) -> None:
        self._failures.pop(f"account:{name}", None)
