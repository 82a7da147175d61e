"""Hardened decode: any bytes in, a ``Media`` out, never an exception.

Everything that reaches the node is hostile until proven otherwise: a decompression bomb, a GIF of ten
thousand frames, a ZIP glued to a JPEG, an HTML page named ``.jpg``, a video. ``decode`` sniffs the format
from the bytes (never the name or Content-Type), walks the container structure itself before Pillow
allocates anything (so header dimensions are refused before decoding), and gives one explicit outcome:

- ``"image"``: ``frames`` holds up to ``max_frames`` RGB frames, sampled evenly over an animation and
  fitted into ``max_side`` (JPEG draft mode, so a 12 MP photo is never decoded at full size);
- ``"video"``: mp4/mov/webm/mkv/avi, which pict-rs accepts; never classified as an image;
- ``"unreadable"`` with ``reason``: empty, random, SVG/HTML, bombs, unsupported or broken data.

Truncation policy: a truncated JPEG is decoded as far as its data goes (libjpeg pads the missing rows
grey, like a browser shows it) and a truncated GIF keeps its complete frames; both are flagged
``truncated``. Any other truncated format (PNG, WebP, ...) is ``unreadable`` with reason "truncated ...":
Pillow can only decode those partially through a process-wide switch that we refuse to flip.

The structure walkers here also serve ``scanners.fingerprint`` (its metadata-insensitive exact key hashes
the byte ranges that ``Structure.image_parts`` names), so the container is parsed once per image.
"""
from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

__all__ = [
    "Limits",
    "DEFAULT_LIMITS",
    "Media",
    "Structure",
    "decode",
    "sniff",
    "walk",
    "orientation_of",
    "to_rgb",
    "open_image",
    "PIL_FORMATS",
    "Unreadable",
    "walk_flags",
    "BACKGROUND",
    "PINNED_SIDE",
]

# Frames fit in this many px (long side), and the fingerprint recipe (PREPROCESSING_ID) is defined at it.
# 1024 rather than 512: JPEG draft output (>= 256 px short side) then never needs a resize pass, which
# costs more than the draft decode itself; classifiers resize to their input (224) anyway.
PINNED_SIDE = 1024
# A composite background for transparent images: fixed, so the same image always gives the same pixels.
BACKGROUND = (255, 255, 255)
# Over budget, a GIF frame is rebuilt from its key frame and at most this many frames back (_gif_frames).
_GIF_WINDOW = 16


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one decode. ``max_pixels`` is per frame and checked on header dimensions before
    any allocation; ``max_frames`` is how many frames of an animation are sampled; ``animation_budget``
    caps the pixels decoded while seeking through APNG/WebP/TIFF animations (their decoders must go
    through every earlier frame), so a long animation is sampled over its reachable prefix.

    Sampling is even, first and last frame included: any run of more than (n-1)/(max_frames-1)
    consecutive frames of an n-frame animation contains a sample; a single odd frame in a long
    animation can fall between samples (raise ``max_frames`` to narrow the gap)."""

    max_bytes: int = 50_000_000
    max_pixels: int = 64_000_000
    max_frames: int = 8
    max_side: int = PINNED_SIDE
    animation_budget: int = 100_000_000


DEFAULT_LIMITS = Limits()


@dataclass
class Structure:
    """What a container walk learnt without decoding pixels.

    ``image_parts`` are (tag, start, end) byte ranges that determine the pixels (metadata left out);
    ``end`` is where the image ends (trailing data starts), None when the data is truncated.
    """

    format: str
    width: int = 0
    height: int = 0
    end: int | None = None
    truncated: bool = False
    image_parts: list[tuple[bytes, int, int]] = field(default_factory=list)
    frame_count: int = 1
    # GIF only: offsets to rebuild single frames without decoding the animation up to them.
    gif_header_end: int = 0
    # (start, end, is_key): a key frame covers the whole screen opaquely, so it resets the picture.
    gif_frames: list[tuple[int, int, bool]] = field(default_factory=list)


@dataclass
class Media:
    """The outcome of ``decode``. ``frames`` are RGB, at most ``frame_side`` px on the long side, with
    EXIF orientation applied; ``frame_indices`` says which animation frames they are.

    ``flags`` (present only when they apply): ``trailing_bytes`` (int: bytes after the image's end
    marker, e.g. an appended ZIP), ``truncated`` (True), ``animated`` (True), ``orientation`` (EXIF
    2..8, already applied), ``frames_approximate`` (GIF samples rebuilt from a window, see
    ``_gif_frames``), ``sampled_frames_upto`` (int: animation sampled over this prefix only)."""

    outcome: str
    format: str | None = None
    width: int = 0
    height: int = 0
    frame_count: int = 0
    frames: list[Image.Image] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)
    flags: dict = field(default_factory=dict)
    reason: str | None = None
    frame_side: int = PINNED_SIDE
    structure: Structure | None = field(default=None, repr=False)


class Unreadable(Exception):
    """The bytes are not a decodable image. ``decode`` turns it into ``Media(outcome="unreadable",
    reason=str(exc))``; ``scanners.fingerprint`` raises it when asked for the keys of such bytes."""


# ---------------------------------------------------------------------------------------------- sniffing

_IMAGE_BRANDS = {
    b"avif": "avif", b"avis": "avif",
    b"heic": "heif", b"heix": "heif", b"heim": "heif", b"heis": "heif",
    b"hevc": "heif", b"hevx": "heif", b"mif1": "heif", b"msf1": "heif",
}
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def sniff(data: bytes) -> str | None:
    """Name the format from magic numbers. Images: jpeg png gif webp bmp tiff avif heif jxl ico;
    videos: mp4 mov webm avi; text: svg html; None when unknown."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"\xff\x0a" or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "jxl"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in data[:64] else "mkv"
    if head[4:8] == b"ftyp":
        major = head[8:12]
        if major in _IMAGE_BRANDS:
            return _IMAGE_BRANDS[major]
        return "mov" if major == b"qt  " else "mp4"
    if head[4:8] in _MOV_ATOMS:
        return "mov"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<"):
        lower = data[:4096].lower()
        if b"<svg" in lower:
            return "svg"
        return "html"
    return None


