"""The federation mechanisms a small instance leans on, each on real in-process nodes (aiohttp servers on
loopback, real keys and signatures): pushes that move the backfill cursor instead of triggering a
backfill, lookups that say why they failed, retractions that reach a node that only looks up (across a
restart), follows refused and asked again, peers.yaml put in force without a restart (and a broken one
refused), and `peers add`. The whole story with `verdict-node serve` processes, as README walks it, is
tests/test_federation_small_instances.py."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import yaml

from node.cli import main as cli_main
from node.federation.delivery import enqueue
from node.federation.outbox import retract
from node.federation.service import Federation
from protocol import activities
from protocol.keys import key_fingerprint, load_private_key
from protocol.verdict import Verdict, new_verdict_id, sign_verdict, utc_timestamp
from scanners.fingerprint import fingerprint
from tests.images import photo_bytes
from tests.multinode import TEST_MODEL, issue_verdicts, node_config, signed_get, until, write_peers
from tests.node_helpers import pictrs_post, run, running_node, validate_url


def _sample(node, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


def _following(node, actor: str) -> str | None:
    row = node.store.conn.execute("SELECT following_state FROM peers WHERE actor = ?", (actor,)).fetchone()
    return row[0] if row else None


def _own_verdict_on(node, image: bytes, csam: float) -> Verdict:
    """A signed own verdict of ``node`` about ``image`` (its real fingerprint), as its pipeline makes one."""
    verdict = Verdict(id=new_verdict_id(node.actor_id), issuer=node.actor_id, fingerprint=fingerprint(image),
                      scores={"csam": csam, "nsfw": 0.1, "underage": 0.1}, label="csam" if csam >= 0.5 else "safe",
                      model=TEST_MODEL, published=utc_timestamp())
    node.add_verdict(verdict, sign_verdict(verdict, node.ed25519_key, node.ed25519_key_id), own=True)
    return verdict


# -- 4. pushes move the cursor; only a gap, the start, an accept or the interval backfill ---------------------

def test_pushes_move_the_backfill_cursor_and_only_a_gap_makes_a_backfill(tmp_path):
    quiet = {"backfill_interval_seconds": 3600.0, "batch_wait_seconds": 0.05}
    a = node_config(tmp_path, "a", federation=quiet)
    b = node_config(tmp_path, "b", peers=[{"actor": a.actor_id, "trust": "full"}], federation=quiet)
    write_peers(a, [{"actor": b.actor_id, "trust": "observe", "follow": False, "share": True}])

    async def body():
        async with running_node(a) as (node_a, _):
            first = await issue_verdicts(node_a, 3)  # before B follows: B backfills these once, when accepted
            async with running_node(b) as (node_b, _):
                await until(lambda: all(node_b.store.get_verdict(i) for i in first), what="B backfilled")
                reads = lambda: _sample(node_a, "verdictnode_federation_outbox_pages_served_total",  # noqa: E731
                                        part="log")
                await asyncio.sleep(0.5)  # the backfill has read its last (empty) page
                before, backfill_reads = reads(), reads()
                assert backfill_reads >= 1
                stored_before = _sample(node_b, "verdictnode_federation_verdicts_received_total", result="stored")
                pushed: list[str] = []
                for round_ in range(5):  # five separate pushes
                    pushed += await issue_verdicts(node_a, 4, start=100 + 10 * round_)
                    await until(lambda: all(node_b.store.get_verdict(i) for i in pushed), what="B got the push")
                assert reads() == before, "a push made B read A's outbox"
                assert _sample(node_b, "verdictnode_federation_verdicts_received_total", result="stored") == \
                    stored_before + 20
                assert _sample(node_b, "verdictnode_federation_verdicts_received_total", result="duplicate") == 0
                last_seq = node_a.store.conn.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
                cursor = node_b.store.conn.execute("SELECT backfill_cursor FROM peers WHERE actor = ?",
                                                   (a.actor_id,)).fetchone()[0]
                assert int(cursor) == last_seq

                # A gap: an entry B was never sent (A did not count B as a follower for a moment). The next
                # push starts after it: B notices and backfills, and gets the missed verdict.
                node_a.store.conn.execute("UPDATE peers SET follower_state = 'none' WHERE actor = ?", (b.actor_id,))
                missed = await issue_verdicts(node_a, 1, start=900)
                fed_a = node_a.features.get(Federation)
                await until(lambda: fed_a.records.log_size() == 24, what="A logged the missed verdict")
                node_a.store.conn.execute("UPDATE peers SET follower_state = 'accepted' WHERE actor = ?",
                                          (b.actor_id,))
                after_gap = await issue_verdicts(node_a, 1, start=901)
                await until(lambda: node_b.store.get_verdict(missed[0]) and node_b.store.get_verdict(after_gap[0]),
                             what="B backfilled the gap")
                assert reads() > before
    run(body())


def test_an_entry_for_one_follower_between_two_pushes_is_no_gap_for_the_others(tmp_path):
    """An Accept (or Follow) A sends one peer takes a place in A's outbox but not in its public log: the
    next batch pushed to B must still continue B's cursor, or every new follow would make every follower
    read A's outbox."""
    quiet = {"backfill_interval_seconds": 3600.0, "batch_wait_seconds": 0.05}
    a = node_config(tmp_path, "a", federation=quiet)
    b = node_config(tmp_path, "b", peers=[{"actor": a.actor_id, "trust": "full"}], federation=quiet)
    write_peers(a, [{"actor": b.actor_id, "trust": "observe", "follow": False, "share": True}])

    async def body():
        async with running_node(a) as (node_a, _), running_node(b) as (node_b, _):
            first = await issue_verdicts(node_a, 2)
            await until(lambda: all(node_b.store.get_verdict(i) for i in first), what="B got the first push")
            await asyncio.sleep(0.5)  # B's backfill after the accept has read its last page
            reads = lambda: _sample(node_a, "verdictnode_federation_outbox_pages_served_total",  # noqa: E731
                                    part="log")
            before = reads()
            with node_a.store.transaction() as conn:  # what approving another follower queues
                enqueue(conn, activities.accept(node_a.actor_id, {"id": "http://127.0.0.1:9/follows/1",
                                                                 "type": "Follow", "actor": "http://127.0.0.1:9/actor",
                                                                 "object": node_a.actor_id}),
                        ["http://127.0.0.1:9/inbox"], audience=["http://127.0.0.1:9/actor"])
            later = await issue_verdicts(node_a, 2, start=50)
            await until(lambda: all(node_b.store.get_verdict(i) for i in later), what="B got the second push")
            await asyncio.sleep(0.5)
            assert reads() == before, "an entry for another follower looked like a gap to B"
            cursor = node_b.store.conn.execute("SELECT backfill_cursor FROM peers WHERE actor = ?",
                                               (a.actor_id,)).fetchone()[0]
            assert int(cursor) == node_a.store.conn.execute("SELECT MAX(seq) FROM outbox WHERE type = 'Verdict'"
                                                            ).fetchone()[0]
    run(body())


