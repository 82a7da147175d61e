"""scanners.fingerprint: the exact pixel key survives metadata stripping the way exiftool does it
(segments/chunks removed, image data untouched) and changes with one pixel; perceptual hashes survive
resizing and recompression and separate different photos; everything is deterministic."""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from scanners import fingerprint as fp_mod
from scanners.fingerprint import PDQ_AVAILABLE, PREPROCESSING_ID, exact_keys, fingerprint, hamming
from scanners.media import Limits, Unreadable, decode
from tests import hostile
from tests.images import encode, photo_bytes, photo_image, photo_names, synthetic_image_bytes

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description dc:creator="someone"/></rdf:RDF></x:xmpmeta>')


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0131] = "editor 1.0"  # Software
    return exif.tobytes()


# ------------------------------------------------------------------ strippers (what exiftool -all= does)
# Written here, independently of scanners.media's walkers: segment/chunk removal, no re-encoding.


def strip_jpeg(data: bytes) -> bytes:
    """Drop APP0-APP15 (except APP14 Adobe, which exiftool keeps: it affects colours) and COM segments
    before the first scan; copy the scan and everything after it unchanged."""
    out, pos = bytearray(data[:2]), 2
    while True:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segment = data[pos:pos + 2 + length]
        is_app = 0xE0 <= marker <= 0xEF
        keep = not (is_app or marker == 0xFE) or (marker == 0xEE and segment[4:9] == b"Adobe")
        if marker == 0xDA:
            return bytes(out) + data[pos:]
        if keep:
            out += segment
        pos += 2 + length


def strip_png(data: bytes) -> bytes:
    """Keep critical chunks and tRNS/APNG chunks; drop text, eXIf, iCCP, tIME, pHYs, gAMA..."""
    keep = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"acTL", b"fcTL", b"fdAT"}
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        ctype = data[pos + 4:pos + 8]
        if ctype in keep:
            out += data[pos:pos + 12 + length]
        pos += 12 + length
    return bytes(out)


def strip_webp(data: bytes) -> bytes:
    """Drop EXIF/XMP/ICCP chunks, clear their VP8X flags, fix the RIFF size."""
    out, pos = bytearray(), 12
    while pos < len(data):
        ctype = data[pos:pos + 4]
        length = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunk = bytearray(data[pos:pos + 8 + length + (length & 1)])
        if ctype == b"VP8X":
            chunk[8] &= ~(0x20 | 0x08 | 0x04) & 0xFF
        if ctype not in (b"EXIF", b"XMP ", b"ICCP"):
            out += chunk
        pos += 8 + length + (length & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(out)) + b"WEBP" + bytes(out)


def strip_gif(data: bytes) -> bytes:
    """Drop comment extensions and application extensions other than NETSCAPE (XMP lives in one)."""
    packed = data[10]
    pos = 13 + ((3 << ((packed & 7) + 1)) if packed & 0x80 else 0)
    out = bytearray(data[:pos])

    def after_sub_blocks(p: int) -> int:
        while data[p]:
            p += 1 + data[p]
        return p + 1

    while data[pos] != 0x3B:
        if data[pos] == 0x21:
            end = after_sub_blocks(pos + 2)
            label = data[pos + 1]
            if not (label == 0xFE or (label == 0xFF and data[pos + 3:pos + 14] != b"NETSCAPE2.0")):
                out += data[pos:end]
        else:  # image descriptor [+ local table] + LZW code size + data
            flags = data[pos + 9]
            start = pos + 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
            end = after_sub_blocks(start + 1)
            out += data[pos:end]
        pos = end
    return bytes(out) + b"\x3b"


def _with_metadata(fmt: str) -> bytes:
    im = photo_image("chelsea")
    if fmt in ("jpeg", "jpeg-progressive"):
        return encode(im, "jpeg", exif=_exif(), icc_profile=ICC, comment=b"a comment", xmp=XMP,
                      progressive=fmt == "jpeg-progressive", optimize=True)
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "a comment")
        info.add_text("XML:com.adobe.xmp", XMP.decode(), zip=True)
        info.add_itxt("Description", "über", lang="de")
        return encode(im, "png", pnginfo=info, exif=_exif(), icc_profile=ICC, dpi=(300, 300))
    if fmt == "webp":
        return encode(im, "webp", exif=_exif(), icc_profile=ICC, xmp=XMP)
    if fmt == "gif":
        return encode(im, "gif", comment=b"a comment in the gif")
    raise AssertionError(fmt)


