"""Looking without harm: previews drawn by the server from a quarantined file, on request, in memory.

The default preview is small (``admin.preview_side``), greyscale and heavily blurred: enough to tell a
galaxy from a person, not enough to see a person. Unblurred pixels leave the server only for a reveal that
the admin asked for on that one item (a POST behind a warning, audited). Nothing is ever written to disk:
the file is read into memory, decoded under the node's media limits (scanners.media.decode: hostile bytes
never raise), and the PNG goes straight into the response, marked ``no-store``.

The file is opened with O_NOFOLLOW and must be a regular file no larger than ``media.max_bytes``: a
quarantine is a place others could have written to, and a link there must not make the console read
something else.
"""
from __future__ import annotations

import dataclasses
import io
import os

from PIL import Image, ImageFilter, ImageOps

from scanners.media import Limits, decode
from scanners.sources import SourceError
from scanners.sources.quarantine_dir import QuarantineDir

#: Side of the coarse grid the blurred preview is reduced to before it is blurred again: fine detail
#: (faces, skin texture) does not survive it.
BLUR_GRID = 12
REVEAL_SIDE = 480


class PreviewError(Exception):
    """No preview can be drawn; the message says why, naming the file."""


def read_quarantined(location: str, max_bytes: int, sha256: str | None) -> bytes:
    """The bytes of a quarantined file, read as the sweeps read them to release it (node's QuarantineDir: no
    link followed on the way, a regular file, bytes that match the sidecar), and only when they are the bytes
    this item was judged on (``sha256``): a file swapped in the quarantine is never shown nor recorded."""
    if not os.path.isabs(location):
        raise PreviewError(f"{location}: the quarantine is not on this machine (a remote source): no preview")
    try:
        sidecar, data = QuarantineDir(os.path.dirname(location)).read(location)
    except (SourceError, OSError) as exc:
        raise PreviewError(f"{location}: not read: {exc}") from None
    if sha256 is not None and sidecar.get("sha256") != sha256:
        raise PreviewError(f"{location}: holds other bytes than the item's (sha256 {sha256[:16]}…): not shown")
    if len(data) > max_bytes:
        raise PreviewError(f"{location}: {len(data)} bytes, over media.max_bytes ({max_bytes}): no preview")
    return data


def _first_frame(data: bytes, limits: Limits, what: str) -> Image.Image:
    media = decode(data, dataclasses.replace(limits, max_frames=1))  # a preview draws the first frame only
    if media.outcome != "image" or not media.frames:
        raise PreviewError(f"{what}: not drawn ({media.reason or media.outcome})")
    return media.frames[0]


def blurred_png(data: bytes, limits: Limits, side: int, what: str = "the file") -> bytes:
    """Small, greyscale, blurred: the preview every page shows."""
    frame = ImageOps.grayscale(_first_frame(data, limits, what))
    frame.thumbnail((side, side), Image.Resampling.LANCZOS)
    width, height = frame.size
    scale = BLUR_GRID / max(width, height)
    coarse = frame.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    out = coarse.resize((width, height), Image.Resampling.BILINEAR)
    out = out.filter(ImageFilter.GaussianBlur(radius=max(2.0, side / 20)))
    return _png(out)


def revealed_png(data: bytes, limits: Limits, what: str = "the file") -> bytes:
    """The unblurred picture, for a reveal only (at most REVEAL_SIDE pixels)."""
    frame = _first_frame(data, limits, what).convert("RGB")
    frame.thumbnail((REVEAL_SIDE, REVEAL_SIDE), Image.Resampling.LANCZOS)
    return _png(frame)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False)
    return buf.getvalue()
