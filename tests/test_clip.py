"""The CLIP backend and the batching queue, on the tiny real open_clip model loaded through local-dir:."""
from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanners import rules
from scanners.batching import BatcherClosed, BatchingClassifier, QueueFull
from scanners.classifier import Classification, ModelUnavailable, merge_frames
from scanners.models import load_classifier
from scanners.clip import ClipClassifier, resolve_device, resolve_source, text_cache_path
from tests.images import photo_image, photo_names
from tests.tiny_clip import make_tiny_clip_dir, tiny_clip_spec  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def tiny(tiny_clip_spec, tmp_path_factory) -> ClipClassifier:  # noqa: F811
    return load_classifier(tiny_clip_spec, device="cpu", batch_size=4,
                           cache_dir=str(tmp_path_factory.mktemp("clip-cache")))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [photo_image(name, size=256) for name in photo_names()]


def test_tiny_model_loads_through_local_dir_with_a_weights_identity(tiny, tiny_clip_spec):  # noqa: F811
    folder = Path(tiny_clip_spec.removeprefix("local-dir:"))
    weights = (folder / "open_clip_model.safetensors").read_bytes()
    import hashlib

    assert tiny.model.version == "sha256-" + hashlib.sha256(weights).hexdigest()[:16]
    assert tiny.model.rules == rules.RULES_ID
    assert tiny.model.name.startswith("custom-")  # not one of open_clip's built-in architectures
    assert tiny.device == "cpu" and tiny.max_batch == 4
    # The same seed writes the same weights: every test run and every node see one model.
    again = make_tiny_clip_dir(folder.parent / "again")
    assert resolve_source(again).version == tiny.model.version


def test_one_encode_per_frame_and_batches_equal_single_frames(tiny, photos):
    together = tiny.similarities(photos)  # 8 frames in batches of 4
    assert together.shape == (len(photos), len(rules.TEXTS))
    alone = np.stack([tiny.similarities([p])[0] for p in photos])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # The similarities are cosines of unit vectors with the cached text embeddings.
    embeddings = tiny.encode_images(photos[:2])
    np.testing.assert_allclose(np.linalg.norm(embeddings.numpy(), axis=1), 1.0, atol=1e-5)
    results = tiny.classify(photos)
    assert [r.scores for r in results] == [rules.evaluate(dict(zip(rules.TEXTS, row))).scores
                                          for row in together.tolist()]


def test_scores_differ_between_photos_and_cover_both_sides(tiny, photos):
    results = tiny.classify(photos)
    csam = [r.scores["csam"] for r in results]
    assert all(0.0 <= s <= 1.0 for r in results for s in r.scores.values())
    assert min(csam) < 0.5 <= max(csam), csam
    assert len({round(s, 6) for s in csam}) > 3
    blocked = next(r for r in results if r.scores["csam"] >= 0.5)
    assert any(m.startswith("nsfw:") for m in blocked.matched)
    assert any(m.startswith("underage:") for m in blocked.matched)


def test_odd_frames_are_classified(tiny):
    frames = [Image.new("L", (4000, 1), 200), Image.new("P", (3, 3)), Image.new("RGBA", (30, 30)),
              Image.new("I;16", (20, 20)), Image.new("CMYK", (20, 20)), Image.new("RGB", (1, 1))]
    results = tiny.classify(frames)
    assert len(results) == len(frames)
    assert all(set(r.scores) == {"csam", "nsfw", "underage"} for r in results)


def test_text_embeddings_are_cached_on_disk_and_rebuilt_when_corrupt(tiny_clip_spec, tmp_path):  # noqa: F811
    first = load_classifier(tiny_clip_spec, device="cpu", cache_dir=str(tmp_path))
    files = list((tmp_path / "text-embeddings").glob("*.npy"))
    assert len(files) == 1
    source = resolve_source(tiny_clip_spec)
    assert files[0] == text_cache_path(tmp_path, source.identity, rules.TEXTS)
    stored = np.load(files[0])
    assert stored.shape[0] == len(rules.TEXTS)
    # A second load reads the file: make the file's content recognisable and see it used.
    marked = stored.copy()
    marked[0] = -marked[0]
    np.save(files[0], marked)
    second = load_classifier(tiny_clip_spec, device="cpu", cache_dir=str(tmp_path))
    np.testing.assert_allclose(second.text_embeddings.numpy()[0], -first.text_embeddings.numpy()[0])
    # A corrupt file is ignored and rewritten with freshly computed embeddings.
    files[0].write_bytes(b"not numpy at all")
    third = load_classifier(tiny_clip_spec, device="cpu", cache_dir=str(tmp_path))
    np.testing.assert_allclose(third.text_embeddings.numpy(), first.text_embeddings.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.load(files[0]), stored, atol=1e-6)