# -- 2 and 3. lookups explain a refusal; a lookup-only node reads the issuer's retractions -------------------

def test_a_lookup_only_node_says_why_a_lookup_failed_and_stops_using_what_the_issuer_retracted(tmp_path):
    a = node_config(tmp_path, "a")  # the issuer; it does not list C at first
    c = node_config(tmp_path, "c", peers=[{"actor": a.actor_id, "trust": "full", "follow": False}],
                federation={"lookup_peers": [a.actor_id]})
    d = node_config(tmp_path, "d")  # listed by A, but not allowed to read (share: false)
    image, other = photo_bytes("rocket"), photo_bytes("coffee")

    async def body():
        async with running_node(a) as (node_a, base_a), running_node(d):
            allowing = _own_verdict_on(node_a, image, csam=0.01)
            blocking = _own_verdict_on(node_a, other, csam=0.95)
            async with running_node(c) as (node_c, _):
                refused = await node_c.pipeline.check(image)
                assert refused.source == "unavailable"
                assert f"lookup at {base_a} refused: not a peer of that node" in refused.reason, refused.reason

                # A's admin lists C with share: true (who may look up may read the Deletes); no restart.
                write_peers(a, [{"actor": c.actor_id, "trust": "observe", "follow": False, "share": True},
                                 {"actor": d.actor_id, "trust": "observe", "follow": False, "share": False}])
                assert node_a.reload_peers()
                # C holds nothing of A's from a lookup yet: it has no reason to read A's Deletes, and does not
                # (a lookup peer polled every poll_seconds for nothing costs it a request a second).
                await asyncio.sleep(1.5)
                assert _sample(node_a, "verdictnode_federation_outbox_pages_served_total", part="deletes") == 0
                looked_up = await node_c.pipeline.check(image)
                assert (looked_up.source, looked_up.origin, looked_up.verdict_id) == ("peer", "lookup", allowing.id)
                assert (await node_c.pipeline.check(other)).verdict_id == blocking.id
                assert (await signed_get(f"{base_a}/outbox?since=0&type=Delete", c))[0] == 200
                assert (await signed_get(f"{base_a}/outbox?since=0&type=Delete", d))[0] == 403  # share: false
                assert (await signed_get(f"{base_a}/lookup?sha256={'0' * 64}", d))[0] == 403

                print(retract(node_a.store, a, node_a.ed25519_key, allowing.id, "false negative on review"))
                await until(lambda: node_c.store.get_verdict(allowing.id) is not None and node_c.store.conn.execute(
                    "SELECT retracted_at FROM verdicts WHERE verdict_id = ?", (allowing.id,)).fetchone()[0],
                    what="C read A's retraction")
                after = await node_c.pipeline.check(image)
                assert after.verdict_id != allowing.id and after.source == "unavailable"
                assert "retracted: false negative on review" in after.reason
            # C is down while A retracts the other verdict; back up, C reads it from its cursor.
            retract(node_a.store, a, node_a.ed25519_key, blocking.id, "wrong image")
            async with running_node(c) as (node_c, _):
                await until(lambda: node_c.store.conn.execute(
                    "SELECT retracted_at FROM verdicts WHERE verdict_id = ?", (blocking.id,)).fetchone()[0],
                    what="C read the retraction after its restart")
                assert (await node_c.pipeline.check(other)).verdict_id != blocking.id
                reads = _sample(node_a, "verdictnode_federation_outbox_pages_served_total", part="deletes")
                assert reads >= 2 and _sample(node_a, "verdictnode_federation_outbox_pages_served_total",
                                              part="log") == 0  # C never read the whole log
    run(body())


