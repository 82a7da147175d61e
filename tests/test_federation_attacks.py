"""Attacks on federation trust, each played against a real node on loopback with real keys and signatures.

A pinned peer is served by a test aiohttp server whose actor document the test controls, as an attacker
who took over the peer's domain (or its web server) would: it can serve any document, but holds none of
the peer's private keys. The SSRF tests use a loopback listener that counts every request it gets.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets

import aiohttp
import pytest
from aiohttp import web

from node.cli import main as cli_main
from node.federation.service import Federation
from node.federation.auth import KEY_NOT_VERIFIED
from node.federation.public_fetch import PublicOnlyResolver, check_stranger_url, FetchRefused, is_public_address
from protocol import activities, httpsig, proofs
from protocol.keys import generate_ed25519, generate_rsa, key_fingerprint, ed25519_multikey, rsa_public_pem
from protocol.verdict import Fingerprint, Verdict, new_verdict_id, sign_verdict, utc_timestamp
from scanners.fingerprint import fingerprint
from tests.images import photo_bytes
from tests.multinode import TEST_FEDERATION, TEST_MODEL
from tests.node_helpers import free_port, make_data_dir, pictrs_post, run, running_node, validate_url

KNOWN = [f"{TEST_MODEL.name}@{TEST_MODEL.rules}"]


class FakePeer:
    """An actor URL on loopback whose document the test sets; keeps the genuine peer's private keys so the
    test can also act as the genuine peer."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.actor = f"{self.base}/actor"
        self.rsa, self.ed = generate_rsa(), generate_ed25519()          # the genuine peer's keys
        self.evil_rsa, self.evil_ed = generate_rsa(), generate_ed25519()  # the attacker's
        self.document = self.genuine_document()
        self.runner: web.AppRunner | None = None

    def genuine_document(self) -> dict:
        return activities.actor_document(self.actor, self.rsa, self.ed, inbox=f"{self.base}/inbox")

    def document_with_added_keys(self, *, rsa_key=None) -> dict:
        """The genuine Ed25519 key stays (the pin passes); a second Ed25519 key is added, and the RSA key is
        replaced by ``rsa_key`` (default: the attacker's)."""
        doc = self.genuine_document()
        doc["publicKey"]["publicKeyPem"] = rsa_public_pem(rsa_key or self.evil_rsa)
        doc["assertionMethod"].append({"id": f"{self.actor}#second-key", "type": "Multikey",
                                       "controller": self.actor, "publicKeyMultibase": ed25519_multikey(self.evil_ed)})
        return doc

    async def start(self) -> None:
        async def actor(request: web.Request) -> web.Response:
            return web.json_response(self.document, content_type="application/activity+json")

        app = web.Application()
        app.router.add_get("/actor", actor)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def verdict(self, image: bytes, csam: float, *, key=None, key_fragment: str = "ed25519-key") -> dict:
        fp = fingerprint(image)
        verdict = Verdict(id=new_verdict_id(self.actor), issuer=self.actor,
                          fingerprint=Fingerprint(fp.sha256, fp.pixel_sha256, fp.phash64, fp.preprocessing, fp.pdq256),
                          scores={"csam": csam, "nsfw": 0.1, "underage": 0.1}, label="csam" if csam >= 0.5 else "safe",
                          model=TEST_MODEL, published=utc_timestamp())
        return sign_verdict(verdict, key or self.ed, f"{self.actor}#{key_fragment}")

    async def post(self, inbox: str, activity: dict, *, rsa_key=None) -> tuple[int, dict]:
        """POST an activity as this actor, HTTP-signed with ``rsa_key`` (default: the genuine key)."""
        body = json.dumps(activity).encode()
        headers = {"Content-Type": "application/activity+json"}
        headers.update(httpsig.sign_request("POST", inbox, headers, body, f"{self.actor}#main-key",
                                            rsa_key or self.rsa))
        async with aiohttp.ClientSession() as s, s.post(inbox, data=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)


def _victim(tmp_path, peer: FakePeer, **federation):
    """A node with no classifier (every image it cannot decide from verdicts is refused) that lists
    ``peer`` with trust full, pinned to the genuine Ed25519 key."""
    port = free_port()
    return make_data_dir(tmp_path / "victim", port=port, node={"name": "victim"},
                         pictrs={"on_unavailable": "reject"}, federation={**TEST_FEDERATION, **federation},
                         peers=[{"actor": peer.actor, "trust": "full", "follow": False, "known_models": KNOWN,
                                 "key_fingerprint": key_fingerprint(peer.ed)}])


