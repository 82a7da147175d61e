"""PictrsSource against the pict-rs 0.5 admin API emulator on loopback."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from scanners.sources import ItemGone, SourceError, open_source
from scanners.sources.pictrs import PictrsSource, parse_rfc3339
from tests.storage_servers import assert_deleted, collect, pictrs_server, read_all, run  # noqa: F401

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pictrs(pictrs_server, tmp_path):
    pictrs_server.reset()
    blobs = {}
    for i in range(11):
        data = PNG + os.urandom(40 + i)
        alias = pictrs_server.state.add(data, created_at=1_700_000_000 + 10 * i + 0.123456789)
        blobs[alias] = data
    return pictrs_server, blobs


def source(server, tmp_path, **options) -> PictrsSource:
    opts = {"api_key": server.api_key, "page_size": 4, "quarantine_dir": str(tmp_path / "q"), "backoff": 0.01}
    opts.update(options)
    return open_source(server.url, **opts)


def test_parse_rfc3339_nanoseconds():
    assert parse_rfc3339("2022-04-08T18:33:42.957791698Z") == pytest.approx(1649442822.957791698)
    assert parse_rfc3339("2022-04-08T18:33:42Z") == 1649442822


def test_lists_newest_first_over_pages_and_reads(pictrs, tmp_path):
    server, blobs = pictrs
    src = source(server, tmp_path)

    async def go():
        async with src:
            items = await collect(src)
            return items, [await src.read(i) for i in items]
    items, datas = run(go())
    assert len(items) == 11 and [i.mtime for i in items] == sorted((i.mtime for i in items), reverse=True)
    assert all(blobs[i.key] == d and i.etag == hashlib.sha256(d).hexdigest() for i, d in zip(items, datas))
    assert sum("/internal/hashes" in r for r in server.state.requests) == 3  # 11 hashes, pages of 4


def test_incremental_stops_early_and_resume(pictrs, tmp_path):
    server, blobs = pictrs
    src = source(server, tmp_path)
    items = run(collect(src))
    server.state.requests.clear()
    newest_three = run(collect(source(server, tmp_path), since=items[2].mtime))
    assert [i.key for i in newest_three] == [i.key for i in items[:3]]
    assert sum("/internal/hashes" in r for r in server.state.requests) == 1  # no walk over old pages
    # the cursor after a full listing lists a new upload (and the overlap window) only
    cursor = src.checkpoint()
    new_alias = server.state.add(PNG + b"new", created_at=1_700_000_500)
    later = source(server, tmp_path)
    later.resume(cursor)
    assert new_alias in [i.key for i in run(collect(later))]
    # interrupted listing resumes with timestamp= and skips what was handed out
    full = [i.key for i in run(collect(source(server, tmp_path)))]
    for stop in (1, 4, 6):
        a = source(server, tmp_path)
        head = [i.key for i in run(collect(a, limit=stop))]
        b = source(server, tmp_path)
        b.resume(a.checkpoint())
        assert head + [i.key for i in run(collect(b))] == full


def test_retries_on_500_and_bad_key(pictrs, tmp_path):
    server, blobs = pictrs
    server.state.fail_next = 3
    src = source(server, tmp_path)
    assert len(run(collect(src))) == 11 and src.retried == 3
    with pytest.raises(SourceError, match="API key"):
        run(collect(source(server, tmp_path, api_key="wrong")))
    server.state.fail_next = 100
    with pytest.raises(SourceError, match="attempts"):
        run(collect(source(server, tmp_path, retries=2)))
    server.state.fail_next = 0


def test_quarantine_purges_and_release_reuploads(pictrs, tmp_path):
    server, blobs = pictrs
    src = source(server, tmp_path, max_bytes=45 + 8)

    async def go():
        async with src:
            items = await collect(src)
            target = items[-1]  # oldest, small enough
            location = await src.quarantine(target, {"verdict": "urn:p", "scores": {"csam": 0.8}})
            qdir = tmp_path / "q"
            assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700
            assert Path(location).read_bytes() == blobs[target.key]
            sidecar = json.loads(Path(location + ".json").read_text())
            assert sidecar["pictrs"]["hash"] == target.etag and target.key in sidecar["pictrs"]["aliases"]
            assert sidecar["scores"] == {"csam": 0.8}
            assert target.etag not in server.state.hashes  # purged in pict-rs, records included
            with pytest.raises(ItemGone):
                await src.read(target)
            released = await src.release(location)
            assert released.key != target.key  # pict-rs hands out a new alias
            assert await src.read(released) == blobs[target.key]
            assert not Path(location).exists()
            await assert_deleted(src, items[0])
            # per-item errors (too large) never stop the iteration
            return await read_all(src)
    ok, errors = run(go())
    assert ok >= 1 and errors and all("too large" in e.reason for e in errors)


def test_needs_api_key(pictrs_server, monkeypatch):
    monkeypatch.delenv("VERDICT_PICTRS_API_KEY", raising=False)
    with pytest.raises(SourceError, match="API key"):
        open_source(pictrs_server.url)
