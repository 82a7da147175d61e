"""How long attribution takes on a Lemmy of some size: cold, warm, with text search, and from the cache.

Makes a throwaway PostgreSQL cluster (tests/postgres_server.py), a Lemmy 0.19 and a 1.0 schema with
POSTS posts, 3 x POSTS comments and POSTS / 20 people (local_image keeps the test schema's four uploads),
and times `attribute()` of a known alias through the read-only role (no pict-rs paging): cold (first
query: connection, schema), warm (pool open, cache bypassed with refresh=True), with --search-text (post
bodies and comments searched too), and from the cache.

    .venv/bin/python -m bench.attribution [POSTS]
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.attribution.database import ReadOnlyDatabase  # noqa: E402
from node.attribution.lemmy import LemmyReader  # noqa: E402
from node.attribution.records import AttributionRecords  # noqa: E402
from node.attribution.service import AttributionService  # noqa: E402
from node.store import Store  # noqa: E402
from tests import lemmy_schema as schema  # noqa: E402
from tests.postgres_server import start_cluster  # noqa: E402


def fill(server, db: str, posts: int, version: str) -> None:
    published = "published_at" if version == "1.0" else "published"
    server.execute(f"""
INSERT INTO person (id, name, {'ap_id' if version == '1.0' else 'actor_id'}, local, {published})
    SELECT 1000 + g, 'user' || g, '{schema.LEMMY}/u/user' || g, true, now() FROM generate_series(1, {posts // 20}) g;
INSERT INTO post (id, name, url, thumbnail_url, creator_id, body, ap_id, local, {published})
    SELECT 10000 + g, 'post ' || g, '{schema.LEMMY}/pictrs/image/' || md5(g::text) || '.png', NULL,
           1000 + (g % {max(1, posts // 20)}) + 1, repeat('some body text ', 20), '{schema.LEMMY}/post/' || (10000 + g),
           true, now() FROM generate_series(1, {posts}) g;
INSERT INTO comment (id, content, creator_id, post_id, ap_id, {published})
    SELECT 100000 + g, repeat('a comment ', 30), 1000 + (g % {max(1, posts // 20)}) + 1, 10000 + (g % {posts}) + 1,
           '{schema.LEMMY}/comment/' || (100000 + g), now() FROM generate_series(1, {posts * 3}) g;
ANALYZE;
""", db)


async def time_calls(service, n: int, **kw) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await service.attribute("a" * 64, source="pictrs", key=schema.ALICE_ALIAS, **kw)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def bench(url: str, store_dir: Path, label: str) -> None:
    service = AttributionService(AttributionRecords(Store(store_dir / f"{label}.db")),
                                 lemmy=LemmyReader(ReadOnlyDatabase("lemmy", url)))
    try:
        cold = await time_calls(service, 1, refresh=True)
        warm = await time_calls(service, 20, refresh=True)
        text = await time_calls(service, 5, refresh=True, search_text=True)
        cached = await time_calls(service, 200)
        result = await service.attribute("a" * 64, source="pictrs", key=schema.ALICE_ALIAS)
        print(f"{label}: cold {cold[0]:.1f} ms; warm median {statistics.median(warm):.1f} ms "
              f"(max {max(warm):.1f}); --search-text median {statistics.median(text):.1f} ms; "
              f"cached median {statistics.median(cached):.3f} ms; summary: {result.summary}")
    finally:
        await service.close()


def main() -> None:
    posts = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    server = start_cluster()
    try:
        server.execute("CREATE ROLE verdict_node_ro LOGIN PASSWORD 'bench'")
        for version, sql in (("0.19", schema.LEMMY_019), ("1.0", schema.LEMMY_10)):
            db = server.create_database("bench")
            server.execute(sql, db)
            started = time.perf_counter()
            fill(server, db, posts, version)
            filled = time.perf_counter() - started
            for statement in schema.read_only_grants(db, schema.LEMMY_TABLES, "bench", create_role=False).splitlines():
                server.execute(statement, db)
            print(f"Lemmy {version}: {posts:,} posts, {posts * 3:,} comments, {posts // 20:,} people "
                  f"(filled in {filled:.1f} s)")
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(bench(server.url(db, user="verdict_node_ro", password="bench"), Path(tmp), version))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