def test_a_document_that_adds_keys_cannot_sign_for_a_pinned_peer(tmp_path, caplog):
    peer = FakePeer()
    config = _victim(tmp_path, peer)
    genuine_block, forged_block, forged_safe = (photo_bytes(n) for n in ("coffee", "rocket", "chelsea"))
    caplog.set_level(logging.INFO)

    async def body():
        await peer.start()
        try:
            async with running_node(config) as (node, base):
                inbox, url = f"{base}/inbox", validate_url(config, base)
                # The genuine peer: its verdict counts (and its RSA key is bound to the pin now).
                status, _ = await peer.post(inbox, activities.create(peer.actor, [peer.verdict(genuine_block, 0.9)],
                                                                     [node.actor_id]))
                assert status == 202
                status, answer = await pictrs_post(url, genuine_block)
                assert (status, answer["source"]) == (406, "peer")

                # The attacker serves a document with the genuine Ed25519 key plus its own keys and signs
                # with them: a block verdict (would refuse a harmless image) and a safe one (would let an
                # unknown image through).
                peer.document = peer.document_with_added_keys()
                node.features.get(Federation).actors.refresh_interval = 0  # as if the cached document were old: refetch it
                for image, csam in ((forged_block, 0.95), (forged_safe, 0.0)):
                    forged = peer.verdict(image, csam, key=peer.evil_ed, key_fragment="second-key")
                    status, answer = await peer.post(inbox, activities.create(peer.actor, [forged], [node.actor_id]),
                                                     rsa_key=peer.evil_rsa)
                    assert status == 401, answer
                    assert node.store.get_verdict(forged["id"]) is None
                status, answer = await pictrs_post(url, forged_block)
                assert (status, answer["source"]) == (406, "unavailable")  # not blocked from a forged verdict
                status, answer = await pictrs_post(url, forged_safe)
                assert (status, answer["source"]) == (406, "unavailable")  # not allowed on a forged verdict
                assert "presents RSA key" in caplog.text

                # Even over the genuine HTTP key, a proof by a key other than the pinned one is refused.
                peer.document = peer.document_with_added_keys(rsa_key=peer.rsa)
                forged = peer.verdict(forged_safe, 0.0, key=peer.evil_ed, key_fragment="second-key")
                status, answer = await peer.post(inbox, activities.create(peer.actor, [forged], [node.actor_id]))
                assert status == 401 and "pinned key" in answer["error"], answer
                assert node.store.get_verdict(forged["id"]) is None
                assert "besides the pinned one, ignored" in caplog.text  # the added key is logged

                # A retraction of the genuine verdict needs the pinned key too: a Delete without its proof, or
                # with the attacker's, leaves the block in force.
                held = node.store.counts()["peer_verdicts"]
                blocked_id = next(iter(node.store.db.query("SELECT verdict_id FROM verdicts")))["verdict_id"]
                delete = activities.delete(peer.actor, blocked_id, "forged", [node.actor_id])
                status, _ = await peer.post(inbox, delete)
                assert status == 401
                delete = proofs.sign(activities.delete(peer.actor, blocked_id, "forged", [node.actor_id]),
                                     peer.evil_ed, f"{peer.actor}#second-key")
                status, _ = await peer.post(inbox, delete)
                assert status == 401
                status, answer = await pictrs_post(url, genuine_block)
                assert (status, answer["source"]) == (406, "peer") and node.store.counts()["peer_verdicts"] == held
        finally:
            await peer.stop()
    run(body())


def test_an_rsa_key_change_is_refused_until_the_admin_forgets_the_bound_key(tmp_path):
    peer = FakePeer()
    config = _victim(tmp_path, peer)
    cli = ["--config", str(config.data_dir / "node.yaml")]

    async def body():
        await peer.start()
        try:
            async with running_node(config) as (node, base):
                inbox = f"{base}/inbox"
                first = peer.verdict(photo_bytes("coffee"), 0.9)
                assert (await peer.post(inbox, activities.create(peer.actor, [first], [node.actor_id])))[0] == 202
                # The peer rotates its RSA key (the Ed25519 pin still holds): refused, silently never.
                node.features.get(Federation).actors.refresh_interval = 0
                new_rsa = generate_rsa()
                peer.rsa, old_rsa = new_rsa, peer.rsa
                peer.document = peer.genuine_document()
                second = peer.verdict(photo_bytes("rocket"), 0.9)
                status, _ = await peer.post(inbox, activities.create(peer.actor, [second], [node.actor_id]))
                assert status == 401 and node.store.get_verdict(second["id"]) is None
                # The held document stays in force: the old key still speaks for the peer.
                third = peer.verdict(photo_bytes("chelsea"), 0.9)
                status, _ = await peer.post(inbox, activities.create(peer.actor, [third], [node.actor_id]),
                                            rsa_key=old_rsa)
                assert status == 202
                # The admin confirms the rotation out of band and forgets the bound key while the node runs.
                assert cli_main(["peers", "forget-key", peer.actor, *cli]) == 0
                status, _ = await peer.post(inbox, activities.create(peer.actor, [second], [node.actor_id]))
                assert status == 202 and node.store.get_verdict(second["id"]) is not None
                bound = node.store.conn.execute("SELECT bound_rsa_fingerprint FROM peers WHERE actor = ?",
                                                (peer.actor,)).fetchone()[0]
                assert bound == key_fingerprint(new_rsa)
        finally:
            await peer.stop()
    run(body())


