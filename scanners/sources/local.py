"""A directory on this host: pict-rs's filesystem store (``files/``: nested directories of files without
extensions) or any folder of media.

Walk order is depth-first with each directory's entries sorted by name, so a listing can resume after the
last key handed out (keys compare as tuples of path components). Only one directory's names are in memory
at a time. Hidden entries (``.name``: editors' and uploaders' temp files) are skipped, and so is any
symlink whose target lies outside the root: a sweep must never read, move or delete files it was not
pointed at. Symlinked directories are not descended (their target is inside the root and walked anyway).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable

from .base import Item, ItemError, ItemGone, Source, SourceError, TreeEntry, build_sidecar, sha256_hex, walk_tree

#: Reading more than this into memory is refused per item (a sweep reads whole images).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def check_key(key: str) -> str:
    """A key must be a plain relative path inside the root: no absolute path, no ``..``, no empty parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ItemError(key, "not a relative storage key")
    return key


class QuarantineDir:
    """A private directory (0700) holding quarantined bytes plus one JSON sidecar each (0600).

    Files are named ``<UTC time>-<random>`` so two quarantines of the same key never collide; the sidecar
    ``<name>.json`` says where the bytes came from. The location string is the data file's path.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).resolve()

    def _ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)  # mkdir's mode is masked by umask; and an existing dir may be lax

    def new_location(self) -> Path:
        self._ensure()
        return self.path / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"

    def write_sidecar(self, location: Path, sidecar: dict[str, Any]) -> None:
        tmp = location.with_name(location.name + ".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(sidecar, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.sidecar_path(location))

    def write_bytes(self, location: Path, data: bytes) -> None:
        fd = os.open(location, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def sidecar_path(location: Path) -> Path:
        return location.with_name(location.name + ".json")

    def locate(self, location: str) -> tuple[Path, dict[str, Any]]:
        """Validate a location string (must be inside this quarantine) and load its sidecar."""
        path = Path(location).resolve()
        if path.parent != self.path:
            raise SourceError(f"{location} is not inside the quarantine directory {self.path}")
        try:
            sidecar = json.loads(self.sidecar_path(path).read_text(encoding="utf-8"))
            sidecar["original"]["key"]
        except FileNotFoundError:
            raise SourceError(f"{location}: no quarantined item (sidecar missing)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{location}: unreadable sidecar ({exc})") from None
        if not path.exists():
            raise SourceError(f"{location}: quarantined bytes missing")
        return path, sidecar

    def discard(self, location: Path) -> None:
        for p in (location, self.sidecar_path(location)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _same_bytes(path: Path, data_path: Path) -> bool:
    """True when two files hold identical bytes (compared by sha256, streaming)."""
    def digest(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return path.stat().st_size == data_path.stat().st_size and digest(path) == digest(data_path)


class LocalSource(Source):
    """``/srv/pictrs/files`` or ``file:///srv/pictrs/files``.

    Options: ``quarantine_dir`` (default ``<root>/../verdict-quarantine``: outside the served tree),
    ``max_bytes`` (per-item read limit).
    """

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str], *, quarantine_dir: str | os.PathLike[str] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise SourceError(f"{root}: not a directory")
        self.quarantine_dir = QuarantineDir(quarantine_dir or self.root.parent / "verdict-quarantine")
        self.max_bytes = int(max_bytes)  # an option from the command line is a string

    def __repr__(self) -> str:
        return f"LocalSource({str(self.root)!r})"

    # -- listing ---------------------------------------------------------------------------------
    def _scan_dir(self, rel: tuple[str, ...]) -> list[tuple[str, bool, os.stat_result | None]]:
        """One directory's entries, sorted by name: (name, is_dir, stat for files). Runs in a thread."""
        directory = self.root.joinpath(*rel)
        quarantine = str(self.quarantine_dir.path)
        out: list[tuple[str, bool, os.stat_result | None]] = []
        with os.scandir(directory) as it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue
                if entry.path == quarantine:  # plain string compare: a Path per entry costs more than the stat
                    continue
                try:
                    if entry.is_symlink():
                        path = Path(entry.path)
                        target = Path(os.path.realpath(path))
                        if not target.is_relative_to(self.root):
                            self._listing_error("/".join(rel + (name,)), ValueError("symlink leaves the root"))
                            continue
                        if target.is_dir():
                            continue
                    if entry.is_dir(follow_symlinks=False):
                        out.append((name, True, None))
                    elif entry.is_file():
                        out.append((name, False, entry.stat()))
                except OSError as exc:  # vanished or unreadable entry: note it, keep walking
                    self._listing_error("/".join(rel + (name,)), exc)
        out.sort(key=lambda e: e[0])
        return out

    async def _list(self, since: float | None, after: str | None) -> AsyncIterator[Item]:
        # One walk serves both: an item at a time is a batch of one.
        async for batch in self._list_batches(since, after, 1):
            yield batch[0]

    async def _list_batches(self, since: float | None, after: str | None, size: int) -> AsyncIterator[list[Item]]:
        """A directory's run of files at a time (up to ``size``): a second sweep of a known tree is then a
        scandir + stat per file and little else."""
        try:
            root_entries = await asyncio.to_thread(self._scan_dir, ())
        except OSError as exc:
            raise SourceError(f"{self.root}: cannot list ({exc})") from exc

        def scan(parts: tuple[str, ...]) -> Awaitable[list[TreeEntry]]:
            return asyncio.to_thread(self._scan_dir, parts)

        async for rel, files in walk_tree(root_entries, scan, after, size, (OSError,), self._listing_error):
            prefix = "/".join(rel) + "/" if rel else ""
            batch = [Item(prefix + name, st.st_size, st.st_mtime, None) for name, st in files]
            self._batch_position = batch[-1].key
            yield batch

    # -- item operations -------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self.root):
            raise ItemError(key, "resolves outside the root")
        return path

    def _read_sync(self, item: Item) -> bytes:
        path = self._path(item.key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ItemError(item.key, "not a regular file")
                if st.st_size > self.max_bytes:
                    raise ItemError(item.key, f"too large ({st.st_size} bytes > {self.max_bytes})")
                return fh.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise ItemGone(item.key, "vanished") from None
        except OSError as exc:
            raise ItemError(item.key, f"unreadable: {exc.strerror or exc}") from None

    async def read(self, item: Item) -> bytes:
        return await asyncio.to_thread(self._read_sync, item)

    def _delete_sync(self, item: Item) -> None:
        path = self._path(item.key)
        try:
            os.remove(path)
        except FileNotFoundError:
            raise ItemGone(item.key, "vanished") from None
        except OSError as exc:
            raise ItemError(item.key, f"cannot delete: {exc.strerror or exc}") from None

    async def delete(self, item: Item) -> None:
        await asyncio.to_thread(self._delete_sync, item)

    def _quarantine_sync(self, item: Item, extra: dict[str, Any]) -> str:
        path = self._path(item.key)
        data = self._read_sync(item)
        st = path.stat()
        current = Item(item.key, size=len(data), mtime=st.st_mtime, etag=item.etag)
        location = self.quarantine_dir.new_location()
        # Sidecar first: if we crash after it, the original is still in place and nothing is lost.
        self.quarantine_dir.write_sidecar(location, build_sidecar(current, data, extra, str(self.root)))
        try:
            os.replace(path, location)  # same filesystem: atomic, no copy
            os.chmod(location, 0o600)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                self.quarantine_dir.discard(location)
                raise ItemError(item.key, f"cannot quarantine: {exc.strerror or exc}") from None
            self.quarantine_dir.write_bytes(location, data)
            os.remove(path)
        return str(location)

    async def quarantine(self, item: Item, sidecar: dict[str, Any]) -> str:
        return await asyncio.to_thread(self._quarantine_sync, item, sidecar)

    def _release_sync(self, location: str) -> Item:
        qpath, sidecar = self.quarantine_dir.locate(location)
        original = sidecar["original"]
        key = check_key(original["key"])
        target = self._path(key)
        if target.exists():
            if not _same_bytes(target, qpath):
                raise SourceError(f"{key}: a different file now exists there; not overwriting")
            self.quarantine_dir.discard(qpath)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(qpath, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(qpath, target)
            os.chmod(target, 0o644)
            self.quarantine_dir.discard(qpath)
        if original.get("mtime") is not None:
            os.utime(target, (time.time(), original["mtime"]))
        st = target.stat()
        if sidecar.get("sha256") and sha256_hex(target.read_bytes()) != sidecar["sha256"]:
            raise SourceError(f"{key}: restored bytes do not match the sidecar's sha256")
        return Item(key, size=st.st_size, mtime=st.st_mtime, etag=None)

    async def release(self, location: str) -> Item:
        return await asyncio.to_thread(self._release_sync, location)
