"""A store that fights back: files swapped for symlinks, hard links and FIFOs between the moment an image is
classified and the moment it is acted on (deterministically, and by a thread racing a real sweep); a FIFO
in the store; SIGTERM and kill -9 of a real `verdict-node scan` in the middle of quarantining; and the
same rules over SFTP against a real sshd.

What must hold whatever the store does: files outside the root keep their mode, bytes and place; the
quarantine holds only the bytes that were classified, never a link; a refusal is recorded with its reason;
the sweep finishes; and after a kill nothing is left half done once the next run starts."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from node.sweeps.actions import release
from node.sweeps.report import report_rows
from node.sweeps.engine import Sweep
from node.sweeps.records import source_identity
from scanners.sources import Item, ItemError, SourceError, open_source
from scanners.sources.local import LocalSource
from tests.images import synthetic_image_bytes
from tests.node_helpers import ROOT, make_data_dir, run
from tests.storage_servers import collect, sshd_server  # noqa: F401 - session fixture
from tests.sweep_helpers import (count, kill_when, records, rows, scan_process, sweep, wait_for_count, with_node,
                                 write_tree)
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

BLOCK_ALL = {"csam": 0.0}  # every readable image is a positive: many quarantines from a small tree
UNDER_WAY = ("quarantining", "deleting")  # the actions a row holds while its action is under way


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def images(n: int, prefix: str = "", seed: int = 0) -> dict[str, bytes]:
    return {f"{prefix}{i % 4:02d}/img-{i:04d}": synthetic_image_bytes(seed + i, size=(48, 48)) for i in range(n)}


def outside_files(tmp_path: Path) -> dict[Path, bytes]:
    """Files an attacker would like the sweep to move, chmod or delete: 0644, outside the store."""
    outside = tmp_path / "outside"
    outside.mkdir()
    files = {outside / "secret": b"not yours to move", outside / "hardlinked": b"nor this one"}
    for path, data in files.items():
        path.write_bytes(data)
        os.chmod(path, 0o644)
    return files


def assert_outside_untouched(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, path
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o644, path


def quarantine_entries(quarantine: Path) -> list[Path]:
    return sorted(p for p in quarantine.rglob("*")) if quarantine.exists() else []


def assert_quarantine_holds_only_judged_bytes(quarantine: Path, judged: set[str]) -> int:
    """Nothing but regular files (no link, FIFO or staging leftovers), each data file holding bytes whose
    sha256 was classified and matching its sidecar. Returns how many items it holds."""
    held = 0
    for entry in quarantine_entries(quarantine):
        mode = os.lstat(entry).st_mode
        assert stat.S_ISREG(mode), f"{entry} is not a regular file"
        if entry.name.endswith(".json"):
            continue
        digest = sha(entry.read_bytes())
        assert digest in judged, f"{entry} holds bytes that were never classified"
        assert json.loads(Path(str(entry) + ".json").read_text())["sha256"] == digest
        assert stat.S_IMODE(mode) == 0o600
        held += 1
    return held


def staging_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".verdict-*")]


def unblock_fifos(root: Path) -> None:
    """Open every FIFO in the store read-write once: a reader stuck in open() on one is released. A
    sweep that blocked on a FIFO then fails the test's assertions instead of hanging the test run."""
    for path in root.rglob("*"):
        try:
            if stat.S_ISFIFO(os.lstat(path).st_mode):
                os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        except OSError:
            pass


class FifoWatchdog:
    """After ``seconds``, keeps unblocking FIFOs in ``root`` (see unblock_fifos) until stopped."""

    def __init__(self, root: Path, seconds: float = 30.0) -> None:
        self.root, self.seconds = root, seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.stop.wait(self.seconds):
            return
        while not self.stop.wait(0.2):
            unblock_fifos(self.root)

    def __enter__(self) -> "FifoWatchdog":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        unblock_fifos(self.root)


# ------------------------------------------------------------------------------------------------
# swapped between classification and action


