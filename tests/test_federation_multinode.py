"""Four real nodes on loopback, each started as an admin starts it (`verdict-node serve` on its own data
directory and port), sharing verdicts:

  A  tiny CLIP classifier; lists B and C in peers.yaml; takes follow requests from strangers.
  B  no classifier, `lookup_peers: [A]`, `on_unavailable: reject`; trusts A (follows it) and C (does not).
  C  tiny CLIP, stricter thresholds than A; follows A.
  D  a rogue node: nobody lists it.

One test walks through the whole story, because starting torch-loading servers is the expensive part.
"""
from __future__ import annotations

import io
import json
import time

from PIL import Image

from protocol import activities
from tests.images import photo_bytes, synthetic_image_bytes
from tests.multinode import Peer, metric, scan, signed_request, started, synthetic_verdict, wait_until
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

BLOCKED = "hubble_deep_field"  # tiny CLIP: csam >= 0.5 at A
ALLOWED = "astronaut"          # tiny CLIP: allowed at A
SCANNED = (BLOCKED, ALLOWED, "coffee", "rocket", "chelsea")
ONLY_AT_C = "immunohistochemistry"
MANY = 1000


def _reencoded(data: bytes) -> bytes:
    """Another JPEG of the same picture (quality 60, 90 % size): new bytes and pixels, a near pHash."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.resize((im.width * 9 // 10, im.height * 9 // 10), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=60)
    return out.getvalue()


def test_four_nodes_share_verdicts(tmp_path, tiny_clip_spec):
    # A takes follow requests from strangers (they wait for its admin): D's request reaches it.
    a = Peer.create(tmp_path / "a", "a", model=tiny_clip_spec, federation={"open_follow_requests": True})
    b = Peer.create(tmp_path / "b", "b", pictrs={"on_unavailable": "reject"},
                    federation={"lookup_peers": [a.actor]})
    c = Peer.create(tmp_path / "c", "c", model=tiny_clip_spec)
    d = Peer.create(tmp_path / "d", "d")
    a.write_peers([{"actor": b.actor, "trust": "full"}, {"actor": c.actor, "trust": "full"}])
    d.write_peers([{"actor": a.actor, "trust": "full"}])

    with started(a):
        # The admins of B and C read A's model from its NodeInfo and list it as comparable with theirs.
        model = a.get_json("/nodeinfo/2.1")["metadata"]["model"]
        assert model and "@" in model
        images = {name: photo_bytes(name) for name in SCANNED}
        at_a = dict(zip(SCANNED, scan(a, list(images.values()))))
        assert at_a[BLOCKED]["decision"] == "reject" and at_a[ALLOWED]["decision"] == "accept"
        assert {r["source"] for r in at_a.values()} == {"inference"}

        # C is stricter: it blocks on a category A lets through, just under the score A gave ALLOWED.
        allowed_scores = at_a[ALLOWED]["scores"]
        category = max((k for k in allowed_scores if k != "csam"), key=lambda k: allowed_scores[k])
        c.edit_config(policy={"thresholds": {"csam": 0.5, category: round(allowed_scores[category] * 0.9, 6)}})
        # B's admin pins A's Ed25519 key, as A's admin printed it with `verdict-node peers show-key`.
        pin = a.pin
        b.write_peers([{"actor": a.actor, "trust": "full", "known_models": [model], "key_fingerprint": pin},
                       {"actor": c.actor, "trust": "full", "known_models": [model], "follow": False}])
        c.write_peers([{"actor": a.actor, "trust": "full", "known_models": [model]}])

        with started(b, c, d):
            # -- follows: peers.yaml entries are accepted automatically, D waits for an admin ------------
            wait_until(lambda: (a.follower_state(b), a.follower_state(c), b.following_state(a),
                                c.following_state(a), a.following_state(c)) == ("accepted",) * 5,
                       what="follows between A, B and C")
            wait_until(lambda: a.follower_state(d) == "pending", what="D's follow request recorded")
            assert d.following_state(a) == "pending"
            listed = json.loads(a.cli("peers", "list", "--json").stdout)
            assert {p["actor"]: p["they_follow_us"] for p in listed}[d.actor] == "pending"

            # -- 1. B backfilled what A decided before B joined, and answers it without inference --------
            own_at_a = a.scalar("SELECT COUNT(*) FROM verdicts WHERE own = 1")
            wait_until(lambda: b.verdicts_of(a) == own_at_a, what="B holds A's verdicts")
            at_b = dict(zip(SCANNED, scan(b, list(images.values()))))
            for name in SCANNED:
                assert at_b[name]["source"] == "peer", (name, at_b[name])
                assert at_b[name]["verdict"] == at_a[name]["verdict"]
                assert at_b[name]["decision"] == at_a[name]["decision"]
            assert metric(b, "verdictnode_inference_images_total") == 0
            # A re-encoded copy of the blocked image: no exact key matches, the perceptual hash does.
            copy, = scan(b, [_reencoded(images[BLOCKED])])
            assert (copy["status"], copy["source"], copy["verdict"]) == (406, "peer", at_a[BLOCKED]["verdict"])
            assert "phash64" in copy["reason"] or "pdq256" in copy["reason"]

            # -- 2. C applies its own, stricter thresholds to A's scores -------------------------------
            wait_until(lambda: c.verdicts_of(a) == own_at_a, what="C holds A's verdicts")
            strict, = scan(c, [images[ALLOWED]])
            assert (strict["status"], strict["source"], strict["verdict"]) == (406, "peer", at_a[ALLOWED]["verdict"])
            assert metric(c, "verdictnode_inference_images_total") == 0

            # An image only C classified: A gets C's verdict (A follows C); B, which does not follow C,
            # asks A through /lookup and trusts the answer as far as it trusts C, the issuer.
            only_c = photo_bytes(ONLY_AT_C)
            at_c, = scan(c, [only_c])
            assert at_c["source"] == "inference"
            wait_until(lambda: a.verdicts_of(c) == 1, what="A holds C's verdict")
            assert b.verdicts_of(c) == 0
            looked_up, = scan(b, [only_c])
            assert (looked_up["source"], looked_up["verdict"]) == ("peer", at_c["verdict"])
            assert b.verdicts_of(c) == 1  # stored: the next upload is a local hit

            # -- 3. A retracts a verdict: B and C stop using it and record why ---------------------------
            retracted = at_a[BLOCKED]["verdict"]
            done = a.cli("verdicts", "retract", retracted, "--reason", "false positive on review")
            assert done.returncode == 0, done.stderr
            for peer in (b, c):
                wait_until(lambda p=peer: p.query("SELECT retract_reason FROM verdicts WHERE verdict_id = ?",
                                                   retracted) == [("false positive on review",)],
                           what=f"{peer.name} recorded the retraction")
            after_b, after_copy = scan(b, [images[BLOCKED], _reencoded(images[BLOCKED])])
            for answer in (after_b, after_copy):
                assert answer["verdict"] != retracted and answer["source"] == "unavailable", answer
            after_c, = scan(c, [images[BLOCKED]])
            assert after_c["verdict"] != retracted and after_c["source"] == "inference"
            # A, whose server did not run the command, stops using it too: it classifies the image afresh.
            after_a = wait_until(lambda: next((r for r in scan(a, [images[BLOCKED]]) if r["verdict"] != retracted),
                                              None), what="A's server stopped using the retracted verdict")
            assert after_a["source"] == "inference"

            # -- 4. B is down while A issues 1,000 verdicts; back up, it gets every one, exactly once -----
            assert b.stop() == 0
            held_by_b = {r[0] for r in b.query("SELECT verdict_id FROM verdicts WHERE issuer = ?", a.actor)}
            many = [synthetic_image_bytes(50_000 + i, fmt="png", size=48) for i in range(MANY)]
            results = scan(a, many, "image/png")
            assert {r["source"] for r in results} == {"inference"}
            issued = set(r["verdict"] for r in results)
            assert len(issued) == MANY
            wait_until(lambda: a.scalar("SELECT COUNT(*) FROM deliveries WHERE inbox = ?", f"{b.base}/inbox") > 0,
                       what="A queued deliveries for B")
            b.spawn()
            b.wait_ready()
            all_of_a = {r[0] for r in a.query("SELECT verdict_id FROM verdicts WHERE own = 1")}
            wait_until(lambda: b.verdicts_of(a) == len(all_of_a), timeout=90, what="B caught up")
            at_b_ids = {r[0] for r in b.query("SELECT verdict_id FROM verdicts WHERE issuer = ?", a.actor)}
            assert at_b_ids == all_of_a and issued <= at_b_ids
            # Exactly once: this B process stored each verdict it lacked once (the 1,000, and A's fresh
            # verdict on the image whose old one was retracted); repeats were recognised as such.
            assert metric(b, "verdictnode_federation_verdicts_received_total", result="stored") == \
                len(all_of_a - held_by_b) >= MANY
            wait_until(lambda: c.verdicts_of(a) == len(all_of_a), timeout=60, what="C caught up")
            wait_until(lambda: a.scalar("SELECT COUNT(*) FROM deliveries") == 0, timeout=60,
                       what="A's delivery queue drained")

            # -- 5. D and forged material are refused, and nothing of them is stored ----------------------
            def counts() -> tuple:
                return (a.scalar("SELECT COUNT(*) FROM verdicts"), a.scalar("SELECT COUNT(*) FROM seen_activities"),
                        a.scalar("SELECT COUNT(*) FROM retractions"))

            before = counts()
            inbox = f"{a.base}/inbox"
            _, d_doc = synthetic_verdict(d.actor, d.ed25519_key, 1, csam=0.0)
            d_create = json.dumps(activities.create(d.actor, [d_doc], [a.actor])).encode()
            assert signed_request("POST", inbox, d, d_create)[0] == 403
            assert signed_request("GET", f"{a.base}/outbox?since=0", d)[0] == 403
            assert signed_request("GET", f"{a.base}/lookup?sha256={'0' * 64}", d)[0] == 403

            _, b_doc = synthetic_verdict(b.actor, b.ed25519_key, 2, csam=0.0)
            good = json.dumps(activities.create(b.actor, [b_doc], [a.actor])).encode()

            def bad_signature(headers: dict) -> None:
                value = headers["Signature"]
                start = value.index('signature="') + len('signature="')
                headers["Signature"] = value[:start] + ("A" if value[start] != "A" else "B") + value[start + 1:]

            assert signed_request("POST", inbox, b, good, tamper=bad_signature)[0] == 401
            other_body = json.dumps(activities.create(b.actor, [synthetic_verdict(b.actor, b.ed25519_key, 3)[1]],
                                                      [a.actor])).encode()
            assert signed_request("POST", inbox, b, good, send_body=other_body)[0] == 401  # digest mismatch
            assert signed_request("POST", inbox, b, good, date=time.time() - 7200)[0] == 401  # stale Date
            assert signed_request("POST", inbox, b, good, rsa_key=d.rsa_key)[0] == 401  # D's key, B's keyId

            broken = dict(b_doc, scores={**b_doc["scores"], "csam": 0.9})  # proof no longer matches
            status, _ = signed_request("POST", inbox, b, json.dumps(activities.create(b.actor, [b_doc], [a.actor])
                                                                     | {"object": [broken]}).encode())
            assert status == 401
            _, c_doc = synthetic_verdict(c.actor, b.ed25519_key, 4)  # claims C issued it, signed with B's key
            claiming = json.dumps({**json.loads(good), "object": [c_doc]}).encode()
            assert 400 <= signed_request("POST", inbox, b, claiming)[0] < 500
            relayed = json.dumps(activities.announce(b.actor, [d_doc], [a.actor])).encode()
            assert signed_request("POST", inbox, b, relayed)[0] == 403  # relay of an issuer A does not know
            assert counts() == before

            # The real thing, for contrast: B's own, correctly signed verdict is taken.
            assert signed_request("POST", inbox, b, good)[0] == 202
            assert a.verdicts_of(b) == 1
