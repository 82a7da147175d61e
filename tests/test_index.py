"""HammingIndex against a brute-force oracle: planted neighbours at every distance around the radius, adds,
replacements and removals interleaved with searches, both code widths, every search strategy."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import node.index as index_module
from node.index import HammingIndex

RADIUS = {64: 8, 256: 31}


def to_hex(code: int, bits: int) -> str:
    return format(code, f"0{bits // 4}x")


def flip(code: int, bits: int, count: int, rng: random.Random) -> int:
    for position in rng.sample(range(bits), count):
        code ^= 1 << position
    return code


def oracle(entries: dict[int, int], query: int, radius: int) -> list[tuple[int, int]]:
    hits = [(ref, (code ^ query).bit_count()) for ref, code in entries.items()]
    return sorted(((r, d) for r, d in hits if d <= radius), key=lambda hit: (hit[1], hit[0]))


@pytest.fixture(params=["sorted-values", "bucket-tables"])
def small_delta(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Merge and compact after a few dozen updates instead of 1,024, so short tests cross those paths often;
    run once with binary search in sorted chunk values and once with the bucket tables that large indexes use."""
    monkeypatch.setattr(index_module, "MIN_DELTA", 16)
    if request.param == "bucket-tables":
        monkeypatch.setattr(index_module, "TABLE_MIN_FILL", 0.0)