# -- a follow refused because the other side does not list us yet is asked again ----------------------------

def test_a_follow_refused_before_the_other_admin_listed_us_is_asked_again(tmp_path):
    a = node_config(tmp_path, "a")
    b = node_config(tmp_path, "b", peers=[{"actor": a.actor_id, "trust": "full"}],
                federation={"backfill_interval_seconds": 2.0})

    async def body():
        async with running_node(a) as (node_a, _), running_node(b) as (node_b, _):
            await until(lambda: node_b.store.conn.execute(
                "SELECT COUNT(*) FROM deliveries WHERE last_error IS NULL").fetchone()[0] == 0 and
                _following(node_b, a.actor_id) == "none", what="A refused B's follow, B saw it")
            write_peers(a, [{"actor": b.actor_id, "trust": "observe", "follow": False, "share": True}])
            assert node_a.reload_peers()
            await until(lambda: _following(node_b, a.actor_id) == "accepted", what="B asked again, A accepted")
    run(body())


# -- 6. peers.yaml in force without a restart; a broken one is refused ------------------------------------

def test_a_new_peers_yaml_is_swapped_in_between_requests_and_a_broken_one_keeps_the_old(tmp_path, caplog):
    b = node_config(tmp_path, "b")
    a = node_config(tmp_path, "a", peers=[{"actor": b.actor_id, "trust": "full", "follow": False,
                                       "key_fingerprint": key_fingerprint(load_private_key(b.ed25519_key_path))}])
    image = photo_bytes("rocket")

    async def body():
        async with running_node(b) as (node_b, _), running_node(a) as (node_a, base_a):
            verdict = Verdict(id=new_verdict_id(b.actor_id), issuer=b.actor_id, fingerprint=fingerprint(image),
                              scores={"csam": 0.95, "nsfw": 0.1, "underage": 0.1}, label="csam", model=TEST_MODEL,
                              published=utc_timestamp())
            node_a.add_verdict(verdict, sign_verdict(verdict, node_b.ed25519_key, node_b.ed25519_key_id), own=False)
            url = validate_url(a, base_a)
            assert (await pictrs_post(url, image))[1]["source"] == "peer"

            # Requests keep flowing while peers.yaml changes back and forth: none is dropped, each answer
            # is one of the two policies, never a half-swapped one.
            observe = [{"actor": b.actor_id, "trust": "observe", "follow": False}]
            full = [{"actor": b.actor_id, "trust": "full", "follow": False}]
            stop = asyncio.Event()

            async def flip() -> int:
                flips = 0
                while not stop.is_set():
                    write_peers(a, observe if flips % 2 == 0 else full)
                    assert node_a.reload_peers()
                    flips += 1
                    await asyncio.sleep(0.01)
                return flips

            flipping = asyncio.create_task(flip())
            async with aiohttp.ClientSession() as session:
                answers = await asyncio.gather(*(pictrs_post(url, image, session=session) for _ in range(200)))
            stop.set()
            assert await flipping > 2
            assert {status for status, _ in answers} <= {406}
            assert {body["source"] for _, body in answers} <= {"peer", "unavailable"}

            write_peers(a, full)
            assert node_a.reload_peers()
            assert (await pictrs_post(url, image))[1]["source"] == "peer"
            a.peers_path.write_text("peers:\n  - actor: https://x.example/actor\n    trust: total\n")
            with caplog.at_level(logging.ERROR, logger="verdict_node"):
                assert node_a.reload_peers() is False
            assert [r.getMessage() for r in caplog.records if "peers.yaml not reloaded" in r.getMessage()] == [
                "peers.yaml not reloaded, the 1 peer(s) in force stay: peers.yaml: peers[0].trust: must be one of "
                "full, block-only, observe, got \"total\""]
            assert (await pictrs_post(url, image))[1]["source"] == "peer"  # the old peers stay in force

            # A changed pin takes effect at once: the document held under the old pin is not trusted any more.
            other_pin = key_fingerprint(load_private_key(a.ed25519_key_path))
            write_peers(a, [dict(full[0], key_fingerprint=other_pin)])
            assert node_a.reload_peers()
            fresh = Verdict(id=new_verdict_id(b.actor_id), issuer=b.actor_id, fingerprint=fingerprint(photo_bytes()),
                            scores={"csam": 0.95}, label="csam", model=TEST_MODEL, published=utc_timestamp())
            fed_a = node_a.features.get(Federation)
            try:
                await fed_a.intake.verify_verdicts([sign_verdict(fresh, node_b.ed25519_key, node_b.ed25519_key_id)])
                raise AssertionError("a verdict signed with the key no longer pinned was accepted")
            except Exception as exc:  # noqa: BLE001 - Refusal
                assert getattr(exc, "status", None) == 401, exc
    run(body())


