"""Pipeline on a real Node (tiny CLIP, real store, real signatures), without HTTP: what sweeps and `check` use."""
from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric import ed25519

from node.hooks import PeerAnswers
from node.runtime import Node
from protocol.verdict import ModelInfo, Verdict, new_verdict_id, sign_verdict, utc_timestamp, verify_verdict
from tests.images import encode, photo_bytes, photo_image
from tests.node_helpers import make_data_dir, run
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

# With the tiny CLIP, these photos score csam >= 0.5 (block at the default 0.5) and well below (allow).
BLOCKED = "hubble_deep_field"
ALLOWED = "astronaut"
TINY_MODEL = ModelInfo(name="peer-model", version="1", rules="peer-rules")


def inferred(node: Node) -> float:
    return node.metrics.inference_images._value.get()


def with_exif(jpeg: bytes) -> bytes:
    """The same JPEG with an extra EXIF segment: different bytes, same pixels (what exiftool strips)."""
    payload = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08\x00\x00" + b"camera serial 12345" * 10
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


async def _with_node(config, body):
    node = Node.open(config)
    await node.start()
    try:
        return await body(node)
    finally:
        await node.close()


def test_known_images_skip_inference_and_stripped_metadata_hits_the_pixel_key(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    original = photo_bytes(ALLOWED)

    async def body(node: Node):
        first = await node.pipeline.check(original)
        assert (first.decision, first.source, first.inferred) == ("accept", "inference", True)
        assert inferred(node) == 1
        again = await node.pipeline.check(original)
        assert (again.decision, again.source, again.inferred) == ("accept", "cache", False)
        assert again.verdict_id == first.verdict_id
        stripped = await node.pipeline.check(with_exif(original))
        assert stripped.sha256 != first.sha256
        assert (stripped.decision, stripped.source) == ("accept", "cache")
        assert node.metrics.cache_hits.labels("cache", "pixel_sha256")._value.get() == 1
        assert inferred(node) == 1
    run(_with_node(config, body))


def test_own_verdict_is_signed_stored_and_published(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    published = []

    async def body(node: Node):
        node.on_own_verdict.append(lambda v, doc: published.append((v, doc)))
        result = await node.pipeline.check(photo_bytes(BLOCKED))
        assert (result.decision, result.outcome, result.source) == ("reject", "block", "inference")
        (verdict, doc), = published
        assert verdict.id == result.verdict_id and verdict.issuer == node.actor_id and verdict.label == "csam"
        public = node.ed25519_key.public_key()
        assert verify_verdict(doc, lambda method: public) == verdict
        assert doc["proof"]["verificationMethod"] == f"{node.actor_id}#ed25519-key"
        assert node.store.verdict_document(verdict.id) == doc
    run(_with_node(config, body))


def test_concurrent_identical_requests_share_one_inference(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    data = photo_bytes("chelsea")

    async def body(node: Node):
        results = await asyncio.gather(*(node.pipeline.check(data) for _ in range(12)))
        assert inferred(node) == 1
        assert len({r.verdict_id for r in results}) == 1
        assert {r.decision for r in results} == {results[0].decision}
        assert node.store.counts()["own_verdicts"] == 1
    run(_with_node(config, body))


def test_thresholds_from_config_force_outcomes(tmp_path, tiny_clip_spec):
    data = photo_bytes(ALLOWED)
    strict = make_data_dir(tmp_path / "strict", model=tiny_clip_spec, thresholds={"csam": 0.0})
    lax = make_data_dir(tmp_path / "lax", model=tiny_clip_spec, thresholds={"csam": 1.0})

    async def decide(node: Node):
        return (await node.pipeline.check(data)).decision
    assert run(_with_node(strict, decide)) == "reject"
    assert run(_with_node(lax, decide)) == "accept"
    assert run(_with_node(lax, lambda n: n.pipeline.check(photo_bytes(BLOCKED)))).decision == "accept"


def test_block_verdicts_reuse_perceptually_safe_ones_do_not(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)

    async def body(node: Node):
        assert (await node.pipeline.check(photo_bytes(BLOCKED))).decision == "reject"
        assert (await node.pipeline.check(photo_bytes(ALLOWED))).decision == "accept"
        assert inferred(node) == 2
        # Re-encoded at another quality: new bytes, new pixels, near-identical perceptual hashes.
        block_variant = await node.pipeline.check(encode(photo_image(BLOCKED), "jpeg", quality=60))
        assert (block_variant.decision, block_variant.source) == ("reject", "cache")
        assert inferred(node) == 2
        safe_variant = await node.pipeline.check(encode(photo_image(ALLOWED), "jpeg", quality=60))
        assert safe_variant.source == "inference"  # a safe verdict never travels on a perceptual match
        assert inferred(node) == 3
    run(_with_node(config, body))


def test_no_classifier_follows_on_unavailable_but_known_images_still_answer(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    blocked, allowed, unknown = photo_bytes(BLOCKED), photo_bytes(ALLOWED), photo_bytes("chelsea")

    async def learn(node: Node):
        await node.pipeline.check(blocked)
        await node.pipeline.check(allowed)
    run(_with_node(config, learn))

    for on_unavailable, answer in (("reject", "reject"), ("accept", "accept")):
        cfg = make_data_dir(tmp_path, model="none", pictrs={"on_unavailable": on_unavailable})

        async def body(node: Node):
            assert node.backend is None and "none" in node.health()["classifier"]["problem"]
            r = await node.pipeline.check(unknown)
            assert (r.decision, r.outcome, r.source) == (answer, "unknown", "unavailable")
            assert "on_unavailable" in r.reason
            assert (await node.pipeline.check(blocked)).decision == "reject"  # from the stored verdicts
            assert (await node.pipeline.check(allowed)).decision == "accept"
        run(_with_node(cfg, body))


def test_budget_exhausted_answers_unavailable_and_late_verdict_is_kept(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    data = photo_bytes("coffee")

    async def body(node: Node):
        late = await node.pipeline.check(data, budget=0.0)
        assert (late.decision, late.source) == ("reject", "unavailable")
        await node.pipeline.drain()
        assert node.store.counts()["own_verdicts"] == 1  # the inference finished and was stored
        again = await node.pipeline.check(data)
        assert again.source == "cache"
        assert inferred(node) == 1
    run(_with_node(config, body))


def test_peer_verdicts_from_the_lookup_hook_are_used_and_stored(tmp_path, tiny_clip_spec):
    peer_actor = "https://peer.example/actor"
    config = make_data_dir(tmp_path, model=tiny_clip_spec, peers=[{"actor": peer_actor, "trust": "full"}])
    peer_key = ed25519.Ed25519PrivateKey.generate()
    data = photo_bytes("rocket")
    asked = []

    async def body(node: Node):
        from scanners.fingerprint import fingerprint

        fp = fingerprint(data)
        verdict = Verdict(id=new_verdict_id(peer_actor), issuer=peer_actor, fingerprint=fp,
                          scores={"csam": 0.9, "nsfw": 0.9, "underage": 0.9}, label="csam", model=node.model,
                          published=utc_timestamp())
        doc = sign_verdict(verdict, peer_key, f"{peer_actor}#ed25519-key")

        async def lookup(fingerprint_, deadline):
            asked.append(fingerprint_)
            return PeerAnswers([(verdict, doc)])
        node.lookup_peers = lookup
        result = await node.pipeline.check(data)
        assert (result.decision, result.source, result.verdict_id) == ("reject", "peer", verdict.id)
        assert asked[0].sha256 == fp.sha256 and inferred(node) == 0
        node.lookup_peers = None
        again = await node.pipeline.check(data)  # now from the store, no lookup
        assert (again.decision, again.source) == ("reject", "peer") and len(asked) == 1
        assert node.store.counts()["peer_verdicts"] == 1
    run(_with_node(config, body))


def test_video_and_unreadable_follow_media_settings_and_are_never_csam(tmp_path, tiny_clip_spec):
    from tests.hostile import mp4_header

    config = make_data_dir(tmp_path, model=tiny_clip_spec, media={"on_video": "reject", "on_unreadable": "accept"})

    async def body(node: Node):
        video = await node.pipeline.check(mp4_header(), media_type="video/mp4")
        assert (video.decision, video.outcome, video.source) == ("reject", "video", "media")
        junk = await node.pipeline.check(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        assert (junk.decision, junk.outcome) == ("accept", "unreadable")
        assert inferred(node) == 0
        node.store.flush()  # decision rows are written in the background
        rows = node.store.decisions()  # newest first; no verdict: neither is ever reused as a block
        assert [(r["decision"], r["origin"], r["verdict_ids"]) for r in rows] == [("accept", "media", "[]"),
                                                                                  ("reject", "media", "[]")]
        assert node.store.counts()["own_verdicts"] == 0
    run(_with_node(config, body))


def test_decisions_are_recorded_with_origin(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)

    async def body(node: Node):
        await node.pipeline.check(photo_bytes(ALLOWED), source="sweep", source_key="files/a.jpg")
        await node.pipeline.check(photo_bytes(ALLOWED), source="check")
    run(_with_node(config, body))
    from node.store import Store

    with Store(config.database_path) as store:
        rows = store.decisions()
    assert [(r["source"], r["origin"], r["inferred"]) for r in rows] == [("check", "cache", 0), ("sweep", "inference", 1)]
    assert rows[1]["source_key"] == "files/a.jpg" and rows[1]["phash64"]


def test_retracting_a_verdict_takes_effect_at_once(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    data = photo_bytes(BLOCKED)

    async def body(node: Node):
        first = await node.pipeline.check(data)
        assert (await node.pipeline.check(data)).source == "cache"
        assert node.retract_verdict(first.verdict_id, "false positive found in review")
        again = await node.pipeline.check(data)  # neither the exact key nor the perceptual index uses it now
        assert again.source == "inference" and again.verdict_id != first.verdict_id
        assert inferred(node) == 2
    run(_with_node(config, body))


def test_changes_made_by_another_process_reach_a_running_node(tmp_path, tiny_clip_spec):
    """A CLI retraction or a sweep writes to the same database while `serve` runs: the node picks them up."""
    from node.store import Store

    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    data = photo_bytes(BLOCKED)

    async def body(node: Node):
        first = await node.pipeline.check(data)
        assert (await node.pipeline.check(data)).source == "cache"
        with Store(config.database_path) as other:  # another connection, as another process has
            assert other.retract_verdict(first.verdict_id, "reviewed: false positive") is not None
        assert node.sync_with_store() >= 1
        assert len(node.phash_index) == 0
        again = await node.pipeline.check(data)
        assert again.source == "inference" and again.verdict_id != first.verdict_id
        # A verdict stored by another process is indexed too (perceptual block reuse works for it).
        peer = "https://peer.example/actor"
        with Store(config.database_path) as other:
            v = Verdict(id=new_verdict_id(peer), issuer=peer, fingerprint=again.fingerprint, scores={"csam": 0.99},
                        label="csam", model=node.model, published=utc_timestamp())
            other.insert_verdict(v, None, own=False)
        before = len(node.phash_index)
        assert node.sync_with_store() == 1 and len(node.phash_index) == before + 1
    run(_with_node(config, body))


def test_full_classifier_queue_answers_at_once_per_on_unavailable(tmp_path, tiny_clip_spec):
    """A flood of new images cannot queue without bound (pictrs-safety's fail-open): beyond max_queue the
    answer is on_unavailable at once, and nothing is called safe without being classified."""
    from tests.images import synthetic_image_bytes

    config = make_data_dir(tmp_path, model=tiny_clip_spec, classifier={"max_queue": 1, "max_wait_ms": 200})
    images = [synthetic_image_bytes(500 + i, size=128) for i in range(24)]

    async def body(node: Node):
        results = await asyncio.gather(*(node.pipeline.check(b) for b in images))
        refused = [r for r in results if r.source == "unavailable"]
        assert refused and all("queue full" in r.reason and r.decision == "reject" for r in refused)
        assert all(r.source in ("inference", "unavailable") for r in results)
        assert inferred(node) == len(results) - len(refused)
    run(_with_node(config, body))


def test_a_retraction_by_another_process_ends_a_memoised_decision(tmp_path, tiny_clip_spec):
    """A verdict without perceptual hashes is in no index, so its retraction elsewhere changes no index:
    the node must still forget the exact-key decision it memoised from it."""
    from node.store import Store
    from scanners.fingerprint import fingerprint

    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    data = photo_bytes(ALLOWED)

    async def body(node: Node):
        fp = fingerprint(data)
        hashless = Verdict(id=new_verdict_id(node.actor_id), issuer=node.actor_id,
                           fingerprint=type(fp)(sha256=fp.sha256, pixel_sha256=fp.pixel_sha256, phash64="",
                                                preprocessing=fp.preprocessing, pdq256=None),
                           scores={"csam": 0.99, "nsfw": 0.99, "underage": 0.99}, label="csam", model=node.model,
                           published=utc_timestamp())
        node.add_verdict(hashless, None, own=True)
        assert (await node.pipeline.check(data)).decision == "reject"
        assert (await node.pipeline.check(data)).source == "cache"  # memoised
        with Store(config.database_path) as other:
            assert other.retract_verdict(hashless.id, "reviewed: false positive") is not None
        assert node.sync_with_store() >= 1
        again = await node.pipeline.check(data)
        assert (again.decision, again.source) == ("accept", "inference")
    run(_with_node(config, body))


def test_media_flags_reach_the_answer_and_the_record_on_every_path(tmp_path, tiny_clip_spec):
    """Trailing data, truncation and animation were flagged by `check` only: the answer and the decision
    record carry them, whether the image was decoded, answered from an exact key, or memoised."""
    from node.store import Store
    from tests.hostile import gif_bytes, jpeg_with_zip

    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    glued, tail = jpeg_with_zip()
    full = photo_bytes("coffee")
    frames = [photo_image("coffee", size=64), photo_image("rocket", size=64)]

    async def body(node: Node):
        answers = [await node.pipeline.check(glued) for _ in range(3)]  # inference, exact key, memo
        assert [a.source for a in answers] == ["inference", "cache", "cache"]
        assert all(a.media_flags == {"trailing_bytes": tail} for a in answers), [a.media_flags for a in answers]
        assert answers[0].as_json()["media"] == {"trailing_bytes": tail} and answers[0].decision == "accept"
        cut = await node.pipeline.check(full[: len(full) * 6 // 10])
        assert cut.media_flags == {"truncated": True}
        animated = await node.pipeline.check(gif_bytes(frames), media_type="image/gif")
        assert animated.media_flags == {"animated": True}
        plain = await node.pipeline.check(full)
        assert plain.media_flags == {} and plain.as_json()["media"] == {}
    run(_with_node(config, body))
    import json as _json

    with Store(config.database_path) as store:
        flags = [_json.loads(r["media_flags"]) for r in reversed(store.decisions())]
    assert flags == [{"trailing_bytes": tail}] * 3 + [{"truncated": True}, {"animated": True}, {}]


def test_on_trailing_data_reject_refuses_the_upload_but_keeps_the_outcome(tmp_path, tiny_clip_spec):
    from tests.hostile import jpeg_with_zip

    glued, tail = jpeg_with_zip()
    strict = make_data_dir(tmp_path / "strict", model=tiny_clip_spec, media={"on_trailing_data": "reject"})

    async def refused(node: Node):
        for _ in range(2):  # decoded, then from the exact key
            r = await node.pipeline.check(glued)
            assert (r.decision, r.outcome) == ("reject", "allow"), r.reason
            assert f"{tail} bytes of trailing data" in r.reason and "on_trailing_data is reject" in r.reason
        assert (await node.pipeline.check(photo_bytes(ALLOWED))).decision == "accept"  # no trailing data
    run(_with_node(strict, refused))

    roomy = make_data_dir(tmp_path / "roomy", model=tiny_clip_spec,
                          media={"on_trailing_data": "reject", "max_trailing_bytes": tail})
    assert run(_with_node(roomy, lambda node: node.pipeline.check(glued))).decision == "accept"


def test_an_answer_that_falls_back_names_the_verdicts_that_did_not_count(tmp_path, caplog):
    """A model-none node holding a peer's verdict it may not use says so, naming the peer and the rule, in
    the reason and in one log line, before 'no classifier'."""
    import logging

    from scanners.fingerprint import fingerprint

    peer_actor = "https://a.example/actor"
    config = make_data_dir(tmp_path, peers=[{"actor": peer_actor, "trust": "full"}],
                           policy={"trust_issuer_models": False})
    data = photo_bytes("rocket")
    other = type(TINY_MODEL)(name="open_nsfw", version="1", rules="open_nsfw-prob")

    async def body(node: Node):
        verdict = Verdict(id=new_verdict_id(peer_actor), issuer=peer_actor, fingerprint=fingerprint(data),
                          scores={"csam": 0.01, "nsfw": 0.9}, label="nsfw", model=other, published=utc_timestamp())
        node.add_verdict(verdict, None, own=False)
        with caplog.at_level(logging.INFO, logger="verdict_node.pipeline"):
            r = await node.pipeline.check(data)
        line = f"1 verdict from {peer_actor} not used: model open_nsfw@open_nsfw-prob is not in known_models"
        assert r.source == "unavailable" and r.reason.startswith(line), r.reason
        assert "no classifier (classifier.model is none)" in r.reason
        assert [rec.getMessage() for rec in caplog.records if line in rec.getMessage()], caplog.text
        assert node.retract_verdict(verdict.id, "false positive on review")
        again = await node.pipeline.check(data)
        assert again.reason.startswith(f"1 verdict from {peer_actor} not used: retracted: false positive on review")
    run(_with_node(config, body))


def test_a_lookup_answer_is_told_from_a_pushed_verdict(tmp_path):
    from node.store import Store
    from scanners.fingerprint import fingerprint

    peer_actor = "https://peer.example/actor"
    config = make_data_dir(tmp_path, peers=[{"actor": peer_actor, "trust": "full"}])
    peer_key = ed25519.Ed25519PrivateKey.generate()
    looked_up, pushed = photo_bytes("rocket"), photo_bytes("coffee")

    def signed(data: bytes) -> tuple[Verdict, dict]:
        verdict = Verdict(id=new_verdict_id(peer_actor), issuer=peer_actor, fingerprint=fingerprint(data),
                          scores={"csam": 0.01, "nsfw": 0.1, "underage": 0.1}, label="safe", model=TINY_MODEL,
                          published=utc_timestamp())
        return verdict, sign_verdict(verdict, peer_key, f"{peer_actor}#ed25519-key")

    async def body(node: Node):
        answer = signed(looked_up)

        async def lookup(fingerprint_, deadline):
            return PeerAnswers([answer] if fingerprint_.sha256 == answer[0].fingerprint.sha256 else [],
                               ("lookup at https://other.example refused: not a peer of that node",))
        node.lookup_peers = lookup
        node.add_verdict(*signed(pushed), own=False, origin="push")
        first, second = await node.pipeline.check(looked_up), await node.pipeline.check(looked_up)
        assert [(r.source, r.origin) for r in (first, second)] == [("peer", "lookup")] * 2
        assert first.as_json()["origin"] == "lookup"
        from_push = await node.pipeline.check(pushed)
        assert (from_push.source, from_push.origin) == ("peer", "push")
        miss = await node.pipeline.check(photo_bytes("chelsea"))
        assert "lookup at https://other.example refused: not a peer of that node" in miss.reason
        sample = node.metrics.registry.get_sample_value
        assert sample("verdictnode_peer_decisions_total", {"origin": "lookup"}) == 2
        assert sample("verdictnode_peer_decisions_total", {"origin": "push"}) == 1
    run(_with_node(config, body))
    with Store(config.database_path) as store:
        assert [r["verdict_origin"] for r in reversed(store.decisions())] == ["lookup", "lookup", "push", None]


def test_a_full_queue_is_marked_busy_and_no_classifier_is_not(tmp_path, tiny_clip_spec):
    """A sweep asks again only when asking again may help: a full queue drains, an absent classifier does
    not. The answer says which by a field, not by its wording."""
    from node.workers.backends import WorkersUnavailable
    from scanners.batching import QueueFull

    config = make_data_dir(tmp_path, model=tiny_clip_spec)

    class Refusing:
        def __init__(self, model, error):
            self.model, self.error = model, error

        async def classify_frames(self, frames):
            raise self.error

        def unavailable(self):
            return None

        async def close(self):
            pass

    async def body(node: Node):
        model = node.model
        node.set_backend(Refusing(model, QueueFull("256 frames waiting")))
        full = await node.pipeline.check(photo_bytes(ALLOWED))
        assert (full.outcome, full.source, full.busy) == ("unknown", "unavailable", True)
        node.set_backend(Refusing(model, WorkersUnavailable("no worker heard from for 10 s")))
        absent = await node.pipeline.check(photo_bytes(BLOCKED))
        assert (absent.outcome, absent.source, absent.busy) == ("unknown", "unavailable", False)
        assert "classifier unavailable" in absent.reason
    run(_with_node(config, body))