def swap(path: Path, how: str, outside: dict[Path, bytes]) -> None:
    """Replace a store file as an attacker would: by a symlink out of the root, a relative symlink to
    another file inside it, a hard link to an outside file, or a FIFO."""
    secret, hardlinked = list(outside)
    path.unlink()
    if how == "symlink-out":
        path.symlink_to(secret)
    elif how == "symlink-in":
        path.symlink_to("img-target")  # relative, to a sibling inside the root
    elif how == "hardlink-out":
        os.link(hardlinked, path)
    elif how == "fifo":
        os.mkfifo(path)
    else:
        raise AssertionError(how)


SWAPS = {"a/img-symlink-out": "symlink-out", "a/img-symlink-in": "symlink-in",
         "a/img-hardlink-out": "hardlink-out", "a/img-fifo": "fifo"}


@pytest.mark.parametrize("action", ["quarantine", "delete"])
def test_files_swapped_after_classification_are_refused_and_nothing_outside_is_touched(
        tmp_path, tiny_clip_spec, monkeypatch, action):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=BLOCK_ALL)
    root, quarantine = tmp_path / "files", tmp_path / "q"
    outside = outside_files(tmp_path)
    items = {key: synthetic_image_bytes(100 + n, size=(48, 48)) for n, key in enumerate([*SWAPS, "a/img-target"])}
    items.update(images(6, "b/"))
    write_tree(root, items)
    real_check = Sweep._check

    async def check_then_swap(self, data, key):
        result = await real_check(self, data, key)
        if key in SWAPS:  # classified: now the store changes under the sweep's feet
            swap(root / key, SWAPS[key], outside)
        return result
    monkeypatch.setattr(Sweep, "_check", check_then_swap)

    async def body(node):
        stats, _ = await sweep(node, LocalSource(root, quarantine_dir=quarantine), str(root), action=action,
                               workers=2)
        return stats, rows(node), report_rows(records(node))
    with FifoWatchdog(root):
        stats, recorded, report = run(with_node(config, body))

    assert set(recorded) == set(items) and stats.positives == len(items)  # the sweep finished, all decided
    assert_outside_untouched(outside)
    refusals = {key: recorded[key]["action_error"] for key in SWAPS}
    assert all(recorded[key]["action"] == "refused" for key in SWAPS), refusals
    assert "symbolic link" in refusals["a/img-symlink-out"] and "symbolic link" in refusals["a/img-symlink-in"]
    assert "FIFO" in refusals["a/img-fifo"]
    assert "has 2 hard links: another name shares these bytes" in refusals["a/img-hardlink-out"]
    assert stats.refused == len(SWAPS)
    # What was swapped in stays where the attacker put it: not moved, not deleted.
    assert os.readlink(root / "a/img-symlink-out") == str(list(outside)[0])
    assert os.readlink(root / "a/img-symlink-in") == "img-target"
    assert os.stat(root / "a/img-hardlink-out").st_ino == os.stat(list(outside)[1]).st_ino
    assert stat.S_ISFIFO(os.lstat(root / "a/img-fifo").st_mode)
    # The other positives were acted on, and the quarantine holds exactly their classified bytes.
    others = set(items) - set(SWAPS)
    done = "quarantined" if action == "quarantine" else "deleted"
    assert {recorded[key]["action"] for key in others} == {done}
    assert not any((root / key).exists() for key in others)
    judged = {recorded[key]["sha256"] for key in others}
    held = assert_quarantine_holds_only_judged_bytes(quarantine, judged)
    assert held == (len(others) if action == "quarantine" else 0)
    assert not staging_leftovers(root)
    # The admin sees why: `report` lists the refusals with their reasons.
    by_key = {r["key"]: r for r in report}
    assert {by_key[key]["action_error"] for key in SWAPS} == set(refusals.values())


