"""Storage sweeps: walk a source (local dir, SSH, S3, pict-rs), decide every item through the node's
Pipeline (the same verdicts, policy, signatures and federation as the pict-rs hook), act on positives.

    listing (batches) -> known? (stat + dict lookup) -> read -> [override?] -> Pipeline.check
        -> record -> action (quarantine / delete / dry-run; unreadable and videos left alone by default)

Why it is shaped like this:
  - A second sweep of a large tree must cost about a directory walk: the items already decided are
    loaded once into a dict (key -> size, mtime, etag) and a listed item whose stat matches is skipped
    without a read or a query. Content seen under another key is caught by the Pipeline's verdict store
    (sha256 / pixel key / perceptual hashes, peers' verdicts included), so it is not classified again.
  - `--all` is checkpointed: item rows and the source's cursor are written in one transaction, and the
    cursor only covers batches whose every item is recorded. A killed sweep resumes after the last such
    batch; items decided after it are listed again and answered from the store (no second inference).
  - Nothing in one item (hostile bytes, an unreadable file, a vanished key, a failed action) stops a
    sweep: it is recorded and the sweep goes on. Only the source as a whole failing (SourceError after
    the source's own retries) ends a pass, and the checkpoint lets the next run resume.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Literal

from node.sweeps.actions import ACTIONS, MEDIA_ACTIONS, act, evidence_guard
from node.sweeps.recovery import reconcile
from node.sweeps.records import ItemRecord, SweepRecords, source_identity
from scanners.backoff import Backoff
from scanners.sources import Item, ItemError, ItemGone, NotRegularFile, Source, SourceError

log = logging.getLogger("verdict_node.sweep")

Mode = Literal["all", "since", "daemon"]


@dataclass
class SweepOptions:
    """How one sweep runs (the CLI's flags)."""

    mode: Mode = "all"
    since_seconds: float | None = None   # since / daemon's first pass: items modified in the last N seconds
    interval: float = 60.0               # daemon: seconds between passes
    cycles: int | None = None            # daemon: stop after this many passes (None: forever)
    workers: int = 4                     # items read/decoded/classified at once
    action: str = "quarantine"           # for positives: quarantine | delete | dry-run
    on_unreadable: str = "leave"         # leave | quarantine | delete
    on_video: str = "leave"
    budget: float = 600.0                # seconds one item may take in the pipeline (no pict-rs waiting here)
    commit_seconds: float = 1.0          # how often rows + cursor are written
    commit_items: int = 256
    batch_size: int = 256
    force: bool = False                  # delete even what an evidence record keeps (node.evidence)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        for name in ("on_unreadable", "on_video"):
            if getattr(self, name) not in MEDIA_ACTIONS:
                raise ValueError(f"{name} must be one of {', '.join(MEDIA_ACTIONS)}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")


@dataclass
class SweepStats:
    """Counters of one run (cumulative over a resumed `--all` and over a daemon's passes)."""

    listed: int = 0        # items the listing handed out
    known: int = 0         # skipped on their stat: decided before, unchanged
    decided: int = 0       # went through the pipeline (or an override)
    cache: int = 0         # answered from the verdict store (own earlier verdicts, any key)
    peer: int = 0          # answered by peers' verdicts
    inferred: int = 0      # classified now
    positives: int = 0
    quarantined: int = 0
    deleted: int = 0
    dry_run: int = 0
    overridden: int = 0    # the admin released these bytes before
    unreadable: int = 0
    video: int = 0
    unknown: int = 0       # no classifier / queue full: tried again next sweep
    errors: int = 0        # read failures
    gone: int = 0          # vanished between listing and reading
    skipped: int = 0       # not a regular file when read (FIFO, socket, device, symlink): recorded, never read
    action_failures: int = 0
    refused: int = 0       # not acted on: the file changed after it was judged, or has another hard link
    recovered: int = 0     # actions a crash had cut short, settled before this run
    listing_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "SweepStats":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in (raw or {}).items() if k in names})

    def line(self) -> str:
        return (f"scanned {self.listed}, known {self.known}, from store {self.cache}, from peers {self.peer}, "
                f"inferred {self.inferred}, positives {self.positives} (quarantined {self.quarantined}, "
                f"deleted {self.deleted}, dry-run {self.dry_run}), unreadable {self.unreadable}, video {self.video}, "
                f"undecided {self.unknown}, skipped {self.skipped}, refused {self.refused}, "
                f"errors {self.errors + self.action_failures + self.listing_errors}")


