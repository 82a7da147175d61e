"""Bank contents never leave the node (many lists are shared under access agreements): two real nodes, A with
a bank and B its trusted peer asking A about images it cannot decide. What A blocks through its bank shows up
in A's answer and records, and nowhere B can see: not in A's outbox, not in A's lookup answers, not in B's
store, and B cannot use it to block."""
from __future__ import annotations

import hashlib
import json

from scanners.fingerprint import fingerprint
from scanners.media import decode
from tests.images import photo_bytes
from tests.multinode import Peer, signed_request, started, wait_until
from tests.node_helpers import pictrs_post, run
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

BANKED = "coffee"
ALLOWED = "astronaut"


def test_bank_contents_stay_out_of_the_outbox_lookups_and_peers(tmp_path, tiny_clip_spec):
    a = Peer.create(tmp_path / "a", "a", model=tiny_clip_spec)
    b = Peer.create(tmp_path / "b", "b", pictrs={"on_unavailable": "reject"}, federation={"lookup_peers": [a.actor]})
    a.write_peers([{"actor": b.actor, "trust": "full"}])
    b.write_peers([{"actor": a.actor, "trust": "full"}])

    banked = photo_bytes(BANKED)
    fp = fingerprint(banked, decode(banked))
    secret = {"sha256": fp.sha256, "md5": hashlib.md5(banked).hexdigest(), "pdq": fp.pdq256}
    bank_file = tmp_path / "private.txt"
    bank_file.write_text("".join(f"{kind} {value}\n" for kind, value in secret.items()))
    imported = a.cli("banks", "import", "private-list", str(bank_file))
    assert imported.returncode == 0, imported.stderr

    with started(a, b):
        wait_until(lambda: (a.follower_state(b), b.following_state(a)) == ("accepted", "accepted"),
                   what="B follows A")
        status, blocked = run(pictrs_post(a.validate_url(), banked))
        assert (status, blocked["source"], blocked["bank"]) == (406, "bank", "private-list")
        status, allowed = run(pictrs_post(a.validate_url(), photo_bytes(ALLOWED)))
        assert (status, allowed["source"]) == (200, "inference")
        wait_until(lambda: b.verdicts_of(a) == 1, what="B holds A's one verdict")
        assert a.scalar("SELECT COUNT(*) FROM verdicts") == 1   # the bank match made none

        # A's outbox, read as B: the allowed image's verdict, nothing of the bank.
        items, since = [], 0
        while True:
            status, page = signed_request("GET", f"{a.base}/outbox?since={since}", b)
            assert status == 200
            items += page["orderedItems"]
            if not page["orderedItems"]:
                break
            since = int(page["next"].rsplit("=", 1)[1])
        published = json.dumps(items)
        assert fingerprint(photo_bytes(ALLOWED), decode(photo_bytes(ALLOWED))).sha256 in published
        for value in (*secret.values(), "private-list"):
            assert value not in published

        # A's lookup, asked as B for every key of the banked image: no answer.
        query = f"sha256={fp.sha256}&pixel_sha256={fp.pixel_sha256}&phash={fp.phash64}"
        status, answer = signed_request("GET", f"{a.base}/lookup?{query}", b)
        assert status == 200 and answer["totalItems"] == 0 and answer["orderedItems"] == []

        # B asks A about the banked image on a miss, learns nothing, and decides as without A.
        status, at_b = run(pictrs_post(b.validate_url(), banked))
        assert at_b["source"] == "unavailable" and "bank" not in at_b
        assert b.scalar("SELECT COUNT(*) FROM verdicts WHERE sha256 = ?", fp.sha256) == 0
        assert b.scalar("SELECT COUNT(*) FROM bank_entries") == 0
        assert b.scalar("SELECT COUNT(*) FROM verdicts") == 1