_VIDEO = {"mp4", "mov", "webm", "mkv", "avi"}
# Formats Pillow decodes here (AVIF through Pillow 13's own plugin); jxl/heif/ico are refused as unsupported
# (pillow-heif is not a dependency).
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF",
                "avif": "AVIF"}


# ---------------------------------------------------------------------------------------------- walkers
# Walkers step through the container in Python, so a file made of millions of tiny pieces (1-byte GIF
# sub-blocks, empty PNG chunks, JPEG fill segments) could cost seconds. Real files stay far below
# these caps (a 50 MB GIF with full 255-byte sub-blocks has ~200k); beyond them the file is refused.
MAX_GIF_SUB_BLOCKS = 1_000_000
MAX_CHUNKS = 100_000  # PNG and WebP chunks
MAX_JPEG_SEGMENTS = 10_000
MAX_JPEG_SCANS = 256  # progressive JPEGs use ~10; thousands of scans is a known decoder DoS
MAX_JPEG_FILL = 65_536  # 0xFF padding before markers: Pillow skips it one byte at a time in Python


def _too_many(what: str, cap: int) -> Unreadable:
    return Unreadable(f"pathological structure: more than {cap} {what}")



_JPEG_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_JPEG_FILL = re.compile(rb"\xff\xff+")


def _walk_jpeg(data: bytes) -> Structure:
    """Walk JPEG markers up to EOI. Pixel-relevant: SOFn, DHT, DQT, DRI, DAC, DNL, SOS + entropy data, and
    APP14 "Adobe" (it selects the colour transform, so exiftool keeps it too). APPn/COM are metadata."""
    s = Structure("jpeg")
    n = len(data)
    pos = 2
    segments = scans = filled = 0
    while True:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_many("jpeg segments", MAX_JPEG_SEGMENTS)
        # Markers may be preceded by any number of 0xFF fill bytes.
        fill = _JPEG_FILL.match(data, pos)
        if fill:
            filled += fill.end() - 1 - pos
            if filled > MAX_JPEG_FILL:
                raise _too_many("jpeg fill bytes", MAX_JPEG_FILL)
            pos = fill.end() - 1
        if pos + 2 > n:
            s.truncated = True
            return s
        if data[pos] != 0xFF:
            raise Unreadable("corrupt jpeg: marker expected")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            s.image_parts.append((b"EOI", pos, pos + 2))
            s.end = pos + 2
            return s
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            s.truncated = True
            return s
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            raise Unreadable("corrupt jpeg: segment length")
        seg_end = pos + 2 + length
        if seg_end > n:
            s.truncated = True
            return s
        is_sof = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        if is_sof and length >= 7 and not s.width:
            s.height, s.width = struct.unpack_from(">HH", data, pos + 5)
        adobe = marker == 0xEE and data[pos + 4:pos + 9] == b"Adobe"
        if is_sof or marker in (0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xDF) or adobe:
            s.image_parts.append((b"M%02X" % marker, pos + 2, seg_end))
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next non-RST marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _too_many("jpeg scans", MAX_JPEG_SCANS)
            match = _JPEG_ENTROPY_END.search(data, seg_end)
            scan_end = match.start() if match else n
            s.image_parts.append((b"SOS", pos + 2, scan_end))
            if match is None:
                s.truncated = True
                return s
            pos = scan_end
            continue
        pos = seg_end


