"""How much of an image the review console's blurred preview still shows: the fine detail (mean absolute
Laplacian, in grey) of the served preview against the original scaled to the same size, for each bundled
photo, and the time to draw one. The ratio is the figure (the tests hold a different line: under a tenth
of the fine detail of the original at full size).

    .venv/bin/python -m bench.previews [--side 160]
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

from PIL import Image

from node.admin.previews import blurred_png
from scanners.media import DEFAULT_LIMITS
from tests.images import fine_detail, photo_bytes, photo_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=160, help="admin.preview_side (default 160)")
    args = parser.parse_args()
    ratios, times = [], []
    for name in photo_names():
        original = photo_bytes(name, "png")
        started = time.perf_counter()
        preview = blurred_png(original, DEFAULT_LIMITS, args.side)
        times.append((time.perf_counter() - started) * 1000)
        size = Image.open(io.BytesIO(preview)).size
        kept, full = fine_detail(preview), fine_detail(original, size)
        ratios.append(kept / full)
        print(f"{name:22s} preview {size[0]}x{size[1]}: fine detail {kept:6.2f} vs original at that size "
              f"{full:6.2f} = {kept / full:6.1%}  ({times[-1]:.0f} ms)")
    print(f"fine detail kept: median {statistics.median(ratios):.1%}, max {max(ratios):.1%}; "
          f"median {statistics.median(times):.0f} ms a preview")


if __name__ == "__main__":
    main()
