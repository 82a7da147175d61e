"""Sweeps end to end over the real servers of tests/storage_servers.py (OpenSSH sshd, moto S3 behind a
500-injecting proxy, the pict-rs admin API emulator), on a real node with the tiny CLIP; and their
faults: the SSH connection dropped mid-sweep, S3 answering 500s for a while."""
from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path

from node.sweeps.actions import apply_run, release
from scanners.sources import open_source
from tests.images import photo_bytes, synthetic_image_bytes
from tests.node_helpers import make_data_dir, run
from tests.storage_servers import pictrs_server, s3_server, sshd_server  # noqa: F401 - session fixtures
from tests.sweep_helpers import hostile_items, inferred, records, rows, with_node, write_tree
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

THRESHOLDS = {"csam": 0.5}
POSITIVE, NEGATIVE = "hubble_deep_field", "astronaut"  # csam >= 0.5 / well below with the tiny CLIP


def corpus() -> dict[str, bytes]:
    items = {"a/1/good": photo_bytes(NEGATIVE, size=256), "a/2/bad": photo_bytes(POSITIVE, size=256),
             "b/also-bad": photo_bytes("coffee", size=256), "b/cat": photo_bytes("chelsea", size=256)}
    for key, (data, _) in hostile_items(("random_bytes", "mp4_header", "truncated_png")).items():
        items[key] = data
    return items


def many_images(n: int) -> dict[str, bytes]:
    return {f"d{i % 4}/img-{i:03d}": synthetic_image_bytes(i, size=(96, 96)) for i in range(n)}


async def sweep(node, source, url, **options):
    from node.sweeps.engine import Sweep, SweepOptions

    s = Sweep(node, source, url, SweepOptions(**options))
    return await s.run(), s.run_id, s


def ssh_open(server, root: Path, **options):
    options.setdefault("client_keys", [str(server.client_keys["ed25519"])])
    options.setdefault("host_key", server.host_public_key)
    options.setdefault("backoff", 0.05)
    return open_source(server.url(str(root)), **options)


def test_ssh_sweep_quarantines_remotely_and_releases(tmp_path, tiny_clip_spec, sshd_server):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "remote" / "files"
    items = corpus()
    write_tree(root, items)
    url = sshd_server.url(str(root))

    async def body(node):
        async with ssh_open(sshd_server, root) as src:
            stats, _, _ = await sweep(node, src, url, workers=3)
            recorded = rows(node)
            assert set(recorded) == set(items) and stats.errors == 0
            positives = {k for k, r in recorded.items() if r["outcome"] == "block"}
            assert {"a/2/bad", "b/also-bad"} <= positives and "a/1/good" not in positives
            for key in positives:
                assert not (root / key).exists() and Path(recorded[key]["location"]).read_bytes() == items[key]
            assert recorded["hostile/mp4_header"]["outcome"] == "video" and (root / "hostile/mp4_header").exists()
            await release(records(node), recorded["a/2/bad"]["location"], src, reason="fine")
            assert (root / "a/2/bad").read_bytes() == items["a/2/bad"]
            again, _, _ = await sweep(node, src, url)
            assert again.decided == 0 and again.quarantined == 0 and (root / "a/2/bad").exists()
    run(with_node(config, body))


def test_ssh_connection_dropped_mid_sweep_reconnects_and_finishes(tmp_path, tiny_clip_spec, sshd_server):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "remote" / "files"
    items = many_images(24)
    write_tree(root, items)

    async def body(node):
        async with ssh_open(sshd_server, root) as src:
            from node.sweeps.engine import Sweep, SweepOptions

            s = Sweep(node, src, sshd_server.url(str(root)), SweepOptions(workers=2, action="dry-run"))
            task = asyncio.create_task(s.run())
            while s.stats.decided < 4 and not task.done():
                await asyncio.sleep(0.01)
            dropped = await asyncio.to_thread(sshd_server.drop_connections)
            stats = await task
            assert dropped >= 1 and src.reconnects >= 1
            assert 4 <= stats.decided - 0 and stats.errors == 0 and stats.listing_errors == 0
            assert set(rows(node)) == set(items)
            assert {r["outcome"] for r in rows(node).values()} <= {"block", "allow"}
            assert inferred(node) == len(set(items.values()))  # each image classified once
    run(with_node(config, body))


def make_bucket(s3_server, items: dict[str, bytes]) -> str:
    name = f"sweep-{secrets.token_hex(4)}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    for key, data in items.items():
        client.put_object(Bucket=name, Key=key, Body=data)
    return name


def s3_open(s3_server, name, through_proxy=False, **options):
    return open_source(f"s3://{name}/", **{**s3_server.options(through_proxy), "page_size": 3, "backoff": 0.01,
                                          **options})


