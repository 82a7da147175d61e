"""The review console's test world, built from the pieces the other tests use: a data directory
(tests.node_helpers.make_data_dir), real photos (tests.images), a local storage tree swept with the node's
own pipeline into a quarantine (tests.sweep_helpers), own and peer verdicts signed as nodes sign them, a
pict-rs hook rejection, a pending follow request and an approved follower.

    world = build_world(tmp_path)          # the node is closed again: the database and files remain
    with_console(world, body)              # body(console, client) with an aiohttp test client

A small fake Attributor stands in for the attribution feature (its contract is node.hooks.Attributor).
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ed25519

from node.admin import Console, console_app
from node.hooks import Attribution
from node.serve import open_serving_node
from node.sweeps.engine import Sweep, SweepOptions
from protocol.verdict import ModelInfo, Verdict, new_verdict_id, sign_verdict, utc_timestamp
from scanners.fingerprint import fingerprint
from scanners.sources import open_source
from tests.images import photo_bytes
from tests.node_helpers import free_port, make_data_dir, run
from tests.sweep_helpers import write_tree

PEER = "https://peer.example/actor"          # in peers.yaml, trust full: its verdicts block
FOLLOWER = "https://follower.example/actor"  # follows us (approved): receives our retractions
ASKING = "https://asking.example/actor"      # asked to follow, waiting for the admin
MODEL = ModelInfo(name="synthetic-model", version="1", rules="synthetic-rules")
BAD = {"csam": 0.93, "nsfw": 0.97, "underage": 0.9}

#: storage key -> (photo, who blocks it)
SWEPT = {"a/galaxy": ("hubble_deep_field", "own"), "a/astronaut": ("astronaut", "own"),
         "b/coffee": ("coffee", "own"), "b/cat": ("chelsea", "peer")}
HOOKED = {"rocket": "own", "retina": "peer"}


@dataclass
class World:
    config: Any
    root: Path
    quarantine: Path
    images: dict[str, bytes] = field(default_factory=dict)      # photo name -> bytes
    verdicts: dict[str, str] = field(default_factory=dict)      # photo name -> verdict id

    @property
    def db(self) -> Path:
        return self.config.database_path

    def query(self, sql: str, *params: Any) -> list[tuple]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()

    def item_ref(self, key: str) -> str:
        (rowid,) = self.query("SELECT rowid FROM sweep_items WHERE key = ?", key)[0]
        return f"sweep-{rowid}"

    def bytes_ref(self, photo: str) -> str:
        return "bytes-" + hashlib.sha256(self.images[photo]).hexdigest()


def _verdict(issuer: str, key: Any, data: bytes) -> tuple[Verdict, dict]:
    verdict = Verdict(id=new_verdict_id(issuer), issuer=issuer, fingerprint=fingerprint(data), scores=BAD,
                      label="csam", model=MODEL, published=utc_timestamp())
    return verdict, sign_verdict(verdict, key, f"{issuer}#ed25519-key")


def build_world(tmp_path: Path, **admin: Any) -> World:
    """A data directory with the console enabled, a swept tree with four quarantined positives (three on our
    own verdicts, one on the peer's), two hook rejections (ours, the peer's), a pending follow request and
    an approved follower."""
    settings = {"enabled": True, "listen": f"127.0.0.1:{free_port()}", **admin}
    config = make_data_dir(tmp_path / "data", thresholds={"csam": 0.5}, admin=settings,
                           pictrs={"on_unavailable": "accept"},
                           peers=[{"actor": PEER, "trust": "full", "follow": False, "share": False}])
    world = World(config, tmp_path / "files", tmp_path / "quarantine")
    names = {photo for photo, _ in SWEPT.values()} | set(HOOKED)
    world.images = {name: photo_bytes(name, size=256) for name in names}
    write_tree(world.root, {key: world.images[photo] for key, (photo, _) in SWEPT.items()})
    write_tree(world.root, {"c/safe": photo_bytes("immunohistochemistry", size=256)})
    peer_key = ed25519.Ed25519PrivateKey.generate()

    async def body() -> None:
        node = open_serving_node(config, load_model=False)
        try:
            blockers = {**{p: who for p, who in SWEPT.values()}, **HOOKED}
            for photo, who in blockers.items():
                if who == "own":
                    verdict, doc = _verdict(node.actor_id, node.ed25519_key, world.images[photo])
                    node.add_verdict(verdict, doc, own=True)
                else:
                    verdict, doc = _verdict(PEER, peer_key, world.images[photo])
                    node.add_verdict(verdict, doc, own=False, origin="push")
                world.verdicts[photo] = verdict.id
            node.set_backend(None, "classifier.model is none")  # our own verdicts' model counts as known now
            source = open_source(str(world.root), quarantine_dir=str(world.quarantine))
            sweep = Sweep(node, source, str(world.root), SweepOptions(workers=1))
            stats = await sweep.run()
            await source.close()
            assert stats.quarantined == len(SWEPT), stats.as_dict()
            for photo in HOOKED:
                result = await node.pipeline.check(world.images[photo], source="pictrs")
                assert result.decision == "reject", result
            now = time.time()
            with node.store.transaction() as conn:
                conn.execute("INSERT INTO peers (actor, inbox, follower_state, their_follow_id, updated_at) "
                             "VALUES (?, ?, 'pending', ?, ?)", (ASKING, "https://asking.example/inbox",
                                                                "https://asking.example/follows/1", now))
                conn.execute("INSERT INTO peers (actor, inbox, follower_state, their_follow_id, updated_at) "
                             "VALUES (?, ?, 'accepted', ?, ?)", (FOLLOWER, "https://follower.example/inbox",
                                                                 "https://follower.example/follows/1", now))
        finally:
            await node.close()
    run(body())
    return world


class FakeAttributor:
    """node.hooks.Attributor as the attribution feature answers it: an uploader and a post per image."""

    def __init__(self) -> None:
        self.purged: list[tuple[str, int, str, str]] = []

    async def attribute(self, sha256: str, *, source: str | None = None, key: str | None = None,
                        refresh: bool = False, search_text: bool = False) -> Attribution:
        return Attribution(looked_up_at=time.time(), found=True,
                           summary="uploaded by alice (https://lemmy.example/u/alice), in 1 post",
                           details={"lemmy": {  # node.attribution.lemmy's shape (tests/test_console_attribution.py)
                               "uploads": [{"alias": "a.png", "uploader": {
                                   "person_id": 7, "name": "alice", "actor_url": "https://lemmy.example/u/alice"}}],
                               "posts": [{"post_id": 42, "ap_id": "https://lemmy.example/post/42"}], "comments": []}},
                           problems=("mastodon database not configured",))

    async def purge(self, kind: str, target_id: int, *, reason: str, actor: str) -> str:
        self.purged.append((kind, target_id, reason, actor))
        return f"lemmy purged {kind} {target_id} (asked by {actor})"


async def console_client(world: World, attribution: Any = None) -> tuple[Any, Console, TestClient]:
    node = open_serving_node(world.config, load_model=False)
    node.attribution = attribution
    console = node.features.get(Console)
    assert console is not None
    client = TestClient(TestServer(console_app(console)))
    await client.start_server()
    return node, console, client


def with_console(world: World, body: Callable[[Console, TestClient], Awaitable[Any]], attribution: Any = None) -> Any:
    async def main() -> Any:
        node, console, client = await console_client(world, attribution)
        try:
            return await body(console, client)
        finally:
            await client.close()
            await node.close()
    return run(main())


async def login(console: Console, client: TestClient, name: str = "ada", password: str | None = None) -> str:
    """Add the account (unless a password is given), log in, set a password of its own; returns the CSRF
    token of the session."""
    if password is None:
        password = console.accounts.add(name)
    response = await post_login(client, name, password)
    assert response.status == 303, await response.text()
    account = console.accounts.get(name)
    if account is not None and account.must_change:
        csrf = await csrf_of(client, "/password")
        response = await client.post("/password", data={"csrf": csrf, "current": password, "new": NEW_PASSWORD,
                                                        "again": NEW_PASSWORD}, allow_redirects=False)
        assert response.status == 303, await response.text()
    return await csrf_of(client, "/queue")


NEW_PASSWORD = "correct horse battery staple"


async def post_login(client: TestClient, name: str, password: str, **kwargs: Any) -> Any:
    """What a browser does: load the login form (its token and cookie), then post it."""
    token = await csrf_of(client, "/login")
    kwargs.setdefault("allow_redirects", False)
    return await client.post("/login", data={"name": name, "password": password, "csrf": token}, **kwargs)


async def csrf_of(client: TestClient, path: str) -> str:
    text = await (await client.get(path)).text()
    marker = 'name="csrf" value="'
    start = text.index(marker) + len(marker)
    return text[start:text.index('"', start)]