_PNG_IMAGE_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"acTL", b"fcTL", b"fdAT", b"IEND"}


def _walk_png(data: bytes) -> Structure:
    """Walk PNG chunks up to IEND. Pixel-relevant: IHDR PLTE tRNS IDAT and the APNG chunks; text, time,
    eXIf, iCCP, gAMA... are metadata (exiftool removes or rewrites them without touching IDAT)."""
    s = Structure("png")
    n = len(data)
    pos = 8
    for _ in range(MAX_CHUNKS):
        if pos + 8 > n:
            s.truncated = True
            return s
        length, ctype = struct.unpack_from(">I4s", data, pos)
        start, end = pos + 8, pos + 8 + length
        if end + 4 > n:
            s.truncated = True
            return s
        if ctype == b"IHDR" and length >= 8:
            s.width, s.height = struct.unpack_from(">II", data, start)
        if ctype == b"acTL" and length >= 4:
            s.frame_count = max(1, struct.unpack_from(">I", data, start)[0])
        if ctype in _PNG_IMAGE_CHUNKS:
            s.image_parts.append((ctype, start, end))
        pos = end + 4
        if ctype == b"IEND":
            s.end = pos
            return s
    raise _too_many("png chunks", MAX_CHUNKS)


_WEBP_IMAGE_CHUNKS = {b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF"}


def _walk_webp(data: bytes) -> Structure:
    """Walk RIFF/WebP chunks. Pixel-relevant: VP8/VP8L/ALPH/ANIM/ANMF and, for animations, the VP8X canvas
    size (never its flag byte, which changes when EXIF/XMP/ICCP are stripped); EXIF/XMP/ICCP are
    metadata."""
    s = Structure("webp")
    n = len(data)
    riff_end = 8 + struct.unpack_from("<I", data, 4)[0]
    riff_end += riff_end & 1
    limit = min(riff_end, n)
    pos = 12
    frames = 0
    canvas = None
    chunks = 0
    while pos + 8 <= limit:
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise _too_many("webp chunks", MAX_CHUNKS)
        ctype, length = struct.unpack_from("<4sI", data, pos)
        start, end = pos + 8, pos + 8 + length
        if end > limit:
            break
        if ctype == b"VP8X" and length >= 10:
            s.width = 1 + int.from_bytes(data[start + 4:start + 7], "little")
            s.height = 1 + int.from_bytes(data[start + 7:start + 10], "little")
            canvas = (b"VP8X-canvas", start + 4, start + 10)
        elif ctype == b"VP8 " and length >= 10 and not s.width:
            w, h = struct.unpack_from("<HH", data, start + 6)
            s.width, s.height = w & 0x3FFF, h & 0x3FFF
        elif ctype == b"VP8L" and length >= 5 and not s.width:
            bits = int.from_bytes(data[start + 1:start + 5], "little")
            s.width, s.height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if ctype == b"ANMF":
            frames += 1
        if ctype in _WEBP_IMAGE_CHUNKS:
            s.image_parts.append((ctype, start, end))
        pos = end + (length & 1)
    s.frame_count = max(1, frames)
    if canvas is not None and frames:
        # The canvas only adds information to an animation; a still image's size is in VP8/VP8L, and a
        # stripper may drop a VP8X chunk that no longer announces anything.
        s.image_parts.insert(0, canvas)
    if riff_end > n or pos < riff_end:
        s.truncated = True
    else:
        s.end = riff_end
    return s


def _gif_skip_sub_blocks(data: bytes, pos: int, budget: list[int]) -> int:
    """Return the offset after a chain of GIF data sub-blocks (length byte + data, 0-terminated);
    ``budget[0]`` counts down the sub-blocks the whole file may have."""
    n = len(data)
    while pos < n:
        size = data[pos]
        if size == 0:
            return pos + 1
        pos += 1 + size
        budget[0] -= 1
        if budget[0] < 0:
            raise _too_many("gif sub-blocks", MAX_GIF_SUB_BLOCKS)
    raise IndexError


def _walk_gif(data: bytes) -> Structure:
    """Walk GIF blocks without LZW-decoding anything: frame count and offsets come from block lengths, so a
    GIF of 10,000 frames is counted in milliseconds. Pixel-relevant: logical screen + global palette,
    graphic control and plain-text extensions, image descriptors + data; comments and application
    extensions (XMP, loop count) are metadata."""
    s = Structure("gif")
    n = len(data)
    if n < 13:
        s.truncated = True
        return s
    s.width, s.height, packed = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if packed & 0x80:
        pos += 3 << ((packed & 7) + 1)
    if pos > n:
        s.truncated = True
        return s
    s.image_parts.append((b"LSD", 6, pos))
    s.gif_header_end = pos
    frame_start = pos
    transparent = False  # the pending graphic control extension makes the next frame see-through
    budget = [MAX_GIF_SUB_BLOCKS]
    try:
        while True:
            budget[0] -= 1  # every block counts, so millions of empty extensions are refused too
            if budget[0] < 0:
                raise _too_many("gif blocks", MAX_GIF_SUB_BLOCKS)
            block = data[pos]
            if block == 0x3B:  # trailer
                s.end = pos + 1
                break
            if block == 0x21:
                label = data[pos + 1]
                end = _gif_skip_sub_blocks(data, pos + 2, budget)
                if label in (0xF9, 0x01):
                    s.image_parts.append((b"X%02X" % label, pos, end))
                if label == 0xF9 and pos + 3 < n:
                    transparent = bool(data[pos + 3] & 1)
                pos = end
            elif block == 0x2C:
                left, top, w, h, fpacked = struct.unpack_from("<HHHHB", data, pos + 1)
                lzw = pos + 10
                if fpacked & 0x80:
                    lzw += 3 << ((fpacked & 7) + 1)
                end = _gif_skip_sub_blocks(data, lzw + 1, budget)
                s.image_parts.append((b"IMG", pos, end))
                covers = left == 0 and top == 0 and w >= s.width and h >= s.height and not transparent
                transparent = False
                s.gif_frames.append((frame_start, end, covers))
                s.width, s.height = max(s.width, left + w), max(s.height, top + h)
                pos = frame_start = end
            else:
                raise Unreadable("corrupt gif: unknown block 0x%02x" % block)
    except (IndexError, struct.error):
        s.truncated = True
    s.frame_count = max(1, len(s.gif_frames))
    return s


_WALKERS: dict[str, Callable[[bytes], Structure]] = {
    "jpeg": _walk_jpeg, "png": _walk_png, "webp": _walk_webp, "gif": _walk_gif,
}


def walk(data: bytes, fmt: str | None = None) -> Structure | None:
    """Walk the container of ``data`` (format sniffed when not given); None for formats without a walker.
    Raises ``Unreadable`` for a structure that cannot be an image."""
    fmt = fmt or sniff(data)
    walker = _WALKERS.get(fmt or "")
    if walker is None:
        return None
    try:
        return walker(data)
    except struct.error as exc:
        raise Unreadable(f"corrupt {fmt}: {exc}") from None


def walk_flags(structure: Structure | None, size: int) -> dict:
    """The flags a container walk tells without decoding, as ``decode`` reports them: ``trailing_bytes``
    (bytes after the end marker), ``truncated``, ``animated``. {} for formats without a walker."""
    flags: dict = {}
    if structure is None:
        return flags
    if structure.end is not None and structure.end < size:
        flags["trailing_bytes"] = size - structure.end
    if structure.truncated:
        flags["truncated"] = True
    if structure.frame_count > 1:
        flags["animated"] = True
    return flags


# ---------------------------------------------------------------------------------------------- pixels

_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orientation_of(im: Image.Image) -> int:
    """EXIF orientation (1..8) of an opened image; 1 when absent or unparsable (hostile EXIF is common)."""
    try:
        value = im.getexif().get(0x0112, 1)
        return value if value in _ORIENT else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unreadable
        return 1


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16/32-bit grey scaled (not clipped), transparency composited on the
    fixed ``BACKGROUND`` (so hidden pixels under alpha=0 cannot differ between decoders)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im.convert("I") if mode != "I" else im, dtype=np.int64)
        peak = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        grey = Image.fromarray((np.clip(arr, 0, peak) * 255 // peak).astype(np.uint8), "L")
        return grey.convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        grey = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB", "1")
                                                               and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def _downscale(im: Image.Image, side: int) -> Image.Image:
    """Fit within ``side`` px with a fixed filter (bilinear, antialiased when shrinking, after an integer
    box reduction when far larger: Pillow's reducing_gap=3); the output size depends on the input size
    only."""
    w, h = im.size
    longest = max(w, h)
    if longest <= side:
        return im
    scale = side / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def _finish(im: Image.Image, side: int, orientation: int) -> Image.Image:
    """A frame for the caller to keep: RGB, fitted, oriented, and never the decoder's own image object
    (seeking an animation further overwrites that one in place)."""
    out = _downscale(to_rgb(im), side)
    if out is im:
        out = im.copy()
    if orientation != 1:
        out = out.transpose(_ORIENT[orientation])
    return out


def open_image(data: bytes, fmt: str) -> Image.Image:
    """Open (lazily: nothing decoded yet) with Pillow restricted to the sniffed format's plugin, so no
    other parser ever sees hostile bytes. ``fmt`` is a key of ``PIL_FORMATS``."""
    return Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])


