"""A second sweep of a large, already-known local tree against a plain `os.walk` + `os.stat` of the same
tree, in the same process (the machine is noisy: compare ratios, and take the best of a few rounds).

    .venv/bin/python bench/sweep.py [--files 100000] [--rounds 3]

The tree is pict-rs-like (two levels of directories, tiny extension-less files). The store's item table is
seeded through SweepRecords with each file's stat (what a first sweep records), so the measured sweep is
exactly the "nothing new" case: listing + known-check + run bookkeeping. Target: within 3x of the walk and
at least 20,000 files/s.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.sweeps.engine import Sweep, SweepOptions  # noqa: E402
from node.sweeps.records import ItemRecord, SweepRecords, source_identity  # noqa: E402


def make_tree(root: Path, files: int, per_dir: int = 500) -> None:
    payload = b"\xff\xd8tiny"
    for i in range(files):
        d = root / f"{(i // per_dir) // 16:02x}" / f"{(i // per_dir) % 16:02x}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{i:08x}-0000-4000-8000-{i:012x}", "wb") as fh:
            fh.write(payload)


def walk_and_stat(root: Path) -> int:
    n = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(dirpath, name))
            n += 1
    return n


def seed(records: SweepRecords, root: Path) -> int:
    source = source_identity(str(root))
    now = time.time()
    rows = []
    for dirpath, _dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            key = name if rel == "." else f"{rel}/{name}"
            rows.append(ItemRecord(source, key, st.st_size, st.st_mtime, None, None, now, "allow", "cache",
                                   "seeded by bench/sweep.py"))
    records.commit(rows)
    return len(rows)


async def sweep_once(node, root: Path) -> tuple[float, dict]:
    from scanners.sources import open_source

    source = open_source(str(root))
    sweep = Sweep(node, source, str(root), SweepOptions(mode="all", workers=4))
    started = time.perf_counter()
    stats = await sweep.run()
    elapsed = time.perf_counter() - started
    await source.close()
    return elapsed, stats.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from node.runtime import Node
    from tests.node_helpers import make_data_dir

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        root = work / "files"
        t = time.perf_counter()
        make_tree(root, args.files)
        print(f"tree: {args.files} files in {time.perf_counter() - t:.1f} s")
        config = make_data_dir(work / "data", model="none")
        node = Node.open(config, load_model=False)
        t = time.perf_counter()
        seeded = seed(SweepRecords(node.store), root)
        print(f"seeded {seeded} item rows in {time.perf_counter() - t:.1f} s")

        walks, sweeps = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            n = walk_and_stat(root)
            walks.append(time.perf_counter() - t)
            assert n == args.files
            elapsed, stats = asyncio.run(sweep_once(node, root))
            sweeps.append(elapsed)
            assert stats["listed"] == args.files and stats["known"] == args.files and stats["decided"] == 0, stats
        walk, sweep = min(walks), min(sweeps)
        print(f"os.walk + stat:       {walk:6.3f} s  {args.files / walk:10,.0f} files/s  (best of {args.rounds})")
        print(f"second sweep (known): {sweep:6.3f} s  {args.files / sweep:10,.0f} files/s  (best of {args.rounds})")
        print(f"ratio sweep / walk:   {sweep / walk:6.2f}x  (target <= 3x and >= 20,000 files/s)")
        asyncio.run(node.close())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
