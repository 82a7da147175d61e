"""Small instances leaning on a larger peer's verdicts, as README's "Peering step by step: A, B and C" walks
them, with three `verdict-node serve` processes on loopback (real servers, real keys and signatures):

  A  a classifier (the tiny CLIP stands in for a real model)
  B  classifier.model: none; `peers add A --trust full --follow`: A's verdicts are pushed to it
  C  classifier.model: none, federation.lookup_peers: [A]; `peers add A --trust full`: it asks A

Each admin adds the others with `peers add` while the nodes run; nothing is restarted for it. The
node.yaml files differ from README's only in the tests' short federation timings (tests/multinode.py).
One test walks the whole story, because starting the servers is the expensive part; the numbers in the
comments are the points of the issue each step shows. The mechanisms one by one, in-process:
tests/test_federation_mechanisms.py.
"""
from __future__ import annotations

import time

from scanners.fingerprint import fingerprint, hamming
from tests.forgery import forge_phash
from tests.hostile import jpeg_with_zip
from tests.images import photo_bytes, photo_image, synthetic_image_bytes
from tests.multinode import Peer, metric, scan, started, wait_until
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

BLOCKED = "hubble_deep_field"  # tiny CLIP: csam >= 0.5 at A
ALLOWED = "astronaut"          # tiny CLIP: allowed at A
SCANNED = (BLOCKED, ALLOWED, "coffee", "rocket", "chelsea")
QUIET = {"backfill_interval_seconds": 300.0}  # README's default: no periodic backfill during the test


def _retracted(peer: Peer, verdict_id: str) -> str | None:
    rows = peer.query("SELECT retract_reason FROM verdicts WHERE verdict_id = ? AND retracted_at IS NOT NULL",
                      verdict_id)
    return rows[0][0] if rows else None


def _settled(value, timeout: float = 60.0) -> float:
    """A counter once it has stopped moving (the same at two reads a second apart)."""
    deadline, last = time.monotonic() + timeout, value()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = value()
        if now == last:
            return now
        last = now
    raise TimeoutError(f"still moving after {timeout} s")


