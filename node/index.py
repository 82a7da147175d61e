"""In-memory near-duplicate index over perceptual hashes (pHash-64, PDQ-256): exact Hamming radius search.

Why multi-index hashing (Norouzi et al.) and not a scan: a numpy scan of 10M 64-bit codes costs ~25-35 ms a
query (bench/index.py measures it beside this index), too slow for the pict-rs hook, and faiss is a dependency
we avoid.

How. Each code is cut into ``m`` disjoint substrings (chunks; a chunk never spans a 64-bit word). By pigeonhole,
a code within distance ``r`` of the query differs in at most ``r // m`` bits in at least one chunk. Per chunk we
keep the entries ordered by chunk value (``perm``); a query enumerates every value within ``r // m`` bit flips
of its own chunk value, finds the runs of entries with those values (binary search in the sorted values, or a
bucket table once the index is large), and verifies the candidates with ``np.bitwise_count`` on the full codes. So results are
exact (no false negatives, no false positives) for every radius; when the radius is too large for the layout
to pay off (many probes or most of the table as candidates), the search scans everything instead.

Updates. New entries go to an unsorted delta buffer that every query scans; when it grows past ``N / 64``
(at least 1,024 entries) it is merged into the sorted arrays with ``np.insert`` (a linear copy, no re-sort).
A removal marks the entry dead (tombstone); when a quarter of the main entries are dead the index is rebuilt
without them. ``ref`` is the caller's identity of an entry (e.g. a store row id): adding a ref that is
already present replaces its code.

Memory for N 64-bit entries with the default 3 chunks: code 8 + ref 8 + alive 1 + 3 x (value 4 + position 4)
= 41 bytes; from ~4M entries the bucket tables (32 MiB in all) replace the values (from 2-4M entries): ~32 bytes at 10M. Entries
are kept in ref order so that finding a ref needs no extra array (8 bytes more per entry, until the next
rebuild, once a merge has to insert a ref below the largest). bench/index.py measures it.

Concurrency: every public method takes one lock, so the index is safe to share between the asyncio loop and
worker threads (e.g. ``await asyncio.to_thread(index.search, ...)``); on the loop itself each call is atomic
because nothing in it awaits. A merge or rebuild runs inside the call that triggers it: ~0.3 s for the merge
that every N/64-th ``add`` triggers at 10M entries (12 us per add on average), seconds for ``add_many`` of
millions (or for the compaction after N/4 removals).
"""
from __future__ import annotations

import itertools
import math
import threading
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

SUPPORTED_BITS = (64, 256)
# Default chunks per 64-bit word: 3 (~21-bit chunks, probe radius 2 at r=8) for pHash, 4 (16-bit chunks,
# probe radius 1 at r=31, as pytx's PDQ index) for PDQ. bench/index.py measures the alternatives.
DEFAULT_CHUNKS = {64: 3, 256: 16}
MIN_DELTA = 1024
# Bucket tables: at most 2**24 offsets (64 MiB) per chunk, and only where they are no bigger than the sorted
# values they replace (TABLE_MIN_FILL = 1.0); tests set the fill to 0 to exercise tables on small data.
MAX_TABLE_BITS = 24
TABLE_MIN_FILL = 1.0
# Rough per-operation costs in ns, only to choose between probing and scanning; the choice never affects
# correctness.
_NS_PER_PROBE_LEVEL = 6.0
_NS_PER_CANDIDATE = 40.0
_NS_PER_SCANNED_WORD = 2.5
_MAX_PROBES = 200_000


@lru_cache(maxsize=64)
def _flip_masks(width: int, max_flips: int) -> np.ndarray:
    """All ``width``-bit values with at most ``max_flips`` bits set (XOR masks of the probe values)."""
    masks = [0]
    for k in range(1, max_flips + 1):
        for positions in itertools.combinations(range(width), k):
            masks.append(sum(1 << p for p in positions))
    array = np.array(masks, dtype=np.uint32)
    array.flags.writeable = False   # shared by every query through the cache
    return array


def _probe_count(width: int, max_flips: int) -> int:
    return sum(math.comb(width, k) for k in range(max_flips + 1))


def _wants_table(entries: int, width: int, itemsize: int) -> bool:
    """A bucket table (2**width + 1 offsets) replaces the sorted values once it is no bigger than they are."""
    return width <= MAX_TABLE_BITS and entries * itemsize >= TABLE_MIN_FILL * 4 * (2**width + 1)