def test_s3_dry_run_apply_release_and_delete(tmp_path, tiny_clip_spec, s3_server):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    items = corpus()
    name = make_bucket(s3_server, items)
    client = s3_server.client()

    one = ""

    def keys(bucket: str) -> set[str]:
        return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}

    async def body(node):
        nonlocal one
        src = s3_open(s3_server, name)
        try:
            stats, run_id, _ = await sweep(node, src, f"s3://{name}/", action="dry-run")
            positives = {k for k, r in rows(node).items() if r["outcome"] == "block"}
            assert positives and stats.dry_run == len(positives) and keys(name) == set(items)
            classified = inferred(node)
            counts = await apply_run(records(node), run_id, src, actor_id=node.actor_id)
            assert counts["quarantined"] == len(positives) and inferred(node) == classified
            remaining = keys(name)
            assert not positives & {k for k in remaining if not k.startswith("verdict-quarantine/")}
            assert sum(k.startswith("verdict-quarantine/") and not k.endswith(".json") for k in remaining) == len(positives)
            one = sorted(positives)[0]
            await release(records(node), rows(node)[one]["location"], src, reason="reviewed")
            assert client.get_object(Bucket=name, Key=one)["Body"].read() == items[one]
            again, _, _ = await sweep(node, src, f"s3://{name}/")
            assert again.quarantined == 0 and again.decided == 0
        finally:
            await src.close()

        other = make_bucket(s3_server, items)
        src = s3_open(s3_server, other)
        try:
            deleted, _, _ = await sweep(node, src, f"s3://{other}/", action="delete")
        finally:
            await src.close()
        # The released bytes are overridden everywhere: the copy in the other bucket stays.
        assert deleted.deleted == len(positives) - 1 and deleted.overridden == 1 and deleted.inferred == 0
        assert keys(other) == set(items) - (positives - {one})
    run(with_node(config, body))


def test_s3_answering_500s_for_a_while_is_retried_and_the_sweep_finishes(tmp_path, tiny_clip_spec, s3_server):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    items = many_images(18)
    name = make_bucket(s3_server, items)

    async def body(node):
        from node.sweeps.engine import Sweep, SweepOptions

        src = s3_open(s3_server, name, through_proxy=True)
        try:
            s = Sweep(node, src, f"s3://{name}/", SweepOptions(workers=2, action="dry-run"))
            task = asyncio.create_task(s.run())
            while s.stats.decided < 3 and not task.done():
                await asyncio.sleep(0.01)
            s3_server.proxy.fail_next(12)
            stats = await task
        finally:
            await src.close()
        assert s3_server.proxy.failed == 12  # the outage happened during the sweep
        assert stats.errors == 0 and stats.listing_errors == 0
        assert set(rows(node)) == set(items)
        assert inferred(node) == len(set(items.values()))
    run(with_node(config, body))


def test_pictrs_sweep_purges_positives_and_release_reuploads(tmp_path, tiny_clip_spec, pictrs_server):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    pictrs_server.reset()
    state = pictrs_server.state
    photos = {NEGATIVE: photo_bytes(NEGATIVE, size=256), POSITIVE: photo_bytes(POSITIVE, size=256),
              "chelsea": photo_bytes("chelsea", size=256), "coffee": photo_bytes("coffee", size=256)}
    aliases = {name: state.add(data, created_at=1_700_000_000 + i) for i, (name, data) in enumerate(photos.items())}
    quarantine = tmp_path / "q"

    async def body(node):
        src = open_source(pictrs_server.url, api_key=pictrs_server.api_key, quarantine_dir=str(quarantine),
                          page_size=2, backoff=0.01)
        try:
            stats, _, _ = await sweep(node, src, pictrs_server.url)
            recorded = rows(node)
            assert set(recorded) == set(aliases.values())
            bad = aliases[POSITIVE]
            assert recorded[bad]["outcome"] == "block" and recorded[bad]["action"] == "quarantined"
            assert bad not in state.alias_to_hash  # purged through the admin API, not behind pict-rs's back
            assert recorded[aliases[NEGATIVE]]["outcome"] == "allow" and aliases[NEGATIVE] in state.alias_to_hash
            assert Path(recorded[bad]["location"]).read_bytes() == photos[POSITIVE]
            assert recorded[bad]["etag"] == hashlib.sha256(photos[POSITIVE]).hexdigest()
            done = await release(records(node), bad, src, reason="reviewed")
            assert done["restored_key"] != bad and done["restored_key"] in state.alias_to_hash  # a NEW alias
            before = inferred(node)
            again, _, _ = await sweep(node, src, pictrs_server.url)
            assert again.quarantined == 0 and inferred(node) == before
            assert done["restored_key"] in state.alias_to_hash
        finally:
            await src.close()
    run(with_node(config, body))