def _draft(im: Image.Image, side: int) -> None:
    """JPEG DCT scaling: libjpeg decodes at 1/2, 1/4 or 1/8 size directly, the largest reduction that
    keeps both sides >= side/4 (256 px at the default side: enough for CLIP's 224 and the hashes). A
    12 MP photo comes out at 500x375, a 1 MP one at 578x433, with no resize pass after it. The scale
    depends on the image size only: part of the pinned recipe."""
    quarter = max(1, side // 4)
    im.draft(im.mode, (quarter, quarter))


def _sample(count: int, k: int) -> list[int]:
    """``k`` frame indices spread evenly over ``count`` frames, first and last included."""
    if count <= k:
        return list(range(count))
    if k == 1:
        return [0]
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)})


def _gif_frames(data: bytes, s: Structure, indices: list[int], side: int,
                budget: int) -> tuple[list[Image.Image], bool]:
    """Sampled GIF frames, composited as a browser shows them, without decoding the whole animation.

    A frame that covers the screen without transparency resets the picture, so frame k only depends on
    the frames from the last such "key" frame up to k. Samples are decoded from small GIFs rebuilt from
    those byte ranges (header + frames key..k). When even that would exceed ``budget`` pixel operations
    (10,000 tiny deltas over one key frame), each sample is rebuilt from its key frame plus the last
    ``_GIF_WINDOW`` frames before it: approximate (deltas older than the window are missing), flagged.
    Returns (frames, approximate)."""
    header = data[:s.gif_header_end]
    last_key, key = [], 0
    for i, (_start, _end, covers) in enumerate(s.gif_frames):
        key = i if covers else key
        last_key.append(key)
    groups: list[tuple[int, list[int]]] = []
    for k in indices:
        if groups and last_key[k] <= groups[-1][1][-1]:
            groups[-1][1].append(k)
        else:
            groups.append((last_key[k], [k]))
    per_frame = s.width * s.height + 20_000  # pixels touched + fixed per-frame overhead, in pixel units
    cost = sum(ks[-1] - start + 1 for start, ks in groups) * per_frame
    out: list[Image.Image] = []
    if cost <= budget:
        for start, ks in groups:
            im = open_image(header + data[s.gif_frames[start][0]:s.gif_frames[ks[-1]][1]] + b";", "gif")
            for k in ks:
                im.seek(k - start)
                im.load()
                out.append(_finish(im, side, 1))
        return out, False
    for k in indices:
        j = last_key[k]
        first = max(j + 1, k - _GIF_WINDOW + 1)
        parts = [header, data[s.gif_frames[j][0]:s.gif_frames[j][1]]]
        if first <= k:
            parts.append(data[s.gif_frames[first][0]:s.gif_frames[k][1]])
        im = open_image(b"".join(parts) + b";", "gif")
        im.seek(getattr(im, "n_frames", 1) - 1)
        im.load()
        out.append(_finish(im, side, 1))
    return out, True


