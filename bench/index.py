"""Benchmark node.index.HammingIndex against a numpy full scan measured in the same process.

    .venv/bin/python bench/index.py                 # 1M and 10M pHash-64 (r=8), 1M PDQ-256 (r=31)
    .venv/bin/python bench/index.py --sizes 1000000 --no-pdq --alternatives

Single-threaded on purpose (the node answers one query on one core): the thread variables are set before numpy
loads. Half the queries have a planted neighbour (a stored code with 0..radius random bit flips), half are
random codes. Query timings include hex parsing and building the result list, as the node pays them: wall
clock, and the thread's CPU time (which leaves out the time the OS gave to other processes, so it shows the
cost of a query on a shared, noisy machine). Read the ratio to the scan, taken in the same run, as well as the
absolute figures.
Every index answer that is also computed by the scan is checked against it.
"""
from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.index import HammingIndex  # noqa: E402


def rss_bytes() -> int:
    """Resident set size after handing freed heap pages back (glibc keeps freed temporaries of the build
    otherwise, which would be counted against the index)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def to_hex_list(codes: np.ndarray) -> list[str]:
    """uint64[N, words] -> N hex strings, without a Python loop per code."""
    width = codes.shape[1] * 16
    text = codes.astype(">u8").tobytes().hex()
    return [text[i:i + width] for i in range(0, len(text), width)]


def planted_queries(rng: np.random.Generator, codes: np.ndarray, count: int, radius: int) -> np.ndarray:
    """Half: a stored code with 0..radius random flipped bits; half: uniform random codes."""
    words = codes.shape[1]
    queries = rng.integers(0, 2**64, size=(count, words), dtype=np.uint64, endpoint=False)
    half = count // 2
    queries[:half] = codes[rng.integers(0, len(codes), size=half)]
    for i in range(half):
        for bit in rng.choice(words * 64, size=int(rng.integers(0, radius + 1)), replace=False):
            queries[i, bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
    return queries


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ms = np.array(samples_ns) / 1e6
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


@dataclass
class Row:
    label: str
    build_s: float | None
    bytes_per_entry_arrays: float | None
    bytes_per_entry_rss: float | None
    p50_ms: float
    p99_ms: float
    cpu_p50_ms: float
    cpu_p99_ms: float
    queries: int
    found: str


def scan_search(db: np.ndarray, query: np.ndarray, radius: int) -> np.ndarray:
    if db.shape[1] == 1:
        distances = np.bitwise_count(db[:, 0] ^ query[0])
    else:
        distances = np.bitwise_count(db ^ query).sum(axis=1)
    return np.flatnonzero(distances <= radius)


def bench_one(bits: int, n: int, radius: int, index_queries: int, scan_queries: int, chunks_options: list[int | None],
              update_lines: list[str], updates: int = 0, seed: int = 7) -> list[Row]:
    rng = np.random.default_rng(seed)
    words = bits // 64
    codes = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64, endpoint=False)
    codes_hex = to_hex_list(codes)
    queries = planted_queries(rng, codes, max(index_queries, scan_queries), radius)
    query_hex = to_hex_list(queries)
    rows: list[Row] = []

    # baseline: numpy scan over a plain array (ids = positions)
    samples, cpu_samples, expected = [], [], {}
    for i in range(scan_queries):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        q = np.frombuffer(bytes.fromhex(query_hex[i]), dtype=">u8").astype(np.uint64)
        hits = scan_search(codes, q, radius)
        samples.append(time.perf_counter_ns() - t0)
        cpu_samples.append(time.thread_time_ns() - c0)
        expected[i] = set(hits.tolist())
    p50, p99 = percentiles(samples)
    cpu50, cpu99 = percentiles(cpu_samples)
    found = sum(1 for i in range(scan_queries // 2) if expected[i])
    rows.append(Row(f"{bits}-bit N={n:,} r={radius} numpy scan", None, codes.nbytes / n, None, p50, p99,
                    cpu50, cpu99, scan_queries, f"{found}/{scan_queries // 2} planted"))

    for chunks in chunks_options:
        gc.collect()
        rss_before = rss_bytes()
        t0 = time.perf_counter()
        index = HammingIndex(bits, chunks=chunks)
        index.add_many(np.arange(n, dtype=np.int64), codes_hex)
        build_s = time.perf_counter() - t0
        gc.collect()
        rss_delta = rss_bytes() - rss_before
        samples, cpu_samples = [], []
        mismatches = 0
        found = 0
        for i in range(index_queries):
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            result = index.search(query_hex[i], radius)
            samples.append(time.perf_counter_ns() - t0)
            cpu_samples.append(time.thread_time_ns() - c0)
            if i < index_queries // 2 and result:
                found += 1
            if i in expected and {ref for ref, _ in result} != expected[i]:
                mismatches += 1
        if mismatches:
            raise SystemExit(f"index disagrees with the scan on {mismatches} queries ({bits} bits, chunks={chunks})")
        p50, p99 = percentiles(samples)
        cpu50, cpu99 = percentiles(cpu_samples)
        layout = chunks if chunks is not None else f"{len(index._chunks)} (default)"
        rows.append(Row(f"{bits}-bit N={n:,} r={radius} index, chunks={layout}", build_s, index.nbytes / n,
                        rss_delta / n, p50, p99, cpu50, cpu99, index_queries, f"{found}/{index_queries // 2} planted"))
        if chunks is None and updates:
            update_lines.append(measure_updates(index, rng, bits, n, updates))
        del index
        gc.collect()
    return rows


def measure_updates(index: HammingIndex, rng: np.random.Generator, bits: int, n: int, count: int) -> str:
    """Live updates after the load: adds (some trigger a merge of the delta buffer) and removals."""
    new_hex = to_hex_list(rng.integers(0, 2**64, size=(count, bits // 64), dtype=np.uint64, endpoint=False))
    worst = worst_cpu = 0
    started = time.perf_counter()
    for i, code in enumerate(new_hex):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        index.add(n + i, code)
        worst = max(worst, time.perf_counter_ns() - t0)
        worst_cpu = max(worst_cpu, time.thread_time_ns() - c0)
    add_us = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for ref in range(0, n, max(1, n // 1000)):
        index.remove(ref)
    remove_us = (time.perf_counter() - started) / len(range(0, n, max(1, n // 1000))) * 1e6
    merges = count // max(1024, n // 64)   # node.index merges the delta buffer every max(1024, N/64) adds
    return (f"{bits}-bit N={n:,}: {count:,} adds, {add_us:.1f} us each on average, worst {worst / 1e6:.1f} ms "
            f"wall / {worst_cpu / 1e6:.1f} ms CPU ({merges} delta merge(s) among them); remove {remove_us:.1f} us each")


def print_table(rows: list[Row]) -> None:
    print()
    print("| case | build s | B/entry (arrays) | B/entry (RSS delta) | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms "
          "| queries | found | scan/index p50 | scan/index p99 | scan/index CPU p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    scan: Row | None = None
    for row in rows:
        if row.build_s is None:
            scan = row
        ratio50 = f"{scan.p50_ms / row.p50_ms:.1f}x" if scan and row is not scan else ""
        ratio99 = f"{scan.p99_ms / row.p99_ms:.1f}x" if scan and row is not scan else ""
        cpu_ratio99 = f"{scan.cpu_p99_ms / row.cpu_p99_ms:.1f}x" if scan and row is not scan else ""
        build = "" if row.build_s is None else f"{row.build_s:.1f}"
        rss = "" if row.bytes_per_entry_rss is None else f"{row.bytes_per_entry_rss:.1f}"
        print(f"| {row.label} | {build} | {row.bytes_per_entry_arrays:.1f} | {rss} | {row.p50_ms:.3f} | "
              f"{row.p99_ms:.3f} | {row.cpu_p50_ms:.3f} | {row.cpu_p99_ms:.3f} | {row.queries} | {row.found} | "
              f"{ratio50} | {ratio99} | {cpu_ratio99} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="pHash-64 index sizes (default: 1M 10M)")
    parser.add_argument("--queries", type=int, default=1000, help="index queries per case (default 1000)")
    parser.add_argument("--scan-queries", type=int, default=200,
                        help="scan queries per case, also checked against the index (default 200)")
    parser.add_argument("--pdq-size", type=int, default=1_000_000, help="PDQ-256 index size (default 1M)")
    parser.add_argument("--no-pdq", action="store_true", help="skip the PDQ-256 case")
    parser.add_argument("--alternatives", action="store_true",
                        help="also measure other chunk layouts (64-bit: 4 chunks; 256-bit: 8, 12 chunks)")
    parser.add_argument("--updates", type=int, default=200_000,
                        help="live adds timed after each default-layout load (default 200000; 0 = none)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[Row] = []
    update_lines: list[str] = []
    for n in args.sizes:
        options: list[int | None] = [None] + ([4] if args.alternatives else [])
        rows += bench_one(64, n, 8, args.queries, args.scan_queries, options, update_lines, args.updates)
        print_table(rows)
    if not args.no_pdq:
        options = [None] + ([8, 12] if args.alternatives else [])
        rows += bench_one(256, args.pdq_size, 31, args.queries, args.scan_queries, options, update_lines,
                          args.updates)
    print_table(rows)
    print()
    for line in update_lines:
        print(line)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; peak RSS "
          f"{int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1e6:.2f} GB; "
          f"one thread; queries include hex parsing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
