"""Shared pieces of the sweep tests: a node with the tiny CLIP, a corpus of real photos plus hostile items,
and small queries over what a sweep recorded."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from node.runtime import Node
from node.sweeps.engine import Sweep, SweepOptions, SweepStats
from node.sweeps.records import SweepRecords
from tests.hostile import hostile_corpus
from tests.images import photo_bytes, photo_names
from tests.node_helpers import ROOT

#: Hostile items that decode (or fail) fast; the full corpus is swept once in test_sweep.py.
QUICK_HOSTILE = ("empty", "random_bytes", "truncated_png", "html_named_jpg", "svg_named_jpg", "mp4_header",
                 "jpeg_header_only", "jpeg_with_zip_appended")


def photo_corpus(size: int | None = 256) -> dict[str, bytes]:
    """key -> bytes: every real photo (some score csam >= 0.5 with the tiny CLIP, some well below)."""
    return {f"{i % 3:02d}/{i % 2:02d}/photo-{name}": photo_bytes(name, size=size) for i, name in enumerate(photo_names())}


def hostile_items(names: tuple[str, ...] | None = QUICK_HOSTILE) -> dict[str, tuple[bytes, str]]:
    corpus = hostile_corpus()
    return {f"hostile/{n}": corpus[n] for n in (names or corpus)}


def write_tree(root: Path, items: dict[str, bytes]) -> None:
    for key, data in items.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def with_node(config: Any, body: Callable[[Node], Awaitable[Any]]) -> Any:
    node = Node.open(config)
    try:
        return await body(node)
    finally:
        await node.close()


async def sweep(node: Node, source: Any, url: str, **options: Any) -> tuple[SweepStats, int]:
    s = Sweep(node, source, url, SweepOptions(**options))
    stats = await s.run()
    return stats, s.run_id


def inferred(node: Node) -> int:
    return int(node.metrics.inference_images._value.get())


def rows(node: Node, run_id: int | None = None) -> dict[str, dict]:
    """key -> sweep_items row (dicts, scores decoded)."""
    where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
    out = {}
    for r in node.store.db.query(f"SELECT * FROM sweep_items {where}", params):
        r = dict(r)
        r["scores"] = json.loads(r["scores"]) if r["scores"] else None
        r["verdict_ids"] = json.loads(r["verdict_ids"] or "[]")
        out[r["key"]] = r
    return out


def own_verdicts(node: Node) -> list[dict]:
    return [dict(r) for r in node.store.db.query("SELECT verdict_id, sha256, pixel_sha256, scores, retracted_at "
                                                 "FROM verdicts WHERE own = 1")]


def records(node: Node) -> SweepRecords:
    return SweepRecords(node.store)


def scan_process(config: Any, root: Path, quarantine: Path, *extra: str, workers: int = 3,
                 python: tuple[str, ...] = ("-m", "node.cli")) -> subprocess.Popen:
    """`verdict-node scan ROOT --all` as a subprocess, as an admin runs it (``python``: what runs instead of
    the CLI module, e.g. a script that wraps it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *python, "scan", str(root), "--all", "--workers", str(workers), "--json",
                             "--quarantine-dir", str(quarantine), "--config", str(config.data_dir / "node.yaml"),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def count(db: Path, sql: str, params: tuple = ()) -> int:
    """One number from the node's database while another process writes it."""
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return conn.execute(sql, params).fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def wait_for_count(proc: subprocess.Popen, db: Path, sql: str, at_least: int, timeout: float = 240) -> None:
    """Wait until ``sql`` counts ``at_least`` rows, while ``proc`` (the scan writing them) is still running."""
    deadline = time.monotonic() + timeout
    while count(db, sql) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{sql} stayed below {at_least} for {timeout} s"
        time.sleep(0.01)


def kill_when(proc: subprocess.Popen, db: Path, sql: str, at_least: int) -> None:
    """SIGKILL ``proc`` as soon as ``sql`` counts ``at_least`` rows (an admin's kill -9, a power cut)."""
    wait_for_count(proc, db, sql, at_least)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