class Progress:
    """A one-line bar (rate, ETA) on a terminal; a plain log line per interval otherwise."""

    def __init__(self, stream: IO[str] | None = None, *, tty: bool | None = None, interval: float = 30.0,
                 expected: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.2 if self.tty else interval
        self.expected = expected
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, stats: SweepStats, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = stats.listed / elapsed
        eta = ""
        if self.expected and rate > 0 and stats.listed < self.expected:
            left = (self.expected - stats.listed) / rate
            eta = f" ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
        if self.tty:
            done = f"{stats.listed}/{self.expected}" if self.expected else f"{stats.listed}"
            bar = ""
            if self.expected:
                filled = min(20, int(20 * stats.listed / self.expected))
                bar = "[" + "#" * filled + "." * (20 - filled) + "] "
            self.stream.write(f"\r{bar}{done} items {rate:,.0f}/s{eta}  inferred {stats.inferred} "
                              f"positives {stats.positives} errors {stats.errors}   ")
        else:
            self.stream.write(f"sweep: {stats.line()}; {rate:,.0f} items/s{eta}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class _Checkpoints:
    """Which listing cursor may be saved: the one handed out with the newest batch whose items (and every
    earlier batch's) are all recorded. Batches finish out of order with parallel workers."""

    def __init__(self) -> None:
        self._open: collections.OrderedDict[int, list] = collections.OrderedDict()  # seq -> [left, cursor]
        self.ready: str | None = None

    def add(self, seq: int, cursor: str, items: int) -> None:
        self._open[seq] = [items, cursor]
        self._advance()

    def done(self, seq: int) -> None:
        self._open[seq][0] -= 1
        self._advance()

    def _advance(self) -> None:
        while self._open:
            seq, (left, cursor) = next(iter(self._open.items()))
            if left > 0:
                return
            self.ready = cursor
            self._open.popitem(last=False)


async def _stop(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. A cancellation is repeated until it takes:
    before Python 3.12, ``asyncio.wait_for`` (the pipeline's inference budget uses it) loses one that
    arrives just as the awaited inference completes, and a worker that lost it would keep a stopped
    sweep waiting for it forever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so not logged as "never retrieved": the pass is ending anyway


class Sweep:
    """One source swept with one node. `await run()` does the passes that the options ask for."""

    def __init__(self, node: Any, source: Source, url: str, options: SweepOptions | None = None,
                 progress: Progress | None = None) -> None:
        self.node = node
        self.source = source
        self.url = url
        self.options = options or SweepOptions()
        self.progress = progress
        self.records = SweepRecords(node.store)
        self.source_id = source_identity(url)
        self.stats = SweepStats()
        self.run_id: int | None = None
        self._pending: list[ItemRecord] = []
        self._overrides: set[str] = set()
        self._inferred_ids: set[str | None] = set()
        self._last_commit = 0.0

    # -- passes ----------------------------------------------------------------------------------

    async def run(self) -> SweepStats:
        opts = self.options
        # Actions a killed run left under way are settled first: their rows and files say where things are.
        settled = await reconcile(self.records, self.source, self.source_id)
        recovered = sum(n for state, n in settled.items() if state != "left")
        self.stats.recovered += recovered
        if opts.mode == "all":
            resumed = self.records.unfinished_run(self.source_id, "all")
            if resumed is not None:
                self.run_id = int(resumed["id"])
                self.stats = SweepStats.from_dict(json.loads(resumed["stats"] or "{}"))
                self.stats.recovered += recovered
                self.source.resume(resumed["cursor"])
                log.info("resuming sweep run %d of %s", self.run_id, self.source_id)
            else:
                self.run_id = self.records.start_run(self.source_id, self.url, "all", opts.action)
            await self._pass(None)
            self.records.finish_run(self.run_id, self.source.checkpoint(), self.stats.as_dict())
        elif opts.mode == "since":
            self.run_id = self.records.start_run(self.source_id, self.url, "since", opts.action)
            since = time.time() - (opts.since_seconds or 0.0)
            await self._pass(since)
            self.records.finish_run(self.run_id, None, self.stats.as_dict())
        else:
            cursor = self.records.last_cursor(self.source_id, "daemon")
            self.run_id = self.records.start_run(self.source_id, self.url, "daemon", opts.action)
            first_since = None
            if cursor:
                self.source.resume(cursor)
            elif opts.since_seconds is not None:
                first_since = time.time() - opts.since_seconds
            cycle = 0
            while True:
                try:
                    await self._pass(first_since)
                    first_since = None
                except SourceError as exc:  # storage down for longer than the source's retries: try next pass
                    log.error("sweep pass over %s failed: %s; next pass in %g s", self.source_id, exc, opts.interval)
                    self.stats.listing_errors += 1
                cycle += 1
                if opts.cycles is not None and cycle >= opts.cycles:
                    break
                await asyncio.sleep(opts.interval)
            self.records.finish_run(self.run_id, self.source.checkpoint(), self.stats.as_dict())
        if self.progress is not None:
            self.progress.update(self.stats, force=True)
        return self.stats

    async def _pass(self, since: float | None) -> None:
        """One listing of the source: producer (listing + known-check) and `workers` consumers."""
        opts = self.options
        known = self.records.known_items(self.source_id, redo_dry_run=opts.action != "dry-run")
        self._overrides = self.records.overrides()
        queue: asyncio.Queue[tuple[int, Item] | None] = asyncio.Queue(maxsize=opts.workers * 4)
        checkpoints = _Checkpoints()
        workers = [asyncio.create_task(self._worker(queue, checkpoints), name=f"sweep-worker-{i}")
                   for i in range(opts.workers)]
        errors_before = len(self.source.listing_errors)
        stats = self.stats
        # Listing is at least once (a page boundary may repeat an item): an item already handed to a worker
        # in this pass is not handed out again (two quarantines of one item would race).
        handed: set[tuple[str, int | None, float | None, str | None]] = set()
        try:
            seq = 0
            async for batch in self.source.list_batches(since, size=opts.batch_size):
                seq += 1
                fresh = []
                for item in batch:
                    seen = known.get(item.key)
                    if seen is not None and seen[0] == item.size and seen[1] == item.mtime and seen[2] == item.etag:
                        continue
                    identity = (item.key, item.size, item.mtime, item.etag)
                    if identity in handed:
                        continue
                    handed.add(identity)
                    fresh.append(item)
                stats.listed += len(batch)
                stats.known += len(batch) - len(fresh)
                checkpoints.add(seq, self.source.checkpoint(), len(fresh))
                for item in fresh:
                    await queue.put((seq, item))
                if self.progress is not None:
                    self.progress.update(stats)
                await self._maybe_commit(checkpoints)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        except BaseException:
            await _stop(workers)
            stats.listing_errors += len(self.source.listing_errors) - errors_before
            await self._commit(checkpoints.ready)  # what is recorded so far is kept; the cursor covers it
            raise
        stats.listing_errors += len(self.source.listing_errors) - errors_before
        await self._commit(self.source.checkpoint())  # the listing ended: the cursor moved to the next bound

    async def _worker(self, queue: asyncio.Queue, checkpoints: _Checkpoints) -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            seq, item = job
            try:
                record = await self._decide(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug on one item must not end the sweep
                log.exception("sweep: %s failed", item.key)
                self.stats.errors += 1
                record = self._record(item, outcome="error", origin="internal", reason=f"{type(exc).__name__}: {exc}")
            if record is not None:
                self._pending.append(record)
            checkpoints.done(seq)
            await self._maybe_commit(checkpoints)

    # -- one item --------------------------------------------------------------------------------

    def _record(self, item: Item, **fields: Any) -> ItemRecord:
        return ItemRecord(source=self.source_id, key=item.key, size=item.size, mtime=item.mtime, etag=item.etag,
                          run_id=self.run_id, decided_at=time.time(), **fields)

    async def _decide(self, item: Item) -> ItemRecord | None:
        stats, opts = self.stats, self.options
        try:
            data = await self.source.read(item)
        except ItemGone:
            stats.gone += 1
            return None
        except NotRegularFile as exc:  # a FIFO, socket, device or link: never read, never CSAM
            stats.skipped += 1
            return self._record(item, outcome="skipped", origin="read", reason=exc.reason)
        except ItemError as exc:
            stats.errors += 1
            return self._record(item, outcome="error", origin="read", reason=exc.reason)
        if self._overrides:
            sha = hashlib.sha256(data).hexdigest()
            if sha in self._overrides:
                stats.decided += 1
                stats.overridden += 1
                return self._record(item, outcome="allow", origin="override", sha256=sha,
                                    reason="released as a false positive by the admin")
        result = await self._check(data, item.key)
        stats.decided += 1
        fp = result.fingerprint
        outcome, origin, reason = result.outcome, result.source, result.reason
        if fp is None and outcome == "block":
            fp = self._fingerprint_from_verdicts(result)
        pixel = fp.pixel_sha256 if fp is not None else None
        if outcome == "block" and pixel is not None and pixel in self._overrides:
            outcome, origin, reason = "allow", "override", "released as a false positive by the admin (same pixels)"
            stats.overridden += 1
        record = self._record(item, outcome=outcome, origin=origin, reason=reason, sha256=result.sha256,
                              pixel_sha256=pixel, phash64=(fp.phash64 or None) if fp else None,
                              pdq256=fp.pdq256 if fp else None, scores=result.scores,
                              verdict_ids=tuple(result.verdict_ids))
        if result.inferred and result.verdict_id not in self._inferred_ids:
            self._inferred_ids.add(result.verdict_id)  # twins that shared one inference count it once
            stats.inferred += 1
        elif origin in ("cache", "inference"):
            stats.cache += 1
        elif origin == "peer":
            stats.peer += 1
        action = "leave"
        if outcome == "block":
            stats.positives += 1
            action = opts.action
        elif outcome == "unreadable":
            stats.unreadable += 1
            action = opts.on_unreadable
        elif outcome == "video":
            stats.video += 1
            action = opts.on_video
        elif outcome == "unknown":
            stats.unknown += 1
        if action == "leave":
            return record
        done = await act(self.source, item, record, action, self.records, actor_id=self.node.actor_id,
                         protect=evidence_guard(self.node.evidence, force=opts.force))
        if done.action == "quarantined":
            stats.quarantined += 1
        elif done.action == "deleted":
            stats.deleted += 1
        elif done.action == "dry-run":
            stats.dry_run += 1
        elif done.action == "failed":
            stats.action_failures += 1
        elif done.action == "refused":
            stats.refused += 1
        return done

    def _fingerprint_from_verdicts(self, result: Any) -> Any:
        """An exact-key hit is answered without decoding, so it has no perceptual hashes of its own; a positive
        is reported with them, taken from the verdict on the same bytes (or the same pixels)."""
        fingerprints = [held.verdict.fingerprint for held in map(self.node.store.get_verdict, result.verdict_ids)
                        if held is not None]
        for fingerprint in fingerprints:
            if fingerprint.sha256 == result.sha256:
                return fingerprint
        if fingerprints:  # no decode happened, so the hit was on the pixel key: same pixels
            return dataclasses.replace(fingerprints[0], sha256=result.sha256)
        return None

    async def _check(self, data: bytes, key: str) -> Any:
        """Pipeline.check; a full classifier queue (other callers, e.g. the pict-rs hook in the same node)
        is waited out instead of leaving the item undecided."""
        backoff = Backoff(0.05, 2.0)
        for _ in range(8):
            result = await self.node.pipeline.check(data, source="sweep", source_key=key, budget=self.options.budget)
            if not result.busy:
                return result
            await asyncio.sleep(backoff.next())
        return result

    # -- commits ---------------------------------------------------------------------------------

    async def _maybe_commit(self, checkpoints: _Checkpoints) -> None:
        now = time.monotonic()
        if len(self._pending) >= self.options.commit_items or now - self._last_commit >= self.options.commit_seconds:
            await self._commit(checkpoints.ready)

    async def _commit(self, cursor: str | None) -> None:
        """Decision rows, then item rows + cursor in one transaction (from this thread: SQLite writes of a
        few hundred rows take milliseconds, and the rows must be in before the cursor moves)."""
        self._last_commit = time.monotonic()
        rows, self._pending = self._pending, []
        self.node.store.flush()
        self.records.commit(rows, self.run_id, cursor, self.stats.as_dict())
