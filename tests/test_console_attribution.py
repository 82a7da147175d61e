"""The review console and attribution together, with no stand-in on either side: the node is opened as serve
opens it (node.attribution set by node.attribution's install from node.yaml's ``attribution:`` section, the
console installed on the same node), Lemmy 0.19's tables live in the session's PostgreSQL and are read with
README's read-only role, pict-rs is the emulator (its /internal/hashes lists the hook rejection's bytes under
alice's alias) and Lemmy's admin API is the checking stand-in. Each feature's own tests used a stand-in for
the other, so only here can the shape of what one hands the other go wrong unnoticed."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.admin import Console, console_app
from node.cli import main as cli_main
from node.config import load_config
from node.serve import open_serving_node
from tests import lemmy_schema as schema
from tests.admin_helpers import World, build_world, login
from tests.attribution_helpers import RO_PASSWORD, databases  # noqa: F401 - the Lemmy database of the session
from tests.lemmy_api_server import ADMIN_JWT, lemmy_api
from tests.node_helpers import free_port, run
from tests.pictrs_emulator import PictrsState, build_app as pictrs_app
from tests.postgres_server import postgres_server  # noqa: F401 - the one cluster of the session

HOOKED = "rocket"  # the world's own-verdict hook rejection: the same bytes pict-rs stored earlier as alice's upload


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


def _configure(world: World, database_url: str, pictrs_url: str, api_url: str, api_key: str) -> None:
    """node.yaml gains the attribution section an admin would write (the JWT in its own file, as README says)."""
    path = world.config.data_dir / "node.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["attribution"] = {"lemmy": {"database_url": database_url, "api_url": api_url, "api_jwt_file": "lemmy.jwt"},
                          "pictrs": {"api_url": pictrs_url, "api_key": api_key}, "connect_timeout_seconds": 3}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    (world.config.data_dir / "lemmy.jwt").write_text(ADMIN_JWT + "\n")
    world.config = load_config(path)


def with_real_attribution(world: World, database_url: str, body) -> object:
    """Run ``body(console, client, lemmy)`` against a node opened as serve opens it, with the pict-rs emulator
    (alice's alias on the hooked bytes) and the Lemmy admin-API server running."""
    async def main():
        state = PictrsState(api_key=secrets.token_hex(8))
        state.add(world.images[HOOKED], alias=schema.ALICE_ALIAS)
        runner = web.AppRunner(pictrs_app(state))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with lemmy_api("0.19") as lemmy:
                _configure(world, database_url, f"http://127.0.0.1:{port}", lemmy.url, state.api_key)
                node = open_serving_node(world.config, load_model=False)
                client = None
                try:
                    assert type(node.attribution).__name__ == "AttributionService", "installed from node.yaml"
                    console = node.features.get(Console)
                    client = TestClient(TestServer(console_app(console)))
                    await client.start_server()
                    return await body(console, client, lemmy)
                finally:
                    if client is not None:
                        await client.close()
                    await node.close()
        finally:
            await runner.cleanup()
    return run(main())


def test_item_page_confirm_export_and_purge_name_alice_from_lemmys_own_records(world, databases, capsys):  # noqa: F811
    """What an admin sees and keeps comes from Lemmy's tables: the uploader with her actor URL, the posts
    that use the alias as links and purge forms, the evidence record, the export, and one purge call."""
    ref = world.bytes_ref(HOOKED)

    async def body(console, client, lemmy):
        csrf = await login(console, client)
        page = await (await client.get(f"/item/{ref}")).text()
        assert f"uploaded by alice ({schema.LEMMY}/u/alice, account created 2024-01-02)" in page
        assert "in 2 posts" in page
        for post in (101, 102):
            assert f'href="{schema.LEMMY}/post/{post}"' in page, f"post {post}: no link"
            assert f"Purge post {post} via Lemmy" in page
        assert f'href="{schema.LEMMY}/u/alice"' in page and "Purge person 1 via Lemmy" in page
        assert "Purge post 105" not in page, "the post that merely mentions the alias is not a use of it"
        assert "Purge comment 201" not in page and "?search_text=1" in page, "bodies are searched only when asked"
        searched = await (await client.get(f"/item/{ref}?search_text=1")).text()
        assert f'href="{schema.LEMMY}/comment/201"' in searched and "Purge comment 201 via Lemmy" in searched

        confirmed = await client.post(f"/item/{ref}/confirm", data={"csrf": csrf, "note": "reported"},
                                      allow_redirects=False)
        assert confirmed.status == 303
        (listed,) = console.node.evidence.list()
        record = console.node.evidence.get(listed["id"])
        assert record["sha256"] == hashlib.sha256(world.images[HOOKED]).hexdigest()
        lemmy_part = record["attribution"]["lemmy"]
        assert [u["uploader"]["name"] for u in lemmy_part["uploads"]] == ["alice"]
        assert [p["post_id"] for p in lemmy_part["posts"]] == [101, 102]
        assert record["attribution"]["problems"] == []

        purged = await client.post(f"/item/{ref}/purge", data={"csrf": csrf, "kind": "post", "target": "101",
                                                               "reason": "CSAM, reported"})
        line = f"lemmy {lemmy.url} did purge post 101 (Lemmy 0.19)"
        assert purged.status == 200 and line in await purged.text()
        assert [(c["path"], c["body"], c["authorization"], c["content_type"]) for c in lemmy.calls] == [
            ("/api/v3/admin/purge/post", {"post_id": 101, "reason": "CSAM, reported"}, f"Bearer {ADMIN_JWT}",
             "application/json")]
        assert [(a.actor, a.target, a.result) for a in console.audit.entries(action="purge")] == [
            ("ada", "lemmy post 101", line)]

    with_real_attribution(world, databases["lemmy019"], body)
    capsys.readouterr()
    config = str(world.config.data_dir / "node.yaml")
    assert cli_main(["evidence", "export", "--format", "csv", "--config", config]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    uploaders = json.loads(row["uploaders"])
    assert [(u["name"], u["actor_url"]) for u in uploaders] == [("alice", f"{schema.LEMMY}/u/alice")]
    assert json.loads(row["public_links"]) == [f"{schema.LEMMY}/post/101", f"{schema.LEMMY}/post/102"]


def test_lemmys_database_refusing_the_login_is_said_on_the_page_and_the_hook_still_decides(world,
                                                                                           databases):  # noqa: F811
    """A wrong password (the shared cluster stays up): the item page still renders with one problem line
    naming the database but not the password, and the pict-rs hook decides as before."""
    wrong = databases["lemmy019"].replace(RO_PASSWORD, "wrong-" + RO_PASSWORD)
    database = wrong.split("@", 1)[1]

    async def body(console, client, lemmy):
        await login(console, client)
        response = await client.get(f"/item/{world.bytes_ref(HOOKED)}")
        page = await response.text()
        assert response.status == 200
        assert (f"lemmy database postgresql://verdict_node_ro@{database} unreachable: password authentication "
                "failed") in page
        assert RO_PASSWORD not in page and "Purge post" not in page
        result = await console.node.pipeline.check(world.images[HOOKED], source="pictrs")
        assert result.decision == "reject", result
        assert lemmy.calls == []

    with_real_attribution(world, wrong, body)
