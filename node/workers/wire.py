"""The wire format between a node and its remote GPU workers (`verdict-node worker`).

Shared by both ends so that they cannot drift apart. Pure: no network, no disk, no clock.

Why frames and not the original files: the node has already decoded the image (hardened, with limits) and sampled
its animation frames, so a worker never parses hostile input and the worker's scores equal what local inference
would give on the same frames. The frames travel after the classifier's own geometric step (resize shortest side,
centre crop), which the worker reports as its ``Geometry``: a 224x224 frame instead of a 12-megapixel photo, and
the worker's transforms then leave it unchanged. Frames travel lossless (raw RGB or PNG), never re-compressed.

A lease message is one binary body: 4 bytes big-endian header length, the JSON header, then the frame payloads
back to back; each frame in the header names its offset and length in the payload area. JSON carries the small
structured part, the payloads stay raw (no base64: a third more bytes and a copy).
"""
from __future__ import annotations

import io
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image

from protocol.errors import ProtocolError
from protocol.verdict import CATEGORIES, ModelInfo

API_PREFIX = "/workers/v1"
LEASE_MEDIA_TYPE = "application/vnd.verdict-node.lease.v1"
ENCODINGS = ("rgb", "png", "rgbz")
MAX_HEADER_BYTES = 4 << 20
MAX_FRAME_SIDE = 16384
MAX_JOBS_PER_LEASE = 1024
MAX_FRAMES_PER_JOB = 64
_INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True, slots=True)
class Geometry:
    """The deterministic geometric prefix of a classifier's preprocessing: resize so the shortest side is
    ``size`` (aspect kept), then crop the centre ``size`` x ``size``. That is open_clip's inference transform
    ("shortest" mode, square input) and the step where almost all of an image's pixels are thrown away."""

    size: int
    interpolation: str = "bicubic"

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "interpolation": self.interpolation}

    @classmethod
    def from_json(cls, obj: Any) -> "Geometry | None":
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            raise ProtocolError("must be an object or null", "geometry")
        size, interpolation = obj.get("size"), obj.get("interpolation", "bicubic")
        if type(size) is not int or not 8 <= size <= 2048:
            raise ProtocolError("size must be an integer in [8, 2048]", "geometry.size")
        if interpolation not in _INTERPOLATIONS:
            raise ProtocolError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}", "geometry.interpolation")
        return cls(size, interpolation)


def reduce_frame(frame: Image.Image, geometry: Geometry | None) -> Image.Image:
    """Apply ``geometry`` exactly as torchvision's ``Resize(size)`` + ``CenterCrop(size)`` do on a PIL image
    (same output size rounding, same crop offsets, PIL's antialiased resampling), so that the worker's own
    transforms are the identity on the result and its scores equal local inference bit for bit.
    tests/test_workers.py checks that equality against a real CLIP classifier."""
    frame = frame if frame.mode == "RGB" else frame.convert("RGB")
    if geometry is None:
        return frame
    size = geometry.size
    w, h = frame.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        frame = frame.resize((new_w, new_h), _INTERPOLATIONS[geometry.interpolation])
        w, h = new_w, new_h
    if (w, h) == (size, size):
        return frame
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return frame.crop((left, top, left + size, top + size))


def encode_frame(frame: Image.Image, encoding: str) -> tuple[dict[str, Any], bytes]:
    """One RGB frame -> (header entry without offset, payload). ``rgb``: raw pixels, the cheapest on a fast link;
    ``rgbz``: raw pixels through zlib level 1; ``png``: PNG at compression level 1, the smallest of the three
    on photos and what to use over the internet."""
    if frame.mode != "RGB":
        frame = frame.convert("RGB")
    w, h = frame.size
    if encoding == "rgb":
        data = frame.tobytes()
    elif encoding == "rgbz":
        data = zlib.compress(frame.tobytes(), 1)
    elif encoding == "png":
        buf = io.BytesIO()
        frame.save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
    else:
        raise ValueError(f"unknown frame encoding {encoding!r}; one of {ENCODINGS}")
    return {"w": w, "h": h, "enc": encoding}, data


