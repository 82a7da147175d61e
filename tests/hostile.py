"""The hostile corpus: bytes an attacker (or a broken client) can send to a pict-rs hook or leave in
storage, each with the outcome ``scanners.media.decode`` must give. Built in memory by code, so the
corpus needs no files and every case says how it was made.

``hostile_corpus()`` maps name -> (bytes, expected outcome), outcome in {"image", "video", "unreadable"}.
Node and sweep tests feed the same corpus through their paths: none of it may crash anything or be
called CSAM.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from tests.images import encode, photo_bytes, photo_image

__all__ = ["hostile_corpus", "gif_bytes", "raw_gif", "png_bomb", "middle_frame_gif", "MIDDLE_GIF_RANGE"]


# ------------------------------------------------------------------------------------ GIF by hand
# A GIF writer independent of Pillow's (and of scanners.media), so the tests can make animations that
# Pillow's encoder would merge, optimise or refuse, e.g. 10,000 frames in well under a second.


def _lzw_uncompressed(indices: bytes) -> bytes:
    """LZW data for 8-bit palette indices without compression: a clear code every 128 literals keeps the
    code width at 9 bits (valid GIF, readable by any decoder)."""
    clear, eoi, width = 256, 257, 9
    acc = nbits = 0
    out = bytearray()

    def put(code: int) -> None:
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    for i in range(0, len(indices), 128):
        put(clear)
        for value in indices[i:i + 128]:
            put(value)
    put(eoi)
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def _sub_blocks(payload: bytes) -> bytes:
    parts = [bytes([len(payload[i:i + 255])]) + payload[i:i + 255] for i in range(0, len(payload), 255)]
    return b"".join(parts) + b"\x00"


def gif_frame_block(indices: np.ndarray, left: int = 0, top: int = 0, delay_cs: int = 2) -> bytes:
    """One frame: graphic control extension (no disposal, no transparency) + image descriptor + data."""
    h, w = indices.shape
    gce = b"\x21\xf9\x04" + struct.pack("<BHB", 0x04, delay_cs, 0) + b"\x00"  # disposal 1: leave in place
    descriptor = b"\x2c" + struct.pack("<HHHHB", left, top, w, h, 0)
    return gce + descriptor + b"\x08" + _sub_blocks(_lzw_uncompressed(indices.astype(np.uint8).tobytes()))


def raw_gif(width: int, height: int, palette: np.ndarray, frame_blocks: list[bytes] | bytes) -> bytes:
    """Assemble a GIF89a from a 256-colour palette ((256, 3) uint8) and ready frame blocks."""
    lsd = struct.pack("<HHBBB", width, height, 0xF7, 0, 0)  # global table of 256 colours
    netscape = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    body = frame_blocks if isinstance(frame_blocks, bytes) else b"".join(frame_blocks)
    return b"GIF89a" + lsd + palette.astype(np.uint8).tobytes() + netscape + body + b"\x3b"


def _palette_image(im: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    p = im.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    pal = np.zeros((256, 3), np.uint8)
    raw = np.frombuffer(bytes(p.getpalette()[:768]), np.uint8)
    pal.reshape(-1)[:raw.size] = raw
    return np.asarray(p), pal


def gif_bytes(frames: list[Image.Image], duration_ms: int = 20) -> bytes:
    """An animated GIF of full-screen frames through Pillow's encoder (what most tools produce)."""
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


@lru_cache(maxsize=1)
def gif_10000_frames() -> bytes:
    """10,000 frames: small 8x8 deltas walking over a 400x400 canvas, the shape that makes naive
    sequential decoding (seek to each frame) cost a full-canvas operation per frame."""
    rng = np.random.default_rng(7)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    background = gif_frame_block(rng.integers(0, 256, size=(400, 400), dtype=np.uint8))
    deltas = [gif_frame_block(np.full((8, 8), c, np.uint8), left=(c * 37) % 392, top=(c * 11) % 392)
              for c in range(256)]
    blocks = [background] + [deltas[i % 256] for i in range(1, 10_000)]
    return raw_gif(400, 400, palette, blocks)


MIDDLE_GIF_RANGE = (80, 121)  # frames [80, 121) of the 200-frame GIF show a different photo


