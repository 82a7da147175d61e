"""The typed hook points through which feature packages take part in deciding an image, so the core never
names a feature: what a lookup of peers gives (federation), what the hash banks are asked (banks), and who
uploaded an image and where it is used (attribution)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from protocol.verdict import Fingerprint, Verdict


@dataclass(frozen=True)
class PeerAnswers:
    """What asking the lookup peers about one image gave: the verified verdicts (with their signed documents)
    and, per peer that gave no usable answer, one line in our own words (``lookup at https://a.example
    refused: not a peer of that node``). The lines go into the answer's reason: what a remote server wrote is
    never quoted there."""

    verdicts: list[tuple[Verdict, dict]]
    problems: tuple[str, ...] = ()


PeerLookup = Callable[[Fingerprint, float], Awaitable[PeerAnswers]]
VerdictCallback = Callable[[Verdict, dict], "None | Awaitable[None]"]


@dataclass(frozen=True, slots=True)
class BankHit:
    """An image found in a hash bank: the bank's name and the entry that matched, the only bank content that
    leaves the banks (into this image's answer, its decision row and the sweep report)."""

    bank: str
    kind: str        # md5 | sha256 | pdq | phash
    entry: str       # the bank's hash, hex
    distance: int = 0

    def reason(self) -> str:
        at = f" at distance {self.distance}" if self.kind in ("pdq", "phash") else ""
        return f"in hash bank {self.bank}: {self.kind} {self.entry}{at}"


class BankCheck(Protocol):
    """What the pipeline asks the hash banks (the banks feature sets ``node.bank_check``): exact keys of the
    bytes before anything is decoded, perceptual hashes once they are known. Neither raises for a miss."""

    def match_bytes(self, sha256: str, data: bytes) -> BankHit | None: ...

    def match_perceptual(self, fingerprint: Fingerprint) -> BankHit | None: ...


@dataclass(frozen=True)
class Attribution:
    """Who uploaded an image and where it is used, as the instance's own records say (the attribution feature
    reads pict-rs, Lemmy's and Mastodon's databases, never writing to them). ``summary`` is one line for the
    log and the console ("uploaded by alice (https://lemmy.example/u/alice), in 2 posts and 1 comment", or
    "not found: no pict-rs alias for these bytes"); ``details`` is JSON-serialisable and goes into evidence
    records as it is, one key per source asked: ``pictrs`` ({aliases, ...}), ``lemmy`` ({version, uploads:
    [{alias, uploader: {person_id, name, actor_url, ...} | None, thumbnail_for_post_id, ...}], posts: [{post_id,
    ap_id, url, thumbnail_url, ...}], comments: [{comment_id, ap_id, ...}]}), ``mastodon`` ([{attachment_id,
    path, found, account, status, ...}]); readers (the console, the export) take a missing key as "not
    asked". ``problems`` says, in our own words, which source could not be asked and why (``lemmy database unreachable: ...``)."""

    looked_up_at: float
    found: bool
    summary: str
    details: dict = field(default_factory=dict)
    problems: tuple[str, ...] = ()


class Attributor(Protocol):
    """What the attribution feature sets as ``node.attribution``. ``source`` and ``key`` say where the bytes
    were met (a sweep's source identity and storage key, or ``pictrs`` and an alias when known); ``refresh``
    ignores the cache, ``search_text`` also searches post and comment bodies (slow on big instances). Never
    raises for an outage: it says so in ``problems``."""

    async def attribute(self, sha256: str, *, source: str | None = None, key: str | None = None,
                        refresh: bool = False, search_text: bool = False) -> Attribution: ...

    async def purge(self, kind: str, target_id: int, *, reason: str, actor: str) -> str:
        """An explicit admin action, never automatic: purge a Lemmy ``post``, ``comment`` or ``person`` through
        Lemmy's admin API (0.19 or 1.0 routes). Returns one line saying what Lemmy answered, which is also
        recorded with ``actor`` (who asked) and the time."""
        ...

    async def delete_image(self, alias: str, *, reason: str, actor: str) -> str:
        """An explicit admin action: delete one uploaded image (a pict-rs alias) through Lemmy (1.0's
        ``DELETE /api/v4/image``; 0.19's delete-token route). Returns and records one line, as purge does."""
        ...