def decode_frame(meta: Mapping[str, Any], data: bytes) -> Image.Image:
    """Inverse of encode_frame; refuses anything whose pixels do not match the declared size."""
    w, h, enc = meta["w"], meta["h"], meta["enc"]
    expected = w * h * 3
    if enc == "rgb" or enc == "rgbz":
        if enc == "rgbz":
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(data, expected + 1)
            except zlib.error as exc:
                raise ProtocolError(f"unreadable compressed frame: {exc}", "frame") from None
            if inflater.unconsumed_tail or not inflater.eof:
                raise ProtocolError("compressed frame does not match its declared size", "frame")
        else:
            raw = data
        if len(raw) != expected:
            raise ProtocolError(f"frame has {len(raw)} bytes, expected {expected} for {w}x{h} RGB", "frame")
        return Image.frombytes("RGB", (w, h), raw)
    if enc == "png":
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                if im.size != (w, h):
                    raise ProtocolError(f"PNG is {im.size}, declared {w}x{h}", "frame")
                return im.convert("RGB")
        except ProtocolError:
            raise
        except Exception as exc:  # a broken PNG is bad input, not a crash
            raise ProtocolError(f"unreadable PNG frame: {exc}", "frame") from exc
    raise ProtocolError(f"unknown encoding {enc!r}", "frame.enc")


@dataclass(frozen=True, slots=True)
class LeasedJob:
    job_id: str
    frames: list[Image.Image]


@dataclass(frozen=True, slots=True)
class LeaseMessage:
    lease_id: str
    expires_in: float
    jobs: list[LeasedJob]


def pack_lease(lease_id: str, expires_in: float,
               jobs: Iterable[tuple[str, Sequence[tuple[dict[str, Any], bytes]]]]) -> bytes:
    """Build a lease body from already encoded frames: ``jobs`` is ``(job_id, [(meta, payload), ...])``."""
    header_jobs, payloads, offset = [], [], 0
    for job_id, frames in jobs:
        entries = []
        for meta, data in frames:
            entries.append({**meta, "off": offset, "len": len(data)})
            payloads.append(data)
            offset += len(data)
        header_jobs.append({"job": job_id, "frames": entries})
    header = json.dumps({"lease": lease_id, "expires_in": expires_in, "jobs": header_jobs},
                        separators=(",", ":")).encode()
    return b"".join([struct.pack(">I", len(header)), header, *payloads])


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"missing or not a {getattr(kind, '__name__', kind)}", f"{where}.{key}")
    return value


def unpack_lease(body: bytes) -> LeaseMessage:
    """Parse a lease body strictly (sizes, offsets, frame sizes); raises only ProtocolError."""
    if len(body) < 4:
        raise ProtocolError("lease body shorter than its length prefix")
    (header_len,) = struct.unpack(">I", body[:4])
    if header_len > MAX_HEADER_BYTES or 4 + header_len > len(body):
        raise ProtocolError("lease header length out of range")
    try:
        header = json.loads(body[4:4 + header_len])
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        raise ProtocolError(f"lease header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("lease header must be an object")
    payload = memoryview(body)[4 + header_len:]
    lease_id = _field(header, "lease", str, "lease")
    expires_in = float(_field(header, "expires_in", (int, float), "lease"))
    raw_jobs = _field(header, "jobs", list, "lease")
    if len(raw_jobs) > MAX_JOBS_PER_LEASE:
        raise ProtocolError("too many jobs", "lease.jobs")
    jobs = []
    for raw in raw_jobs:
        if not isinstance(raw, dict):
            raise ProtocolError("must be an object", "lease.jobs[]")
        job_id = _field(raw, "job", str, "job")
        raw_frames = _field(raw, "frames", list, "job")
        if not 1 <= len(raw_frames) <= MAX_FRAMES_PER_JOB:
            raise ProtocolError(f"a job has 1 to {MAX_FRAMES_PER_JOB} frames", "job.frames")
        frames = []
        for meta in raw_frames:
            if not isinstance(meta, dict):
                raise ProtocolError("must be an object", "job.frames[]")
            w, h = _field(meta, "w", int, "frame"), _field(meta, "h", int, "frame")
            _field(meta, "enc", str, "frame")  # decode_frame reads it: a missing one is bad input, not a KeyError
            off, length = _field(meta, "off", int, "frame"), _field(meta, "len", int, "frame")
            if not (0 < w <= MAX_FRAME_SIDE and 0 < h <= MAX_FRAME_SIDE):
                raise ProtocolError("frame size out of range", "frame")
            if off < 0 or length < 0 or off + length > len(payload):
                raise ProtocolError("frame payload outside the body", "frame")
            frames.append(decode_frame(meta, bytes(payload[off:off + length])))
        jobs.append(LeasedJob(job_id, frames))
    return LeaseMessage(lease_id, expires_in, jobs)


def model_to_json(model: ModelInfo) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "rules": model.rules}


