"""Hash banks at scale: N random PDQ hashes imported through `verdict-node banks import`'s own path (the
te-format reader and BankRecords, one transaction), loaded by the matcher's loader (what `serve` and `scan`
do at start), then looked up at distance 31 through BankMatcher.match_perceptual, the pipeline's call, beside
a numpy scan of the same codes in the same process.

    .venv/bin/python -m bench.banks                      # 1M entries, about a minute
    .venv/bin/python -m bench.banks --entries 10000000   # the README figure: a few minutes, ~4 GB peak

One thread, as bench/index.py (the node answers one query on one core). Half the queries have a planted
neighbour (a stored code with 0..31 flipped bits), half are random codes; every query that the scan also
answers is checked against it (the matcher returns the nearest entry). Memory per entry is given twice: the
process's RSS delta across the load (after freeing what the loader threw away; glibc's malloc_trim) and the
index arrays' own bytes (HammingIndex.nbytes), each divided by N. Query times include hex parsing.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from bench.index import percentiles, planted_queries, rss_bytes, scan_search   # sets one thread first

import numpy as np  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from node.banks.formats import BadLines, read_entries  # noqa: E402
from node.banks.matcher import BankMatcher  # noqa: E402
from node.banks.records import BankRecords  # noqa: E402
from node.config import BanksSection  # noqa: E402
from node.store import Store  # noqa: E402
from protocol.verdict import Fingerprint  # noqa: E402

RADIUS = 31
_WRITE_CHUNK = 100_000


def write_bank_file(path: Path, codes: np.ndarray) -> None:
    """python-threatexchange's local-file format: one 'pdq <hex>' line per code."""
    with open(path, "w", encoding="ascii") as out:
        for start in range(0, len(codes), _WRITE_CHUNK):
            text = codes[start:start + _WRITE_CHUNK].astype(">u8").tobytes().hex()
            out.write("".join(f"pdq {text[i:i + 64]}\n" for i in range(0, len(text), 64)))


def fingerprint_of(code_hex: str) -> Fingerprint:
    return Fingerprint(sha256="0" * 64, pixel_sha256="0" * 64, phash64="", preprocessing="bench", pdq256=code_hex)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="PDQ hashes in the bank (default 1M)")
    parser.add_argument("--queries", type=int, default=1000, help="matcher queries (default 1000)")
    parser.add_argument("--scan-queries", type=int, default=100, help="numpy scan queries, checked against the "
                                                                      "matcher (default 100)")
    parser.add_argument("--workdir", default=None, help="where the bank file and database go (default: a temp dir)")
    args = parser.parse_args()
    logging.getLogger("verdict_node.banks").setLevel(logging.ERROR)   # a line per match is for admins, not here
    started = time.perf_counter()
    rng = np.random.default_rng(11)
    n = args.entries
    codes = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64, endpoint=False)
    queries = planted_queries(rng, codes, max(args.queries, args.scan_queries), RADIUS)
    query_hex = [q.astype(">u8").tobytes().hex() for q in queries]

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        bank_file = Path(scratch) / "bank.txt"
        write_bank_file(bank_file, codes)
        store = Store(Path(scratch) / "bench.db")
        records = BankRecords(store)
        bad = BadLines()
        t0 = time.perf_counter()
        with open(bank_file, "rb") as stream:
            imported = records.import_entries("bench", read_entries(stream, "te", bad), fmt="te",
                                              source=str(bank_file), replace=False, accept=lambda: bad.count == 0)
        import_s = time.perf_counter() - t0
        bank_file.unlink()
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db_bytes = store.path.stat().st_size
        assert imported.counts == {"pdq": n} and bad.count == 0, (imported, bad.describe())

        matcher = BankMatcher(records, BanksSection(pdq_distance=RADIUS), CollectorRegistry())
        rss_before = rss_bytes()
        t0 = time.perf_counter()
        matcher.refresh()
        load_s = time.perf_counter() - t0
        rss_delta = rss_bytes() - rss_before
        index = matcher.index("bench", "pdq")
        assert index is not None and len(index) == n

        samples, cpu_samples, nearest = [], [], {}
        for i in range(args.queries):
            fp = fingerprint_of(query_hex[i])
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            hit = matcher.match_perceptual(fp)
            samples.append(time.perf_counter_ns() - t0)
            cpu_samples.append(time.thread_time_ns() - c0)
            nearest[i] = None if hit is None else hit.distance
        found = sum(1 for i in range(args.queries // 2) if nearest[i] is not None)

        scan_samples, mismatches = [], 0
        for i in range(args.scan_queries):
            t0 = time.perf_counter_ns()
            q = np.frombuffer(bytes.fromhex(query_hex[i]), dtype=">u8").astype(np.uint64)
            hits = scan_search(codes, q, RADIUS)
            scan_samples.append(time.perf_counter_ns() - t0)
            expected = None if not len(hits) else int(np.bitwise_count(codes[hits] ^ q).sum(axis=1).min())
            if i in nearest and nearest[i] != expected:
                mismatches += 1
        if mismatches:
            raise SystemExit(f"the matcher disagrees with the scan on {mismatches} queries")
        store.close()

    p50, p99 = percentiles(samples)
    cpu50, cpu99 = percentiles(cpu_samples)
    scan50, scan99 = percentiles(scan_samples)
    print(f"\n| PDQ bank, N={n:,}, r={RADIUS} | figure |\n|---|---|")
    print(f"| import (`banks import`'s path, te format) | {import_s:.1f} s, {n / import_s:,.0f} lines/s |")
    print(f"| database | {db_bytes / n:.1f} B per entry (entries and their unique index) |")
    print(f"| load (matcher, what serve does at start) | {load_s:.1f} s |")
    print(f"| memory per entry | {rss_delta / n:.1f} B RSS delta; {index.nbytes / n:.1f} B index arrays "
          f"({len(index._chunks)} chunks) |")
    print(f"| lookup p50 / p99 (wall) | {p50:.3f} / {p99:.3f} ms |")
    print(f"| lookup p50 / p99 (thread CPU) | {cpu50:.3f} / {cpu99:.3f} ms |")
    print(f"| numpy scan p50 / p99 | {scan50:.1f} / {scan99:.1f} ms: scan/matcher {scan50 / p50:.0f}x (p50), "
          f"{scan99 / p99:.0f}x (p99) |")
    print(f"| planted neighbours found | {found}/{args.queries // 2}; {args.scan_queries} answers checked "
          f"against the scan |")
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
    print(f"\ntotal {time.perf_counter() - started:.0f} s; peak RSS {peak / 1e9:.2f} GB; one thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
