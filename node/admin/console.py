"""`Console`: what the review console holds for one node (accounts, sessions, the login limiter, the audit
log, the queue, the actions), plus the two short-lived things kept in memory: one-time reveal grants and
the messages shown on the page a POST redirects to."""
from __future__ import annotations

import secrets
import time
from collections import defaultdict

from node.admin.accounts import Accounts
from node.admin.actions import Links, ReviewActions
from node.admin.audit import AuditLog
from node.admin.queue import ReviewQueue
from node.admin.sessions import LoginLimiter, Sessions
from node.runtime import Node

#: A reveal shows its picture once, within this many seconds of the confirmation.
REVEAL_GRANT_SECONDS = 60.0


class Console:
    """The review console of a node (``node.features.get(Console)``)."""

    def __init__(self, node: Node, links: Links | None = None) -> None:
        settings = node.config.admin
        self.node = node
        self.settings = settings
        self.accounts = Accounts(node.store)
        self.sessions = Sessions(node.store, idle_seconds=settings.session_idle_minutes * 60,
                                 max_seconds=settings.session_max_hours * 3600)
        self.limiter = LoginLimiter(settings.login_max_failures, settings.login_window_seconds)
        self.audit = AuditLog(node.store)
        self.queue = ReviewQueue(node.store)
        self.links = links or Links()
        self.actions = ReviewActions(node, self.queue, self.audit, self.links)
        self._grants: dict[str, tuple[str, str, float]] = {}
        self._flash: dict[str, list[tuple[str, str]]] = defaultdict(list)

    # -- reveal grants -----------------------------------------------------------------------------

    def grant_reveal(self, session_hash: str, ref: str) -> str:
        now = time.monotonic()
        self._grants = {g: v for g, v in self._grants.items() if v[2] > now}
        grant = secrets.token_urlsafe(24)
        self._grants[grant] = (session_hash, ref, now + REVEAL_GRANT_SECONDS)
        return grant

    def use_reveal(self, grant: str, session_hash: str, ref: str) -> bool:
        """True once per grant, for the session and item it was made for, within its time."""
        found = self._grants.pop(grant, None)
        return bool(found and found[0] == session_hash and found[1] == ref and found[2] > time.monotonic())

    # -- messages after a redirect ---------------------------------------------------------------------

    def flash(self, session_hash: str, kind: str, text: str) -> None:
        self._flash[session_hash].append((kind, text))

    def take_flash(self, session_hash: str) -> list[tuple[str, str]]:
        return self._flash.pop(session_hash, [])
