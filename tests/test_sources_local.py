"""LocalSource on a real directory tree shaped like pict-rs's `files` store."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from scanners.sources import Item, ItemError, ItemGone, SourceError, open_source
from scanners.sources.local import LocalSource
from tests.storage_servers import collect, make_tree, run


def test_lists_nested_tree_skipping_hidden_and_escaping_symlinks(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    files = make_tree(root)
    src = open_source(str(root))
    assert isinstance(src, LocalSource)
    items = run(collect(src))
    assert sorted(i.key for i in items) == sorted(files)
    assert all(i.size == len(files[i.key]) for i in items)
    assert any("escape-link" in e for e in src.listing_errors)
    # depth-first, per-directory sorted: stable order that resume relies on
    assert [i.key for i in items] == [i.key for i in run(collect(LocalSource(root)))]


def test_read_and_per_item_errors(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    files = make_tree(root)
    src = LocalSource(root, max_bytes=105)
    items = {i.key: i for i in run(collect(src))}
    key = "000/000/0000a-uuid"
    assert run(src.read(items[key])) == files[key]
    with pytest.raises(ItemError, match="too large"):
        run(src.read(items["002/001/0011f-uuid"]))
    (root / key).unlink()
    with pytest.raises(ItemGone):
        run(src.read(items[key]))
    with pytest.raises(ItemError, match="relative"):
        run(src.read(Item("../outside-secret")))
    with pytest.raises(ItemError, match="outside"):
        run(src.read(Item("escape-link")))


def test_unreadable_directory_does_not_stop_listing(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    files = make_tree(root)
    # A directory that vanishes while the walk is under way (another sweeper, pict-rs cleanup).
    bad = root / "001"
    src = LocalSource(root)

    async def walk():
        keys = []
        async for item in src.list():
            keys.append(item.key)
            if item.key.startswith("000/") and bad.exists():
                # vanish a directory that is still ahead of the walk
                for p in sorted(bad.rglob("*"), reverse=True):
                    p.unlink() if p.is_file() else p.rmdir()
                bad.rmdir()
        return keys

    keys = run(walk())
    assert not any(k.startswith("001/") for k in keys)
    assert "top-level-file" in keys and any(k.startswith("002/") for k in keys)


def test_incremental_since_and_resume(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    files = make_tree(root)
    old = 1_600_000_000
    very_old = old - 100_000
    for n, key in enumerate(sorted(files)):
        if key != "inside-link":
            t = old if n % 2 else very_old
            os.utime(root / key, (t, t))
    recent = {k for n, k in enumerate(sorted(files)) if n % 2 and k != "inside-link"}
    src = LocalSource(root)
    assert len(run(collect(src))) == len(files)
    cursor = src.checkpoint()
    assert json.loads(cursor)["since"] <= old  # next bound covers writes during the listing
    # A new upload and a quiet period: the incremental listing from the cursor finds only the new file.
    new_key = "001/000/9999z-uuid"
    (root / new_key).write_bytes(b"new")
    later = LocalSource(root)
    later.resume(cursor)
    keys = [i.key for i in run(collect(later, since=None))]
    # the newest old files fall inside the overlap window; the very old ones are not listed again
    assert set(keys) - {"inside-link"} == recent | {new_key}
    explicit = [i.key for i in run(collect(LocalSource(root), since=old + 10))]
    assert explicit == [new_key]

    # Interrupted listing resumes after the last key handed out, without repeats or gaps.
    full = [i.key for i in run(collect(LocalSource(root)))]
    first = LocalSource(root)
    head = [i.key for i in run(collect(first, limit=5))]
    second = LocalSource(root)
    second.resume(first.checkpoint())
    tail = [i.key for i in run(collect(second))]
    assert head + tail == full
    with pytest.raises(SourceError):
        second.resume("{not json")


def test_quarantine_release_delete(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    files = make_tree(root)
    qdir = tmp_path / "q"
    src = LocalSource(root, quarantine_dir=qdir)
    items = {i.key: i for i in run(collect(src))}
    key = "001/001/0007b-uuid"
    os.utime(root / key, (1_650_000_000, 1_650_000_000))
    item = next(i for i in run(collect(LocalSource(root))) if i.key == key)
    location = run(src.quarantine(item, {"verdict": "urn:uuid:1", "scores": {"csam": 0.9}}))
    assert not (root / key).exists()
    assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700
    assert Path(location).read_bytes() == files[key]
    assert stat.S_IMODE(os.stat(location).st_mode) == 0o600
    sidecar = json.loads(Path(location + ".json").read_text())
    assert sidecar["verdict"] == "urn:uuid:1" and sidecar["scores"] == {"csam": 0.9}
    assert sidecar["original"]["key"] == key and sidecar["original"]["size"] == len(files[key])
    assert sidecar["original"]["mtime"] == 1_650_000_000
    import hashlib
    assert sidecar["sha256"] == hashlib.sha256(files[key]).hexdigest()
    assert sidecar["quarantined_at"].endswith("Z")
    # The quarantine is not listed as part of the storage.
    assert key not in {i.key for i in run(collect(LocalSource(root, quarantine_dir=qdir)))}

    # Release refuses to overwrite a different file, then restores identical bytes and mtime.
    (root / key).write_bytes(b"someone else uploaded here")
    with pytest.raises(SourceError, match="not overwriting"):
        run(src.release(location))
    (root / key).unlink()
    restored = run(src.release(location))
    assert restored.key == key and (root / key).read_bytes() == files[key]
    assert os.stat(root / key).st_mtime == 1_650_000_000
    assert not Path(location).exists() and not Path(location + ".json").exists()
    with pytest.raises(SourceError):
        run(src.release(location))
    with pytest.raises(SourceError, match="not inside"):
        run(src.release(str(root / key)))

    # Delete really removes; deleting again says it is gone.
    victim = items["000/000/0000a-uuid"]
    run(src.delete(victim))
    assert not (root / victim.key).exists()
    with pytest.raises(ItemGone):
        run(src.delete(victim))


def test_quarantine_inside_root_is_not_listed(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    make_tree(root)
    src = LocalSource(root, quarantine_dir=root / "quarantine")
    first = run(collect(src))[0]
    run(src.quarantine(first, {}))
    assert not any(i.key.startswith("quarantine") for i in run(collect(src)))


def test_open_source_errors(tmp_path):
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="unknown source kind"):
        open_source("gopher://x/")
    assert isinstance(open_source(f"file://{tmp_path}"), LocalSource)
    # --option NAME=VALUE hands strings: a misspelt name or a value that is no number is a SourceError
    with pytest.raises(SourceError, match="unknown option max_byte "):
        open_source(str(tmp_path), max_byte="5")
    with pytest.raises(SourceError, match="unknown option bogus"):
        open_source("s3://bucket/?bogus=1&endpoint=http://127.0.0.1:9")
    with pytest.raises(SourceError, match="bad option value"):
        open_source(str(tmp_path), max_bytes="lots")
    (tmp_path / "big").write_bytes(b"x" * 10)
    limited = open_source(str(tmp_path), max_bytes="5")
    big = next(i for i in run(collect(limited)) if i.key == "big")
    with pytest.raises(ItemError, match="too large"):
        run(limited.read(big))


def test_open_source_urls():
    """URL forms of every kind (no connection is made until the first operation)."""
    s3 = open_source("s3://bucket/media/?endpoint=http://127.0.0.1:9&page_size=10&connect_timeout=3")
    assert (s3.scheme, s3.bucket, s3.prefixes, s3.page_size) == ("s3", "bucket", ["media/"], 10)
    assert open_source("s3://bucket/?prefix=b/&prefix=a/&endpoint=http://127.0.0.1:9").prefixes == ["a/", "b/"]
    ssh = open_source("ssh://alice@host.example:2222/srv/files?insecure_skip_host_check=false")
    assert (ssh.scheme, ssh.username, ssh.port, ssh.root) == ("ssh", "alice", 2222, "/srv/files")
    assert "known_hosts" not in ssh._connect_options  # "false" from a URL is not truthy: strict default
    pictrs = open_source("pictrs+https://pictrs.example/?page_size=5", api_key="k")
    assert (pictrs.base_url, pictrs.page_size) == ("https://pictrs.example", 5)
    with pytest.raises(SourceError, match="bucket"):
        open_source("s3:///nobucket")


def test_quarantine_to_another_filesystem(tmp_path):
    """/dev/shm is a different mount from tmp_path: quarantine copies then removes (EXDEV path)."""
    import tempfile
    root = tmp_path / "files"
    root.mkdir()
    files = make_tree(root)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        src = LocalSource(root, quarantine_dir=Path(other) / "q")
        item = next(i for i in run(collect(src)) if i.key == "000/000/0006a-uuid")
        location = run(src.quarantine(item, {}))
        assert os.stat(location).st_dev != os.stat(root).st_dev
        assert not (root / item.key).exists() and Path(location).read_bytes() == files[item.key]
        assert stat.S_IMODE(os.stat(location).st_mode) == 0o600
        assert run(src.release(location)).key == item.key
        assert (root / item.key).read_bytes() == files[item.key]
