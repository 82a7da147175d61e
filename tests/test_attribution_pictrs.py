"""pict-rs's internal API as the emulator answers it (as pict-rs 0.5's handlers do), and attribution through
it: hash -> aliases by paging /internal/hashes newest first, alias -> all aliases of its hash, identifier,
and pict-rs's deduplication (one file, two aliases, two uploaders)."""
from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from node.attribution.database import ReadOnlyDatabase
from node.attribution.lemmy import LemmyReader
from node.attribution.pictrs import PictrsClient, PictrsUnavailable
from node.attribution.records import AttributionRecords
from node.attribution.service import AttributionService
from node.store import Store
from tests import lemmy_schema as schema
from tests.attribution_helpers import databases  # noqa: F401
from tests.pictrs_emulator import rfc3339
from tests.postgres_server import postgres_server  # noqa: F401
from tests.storage_servers import pictrs_server  # noqa: F401

PNG = b"\x89PNG\r\n\x1a\n"


def _http_base(server) -> str:
    return f"http://{server.host}:{server.port}"


async def _get(server, path: str, *, token: str | None = None, method: str = "GET"):
    headers = {"X-Api-Token": token if token is not None else server.api_key}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, _http_base(server) + path, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


def test_emulator_internal_api_as_pictrs_answers_it(pictrs_server):  # noqa: F811
    server = pictrs_server
    server.reset()
    data = [PNG + os.urandom(30) for _ in range(5)]
    aliases = [server.state.add(d, created_at=1_700_000_000 + 10 * i) for i, d in enumerate(data)]
    twin = server.state.add(data[1])  # the same bytes again: a new alias of the same hash

    async def main():
        status, body = await _get(server, "/internal/hashes?limit=2")
        assert status == 200 and body["msg"] == "ok"
        page = body["page"]
        assert [h["hex"] for h in page["hashes"]] == [hashlib.sha256(d).hexdigest() for d in (data[4], data[3])]
        assert page["limit"] == 2 and page["prev"] is None and page["next"] and page["current"]
        assert set(page["hashes"][0]["details"]) >= {"width", "height", "frames", "content_type", "created_at"}
        seen = [h["hex"] for h in page["hashes"]]
        while page["next"]:
            _, body = await _get(server, f"/internal/hashes?limit=2&slug={page['next']}")
            page = body["page"]
            seen += [h["hex"] for h in page["hashes"]]
        assert seen == [hashlib.sha256(d).hexdigest() for d in reversed(data)], "newest first, each once"
        _, body = await _get(server, f"/internal/hashes?timestamp={rfc3339(1_700_000_025)}&limit=10")
        assert [h["hex"] for h in body["page"]["hashes"]][0] == hashlib.sha256(data[2]).hexdigest()
        _, body = await _get(server, "/internal/hashes?limit=10")
        dedup = next(h for h in body["page"]["hashes"] if h["hex"] == hashlib.sha256(data[1]).hexdigest())
        assert dedup["aliases"] == [aliases[1], twin], "pict-rs deduplicates: one hash, both aliases"

        assert await _get(server, f"/internal/aliases?alias={twin}") == (200, {"msg": "ok", "aliases": [aliases[1], twin]})
        assert await _get(server, "/internal/aliases?alias=nope.png") == (200, {"msg": "ok", "aliases": []})
        status, body = await _get(server, f"/internal/identifier?alias={aliases[0]}")
        assert status == 200 and body["identifier"].endswith(hashlib.sha256(data[0]).hexdigest())
        assert (await _get(server, "/internal/identifier?alias=nope.png"))[0] == 404
        assert (await _get(server, "/internal/hashes", token="wrong"))[0] == 401
        assert (await _get(server, f"/internal/aliases?alias={twin}", token=""))[0] == 401
        assert (await _get(server, "/internal/purge?alias=nope.png", method="POST")) == (
            400, {"msg": "No images associated with provided alias"})
        assert await _get(server, f"/internal/purge?alias={twin}", method="POST") == (
            200, {"msg": "ok", "aliases": [aliases[1], twin]})
        assert (await _get(server, f"/internal/aliases?alias={aliases[1]}"))[1]["aliases"] == []

    asyncio.run(main())


