"""Attribution against a real PostgreSQL holding Lemmy 0.19's and 1.0's tables and a Mastodon subset, read
through the read-only role README tells admins to create: an uploaded image used by two posts and a comment,
a federated thumbnail, a deleted user's upload, an unused one, Mastodon media of a local and a remote
account, and "not found" said plainly otherwise."""
from __future__ import annotations

import asyncio

import pytest

from node.attribution.database import DatabaseUnavailable, ReadOnlyDatabase
from node.attribution.lemmy import LemmyReader
from node.attribution.mastodon import MastodonReader, attachment_of
from node.attribution.records import AttributionRecords
from node.attribution.service import AttributionService
from node.store import Store
from tests import lemmy_schema as schema
from tests.attribution_helpers import databases  # noqa: F401 - the instance databases
from tests.postgres_server import postgres_server  # noqa: F401 - the session's cluster

def _service(tmp_path, url: str | None, *, mastodon_url: str | None = None, version: str = "auto"):
    lemmy = LemmyReader(ReadOnlyDatabase("lemmy", url), version) if url else None
    mastodon = (MastodonReader(ReadOnlyDatabase("mastodon", mastodon_url), schema.MASTODON_HOST)
                if mastodon_url else None)
    store = Store(tmp_path / "node.db")
    return AttributionService(AttributionRecords(store), lemmy=lemmy, mastodon=mastodon)


@pytest.mark.parametrize("which,version", [("lemmy019", "0.19"), ("lemmy10", "1.0")])
def test_lemmy_uploads_posts_comments_thumbnails_and_deleted_users(tmp_path, databases, which, version):
    async def main():
        service = _service(tmp_path, databases[which])
        try:
            assert (await service.lemmy.schema()).version == version
            alice = await service.attribute("a" * 64, source="pictrs", key=schema.ALICE_ALIAS, search_text=True)
            assert alice.found and not alice.problems
            lemmy = alice.details["lemmy"]
            assert lemmy["version"] == version
            (upload,) = lemmy["uploads"]
            assert upload["uploader"]["name"] == "alice"
            assert upload["uploader"]["actor_url"] == f"{schema.LEMMY}/u/alice"
            assert upload["uploader"]["created_at"].startswith("2024-01-02")
            assert [p["post_id"] for p in lemmy["posts"]] == [101, 102], "post 105 only has the alias inside a name"
            assert lemmy["posts"][0]["via"] == ["url"] and lemmy["posts"][1]["via"] == ["thumbnail_url"]
            assert [p["ap_id"] for p in lemmy["posts"]] == [f"{schema.LEMMY}/post/101", f"{schema.LEMMY}/post/102"]
            assert [c["comment_id"] for c in lemmy["comments"]] == [201]
            assert lemmy["comments"][0]["ap_id"] == f"{schema.LEMMY}/comment/201"
            assert alice.summary.startswith("uploaded by alice (https://lemmy.example/u/alice, account created 2024-01-02)")
            assert "in 2 posts and 1 comment" in alice.summary

            no_text = await service.attribute("a" * 64, source="pictrs", key=schema.ALICE_ALIAS)
            assert no_text.details["lemmy"]["comments"] == [] and "2 posts" in no_text.summary

            thumb = await service.attribute("b" * 64, source="pictrs", key=schema.THUMB_ALIAS)
            (upload,) = thumb.details["lemmy"]["uploads"]
            assert upload["federated_thumbnail"] and upload["uploader"] is None
            assert upload["remote_post"]["ap_id"] == f"{schema.REMOTE}/post/77"
            assert "federated thumbnail of https://remote.example/post/77" in thumb.summary
            assert thumb.details["lemmy"]["posts"][0]["creator"]["name"] == "carol"

            deleted = await service.attribute("c" * 64, source="pictrs", key=schema.DELETED_ALIAS)
            assert deleted.details["lemmy"]["uploads"][0]["uploader"]["deleted"] is True
            assert "mallory" in deleted.summary and "account deleted" in deleted.summary
            assert deleted.details["lemmy"]["posts"][0]["post_id"] == 104

            unused = await service.attribute("d" * 64, source="pictrs", key=schema.UNUSED_ALIAS)
            assert unused.found and unused.summary.startswith("uploaded by bob") and "post" not in unused.summary

            missing = await service.attribute("e" * 64, source="pictrs", key="no-such-alias.png")
            assert not missing.found and not missing.problems
            assert missing.summary == "not found: Lemmy has no upload or post of alias no-such-alias.png"
            nothing = await service.attribute("f" * 64)
            assert not nothing.found and nothing.summary.startswith("not found")
        finally:
            await service.close()

    asyncio.run(main())