def test_an_rsa_pin_in_peers_yaml_refuses_any_other_rsa_key_from_the_first_contact(tmp_path):
    peer = FakePeer()
    config = _victim(tmp_path, peer)
    entries = [{"actor": peer.actor, "trust": "full", "follow": False, "known_models": KNOWN,
                "key_fingerprint": key_fingerprint(peer.ed), "rsa_fingerprint": key_fingerprint(peer.rsa)}]
    import yaml
    config.peers_path.write_text(yaml.safe_dump({"peers": entries}))

    async def body():
        await peer.start()
        try:
            peer.document = peer.document_with_added_keys()  # first contact already carries the attacker's RSA
            async with running_node(config) as (node, base):
                forged = peer.verdict(photo_bytes("coffee"), 0.9)  # even a genuine proof: the request is forged
                status, _ = await peer.post(f"{base}/inbox", activities.create(peer.actor, [forged], [node.actor_id]),
                                            rsa_key=peer.evil_rsa)
                assert status == 401 and node.store.get_verdict(forged["id"]) is None
        finally:
            await peer.stop()
    run(body())


# -- the node fetches nothing a stranger chose -----------------------------------------------------------

class Listener:
    """A loopback HTTP server that must not be contacted; counts requests and answers with a secret."""

    def __init__(self, status: int = 500, headers: dict | None = None) -> None:
        self.port = free_port()
        self.secret = f"INTERNAL-{secrets.token_hex(8)}"
        self.status, self.headers = status, headers or {}
        self.hits = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def anything(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(status=self.status, text=self.secret, headers=self.headers)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _follow_from(inbox: str, node_actor: str, key_id: str, actor: str | None = None) -> tuple[int, str]:
    """A Follow by ``actor`` (default: the keyId's document) signed with a fresh key under ``key_id``: what
    any sender can make."""
    actor = actor or key_id.split("#", 1)[0]
    follow = {"@context": "https://www.w3.org/ns/activitystreams", "id": f"{actor}/follows/1", "type": "Follow",
              "actor": actor, "object": node_actor}
    body = json.dumps(follow).encode()
    headers = {"Content-Type": "application/activity+json"}
    headers.update(httpsig.sign_request("POST", inbox, headers, body, key_id, generate_rsa()))
    async with aiohttp.ClientSession() as s, s.post(inbox, data=body, headers=headers) as r:
        return r.status, await r.text()


def _plain_node(tmp_path, name: str, **federation):
    return make_data_dir(tmp_path / name, port=free_port(), federation={**TEST_FEDERATION, **federation})


def test_a_stranger_cannot_make_the_node_fetch_a_url(tmp_path):
    config = _plain_node(tmp_path, "closed")  # open_follow_requests is off by default

    async def body():
        listener = Listener()
        await listener.start()
        try:
            async with running_node(config) as (node, base):
                for key_id in (f"http://127.0.0.1:{listener.port}/actor#main-key",
                               f"http://admin:secret@127.0.0.1:{listener.port}/actor#main-key",
                               f"http://localhost:{listener.port}/actor#main-key"):
                    status, text = await _follow_from(f"{base}/inbox", node.actor_id, key_id,
                                                      actor=f"http://127.0.0.1:{listener.port}/actor")
                    assert status in (401, 403), (key_id, status, text)
                assert listener.hits == 0
                assert node.store.conn.execute("SELECT COUNT(*) FROM peers").fetchone()[0] == 0
        finally:
            await listener.stop()
    run(body())


def test_open_follow_requests_fetch_public_addresses_only(tmp_path, monkeypatch):
    monkeypatch.delenv("VERDICT_NODE_TEST_ALLOW_LOOPBACK", raising=False)  # as in production
    config = _plain_node(tmp_path, "open", open_follow_requests=True)

    async def body():
        listener = Listener()
        await listener.start()
        try:
            async with running_node(config) as (node, base):
                for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "127.1", "0.0.0.0"):
                    key_id = f"http://{host}:{listener.port}/actor#main-key"
                    status, text = await _follow_from(f"{base}/inbox", node.actor_id, key_id)
                    assert status == 401 and KEY_NOT_VERIFIED in text, (host, status, text)
                assert listener.hits == 0
                assert node.store.conn.execute("SELECT COUNT(*) FROM peers").fetchone()[0] == 0
        finally:
            await listener.stop()
    run(body())


