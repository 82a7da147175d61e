"""Remote GPU workers: what the worker path costs, measured in one run against local inference.

    .venv/bin/python bench/workers.py            # full run (~3 min on 2 CPU cores)
    .venv/bin/python bench/workers.py --quick    # smaller counts, for a smoke test

1. Frame shipping: the cost of reducing one decoded photo to the model's input (resize + centre crop) and of
   each lossless encoding, per frame, and the bytes on the wire.
2. Overhead at batch size 32 on a model heavy enough for the comparison to mean something (ViT-B-32 with
   random weights, CPU): the same images through the node's local BatchingClassifier and through one
   `verdict-node worker` subprocess on the same machine (lease, encode, HTTP on loopback, decode, post).
3. Throughput of the worker path with one and with two workers (tiny CLIP), against local inference on the
   same tiny model.

The machine is shared and noisy: each worker-path run is paired with a local run just before it, and the
ratio reported is the median over the pairs; absolute figures are the best run of each.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from node.workers.wire import ENCODINGS, Geometry, decode_frame, encode_frame, reduce_frame  # noqa: E402
from node.workers.hub import WorkerHub  # noqa: E402
from node.workers.registry import WorkerRegistry  # noqa: E402
from tests.images import photo_image, photo_names  # noqa: E402
from tests.node_helpers import make_data_dir, running_node, tiny_clip_spec  # noqa: E402

HEAVY_SPEC = "ViT-B-32/random"


def sample_frames(count: int, size: tuple[int, int] = (640, 480)) -> list[Image.Image]:
    """Real photos at a typical upload size, each made distinct (the node's queue does not dedupe, but
    distinct pixels keep the comparison honest)."""
    names = photo_names()
    frames = []
    for i in range(count):
        base = photo_image(names[i % len(names)]).convert("RGB").resize(size)
        frames.append(base.rotate(i * 7 % 360) if i >= len(names) else base)
    return frames


def bench_encoding(frames: list[Image.Image], geometry: Geometry) -> None:
    print(f"\n1. Frame shipping, per frame ({frames[0].size[0]}x{frames[0].size[1]} photo -> "
          f"{geometry.size}x{geometry.size}), median of {len(frames)}:")
    reduce_ms = []
    reduced = []
    for frame in frames:
        t = time.perf_counter()
        reduced.append(reduce_frame(frame, geometry))
        reduce_ms.append((time.perf_counter() - t) * 1000)
    print(f"   resize + centre crop (node, also done by local inference): {statistics.median(reduce_ms):6.2f} ms")
    for encoding in ENCODINGS:
        enc_ms, dec_ms, sizes = [], [], []
        for frame in reduced:
            t = time.perf_counter()
            meta, data = encode_frame(frame, encoding)
            enc_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            decode_frame(meta, data)
            dec_ms.append((time.perf_counter() - t) * 1000)
            sizes.append(len(data))
        print(f"   {encoding:<5} encode {statistics.median(enc_ms):6.2f} ms, decode {statistics.median(dec_ms):6.2f} ms, "
              f"{statistics.median(sizes) / 1024:7.1f} KiB on the wire")


def start_worker(base: str, token: str, spec: str, batch: int, encoding: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VERDICT_NODE_WORKER_TOKEN": token}
    return subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--node", base, "--model", spec,
                             "--device", "cpu", "--batch-size", str(batch), "--encoding", encoding,
                             "--stats-interval", "3600"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


async def wait_connected(hub, names: set[str], procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (names <= {n for n, p in hub.presence.items() if p.model is not None}):
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("workers did not connect")
        await asyncio.sleep(0.1)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) of this process and of the given child processes so far.
    Unlike wall time it hardly moves when other jobs load the shared machine."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def timed_burst(backend, frames: list[Image.Image], pids: list[int] = ()) -> tuple[float, float, list]:
    """All images at once, as a burst of uploads or a sweep would submit them: (wall seconds until the last,
    CPU seconds spent by this process and ``pids``, results)."""
    cpu = cpu_seconds(list(pids))
    t = time.perf_counter()
    results = await asyncio.gather(*(backend.classify_frames([frame]) for frame in frames))
    return time.perf_counter() - t, cpu_seconds(list(pids)) - cpu, results


async def compare(workdir: Path, spec: str, frames: list[Image.Image], batch: int, worker_counts: list[int],
                  encoding: str, rounds: int, label: str) -> dict:
    """Local BatchingClassifier vs the worker path with each worker count, alternating, best of rounds."""
    from scanners.batching import BatchingClassifier
    from scanners.models import load_classifier

    config = make_data_dir(workdir / f"node-{label}", model="none",
                           workers={"enabled": True, "model": spec, "max_queue": 100_000,
                                    "lease_timeout_s": 120, "stale_after_s": 60})
    local = BatchingClassifier(load_classifier(spec, device="cpu", batch_size=batch), max_batch=batch,
                               max_wait_ms=20, max_queue=100_000)
    best: dict[str, float] = {}
    ratios: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    scores: dict[str, list] = {}
    async with running_node(config) as (node, base):
        hub = node.features.get(WorkerHub)
        registry = WorkerRegistry(node.store)
        procs: list[subprocess.Popen] = []
        try:
            warm = False
            for count in worker_counts:
                # Workers are only ever added: a parked (stopped) worker would still take leases in its
                # open long poll and stall them until the lease timeout.
                while len(procs) < count:
                    name = f"{label}-w{len(procs)}"
                    procs.append(start_worker(base, registry.add(name), spec, batch, encoding,
                                              workdir / f"{name}.log"))
                await wait_connected(hub, {f"{label}-w{i}" for i in range(count)}, procs)
                if not warm:
                    await timed_burst(node.backend, frames[:batch])
                    await timed_burst(local, frames[:batch])
                    warm = True
                key = f"{count} worker" + ("s" if count > 1 else "")
                pids = [proc.pid for proc in procs[:count]]
                for _ in range(rounds):
                    # Paired: local right before the worker path, so a load swing on the shared machine
                    # moves both; the ratio reported is the median of the pairs.
                    local_seconds, local_cpu, results = await timed_burst(local, frames)
                    best["local"] = min(best.get("local", float("inf")), local_seconds)
                    cpu["local"] = min(cpu.get("local", float("inf")), local_cpu)
                    scores["local"] = results
                    seconds, used, results = await timed_burst(node.backend, frames, pids)
                    best[key] = min(best.get(key, float("inf")), seconds)
                    cpu[key] = min(cpu.get(key, float("inf")), used)
                    scores[key] = results
                    ratios.setdefault(key, []).append(seconds / local_seconds)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await local.close()
    diffs = [abs(a.scores[k] - b.scores[k]) for key in scores if key != "local"
             for a, b in zip(scores["local"], scores[key]) for k in a.scores]
    return {"best": best, "ratios": ratios, "cpu": cpu, "max_score_diff": max(diffs) if diffs else 0.0}


def report(title: str, n: int, result: dict) -> None:
    best, cpu = result["best"], result["cpu"]
    print(f"\n{title}")
    for key, seconds in best.items():
        line = (f"   {key:<10} best {seconds:7.2f} s for {n} images = {n / seconds:7.1f} images/s; "
                f"CPU {cpu[key] / n * 1000:7.1f} ms/image")
        if key != "local":
            pairs = result["ratios"][key]
            line += (f"\n   {'':<10} vs local: best-to-best {seconds / best['local']:.2f}x, median of "
                     f"{len(pairs)} paired runs {statistics.median(pairs):.2f}x ("
                     + ", ".join(f"{r:.2f}" for r in pairs) + f"), CPU {cpu[key] / cpu['local']:.2f}x")
        print(line)
    print(f"   largest score difference worker vs local: {result['max_score_diff']:.2e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a measurement")
    parser.add_argument("--heavy-images", type=int, default=64)
    parser.add_argument("--tiny-images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--encodings", default="png,rgb",
                        help="frame encodings to compare in the overhead section (comma-separated)")
    args = parser.parse_args()
    encodings = [e for e in args.encodings.split(",") if e]
    if any(e not in ENCODINGS for e in encodings):
        parser.error(f"--encodings: choose from {', '.join(ENCODINGS)}")
    if args.quick:
        args.heavy_images, args.tiny_images, args.rounds = 32, 96, 1
    print(f"bench/workers.py: {os.cpu_count()} CPUs; node and workers share them (a real worker has its own machine)")
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        heavy_frames = sample_frames(args.heavy_images)
        bench_encoding(heavy_frames[:32], Geometry(224))
        for encoding in encodings:
            heavy = asyncio.run(compare(workdir, HEAVY_SPEC, heavy_frames, 32, [1], encoding, args.rounds,
                                        f"heavy-{encoding}"))
            report(f"2. Overhead of the worker path, {HEAVY_SPEC} on CPU, batch size 32, frames as {encoding} "
                   f"(target: under +15%):", len(heavy_frames), heavy)
        tiny_spec = tiny_clip_spec(workdir)
        tiny_frames = sample_frames(args.tiny_images, (320, 240))
        tiny = asyncio.run(compare(workdir, tiny_spec, tiny_frames, 32, [1, 2], encodings[0], args.rounds, "tiny"))
        report(f"3. Throughput of the worker path, tiny CLIP on CPU, batch size 32, frames as {encodings[0]} "
               f"(one vs two workers):", len(tiny_frames), tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
