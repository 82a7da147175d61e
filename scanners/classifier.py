"""What every classifier backend looks like to the rest of verdict-node (scanners.models chooses one).

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
