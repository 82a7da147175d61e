"""Perceptual hashes forged the way an attacker forges them: a faint low-frequency pattern added to any
photo sets the signs of the 8x8 DCT coefficients that a 64-bit pHash keeps, so the photo carries the pHash of
an image it does not resemble. PDQ (256 bits, its own downsampling) is left far apart: the picture is
plainly another one."""
from __future__ import annotations

import numpy as np
import scipy.fftpack as fft
from PIL import Image

from scanners.fingerprint import fingerprint, hamming
from scanners.media import decode
from tests.images import encode


def _phash_input(data: bytes) -> np.ndarray:
    """The 32x32 grey pixels pHash reads, through the node's own preprocessing (scanners.fingerprint)."""
    grey = decode(data).frames[0].convert("L")
    factor = min(grey.size) // 128
    if factor > 1:
        grey = grey.reduce(factor)
    return np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=float)


def forge_phash(photo: Image.Image, target: str, *, rounds: int = 20, margin: float = 40.0) -> bytes:
    """A JPEG of ``photo`` whose pHash is ``target`` (16 hex digits): each round measures the coefficients
    and pushes each one to the side of the median its target bit asks for, through a smooth (bicubic,
    low-frequency) pattern over the whole picture."""
    base = np.asarray(photo.convert("RGB"), dtype=float)
    height, width = base.shape[:2]
    bits = np.array([c == "1" for c in bin(int(target, 16))[2:].zfill(64)]).reshape(8, 8)
    pattern = np.zeros((32, 32))
    for _ in range(rounds):
        smooth = np.asarray(Image.fromarray(pattern.astype(np.float32), mode="F")
                            .resize((width, height), Image.Resampling.BICUBIC))
        data = encode(Image.fromarray(np.clip(base + smooth[..., None], 0, 255).astype(np.uint8)), "jpeg",
                      quality=95)
        if hamming(fingerprint(data, pdq=False).phash64, target) == 0:
            return data
        coefficients = fft.dct(fft.dct(_phash_input(data), axis=0), axis=1)[:8, :8]
        median = np.median(coefficients)
        wanted = coefficients.copy()
        wanted[bits & (coefficients < median + margin)] = median + margin
        wanted[~bits & (coefficients > median - margin)] = median - margin
        change = np.zeros((32, 32))
        change[:8, :8] = wanted - coefficients
        pattern += fft.idct(fft.idct(change, axis=0), axis=1) / (2 * 32) ** 2  # scipy's unnormalised inverse
    raise AssertionError(f"no pHash collision with {target} in {rounds} rounds")
