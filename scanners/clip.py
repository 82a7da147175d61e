"""The CLIP backend: an open_clip model, loaded offline, that scores frames with horde-safety's rules.

Why it looks like this:
- weights are never downloaded: a node must not fetch 1.7 GB at start-up (nor reach a hub at all); they
  come from the Hugging Face cache, a checkpoint file or an open_clip ``local-dir:`` folder, and when they
  are missing the admin is told exactly what to put where (ModelUnavailable);
- one image encode per frame: horde-safety encodes every image twice (once for its predicates, once for its
  concepts); here one normalised image embedding meets all rule texts in a single matrix product;
- the rule texts are embedded once per model and kept on disk, keyed by the model's identity and the text
  list, so a restart costs no text encoding;
- frames are preprocessed with the model's own open_clip transforms (the reference's preprocessing) and
  encoded in batches, fp16 on GPUs, under ``torch.inference_mode``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from scanners import rules
from scanners.classifier import Classification, ModelUnavailable
from scanners.torch_compat import import_open_clip

log = logging.getLogger(__name__)

LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_TAG = "random"  # random weights: benchmarks and demos, never trusted by peers
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TEXT_BATCH = 64


def default_cache_dir() -> Path:
    """Where derived data (text embeddings) lives unless the node config says otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "verdict-node"


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks cuda (which also covers ROCm builds of torch), then mps, then cpu."""
    import torch  # heavy: torch loads only when a CLIP backend runs

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _limit_cpu_threads() -> None:
    """torch may see the host's cores inside a container; use only the cores this process may run on."""
    import torch  # heavy: torch loads only when a CLIP backend runs

    usable = _usable_cores()
    if torch.get_num_threads() > usable:
        torch.set_num_threads(usable)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ClipSource:
    """Where the weights of one spec are, resolved without touching the network."""

    open_clip_name: str            # what open_clip's create_model gets as model_name
    checkpoint: str | None         # None: random weights (or local-dir, where open_clip finds the file)
    name: str                      # ModelInfo.name
    version: str                   # ModelInfo.version: pretrained tag, or a hash of the weights
    identity: str                  # cache key of the text embeddings: changes whenever the weights do
    pretrained_cfg: dict[str, Any]  # the tag's quick_gelu and preprocessing, if a tag was named


_HOW_TO_PROVIDE = (
    "verdict-node never downloads weights. Provide them in one of these ways: copy a Hugging Face cache "
    "that holds them (HF_HUB_CACHE or HF_HOME selects its location); or put open_clip_config.json and the "
    "weights file in a folder and use --model local-dir:/that/folder; or point at a checkpoint file with "
    "--model NAME//absolute/path/to/open_clip_pytorch_model.bin (OpenAI's weights need the -quickgelu "
    "architecture: ViT-L-14-quickgelu//path); or use --model open_nsfw (bundled, CPU)."
)


def _hf_cache_location() -> str:
    try:
        from huggingface_hub import constants  # heavy: huggingface_hub (open_clip's hub client)

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is an open_clip dependency
        return "~/.cache/huggingface/hub"


def _find_in_dir(folder: Path) -> Path | None:
    preferred = ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                 "pytorch_model.bin", "pytorch_model.pth", "model.pth"]
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    others = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return others[0] if others else None


