"""Federation on real in-process servers (loopback, real keys and signatures), one behaviour per test.
The four-node story with `verdict-node serve` subprocesses is tests/test_federation_multinode.py."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web

from node.cli import main as cli_main
from node.federation.service import Federation
from node.federation.delivery import is_permanent_refusal
from scanners.backoff import backoff_seconds
from node.federation.lookup import TokenBucket
from protocol import activities, httpsig
from protocol.keys import generate_ed25519, generate_rsa, key_fingerprint, load_private_key
from tests.multinode import (TEST_MODEL, issue_verdicts, node_config, signed_get, synthetic_verdict, until,
                             write_peers)
from tests.node_helpers import free_port, run, running_node


def _known(model=TEST_MODEL) -> list[str]:
    return [f"{model.name}@{model.rules}"]


def _state(node, actor: str) -> tuple[str, str] | None:
    row = node.store.conn.execute("SELECT follower_state, following_state FROM peers WHERE actor = ?",
                                  (actor,)).fetchone()
    return tuple(row) if row else None


def test_actor_webfinger_and_nodeinfo_describe_the_node(tmp_path):
    config = node_config(tmp_path, "a")

    async def body():
        async with running_node(config) as (node, base), aiohttp.ClientSession() as s:
            for accept in ("application/activity+json",
                           'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'):
                async with s.get(f"{base}/actor", headers={"Accept": accept}) as r:
                    assert r.status == 200 and r.content_type == "application/activity+json"
                    doc = await r.json(content_type=None)
            actor = activities.parse_actor(doc)  # what peers read: both keys, owned by the actor
            assert actor.id == config.actor_id and doc["manuallyApprovesFollowers"] is True
            assert key_fingerprint(actor.ed25519_keys[f"{config.actor_id}#ed25519-key"]) == \
                key_fingerprint(node.ed25519_key)
            assert doc["publicKey"]["id"] == f"{config.actor_id}#main-key"
            host = base.removeprefix("http://")
            async with s.get(f"{base}/.well-known/webfinger", params={"resource": f"acct:node-a@{host}"}) as r:
                jrd = await r.json(content_type=None)
            assert r.status == 200 and jrd["links"][0]["href"] == config.actor_id
            async with s.get(f"{base}/.well-known/webfinger", params={"resource": "acct:other@example.org"}) as r:
                assert r.status == 404
            async with s.get(f"{base}/.well-known/nodeinfo") as r:
                link = (await r.json())["links"][0]["href"]
            async with s.get(link) as r:
                info = await r.json(content_type=None)
            assert info["software"]["name"] == "verdict-node" and info["software"]["version"]
            assert info["metadata"]["inbox"] == f"{base}/inbox" and info["metadata"]["lookup"] == f"{base}/lookup"
    run(body())


def test_unlisted_follower_waits_for_approval_then_backfills_and_can_be_removed(tmp_path):
    a = node_config(tmp_path, "a", federation={"open_follow_requests": True})
    d = node_config(tmp_path, "d", peers=[{"actor": a.actor_id, "trust": "full", "known_models": _known()}])
    cli = ["--config", str(a.data_dir / "node.yaml")]

    async def body():
        async with running_node(a) as (node_a, base_a), running_node(d) as (node_d, _):
            issued = await issue_verdicts(node_a, 3)
            await until(lambda: _state(node_a, d.actor_id) == ("pending", "none"), what="D's request recorded")
            status, _, _ = await signed_get(f"{base_a}/outbox?since=0", d)
            assert status == 403 and node_d.store.counts()["peer_verdicts"] == 0

            # The admin approves from the command line while the server runs; the server sends the Accept.
            assert cli_main(["peers", "approve", d.actor_id, *cli]) == 0
            await until(lambda: _state(node_d, a.actor_id) == ("none", "accepted"), what="D sees the Accept")
            await until(lambda: node_d.store.counts()["peer_verdicts"] == 3, what="D backfilled")
            assert {node_d.store.get_verdict(i).verdict.issuer for i in issued} == {a.actor_id}
            later = await issue_verdicts(node_a, 2, start=10)  # and new ones are pushed
            await until(lambda: all(node_d.store.get_verdict(i) for i in later), what="D got the new verdicts")

            assert cli_main(["peers", "remove", d.actor_id, *cli]) == 0
            await until(lambda: _state(node_d, a.actor_id) == ("none", "rejected"), what="D sees the Reject")
            assert _state(node_a, d.actor_id) == ("none", "none")
            status, _, _ = await signed_get(f"{base_a}/outbox?since=0", d)
            assert status == 403
    run(body())


class _Inbox:
    """A peer's inbox that checks our signatures and records what arrives; `hang` makes it answer only
    when the test ends (a peer that accepts connections and never replies)."""

    def __init__(self, sender_config, hang: bool = False) -> None:
        self.public_key = load_private_key(sender_config.rsa_key_path).public_key()
        self.hang = hang
        self.release = asyncio.Event()
        self.verdict_ids: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/inbox"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        params = httpsig.parse_signature(request.headers)
        httpsig.verify_request("POST", request.path_qs, request.headers, body, params, self.public_key)
        if self.hang:
            await self.release.wait()
            return web.Response(status=503)
        activity = activities.parse_activity(body)
        self.verdict_ids += [v["id"] for v in activity.verdicts]
        return web.Response(status=202)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/inbox", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


def _add_follower(node, actor: str, inbox: str) -> None:
    node.store.conn.execute("INSERT INTO peers (actor, inbox, follower_state, following_state, updated_at) "
                            "VALUES (?, ?, 'accepted', 'none', ?)", (actor, inbox, time.time()))


def test_a_slow_or_dead_follower_never_delays_the_others_and_its_queue_survives_a_restart(tmp_path):
    # The hanging peer holds each request until A's 60 s timeout; the live one must not wait for that.
    a = node_config(tmp_path, "a", federation={"request_timeout_seconds": 60.0, "retry_base_seconds": 0.2,
                                           "retry_max_seconds": 0.5, "batch_wait_seconds": 0.2})

    async def body():
        live, slow, dead = _Inbox(a), _Inbox(a, hang=True), _Inbox(a)
        await live.start()
        await slow.start()
        try:
            async with running_node(a) as (node, _):
                for name, inbox in (("live", live), ("slow", slow), ("dead", dead)):
                    _add_follower(node, f"http://127.0.0.1:{inbox.port}/{name}", inbox.url)
                issued = await issue_verdicts(node, 150)  # two batches: 100 + 50
                await until(lambda: sorted(live.verdict_ids) == sorted(issued), what="live follower served")
                queued = dict(node.store.conn.execute(
                    "SELECT inbox, COUNT(*) FROM deliveries GROUP BY inbox").fetchall())
                assert queued == {slow.url: 150, dead.url: 150}
                await until(lambda: node.store.conn.execute(
                    "SELECT MAX(attempts) FROM deliveries WHERE inbox = ?", (dead.url,)).fetchone()[0] >= 2,
                    what="dead follower retried")
                sample = node.metrics.registry.get_sample_value
                assert sample("verdictnode_federation_deliveries_total", {"result": "delivered"}) == 150
                assert sample("verdictnode_federation_deliveries_total", {"result": "retry"}) >= 200
            # Server stopped; the dead follower comes up; a restarted server delivers the backlog in order.
            await dead.start()
            async with running_node(a) as (node, _):
                await until(lambda: sorted(dead.verdict_ids) == sorted(issued), what="backlog delivered after restart")
                assert len(set(live.verdict_ids)) == len(live.verdict_ids)  # nothing sent twice to live
        finally:
            for inbox in (live, slow, dead):
                await inbox.stop()
    run(body())


def test_lookup_answers_approved_peers_within_a_rate_limit(tmp_path):
    b = node_config(tmp_path, "b")
    a = node_config(tmp_path, "a", peers=[{"actor": b.actor_id, "trust": "full", "follow": False}],
                federation={"lookup_rate_per_second": 1.0})
    rogue = node_config(tmp_path, "rogue")

    async def body():
        async with running_node(a) as (node_a, base_a), running_node(b), running_node(rogue):
            verdict, doc = synthetic_verdict(node_a.actor_id, node_a.ed25519_key, 7, csam=0.9)
            node_a.add_verdict(verdict, doc, own=True)
            fp = verdict.fingerprint
            url = f"{base_a}/lookup?sha256={fp.sha256}&pixel_sha256={fp.pixel_sha256}&phash={fp.phash64}"
            status, _, answer = await signed_get(url, b)
            assert status == 200 and [v["id"] for v in answer["orderedItems"]] == [verdict.id]
            near = f"{int(fp.phash64, 16) ^ 0b111:016x}"  # 3 bits away: within the block distance
            status, _, answer = await signed_get(f"{base_a}/lookup?phash={near}", b)
            assert status == 200 and [v["id"] for v in answer["orderedItems"]] == [verdict.id]
            status, headers, _ = await signed_get(url, b)
            assert status == 429 and "Retry-After" in headers
            status, _, _ = await signed_get(url, rogue)  # not a peer: no hashes for it
            assert status == 403
            async with aiohttp.ClientSession() as s, s.get(url) as r:  # unsigned
                assert r.status == 401
    run(body())


async def _slow_peer(port: int, delay: float) -> web.AppRunner:
    """A lookup peer that answers everything correctly, each answer ``delay`` seconds late."""
    actor_id = f"http://127.0.0.1:{port}/actor"
    doc = activities.actor_document(actor_id, generate_rsa(), generate_ed25519(),
                                    inbox=f"http://127.0.0.1:{port}/inbox")

    async def actor(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response(doc, content_type="application/activity+json")

    async def lookup(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"type": "OrderedCollection", "totalItems": 0, "orderedItems": []})

    app = web.Application()
    app.router.add_get("/actor", actor)
    app.router.add_get("/lookup", lookup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def test_a_slow_lookup_peer_costs_only_its_own_answers(tmp_path):
    """Each lookup peer has lookup_timeout_seconds for all its steps: a peer slow at each of them (actor
    document, then lookup) is cut off alone, and the fast peer's verdict still arrives within the
    pipeline's deadline."""
    slow_port = free_port()
    slow_actor = f"http://127.0.0.1:{slow_port}/actor"
    a = node_config(tmp_path, "a")
    b = node_config(tmp_path, "b", peers=[{"actor": a.actor_id, "trust": "full", "follow": False},
                                      {"actor": slow_actor, "trust": "full", "follow": False}],
                federation={"lookup_peers": [slow_actor, a.actor_id], "lookup_timeout_seconds": 2.0})
    write_peers(a, [{"actor": b.actor_id, "trust": "full", "follow": False}])

    async def body():
        slow = await _slow_peer(slow_port, delay=1.8)  # each step within the limit, both together not
        try:
            async with running_node(a) as (node_a, _), running_node(b) as (node_b, _):
                verdict, doc = synthetic_verdict(node_a.actor_id, node_a.ed25519_key, 3, csam=0.9)
                node_a.add_verdict(verdict, doc, own=True)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 3.0
                # as node.pipeline calls it: the whole hook is cancelled at the deadline
                found = await asyncio.wait_for(node_b.lookup_peers(verdict.fingerprint, deadline),
                                               deadline - loop.time())
                assert [v.id for v, _ in found.verdicts] == [verdict.id]
        finally:
            await slow.cleanup()
    run(body())