def _seek_frames(im: Image.Image, indices: list[int], side: int, orientation: int,
                 max_pixels: int) -> list[Image.Image]:
    out = []
    for k in indices:
        im.seek(k)
        if im.size[0] * im.size[1] > max_pixels:  # TIFF pages each have their own size
            raise Unreadable(f"too many pixels in frame {k}: {im.size[0]}x{im.size[1]} > {max_pixels}")
        im.load()
        out.append(_finish(im, side, orientation))
    return out


def _unreadable(reason: str, fmt: str | None = None, **flags) -> Media:
    return Media(outcome="unreadable", format=fmt, reason=reason, flags=dict(flags))


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Media:
    """Decode hostile bytes into a ``Media``. Never raises: every failure is an explicit outcome."""
    try:
        return _decode(bytes(data), limits)
    except Unreadable as exc:
        return _unreadable(str(exc), sniff(data[:64]) if data else None)
    except Image.DecompressionBombError as exc:
        return _unreadable(f"too many pixels: {exc}", sniff(data[:64]))
    except MemoryError:
        return _unreadable("out of memory while decoding", sniff(data[:64]))
    except Exception as exc:  # noqa: BLE001 - the contract: decode never raises
        return _unreadable(f"undecodable: {type(exc).__name__}: {exc}"[:300], sniff(data[:64]) if data else None)


