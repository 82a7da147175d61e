"""The one small interface every storage kind implements: list, read, delete, quarantine, release.

A sweep walks storage it does not own (a pict-rs `files` tree, a remote host, a bucket, pict-rs's own
admin API). Each kind differs in how it enumerates and where a quarantined item goes, but the sweep must
not care, so the contract is kept tiny (in the manner of python-threatexchange's `SignalType`):

* ``list(since)`` streams :class:`Item` s (never a full listing in memory) in an order the kind defines
  and keeps stable, so an interrupted listing can resume after the last item handed out.
* ``checkpoint()`` / ``resume(cursor)`` persist that progress as an opaque JSON string (see
  :class:`Cursor`). Listing is *at least once*: after a crash or between incremental runs an item may be
  listed again; consumers de-duplicate on ``(key, size, mtime, etag)``.
* Per-item failures (vanished, unreadable, too large) raise :class:`ItemError` from ``read``/``delete``
  and never end a listing; directory-level listing failures are logged and collected in
  ``listing_errors`` so the walk goes on.
* Storage changes between any two operations. ``quarantine`` and ``delete`` are told what was judged
  (the sha256 of the bytes classified) and act on that file or on nothing (:class:`ItemRefused`); an
  action cut short by a crash is named beforehand (``plan``) so that ``recover`` can finish it or undo it.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar

log = logging.getLogger(__name__)

#: Keep at most this many listing errors in memory; a broken tree must not grow memory without bound.
MAX_LISTING_ERRORS = 1000


@dataclass(frozen=True)
class Item:
    """One stored object. ``key`` is stable (relative path, S3 key, pict-rs alias); ``size``, ``mtime``
    (seconds since the epoch) and ``etag`` are whatever the storage offers cheaply, used to notice that
    the object behind a key changed."""

    key: str
    size: int | None = None
    mtime: float | None = None
    etag: str | None = None


class SourceError(Exception):
    """The source as a whole is misconfigured or unreachable (bad URL, auth failure, retries exhausted)."""


class ItemError(SourceError):
    """One item could not be read/deleted/moved. The sweep records it and goes on with the next item."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ItemGone(ItemError):
    """The item vanished between listing and acting on it (someone else deleted it: not a failure of ours)."""


class ItemRefused(ItemError):
    """The source declined to act: acting would have touched something other than the file that was judged
    (bytes changed, a second hard link shares them, the name now holds a link or a FIFO). Nothing was
    changed, or what was moved is back in place; ``reason`` says which."""


class ItemChanged(ItemRefused):
    """The item's bytes (or the file behind its name) are no longer those that were judged."""


class NotRegularFile(ItemRefused):
    """The name holds a symbolic link, FIFO, socket, device or directory: never read, moved or deleted,
    because following or opening it could reach outside the storage or block forever. ``mode``: the
    ``st_mode`` seen, where the storage tells it."""

    def __init__(self, key: str, reason: str, mode: int | None = None):
        super().__init__(key, reason)
        self.mode = mode


@dataclass(frozen=True)
class Recovered:
    """What an action that was under way when the process died turned out to be, once looked at.

    ``state``: ``quarantined`` (bytes and sidecar at ``location``, the name gone from the storage),
    ``deleted``, ``pending`` (the storage still holds the judged bytes: partial traces were undone and the
    action is to be done again), ``gone`` (the judged bytes left the storage without our doing) or
    ``review`` (neither finished nor undone safely: ``reason`` tells the admin what to look at)."""

    state: str
    reason: str = ""
    location: str | None = None


