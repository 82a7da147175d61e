"""End to end with the real python-threatexchange from PyPI (pinned in pyproject's test extra): its
`threatexchange` CLI loads the verdict_tx extension, fetches a running `verdict-node serve` with a bearer
token, matches a blocked image by PDQ (hashed by python-threatexchange itself, from the file) and by MD5,
forgets a retracted verdict at the next fetch, and a revoked token is refused with 401.

What the feed holds is checked on the way: only the node's own block verdicts; not its safe verdicts, not a
peer's block verdict it stored, not its hash banks.

Three images are blocked, not one: python-threatexchange's PDQ index (faiss IndexBinaryMultiHash) loses its
only entry when the CLI saves and reloads it, so an index of one PDQ never matches (it is HMA issue 1318 too);
with two or more it works, and the retraction check needs one left over that still matches."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from node.store import Store
from protocol.keys import generate_ed25519
from tests.images import photo_bytes, synthetic_image_bytes
from tests.multinode import synthetic_verdict
from tests.node_helpers import ROOT, make_data_dir, serve_process
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

pytest.importorskip("threatexchange")
TX = shutil.which("threatexchange", path=str(Path(sys.executable).parent)) or shutil.which("threatexchange")
pytestmark = pytest.mark.skipif(TX is None, reason="the threatexchange CLI is not installed (pip install '.[test]')")

BLOCKED = ("hubble_deep_field", "rocket", "motorcycle_left")   # the tiny test CLIP scores them csam >= 0.5
ALLOWED = "astronaut"


def _cli(config, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(config.data_dir / "node.yaml")],
                          env=env, capture_output=True, text=True, timeout=120)


class _ThreatExchange:
    """The `threatexchange` CLI with its own HOME and state directory, as a fresh user would run it."""

    def __init__(self, home: Path) -> None:
        home.mkdir()
        self.env = {**os.environ, "HOME": str(home), "TX_STATEDIR": str(home / ".threatexchange"),
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("VERDICT_NODE_EXCHANGE_TOKEN", None)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([TX, *args], env=self.env, capture_output=True, text=True, timeout=180)
        if check and done.returncode != 0:
            raise AssertionError(f"threatexchange {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n"
                                 f"{done.stderr}")
        return done


def _matched(output: str) -> set[str]:
    """The signal types `threatexchange match` printed a match of collab vn for (lines "<type> <distance> (vn) ...")."""
    return {line.split()[0] for line in output.splitlines() if "(vn)" in line.split()[2:3]}


def _feed(base: str, token: str, since: int = 0) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/exchange/v1/signals?since={since}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_threatexchange_fetches_matches_forgets_retracted_and_is_refused_when_revoked(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "node", model=tiny_clip_spec)
    blocked = {name: photo_bytes(name) for name in BLOCKED}
    for name, data in blocked.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    allowed = photo_bytes(ALLOWED)
    (tmp_path / "allowed.jpg").write_bytes(allowed)
    banked = synthetic_image_bytes(3)
    (tmp_path / "banked.jpg").write_bytes(banked)

    # A peer's block verdict in our store and a hash bank: neither may leave through the feed.
    peer_verdict, peer_doc = synthetic_verdict("https://peer.example/actor", generate_ed25519(), 1, csam=0.99)
    with Store(config.database_path) as store:
        store.insert_verdict(peer_verdict, peer_doc, own=False)
    bank_file = tmp_path / "bank.txt"
    bank_file.write_text(f"md5 {hashlib.md5(banked).hexdigest()}\n")
    assert _cli(config, "banks", "import", "private-list", str(bank_file)).returncode == 0

    added = _cli(config, "exchange-tokens", "add", "hma")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)

    with serve_process(config) as (_proc, base):
        url = f"{base}/pictrs/validate/{config.pictrs.tokens[0]}"
        for data, expected in [*((d, 406) for d in blocked.values()), (allowed, 200), (banked, 406)]:
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"})
            try:
                status = urllib.request.urlopen(request, timeout=60).status
            except urllib.error.HTTPError as e:
                status = e.code
            assert status == expected

        status, page = _feed(base, token)
        assert status == 200 and page["more"] is False
        # only our own block verdicts: not the safe one, not the peer's, not the bank's entry
        assert [e["signals"]["md5"] for e in page["entries"]] == [hashlib.md5(d).hexdigest() for d in blocked.values()]
        assert all(e["change"] == "add" and e["label"] == "csam" and set(e["signals"]) == {"pdq", "md5"}
                   for e in page["entries"])
        retracted_id = page["entries"][0]["id"]

        tx = _ThreatExchange(tmp_path / "home")
        tx("config", "extensions", "add", "verdict_tx")
        tx("config", "collab", "edit", "verdict_node", "vn", "--create", "--url", base, "--token-file", str(token_file))
        tx("fetch")
        for name in BLOCKED:   # python-threatexchange hashes the file itself: its PDQ recipe is not ours
            matched = tx("match", "photo", str(tmp_path / f"{name}.jpg")).stdout
            assert _matched(matched) == {"pdq", "photo_md5"} and "POSITIVE_CLASS csam" in matched, matched
        assert _matched(tx("match", "photo", str(tmp_path / "allowed.jpg")).stdout) == set()
        assert _matched(tx("match", "photo", str(tmp_path / "banked.jpg")).stdout) == set()

        retracted = _cli(config, "verdicts", "retract", retracted_id, "--reason", "false positive")
        assert retracted.returncode == 0, retracted.stderr
        status, newer = _feed(base, token, since=page["cursor"])
        assert [(e["change"], e["id"]) for e in newer["entries"]] == [("delete", retracted_id)]
        tx("fetch")
        assert _matched(tx("match", "photo", str(tmp_path / f"{BLOCKED[0]}.jpg")).stdout) == set()
        assert _matched(tx("match", "photo", str(tmp_path / f"{BLOCKED[1]}.jpg")).stdout) == {"pdq", "photo_md5"}

        assert _cli(config, "exchange-tokens", "remove", "hma").returncode == 0
        status, body = _feed(base, token)
        assert status == 401 and "token" in body["error"]
        refused = tx("fetch", check=False)
        assert refused.returncode != 0