def test_a_configured_version_that_is_not_the_databases_is_said(tmp_path, databases):
    async def main():
        service = _service(tmp_path, databases["lemmy019"], version="1.0")
        try:
            result = await service.attribute("a" * 64, source="pictrs", key=schema.ALICE_ALIAS)
            assert not result.found
            assert result.problems == ("lemmy: attribution.lemmy.version is 1.0 but the tables are those of Lemmy 0.19",)
        finally:
            await service.close()

    asyncio.run(main())


def test_mastodon_paths_name_the_attachment_its_account_and_status(tmp_path, databases):
    assert attachment_of(schema.LOCAL_MEDIA_KEY) == (schema.LOCAL_MEDIA_ID, False, "original")
    assert attachment_of("/srv/mastodon/public/system/" + schema.REMOTE_MEDIA_KEY) == (
        schema.REMOTE_MEDIA_ID, True, "small")
    assert attachment_of("accounts/avatars/000/000/001/original/a.png") is None
    assert attachment_of("media_attachments/files/000/000/042/original/old.png") == (42, False, "original")
    # Seven groups is no Mastodon partition: a key crafted to look like one names no attachment.
    assert attachment_of("x/media_attachments/files/000/000/000/000/000/000/001/original/a.png") is None

    async def main():
        service = _service(tmp_path, None, mastodon_url=databases["mastodon"])
        try:
            local = await service.attribute("1" * 64, source="file:///srv/mastodon/public/system",
                                            key=schema.LOCAL_MEDIA_KEY)
            (media,) = local.details["mastodon"]
            assert media["account"]["handle"] == "@dana" and media["account"]["url"] == f"{schema.MASTODON_HOST}/@dana"
            assert media["status"]["url"] == f"{schema.MASTODON_HOST}/@dana/500"
            assert local.summary == f"mastodon media {schema.LOCAL_MEDIA_ID} of @dana in {schema.MASTODON_HOST}/@dana/500"
            remote = await service.attribute("2" * 64, source="s3://mastodon", key=schema.REMOTE_MEDIA_KEY)
            (media,) = remote.details["mastodon"]
            assert media["cached_remote"] and media["account"]["handle"] == "@erin@remote.example"
            assert media["account"]["url"] == "https://remote.example/@erin"
            absent = await service.attribute("3" * 64, source="s3://mastodon",
                                             key="media_attachments/files/000/000/000/000/000/001/original/x.png")
            assert not absent.found and absent.summary == "not found: Mastodon has no media attachment for that path"
        finally:
            await service.close()

    asyncio.run(main())


def test_the_role_is_read_only_and_the_connection_refuses_writes_anyway(tmp_path, databases, postgres_server):  # noqa: F811
    async def main():
        db = ReadOnlyDatabase("lemmy", databases["lemmy019"])
        try:
            with pytest.raises(DatabaseUnavailable, match="refused a query: .*read-only transaction"):
                await db.fetch("UPDATE person SET name = 'x' WHERE id = 1")
            with pytest.raises(DatabaseUnavailable, match="refused a query"):
                await db.fetch("CREATE TABLE intruder (id int)")
            assert (await db.fetch("SELECT name FROM person WHERE id = 1")) == [{"name": "alice"}]
        finally:
            await db.close()

    asyncio.run(main())
    # The role itself holds SELECT only: even outside the node's read-only session a write is refused.
    import psycopg

    with psycopg.connect(databases["lemmy019"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE person SET name = 'x' WHERE id = 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO local_image (pictrs_alias, pictrs_delete_token) VALUES ('x', 'y')")
