"""A tiny random open_clip model saved the way real weights are shipped, so tests run the real loading
path (``local-dir:``), the real tokenizer and the real rule texts in well under a second.

Its weights are random with a fixed seed: scores are deterministic but mean nothing about content. Plain
random towers give cosine similarities around -0.2, far below every rule threshold (0.19-0.32), so every
score would be 0.0 and tests could not tell right from wrong. Both towers therefore get a shared constant
direction (through the biases of their final LayerNorms) that lifts similarities to about 0.10 +- 0.04:
then some real photos cross the thresholds and some do not, e.g. (skimage.data) coffee, rocket, hubble and
coins come out csam >= 0.5 and camera, chelsea, immunohistochemistry and page well below.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_SEED = 1234
TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    # 16 tokens hold most rule texts; longer ones are truncated, which the tokenizer does by itself.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SHARED_DIRECTION_SEED = 7
SHARED_DIRECTION_SCALE = 5.5  # tuned so that real photos land on both sides of the rule thresholds
TINY_PREPROCESS_CFG = {
    "size": 64, "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0,
}


def _add_shared_direction(model) -> None:
    """Bias both towers' final LayerNorm so their projected outputs share one unit direction."""
    import torch

    direction = torch.randn(TINY_MODEL_CFG["embed_dim"],
                            generator=torch.Generator().manual_seed(SHARED_DIRECTION_SEED))
    direction = (direction / direction.norm()).unsqueeze(1)
    with torch.no_grad():
        for layer_norm, projection in ((model.visual.ln_post, model.visual.proj),
                                       (model.ln_final, model.text_projection)):
            # Solved in float64 so that LAPACK's thread-dependent rounding vanishes in the float32 result.
            bias = torch.linalg.lstsq(projection.T.double(), direction.double()).solution.squeeze(1)
            layer_norm.bias.copy_((SHARED_DIRECTION_SCALE * bias).float())


def make_tiny_clip_dir(path: str | Path) -> str:
    """Write open_clip_config.json + open_clip_model.safetensors of the tiny model into ``path`` (created
    if needed) and return the spec ``local-dir:<path>`` for load_classifier. Same seed, same weights."""
    import torch
    from safetensors.torch import save_file

    from scanners.torch_compat import import_open_clip

    open_clip = import_open_clip()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = open_clip.CLIP(**json.loads(json.dumps(TINY_MODEL_CFG)))
        _add_shared_direction(model)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": TINY_PREPROCESS_CFG}, indent=1))
    return f"local-dir:{folder}"


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory) -> str:
    """Session-wide tiny CLIP model; import this fixture into a test module to use it."""
    return make_tiny_clip_dir(tmp_path_factory.mktemp("tiny-clip"))
