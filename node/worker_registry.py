"""Remote GPU workers: who may connect. The node keeps one token per worker and stores only its sha256
(fedi-safety/pictrs-safety shared one key among all workers, reference/seeds.md §1.6 and §2), so
`workers remove` deletes one worker and its very next request gets 401. The rows live in the node's store,
so `verdict-node workers add|list|remove` (here too: it only manages this table) works on a running node's
data directory, and each row is the per-worker view `workers list` shows (last contact, leased jobs,
throughput, model) instead of one "last seen" timestamp for all workers.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from node.store import Store
from node.work_wire import describe_model, model_from_json, model_to_json
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo

TOKEN_PREFIX = "vnw_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    """The workers table. Every request is authenticated against it (one indexed lookup), so a revocation
    made by another process (`verdict-node workers remove`) takes effect on the next request."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str) -> str:
        """Register a worker and return its token (shown once; only the hash is kept)."""
        if not _NAME.match(name):
            raise ValueError(f"worker name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        conn = self.store.conn
        if conn.execute("SELECT 1 FROM workers WHERE name = ?", (name,)).fetchone():
            raise ValueError(f"worker {name!r} already exists (remove it first to issue a new token)")
        conn.execute("INSERT INTO workers (name, token_sha256, created_at) VALUES (?, ?, ?)",
                     (name, token_sha256(token), time.time()))
        return token

    def remove(self, name: str) -> bool:
        return self.store.conn.execute("DELETE FROM workers WHERE name = ?", (name,)).rowcount == 1

    def authenticate(self, token: str | None) -> str | None:
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        row = self.store.conn.execute("SELECT name FROM workers WHERE token_sha256 = ?",
                                      (token_sha256(token),)).fetchone()
        return row[0] if row else None

    def names(self) -> set[str]:
        return {row[0] for row in self.store.conn.execute("SELECT name FROM workers")}

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


# `verdict-node workers add|list|remove`

def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, time.time() - seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def cmd_workers(args: Any) -> int:
    import sys

    from node.config import ConfigError, resolve_config

    try:
        config = resolve_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Store(config.database_path) as store:
        registry = WorkerRegistry(store)
        if args.workers_command == "add":
            try:
                token = registry.add(args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(token)
            print(f"worker {args.name} added. The token is shown only this once; run the worker with\n"
                  f"  verdict-node worker --node {config.node.url} --token-file FILE   (or --token, or "
                  f"VERDICT_NODE_WORKER_TOKEN)", file=sys.stderr)
            if not config.workers.enabled:
                print("note: workers.enabled is false in node.yaml; set it to true and restart the node",
                      file=sys.stderr)
            return 0
        if args.workers_command == "remove":
            if not registry.remove(args.name):
                print(f"error: no worker named {args.name!r}", file=sys.stderr)
                return 1
            print(f"worker {args.name} removed: its token is refused from its next request on")
            return 0
        records = registry.records()
        if getattr(args, "json", False):
            print(json.dumps([{**{k: v for k, v in r.__dict__.items() if k != "model"},
                               "model": model_to_json(r.model) if r.model else None} for r in records], indent=2))
            return 0
        if not records:
            print("no workers (add one with: verdict-node workers add NAME)")
            return 0
        print(f"{'NAME':<20} {'LAST CONTACT':<14} {'LEASED':>6} {'DONE':>8} {'FRAMES/S':>9}  MODEL")
        for r in records:
            model = describe_model(r.model) if r.model else "-"
            fps = f"{r.frames_per_s:.2f}" if r.frames_per_s is not None else "-"
            print(f"{r.name:<20} {_ago(r.last_seen_at):<14} {r.leased_jobs:>6} {r.jobs_done:>8} {fps:>9}  {model}")
            if r.last_refusal:
                print(f"{'':<20} refused: {r.last_refusal}")
        return 0
