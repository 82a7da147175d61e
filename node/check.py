"""`verdict-node check IMAGE...`: what this node's model says about some files, one JSON line per file.

No store, no peers, no config: the tool an admin runs to try a model, or to see why an image was blocked.
Decisions use node.policy's default thresholds (block when csam >= 0.5, the reference rule set's own boundary);
unreadable files and videos are reported as such and never block. Each line also says where the time
went (decode, hashing, inference), because that is what an admin sizing a node needs to know.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any, Sequence

from node.policy import Thresholds, blocks
from scanners.classifier import ModelUnavailable, merge_frames
from scanners.models import load_classifier
from scanners.fingerprint import fingerprint
from scanners.media import decode

#: What `check` blocks on: the node's defaults (no node.yaml is read).
DEFAULT_THRESHOLDS = Thresholds()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def _media_summary(media: Any) -> dict:
    return {"outcome": media.outcome, "format": media.format, "width": media.width, "height": media.height,
            "frames": media.frame_count, "sampled_frames": len(media.frames), "flags": dict(media.flags),
            "reason": media.reason}


def _inspect(path: str) -> dict:
    """Read, decode and fingerprint one file; the frames ride along (not printed) for inference."""
    row: dict[str, Any] = {"path": path}
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        row.update(fingerprint=None, media={"outcome": "unreadable", "reason": f"cannot read file: {exc}"},
                   decision="unreadable", ms={"decode": 0.0, "hash": 0.0, "inference": 0.0}, frames=[])
        return row
    started = time.perf_counter()
    media = decode(data)
    decoded = time.perf_counter()
    if media.outcome == "image":
        try:
            print_fp = asdict(fingerprint(data, media))
        except Exception as exc:  # noqa: BLE001 - a hostile file must never stop the run
            print_fp = {"sha256": hashlib.sha256(data).hexdigest(), "error": str(exc)[:200]}
    else:
        print_fp = {"sha256": hashlib.sha256(data).hexdigest()}
    hashed = time.perf_counter()
    row.update(fingerprint=print_fp, media=_media_summary(media),
               ms={"decode": _ms(decoded - started), "hash": _ms(hashed - decoded), "inference": 0.0},
               frames=list(media.frames) if media.outcome == "image" else [])
    if media.outcome != "image" or not media.frames:
        row["decision"] = "video" if media.outcome == "video" else "unreadable"
    return row


def _classify_rows(classifier: Any, rows: list[dict]) -> None:
    """Classify the frames of several files in shared forward passes; each file's inference time is its
    share (by frame count) of the batch it ran in."""
    todo = [row for row in rows if row["frames"]]
    frames = [frame for row in todo for frame in row["frames"]]
    if not frames:
        return
    started = time.perf_counter()
    try:
        results = classifier.classify(frames)
    except Exception:  # noqa: BLE001 - retry one file at a time so one bad file cannot sink the others
        results = None
    elapsed = time.perf_counter() - started
    position = 0
    for row in todo:
        count = len(row["frames"])
        if results is not None:
            own = results[position:position + count]
            row["ms"]["inference"] = _ms(elapsed * count / len(frames))
        else:
            single = time.perf_counter()
            try:
                own = classifier.classify(row["frames"])
            except Exception as exc:  # noqa: BLE001
                row.update(decision="error", error=f"classifier failed: {type(exc).__name__}: {exc}"[:300])
                own = []
            row["ms"]["inference"] = _ms(time.perf_counter() - single)
        position += count
        if own:
            merged = merge_frames(own)
            # Not rounded: a score just below 0.5 (a tie at the threshold) must not print as 0.5.
            row["scores"] = dict(merged.scores)
            row["matched"] = merged.matched
            row["decision"] = "block" if blocks(merged.scores, DEFAULT_THRESHOLDS) else "allow"


def _emit(row: dict, model: dict) -> None:
    row.pop("frames", None)
    row.setdefault("scores", None)
    row.setdefault("matched", [])
    row["model"] = model
    order = ("path", "decision", "scores", "matched", "model", "fingerprint", "media", "ms")
    ordered = {key: row[key] for key in order if key in row}
    ordered.update({k: v for k, v in row.items() if k not in ordered})
    print(json.dumps(ordered, ensure_ascii=False), flush=True)


def cmd_check(args: argparse.Namespace) -> int:
    batch_size = max(1, int(getattr(args, "batch_size", 16) or 16))
    try:
        classifier = load_classifier(args.model, device=args.device, batch_size=batch_size)
    except ModelUnavailable as exc:
        print(f"verdict-node check: model unavailable: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    model = asdict(classifier.model)
    paths: Sequence[str] = args.images
    for start in range(0, len(paths), batch_size):
        rows = [_inspect(path) for path in paths[start:start + batch_size]]
        _classify_rows(classifier, rows)
        for row in rows:
            _emit(row, model)
    return 0
