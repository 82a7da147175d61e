"""Remote GPU workers: who may connect. The node keeps one token per worker and stores only its sha256
(fedi-safety and pictrs-safety shared one key among all workers, so removing one meant re-keying all), so
`workers remove` deletes one worker and its very next request gets 401. The rows live in the node's store,
so `verdict-node workers add|list|remove` (here too: it only manages this table) works on a running node's
data directory, and each row is the per-worker view `workers list` shows (last contact, leased jobs,
throughput, model) instead of one "last seen" timestamp for all workers.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import NodeConfig
from node.store import Store
from node.tokens import BearerTokens
from node.workers.wire import model_from_json
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo

TOKEN_PREFIX = "vnw_"


@dataclass(frozen=True)
class WorkerRecord:
    name: str
    created_at: float
    last_seen_at: float | None
    model: ModelInfo | None
    leased_jobs: int
    jobs_done: int
    frames_done: int
    frames_per_s: float | None
    last_refusal: str | None


class WorkerRegistry:
    """The workers table: tokens (node.tokens) plus what each worker did. Every request is authenticated
    against it, so a revocation made by another process (`verdict-node workers remove`) takes effect on the
    next request."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tokens = BearerTokens(store, table="workers", prefix=TOKEN_PREFIX, what="worker")

    def add(self, name: str) -> str:
        return self.tokens.add(name)

    def remove(self, name: str) -> bool:
        return self.tokens.remove(name)

    def authenticate(self, token: str | None) -> str | None:
        return self.tokens.authenticate(token)

    def names(self) -> set[str]:
        return self.tokens.names()

    def records(self) -> list[WorkerRecord]:
        rows = self.store.conn.execute(
            "SELECT name, created_at, last_seen_at, model, leased_jobs, jobs_done, frames_done, frames_per_s, "
            "last_refusal FROM workers ORDER BY name").fetchall()
        out = []
        for name, created, seen, model, leased, jobs, frames, fps, refusal in rows:
            info = None
            if model:
                try:
                    info = model_from_json(json.loads(model))
                except (ValueError, ProtocolError):
                    info = None
            out.append(WorkerRecord(name, created, seen, info, leased, jobs, frames, fps, refusal))
        return out

    def update(self, name: str, **columns: Any) -> None:
        if not columns:
            return
        sets = ", ".join(f"{column} = ?" for column in columns)
        self.store.conn.execute(f"UPDATE workers SET {sets} WHERE name = ?", (*columns.values(), name))

    def add_done(self, name: str, jobs: int, frames: int) -> None:
        self.store.conn.execute("UPDATE workers SET jobs_done = jobs_done + ?, frames_done = frames_done + ? "
                                "WHERE name = ?", (jobs, frames, name))

    def reset_leases(self) -> None:
        """At start nobody holds a lease: the previous process's leases died with it."""
        self.store.conn.execute("UPDATE workers SET leased_jobs = 0 WHERE leased_jobs != 0")


def submit_token_path(config: NodeConfig) -> Path:
    return config.path(config.keys_dir) / "workers-submit.token"


def ensure_submit_token(path: Path) -> str:
    """The secret of POST /workers/v1/submit, in the data directory's keys folder (0600): whoever can read
    the node's keys may queue work on it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        os.replace(tmp, path)
    return path.read_text().strip()
