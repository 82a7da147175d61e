"""The review console on the server side: every action's effect on the database and on the files, the
session guard and its refusals, reveals (and switching them off), the CLI for accounts, and that the
federation listener serves no console route. The world comes from tests.admin_helpers (a real swept
quarantine, real signed verdicts, a real hook rejection)."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import urllib.error
import urllib.request

import aiohttp
import pytest
from argon2 import PasswordHasher
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from node.admin import Console, console_app
from node.admin.charts import nice_top
from node.admin.queue import Filters
from node.cli import main as cli_main
from node.evidence import Positive
from node.serve import open_serving_node
from tests.admin_helpers import (ASKING, FOLLOWER, NEW_PASSWORD, PEER, FakeAttributor, build_world, csrf_of, login,
                                 post_login, with_console)
from tests.images import fine_detail
from tests.node_helpers import free_port, make_data_dir, run, running_node, serve_process


@pytest.fixture
def world(tmp_path):
    return build_world(tmp_path)


def session_cookie(response) -> str:
    """The Set-Cookie header of the session (a login also ends the login form's own cookie)."""
    (cookie,) = [c for c in response.headers.getall("Set-Cookie") if c.startswith("vn_console=")]
    return cookie


def test_every_route_needs_a_session_and_every_answer_has_the_security_headers(world):
    async def body(console, client):
        app_routes = [(r.method, r.resource.canonical) for r in client.server.app.router.routes()]
        for method, path in app_routes:
            path = path.replace("{ref}", world.item_ref("a/galaxy")).replace(r"{id:\d+}", "1")
            response = await client.request(method, path, allow_redirects=False, data={} if method == "POST" else None)
            if path in ("/login", "/static/console.css") or method == "HEAD":
                continue
            if method == "GET":
                assert (response.status, response.headers["Location"]) == (303, "/login"), path
            else:
                assert response.status == 401, path
            assert "default-src 'none'" in response.headers["Content-Security-Policy"], path
            assert response.headers["Cache-Control"] == "no-store"
        login_page = await client.get("/login")
        assert login_page.status == 200
        for name, value in (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                            ("Cache-Control", "no-store")):
            assert login_page.headers[name] == value
        csp = login_page.headers["Content-Security-Policy"]
        for part in ("style-src 'self'", "img-src 'self'", "form-action 'self'", "frame-ancestors 'none'"):
            assert part in csp
        assert "<script" not in await login_page.text()
        css = await client.get("/static/console.css")
        assert css.status == 200 and css.content_type == "text/css"
    with_console(world, body)


def test_login_wrong_password_rate_limit_cookie_logout(world):
    async def body(console, client):
        password = console.accounts.add("ada")
        wrong = await post_login(client, "ada", "guess", allow_redirects=False)
        assert wrong.status == 401 and "Wrong account name or password" in await wrong.text()
        for _ in range(console.settings.login_max_failures - 1):
            await post_login(client, "ada", "guess")
        limited = await post_login(client, "ada", password, allow_redirects=False)
        assert limited.status == 429 and int(limited.headers["Retry-After"]) > 200
        assert "try again in" in await limited.text()
        console.limiter = type(console.limiter)(5, 300)  # the window has passed
        ok = await post_login(client, "ada", password, allow_redirects=False)
        assert ok.status == 303
        cookie = session_cookie(ok)
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain http here
        # The one-time password must be replaced before anything else.
        first = await client.get("/queue", allow_redirects=False)
        assert (first.status, first.headers["Location"]) == (303, "/password")
        csrf = await csrf_of(client, "/password")
        changed = await client.post("/password", data={"csrf": csrf, "current": password, "new": NEW_PASSWORD,
                                                       "again": NEW_PASSWORD}, allow_redirects=False)
        assert changed.status == 303
        assert (await client.get("/queue", allow_redirects=False)).status == 200
        token_rows = world.query("SELECT token_sha256 FROM admin_sessions")
        assert token_rows == [(hashlib.sha256(ok.cookies["vn_console"].value.encode()).hexdigest(),)], \
            "only the token's sha256 is kept"
        logout = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert logout.status == 200 and world.query("SELECT count(*) FROM admin_sessions") == [(0,)]
        assert (await client.get("/queue", allow_redirects=False)).status == 303
        # The old password no longer works; failures and the login are in the audit log.
        old = await post_login(client, "ada", password, allow_redirects=False)
        assert old.status == 401
        actions = [(a.action, a.result.split(":")[0]) for a in console.audit.entries()]
        for expected in (("login", "refused"), ("login", "logged in"), ("logout", "logged out")):
            assert expected in actions
    with_console(world, body)


def test_csrf_token_is_checked_on_every_post(world):
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        forged = await client.post(f"/item/{ref}/confirm", data={"csrf": csrf[:-2] + "xx"}, allow_redirects=False)
        assert forged.status == 403 and "CSRF token does not match" in await forged.text()
        missing = await client.post(f"/item/{ref}/confirm", data={}, allow_redirects=False)
        assert missing.status == 403
        assert console.node.evidence.count() == 0 and console.queue.review_of(ref) is None
        assert console.audit.entries(action="csrf-refused")
    with_console(world, body)


def test_login_form_token_is_checked(world):
    """Login CSRF: a page elsewhere that posts the attacker's own name and password must not log the
    browser in, with no token or with a token that is not this browser's login cookie."""
    async def body(console, client):
        password = console.accounts.add("mallory")
        bare = await client.post("/login", data={"name": "mallory", "password": password}, allow_redirects=False)
        assert bare.status == 403 and "nothing was logged in" in await bare.text()
        await csrf_of(client, "/login")  # this browser now has a login cookie
        forged = await client.post("/login", data={"name": "mallory", "password": password, "csrf": "x" * 43},
                                   allow_redirects=False)
        assert forged.status == 403 and "vn_console" not in forged.cookies
        assert world.query("SELECT count(*) FROM admin_sessions") == [(0,)]
        assert [a.result for a in console.audit.entries(action="login")][:2] == \
            ["refused: the login form's token did not match"] * 2
        assert (await post_login(client, "mallory", password)).status == 303
    with_console(world, body)


def test_session_idle_and_absolute_expiry(world):
    async def body(console, client):
        await login(console, client)
        assert (await client.get("/queue", allow_redirects=False)).status == 200
        idle = console.sessions.idle_seconds
        world_conn = console.node.store.conn
        world_conn.execute("UPDATE admin_sessions SET last_seen_at = last_seen_at - ?", (idle + 1,))
        assert (await client.get("/queue", allow_redirects=False)).status == 303
        assert world.query("SELECT count(*) FROM admin_sessions") == [(0,)]
        await login(console, client, "ada", NEW_PASSWORD)
        world_conn.execute("UPDATE admin_sessions SET created_at = created_at - ?", (console.sessions.max_seconds + 1,))
        assert (await client.get("/", allow_redirects=False)).status == 303
    with_console(world, body)


def test_preview_is_small_grey_and_blurred_and_reveal_is_one_time_and_audited(world):
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        files_before = sorted(p for p in world.root.parent.rglob("*") if p.is_file())
        preview = await client.get(f"/item/{ref}/preview.png")
        assert preview.status == 200 and preview.headers["Cache-Control"] == "no-store"
        png = await preview.read()
        image = Image.open(io.BytesIO(png))
        assert image.mode == "L" and max(image.size) <= console.settings.preview_side
        original = world.images["astronaut"]
        assert fine_detail(png) < fine_detail(original) / 10
        page = await (await client.get(f"/item/{ref}")).text()
        assert f"/item/{ref}/reveal" in page
        warning = await (await client.get(f"/item/{ref}/reveal")).text()
        assert "may be child sexual abuse material" in warning
        shown = await client.post(f"/item/{ref}/reveal", data={"csrf": csrf})
        text = await shown.text()
        start = text.index(f"/item/{ref}/revealed.png?grant=")
        url = text[start:text.index('"', start)]
        revealed = await client.get(url)
        assert revealed.status == 200 and revealed.headers["Cache-Control"] == "no-store"
        assert Image.open(io.BytesIO(await revealed.read())).mode == "RGB"
        assert (await client.get(url)).status == 403  # once
        assert [a.target.split()[0] for a in console.audit.entries(action="reveal")] == [ref]
        files_after = sorted(p for p in world.root.parent.rglob("*") if p.is_file())
        assert [p for p in files_after if ".db" not in p.name] == [p for p in files_before if ".db" not in p.name], \
            "nothing drawn was written to disk (only the database changed)"
    with_console(world, body)


def test_a_swapped_or_linked_quarantine_file_is_never_shown_nor_recorded(world):
    """Whatever sits at the quarantined path is shown, revealed or hashed into evidence only when it is the
    file the sweep quarantined (no link followed, its sidecar's bytes, the item's sha256)."""
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        location = console.queue.get(ref).location
        os.replace(location, location + ".kept")
        with open(location, "wb") as fh:  # other bytes under the same name (the sidecar still says astronaut)
            fh.write(world.images["coffee"])
        swapped = await client.get(f"/item/{ref}/preview.png")
        assert swapped.status == 404 and "do not match" in await swapped.text()
        os.remove(location)
        os.symlink(location + ".kept", location)  # the right bytes, but through a link
        linked = await client.get(f"/item/{ref}/preview.png")
        assert linked.status == 404
        await client.post(f"/item/{ref}/confirm", data={"csrf": csrf})
        (record,) = console.node.evidence.list()
        assert record["md5"] is None, "nothing read through the link went into the evidence record"
    with_console(world, body)


def test_a_reveal_grant_serves_one_item_to_one_session_once(world):
    async def body(console, client):
        csrf = await login(console, client)
        ref, other = world.item_ref("a/astronaut"), world.item_ref("b/coffee")
        text = await (await client.post(f"/item/{ref}/reveal", data={"csrf": csrf})).text()
        start = text.index(f"/item/{ref}/revealed.png?grant=")
        url = text[start:text.index('"', start)]
        grant = url.split("grant=")[1]
        assert (await client.get(f"/item/{other}/revealed.png?grant={grant}")).status == 403, "another item"
        assert (await client.get(f"/item/{ref}/revealed.png")).status == 403, "no grant"
        async with TestClient(TestServer(console_app(console))) as second:
            await login(console, second, "bob")
            assert (await second.get(url)).status == 403, "another session"
        assert (await client.get(url)).status == 403, "a grant tried on another item is spent"
        text = await (await client.post(f"/item/{ref}/reveal", data={"csrf": csrf})).text()
        start = text.index(f"/item/{ref}/revealed.png?grant=")
        assert (await client.get(text[start:text.index('"', start)])).status == 200, "a new reveal works"
    with_console(world, body)


def test_reveal_switched_off(tmp_path):
    world = build_world(tmp_path, allow_reveal=False)

    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        assert "/reveal" not in await (await client.get(f"/item/{ref}")).text()
        assert (await client.get(f"/item/{ref}/reveal")).status == 403
        assert (await client.post(f"/item/{ref}/reveal", data={"csrf": csrf})).status == 403
        assert (await client.get(f"/item/{ref}/preview.png")).status == 200  # the blurred one stays
    with_console(world, body)


def test_confirm_writes_evidence_with_hashes_verdicts_and_attribution(world):
    attributor = FakeAttributor()

    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        page = await (await client.get(f"/item/{ref}")).text()
        assert "uploaded by alice" in page and "Purge post 42 via Lemmy" in page
        ids = re.findall(r' id="([^"]+)"', page)
        assert len(ids) == len(set(ids))  # every label names one field
        response = await client.post(f"/item/{ref}/confirm", data={"csrf": csrf, "note": "reported to NCMEC"},
                                     allow_redirects=False)
        assert response.status == 303
        (record,) = console.node.evidence.list()
        data = world.images["astronaut"]
        assert record["md5"] == hashlib.md5(data).hexdigest() and record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["media_type"] == "image/" + Image.open(io.BytesIO(data)).format.lower()
        assert record["reviewer"] == "ada" and record["review_note"] == "reported to NCMEC"
        assert record["location"] and open(record["location"], "rb").read() == data  # kept as evidence
        assert [(v["id"], v["issuer"]) for v in record["decision"]["verdicts"]] == \
            [(world.verdicts["astronaut"], console.node.actor_id)]
        assert record["attribution"]["lemmy"]["uploads"][0]["uploader"]["name"] == "alice"
        assert ref not in {i.ref for i in console.queue.all()}
        flash = await (await client.get("/queue")).text()
        assert f"evidence record {record['id']} written" in flash
        # Purge via Lemmy: explicit, audited.
        purged = await client.post(f"/item/{ref}/purge", data={"csrf": csrf, "kind": "post", "target": "42",
                                                               "reason": "CSAM"}, allow_redirects=False)
        assert purged.status == 303 and attributor.purged == [("post", 42, "CSAM", "ada")]
        assert [a.result for a in console.audit.entries(action="purge")] == ["lemmy purged post 42 (asked by ada)"]
    with_console(world, body, attributor)


def test_purge_takes_only_what_the_items_attribution_names(world):
    """A form posted by hand (or from another item's page) with any other Lemmy id purges nothing."""
    attributor = FakeAttributor()

    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        for kind, target in (("post", "999"), ("person", "42"), ("comment", "42")):
            refused = await client.post(f"/item/{ref}/purge", data={"csrf": csrf, "kind": kind, "target": target,
                                                                    "reason": "CSAM"})
            assert "nothing purged" in await refused.text(), (kind, target)
        assert attributor.purged == []
        assert all(a.result.startswith("refused") for a in console.audit.entries(action="purge"))
    with_console(world, body, attributor)


def test_only_our_own_verdicts_are_retracted_everywhere_from_the_verdicts_page(world):
    async def body(console, client):
        csrf = await login(console, client)
        peer_verdict = world.query("SELECT verdict_id FROM verdicts WHERE own = 0 LIMIT 1")[0][0]
        refused = await client.post("/verdicts/retract", data={"csrf": csrf, "verdict_id": peer_verdict,
                                                               "reason": "looks wrong"})
        assert "only its issuer retracts it" in await refused.text()
        assert world.query("SELECT retracted_at FROM verdicts WHERE verdict_id = ?", peer_verdict) == [(None,)]
        assert world.query("SELECT count(*) FROM outbox WHERE type = 'Delete' AND object_id = ?", peer_verdict) == \
            [(0,)]
    with_console(world, body)


def test_release_restores_file_records_override_and_queues_retraction(world):
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/galaxy")
        data = world.images["hubble_deep_field"]
        assert not (world.root / "a/galaxy").exists()
        response = await client.post(f"/item/{ref}/release", data={"csrf": csrf, "reason": "a galaxy"},
                                     allow_redirects=False)
        assert response.status == 303
        assert (world.root / "a/galaxy").read_bytes() == data
        sha = hashlib.sha256(data).hexdigest()
        assert world.query("SELECT reason FROM sweep_overrides WHERE sha256 = ?", sha) == [("a galaxy",)]
        verdict_id = world.verdicts["hubble_deep_field"]
        assert world.query("SELECT retract_reason FROM verdicts WHERE verdict_id = ?", verdict_id) == [("a galaxy",)]
        (seq,) = world.query("SELECT seq FROM outbox WHERE type = 'Delete' AND object_id = ?", verdict_id)[0]
        assert world.query("SELECT inbox FROM deliveries WHERE outbox_seq = ?", seq) == \
            [("https://follower.example/inbox",)]
        hook = await console.node.pipeline.check(data, source="pictrs")
        assert hook.decision == "accept" and "released" in hook.reason
        assert console.queue.review_of(ref)["decision"] == "released"
        assert "released" in console.audit.entries(action="release")[0].result
    with_console(world, body)


def test_release_of_bytes_that_evidence_keeps_is_refused_and_the_file_stays_in_quarantine(world):
    """The same bytes confirmed elsewhere (another copy, the CLI) are evidence: one click must not publish them."""
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/galaxy")
        location = console.queue.get(ref).location
        sha = hashlib.sha256(world.images["hubble_deep_field"]).hexdigest()
        console.node.evidence.confirm(Positive(sha256=sha, source="file:///elsewhere", key="copy.png"), reviewer="bob")
        refused = await (await client.post(f"/item/{ref}/release", data={"csrf": csrf, "reason": "oops"})).text()
        assert "not released: evidence record" in refused and "--force" in refused
        assert open(location, "rb").read() and not (world.root / "a/galaxy").exists()
        assert world.query("SELECT count(*) FROM sweep_overrides WHERE sha256 = ?", sha) == [(0,)]
        assert world.query("SELECT retracted_at FROM verdicts WHERE verdict_id = ?",
                           world.verdicts["hubble_deep_field"]) == [(None,)]
        assert "refused" in console.audit.entries(action="release")[0].result
    with_console(world, body)


def test_release_of_a_hook_rejection_has_no_file_and_still_overrides_and_retracts(world):
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.bytes_ref("rocket")
        page = await (await client.get(f"/item/{ref}")).text()
        assert "No file kept" in page and "preview.png" not in page and "Delete the file" not in page
        await client.post(f"/item/{ref}/release", data={"csrf": csrf, "reason": "a rocket"})
        assert world.query("SELECT count(*) FROM sweep_overrides WHERE sha256 = ?", ref[6:]) == [(1,)]
        assert world.query("SELECT count(*) FROM outbox WHERE type = 'Delete' AND object_id = ?",
                           world.verdicts["rocket"]) == [(1,)]
        hook = await console.node.pipeline.check(world.images["rocket"], source="pictrs")
        assert hook.decision == "accept"
    with_console(world, body)


def test_delete_takes_two_steps_and_respects_evidence_unless_forced(world):
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("b/coffee")
        item = console.queue.get(ref)
        location = item.location
        step_one = await (await client.post(f"/item/{ref}/delete", data={"csrf": csrf})).text()
        assert "cannot be undone" in step_one and 'name="confirm" value="delete"' in step_one
        assert open(location, "rb").read()  # the first step changes nothing
        skipped = await client.post(f"/item/{ref}/delete/confirm", data={"csrf": csrf}, allow_redirects=False)
        assert skipped.status == 303 and open(location, "rb").read()
        # Once confirmed, the file is evidence: deleting it is refused without force, naming the record.
        await client.post(f"/item/{ref}/confirm", data={"csrf": csrf, "note": "evidence"})
        assert "Delete the file" in await (await client.get(f"/item/{ref}")).text()
        assert "force" in await (await client.post(f"/item/{ref}/delete", data={"csrf": csrf})).text()
        refused = await client.post(f"/item/{ref}/delete/confirm", data={"csrf": csrf, "confirm": "delete"})
        assert "not deleted: evidence record" in await refused.text() and open(location, "rb").read()
        forced = await client.post(f"/item/{ref}/delete/confirm", data={"csrf": csrf, "confirm": "delete",
                                                                        "force": "yes"}, allow_redirects=False)
        assert forced.status == 303
        assert not os.path.exists(location) and not os.path.exists(location + ".json")
        assert console.node.evidence.count() == 1  # the record stays
        assert world.query("SELECT action FROM sweep_items WHERE key = 'b/coffee'") == [("deleted",)]
        results = [a.result for a in console.audit.entries(action="delete")]
        assert results[0].startswith("deleted") and any(r.startswith("refused") for r in results)
    with_console(world, body)


def test_retracting_a_peer_verdict_locally_ends_its_blocking(world):
    async def body(console, client):
        csrf = await login(console, client)
        data = world.images["retina"]
        assert (await console.node.pipeline.check(data, source="pictrs")).decision == "reject"
        ref = world.bytes_ref("retina")
        verdict_id = world.verdicts["retina"]
        page = await (await client.get(f"/item/{ref}")).text()
        assert "Retract this peer&#x27;s verdict locally" in page and PEER in page
        await client.post(f"/item/{ref}/retract-peer", data={"csrf": csrf, "verdict_id": verdict_id,
                                                             "reason": "their model misfires on retinas"})
        assert world.query("SELECT retract_reason FROM verdicts WHERE verdict_id = ?", verdict_id) == \
            [("their model misfires on retinas",)]
        assert world.query("SELECT count(*) FROM outbox WHERE type = 'Delete'") == [(0,)]  # not ours to retract
        after = await console.node.pipeline.check(data, source="pictrs")
        assert after.outcome != "block" and after.decision == "accept"
        assert console.queue.review_of(ref)["decision"] == "retracted-peer"
    with_console(world, body)


def test_peers_page_approves_a_pending_follow_request(world):
    async def body(console, client):
        csrf = await login(console, client)
        page = await (await client.get("/peers")).text()
        assert f"Approve {ASKING}" in page and FOLLOWER in page
        await client.post("/peers/approve", data={"csrf": csrf, "actor": ASKING})
        assert world.query("SELECT follower_state FROM peers WHERE actor = ?", ASKING) == [("accepted",)]
        assert world.query("SELECT count(*) FROM outbox WHERE type = 'Accept'") == [(1,)]
        assert "approved" in console.audit.entries(action="approve-follow")[0].result
    with_console(world, body)


def test_queue_kinds_filters_sort_pages_and_bulk(world):
    async def body(console, client):
        csrf = await login(console, client)
        thresholds = console.node.policy.thresholds
        everything = console.queue.page(Filters(), thresholds)
        assert everything.total == 6
        assert {i.kind for i in everything.items} == {"sweep", "hook"}
        assert console.queue.page(Filters(kind="hook"), thresholds).total == 2
        assert {i.key for i in console.queue.page(Filters(kind="peer"), thresholds).items} == {"b/cat", ""}
        assert console.queue.page(Filters(peer="peer.example"), thresholds).total == 2
        assert console.queue.page(Filters(min_score=0.98), thresholds).total == 0
        assert console.queue.page(Filters(category="csam", min_score=0.93), thresholds).total == 6
        paged = console.queue.page(Filters(page=2), thresholds, size=4)
        assert (paged.page, paged.pages, len(paged.items)) == (2, 2, 2)
        filters, problems = Filters.parse({"kind": "nope", "min_score": "2"})
        assert filters.kind == "" and len(problems) == 2
        text = await (await client.get("/queue?kind=sweep&sort=score")).text()
        assert "4 item(s) awaiting review" in text
        refs = [world.item_ref("a/astronaut"), world.item_ref("b/cat")]
        await client.post("/queue/bulk", data=[("csrf", csrf), ("action", "confirm"), ("item", refs[0]),
                                               ("item", refs[1]), ("reason", "bulk")])
        assert console.node.evidence.count() == 2 and console.queue.depth() == 4
    with_console(world, body)


def test_verdict_search_by_hashes_and_own_retraction(world):
    async def body(console, client):
        csrf = await login(console, client)
        verdict = console.node.store.get_verdict(world.verdicts["coffee"]).verdict
        by_sha = await (await client.get(f"/verdicts?q={verdict.fingerprint.sha256}")).text()
        assert world.verdicts["coffee"] in by_sha and "sha256" in by_sha
        near = verdict.fingerprint.phash64[:-1] + ("0" if verdict.fingerprint.phash64[-1] != "0" else "1")
        by_phash = await (await client.get(f"/verdicts?q={near}")).text()
        assert world.verdicts["coffee"] in by_phash and "pHash distance" in by_phash
        await client.post("/verdicts/retract", data={"csrf": csrf, "verdict_id": world.verdicts["coffee"],
                                                     "reason": "mislabelled"})
        assert world.query("SELECT count(*) FROM outbox WHERE type = 'Delete' AND object_id = ?",
                           world.verdicts["coffee"]) == [(1,)]
        assert "give a sha256 or PDQ" in await (await client.get("/verdicts?q=zz")).text()
        overview = await (await client.get("/")).text()
        assert "<svg" in overview and "Images decided per day" in overview and "No remote workers" in overview
    with_console(world, body)


def test_queue_depth_per_day_counts_an_item_from_its_decision_to_its_review(world):
    async def body(console, client):
        csrf = await login(console, client)
        items = console.queue.all()
        first, last = min(i.decided_at for i in items), max(i.decided_at for i in items)
        assert console.queue.depth_at([first - 1, last]) == [0, len(items)]
        ref = world.item_ref("a/astronaut")
        await client.post(f"/item/{ref}/confirm", data={"csrf": csrf})
        reviewed_at = world.query("SELECT reviewed_at FROM admin_reviews WHERE item = ?", ref)[0][0]
        assert console.queue.depth_at([reviewed_at - 1e-3, reviewed_at + 1]) == [len(items), len(items) - 1]
        overview = await (await client.get("/")).text()
        assert "Items awaiting review at the end of each day" in overview
        assert f'<td data-label="awaiting review">{len(items) - 1}</td></tr></tbody>' in overview, "today's depth"
    with_console(world, body)


def test_federation_listener_serves_no_console_route(world):
    async def body():
        async with running_node(world.config, load_model=False) as (node, base):
            async with aiohttp.ClientSession() as session:
                for path in ("/login", "/queue", "/", "/audit", "/static/console.css", "/peers"):
                    async with session.get(base + path, allow_redirects=False) as response:
                        assert response.status == 404, path
    run(body())


def test_account_cli_add_list_remove_ends_sessions(world, capsys):
    config_arg = ["--config", str(world.config.data_dir / "node.yaml")]
    assert cli_main(["admin", "add", "ada", *config_arg]) == 0
    password = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(password) >= 16
    stored = world.query("SELECT password_hash FROM admin_accounts WHERE name = 'ada'")[0][0]
    assert stored.startswith("$argon2id$") and PasswordHasher().verify(stored, password)
    assert cli_main(["admin", "add", "ada", *config_arg]) == 1
    assert cli_main(["admin", "add", "Bad Name", *config_arg]) == 1
    capsys.readouterr()

    async def body(console, client):
        await login(console, client, "ada", password)
        assert (await client.get("/queue", allow_redirects=False)).status == 200
        assert cli_main(["admin", "list", "--json", *config_arg]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(a["name"], a["sessions"], a["must_change"]) for a in listed] == [("ada", 1, False)]
        assert cli_main(["admin", "remove", "ada", *config_arg]) == 0
        assert "1 session(s) ended" in capsys.readouterr().out
        assert (await client.get("/queue", allow_redirects=False)).status == 303
    with_console(world, body)
    assert cli_main(["admin", "remove", "ada", *config_arg]) == 1
    assert cli_main(["admin", "ensure", "admin", *config_arg]) == 0
    assert "one-time password" in capsys.readouterr().out
    assert cli_main(["admin", "ensure", "admin", *config_arg]) == 0
    assert "log in as admin" in capsys.readouterr().out


def test_serve_console_flag_starts_the_console_on_its_own_listener(tmp_path):
    port = free_port()
    config = make_data_dir(tmp_path / "data", admin={"listen": f"127.0.0.1:{port}"})
    assert config.admin.enabled is False
    console = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib.error.URLError) as refused:  # off by default: nothing listens there
        with serve_process(config):
            urllib.request.urlopen(console + "/login", timeout=5)
    assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value
    with serve_process(config, extra_args=("--console",)) as (_proc, base):
        with urllib.request.urlopen(console + "/login", timeout=5) as response:
            assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/login", timeout=5)
        assert missing.value.code == 404


