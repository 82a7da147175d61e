"""Matching images against the banks: what the pipeline calls through ``node.bank_check``.

- Exact keys (sha256 and md5 of the bytes) are looked up in the database on every call (one indexed query), so
  an import or a removal by `verdict-node banks ...` in another process counts from the next image on.
- Perceptual hashes (PDQ, pHash) go through one in-memory ``HammingIndex`` per bank and kind, the index the
  verdicts use. A PDQ bank of millions switches from the verdicts' 16 chunks (16 bits, one flip probed at
  radius 31) to 12 (21-22 bits, two flips): a quarter of the candidates to verify, once the 21-22 bit bucket
  tables pay for themselves (bench/index.py --alternatives measures both: 16 are faster at 2M, 12 from about
  4M, twice as fast at 10M). ``refresh`` loads banks imported since and drops
  removed ones; a replaced bank is a new bank (a new id), so its index is built before the old one goes.

A match is counted in ``verdictnode_bank_matches_total{bank,kind}``; nothing else of a bank leaves this module
but the name and the matched entry, in the BankHit.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from node.banks.records import BankInfo, BankRecords
from node.config import BanksSection
from node.index import HammingIndex
from node.hooks import BankHit
from protocol.verdict import Fingerprint

log = logging.getLogger("verdict_node.banks")

EXACT_KINDS = ("sha256", "md5")
PERCEPTUAL_BITS = {"pdq": 256, "phash": 64}
LARGE_PDQ_BANK = 4_000_000   # entries from which a PDQ index uses LARGE_PDQ_CHUNKS
LARGE_PDQ_CHUNKS = 12
# Perceptual hashes found in no bank since the banks last changed: a known image's next check costs a dict
# lookup instead of an index search. Bounded like the pipeline's memo.
_CLEAN_MAX = 100_000


@dataclass(frozen=True)
class _LoadedBank:
    info: BankInfo
    indexes: dict[str, HammingIndex]   # kind -> index of that kind's entries (refs: bank_entries ids)


class BankMatcher:
    """The pipeline's BankCheck over the banks in one store. Safe to call from the event loop and from the
    decode threads at once: the loaded banks are replaced as a whole, never changed in place."""

    def __init__(self, records: BankRecords, settings: BanksSection, registry: CollectorRegistry) -> None:
        self.records = records
        self.settings = settings
        self._banks: dict[int, _LoadedBank] = {}
        self._exact_kinds: frozenset[str] = frozenset()
        self._clean: dict[tuple[str | None, str | None], None] = {}
        self._lock = threading.Lock()
        self.matches = Counter("verdictnode_bank_matches_total", "Images blocked by a hash bank, by bank and kind "
                               "of the matched entry.", ["bank", "kind"], registry=registry)
        self.entries = Gauge("verdictnode_bank_entries", "Entries in each hash bank, by kind.", ["bank", "kind"],
                             registry=registry)

    # -- loading --------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load banks imported since the last call and drop removed ones; True when anything changed.
        Runs in a worker thread at start and whenever the banks table changes (seconds for millions)."""
        with self._lock:
            current = {bank.id: bank for bank in self.records.banks()}
            if current.keys() == self._banks.keys():
                return False
            loaded = {bank_id: held for bank_id, held in self._banks.items() if bank_id in current}
            for bank_id, info in current.items():
                if bank_id not in loaded:
                    loaded[bank_id] = self._load(info)
            for gone in self._banks.keys() - current.keys():
                self._forget_metrics(self._banks[gone].info)
            self._banks = loaded
            self._exact_kinds = frozenset(kind for held in loaded.values() for kind in EXACT_KINDS
                                          if held.info.counts.get(kind))
            self._clean = {}
            for held in loaded.values():
                for kind, count in held.info.counts.items():
                    self.entries.labels(held.info.name, kind).set(count)
            return True

    def _load(self, info: BankInfo) -> _LoadedBank:
        indexes = {}
        for kind, bits in PERCEPTUAL_BITS.items():
            count = info.counts.get(kind, 0)
            if not count:
                continue
            ids, hashes = self.records.perceptual_entries(info, kind)
            chunks = LARGE_PDQ_CHUNKS if kind == "pdq" and count >= LARGE_PDQ_BANK else None
            index = HammingIndex(bits, chunks=chunks)
            index.add_many_raw(ids, hashes)
            indexes[kind] = index
        log.info("hash bank %s: %s", info.name, ", ".join(f"{n:,} {k}" for k, n in sorted(info.counts.items())))
        return _LoadedBank(info, indexes)

    def _forget_metrics(self, info: BankInfo) -> None:
        for kind in info.counts:
            try:
                self.entries.remove(info.name, kind)
            except KeyError:
                pass

    @property
    def loaded(self) -> list[BankInfo]:
        return [held.info for held in self._banks.values()]

    def index(self, bank: str, kind: str) -> HammingIndex | None:
        """The in-memory index of one bank's entries of one kind (bench/banks.py measures it)."""
        return next((held.indexes.get(kind) for held in self._banks.values() if held.info.name == bank), None)

    # -- BankCheck ------------------------------------------------------------------------------

    def match_bytes(self, sha256: str, data: bytes) -> BankHit | None:
        """An entry equal to the bytes' sha256 or md5 (the md5 is computed only when a bank holds md5s)."""
        kinds = self._exact_kinds
        if not kinds:
            return None
        keys: dict[str, bytes] = {}
        if "sha256" in kinds:
            keys["sha256"] = bytes.fromhex(sha256)
        if "md5" in kinds:
            keys["md5"] = hashlib.md5(data).digest()
        found = self.records.find_exact(keys)
        if found is None:
            return None
        bank, kind, digest = found
        return self._hit(BankHit(bank, kind, digest.hex()))

    def match_perceptual(self, fingerprint: Fingerprint) -> BankHit | None:
        """The nearest bank entry within the configured distance of the image's PDQ or pHash."""
        banks = self._banks
        if not any(held.indexes for held in banks.values()):
            return None
        key = (fingerprint.pdq256, fingerprint.phash64 or None)
        clean = self._clean
        if key in clean:
            return None
        radius = {"pdq": self.settings.pdq_distance, "phash": self.settings.phash_distance}
        codes = {"pdq": fingerprint.pdq256, "phash": fingerprint.phash64 or None}
        best: tuple[float, str, str, int, int] | None = None   # (distance / bits, bank, kind, ref, distance)
        for held in banks.values():
            for kind, index in held.indexes.items():
                code = codes[kind]
                if not code:
                    continue
                found = index.search(code, radius[kind])
                if found:
                    ref, distance = found[0]
                    candidate = (distance / index.bits, held.info.name, kind, ref, distance)
                    best = candidate if best is None or candidate < best else best
        if best is None:
            if len(clean) >= _CLEAN_MAX:
                clean.clear()
            clean[key] = None
            return None
        _, bank, kind, ref, distance = best
        return self._hit(BankHit(bank, kind, self.records.entry_hash(ref).hex(), distance))

    def _hit(self, hit: BankHit) -> BankHit:
        self.matches.labels(hit.bank, hit.kind).inc()
        log.warning("image matched hash bank %s (%s)", hit.bank, hit.kind)
        return hit
