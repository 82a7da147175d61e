"""`verdict-node scan --all` killed with SIGKILL mid-way and run again, as an admin would: the run resumes,
nothing is classified twice, every item is decided exactly once, no quarantined item loses its record."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.images import photo_bytes, synthetic_image_bytes
from tests.node_helpers import ROOT, make_data_dir
from tests.sweep_helpers import count, hostile_items, kill_when, scan_process, write_tree
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture


def test_scan_all_killed_midway_resumes_without_classifying_twice(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds={"csam": 0.5})
    root, quarantine = tmp_path / "files", tmp_path / "quarantine"
    items = {f"{i % 5:02d}/{i:04d}": synthetic_image_bytes(i, size=(80, 80)) for i in range(500)}
    items.update({"photos/hubble": photo_bytes("hubble_deep_field", size=200),
                  "photos/coffee": photo_bytes("coffee", size=200),
                  "photos/zz-copy-of-0007": items["02/0007"]})
    items.update({k: v for k, (v, _) in hostile_items(("random_bytes", "mp4_header")).items()})
    write_tree(root, items)
    db = config.database_path

    first = scan_process(config, root, quarantine)
    kill_when(first, db, "SELECT COUNT(*) FROM sweep_items", 10)
    at_kill = count(db, "SELECT COUNT(*) FROM sweep_items")
    assert at_kill < len(items)  # it really was mid-way
    assert count(db, "SELECT COUNT(*) FROM sweep_runs WHERE finished_at IS NULL") == 1

    second = scan_process(config, root, quarantine)
    out, err = second.communicate(timeout=280)
    assert second.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["run"] == 1  # the killed run, resumed
    assert count(db, "SELECT COUNT(*) FROM sweep_runs") == 1

    with sqlite3.connect(db) as conn:
        rows = {k: (o, a, loc) for k, o, a, loc in conn.execute("SELECT key, outcome, action, location FROM sweep_items")}
        own = conn.execute("SELECT sha256, COUNT(*) FROM verdicts WHERE own = 1 GROUP BY sha256").fetchall()
        inferred_rows = conn.execute("SELECT COUNT(*) FROM decisions WHERE source = 'sweep' AND inferred = 1").fetchone()[0]
        keys_with_decision = conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT source_key FROM decisions WHERE source = 'sweep')"
                                 ).fetchone()[0]
    # Every item decided, exactly one record each, with a final outcome.
    assert set(rows) == set(items)
    assert {o for o, _, _ in rows.values()} <= {"block", "allow", "unreadable", "video"}
    # Nothing classified twice: every inference signs and stores a verdict at once (before the kill could
    # lose it), so a second inference of the same image would show as a second own verdict on its sha256.
    distinct_images = {v for k, v in items.items() if not k.startswith("hostile/")}
    assert all(n == 1 for _, n in own) and len(own) <= len(distinct_images)
    # (a few synthetic images may be perceptual neighbours of a blocked one: decided by it, no inference)
    assert len(own) >= len(distinct_images) - 10 and 0 < inferred_rows <= len(own)
    assert keys_with_decision == len(items)  # every key has its decision row (flushed with the checkpoints)
    # Nothing lost: every positive is in the quarantine with its record.
    positives = {k for k, (o, _, _) in rows.items() if o == "block"}
    assert {"photos/hubble", "photos/coffee"} <= positives
    for key in positives:
        _, action, location = rows[key]
        assert action == "quarantined" and Path(location).read_bytes() == items[key] and not (root / key).exists()


def test_daemon_stops_cleanly_on_sigterm_and_keeps_its_cursor(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds={"csam": 0.5})
    root = tmp_path / "files"
    write_tree(root, {f"i{i}": synthetic_image_bytes(1000 + i, size=(64, 64)) for i in range(5)})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "scan", str(root), "--daemon", "--interval", "0.2",
                             "--json", "--log-interval", "0.5", "--config", str(config.data_dir / "node.yaml")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = config.database_path
    deadline = time.monotonic() + 120
    while count(db, "SELECT COUNT(*) FROM sweep_items") < 5:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # a few incremental passes
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["decided"] == 5 and summary["listed"] >= 5 and summary["known"] == summary["listed"] - 5
    assert "sweep: scanned" in err  # plain log lines when stderr is not a terminal
    assert count(db, "SELECT COUNT(*) FROM sweep_runs WHERE mode = 'daemon' AND cursor IS NOT NULL") == 1
