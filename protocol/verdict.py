"""Fingerprint and Verdict: what one node says about one image.

A verdict carries scores, not only a label: every receiver applies its own thresholds (DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

CATEGORIES: tuple[str, ...] = ("csam", "nsfw", "underage")
LABELS: tuple[str, ...] = ("safe", "nsfw", "csam")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Keys of one image. ``sha256`` is of the bytes; ``pixel_sha256`` of the decoded pixels, so it survives
    metadata stripping (pict-rs runs exiftool) but not a changed pixel; ``phash64`` is 16 hex digits and
    ``pdq256`` 64 hex digits. ``preprocessing`` names the pinned decode+hash recipe that produced them:
    perceptual hashes from different recipes are not comparable."""

    sha256: str
    pixel_sha256: str
    phash64: str
    preprocessing: str
    pdq256: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which classifier produced the scores: scores of an unknown model are not compared blindly."""

    name: str
    version: str
    rules: str


@dataclass(frozen=True)
class Verdict:
    id: str
    issuer: str
    fingerprint: Fingerprint
    scores: Mapping[str, float]
    label: str
    model: ModelInfo
    published: str
    supersedes: str | None = None
    proof: Mapping | None = field(default=None, compare=False)