def test_missing_weights_say_what_is_missing_and_how_to_provide_it(tmp_path, tiny_clip_spec):  # noqa: F811
    with pytest.raises(ModelUnavailable, match="does not exist.*local-dir"):
        load_classifier(f"local-dir:{tmp_path / 'nowhere'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match="no open_clip_config.json"):
        load_classifier(f"local-dir:{empty}")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    src = Path(tiny_clip_spec.removeprefix("local-dir:"))
    (config_only / "open_clip_config.json").write_text((src / "open_clip_config.json").read_text())
    with pytest.raises(ModelUnavailable, match="no weights file.*open_clip_model.safetensors"):
        load_classifier(f"local-dir:{config_only}")
    with pytest.raises(ModelUnavailable, match="names no weights"):
        load_classifier("ViT-L-14")
    with pytest.raises(ModelUnavailable, match="no model config"):
        load_classifier("ViT-Nonexistent/openai")
    with pytest.raises(ModelUnavailable, match="neither a pretrained tag"):
        load_classifier("ViT-B-32/no-such-tag")


def test_hub_tag_is_looked_up_in_the_hf_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailable) as caught:
        load_classifier("ViT-L-14/openai")
    message = str(caught.value)
    assert "timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors" in message
    assert "open_clip_pytorch_model.bin" in message and str(tmp_path) in message
    assert "never downloads" in message
    # The hub cache layout: snapshots/<revision>/<file> links to blobs/<sha256>.
    repo = tmp_path / "models--timm--vit_large_patch14_clip_224.openai"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    blob = repo / "blobs" / ("f" * 64)
    blob.write_bytes(b"weights")
    os.symlink(blob, repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin")
    source = resolve_source("ViT-L-14/openai")
    assert source.checkpoint.endswith("open_clip_pytorch_model.bin")
    # The node's classifier.cache_dir, laid out the same way, is searched before the default cache.
    node_cache = tmp_path / "node-cache"
    (node_cache / repo.name).mkdir(parents=True)
    os.symlink(repo / "snapshots", node_cache / repo.name / "snapshots")
    os.symlink(repo / "refs", node_cache / repo.name / "refs")
    assert resolve_source("ViT-L-14/openai", node_cache).checkpoint.startswith(str(node_cache))
    with pytest.raises(ModelUnavailable, match=f"{tmp_path / 'elsewhere'} and {tmp_path}"):
        resolve_source("ViT-B-32/openai", tmp_path / "elsewhere")
    assert (source.name, source.version) == ("ViT-L-14", "openai")
    assert source.identity.endswith("f" * 64) and source.pretrained_cfg["quick_gelu"] is True


def test_device_resolution():
    assert resolve_device("auto") in {"cuda", "mps", "cpu"}
    assert resolve_device("cuda:1") == "cuda:1"


def test_merge_frames_takes_the_max_and_common_categories():
    merged = merge_frames([
        Classification({"csam": 0.1, "nsfw": 0.7, "underage": 0.2}, ["nsfw:naked"]),
        Classification({"csam": 0.6, "nsfw": 0.3, "underage": 0.9}, ["underage:child", "nsfw:naked"]),
    ])
    assert merged.scores == {"csam": 0.6, "nsfw": 0.7, "underage": 0.9}
    assert merged.matched == ["nsfw:naked", "underage:child"]
    partial = merge_frames([Classification({"nsfw": 0.2}), Classification({"nsfw": 0.4, "csam": 0.9})])
    assert partial.scores == {"nsfw": 0.4}
    with pytest.raises(ValueError):
        merge_frames([])


# --- BatchingClassifier ---------------------------------------------------------------------------


def test_concurrent_calls_share_forward_passes_and_match_unbatched(tiny, photos):
    images = [photos[i % len(photos)].rotate(7 * i) for i in range(16)]
    expected = [tiny.classify([im])[0] for im in images]

    async def run():
        batcher = BatchingClassifier(tiny, max_batch=32, max_wait_ms=50, max_queue=64)
        try:
            results = await asyncio.gather(*(batcher.classify_frames([im]) for im in images))
            return results, batcher.forward_passes, batcher.frames_classified
        finally:
            await batcher.close()

    results, passes, frames = asyncio.run(run())
    assert frames == 16
    assert passes < 16 and passes >= 4  # tiny.max_batch is 4: at least 4 passes, far fewer than 16
    for got, want in zip(results, expected):
        assert got.scores == pytest.approx(want.scores, abs=1e-6)


def test_animation_frames_are_merged(tiny, photos):
    frames = photos[:3]
    singles = tiny.classify(frames)

    async def run():
        batcher = BatchingClassifier(tiny, max_batch=8, max_wait_ms=5)
        try:
            return await batcher.classify_frames(frames)
        finally:
            await batcher.close()

    merged = asyncio.run(run())
    for category in ("csam", "nsfw", "underage"):
        assert merged.scores[category] == pytest.approx(max(s.scores[category] for s in singles), abs=1e-6)


def test_full_queue_refuses_at_once(tiny, photos):
    async def run():
        batcher = BatchingClassifier(tiny, max_batch=2, max_wait_ms=200, max_queue=3)
        try:
            first = asyncio.ensure_future(batcher.classify_frames(photos[:3]))
            await asyncio.sleep(0)  # queued, waiting for company
            assert batcher.queued == 3
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(QueueFull):
                await batcher.classify_frames(photos[3:4])
            assert loop.time() - started < 0.05
            return await first
        finally:
            await batcher.close()

    assert set(asyncio.run(run()).scores) == {"csam", "nsfw", "underage"}


def _lazy_truncated_frame() -> Image.Image:
    """A real failure inside the model's preprocessing: a JPEG frame whose pixel data is cut short."""
    buffer = io.BytesIO()
    photo_image("astronaut", size=128).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return Image.open(io.BytesIO(data[:len(data) // 2]))  # the header parses; the pixels fail on load


def test_model_errors_reach_only_the_callers_of_that_batch(tiny, photos):
    async def run():
        batcher = BatchingClassifier(tiny, max_batch=2, max_wait_ms=50, max_queue=16)
        try:
            calls = [batcher.classify_frames([photos[0]]), batcher.classify_frames([_lazy_truncated_frame()]),
                     batcher.classify_frames([photos[1]]), batcher.classify_frames([photos[2]])]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            after = await batcher.classify_frames([photos[3]])  # the worker survived
            return outcomes, after
        finally:
            await batcher.close()

    outcomes, after = asyncio.run(run())
    assert isinstance(outcomes[0], OSError) and isinstance(outcomes[1], OSError)  # same batch
    assert isinstance(outcomes[2], Classification) and isinstance(outcomes[3], Classification)
    assert isinstance(after, Classification)


def test_cancelled_callers_cost_no_forward_pass_and_close_fails_waiters(tiny, photos):
    async def run():
        batcher = BatchingClassifier(tiny, max_batch=8, max_wait_ms=100, max_queue=16)
        abandoned = asyncio.ensure_future(batcher.classify_frames(photos[:2]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        kept = await batcher.classify_frames([photos[2]])
        counted = batcher.frames_classified
        waiting = asyncio.ensure_future(batcher.classify_frames([photos[3]]))
        await asyncio.sleep(0)
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await waiting
        with pytest.raises(BatcherClosed):
            await batcher.classify_frames([photos[4]])
        return kept, counted

    kept, counted = asyncio.run(run())
    assert counted == 1 and isinstance(kept, Classification)


def test_frames_without_pixels_are_refused_before_the_queue(tiny):
    async def run():
        batcher = BatchingClassifier(tiny)
        try:
            with pytest.raises(ValueError):
                await batcher.classify_frames([Image.new("RGB", (0, 0))])
            with pytest.raises(ValueError):
                await batcher.classify_frames([])
            return batcher.forward_passes
        finally:
            await batcher.close()

    assert asyncio.run(run()) == 0


def test_config_written_by_the_helper_is_open_clips_layout(tiny_clip_spec):  # noqa: F811
    folder = Path(tiny_clip_spec.removeprefix("local-dir:"))
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["embed_dim"] == 64 and config["preprocess_cfg"]["size"] == 64
