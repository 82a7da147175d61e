"""node.peers_file: `peers add` extends peers.yaml without losing the admin's entries or comments, never
leaves half a file, refuses what would not parse; the watch takes a change once it has settled."""
from __future__ import annotations

import os

import pytest
import yaml

from node.config import ConfigError
from node.peers_file import PeersFileWatch, add_entry, signature

NEW = {"actor": "https://new.example/actor", "key_fingerprint": "sha256:" + "ab" * 32, "trust": "full",
       "follow": True, "share": False}


@pytest.mark.parametrize("text", [
    "",                                                        # no file content yet
    "# only a comment\n",
    "peers:\n",
    "peers:\n- actor: https://old.example/actor\n  trust: observe\n",          # items at column 0
    "peers:\n    - actor: https://old.example/actor   # kept\n      trust: observe\n",  # deeper indent
    "peers: [{actor: https://old.example/actor, trust: observe}]\n",           # flow style: written anew
])
def test_add_entry_keeps_every_other_entry(tmp_path, text):
    path = tmp_path / "peers.yaml"
    path.write_text(text)
    old = (yaml.safe_load(text) or {}).get("peers") or []
    peers = add_entry(path, NEW)
    assert [p.actor for p in peers] == [*[e["actor"] for e in old], NEW["actor"]]
    assert yaml.safe_load(path.read_text())["peers"] == [*old, NEW]
    if "# kept" in text or "# only a comment" in text:
        assert text.splitlines()[0] in path.read_text()  # the admin's comments stay
    assert [p.name for p in tmp_path.iterdir()] == ["peers.yaml"]  # no temporary file left behind


def test_add_entry_refuses_a_duplicate_an_invalid_entry_and_a_broken_file(tmp_path):
    path = tmp_path / "peers.yaml"
    add_entry(path, NEW)
    before = path.read_text()
    with pytest.raises(ConfigError, match="listed already"):
        add_entry(path, NEW)
    with pytest.raises(ConfigError, match="key_fingerprint"):
        add_entry(path, {**NEW, "actor": "https://other.example/actor", "key_fingerprint": "abc"})
    assert path.read_text() == before
    path.write_text("peers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        add_entry(path, {**NEW, "actor": "https://other.example/actor"})
    assert path.read_text() == "peers: [\n"


def test_add_entry_keeps_the_files_mode(tmp_path):
    path = tmp_path / "peers.yaml"
    path.write_text("peers:\n")
    os.chmod(path, 0o640)
    add_entry(path, NEW)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_the_watch_takes_a_change_once_it_has_settled(tmp_path):
    path = tmp_path / "peers.yaml"
    path.write_text("peers:\n")
    in_force = [signature(path)]
    watch = PeersFileWatch(path, lambda: in_force[0])
    assert not watch.changed()
    path.write_text("peers:\n- actor: https://a.example/actor\n")
    assert not watch.changed()  # first sight of the change: it may still be being written
    assert watch.changed()      # the same at the next look: take it
    in_force[0] = signature(path)
    assert not watch.changed()
    path.unlink()
    assert not watch.changed() and watch.changed()  # a removed file is a change too (no peers)