def test_verdicts_cli_lists_and_retracts_a_peer_verdict_locally(tmp_path, capsys):
    a = node_config(tmp_path, "a")
    b = node_config(tmp_path, "b", peers=[{"actor": a.actor_id, "trust": "full", "known_models": _known()}])
    write_peers(a, [{"actor": b.actor_id, "trust": "observe", "follow": False}])

    async def body():
        async with running_node(a) as (node_a, _), running_node(b) as (node_b, _):
            issued = await issue_verdicts(node_a, 2)
            await until(lambda: node_b.store.counts()["peer_verdicts"] == 2, what="B received")
            return issued

    issued = run(body())
    cli = ["--config", str(b.data_dir / "node.yaml")]
    assert cli_main(["verdicts", "list", "peers", "--json", *cli]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(v["verdict_id"] for v in listed) == sorted(issued)
    assert cli_main(["verdicts", "retract", issued[0], "--reason", "mistake", *cli]) == 0
    assert "here" in capsys.readouterr().out  # a peer's verdict: retracted locally, nothing published
    assert cli_main(["verdicts", "list", "--retracted", "--json", *cli]) == 0
    retracted = json.loads(capsys.readouterr().out)
    assert [(v["verdict_id"], v["retract_reason"]) for v in retracted] == [(issued[0], "mistake")]
    assert cli_main(["verdicts", "retract", "http://nowhere.example/verdicts/x", "--reason", "r", *cli]) == 1


def test_retry_schedule_and_rate_limiter():
    assert [backoff_seconds(n, 10, 3600) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_seconds(30, 10, 3600) == 3600
    # Retried for days: the sum of delays before the give-up point passes 24 h only after many attempts.
    assert sum(backoff_seconds(n, 10, 3600) for n in range(1, 40)) > 24 * 3600
    assert [is_permanent_refusal(s) for s in (400, 401, 403, 408, 429, 500, 503)] == \
        [True, True, True, False, False, False, False]
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert [bucket.take("p", now=100.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take("p", now=100.0) > 0 and bucket.take("q", now=100.0) == 0.0
    assert bucket.take("p", now=101.5) == 0.0


async def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)


def test_inbox_takes_rfc9421_and_relays_of_trusted_issuers_once(tmp_path):
    a = node_config(tmp_path, "a")  # the issuer
    b = node_config(tmp_path, "b")  # relays A's verdict
    c = node_config(tmp_path, "c", peers=[{"actor": b.actor_id, "trust": "full", "follow": False},
                                      {"actor": a.actor_id, "trust": "full", "follow": False,
                                       "known_models": _known()}])

    async def body():
        async with running_node(a) as (node_a, _), running_node(b), running_node(c) as (node_c, base_c):
            _, a_doc = synthetic_verdict(a.actor_id, node_a.ed25519_key, 1, csam=0.9)
            relay = json.dumps(activities.announce(b.actor_id, [a_doc], [c.actor_id])).encode()
            headers = {"Content-Type": "application/activity+json"}
            headers.update(httpsig.sign_request_rfc9421("POST", f"{base_c}/inbox", headers, relay,
                                                        f"{b.actor_id}#main-key", load_private_key(b.rsa_key_path)))
            status, answer = await _post(f"{base_c}/inbox", relay, headers)
            assert (status, answer["stored"]) == (202, 1)
            held = node_c.store.get_verdict(a_doc["id"])
            assert held is not None and held.verdict.issuer == a.actor_id and not held.own
            # The same activity again (a retry): recognised by its id, nothing new.
            status, answer = await _post(f"{base_c}/inbox", relay, headers)
            assert (status, answer["status"]) == (202, "already processed")
            assert node_c.store.counts()["peer_verdicts"] == 1
    run(body())


def test_a_peer_whose_key_differs_from_its_pin_is_refused(tmp_path):
    b = node_config(tmp_path, "b")
    wrong_pin = key_fingerprint(load_private_key(node_config(tmp_path, "other").ed25519_key_path))
    a = node_config(tmp_path, "a", peers=[{"actor": b.actor_id, "trust": "full", "follow": False,
                                       "key_fingerprint": wrong_pin}])

    async def body():
        async with running_node(a) as (node_a, base_a), running_node(b) as (node_b, _):
            _, doc = synthetic_verdict(b.actor_id, node_b.ed25519_key, 1)
            create = json.dumps(activities.create(b.actor_id, [doc], [a.actor_id])).encode()
            headers = {"Content-Type": "application/activity+json"}
            headers.update(httpsig.sign_request("POST", f"{base_a}/inbox", headers, create,
                                                f"{b.actor_id}#main-key", load_private_key(b.rsa_key_path)))
            status, answer = await _post(f"{base_a}/inbox", create, headers)
            assert status == 401 and "pinned" in answer["error"]
            assert node_a.store.counts()["peer_verdicts"] == 0
    run(body())


def test_backfill_keeps_what_verifies_and_skips_a_forged_entry(tmp_path):
    a = node_config(tmp_path, "a")
    b = node_config(tmp_path, "b", peers=[{"actor": a.actor_id, "trust": "full", "known_models": _known()}])
    write_peers(a, [{"actor": b.actor_id, "trust": "observe"}])

    async def body():
        async with running_node(a) as (node_a, _):
            issued = await issue_verdicts(node_a, 3)
            forged, doc = synthetic_verdict(a.actor_id, node_a.ed25519_key, 99, csam=0.0)
            node_a.add_verdict(forged, {**doc, "scores": {**doc["scores"], "csam": 0.9}}, own=True)  # proof broken
            issued += await issue_verdicts(node_a, 2, start=10)
            async with running_node(b) as (node_b, _):
                await until(lambda: all(node_b.store.get_verdict(i) for i in issued), what="B backfilled")
                assert node_b.store.get_verdict(forged.id) is None
                assert node_b.store.counts()["peer_verdicts"] == 5
                assert node_b.features.get(Federation).metrics.received.labels("refused")._value.get() == 1
    run(body())