def test_small_instances_lean_on_a_peer_as_readme_walks_them(tmp_path, tiny_clip_spec):
    a = Peer.create(tmp_path / "a", "a", model=tiny_clip_spec, federation=QUIET)
    b = Peer.create(tmp_path / "b", "b", federation=QUIET)
    c = Peer.create(tmp_path / "c", "c", federation={**QUIET, "lookup_peers": [a.actor]})
    images = {name: photo_bytes(name) for name in SCANNED}

    with started(a, b, c):
        # README step 2: each admin prints the pin the others need.
        pins = {peer.name: peer.pin for peer in (a, b, c)}
        a_model = a.get_json("/nodeinfo/2.1")["metadata"]["model"]
        at_a = dict(zip(SCANNED, scan(a, list(images.values()))))
        assert {r["source"] for r in at_a.values()} == {"inference"}
        assert (at_a[BLOCKED]["decision"], at_a[ALLOWED]["decision"]) == ("reject", "accept")

        # README step 4 for C, before A lists C: the answer says the lookup was refused, and by whom (2).
        added = c.cli("peers", "add", a.actor, "--trust", "full", "--key-fingerprint", pins["a"])
        assert added.returncode == 0, added.stderr
        assert f"key_fingerprint: {pins['a']}" in added.stdout and f"model: {a_model}" in added.stdout
        wait_until(lambda: "peers.yaml reloaded: 1 peer(s)" in c.log(), what="C took peers.yaml in (6)")
        refused, = scan(c, [images[ALLOWED]])
        assert (refused["status"], refused["source"]) == (406, "unavailable")
        assert f"lookup at {a.base} refused: not a peer of that node" in refused["reason"], refused["reason"]

        # README step 3: A lets B and C read; `kill -HUP` puts it in force, no restart (6).
        for peer in (b, c):
            added = a.cli("peers", "add", peer.actor, "--trust", "observe", "--share",
                          "--key-fingerprint", pins[peer.name])
            assert added.returncode == 0, added.stderr
        a.hang_up()
        wait_until(lambda: "peers.yaml reloaded: 2 peer(s)" in a.log(), what="A took peers.yaml in")

        # README step 4 for B: it follows A at once, A accepts, B backfills.
        added = b.cli("peers", "add", a.actor, "--trust", "full", "--follow", "--key-fingerprint", pins["a"])
        assert added.returncode == 0, added.stderr
        wait_until(lambda: (a.follower_state(b), b.following_state(a)) == ("accepted", "accepted"),
                   what="B follows A")
        own_at_a = a.scalar("SELECT COUNT(*) FROM verdicts WHERE own = 1")
        wait_until(lambda: b.verdicts_of(a) == own_at_a, what="B backfilled A's verdicts")

        # 1. B has no model and lists no known_models, and answers A's images from A's verdicts.
        assert "known_models" not in b.config.peers_path.read_text()
        at_b = dict(zip(SCANNED, scan(b, list(images.values()))))
        for name in SCANNED:
            assert (at_b[name]["source"], at_b[name]["origin"]) == ("peer", "backfill"), (name, at_b[name])
            assert (at_b[name]["verdict"], at_b[name]["decision"]) == (at_a[name]["verdict"], at_a[name]["decision"])
        assert metric(b, "verdictnode_inference_images_total") == 0
        assert "classifies nothing itself" in b.log() and "until it loads" not in b.log()  # (8)

        # 4. Pushes need no backfill: A serves no outbox page while five pushes reach B, and B counts each
        #    verdict once, as stored.
        pages = _settled(lambda: metric(a, "verdictnode_federation_outbox_pages_served_total", part="log"))
        stored = metric(b, "verdictnode_federation_verdicts_received_total", result="stored")
        duplicates = metric(b, "verdictnode_federation_verdicts_received_total", result="duplicate")
        fresh = [synthetic_image_bytes(70_000 + i, fmt="png", size=48) for i in range(5)]
        for count, image in enumerate(fresh, start=1):
            assert scan(a, [image], "image/png")[0]["source"] == "inference"
            wait_until(lambda n=count: b.verdicts_of(a) == own_at_a + n, what=f"push {count} reached B")
        assert metric(a, "verdictnode_federation_outbox_pages_served_total", part="log") == pages
        assert metric(b, "verdictnode_federation_verdicts_received_total", result="stored") == stored + 5
        assert metric(b, "verdictnode_federation_verdicts_received_total", result="duplicate") == duplicates
        assert b.log().count("backfilled from") == 1, b.log()
        pushed, = scan(b, [fresh[0]], "image/png")
        assert (pushed["source"], pushed["origin"]) == ("peer", "push")

        # 2. C answers from a lookup at A, told from a pushed verdict in the answer, the record and /metrics.
        looked_up = dict(zip((ALLOWED, BLOCKED), scan(c, [images[ALLOWED], images[BLOCKED]])))
        for name, answer in looked_up.items():
            assert (answer["source"], answer["origin"], answer["verdict"]) == \
                ("peer", "lookup", at_a[name]["verdict"]), answer
        again, = scan(c, [images[ALLOWED]])  # stored at C: a local hit now, still a lookup's verdict
        assert (again["source"], again["origin"]) == ("peer", "lookup")
        assert metric(c, "verdictnode_peer_decisions_total", origin="lookup") == 3
        wait_until(lambda: c.query("SELECT verdict_origin FROM decisions WHERE origin = 'peer'") ==
                   [("lookup",)] * 3, what="C recorded where the verdicts came from")

        # 5. A benign photo made to carry the blocked image's pHash (PDQ far apart) is not blocked from the
        #    cache anywhere: B and C say why A's block verdict did not count, A classifies it.
        target = fingerprint(images[BLOCKED])
        forged = forge_phash(photo_image(ALLOWED), target.phash64)
        forged_fp = fingerprint(forged)
        assert hamming(forged_fp.phash64, target.phash64) <= 8 and hamming(forged_fp.pdq256, target.pdq256) > 31
        for small in (b, c):
            answer, = scan(small, [forged])
            assert answer["source"] == "unavailable" and answer["verdict"] is None, answer
            assert f"from {a.actor} not used: it blocks, but pdq256 distance" in answer["reason"], answer["reason"]
            assert "block_match is both" in answer["reason"]
        classified, = scan(a, [forged])
        assert classified["source"] == "inference" and classified["verdict"] != at_a[BLOCKED]["verdict"]

        # 7. Trailing data is in the answer (accepted by default: motion photos keep working).
        glued, tail = jpeg_with_zip()
        with_zip, = scan(a, [glued])
        assert with_zip["media"] == {"trailing_bytes": tail} and with_zip["status"] == 200

        # 3. A retracts the verdict C learned by lookup: C stops using it (it reads A's retractions), and so
        #    does B (pushed).
        retracted = at_a[ALLOWED]["verdict"]
        done = a.cli("verdicts", "retract", retracted, "--reason", "false negative on review")
        assert done.returncode == 0, done.stderr
        for peer in (b, c):
            wait_until(lambda p=peer: _retracted(p, retracted) == "false negative on review",
                       what=f"{peer.name} recorded the retraction")
        after, = scan(c, [images[ALLOWED]])
        assert after["verdict"] != retracted and after["source"] != "peer", after
        assert f"1 verdict from {a.actor} not used: retracted: false negative on review" in after["reason"]
        assert scan(b, [images[ALLOWED]])[0]["verdict"] != retracted

        # ... also when C is down while A retracts: back up, C reads it from its cursor.
        assert c.stop() == 0
        blocked_verdict = at_a[BLOCKED]["verdict"]
        assert a.cli("verdicts", "retract", blocked_verdict, "--reason", "wrong image").returncode == 0
        c.spawn()
        c.wait_ready()
        wait_until(lambda: _retracted(c, blocked_verdict) == "wrong image", what="C read it after its restart")
        assert scan(c, [images[BLOCKED]])[0]["verdict"] != blocked_verdict

        # 7. media.on_trailing_data: reject refuses the upload; the outcome stays what the verdict says.
        assert a.stop() == 0
        a.edit_config(media={"on_trailing_data": "reject"})
        a.spawn()
        a.wait_ready()
        refused_zip, = scan(a, [glued])
        assert (refused_zip["status"], refused_zip["outcome"]) == (406, with_zip["outcome"]), refused_zip
        assert f"{tail} bytes of trailing data" in refused_zip["reason"]
        assert refused_zip["media"] == {"trailing_bytes": tail}
        assert scan(a, [photo_bytes("chelsea")])[0]["media"] == {}
