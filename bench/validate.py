"""Throughput and latency of the pict-rs endpoint, the way pict-rs calls it, in one run.

The server is `verdict-node serve` in its own process (tiny CLIP model); this process is the load
generator: CONCURRENCY clients POST raw images with Content-Type, like pict-rs. Three phases:

  baseline  POSTs refused at the token check (401): the HTTP floor of this machine, right now;
  known     images seen before (exact sha256 hits): the path that dominates on a busy instance;
  unknown   new images each time: decode + fingerprint + inference with the tiny model.

Prints requests/s, p50/p99 (ms) and each phase's ratio to the baseline (the machine is shared and noisy:
ratios travel better than absolute figures).

    .venv/bin/python bench/validate.py [--seconds 10] [--concurrency 32] [--images 200]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.images import photo_names, synthetic_image_bytes, photo_bytes  # noqa: E402
from tests.node_helpers import make_data_dir, serve_process, tiny_clip_spec, validate_url  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far (from /proc): what a request costs the server, even when
    other work on the machine stretches wall-clock figures."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def load(url: str, bodies: list[bytes], seconds: float, concurrency: int, expect: set[int],
               max_requests: int | None = None) -> dict:
    """`concurrency` clients, each posting the next body as soon as its previous answer arrived."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def client() -> None:
            nonlocal next_index
            while time.perf_counter() < stop_at and (max_requests is None or next_index < max_requests):
                body = bodies[next_index % len(bodies)]
                next_index += 1
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "image/jpeg"}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    unexpected = {s: n for s, n in statuses.items() if s not in expect}
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "statuses": statuses, "unexpected": unexpected}


def report(name: str, r: dict, baseline: dict | None) -> None:
    ratio = f"  ({r['rps'] / baseline['rps']:.2f}x baseline rps)" if baseline else ""
    print(f"{name:8s} {r['requests']:7d} req  {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
          f"p99 {r['p99_ms']:7.2f} ms  server CPU {r['server_cpu_us']:7.0f} us/req  statuses {r['statuses']}{ratio}")


async def run(args: argparse.Namespace, url: str, known: list[bytes], unknown: list[bytes], pid: int) -> int:
    # Teach the node the known images (each classified once), then measure.
    await load(url, known, 600, 8, {200, 406}, max_requests=len(known))
    bad_url = url.rsplit("/", 1)[0] + "/not-the-token-0123456789"

    async def phase(target: str, bodies: list[bytes], expect: set[int], max_requests: int | None = None) -> dict:
        before = cpu_seconds(pid)
        result = await load(target, bodies, args.seconds, args.concurrency, expect, max_requests)
        result["server_cpu_us"] = (cpu_seconds(pid) - before) / max(1, result["requests"]) * 1e6
        return result

    baseline = await phase(bad_url, known, {401})
    known_r = await phase(url, known, {200, 406})
    unknown_r = await phase(url, unknown, {200, 406}, len(unknown))
    print(f"verdict-node pict-rs endpoint, {args.concurrency} concurrent clients, {args.seconds:g} s per phase")
    report("baseline", baseline, None)
    report("known", known_r, baseline)
    report("unknown", unknown_r, baseline)
    problems = [n for n, r in (("baseline", baseline), ("known", known_r), ("unknown", unknown_r)) if r["unexpected"]]
    if problems:
        print(f"unexpected statuses in {problems}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", type=int, default=200, help="distinct known images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        config = make_data_dir(tmp_path / "data", model=tiny_clip_spec(tmp_path))
        # Known set: real photos plus synthetic ones, ~20-60 KB JPEGs like pict-rs thumbnails and uploads.
        known = [photo_bytes(n, size=512) for n in photo_names()]
        known += [synthetic_image_bytes(i, size=(512, 384)) for i in range(max(0, args.images - len(known)))]
        unknown = [synthetic_image_bytes(100_000 + i, size=(512, 384)) for i in range(1500)]
        print(f"known image sizes: {min(map(len, known))}-{max(map(len, known))} bytes; server: verdict-node serve "
              f"(tiny CLIP) in a subprocess")
        with serve_process(config, timeout=300) as (proc, base):
            status = asyncio.run(run(args, validate_url(config, base), known, unknown, proc.pid))
        load_avg = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPUs, load average {load_avg:.1f} (other work shares these cores)")
        return status


if __name__ == "__main__":
    sys.exit(main())
