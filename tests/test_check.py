"""`verdict-node check` as an admin runs it: the real CLI in a subprocess, real photos, hostile files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile import hostile_corpus
from tests.images import photo_bytes
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent


def run_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=240, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("check")
    corpus = hostile_corpus()
    contents = {
        "astronaut.jpg": photo_bytes("astronaut"),
        "coffee.png": photo_bytes("coffee", "png"),
        "rocket.webp": photo_bytes("rocket", "webp"),
        "random.jpg": corpus["random_bytes"][0],
        "clip.mp4": corpus["mp4_header"][0],
        "bomb.png": corpus["png_bomb_30000x30000"][0],
        "animated.gif": corpus["gif_middle_frames_differ"][0],
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def _lines(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {Path(row["path"]).name: row for row in rows}


def test_check_with_the_tiny_clip_model(files, tiny_clip_spec, tmp_path):  # noqa: F811
    order = ["astronaut.jpg", "random.jpg", "coffee.png", "clip.mp4", "bomb.png", "animated.gif", "rocket.webp"]
    missing = str(tmp_path / "missing.jpg")
    result = run_check(*(str(files[n]) for n in order), missing, "--model", tiny_clip_spec, "--device", "cpu",
                       "--batch-size", "3")
    rows = _lines(result)
    assert list(rows) == [*order, "missing.jpg"]  # one line per file, in order
    for name in ("astronaut.jpg", "coffee.png", "rocket.webp", "animated.gif"):
        row = rows[name]
        assert row["media"]["outcome"] == "image"
        assert set(row["scores"]) == {"csam", "nsfw", "underage"}
        assert row["decision"] == ("block" if row["scores"]["csam"] >= 0.5 else "allow")
        assert len(row["fingerprint"]["sha256"]) == 64 and len(row["fingerprint"]["phash64"]) == 16
        assert row["model"]["rules"].startswith("horde-safety-nsfwchecker-")
        assert row["model"]["version"].startswith("sha256-")
        assert row["ms"]["inference"] > 0 and row["ms"]["decode"] >= 0 and row["ms"]["hash"] >= 0
    # The tiny model's scores are deterministic: these two photos fall on either side of the boundary.
    assert rows["astronaut.jpg"]["decision"] == "allow" and rows["coffee.png"]["decision"] == "block"
    assert any(m.startswith("underage:") for m in rows["coffee.png"]["matched"])
    assert rows["animated.gif"]["media"]["sampled_frames"] > 1
    for name, outcome in (("random.jpg", "unreadable"), ("clip.mp4", "video"), ("bomb.png", "unreadable"),
                          ("missing.jpg", "unreadable")):
        assert rows[name]["decision"] == outcome and rows[name]["scores"] is None
    assert "cannot read file" in rows["missing.jpg"]["media"]["reason"]
    assert len(rows["bomb.png"]["fingerprint"]["sha256"]) == 64


def test_check_with_open_nsfw(files):
    result = run_check(str(files["astronaut.jpg"]), str(files["coffee.png"]), str(files["clip.mp4"]),
                       "--model", "open_nsfw")
    rows = _lines(result)
    assert rows["astronaut.jpg"]["model"]["name"] == "open_nsfw"
    for name in ("astronaut.jpg", "coffee.png"):
        assert set(rows[name]["scores"]) == {"nsfw"}
        assert rows[name]["scores"]["nsfw"] < 0.5
        assert rows[name]["decision"] == "allow"  # open_nsfw has no csam score: it never blocks here
    assert rows["clip.mp4"]["decision"] == "video"


def test_unavailable_model_is_one_line_and_exit_code_2(files, tmp_path):
    result = run_check(str(files["astronaut.jpg"]), env={"HF_HUB_CACHE": str(tmp_path)})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "ViT-L-14/openai" in lines[0] and "open_clip_pytorch_model.bin" in lines[0]
    assert str(tmp_path) in lines[0] and "local-dir:" in lines[0]