@dataclass(frozen=True)
class Cursor:
    """Progress of listing, serialised by :meth:`Source.checkpoint`.

    ``since``: lower bound (mtime, epoch seconds) of the next incremental listing; None = list all.
    ``after``: position (source-defined, usually the last key handed out) inside an interrupted listing.
    ``high``: largest mtime seen so far by the interrupted listing; ``elapsed``: seconds it has run.

    Why an overlap: an object written *during* a listing into a part already walked is missed by that
    listing; its mtime is at least the listing's start, and every mtime the listing saw is at most its end,
    so the next run starts at ``high - (elapsed + slack)``. Only differences of the storage's own clock are
    used, so skew between our clock and a remote host's does not matter.
    """

    since: float | None = None
    after: str | None = None
    high: float | None = None
    elapsed: float = 0.0

    def dumps(self) -> str:
        return json.dumps({"v": 1, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> "Cursor":
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != 1:
                raise ValueError("not a version 1 cursor")
            since, after, high = raw.get("since"), raw.get("after"), raw.get("high")
            elapsed = float(raw.get("elapsed") or 0.0)
            for value in (since, high):
                if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                    raise ValueError("since/high must be numbers")
            if after is not None and not isinstance(after, str):
                raise ValueError("after must be a string")
        except (ValueError, TypeError) as exc:
            raise SourceError(f"invalid listing cursor: {exc}") from None
        return cls(since=since, after=after, high=high, elapsed=max(elapsed, 0.0))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quarantine_name() -> str:
    """A fresh name for a quarantined item: UTC time (so a quarantine lists in order) plus 48 random bits
    (so two quarantines of the same key in the same second never collide)."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(6)}"


def build_sidecar(item: Item, data: bytes, extra: dict[str, Any], source: str) -> dict[str, Any]:
    """What is kept next to a quarantined object: the caller's evidence (verdict id, scores, reason) plus
    enough to put it back exactly where it was and to prove the bytes are unchanged."""
    return {
        **extra,
        "original": {
            "source": source,
            "key": item.key,
            "size": item.size if item.size is not None else len(data),
            "mtime": item.mtime,
            "etag": item.etag,
        },
        "sha256": sha256_hex(data),
        "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


#: One directory entry as a tree-shaped source scans it: (name, is_dir, the kind's stat for files).
TreeEntry = tuple[str, bool, Any]


async def walk_tree(root_entries: list[TreeEntry], scan: Callable[[tuple[str, ...]], Awaitable[list[TreeEntry]]],
                    after: str | None, size: int, errors: tuple[type[BaseException], ...],
                    on_error: Callable[[str, BaseException], None]) -> AsyncIterator[tuple[tuple[str, ...], list]]:
    """Depth-first walk of a directory tree in name order (the local and SSH kinds): yields one directory's
    run of files at a time, at most ``size``, as (directory parts, [(name, stat), ...]).

    Keys compare as tuples of path components, so ``after`` (the last key handed out) resumes the walk:
    directories wholly before it are not scanned, only those on its path. An explicit stack of sorted
    directories keeps one directory's names per level in memory. ``scan(parts)`` returns a directory's
    entries sorted by name; a directory whose scan raises one of ``errors`` is reported to ``on_error``
    and skipped, so one unreadable directory does not end the walk."""
    after_parts = tuple(after.split("/")) if after else None
    stack: list[tuple[tuple[str, ...], list[TreeEntry], int]] = [((), root_entries, 0)]
    while stack:
        rel, entries, index = stack[-1]
        if index >= len(entries):
            stack.pop()
            continue
        name, is_dir, _ = entries[index]
        if is_dir:
            stack[-1] = (rel, entries, index + 1)
            parts = rel + (name,)
            if after_parts is not None and after_parts[: len(parts)] != parts and parts <= after_parts:
                continue
            try:
                stack.append((parts, await scan(parts), 0))
            except errors as exc:
                on_error("/".join(parts), exc)
            continue
        files: list[tuple[str, Any]] = []
        while index < len(entries) and len(files) < size:
            name, is_dir, st = entries[index]
            if is_dir:
                break
            index += 1
            if after_parts is not None:
                if rel + (name,) <= after_parts:
                    continue
                after_parts = None  # sorted depth-first order: everything from here on comes later
            files.append((name, st))
        stack[-1] = (rel, entries, index)
        if files:
            yield rel, files


class Source(abc.ABC):
    """A storage location to sweep. Subclasses implement ``_list`` and the item operations."""

    scheme: ClassVar[str]
    #: Seconds added to the measured listing time when computing the next incremental bound (mtime
    #: resolution, writes that land just before a listing starts, slow metadata propagation).
    overlap_slack: float = 120.0

    def __init__(self) -> None:
        self._cursor = Cursor()
        self.listing_errors: list[str] = []

    # -- listing ---------------------------------------------------------------------------------
    async def list(self, since: float | None = None) -> AsyncIterator[Item]:
        """Stream items whose mtime >= ``since`` (or the resumed cursor's bound when ``since`` is None).

        Items without an mtime are always listed. A listing that runs to its end moves the cursor to the
        next incremental bound; an abandoned one leaves ``after`` at the last item handed out.
        """
        # One cursor discipline for both ways of listing: an item at a time is a batch of one.
        async for batch in self.list_batches(since, size=1):
            yield batch[0]

    async def list_batches(self, since: float | None = None, size: int = 256) -> AsyncIterator[list[Item]]:
        """Like :meth:`list`, in lists of items: the same items, order and cursor rules, but the cursor moves
        once per batch (a batch is handed out whole: checkpoint only after all of it is processed).

        Why: a sweep of a large tree that is already known spends most of its time per item in the
        generator machinery and cursor updates, not in the storage; a batch pays those once."""
        start = self._cursor
        lower = since if since is not None else start.since
        high, elapsed = start.high, start.elapsed
        began = time.monotonic()
        async for raw in self._list_batches(lower, start.after, size):
            batch = raw if lower is None else [i for i in raw if i.mtime is None or i.mtime >= lower]
            if not raw:
                continue
            for item in batch:
                if item.mtime is not None and (high is None or item.mtime > high):
                    high = item.mtime
            self._cursor = Cursor(since=start.since, after=self._batch_position, high=high,
                                  elapsed=elapsed + time.monotonic() - began)
            if batch:
                yield batch
        total = elapsed + time.monotonic() - began
        if high is None:
            next_since = lower
        else:
            next_since = high - (total + self.overlap_slack)
            if lower is not None:
                next_since = max(next_since, lower)
        self._cursor = Cursor(since=next_since)

    async def _list_batches(self, since: float | None, after: str | None, size: int) -> AsyncIterator[list[Item]]:
        """Batches of ``_list`` in its order; sets ``_batch_position`` to the last item's position before
        each yield. Kinds with a cheaper bulk walk override this (keeping the same order)."""
        batch: list[Item] = []
        async for item in self._list(since, after):
            batch.append(item)
            self._batch_position = self._position(item)  # now: some kinds forget it after the next item
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    _batch_position: str | None = None

    @abc.abstractmethod
    def _list(self, since: float | None, after: str | None) -> AsyncIterator[Item]:
        """Yield items in the kind's stable order, starting after position ``after``. ``since`` is a
        hint: kinds that can filter server-side do; the base filters the rest."""

    def _position(self, item: Item) -> str:
        """The resume position of ``item`` in listing order (the key, unless the kind orders otherwise)."""
        return item.key

    def checkpoint(self) -> str:
        """The listing progress as an opaque string to persist; valid for :meth:`resume` of the same URL."""
        return self._cursor.dumps()

    def resume(self, cursor: str | None) -> None:
        """Continue from a saved :meth:`checkpoint` (None = from scratch). Raises SourceError if garbage."""
        self._cursor = Cursor.loads(cursor) if cursor else Cursor()

    def _listing_error(self, where: str, exc: BaseException) -> None:
        message = f"{where}: {exc.__class__.__name__}: {exc}"
        log.warning("%s listing skipped %s", self.scheme, message)
        if len(self.listing_errors) < MAX_LISTING_ERRORS:
            self.listing_errors.append(message)

    # -- item operations -------------------------------------------------------------------------
    @abc.abstractmethod
    async def read(self, item: Item) -> bytes:
        """The item's bytes. Raises ItemGone / NotRegularFile / ItemError (too large, unreadable)."""

    @abc.abstractmethod
    async def delete(self, item: Item, *, sha256: str | None = None, location: str | None = None) -> None:
        """Remove the item from the storage for good. Raises ItemGone if it was already gone, ItemRefused
        (nothing removed) when its bytes are not ``sha256`` (those judged). ``location``: what
        :meth:`plan` returned for this delete, if anything."""

    @abc.abstractmethod
    async def quarantine(self, item: Item, sidecar: dict[str, Any], *, sha256: str | None = None,
                         location: str | None = None) -> str:
        """Move the item out of the served storage into a private (0700) quarantine, with a JSON sidecar
        (``sidecar`` + original key/size/mtime/etag, sha256, time). Returns the location string that
        :meth:`release` takes (``location`` when given: what :meth:`plan` returned). Only the bytes
        ``sha256`` (those judged) are quarantined: anything else raises ItemRefused and stays in place."""

    def plan(self, item: Item, action: str) -> str | None:
        """Where an action (``quarantine`` / ``delete``) on ``item`` will leave its traces, chosen before
        it starts and recorded before storage is touched, so that :meth:`recover` knows where to look
        after a crash. Pure: no I/O. For a quarantine: the location it will have."""
        if action != "quarantine":
            return None
        return self._new_quarantine_location()

    def _new_quarantine_location(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} does not quarantine")

    async def recover(self, item: Item, action: str, location: str | None, sha256: str | None) -> Recovered:
        """Settle an action (``quarantining`` / ``deleting``) that a crash interrupted: finish it when its
        effect is complete, undo its partial traces when the storage still holds the judged bytes, or say
        why neither is safe. Idempotent: recovering a settled action again changes nothing."""
        present = await self._holds(item, sha256)
        if action == "deleting":
            return Recovered("pending" if present else "deleted")
        if location is None:
            if present:
                return Recovered("pending")
            return Recovered("review", "interrupted before a quarantine location was recorded, and the "
                                       "storage no longer holds the judged bytes: look in the quarantine")
        if await self._quarantine_holds(location, sha256):
            if present:  # a copy-then-remove was cut short after the copy
                await self.delete(item, sha256=sha256)
            return Recovered("quarantined", location=location)
        await self._discard_quarantine(location)
        return Recovered("pending") if present else Recovered("gone", "vanished before it was quarantined")

    async def _holds(self, item: Item, sha256: str | None) -> bool:
        """Whether the storage still holds the judged bytes under the item's key."""
        try:
            data = await self.read(item)
        except (ItemGone, ItemRefused):
            return False
        return sha256 is None or sha256_hex(data) == sha256

    async def _quarantine_holds(self, location: str, sha256: str | None) -> bool:
        """Whether ``location`` holds a complete quarantined item: the judged bytes and their sidecar."""
        raise NotImplementedError(f"{type(self).__name__} does not quarantine")

    async def _discard_quarantine(self, location: str) -> None:
        """Remove what an unfinished quarantine left at ``location`` (a sidecar without its bytes)."""
        raise NotImplementedError(f"{type(self).__name__} does not quarantine")

    @abc.abstractmethod
    async def release(self, location: str) -> Item:
        """Put a quarantined item back under its original key (a false positive) and return it."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def __aenter__(self) -> "Source":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