_STRIP = {"jpeg": strip_jpeg, "jpeg-progressive": strip_jpeg, "png": strip_png, "webp": strip_webp,
          "gif": strip_gif}


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("fmt", ["jpeg", "jpeg-progressive", "png", "webp", "gif"])
def test_metadata_stripping_keeps_pixel_key(fmt: str) -> None:
    original = _with_metadata(fmt)
    stripped = _STRIP[fmt](original)
    assert len(stripped) < len(original)
    assert np.array_equal(_pixels(original), _pixels(stripped))  # the stripper changed no pixel
    a, b = fingerprint(original), fingerprint(stripped)
    assert a.sha256 != b.sha256
    assert a.pixel_sha256 == b.pixel_sha256
    assert exact_keys(original)[1] == exact_keys(stripped)[1] == a.pixel_sha256
    # Nothing pixel-related changed, so neither did the perceptual hashes (pinned preprocessing).
    assert (a.phash64, a.pdq256) == (b.phash64, b.pdq256)


def test_reencode_without_metadata_is_not_stripping() -> None:
    """Re-saving with Pillow (what a careless test would call "stripping") re-encodes the JPEG: that is a
    different image to an exact key, and only the perceptual hashes still match."""
    original = _with_metadata("jpeg")
    resaved = encode(Image.open(io.BytesIO(original)), "jpeg", quality=90)
    a, b = fingerprint(original), fingerprint(resaved)
    assert a.pixel_sha256 != b.pixel_sha256
    assert hamming(a.phash64, b.phash64) <= 4


def _one_pixel_pair(fmt: str) -> tuple[bytes, bytes]:
    im = photo_image("coffee", 200)
    changed = im.copy()
    r, g, b = changed.getpixel((50, 60))
    changed.putpixel((50, 60), (255 - r, 255 - g, 255 - b))
    if fmt == "gif":  # change one palette index directly, so quantisation cannot hide or spread it
        p = im.quantize(128)
        q = p.copy()
        q.putpixel((50, 60), (p.getpixel((50, 60)) + 64) % 128)
        return encode(p, "gif"), encode(q, "gif")
    kwargs = {"lossless": True} if fmt == "webp" else {}
    return encode(im, fmt, **kwargs), encode(changed, fmt, **kwargs)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif", "bmp", "tiff"])
def test_one_pixel_changes_pixel_key(fmt: str) -> None:
    a, b = _one_pixel_pair(fmt)
    assert not np.array_equal(_pixels(a), _pixels(b))
    assert exact_keys(a)[1] != exact_keys(b)[1]


def test_decoded_key_for_other_formats_ignores_metadata() -> None:
    """BMP/TIFF/AVIF have no structure walker: their key hashes decoded pixels, so tags do not count."""
    im = photo_image("rocket", 200)
    plain = encode(im, "tiff")
    tagged = encode(im, "tiff", tiffinfo={270: "a description", 305: "some software"}, dpi=(72, 72))
    assert plain != tagged
    assert exact_keys(plain)[1] == exact_keys(tagged)[1]
    # Keys of different methods never collide: the same pixels as PNG (structure key) and TIFF differ.
    assert exact_keys(encode(im, "png"))[1] != exact_keys(plain)[1]


def test_png_idat_rechunking_keeps_key() -> None:
    data = photo_bytes("astronaut", "png", size=128)
    pos, chunks = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    idat = b"".join(body for ctype, body in chunks if ctype == b"IDAT")

    def chunk(ctype: bytes, body: bytes) -> bytes:
        import zlib
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    rechunked = data[:8] + b"".join(chunk(t, b) for t, b in chunks if t not in (b"IDAT", b"IEND"))
    rechunked += b"".join(chunk(b"IDAT", idat[i:i + 1000]) for i in range(0, len(idat), 1000))
    rechunked += chunk(b"IEND", b"")
    assert rechunked != data and np.array_equal(_pixels(rechunked), _pixels(data))
    assert exact_keys(rechunked)[1] == exact_keys(data)[1]


def _variants(name: str) -> dict[str, bytes]:
    im = photo_image(name)
    w, h = im.size
    return {
        "half": encode(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "jpeg", 85),
        "double": encode(im.resize((w * 2, h * 2), Image.Resampling.BICUBIC), "jpeg", 90),
        "q40": encode(im, "jpeg", 40),
        "webp": encode(im, "webp", 70),
        "png": encode(im, "png"),
    }


@pytest.mark.parametrize("name", photo_names())
def test_near_duplicates_are_near(name: str) -> None:
    base = fingerprint(photo_bytes(name, "jpeg", quality=90))
    for variant, data in _variants(name).items():
        other = fingerprint(data)
        assert other.pixel_sha256 != base.pixel_sha256, variant
        assert hamming(base.phash64, other.phash64) <= 8, (variant, hamming(base.phash64, other.phash64))
        if PDQ_AVAILABLE:
            assert hamming(base.pdq256, other.pdq256) <= 31, (variant, hamming(base.pdq256, other.pdq256))


