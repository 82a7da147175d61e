"""S3Source against a real moto S3 server on loopback, with a proxy that injects 500s."""
from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time

import pytest

from scanners.sources import ItemGone, SourceError, open_source
from scanners.sources.s3 import S3Source, normalise_prefixes
from tests.storage_servers import assert_deleted, collect, read_all, run, s3_server  # noqa: F401


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket shaped like a Mastodon one: media under two prefixes plus non-media."""
    name = f"media-{secrets.token_hex(4)}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    objects = {}
    for i in range(7):
        objects[f"media_attachments/files/109/{i:03d}/original/{i}.png"] = secrets.token_bytes(50 + i)
    for i in range(4):
        objects[f"cache/preview_cards/images/{i:03d}/x.jpg"] = secrets.token_bytes(40 + i)
    objects["backups/dump.sql.gz"] = b"not media"
    for key, data in objects.items():
        client.put_object(Bucket=name, Key=key, Body=data)
    return name, objects


def source(s3_server, name, *prefixes, through_proxy=False, **options):
    query = "&".join(f"prefix={p}" for p in prefixes)
    opts = {**s3_server.options(through_proxy), "page_size": 3, "backoff": 0.01, **options}
    return open_source(f"s3://{name}/?{query}" if query else f"s3://{name}", **opts)


def media(objects):
    return {k: v for k, v in objects.items() if not k.startswith("backups/")}


def test_prefixes_normalised():
    assert normalise_prefixes(["b/", "a/", "a/x/", "b/"]) == ["a/", "b/"]
    assert normalise_prefixes([]) == [""]


def test_list_paginated_prefixes_and_read(s3_server, bucket):
    name, objects = bucket
    src = source(s3_server, name, "media_attachments/", "cache/")
    assert isinstance(src, S3Source)
    items = run(collect(src))
    keys = [i.key for i in items]
    assert keys == sorted(media(objects))  # page_size 3: 11 keys over several pages, in key order
    assert all(i.size == len(objects[i.key]) and i.etag and i.mtime for i in items)

    async def read_all():
        return await asyncio.gather(*(src.read(i) for i in items))
    assert run(read_all()) == [objects[k] for k in keys]
    whole = run(collect(source(s3_server, name)))
    assert {i.key for i in whole} == set(objects)


def test_incremental_and_resume(s3_server, bucket):
    name, objects = bucket
    src = source(s3_server, name, "media_attachments/", "cache/")
    first = [i.key for i in run(collect(src))]
    cursor = json.loads(src.checkpoint())
    assert cursor["since"] is not None and cursor["after"] is None
    # Explicit since after everything: nothing old is handed out; a new upload is.
    time.sleep(1.1)  # S3 LastModified has 1 s resolution
    cutoff = time.time()
    time.sleep(1.1)
    new_key = "media_attachments/files/110/000/original/new.png"
    s3_server.client().put_object(Bucket=name, Key=new_key, Body=b"new")
    assert [i.key for i in run(collect(source(s3_server, name, "media_attachments/", "cache/"), since=cutoff))] == [new_key]
    # Interrupted listing resumes after the last key, across the prefix boundary, no repeats or gaps.
    full = sorted(first + [new_key])
    for stop in (2, 5, 9):
        a = source(s3_server, name, "media_attachments/", "cache/")
        head = [i.key for i in run(collect(a, limit=stop))]
        b = source(s3_server, name, "media_attachments/", "cache/")
        b.resume(a.checkpoint())
        assert head + [i.key for i in run(collect(b))] == full


def test_retries_through_500s(s3_server, bucket):
    name, objects = bucket
    src = source(s3_server, name, "media_attachments/", through_proxy=True)
    s3_server.proxy.fail_next(7)  # more than one botocore attempt sequence: our outer loop must carry on
    items = run(collect(src))
    assert [i.key for i in items] == sorted(k for k in objects if k.startswith("media_attachments/"))
    assert s3_server.proxy.failed == 7
    s3_server.proxy.fail_next(3, status=503)
    assert run(src.read(items[0])) == objects[items[0].key]
    assert s3_server.proxy.failed == 3
    # A storage that keeps failing ends with a clear SourceError, not a hang.
    s3_server.proxy.fail_next(10_000)
    with pytest.raises(SourceError, match="attempts"):
        run(source(s3_server, name, through_proxy=True, retries=1).read(items[0]))
    s3_server.proxy.fail_next(0)


def test_quarantine_release_delete(s3_server, bucket):
    name, objects = bucket
    src = source(s3_server, name, "media_attachments/", max_bytes=54)
    items = {i.key: i for i in run(collect(src))}
    key = "media_attachments/files/109/002/original/2.png"
    client = s3_server.client()

    async def go():
        location = await src.quarantine(items[key], {"verdict": "urn:v", "scores": {"csam": 0.97}})
        assert location.startswith(f"s3://{name}/verdict-quarantine/")
        qkey = location[len(f"s3://{name}/"):]
        with pytest.raises(ItemGone):
            await src.read(items[key])
        assert client.get_object(Bucket=name, Key=qkey)["Body"].read() == objects[key]
        sidecar = json.loads(client.get_object(Bucket=name, Key=qkey + ".json")["Body"].read())
        assert sidecar["scores"] == {"csam": 0.97} and sidecar["original"]["key"] == key
        assert sidecar["sha256"] == hashlib.sha256(objects[key]).hexdigest()
        assert sidecar["original"]["etag"] == items[key].etag
        # the quarantine prefix is never listed as media, even when listing the whole bucket
        assert not any(i.key.startswith("verdict-quarantine/") for i in await collect(source(s3_server, name)))
        client.put_object(Bucket=name, Key=key, Body=b"other")
        with pytest.raises(SourceError, match="not overwriting"):
            await src.release(location)
        client.delete_object(Bucket=name, Key=key)
        restored = await src.release(location)
        assert restored.key == key and await src.read(restored) == objects[key]
        assert "Contents" not in client.list_objects_v2(Bucket=name, Prefix="verdict-quarantine/")
        with pytest.raises(SourceError):
            await src.release(location)
        # delete really deletes; then the item is reported gone
        await assert_deleted(src, items["media_attachments/files/109/000/original/0.png"])
        # per-item errors: too large / vanished never stop the iteration
        return await read_all(src)
    ok, errors = run(go())
    assert ok >= 1 and errors and all("too large" in e.reason for e in errors)


def test_quarantine_into_other_bucket(s3_server, bucket):
    name, objects = bucket
    s3_server.client().create_bucket(Bucket=name + "-q")
    src = source(s3_server, name, "cache/", quarantine_bucket=name + "-q")
    item = run(collect(src))[0]
    location = run(src.quarantine(item, {}))
    assert location.startswith(f"s3://{name}-q/verdict-quarantine/")
    assert run(src.release(location)).key == item.key