def _decode(data: bytes, limits: Limits) -> Media:
    if not data:
        return _unreadable("empty")
    if len(data) > limits.max_bytes:
        return _unreadable(f"too large: {len(data)} bytes > {limits.max_bytes}", sniff(data))
    fmt = sniff(data)
    if fmt is None:
        return _unreadable("not an image (unknown format)")
    if fmt in _VIDEO:
        return Media(outcome="video", format=fmt, reason="video is not scanned as an image")
    if fmt in ("svg", "html"):
        return _unreadable("not an image (svg/html)", fmt)
    if fmt not in PIL_FORMATS:
        return _unreadable(f"unsupported format ({fmt})", fmt)

    s = walk(data, fmt)
    flags: dict = {}
    if s is not None:
        if s.width * s.height > limits.max_pixels:
            return _unreadable(f"too many pixels: {s.width}x{s.height} > {limits.max_pixels}", fmt)
        flags = {k: v for k, v in walk_flags(s, len(data)).items() if k != "animated"}  # counted when decoded
        if s.truncated:
            if fmt not in ("jpeg", "gif"):
                return _unreadable(f"truncated {fmt}", fmt, truncated=True)
        if fmt == "gif" and not s.gif_frames:
            return _unreadable("truncated gif: no complete frame" if s.truncated else "gif without frames",
                               fmt, **flags)
        if fmt == "jpeg" and not any(tag == b"SOS" for tag, _a, _b in s.image_parts):
            return _unreadable("truncated jpeg: no image data" if s.truncated else "corrupt jpeg: no scan",
                               fmt, **flags)
        if fmt == "jpeg" and not s.width:
            return _unreadable("corrupt jpeg: no frame header", fmt)

    side = limits.max_side
    media = Media(outcome="image", format=fmt, flags=flags, frame_side=side, structure=s)

    if fmt == "gif" and s is not None:
        media.width, media.height, media.frame_count = s.width, s.height, len(s.gif_frames)
        media.frame_indices = _sample(media.frame_count, limits.max_frames)
        media.frames, approximate = _gif_frames(data, s, media.frame_indices, side, limits.animation_budget)
        if approximate:
            flags["frames_approximate"] = True
    else:
        src = data
        if fmt == "jpeg" and s is not None and s.truncated:
            src = data + b"\xff\xd9"  # let libjpeg finish the scan: missing rows come out grey
        im = open_image(src, fmt)
        media.width, media.height = im.size
        if media.width * media.height > limits.max_pixels:
            return _unreadable(f"too many pixels: {media.width}x{media.height} > {limits.max_pixels}", fmt)
        orientation = orientation_of(im)
        if orientation != 1:
            flags["orientation"] = orientation
        count = max(1, int(getattr(im, "n_frames", 1) or 1))
        media.frame_count = count
        if count == 1:
            if fmt == "jpeg":
                _draft(im, side)
            im.load()
            media.frame_indices = [0]
            media.frames = [_finish(im, side, orientation)]
        else:
            # APNG/WebP/TIFF decoders reach frame k through the frames before it: sample within budget.
            reachable = max(1, min(count, limits.animation_budget // max(1, media.width * media.height)))
            if reachable < count:
                flags["sampled_frames_upto"] = reachable
            media.frame_indices = _sample(reachable, limits.max_frames)
            media.frames = _seek_frames(im, media.frame_indices, side, orientation, limits.max_pixels)
    if media.frame_count > 1:
        flags["animated"] = True
    return media
