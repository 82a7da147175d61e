"""Fingerprinting speed: ours (decode once in JPEG draft mode, share the frame between classification
and hashes, exact keys from the container structure) against the naive way (full-size decode for
``imagehash.phash(Image.open(f))`` plus ``hashlib.sha256``), in one process, interleaved, on 1 MP and
12 MP JPEGs built from scikit-image photos (upscaled). The machine is shared and noisy: the ratios
measured side by side are the figure to read, the absolute times are context.

    .venv/bin/python -m bench.fingerprint [--rounds 5] [--photos 4]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import time
from typing import Callable

import imagehash
from PIL import Image

from scanners.fingerprint import PDQ_AVAILABLE, fingerprint
from scanners.media import decode
from tests.images import photo_bytes, photo_names

SIZES = {"1 MP": (1155, 866), "12 MP": (4000, 3000)}


def naive(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), str(imagehash.phash(Image.open(io.BytesIO(data))))


def ours(data: bytes) -> object:
    return fingerprint(data, decode(data), pdq=False)


def ours_pdq(data: bytes) -> object:
    return fingerprint(data, decode(data), pdq=True)


def _time(fn: Callable[[bytes], object], data: bytes) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


def run(rounds: int, photos: int) -> list[tuple[str, str, float, float]]:
    methods = {"naive sha256+phash(full decode)": naive, "ours sha256+pixel+phash64": ours}
    if PDQ_AVAILABLE:
        methods["ours + pdq256"] = ours_pdq
    rows = []
    for label, size in SIZES.items():
        images = [photo_bytes(name, "jpeg", size=size, quality=90) for name in photo_names()[:photos]]
        times: dict[str, list[float]] = {m: [] for m in methods}
        for data in images:  # warm-up (imports, caches)
            for fn in methods.values():
                fn(data)
        for _ in range(rounds):
            for data in images:
                for name, fn in methods.items():  # interleaved: noise hits all methods alike
                    times[name].append(_time(fn, data))
        base = statistics.median(times["naive sha256+phash(full decode)"])
        for name in methods:
            med = statistics.median(times[name])
            rows.append((label, name, med * 1000, base / med))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=4)
    args = parser.parse_args()
    rows = run(args.rounds, args.photos)
    print(f"{'image':<7} {'method':<34} {'median ms/img':>14} {'speed-up vs naive':>18}")
    for label, name, ms, ratio in rows:
        print(f"{label:<7} {name:<34} {ms:>14.1f} {ratio:>17.2f}x")


if __name__ == "__main__":
    main()