@pytest.mark.parametrize("strategy", ["probe", "scan", "auto"])
@pytest.mark.parametrize("bits", [64, 256])
def test_matches_oracle_with_interleaved_updates(bits: int, strategy: str, small_delta: None) -> None:
    rng = random.Random(bits * 7 + len(strategy))
    radius = RADIUS[bits]
    index = HammingIndex(bits, strategy=strategy)
    entries = {ref: rng.getrandbits(bits) for ref in range(2_000)}
    index.add_many(list(entries), [to_hex(c, bits) for c in entries.values()])
    queries = [rng.getrandbits(bits) for _ in range(4)]
    next_ref = 10_000
    for round_ in range(3):
        # planted neighbours at every distance 0..radius+2, several per distance, added one by one
        for query in queries:
            for distance in range(radius + 3):
                for _ in range(2):
                    entries[next_ref] = flip(query, bits, distance, rng)
                    index.add(next_ref, to_hex(entries[next_ref], bits))
                    next_ref += 1
        # removals from both the merged part and the delta buffer
        for ref in rng.sample(sorted(entries), 60):
            assert index.remove(ref) is True
            del entries[ref]
        assert index.remove(-12345) is False
        # replacements: an existing ref gets a new code (possibly a near neighbour)
        for ref in rng.sample(sorted(entries), 20):
            entries[ref] = flip(rng.choice(queries), bits, rng.randrange(radius + 3), rng)
            index.add(ref, to_hex(entries[ref], bits))
        assert len(index) == len(entries)
        for query in queries:
            for r in (0, 1, radius // 2, radius - 1, radius, radius + 1, radius + 2):
                assert index.search(to_hex(query, bits), r) == oracle(entries, query, r), (round_, r)


@pytest.mark.parametrize("bits", [64, 256])
def test_large_radius_falls_back_and_stays_exact(bits: int) -> None:
    """A radius the chunk layout cannot serve (too many flips to enumerate) must still be answered exactly."""
    rng = random.Random(5)
    index = HammingIndex(bits, strategy="probe")
    entries = {ref: rng.getrandbits(bits) for ref in range(500)}
    index.add_many(list(entries), [to_hex(c, bits) for c in entries.values()])
    query = rng.getrandbits(bits)
    for r in (bits // 2, bits):
        assert index.search(to_hex(query, bits), r) == oracle(entries, query, r)
    assert len(index.search(to_hex(query, bits), bits)) == 500


def test_add_many_last_duplicate_wins_and_replaces_existing() -> None:
    index = HammingIndex(64, strategy="probe")
    index.add(1, "0" * 16)
    index.add_many([1, 2, 2], ["f" * 16, "0" * 16, "0" * 15 + "1"])
    assert len(index) == 2
    assert index.search("0" * 16, 0) == []
    assert index.search("0" * 16, 1) == [(2, 1)]
    assert index.search("f" * 16, 0) == [(1, 0)]


def test_raw_codes_load_like_hex_codes() -> None:
    """add_many_raw (how banks load millions of PDQs from the database) builds the same index as add_many."""
    rng = random.Random(5)
    codes = [rng.getrandbits(256).to_bytes(32, "big") for _ in range(3000)]
    refs = list(range(10, 3010))
    from_hex, from_raw = HammingIndex(256, chunks=12), HammingIndex(256, chunks=12)
    from_hex.add_many(refs, [c.hex() for c in codes])
    from_raw.add_many_raw(refs, b"".join(codes))
    for code in codes[:50]:
        query = (int.from_bytes(code, "big") ^ (1 << rng.randrange(256))).to_bytes(32, "big").hex()
        assert from_raw.search(query, 31) == from_hex.search(query, 31)
    with pytest.raises(ValueError, match="whole number"):
        from_raw.add_many_raw([1], b"\0" * 31)
    with pytest.raises(ValueError, match="refs but"):
        from_raw.add_many_raw([1, 2], b"\0" * 32)


def test_compaction_after_many_removals(small_delta: None) -> None:
    rng = random.Random(9)
    index = HammingIndex(64, strategy="probe")
    entries = {ref: rng.getrandbits(64) for ref in range(400)}
    index.add_many(list(entries), [to_hex(c, 64) for c in entries.values()])
    before = index.nbytes
    for ref in list(entries)[:300]:
        index.remove(ref)
        del entries[ref]
    assert index.nbytes < before, "tombstones were not compacted away"
    query = next(iter(entries.values()))
    assert index.search(to_hex(query, 64), 64) == oracle(entries, query, 64)
    assert len(index) == 100


def test_empty_index_and_readd_after_remove() -> None:
    index = HammingIndex(256)
    code = "ab" * 32
    assert index.search(code, 31) == [] and len(index) == 0
    index.add(7, code)
    assert index.remove(7) and not index.remove(7)
    assert index.search(code, 31) == []
    index.add(7, code)
    assert index.search(code, 0) == [(7, 0)]


@pytest.mark.parametrize("bad", ["", "0" * 15, "0" * 17, "g" * 16, "0" * 64, "0 123456789abcdef", "0123456789abcd\n ",
                                 None, 123])
def test_bad_codes_are_refused_clearly(bad: object) -> None:
    index = HammingIndex(64)
    with pytest.raises(ValueError):
        index.add(1, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        index.search(bad, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        index.add_many([1], [bad])  # type: ignore[list-item]
    assert len(index) == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        HammingIndex(128)
    with pytest.raises(ValueError):
        HammingIndex(256, chunks=6)
    with pytest.raises(ValueError):
        HammingIndex(64, chunks=1)
    index = HammingIndex(64)
    with pytest.raises(ValueError):
        index.search("0" * 16, -1)
    with pytest.raises(ValueError):
        index.add("1", "0" * 16)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        index.add_many([1, 2], ["0" * 16])
    for refs in ([1.5], [True], ["1"], [2**64], [None]):
        with pytest.raises(ValueError):
            index.add_many(refs, ["0" * 16])
    assert len(index) == 0


@pytest.mark.parametrize("table_min_fill", [1.0, 0.0])
@pytest.mark.parametrize("chunks", [2, 3, 4])
def test_every_chunk_layout_is_exact(chunks: int, table_min_fill: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "TABLE_MIN_FILL", table_min_fill)
    rng = random.Random(chunks)
    index = HammingIndex(64, chunks=chunks, strategy="probe")
    query = rng.getrandbits(64)
    entries = {ref: flip(query, 64, ref % 12, rng) for ref in range(300)}
    index.add_many(list(entries), [to_hex(c, 64) for c in entries.values()])
    for r in range(11):
        assert index.search(to_hex(query, 64), r) == oracle(entries, query, r)


class IndexMachine(RuleBasedStateMachine):
    """Random sequences of updates on codes clustered around a few centres, checked after every step."""

    chunks = 3

    def __init__(self) -> None:
        super().__init__()
        self.index = HammingIndex(64, chunks=self.chunks, strategy="probe")
        self.entries: dict[int, int] = {}
        self.centres = [0x0123456789ABCDEF, 0xFEDCBA9876543210]

    @rule(ref=st.integers(0, 60), centre=st.integers(0, 1), mask=st.integers(0, 2**64 - 1),
          distance=st.integers(0, 12))
    def add(self, ref: int, centre: int, mask: int, distance: int) -> None:
        bits = [i for i in range(64) if mask >> i & 1][:distance]
        code = self.centres[centre] ^ sum(1 << i for i in bits)
        self.index.add(ref, to_hex(code, 64))
        self.entries[ref] = code

    @rule(ref=st.integers(0, 60))
    def remove(self, ref: int) -> None:
        assert self.index.remove(ref) == (self.entries.pop(ref, None) is not None)

    @rule(refs=st.lists(st.integers(0, 60), max_size=8), centre=st.integers(0, 1))
    def add_many(self, refs: list[int], centre: int) -> None:
        codes = [self.centres[centre] ^ (1 << (ref % 64)) for ref in refs]
        self.index.add_many(refs, [to_hex(c, 64) for c in codes])
        self.entries.update(zip(refs, codes))

    @invariant()
    def agrees_with_oracle(self) -> None:
        assert len(self.index) == len(self.entries)
        for centre in self.centres:
            for r in (0, 3, 8, 10):
                assert self.index.search(to_hex(centre, 64), r) == oracle(self.entries, centre, r)


@pytest.mark.parametrize("table_min_fill", [1.0, 0.0])
def test_state_machine(table_min_fill: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "MIN_DELTA", 4)
    monkeypatch.setattr(index_module, "TABLE_MIN_FILL", table_min_fill)
    # 16-bit chunks when tables are forced: a 2**22-entry table per tiny example would only cost time
    IndexMachine.chunks = 4 if table_min_fill == 0.0 else 3
    settings_ = settings(max_examples=60, stateful_step_count=30, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
    IndexMachine.TestCase.settings = settings_
    IndexMachine.TestCase().runTest()


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 64))
@settings(max_examples=200, deadline=None)
def test_single_pair_distance(a: int, b: int, radius: int) -> None:
    index = HammingIndex(64, strategy="probe")
    index.add(3, to_hex(a, 64))
    expected = [(3, (a ^ b).bit_count())] if (a ^ b).bit_count() <= radius else []
    assert index.search(to_hex(b, 64), radius) == expected