def test_serve_takes_a_changed_peers_yaml_without_a_signal(tmp_path):
    b = node_config(tmp_path, "b")
    a = node_config(tmp_path, "a")

    async def body():
        async with running_node(a) as (node_a, _):
            assert node_a.peers == []
            write_peers(a, [{"actor": b.actor_id, "trust": "block-only", "follow": False}])
            await until(lambda: [p.actor for p in node_a.peers] == [b.actor_id], what="peers.yaml taken in")
            assert node_a.policy.peers[b.actor_id].level == "block-only"
            assert node_a.features.get(Federation).access.configured_peer(b.actor_id) is not None
    run(body())


# -- `peers add` --------------------------------------------------------------------------------------------

def test_peers_add_shows_the_key_and_model_and_writes_peers_yaml_only_when_confirmed(tmp_path, capsys):
    a = node_config(tmp_path, "a")
    b = node_config(tmp_path, "b")
    b.peers_path.write_text("# Bob's peers\npeers:\n  - actor: https://keep.example/actor  # a comment\n"
                            "    trust: observe\n")
    pin = key_fingerprint(load_private_key(a.ed25519_key_path))
    wrong = key_fingerprint(load_private_key(b.ed25519_key_path))
    cli = ["--config", str(b.data_dir / "node.yaml")]

    async def body():
        async with running_node(a):
            add = ["peers", "add", a.actor_id, "--trust", "full", "--follow", *cli]
            assert await asyncio.to_thread(cli_main, add) == 1  # not a terminal, no fingerprint: not written
            shown = capsys.readouterr()
            assert f"key_fingerprint: {pin}" in shown.out and "model: none" in shown.out
            assert f"--key-fingerprint {pin}" in shown.err and a.actor_id not in b.peers_path.read_text()
            assert await asyncio.to_thread(cli_main, [*add, "--key-fingerprint", wrong]) == 1
            assert "nothing written" in capsys.readouterr().err and a.actor_id not in b.peers_path.read_text()
            assert await asyncio.to_thread(cli_main, [*add, "--key-fingerprint", pin]) == 0
            assert "added" in capsys.readouterr().out
            assert await asyncio.to_thread(cli_main, [*add, "--key-fingerprint", pin]) == 2  # listed already
    run(body())
    text = b.peers_path.read_text()
    assert text.startswith("# Bob's peers\n") and "# a comment" in text  # the admin's file, extended
    entries = yaml.safe_load(text)["peers"]
    assert entries == [{"actor": "https://keep.example/actor", "trust": "observe"},
                       {"actor": a.actor_id, "key_fingerprint": pin, "trust": "full", "follow": True,
                        "share": False}]