@lru_cache(maxsize=2)
def middle_frame_gif(frames: int = 200) -> bytes:
    """A harmless animation (astronaut) whose middle section shows another photo (coffee), each section
    drawn as full frames, with a tiny counter delta on every other frame (as optimised GIFs do). Even
    sampling of 8 frames sees any section longer than (frames-1)/7 frames."""
    a_idx, palette = _palette_image(photo_image("astronaut", (160, 160)))
    coffee = photo_image("coffee", (160, 160)).quantize(palette=_as_pil_palette(palette),
                                                         dither=Image.Dither.NONE)
    b_idx = np.asarray(coffee)
    blocks = []
    lo, hi = MIDDLE_GIF_RANGE if frames == 200 else (frames // 2, frames // 2 + 1)
    for i in range(frames):
        if i == 0 or i in (lo, hi):
            blocks.append(gif_frame_block(b_idx if lo <= i < hi else a_idx))
        else:
            blocks.append(gif_frame_block(np.full((2, 2), i % 256, np.uint8), left=(i * 3) % 150, top=150))
    return raw_gif(160, 160, palette, blocks)


def _as_pil_palette(palette: np.ndarray) -> Image.Image:
    p = Image.new("P", (1, 1))
    p.putpalette(palette.astype(np.uint8).tobytes())
    return p


# ------------------------------------------------------------------------------------ other cases


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of width x height zeros (900 Mpx) in ~100 kB."""
    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("payload/readme.txt", "polyglot payload " * 200)
        zf.writestr("payload/blob.bin", bytes(range(256)) * 64)
    return buf.getvalue()


def jpeg_with_zip() -> tuple[bytes, int]:
    """A photo with a ZIP archive appended (a polyglot); returns (bytes, size of the appended part)."""
    tail = _zip_bytes()
    return photo_bytes("chelsea") + tail, len(tail)


def huge_exif_jpeg() -> bytes:
    """A JPEG with a 64 kB EXIF segment whose IFD claims 65,535 entries, followed by 100 more maximal
    APP1 segments: parsers that trust counts or concatenate segments pay for it."""
    base = photo_bytes("rocket", size=320)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 0xFFFF)
    tiff += (struct.pack(">HHII", 0x0112, 3, 1, 6 << 16) * 8000)[: 65_000 - len(tiff)]
    exif = b"Exif\x00\x00" + tiff
    segments = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    junk = b"http://ns.adobe.com/xap/1.0/\x00" + b"<x:xmpmeta>" + b"A" * 65_000
    segments += (b"\xff\xe1" + struct.pack(">H", len(junk[:65_533]) + 2) + junk[:65_533]) * 100
    return base[:2] + segments + base[2:]


def animated_webp() -> bytes:
    frames = [photo_image(name, (160, 120)) for name in ("astronaut", "coffee", "rocket")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0, quality=80)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(photo_image("coffee", 320).convert("CMYK"), "jpeg")


def png16() -> bytes:
    arr = (np.asarray(photo_image("astronaut", 256).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(arr), "png")


def palette_png_with_transparency() -> bytes:
    im = photo_image("chelsea", 200).quantize(64)
    ImageDraw.Draw(im).rectangle((20, 20, 120, 120), fill=0)
    return encode(im, "png", transparency=0)


def mp4_header() -> bytes:
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 0x200) + b"isomiso2"
    return ftyp + struct.pack(">I", 8) + b"free" + struct.pack(">I", 16) + b"mdat" + b"\x00" * 8


def webm_header() -> bytes:
    doctype = b"\x42\x82\x84webm"
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | (len(doctype) + 4)]) + b"\x42\x86\x81\x01" + doctype + b"\x00" * 32


def hostile_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected outcome of scanners.media.decode)."""
    photo_jpeg = photo_bytes("astronaut")
    photo_png = photo_bytes("coffee", "png")
    rng = np.random.default_rng(1234)
    return {
        "empty": (b"", "unreadable"),
        "random_bytes": (b"\x00RND" + rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes(), "unreadable"),
        "truncated_jpeg": (photo_jpeg[: len(photo_jpeg) * 6 // 10], "image"),
        "truncated_png": (photo_png[: len(photo_png) * 6 // 10], "unreadable"),
        "png_bomb_30000x30000": (png_bomb(), "unreadable"),
        "gif_10000_frames": (gif_10000_frames(), "image"),
        "gif_middle_frames_differ": (middle_frame_gif(), "image"),
        "jpeg_with_zip_appended": (jpeg_with_zip()[0], "image"),
        "html_named_jpg": (b"<!DOCTYPE html>\n<html><body><img src=x onerror=alert(1)></body></html>",
                           "unreadable"),
        "svg_named_jpg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
                          b'height="10"><script>alert(1)</script></svg>', "unreadable"),
        "cmyk_jpeg": (cmyk_jpeg(), "image"),
        "png_16bit": (png16(), "image"),
        "palette_png_transparency": (palette_png_with_transparency(), "image"),
        "animated_webp": (animated_webp(), "image"),
        "huge_exif_jpeg": (huge_exif_jpeg(), "image"),
        "mp4_header": (mp4_header(), "video"),
        "webm_header": (webm_header(), "video"),
        "jpeg_header_only": (photo_jpeg[:200], "unreadable"),
        "gif_3m_tiny_sub_blocks": (gif_tiny_sub_blocks(), "unreadable"),
        "jpeg_20mb_fill_bytes": (jpeg_fill_bytes(), "unreadable"),
        "png_2m_empty_chunks": (png_many_chunks(), "unreadable"),
    }


def gif_tiny_sub_blocks(count: int = 3_000_000) -> bytes:
    """A GIF whose one frame's data is split into 1-byte sub-blocks (2 bytes each on disk): valid, but a
    block-by-block walk over it is millions of steps."""
    palette = np.zeros((256, 3), np.uint8)
    lzw = _lzw_uncompressed(bytes(16))
    data = b"".join(b"\x01" + lzw[i:i + 1] for i in range(len(lzw)))
    filler = b"\x01\x00" * count  # 1-byte sub-blocks of zeros after the real data: still one chain
    frame = (b"\x2c" + struct.pack("<HHHHB", 0, 0, 4, 4, 0) + b"\x08" + data + filler + b"\x00")
    return raw_gif(4, 4, palette, [frame])


def jpeg_fill_bytes(count: int = 20_000_000) -> bytes:
    """A JPEG whose first marker is preceded by 20 MB of 0xFF fill bytes: legal padding, but Pillow's
    marker parser steps over it one byte at a time in Python (~20 s here), so it is refused."""
    base = photo_bytes("coffee", size=64)
    return base[:2] + b"\xff" * count + base[2:]


def png_many_chunks(count: int = 2_000_000) -> bytes:
    """A PNG with two million empty private ancillary chunks before its image data."""
    base = photo_bytes("coffee", "png", size=32)
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    return base[:33] + empty * count + base[33:]
