"""The explicit admin actions: purging a Lemmy post, comment or person through the admin API (0.19 and 1.0
routes) against a server that checks each request's shape; every call's answer recorded and said plainly,
a wrong or non-admin token among them."""
from __future__ import annotations

import asyncio

import pytest

from node.attribution.database import ReadOnlyDatabase
from node.attribution.lemmy import LemmyReader
from node.attribution.lemmy_api import LemmyAdminApi
from node.attribution.records import AttributionRecords
from node.attribution.service import AttributionService
from node.store import Store
from tests import lemmy_schema as schema
from tests.attribution_helpers import databases  # noqa: F401
from tests.lemmy_api_server import ADMIN_JWT, USER_JWT, lemmy_api
from tests.postgres_server import postgres_server  # noqa: F401


@pytest.mark.parametrize("version", ["0.19", "1.0"])
def test_purge_calls_have_lemmys_shape_and_are_recorded(tmp_path, version):
    async def main():
        async with lemmy_api(version) as api:
            records = AttributionRecords(Store(tmp_path / "db.sqlite"))
            service = AttributionService(records, lemmy_api=LemmyAdminApi(api.url, ADMIN_JWT, version=version))
            lines = [await service.purge("post", 101, reason="CSAM, reported", actor="alice"),
                     await service.purge("comment", 201, reason="spam", actor="alice"),
                     await service.purge("person", 1, reason="uploader of CSAM", actor="bob"),
                     await service.purge("post", 999, reason="gone?", actor="alice")]
            prefix = "/api/v4" if version == "1.0" else "/api/v3"
            assert [c["path"] for c in api.calls] == [f"{prefix}/admin/purge/post", f"{prefix}/admin/purge/comment",
                                                      f"{prefix}/admin/purge/person", f"{prefix}/admin/purge/post"]
            assert api.calls[0]["body"] == {"post_id": 101, "reason": "CSAM, reported"}
            assert api.calls[1]["body"] == {"comment_id": 201, "reason": "spam"}
            assert api.calls[2]["body"] == {"person_id": 1, "reason": "uploader of CSAM"}
            assert all(c["authorization"] == f"Bearer {ADMIN_JWT}" and c["content_type"] == "application/json"
                       for c in api.calls)
            assert lines[0] == f"lemmy {api.url} did purge post 101 (Lemmy {version})"
            assert lines[3] == (f"lemmy {api.url} refused purge post 999: HTTP 404 couldnt_find_post: no such post "
                                "on that instance")
            actions = records.actions()
            assert [(a["kind"], a["target_id"], a["actor"], a["ok"]) for a in reversed(actions)] == [
                ("post", 101, "alice", True), ("comment", 201, "alice", True), ("person", 1, "bob", True),
                ("post", 999, "alice", False)]
            assert actions[0]["answer"] == lines[3] and actions[-1]["reason"] == "CSAM, reported"

    asyncio.run(main())


@pytest.mark.parametrize("jwt,expected", [
    ("expired-or-wrong", "HTTP 401 not_logged_in: check attribution.lemmy.api_jwt (an admin's login token, not expired)"),
    (USER_JWT, "HTTP 400 not_an_admin: check attribution.lemmy.api_jwt (an admin's login token, not expired)"),
])
def test_a_wrong_or_non_admin_token_is_said_plainly(tmp_path, jwt, expected):
    async def main():
        async with lemmy_api("0.19") as api:
            records = AttributionRecords(Store(tmp_path / "db.sqlite"))
            service = AttributionService(records, lemmy_api=LemmyAdminApi(api.url, jwt))
            line = await service.purge("post", 101, reason="r", actor="alice")
            assert line == f"lemmy {api.url} refused purge post 101: {expected}"
            assert records.actions()[0]["ok"] is False

    asyncio.run(main())


def test_purge_refuses_bad_requests_and_says_when_unconfigured_or_unreachable(tmp_path):
    async def main():
        records = AttributionRecords(Store(tmp_path / "db.sqlite"))
        service = AttributionService(records)
        with pytest.raises(ValueError, match="one of post, comment, person"):
            await service.purge("community", 1, reason="r", actor="a")
        with pytest.raises(ValueError, match="needs a reason"):
            await service.purge("post", 1, reason=" ", actor="a")
        line = await service.purge("post", 1, reason="r", actor="a")
        assert line.startswith("no purge: attribution.lemmy.api_url")
        down = AttributionService(records, lemmy_api=LemmyAdminApi("http://127.0.0.1:9", ADMIN_JWT))
        line = await down.purge("post", 1, reason="r", actor="a")
        assert line.startswith("lemmy http://127.0.0.1:9 unreachable, nothing done (purge post 1)")
        assert len(records.actions()) == 2

    asyncio.run(main())


def test_with_version_auto_the_routes_follow_lemmys_database(tmp_path, databases):  # noqa: F811
    async def main():
        async with lemmy_api("1.0") as api:
            lemmy = LemmyReader(ReadOnlyDatabase("lemmy", databases["lemmy10"]))
            service = AttributionService(AttributionRecords(Store(tmp_path / "db.sqlite")), lemmy=lemmy,
                                         lemmy_api=LemmyAdminApi(api.url, ADMIN_JWT))
            try:
                line = await service.purge("post", 102, reason="r", actor="a")
                assert line.endswith("did purge post 102 (Lemmy 1.0)") and api.calls[0]["path"] == "/api/v4/admin/purge/post"
            finally:
                await service.close()

    asyncio.run(main())


@pytest.mark.parametrize("which,version", [("lemmy019", "0.19"), ("lemmy10", "1.0")])
def test_deleting_one_image_uses_each_versions_route(tmp_path, databases, which, version):  # noqa: F811
    """1.0: DELETE /api/v4/image {"filename": alias}; 0.19: the upload's delete token, read from Lemmy's
    database, in /pictrs/image/delete/{token}/{alias}."""
    async def main():
        async with lemmy_api(version) as api:
            api.images[schema.ALICE_ALIAS] = "tok1"
            records = AttributionRecords(Store(tmp_path / "db.sqlite"))
            service = AttributionService(records, lemmy=LemmyReader(ReadOnlyDatabase("lemmy", databases[which])),
                                         lemmy_api=LemmyAdminApi(api.url, ADMIN_JWT))
            try:
                line = await service.delete_image(schema.ALICE_ALIAS, reason="CSAM", actor="alice")
                missing = await service.delete_image("nope.png", reason="CSAM", actor="alice")
            finally:
                await service.close()
            assert line == f"lemmy {api.url} did delete image {schema.ALICE_ALIAS} (Lemmy {version})"
            assert schema.ALICE_ALIAS not in api.images
            if version == "1.0":
                assert api.calls[0] == {"path": "/api/v4/image", "method": "DELETE",
                                        "body": {"filename": schema.ALICE_ALIAS}, "authorization": f"Bearer {ADMIN_JWT}"}
                assert missing.endswith("HTTP 404 not_found: no such image on that instance")
            else:
                assert api.calls[0]["path"] == f"/pictrs/image/delete/tok1/{schema.ALICE_ALIAS}"
                assert "its database has no upload of that alias" in missing and len(api.calls) == 1
            actions = records.actions()
            assert [(a["kind"], a["target"], a["target_id"], a["ok"]) for a in reversed(actions)] == [
                ("image", schema.ALICE_ALIAS, None, True), ("image", "nope.png", None, False)]

    asyncio.run(main())