def resolve_source(spec: str, cache_dir: str | os.PathLike | None = None) -> ClipSource:
    """Turn a spec into files on this machine, or raise ModelUnavailable saying what is missing.
    Hub weights are looked up in ``cache_dir`` (laid out as a Hugging Face hub cache) when given, then
    in the default Hugging Face cache."""
    if spec.startswith(LOCAL_DIR_PREFIX):
        folder = Path(spec[len(LOCAL_DIR_PREFIX):]).expanduser()
        if not folder.is_dir():
            raise ModelUnavailable(f"CLIP model folder {folder} does not exist. {_HOW_TO_PROVIDE}")
        if not (folder / "open_clip_config.json").is_file():
            raise ModelUnavailable(
                f"CLIP model folder {folder} has no open_clip_config.json (the open_clip model config: "
                f"model_cfg and preprocess_cfg). {_HOW_TO_PROVIDE}")
        checkpoint = _find_in_dir(folder)
        if checkpoint is None:
            raise ModelUnavailable(
                f"CLIP model folder {folder} has no weights file (looked for open_clip_model.safetensors, "
                f"open_clip_pytorch_model.bin and other *.safetensors/*.bin/*.pth). {_HOW_TO_PROVIDE}")
        sha = file_sha256(checkpoint)
        return ClipSource(open_clip_name=f"{LOCAL_DIR_PREFIX}{folder}", checkpoint=None,
                          name=_config_name(folder / "open_clip_config.json"), version=f"sha256-{sha[:16]}",
                          identity=f"sha256:{sha}", pretrained_cfg={})

    open_clip = import_open_clip()
    name, _, tag = spec.partition("/")
    if not tag:
        raise ModelUnavailable(
            f"model spec {spec!r} names no weights: use NAME/TAG (e.g. ViT-L-14/openai), "
            f"NAME//path/to/weights, local-dir:PATH or open_nsfw.")
    if name not in open_clip.list_models():
        raise ModelUnavailable(f"open_clip has no model config named {name!r} (e.g. ViT-L-14, ViT-B-32).")
    if tag == RANDOM_TAG:
        return ClipSource(open_clip_name=name, checkpoint=None, name=name, version="random-seed0",
                          identity=f"{name}/random-seed0", pretrained_cfg={})
    if os.path.isfile(tag):
        sha = file_sha256(tag)
        return ClipSource(open_clip_name=name, checkpoint=tag, name=name, version=f"sha256-{sha[:16]}",
                          identity=f"sha256:{sha}", pretrained_cfg={})
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ModelUnavailable(
            f"{tag!r} is neither a pretrained tag of {name} (known: {known}) nor an existing weights file.")
    hub_caches = [str(Path(cache_dir).expanduser())] if cache_dir else []
    hub_caches.append(_hf_cache_location())
    checkpoint, looked_for = _find_in_hf_cache(cfg, hub_caches)
    if checkpoint is None:
        raise ModelUnavailable(
            f"CLIP weights for {name}/{tag} are not on this machine: looked for {looked_for} in the Hugging "
            f"Face cache {' and '.join(hub_caches)}. {_HOW_TO_PROVIDE}")
    # In the hub cache a file is a link to blobs/<sha256 of the file>: an identity without re-hashing.
    identity = f"{name}/{tag}@{Path(os.path.realpath(checkpoint)).name}"
    return ClipSource(open_clip_name=name, checkpoint=checkpoint, name=name, version=tag,
                      identity=identity, pretrained_cfg=dict(cfg))


def _config_name(config_path: Path) -> str:
    """A name that is the same on every machine holding this config: open_clip's own name when the
    architecture is one of its built-ins (e.g. ViT-L-14-quickgelu), else a hash of the config."""
    try:
        model_cfg = json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailable(f"{config_path} is not a valid open_clip config (needs model_cfg): {exc}") from None
    open_clip = import_open_clip()
    for name in open_clip.list_models():
        if open_clip.get_model_config(name) == model_cfg:
            return name
    canonical = json.dumps(model_cfg, sort_keys=True, separators=(",", ":"))
    return f"custom-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def _find_in_hf_cache(cfg: dict[str, Any], hub_caches: Sequence[str]) -> tuple[str | None, str]:
    from huggingface_hub import try_to_load_from_cache  # heavy: huggingface_hub

    hub = cfg.get("hf_hub", "")
    if not hub:
        return None, f"a hub repository (the tag's only source is the URL {cfg.get('url', '?')})"
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    candidates = list(HF_WEIGHT_FILES)
    if filename and filename not in HF_WEIGHT_FILES:
        stem, suffix = os.path.splitext(filename)
        # open_clip prefers a .safetensors twin of a pickled checkpoint; so do we.
        candidates = [f"{stem}.safetensors", filename] if suffix in (".bin", ".pth") else [filename]
    for hub_cache in hub_caches:
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id=repo, filename=candidate, cache_dir=hub_cache)
            if isinstance(found, str) and os.path.isfile(found):
                return found, ""
    return None, " or ".join(f"{repo}/{c}" for c in candidates)