class _Chunk:
    """One substring of the code: bits [shift, shift + width) of 64-bit word ``word`` (word 0 = first hex digits).

    ``perm`` lists entry positions ordered by chunk value. The runs of equal values are found either by binary
    search in the sorted values (``vals``; small indexes) or, once the index is large enough that it costs no
    more memory, in a bucket table (``offsets[v]:offsets[v + 1]``), which replaces ~20 cache misses of a
    binary search per probe by one."""

    __slots__ = ("word", "shift", "width", "mask", "dtype", "vals", "offsets", "perm")

    def __init__(self, word: int, shift: int, width: int) -> None:
        self.word, self.shift, self.width = word, shift, width
        self.mask = (1 << width) - 1
        self.dtype = np.uint16 if width <= 16 else np.uint32
        self.vals: np.ndarray | None = np.empty(0, dtype=self.dtype)
        self.offsets: np.ndarray | None = None
        self.perm = np.empty(0, dtype=np.uint32)

    def values(self, words: np.ndarray) -> np.ndarray:
        column = words[:, self.word]
        return ((column >> np.uint64(self.shift)) & np.uint64(self.mask)).astype(self.dtype)

    def build(self, words: np.ndarray) -> None:
        """Sort by packing (value, position) into one uint64 key: np.sort is much faster than argsort."""
        keys = (self.values(words).astype(np.uint64) << np.uint64(32)) | np.arange(len(words), dtype=np.uint64)
        keys.sort()
        self.vals = (keys >> np.uint64(32)).astype(self.dtype)
        self.perm = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        self.offsets = None
        self._maybe_tabulate()

    def _maybe_tabulate(self) -> None:
        if self.vals is not None and _wants_table(len(self.perm), self.width, self.vals.itemsize):
            counts = np.bincount(self.vals, minlength=1 << self.width)
            self.offsets = np.zeros((1 << self.width) + 1, dtype=np.uint32)
            np.cumsum(counts, out=self.offsets[1:], dtype=np.uint32)
            self.vals = None

    def insert(self, words: np.ndarray, first_position: int) -> None:
        """Merge new entries (positions first_position...) into the sorted order with one linear copy."""
        new_vals = self.values(words)
        order = np.argsort(new_vals, kind="stable")
        new_vals = new_vals[order]
        new_positions = (order + first_position).astype(np.uint32)
        if self.offsets is not None:
            at = self.offsets[new_vals.astype(np.intp) + 1].astype(np.intp)   # end of each bucket
            self.perm = np.insert(self.perm, at, new_positions)
            added = np.cumsum(np.bincount(new_vals, minlength=1 << self.width), dtype=np.uint32)
            self.offsets[1:] += added
        else:
            assert self.vals is not None
            at = np.searchsorted(self.vals, new_vals, side="right")
            self.vals = np.insert(self.vals, at, new_vals)
            self.perm = np.insert(self.perm, at, new_positions)
            self._maybe_tabulate()

    def candidates(self, query_words: Sequence[int], max_flips: int) -> np.ndarray:
        """Positions of the entries whose chunk is within max_flips bits of the query's (with repeats across
        chunks possible; the caller verifies on the full codes)."""
        value = (query_words[self.word] >> self.shift) & self.mask
        probes = _flip_masks(self.width, max_flips) ^ np.uint32(value)
        if self.offsets is not None:
            lo = self.offsets[probes].astype(np.intp)
            hi = self.offsets[probes + np.uint32(1)].astype(np.intp)
        else:
            assert self.vals is not None
            probes = probes.astype(self.dtype)
            lo = np.searchsorted(self.vals, probes, side="left")
            hi = np.searchsorted(self.vals, probes, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return np.empty(0, dtype=np.uint32)
        starts = np.cumsum(counts) - counts
        positions = np.repeat(lo - starts, counts) + np.arange(total)
        return self.perm[positions]

    @property
    def nbytes(self) -> int:
        table = self.offsets.nbytes if self.offsets is not None else 0
        vals = self.vals.nbytes if self.vals is not None else 0
        return vals + table + self.perm.nbytes


def parse_code(code_hex: str, bits: int) -> np.ndarray:
    """One ``bits``-bit code from hex, as big-endian 64-bit words; ValueError for anything else."""
    hex_len = bits // 4
    if not isinstance(code_hex, str) or len(code_hex) != hex_len:
        raise ValueError(f"expected a {bits}-bit code as {hex_len} hex digits, got {code_hex!r}")
    try:
        raw = bytes.fromhex(code_hex)
    except ValueError:
        raw = b""
    if len(raw) != bits // 8:    # fromhex skips whitespace: "0 12..." must not pass either
        raise ValueError(f"not a {bits}-bit hex code: {code_hex!r}")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def parse_codes(codes_hex: Sequence[str], bits: int) -> np.ndarray:
    """Many codes at once, vectorised: loading millions of codes from the store must take seconds, not minutes."""
    hex_len = bits // 4
    try:
        lengths = np.fromiter(map(len, codes_hex), dtype=np.int64, count=len(codes_hex))
        joined = "".join(codes_hex)
    except TypeError:
        bad = next(c for c in codes_hex if not isinstance(c, str))
        raise ValueError(f"expected {bits}-bit codes as hex strings, got {bad!r}") from None
    if len(lengths) and not (lengths == hex_len).all():
        bad = codes_hex[int(np.argmax(lengths != hex_len))]
        raise ValueError(f"expected {bits}-bit codes as {hex_len} hex digits, got {bad!r}")
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        raw = b""
    if len(raw) != len(codes_hex) * bits // 8:
        raise ValueError("codes contain a character that is not a hex digit")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, bits // 64)


def check_ref(ref: int) -> int:
    if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or not -2**63 <= int(ref) < 2**63:
        raise ValueError(f"ref must be a 64-bit integer, got {ref!r}")
    return int(ref)


def check_refs(refs: Iterable[int]) -> np.ndarray:
    try:
        array = np.asarray(refs if isinstance(refs, np.ndarray) else list(refs))
    except (OverflowError, ValueError):
        raise ValueError("refs must be 64-bit integers") from None
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"refs must be a flat sequence of integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.max() >= 2**63:
        raise ValueError("refs must be 64-bit signed integers")
    return array.astype(np.int64)


class HammingIndex:
    """Exact radius search over ``bits``-bit codes given as hex strings (64: pHash, 256: PDQ)."""

    def __init__(self, bits: int, chunks: int | None = None, strategy: str = "auto") -> None:
        """``chunks``: substrings per code (default DEFAULT_CHUNKS); ``strategy``: "auto" chooses per query
        between probing and scanning, "probe" / "scan" force one (tests and bench/index.py)."""
        if strategy not in ("auto", "probe", "scan"):
            raise ValueError(f"strategy must be auto, probe or scan, got {strategy!r}")
        self.strategy = strategy
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
        self.bits = bits
        self._words = bits // 64
        chunk_count = DEFAULT_CHUNKS[bits] if chunks is None else chunks
        # 2-4 chunks per 64-bit word: a chunk value must fit 32 bits (it is packed with a 32-bit position)
        if chunk_count % self._words or not 2 * self._words <= chunk_count <= 4 * self._words:
            raise ValueError(f"chunks for {bits} bits must be a multiple of {self._words} "
                             f"between {2 * self._words} and {4 * self._words}, got {chunk_count!r}")
        per_word = chunk_count // self._words
        self._chunks: list[_Chunk] = []
        for word in range(self._words):
            shift = 0
            for i in range(per_word):
                width = 64 // per_word + (1 if i < 64 % per_word else 0)
                self._chunks.append(_Chunk(word, shift, width))
                shift += width
        self._lock = threading.RLock()
        # main part: sorted chunk arrays over these entries
        self._codes = np.empty((0, self._words), dtype=np.uint64)
        self._refs = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        # Main entries are kept in ref order, so a ref is found by binary search in _refs. Only after a merge
        # brings a ref lower than the largest one (a replaced code) does _ref_order (positions in ref order,
        # intp: numpy copies any other sorter on every call) exist, until the next rebuild.
        self._ref_order: np.ndarray | None = None
        self._dead = 0
        # delta part: appended, scanned by brute force
        self._delta_codes = np.empty((MIN_DELTA, self._words), dtype=np.uint64)
        self._delta_refs = np.empty(MIN_DELTA, dtype=np.int64)
        self._delta_alive = np.zeros(MIN_DELTA, dtype=bool)
        self._delta_count = 0
        self._delta_where: dict[int, int] = {}           # ref -> delta position (live entries only)
        self._live = 0

    # -- updates ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def add(self, ref: int, code_hex: str) -> None:
        """Add one entry; an entry with the same ref is replaced."""
        ref = check_ref(ref)
        words = parse_code(code_hex, self.bits)
        with self._lock:
            self._remove_locked(ref)
            if self._delta_count == len(self._delta_refs):
                self._grow_delta()
            at = self._delta_count
            self._delta_codes[at] = words
            self._delta_refs[at] = ref
            self._delta_alive[at] = True
            self._delta_where[ref] = at
            self._delta_count += 1
            self._live += 1
            if self._delta_count >= max(MIN_DELTA, len(self._refs) // 64):
                self._merge_delta()

    def add_many(self, refs: Iterable[int], codes_hex: Iterable[str]) -> None:
        """Add many entries at once (loading from the store). Later duplicates of a ref win."""
        codes = parse_codes(codes_hex if isinstance(codes_hex, (list, tuple)) else list(codes_hex), self.bits)
        self._add_codes(check_refs(refs), codes)

    def add_many_raw(self, refs: Iterable[int], codes: bytes) -> None:
        """add_many for codes as raw bytes, one after the other (``bits // 8`` bytes each, most significant
        first, as a database keeps them): millions of codes load without a hex string per code."""
        if len(codes) % (self.bits // 8):
            raise ValueError(f"{len(codes)} bytes are not a whole number of {self.bits}-bit codes")
        words = np.frombuffer(codes, dtype=">u8").astype(np.uint64).reshape(-1, self._words)
        self._add_codes(check_refs(refs), words)

    def _add_codes(self, ref_array: np.ndarray, codes: np.ndarray) -> None:
        if len(ref_array) != len(codes):
            raise ValueError(f"{len(ref_array)} refs but {len(codes)} codes")
        if not len(ref_array):
            return
        # keep the last occurrence of each ref (rows loaded from the store come in increasing order: no sort)
        increasing = bool((ref_array[1:] > ref_array[:-1]).all())
        reversed_unique, first_in_reversed = (None, None) if increasing else np.unique(ref_array[::-1],
                                                                                        return_index=True)
        if not increasing and len(reversed_unique) != len(ref_array):
            keep = np.sort(len(ref_array) - 1 - first_in_reversed)
            ref_array, codes = ref_array[keep], codes[keep]
        with self._lock:
            if self._live:
                for ref in ref_array.tolist():
                    self._remove_locked(ref)
            old_codes, old_refs = self._take_live()
            self._rebuild(np.concatenate([old_codes, codes]), np.concatenate([old_refs, ref_array]))

    def remove(self, ref: int) -> bool:
        """Remove the entry with this ref; returns whether there was one."""
        ref = check_ref(ref)
        with self._lock:
            removed = self._remove_locked(ref)
            if self._dead > max(MIN_DELTA, len(self._refs) // 4):
                self._rebuild(*self._take_live())
            return removed

    def _remove_locked(self, ref: int) -> bool:
        at = self._delta_where.pop(ref, None)
        if at is not None:
            self._delta_alive[at] = False
            self._live -= 1
            return True
        if not len(self._refs):
            return False
        i = int(np.searchsorted(self._refs, ref, sorter=self._ref_order))
        while i < len(self._refs):
            position = i if self._ref_order is None else int(self._ref_order[i])
            if self._refs[position] != ref:
                break
            if self._alive[position]:
                self._alive[position] = False
                self._dead += 1
                self._live -= 1
                return True
            i += 1
        return False

    def _grow_delta(self) -> None:
        capacity = 2 * len(self._delta_refs)
        self._delta_codes = np.resize(self._delta_codes, (capacity, self._words))
        self._delta_refs = np.resize(self._delta_refs, capacity)
        alive = np.zeros(capacity, dtype=bool)
        alive[: self._delta_count] = self._delta_alive[: self._delta_count]
        self._delta_alive = alive

    def _take_live(self) -> tuple[np.ndarray, np.ndarray]:
        """Codes and refs of every live entry (main, then delta), emptying the delta; the caller rebuilds."""
        n = self._delta_count
        delta_live = self._delta_alive[:n]
        codes = np.concatenate([self._codes[self._alive], self._delta_codes[:n][delta_live]])
        refs = np.concatenate([self._refs[self._alive], self._delta_refs[:n][delta_live]])
        self._delta_count = 0
        self._delta_alive[:n] = False
        self._delta_where.clear()
        return codes, refs

    def _merge_delta(self) -> None:
        n = self._delta_count
        live = self._delta_alive[:n]
        codes, refs = self._delta_codes[:n][live], self._delta_refs[:n][live]
        self._delta_count = 0
        self._delta_alive[:n] = False
        self._delta_where.clear()
        if not len(refs):
            return
        first = len(self._refs)
        if first + len(refs) >= 2**32:
            raise OverflowError("HammingIndex holds at most 2**32 - 1 entries")
        order = np.argsort(refs, kind="stable")     # append in ref order: usually keeps _refs sorted
        codes, refs = codes[order], refs[order]
        for chunk in self._chunks:
            chunk.insert(codes, first)
        if self._ref_order is None and first and refs[0] < self._refs[-1]:
            self._ref_order = np.arange(first, dtype=np.intp)
        if self._ref_order is not None:
            at = np.searchsorted(self._refs, refs, side="right", sorter=self._ref_order)
            self._ref_order = np.insert(self._ref_order, at, np.arange(first, first + len(refs), dtype=np.intp))
        self._codes = np.concatenate([self._codes, codes])
        self._refs = np.concatenate([self._refs, refs])
        self._alive = np.concatenate([self._alive, np.ones(len(refs), dtype=bool)])

    def _rebuild(self, codes: np.ndarray, refs: np.ndarray) -> None:
        """Sorted arrays from scratch over live entries only (drops tombstones), entries in ref order."""
        if len(refs) >= 2**32:
            raise OverflowError("HammingIndex holds at most 2**32 - 1 entries")
        if len(refs) > 1 and not (refs[1:] >= refs[:-1]).all():
            order = np.argsort(refs, kind="stable")
            codes, refs = codes[order], refs[order]
        self._codes = np.ascontiguousarray(codes, dtype=np.uint64)
        self._refs = np.ascontiguousarray(refs, dtype=np.int64)
        self._alive = np.ones(len(refs), dtype=bool)
        self._dead = 0
        self._ref_order = None
        for chunk in self._chunks:
            chunk.build(self._codes)
        self._live = len(refs)

    # -- search ----------------------------------------------------------------------------------------------

    def search(self, code_hex: str, radius: int) -> list[tuple[int, int]]:
        """Every entry within ``radius`` bits of the code, as (ref, distance), nearest first (ties by ref)."""
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        query = parse_code(code_hex, self.bits)
        with self._lock:
            refs_parts, dist_parts = [], []
            if len(self._refs):
                positions, distances = self._search_main(query, radius)
                refs_parts.append(self._refs[positions])
                dist_parts.append(distances)
            if self._delta_count:
                n = self._delta_count
                distances = self._distances(self._delta_codes[:n], query)
                hit = (distances <= radius) & self._delta_alive[:n]
                refs_parts.append(self._delta_refs[:n][hit])
                dist_parts.append(distances[hit])
        if not refs_parts:
            return []
        refs = np.concatenate(refs_parts)
        distances = np.concatenate(dist_parts)
        order = np.lexsort((refs, distances))
        return list(zip(refs[order].tolist(), distances[order].tolist()))

    def _distances(self, codes: np.ndarray, query: np.ndarray) -> np.ndarray:
        counts = np.bitwise_count(codes ^ query)
        total = counts[:, 0].astype(np.int32)
        for word in range(1, self._words):   # a column at a time: sum(axis=1) costs more on short rows
            total += counts[:, word]
        return total

    def _search_main(self, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._refs)
        max_flips = radius // len(self._chunks)
        if self._use_probing(n, max_flips):
            query_words = [int(w) for w in query]
            found = np.concatenate([chunk.candidates(query_words, max_flips) for chunk in self._chunks])
            # Sorted, the codes are read in memory order (half the time of random order at 10M PDQs, see
            # bench/banks.py) and an entry found through several chunks sits beside its repeats. Verify
            # first, deduplicate after: true neighbours are few.
            found.sort()
            distances = self._distances(np.take(self._codes, found, axis=0), query)
            hit = distances <= radius
            found, distances = found[hit], distances[hit]
            alive = self._alive[found]
            found, distances = found[alive], distances[alive]
            if len(found) > 1:
                first = np.ones(len(found), dtype=bool)
                np.not_equal(found[1:], found[:-1], out=first[1:])
                found, distances = found[first], distances[first]
            return found, distances
        distances = self._distances(self._codes, query)
        hit = (distances <= radius) & self._alive
        return np.flatnonzero(hit), distances[hit]

    def _use_probing(self, n: int, max_flips: int) -> bool:
        if self.strategy == "scan":
            return False
        probes = [_probe_count(c.width, max_flips) for c in self._chunks]
        if sum(probes) > _MAX_PROBES:   # even when forced: never enumerate millions of flips
            return False
        if self.strategy == "probe":
            return True
        levels = 2 * max(1.0, math.log2(n))
        expected_candidates = sum(p * n / 2 ** c.width for p, c in zip(probes, self._chunks))
        probe_cost = sum(probes) * levels * _NS_PER_PROBE_LEVEL + expected_candidates * _NS_PER_CANDIDATE
        return probe_cost < n * self._words * _NS_PER_SCANNED_WORD

    # -- introspection ---------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (main + delta buffer), for the bench and /metrics."""
        ref_order = 0 if self._ref_order is None else self._ref_order.nbytes
        return (self._codes.nbytes + self._refs.nbytes + self._alive.nbytes + ref_order
                + sum(c.nbytes for c in self._chunks) + self._delta_codes.nbytes + self._delta_refs.nbytes
                + self._delta_alive.nbytes)