def model_from_json(obj: Any) -> ModelInfo:
    if not isinstance(obj, Mapping):
        raise ProtocolError("must be an object", "model")
    return ModelInfo(name=_field(obj, "name", str, "model"), version=_field(obj, "version", str, "model"),
                     rules=_field(obj, "rules", str, "model"))


def describe_model(model: ModelInfo) -> str:
    return f"{model.name} (rules {model.rules}, version {model.version})"


def same_model(a: ModelInfo, b: ModelInfo) -> bool:
    """All three fields must agree: for a CLIP model ``version`` is the pretrained tag or a hash of the weights
    (ViT-B-32 "openai" and "random" share a name), so a worker that differs in any of them would sign scores
    that the node's verdicts attribute to a model that did not produce them."""
    return (a.name, a.version, a.rules) == (b.name, b.version, b.rules)


def parse_scores(obj: Any, where: str = "scores") -> dict[str, float]:
    """Scores as the contract defines them: known categories, finite floats in [0, 1]."""
    if not isinstance(obj, Mapping):
        raise ProtocolError("must be an object", where)
    scores: dict[str, float] = {}
    for key, value in obj.items():
        if key not in CATEGORIES:
            raise ProtocolError(f"unknown category {key!r}", where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 <= value <= 1.0:
            raise ProtocolError("must be a finite number in [0, 1]", f"{where}.{key}")
        scores[key] = float(value)
    return scores


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a worker says about one job: scores and matched concepts, or an error (the job goes back to the
    queue for another worker)."""

    job_id: str
    scores: dict[str, float] | None = None
    matched: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"job": self.job_id, "error": self.error[:500]}
        return {"job": self.job_id, "scores": self.scores, "matched": list(self.matched)}


def parse_results(obj: Any) -> list[JobResult]:
    """Parse a worker's result body strictly; raises only ProtocolError, so a malformed post stores nothing."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("results"), list):
        raise ProtocolError("must be an object with a results list", "results")
    results, seen = [], set()
    for raw in obj["results"]:
        if not isinstance(raw, Mapping):
            raise ProtocolError("must be an object", "results[]")
        job_id = _field(raw, "job", str, "result")
        if job_id in seen:
            raise ProtocolError(f"job {job_id!r} appears twice", "results")
        seen.add(job_id)
        if "error" in raw:
            results.append(JobResult(job_id, error=str(_field(raw, "error", str, "result"))[:500]))
            continue
        matched = raw.get("matched", [])
        if not isinstance(matched, list) or not all(isinstance(m, str) for m in matched) or len(matched) > 256:
            raise ProtocolError("must be a list of strings", "result.matched")
        results.append(JobResult(job_id, parse_scores(raw.get("scores"), "result.scores"), tuple(matched)))
    return results