def test_session_cookie_is_secure_when_the_request_came_over_https(world):
    @web.middleware
    async def over_https(request, handler):  # as a TLS listener (or the scheme a trusted proxy set) reports it
        return await handler(request.clone(scheme="https"))

    async def body():
        node = open_serving_node(world.config, load_model=False)
        console = node.features.get(Console)
        app = console_app(console)
        app.middlewares.insert(0, over_https)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            password = console.accounts.add("ada")
            form = await client.get("/login")
            login_cookie = [c for c in form.headers.getall("Set-Cookie") if c.startswith("vn_login=")][0]
            assert "Secure" in login_cookie, "the login form's own cookie is Secure over https too"
            token = await csrf_of(client, "/login")
            # The test client speaks plain http, so its jar keeps Secure cookies to itself: send it as a browser
            # on https would.
            client.session.cookie_jar.clear()
            response = await client.post("/login", data={"name": "ada", "password": password, "csrf": token},
                                         headers={"Cookie": f"vn_login={token}"}, allow_redirects=False)
            cookie = session_cookie(response)
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        finally:
            await client.close()
            await node.close()
    run(body())


@pytest.mark.parametrize("trust_proxy", [False, True])
def test_client_address_behind_a_trusted_proxy_only(tmp_path, trust_proxy):
    world = build_world(tmp_path, trust_proxy=trust_proxy)

    async def body(console, client):
        console.accounts.add("ada")
        headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7", "X-Forwarded-Proto": "https"}
        await post_login(client, "ada", "wrong", headers=headers)
        (entry,) = console.audit.entries(action="login")
        assert entry.client == ("198.51.100.7" if trust_proxy else "127.0.0.1")
        # Another address is not held back by the first one's failures (the account's own limit still counts).
        for _ in range(console.settings.login_max_failures):
            await post_login(client, "eve", "x", headers=headers)
        other = await post_login(client, "bob", "x",
                                  headers={"X-Forwarded-For": "192.0.2.1"}, allow_redirects=False)
        assert other.status == (401 if trust_proxy else 429)
        if trust_proxy:  # the proxy says the browser came over https: the cookie is Secure
            password = console.accounts.add("carol")
            ok = await post_login(client, "carol", password, allow_redirects=False,
                                   headers={"X-Forwarded-For": "192.0.2.55", "X-Forwarded-Proto": "https"})
            assert ok.status == 303 and "Secure" in session_cookie(ok)
    with_console(world, body)


def test_chart_axes_end_on_round_numbers():
    assert [nice_top(v) for v in (7, 6, 0.291, 1, 13, 250, 0)] == [8, 8, 0.4, 1, 20, 400, 1.0]


def test_two_confirmations_at_once_write_one_evidence_record(world):
    """A double click, or two admins: the second confirmation of an item while the first runs does nothing."""
    async def body(console, client):
        csrf = await login(console, client)
        ref = world.item_ref("a/astronaut")
        first, second = await asyncio.gather(*(client.post(f"/item/{ref}/confirm", data={"csrf": csrf})
                                               for _ in range(2)))
        texts = [await first.text(), await second.text()]
        assert console.node.evidence.count() == 1
        assert any("being reviewed right now" in t or "reviewed already" in t for t in texts), texts
    with_console(world, body)