@pytest.mark.parametrize("long_hex", [False, True], ids=["sha256-hex", "sha256+size+format-hex"])
def test_hash_to_aliases_to_lemmy_uploaders_with_dedup(tmp_path, pictrs_server, databases, long_hex):  # noqa: F811
    """The hook's case: only the sha256 is known. The same bytes were uploaded by alice and by bob (two
    aliases, one file); both uploaders and the posts of both aliases are found."""
    server = pictrs_server
    server.reset()
    server.state.long_hex = long_hex
    target = PNG + os.urandom(64)
    sha = hashlib.sha256(target).hexdigest()
    server.state.add(target, created_at=1_700_000_000, alias=schema.ALICE_ALIAS)
    for i in range(30):  # newer uploads in front of it: several pages to turn
        server.state.add(PNG + os.urandom(20), created_at=1_700_001_000 + i)
    server.state.add(target, alias=schema.UNUSED_ALIAS)

    async def main():
        pictrs = PictrsClient(_http_base(server), server.api_key, page_size=7)
        service = AttributionService(AttributionRecords(Store(tmp_path / "db.sqlite")), pictrs=pictrs,
                                     lemmy=LemmyReader(ReadOnlyDatabase("lemmy", databases["lemmy019"])))
        try:
            result = await service.attribute(sha, source="pictrs")
            assert result.found and not result.problems
            assert result.details["pictrs"]["aliases"] == [schema.ALICE_ALIAS, schema.UNUSED_ALIAS]
            assert result.details["pictrs"]["identifier"].endswith(sha)
            names = [u["uploader"]["name"] for u in result.details["lemmy"]["uploads"]]
            assert sorted(names) == ["alice", "bob"]
            assert result.summary.startswith("uploaded by ") and "alice" in result.summary and "bob" in result.summary
            assert "in 2 posts" in result.summary
            hashes_calls = sum("/internal/hashes" in r for r in server.state.requests)
            assert hashes_calls == 5, "32 hashes in pages of 7, newest first, until it turns up"

            server.state.requests.clear()
            again = await service.attribute(sha, source="pictrs")
            assert again == result and server.state.requests == [], "cached"
            fresh = await service.attribute(sha, source="pictrs", refresh=True)
            assert fresh.looked_up_at > result.looked_up_at and server.state.requests

            # A pict-rs sweep knows the alias: its hash's other aliases come from /internal/aliases.
            server.state.requests.clear()
            swept = await service.attribute(sha, source=f"pictrs://{server.host}:{server.port}",
                                            key=schema.UNUSED_ALIAS)
            assert swept.details["pictrs"]["aliases"] == [schema.ALICE_ALIAS, schema.UNUSED_ALIAS]
            assert not any("/internal/hashes" in r for r in server.state.requests)

            unknown = await service.attribute("0" * 64, source="pictrs")
            assert not unknown.found and unknown.summary == "not found: no pict-rs alias for these bytes"
        finally:
            await service.close()

    asyncio.run(main())


def test_a_wrong_api_key_is_a_problem_not_a_not_found(tmp_path, pictrs_server):  # noqa: F811
    async def main():
        service = AttributionService(AttributionRecords(Store(tmp_path / "db.sqlite")),
                                     pictrs=PictrsClient(_http_base(pictrs_server), "wrong-key"))
        try:
            result = await service.attribute("a" * 64, source="pictrs")
            assert not result.found
            assert result.problems == (f"pict-rs {_http_base(pictrs_server)} refused the API key (HTTP 401): check "
                                       "attribution.pictrs.api_key against PICTRS__SERVER__API_KEY",)
            assert result.summary.startswith("unknown: pict-rs")
            with pytest.raises(PictrsUnavailable):
                await PictrsClient("http://127.0.0.1:9", "k", timeout=2).find_hash("a" * 64)
        finally:
            await service.close()

    asyncio.run(main())