def test_a_thread_racing_the_sweep_never_gets_a_link_into_the_quarantine(tmp_path, tiny_clip_spec):
    """The same attacks, not timed to the sweep: a thread keeps flipping positives between their real bytes,
    a symlink out, a hard link to an outside file and a FIFO, for as long as the sweep runs."""
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=BLOCK_ALL)
    root, quarantine = tmp_path / "files", tmp_path / "q"
    outside = outside_files(tmp_path)
    items = images(40)
    write_tree(root, items)
    targets = sorted(items)[::2]
    secret, hardlinked = list(outside)
    stop = threading.Event()
    flips = [0]
    # FIFOs keep a (hidden) name of their own, so that a reader stuck on one can always be released.
    fifos = root / ".fifos"
    fifos.mkdir()
    for n in range(8):
        os.mkfifo(fifos / str(n))

    def attacker() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            for n, key in enumerate(targets):
                path = root / key
                stash = path.with_name(".stash")
                # Mostly the real bytes (so they are classified as positives), and every fourth turn one of
                # the attacks (so the action often finds one)
                attacks = (lambda p: p.symlink_to(secret), lambda p: os.link(hardlinked, p),
                           lambda p: os.link(fifos / str(n % 8), p))
                make = attacks[(step // 4 + n) % 3] if (step + n) % 4 == 0 else (lambda p: p.write_bytes(items[key]))
                try:
                    make(stash)
                    os.replace(stash, path)  # atomic: the name always exists, holding one of the four
                except OSError:
                    pass
                flips[0] += 1

    async def body(node):
        thread = threading.Thread(target=attacker, daemon=True)
        thread.start()
        try:
            stats, _ = await sweep(node, LocalSource(root, quarantine_dir=quarantine), str(root), workers=3)
        finally:
            stop.set()
            thread.join(10)
        return stats, rows(node)
    with FifoWatchdog(root, seconds=5):
        stats, recorded = run(with_node(config, body))

    assert flips[0] > 100
    assert_outside_untouched(outside)
    judged = {sha(data) for data in items.values()}
    held = assert_quarantine_holds_only_judged_bytes(quarantine, judged)
    assert held == sum(1 for r in recorded.values() if r["action"] == "quarantined")
    untouched = set(items) - set(targets)
    assert all(recorded[key]["action"] == "quarantined" for key in untouched)
    for key in targets:  # each one: quarantined, refused, or left alone when it was not an image when read
        row = recorded.get(key)
        assert row is None or row["action"] in ("quarantined", "refused", "gone", "none"), (row["action"], row["action_error"])
        if row is not None and row["action"] == "none":
            assert row["outcome"] in ("skipped", "unreadable", "error"), row
    # The attacker may take a name back while the sweep holds it staged: that entry is left for the admin
    # in a hidden staging directory, and the refusal says where.
    reasons = " ".join(r["action_error"] or "" for r in recorded.values())
    assert all(p.name in reasons for p in staging_leftovers(root))


# ------------------------------------------------------------------------------------------------
# FIFOs


def test_fifo_in_the_store_is_recorded_as_skipped_and_never_blocks(tmp_path, tiny_clip_spec, monkeypatch):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=BLOCK_ALL)
    root, quarantine = tmp_path / "files", tmp_path / "q"
    items = images(4)
    items["z/later-a-fifo"] = synthetic_image_bytes(99, size=(48, 48))
    write_tree(root, items)
    os.mkfifo(root / "z/fifo-at-listing")
    real_read = LocalSource.read

    async def swap_then_read(self, item):
        if item.key == "z/later-a-fifo":  # listed as a regular file; a FIFO by the time it is read
            (root / item.key).unlink()
            os.mkfifo(root / item.key)
        return await real_read(self, item)
    monkeypatch.setattr(LocalSource, "read", swap_then_read)

    async def body(node):
        stats, _ = await sweep(node, LocalSource(root, quarantine_dir=quarantine), str(root))
        return stats, rows(node)
    with FifoWatchdog(root):
        stats, recorded = run(with_node(config, body))
    for key in ("z/fifo-at-listing", "z/later-a-fifo"):
        assert recorded[key]["outcome"] == "skipped" and "FIFO" in recorded[key]["reason"], recorded[key]
        assert recorded[key]["action"] == "none" and stat.S_ISFIFO(os.lstat(root / key).st_mode)
    assert stats.skipped == 2 and stats.positives == 4 == stats.quarantined


def test_a_read_stuck_in_the_kernel_times_out_and_cannot_keep_the_process_alive(tmp_path):
    """A hung mount, simulated by a read that never returns: the item fails after io_timeout, and the
    process still exits at once (asyncio.run and the interpreter join executor threads; these are not)."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "img").write_bytes(b"x")
    script = textwrap.dedent(f"""
        import asyncio, threading
        from scanners.sources import ItemError
        from scanners.sources.local import LocalSource

        source = LocalSource({str(tmp_path / "files")!r}, io_timeout=0.5)
        source._read_sync = lambda item: threading.Event().wait()  # blocks forever, like a dead NFS server

        async def main():
            item = [i async for i in source.list()][0]
            try:
                await source.read(item)
            except ItemError as exc:
                print("refused:", exc.reason, flush=True)
        asyncio.run(main())
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "refused: read: no answer within 0.5 s" in done.stdout
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------------------------------------
# signals and kills of a real `verdict-node scan`


def test_sigterm_ends_a_running_scan_within_seconds_even_with_a_fifo_in_the_store(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds={"csam": 0.5})
    root, quarantine = tmp_path / "files", tmp_path / "q"
    # One directory: it is listed in one go, so once rows appear every name below has been listed.
    items = {f"d/{i:04d}": synthetic_image_bytes(2000 + i, size=(48, 48)) for i in range(1500)}
    write_tree(root, items)
    db = config.database_path
    # faulthandler: if it does not stop, SIGABRT makes it print where every thread is stuck
    proc = scan_process(config, root, quarantine, workers=2, python=("-X", "faulthandler", "-m", "node.cli"))
    try:
        wait_for_count(proc, db, "SELECT COUNT(*) FROM sweep_items", 1)
        fifo = root / "d/0700"  # listed as a file, a FIFO by the time a worker opens it
        fifo.unlink()
        os.mkfifo(fifo)
        wait_for_count(proc, db, "SELECT COUNT(*) FROM sweep_items WHERE key > 'd/0720'", 20)
        recorded_before = count(db, "SELECT COUNT(*) FROM sweep_items")
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail("scan still running 10 s after SIGTERM:\n" + proc.communicate(timeout=10)[1][-15000:])
        assert time.monotonic() - stopped < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    # Stopped, not lost: the run is unfinished (resumable), its cursor and every row it had are kept.
    assert count(db, "SELECT COUNT(*) FROM sweep_runs WHERE finished_at IS NULL AND cursor IS NOT NULL") == 1
    assert count(db, "SELECT COUNT(*) FROM sweep_items") >= recorded_before
    assert count(db, "SELECT COUNT(*) FROM sweep_items WHERE key = 'd/0700' AND outcome = 'skipped'") == 1


def assert_settled(db_rows: dict[str, dict], items: dict[str, bytes], root: Path, quarantine: Path) -> set[str]:
    """No row left under way; every positive is quarantined (bytes + sidecar at its location, its name gone
    from the store) or still in the store; no file lost. Returns the quarantined keys."""
    assert not [k for k, r in db_rows.items() if r["action"] in UNDER_WAY]
    quarantined = set()
    for key, data in items.items():
        row = db_rows.get(key)
        if row is not None and row["action"] == "quarantined":
            location = Path(row["location"])
            assert location.read_bytes() == data and Path(f"{location}.json").exists(), key
            assert not (root / key).exists(), key
            quarantined.add(key)
        else:
            assert (root / key).read_bytes() == data, (key, row)
    in_store = sum(1 for p in root.rglob("*") if p.is_file())
    in_quarantine = sum(1 for p in quarantine.glob("*") if not p.name.endswith(".json")) if quarantine.exists() else 0
    assert in_store + in_quarantine == len(items)
    assert in_quarantine == len(quarantined) and not staging_leftovers(root)
    return quarantined


def test_scan_killed_with_sigkill_while_quarantining_leaves_nothing_half_done(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=BLOCK_ALL)
    root, quarantine = tmp_path / "files", tmp_path / "q"
    items = images(400)
    write_tree(root, items)
    db = config.database_path
    first = scan_process(config, root, quarantine)
    kill_when(first, db, "SELECT COUNT(*) FROM sweep_items WHERE action = 'quarantined'", 30)
    assert count(db, "SELECT COUNT(*) FROM sweep_items WHERE action = 'quarantined'") < len(items)  # mid-way

    async def body(node):
        return rows(node)
    interrupted = sorted(k for k, r in run(with_node(without_classifier(config), body)).items()
                         if r["action"] in UNDER_WAY)
    second = scan_process(config, root, quarantine)
    out, err = second.communicate(timeout=280)
    assert second.returncode == 0, err
    recorded = run(with_node(without_classifier(config), body))
    assert assert_settled(recorded, items, root, quarantine) == set(items)  # the second run finished the job
    assert json.loads(out.strip().splitlines()[-1])["recovered"] == len(interrupted)
    # A recovered item is an ordinary quarantined one: `verdict-node release` puts it back.
    key = (interrupted or sorted(items))[0]
    released = subprocess.run([sys.executable, "-m", "node.cli", "release", recorded[key]["location"],
                               "--reason", "test", "--config", str(config.data_dir / "node.yaml")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert released.returncode == 0, released.stderr
    assert (root / key).read_bytes() == items[key]


def without_classifier(config):
    """The same data directory, opened without loading the model (only records and sources are used)."""
    view = copy.deepcopy(config)
    view.classifier.model = "none"
    return view


KILL_SCRIPT = textwrap.dedent("""
    # Runs `verdict-node scan` and SIGKILLs it at one step of the third quarantine (or delete).
    import os, signal, sys
    import scanners.sources.local as local

    point = sys.argv[1]
    calls = {"n": 0}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn, before):
        def wrapper(*args, **kwargs):
            if before:
                calls["n"] += 1
                if calls["n"] == 3:
                    die()
            result = fn(*args, **kwargs)
            if not before:
                calls["n"] += 1
                if calls["n"] == 3:
                    die()
            return result
        return wrapper

    if point in ("before-move", "staged", "delete-staged"):
        local.stage = wrap(local.stage, before=point == "before-move")
    elif point == "moved":
        local.LocalSource._into_quarantine = staticmethod(wrap(local.LocalSource._into_quarantine, before=False))
    elif point == "copied":  # quarantine on another filesystem: the copy is written, the original still staged
        local.write_new = wrap(local.write_new, before=False)
    from node.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("point, expected", [
    ("before-move", "pending"),      # under-way row and sidecar written; the file still in place
    ("staged", "quarantined"),       # the file in its private staging directory, not yet in the quarantine
    ("moved", "quarantined"),        # in the quarantine; the row still says quarantining
    ("copied", "quarantined"),       # another filesystem: copied, the original not yet removed
    ("delete-staged", "deleted"),    # a delete: staged, not yet unlinked
])
def test_kill_at_each_step_of_an_action_is_settled_by_the_next_start(tmp_path, tiny_clip_spec, point, expected):
    import tempfile

    from node.sweeps.recovery import reconcile

    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=BLOCK_ALL)
    root = tmp_path / "files"
    items = images(6)
    write_tree(root, items)
    other_fs = tempfile.TemporaryDirectory(dir="/dev/shm") if point == "copied" else None
    quarantine = Path(other_fs.name) / "q" if other_fs else tmp_path / "q"
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    action = ["--action", "delete"] if point == "delete-staged" else []
    try:
        proc = scan_process(config, root, quarantine, *action, workers=1,
                            python=(str(tmp_path / "kill.py"), point))
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == -signal.SIGKILL, err
        db = config.database_path
        assert count(db, "SELECT COUNT(*) FROM sweep_items WHERE action IN ('quarantining', 'deleting')") == 1
        victim_key = next(k for k in items if count(db, "SELECT COUNT(*) FROM sweep_items WHERE key = ? AND action "
                                                       "IN ('quarantining', 'deleting')", (k,)))

        async def body(node):
            source = LocalSource(root, quarantine_dir=quarantine)
            settled = await reconcile(records(node), source, source_identity(str(root)))
            after = rows(node)
            victim = after[victim_key]
            if expected == "quarantined":  # a recovered item is released like any other
                await release(records(node), victim["location"], source, reason="test")
                restored = (root / victim_key).read_bytes()
            else:
                restored = None
            return settled, after, restored
        settled, after, restored = run(with_node(without_classifier(config), body))
        leftovers = [p for p in quarantine_entries(quarantine) if p.name.startswith(".")]
    finally:
        if other_fs:
            other_fs.cleanup()
    assert settled == {expected: 1}
    victim = after[victim_key]
    assert victim["action"] == {"pending": "failed", "quarantined": "quarantined", "deleted": "deleted"}[expected]
    if expected == "quarantined":
        assert restored == items[victim_key]
    elif expected == "pending":
        assert (root / victim_key).read_bytes() == items[victim_key] and "interrupted" in victim["action_error"]
    else:
        assert not (root / victim_key).exists()
    assert not [k for k, r in after.items() if r["action"] in UNDER_WAY] and not staging_leftovers(root)
    assert not leftovers  # no temporary or staging entries in the quarantine either


def test_release_of_an_item_whose_quarantine_a_kill_cut_short(tmp_path, tiny_clip_spec):
    """`verdict-node release` given the location of a row still under way settles it first, then releases."""
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=BLOCK_ALL)
    root, quarantine = tmp_path / "files", tmp_path / "q"
    items = images(4)
    write_tree(root, items)
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    proc = scan_process(config, root, quarantine, workers=1, python=(str(tmp_path / "kill.py"), "moved"))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, err

    async def body(node):
        return rows(node)
    [(key, row)] = [(k, r) for k, r in run(with_node(without_classifier(config), body)).items()
                    if r["action"] == "quarantining"]
    assert Path(row["location"]).read_bytes() == items[key] and not (root / key).exists()
    released = subprocess.run([sys.executable, "-m", "node.cli", "release", row["location"], "--reason", "test",
                               "--config", str(config.data_dir / "node.yaml")],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert released.returncode == 0, released.stderr
    assert (root / key).read_bytes() == items[key] and not Path(row["location"]).exists()
    assert run(with_node(without_classifier(config), body))[key]["action"] == "released"


# ------------------------------------------------------------------------------------------------
# the local quarantine and release themselves


def test_a_quarantine_directory_that_is_a_symlink_is_refused(tmp_path):
    root = tmp_path / "files"
    write_tree(root, {"a/img": b"bytes"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "q").symlink_to(elsewhere)
    source = LocalSource(root, quarantine_dir=tmp_path / "q")
    item = run(collect(source))[0]
    with pytest.raises(SourceError, match="symlink"):
        run(source.quarantine(item, {}))
    assert (root / "a/img").read_bytes() == b"bytes" and not list(elsewhere.iterdir())


def test_quarantine_refuses_bytes_other_than_those_judged_and_a_second_hard_link(tmp_path):
    root = tmp_path / "files"
    write_tree(root, {"a/img": b"judged bytes", "a/linked": b"shared", "a/same-size": b"judged bytes"})
    os.link(root / "a/linked", tmp_path / "other-name")
    os.chmod(tmp_path / "other-name", 0o644)
    source = LocalSource(root, quarantine_dir=tmp_path / "q")
    items = {i.key: i for i in run(collect(source))}
    with pytest.raises(ItemError, match="has 2 hard links: another name shares these bytes; not quarantined"):
        run(source.quarantine(items["a/linked"], {}))
    with pytest.raises(ItemError, match="has 2 hard links: another name shares these bytes; not deleted"):
        run(source.delete(items["a/linked"]))
    assert (root / "a/linked").read_bytes() == b"shared" and (tmp_path / "other-name").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "other-name").st_mode) == 0o644
    # Rewritten since it was listed: without the judged sha256, the listed size and mtime tell.
    (root / "a/img").write_bytes(b"rewritten after the verdict")
    with pytest.raises(ItemError, match="changed since it was listed"):
        run(source.quarantine(items["a/img"], {}))
    # Same size and mtime, other bytes: the sha256 of what was classified tells.
    (root / "a/same-size").write_bytes(b"other bytes!")
    os.utime(root / "a/same-size", (items["a/same-size"].mtime,) * 2)
    with pytest.raises(ItemError, match="no longer those that were judged"):
        run(source.quarantine(items["a/same-size"], {}, sha256=sha(b"judged bytes")))
    assert not quarantine_entries(tmp_path / "q")


def test_release_follows_no_link_in_the_quarantine_or_on_the_way_back(tmp_path):
    root = tmp_path / "files"
    write_tree(root, {"a/b/img": b"evidence", "a/b/other": b"other"})
    outside = outside_files(tmp_path)
    secret = list(outside)[0]
    source = LocalSource(root, quarantine_dir=tmp_path / "q")
    items = {i.key: i for i in run(collect(source))}
    location = run(source.quarantine(items["a/b/img"], {}))
    # A directory on the way back now leads outside: nothing is written through it.
    (root / "a/b/other").unlink()
    (root / "a/b").rmdir()
    (root / "a/b").symlink_to(secret.parent)
    with pytest.raises(SourceError, match="not a directory"):
        run(source.release(location))
    assert sorted(p.name for p in secret.parent.iterdir()) == ["hardlinked", "secret"]
    (root / "a/b").unlink()
    (root / "a/b").mkdir()
    # The name itself is a link now: not overwritten, not followed.
    (root / "a/b/img").symlink_to(secret)
    with pytest.raises(SourceError, match="symbolic link now exists there; not overwriting"):
        run(source.release(location))
    (root / "a/b/img").unlink()
    # A link planted in the quarantine in place of the evidence is not followed either.
    Path(location).rename(tmp_path / "evidence")
    Path(location).symlink_to(secret)
    with pytest.raises(SourceError, match="quarantined bytes unusable"):
        run(source.release(location))
    assert_outside_untouched(outside)
    Path(location).unlink()
    (tmp_path / "evidence").rename(location)
    assert run(source.release(location)).key == "a/b/img" and (root / "a/b/img").read_bytes() == b"evidence"


# ------------------------------------------------------------------------------------------------
# SFTP: lstat before every step, nothing followed


def ssh_source(server, root: Path, **options):
    options.setdefault("client_keys", [str(server.client_keys["ed25519"])])
    options.setdefault("host_key", server.host_public_key)
    return open_source(server.url(str(root)), **options)


def test_ssh_symlinks_and_fifos_in_the_remote_root_are_never_read_moved_or_chmodded(sshd_server, tmp_path):
    root, qdir = tmp_path / "files", tmp_path / "remote-q"
    write_tree(root, {"a/img": b"judged", "a/to-swap": b"also judged", "a/to-link": b"judged too"})
    outside = outside_files(tmp_path)
    secret, hardlinked = list(outside)
    (root / "a/planted").symlink_to(secret)          # leaves the root: not even listed
    (root / "a/planted-in").symlink_to("img")        # stays inside: listed, never followed
    os.mkfifo(root / "a/fifo")
    src = ssh_source(sshd_server, root, quarantine_dir=str(qdir), op_timeout=20)

    async def go():
        async with src:
            items = {i.key: i for i in await collect(src)}
            assert "a/planted" not in items and {"a/planted-in", "a/fifo"} <= set(items)
            for key, kind in (("a/planted-in", "symbolic link"), ("a/fifo", "FIFO")):
                with pytest.raises(ItemError, match=kind):
                    await src.read(items[key])
                with pytest.raises(ItemError, match=kind):
                    await src.quarantine(items[key], {})
                with pytest.raises(ItemError, match=kind):
                    await src.delete(items[key])
            for planted in ("a/planted", "a/planted-in"):  # asked for directly, by key
                with pytest.raises(ItemError, match="symbolic link"):
                    await src.quarantine(Item(planted), {})
            # Judged as a regular file, then swapped for a link out / a hard link to an outside file.
            (root / "a/to-swap").unlink()
            (root / "a/to-swap").symlink_to(secret)
            with pytest.raises(ItemError, match="symbolic link"):
                await src.quarantine(items["a/to-swap"], {})
            # A hard link to an outside file, looking just as listed: only the link count gives it away.
            (root / "a/to-link").unlink()
            os.link(hardlinked, root / "a/to-link")
            linked = Item("a/to-link", size=len(outside[hardlinked]), mtime=float(int(os.stat(hardlinked).st_mtime)))
            with pytest.raises(ItemError, match="has 2 hard links: another name shares these bytes"):
                await src.quarantine(linked, {})
            location = await src.quarantine(items["a/img"], {})
            return location
    location = run(go())
    assert_outside_untouched(outside)
    assert os.readlink(root / "a/planted") == str(secret) and os.readlink(root / "a/to-swap") == str(secret)
    assert os.stat(root / "a/to-link").st_ino == os.stat(hardlinked).st_ino
    assert stat.S_ISFIFO(os.lstat(root / "a/fifo").st_mode)
    held = assert_quarantine_holds_only_judged_bytes(qdir, {sha(b"judged")})
    assert held == 1 and Path(location).read_bytes() == b"judged"