class ClipClassifier:
    """open_clip model + cached rule-text embeddings; ``classify`` is one encode per frame."""

    def __init__(self, model: Any, preprocess: Any, text_embeddings: Any, model_info, device: str,
                 batch_size: int = 32) -> None:
        import torch  # heavy: torch loads only when a CLIP backend runs

        self.model = model_info
        self.max_batch = batch_size
        self.device = device
        self.clip = model
        self.preprocess = preprocess
        self.dtype = next(model.parameters()).dtype
        # Similarities are taken in fp32 whatever the model runs in: 233 texts cost nothing.
        self.text_embeddings = torch.as_tensor(text_embeddings, dtype=torch.float32, device=device)
        self.texts = rules.TEXTS
        workers = _usable_cores()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip-preprocess") \
            if workers > 1 else None

    @classmethod
    def load(cls, spec: str, device: str = "auto", batch_size: int = 32,
             cache_dir: str | os.PathLike | None = None) -> "ClipClassifier":
        os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: nothing below may reach a hub
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        source = resolve_source(spec, cache)
        import torch  # heavy: torch loads only when a CLIP backend runs

        open_clip = import_open_clip()
        device = resolve_device(device)
        if device == "cpu":
            _limit_cpu_threads()
        precision = "fp16" if device.startswith("cuda") else "fp32"
        cfg = source.pretrained_cfg
        kwargs: dict[str, Any] = {}
        if cfg:
            kwargs = dict(force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                          image_mean=cfg.get("mean"), image_std=cfg.get("std"),
                          image_interpolation=cfg.get("interpolation"),
                          image_resize_mode=cfg.get("resize_mode"))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # "random" weights are the same on every run
                model, _, preprocess = open_clip.create_model_and_transforms(
                    source.open_clip_name, pretrained=source.checkpoint, precision=precision, device=device,
                    **kwargs)
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            raise ModelUnavailable(f"could not load CLIP model {spec!r}: {exc}") from exc
        model.eval()
        tokenizer = open_clip.get_tokenizer(source.open_clip_name)
        info = rules.clip_model_info(source.name, source.version)
        embeddings = _cached_text_embeddings(model, tokenizer, device, source.identity,
                                             cache)
        return cls(model, preprocess, embeddings, info, device, batch_size)

    def _preprocess_one(self, frame: Image.Image):
        return self.preprocess(frame if frame.mode == "RGB" else frame.convert("RGB"))

    def preprocess_batch(self, frames: Sequence[Image.Image]):
        """The model's own transforms, spread over the usable cores: PIL's resize releases the GIL, and
        without this the cores idle while one thread resizes a batch."""
        import torch  # heavy: torch loads only when a CLIP backend runs

        if len(frames) < 2 or self._pool is None:
            return torch.stack([self._preprocess_one(f) for f in frames])
        return torch.stack(list(self._pool.map(self._preprocess_one, frames)))

    def encode_images(self, frames: Sequence[Image.Image]):
        """L2-normalised fp32 image embeddings, one row per frame."""
        import torch  # heavy: torch loads only when a CLIP backend runs

        rows = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.max_batch):
                pixels = self.preprocess_batch(frames[start:start + self.max_batch])
                features = self.clip.encode_image(pixels.to(self.device, self.dtype)).float()
                rows.append(features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.cat(rows)

    def similarities(self, frames: Sequence[Image.Image]) -> np.ndarray:
        """Cosine similarity of every frame with every rule text: shape (frames, len(rules.TEXTS))."""
        import torch  # heavy: torch loads only when a CLIP backend runs

        with torch.inference_mode():
            return (self.encode_images(frames) @ self.text_embeddings.T).cpu().numpy()

    def classify(self, frames: Sequence[Image.Image]) -> list[Classification]:
        if not frames:
            return []
        results = []
        for row in self.similarities(frames):
            verdict = rules.evaluate(dict(zip(self.texts, row.tolist())))
            results.append(Classification(scores=verdict.scores, matched=verdict.matched))
        return results


def encode_texts(model: Any, tokenizer: Any, device: str, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised fp32 text embeddings, one row per text."""
    import torch  # heavy: torch loads only when a CLIP backend runs

    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = tokenizer(list(texts[start:start + TEXT_BATCH])).to(device)
            features = model.encode_text(tokens).float()
            rows.append(features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return torch.cat(rows).cpu().numpy().astype(np.float32)


def text_cache_path(cache_dir: Path, identity: str, texts: Sequence[str]) -> Path:
    key = hashlib.sha256(json.dumps({"model": identity, "texts": list(texts)}).encode()).hexdigest()[:32]
    return cache_dir / "text-embeddings" / f"{key}.npy"


def _cached_text_embeddings(model: Any, tokenizer: Any, device: str, identity: str,
                            cache_dir: Path) -> np.ndarray:
    texts = rules.TEXTS
    path = text_cache_path(cache_dir, identity, texts)
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.ndim == 2 and cached.shape[0] == len(texts) and np.isfinite(cached).all():
            return cached.astype(np.float32)
        log.warning("ignoring malformed text embedding cache %s", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable text embedding cache %s: %s", path, exc)
    embeddings = encode_texts(model, tokenizer, device, texts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, embeddings, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache costs start-up time, nothing else
        log.warning("could not write text embedding cache %s: %s", path, exc)
    return embeddings