def test_different_photos_are_far() -> None:
    prints = {name: fingerprint(photo_bytes(name)) for name in photo_names()}
    for a, b in itertools.combinations(prints, 2):
        assert hamming(prints[a].phash64, prints[b].phash64) > 16, (a, b)
        if PDQ_AVAILABLE:
            assert hamming(prints[a].pdq256, prints[b].pdq256) > 31, (a, b)


def test_synthetic_images_are_distinct() -> None:
    prints = [fingerprint(synthetic_image_bytes(seed)) for seed in range(24)]
    assert len({p.pixel_sha256 for p in prints}) == 24
    assert min(hamming(a.phash64, b.phash64) for a, b in itertools.combinations(prints, 2)) > 8


def test_deterministic_and_decoded_once() -> None:
    data = photo_bytes("retina", "jpeg", size=(3000, 2000))
    alone = fingerprint(data)
    assert fingerprint(data) == alone
    assert fingerprint(data, decode(data)) == alone
    # A decode under other limits (a smaller classifier side) must not change the pinned hashes.
    assert fingerprint(data, decode(data, Limits(max_side=224))) == alone
    assert alone.preprocessing == PREPROCESSING_ID
    assert alone.sha256 == hashlib.sha256(data).hexdigest()
    assert len(alone.phash64) == 16 and len(alone.pixel_sha256) == 64
    assert alone.pdq256 is None or len(alone.pdq256) == 64
    assert fingerprint(data, pdq=False).pdq256 is None


def test_animated_fingerprint_uses_first_frame() -> None:
    data = hostile.middle_frame_gif()
    fp = fingerprint(data, decode(data))
    assert fp == fingerprint(data)
    assert hamming(fp.phash64, fingerprint(photo_bytes("astronaut", "png", size=(160, 160))).phash64) <= 8


def test_exact_keys_do_not_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    datas = {fmt: photo_bytes("coffee", fmt) for fmt in ("jpeg", "png", "webp", "gif")}
    expected = {fmt: fingerprint(d).pixel_sha256 for fmt, d in datas.items()}

    def no_decoding(*args, **kwargs):
        raise AssertionError("exact_keys decoded an image")

    monkeypatch.setattr(Image, "open", no_decoding)
    for fmt, data in datas.items():
        assert exact_keys(data) == (hashlib.sha256(data).hexdigest(), expected[fmt])


def test_non_images_have_byte_key_only() -> None:
    for data in (b"", b"not an image at all", hostile.mp4_header(), b"<svg/>"):
        sha, pixel = exact_keys(data)
        assert sha == hashlib.sha256(data).hexdigest() and pixel is None
    media = decode(hostile.mp4_header())
    with pytest.raises(Unreadable):
        fingerprint(hostile.mp4_header(), media)


def test_pdq_bit_order_matches_pytx_convention() -> None:
    """pytx writes bit 0 of pdqhash.compute as the most significant bit of the hex string."""
    if not PDQ_AVAILABLE:
        pytest.skip("pdqhash not installed")  # pragma: no cover - installed in this project's venv
    import pdqhash

    frame = decode(photo_bytes("astronaut")).frames[0]
    square = frame.resize((fp_mod.PDQ_SIDE, fp_mod.PDQ_SIDE), Image.Resampling.BICUBIC)
    bits, _q = pdqhash.compute(np.asarray(square))
    as_pytx = "{:064x}".format(int("".join(str(int(b)) for b in bits), 2))
    assert fp_mod.pdq256(frame) == as_pytx


def test_hamming() -> None:
    assert hamming("0" * 16, "0" * 16) == 0
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    with pytest.raises(ValueError):
        hamming("00", "000")


def test_md5_is_of_the_bytes_as_received() -> None:
    """md5 is the key hash lists carry: it must be the md5 of exactly the bytes we were given."""
    data = photo_bytes("coffee")
    assert fingerprint(data, decode(data)).md5 == hashlib.md5(data).hexdigest()


def test_the_first_phash_imports_nothing() -> None:
    """imagehash.phash imports scipy.fftpack on its first call (hundreds of ms in a fresh process, which a
    serving node paid on its first new image while other requests waited); the module loads it up front."""
    code = ("import json, sys, scanners.fingerprint; from tests.images import synthetic_image; "
            "before = set(sys.modules); scanners.fingerprint.phash64(synthetic_image(1)); "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert [m for m in json.loads(out.stdout) if m.startswith("scipy")] == []
