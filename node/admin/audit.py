"""The audit log: every admin action and every reveal, with who, when, what, on what, and how it ended.

Written by the console only, never edited or pruned by it: it is the record an instance's team (or an
authority) reads to know who looked at what and who released what.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from node.store import Store


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    result: str
    client: str | None


class AuditLog:
    """The admin_audit table (node.migrations "review console")."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, actor: str, action: str, target: str, result: str, client: str | None = None) -> int:
        cur = self.store.conn.execute(
            "INSERT INTO admin_audit (at, actor, action, target, result, client) VALUES (?,?,?,?,?,?)",
            (time.time(), actor, action, target, result, client))
        return int(cur.lastrowid)

    def entries(self, *, limit: int = 100, offset: int = 0, actor: str | None = None,
                action: str | None = None) -> list[AuditEntry]:
        """Newest first."""
        where, params = [], []  # type: list[str], list[Any]
        if actor:
            where.append("actor = ?")
            params.append(actor)
        if action:
            where.append("action = ?")
            params.append(action)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.store.conn.execute(f"SELECT id, at, actor, action, target, result, client FROM admin_audit"
                                       f" {clause} ORDER BY id DESC LIMIT ? OFFSET ?", (*params, limit, offset))
        return [AuditEntry(*r) for r in rows]

    def count(self) -> int:
        return int(self.store.conn.execute("SELECT count(*) FROM admin_audit").fetchone()[0])