def test_what_a_remote_server_answered_never_reaches_the_sender(tmp_path, caplog):
    # Loopback is allowed here (the test switch), so the node really fetches; its answers must not tell.
    config = _plain_node(tmp_path, "open", open_follow_requests=True)
    caplog.set_level(logging.INFO)

    async def body():
        failing, redirecting, target = Listener(500), Listener(), Listener(200)
        await failing.start()
        await target.start()
        redirecting.status, redirecting.headers = 302, {"Location": f"http://127.0.0.1:{target.port}/actor"}
        await redirecting.start()
        try:
            async with running_node(config) as (node, base):
                answers = []
                for port in (failing.port, redirecting.port, free_port()):  # 500 with a body, redirect, closed
                    status, text = await _follow_from(f"{base}/inbox", node.actor_id,
                                                      f"http://127.0.0.1:{port}/actor#main-key")
                    assert status == 401 and failing.secret not in text and redirecting.secret not in text
                    answers.append(json.loads(text)["error"])
                assert len(set(answers)) == 1 and answers[0] == KEY_NOT_VERIFIED  # no oracle: one text for all
                assert failing.hits == 1 and redirecting.hits == 1 and target.hits == 0  # redirects not followed
                assert "HTTP 500" in caplog.text  # the detail is in the log, for the admin
        finally:
            for listener in (failing, redirecting, target):
                await listener.stop()
    run(body())


@pytest.mark.parametrize("address, public", [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("::1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("240.0.0.1", False), ("255.255.255.255", False), ("fe80::1", False), ("fc00::1", False), ("ff02::1", False),
    ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True), ("::", False), ("not-an-ip", False),
])
def test_public_address_rule(address, public):
    assert is_public_address(address) is public


def test_stranger_urls_are_plain_http_on_the_actors_host():
    check_stranger_url("https://peer.example/actor", "peer.example")
    for url in ("ftp://peer.example/actor", "https://user:pw@peer.example/actor", "https://other.example/actor",
                "http://10.0.0.1/actor", "http://[::1]/actor", "http://169.254.169.254/latest", "file:///etc/passwd"):
        with pytest.raises(FetchRefused):
            check_stranger_url(url, "peer.example" if "peer" in url or "other" in url else None)


def test_the_resolver_refuses_a_name_with_any_private_answer(monkeypatch):
    """DNS rebinding hides a private address among public ones; the resolver the connection uses refuses."""
    async def fake(self, host, port=0, family=0):
        return [{"hostname": host, "host": "93.184.216.34", "port": port, "family": 2, "proto": 0, "flags": 0},
                {"hostname": host, "host": "10.0.0.7", "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def body():
        monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", fake)
        resolver = PublicOnlyResolver()
        with pytest.raises(OSError, match="non-public"):
            await resolver.resolve("rebinding.example", 443)
        monkeypatch.undo()
        assert (await PublicOnlyResolver(allow_loopback=True).resolve("localhost", 80))[0]["host"] in ("127.0.0.1", "::1")
        with pytest.raises(OSError, match="non-public"):
            await PublicOnlyResolver().resolve("localhost", 80)
    asyncio.run(body())


def test_apply_pin_keeps_only_the_pinned_keys():
    """The pure rule behind the tests above: which keys of a document count under a pin."""
    from node.federation.actors import ActorError, KeyPin, apply_pin, read_document

    peer = FakePeer()
    parsed = read_document(peer.document_with_added_keys(rsa_key=peer.rsa), peer.actor, 0.0)
    unpinned, _ = apply_pin(parsed, None, None)
    assert len(unpinned.proof_keys) == 2  # without a pin the domain's word counts, all of it
    pin = KeyPin(key_fingerprint(peer.ed))
    actor, notes = apply_pin(parsed, pin, None)
    assert [key_fingerprint(k) for k in actor.proof_keys.values()] == [pin.ed25519]
    assert actor.rsa_fingerprint == key_fingerprint(peer.rsa) and any("second-key" in n for n in notes)
    with pytest.raises(ActorError, match="presents RSA key"):
        apply_pin(parsed, pin, key_fingerprint(peer.evil_rsa))
    with pytest.raises(ActorError, match="presents RSA key"):
        apply_pin(parsed, KeyPin(pin.ed25519, rsa=key_fingerprint(peer.evil_rsa)), None)
    with pytest.raises(ActorError, match="does not carry the key pinned"):
        apply_pin(parsed, KeyPin(key_fingerprint(generate_ed25519())), None)
