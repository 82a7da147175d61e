"""A directory on this host: pict-rs's filesystem store (``files/``: nested directories of files without
extensions) or any folder of media.

Walk order is depth-first with each directory's entries sorted by name, so a listing can resume after the
last key handed out (keys compare as tuples of path components). Only one directory's names are in memory
at a time. Hidden entries (``.name``: editors' and uploaders' temp files) are skipped, and so is any
symlink whose target lies outside the root: a sweep must never read, move or delete files it was not
pointed at. Symlinked directories are not descended (their target is inside the root and walked anyway).

Everything after listing assumes the tree changes between any two system calls (see
:mod:`scanners.sources.nofollow`): only regular files are read, moved or deleted, never through a
symbolic link, never one with a second hard link, and always the very file that was checked; FIFOs,
sockets, devices and symlinks are listed so that the sweep records them, and refused. Every blocking
call runs on a daemon thread with a deadline (:mod:`scanners.sources.blocking`), so a hung mount can
neither stall a sweep forever nor keep a stopped one from exiting.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from .base import (Item, ItemChanged, ItemError, ItemGone, ItemRefused, NotRegularFile, Recovered, Source,
                   SourceError, TreeEntry, build_sidecar, quarantine_name, sha256_hex, walk_tree)
from .blocking import CallTimedOut, DeadlineThreads, StorageNotAnswering
from .nofollow import (STAGED, close_all, describe, open_directories, open_parent, open_private_directory,
                       open_regular, put_back, read_fd, refuse_hard_links, remove_directory, same_file, stage,
                       write_new)
from .quarantine_dir import QuarantineDir

__all__ = ["DEFAULT_MAX_BYTES", "LocalSource", "QuarantineDir", "check_key"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Reading more than this into memory is refused per item (a sweep reads whole images).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Seconds one filesystem call may take before the item is given up (a hung NFS/FUSE mount).
DEFAULT_IO_TIMEOUT = 120.0
#: Staging directories (hidden, so never listed) made next to a file while it is moved away.
QUARANTINE_STAGING = ".verdict-"
DELETE_STAGING = ".verdict-delete-"


def check_key(key: str) -> str:
    """A key must be a plain relative path inside the root: no absolute path, no ``..``, no empty parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ItemError(key, "not a relative storage key")
    return key


class LocalSource(Source):
    """``/srv/pictrs/files`` or ``file:///srv/pictrs/files``.

    Options: ``quarantine_dir`` (default ``<root>/../verdict-quarantine``: outside the served tree),
    ``max_bytes`` (per-item read limit), ``io_timeout`` (seconds per filesystem call, default 120).
    """

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str], *, quarantine_dir: str | os.PathLike[str] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, io_timeout: float = DEFAULT_IO_TIMEOUT):
        super().__init__()
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise SourceError(f"{root}: not a directory")
        self.quarantine_dir = QuarantineDir(quarantine_dir or self.root.parent / "verdict-quarantine")
        self.max_bytes = int(max_bytes)  # an option from the command line is a string
        self.threads = DeadlineThreads(float(io_timeout))

    def __repr__(self) -> str:
        return f"LocalSource({str(self.root)!r})"

    async def _blocking(self, fn: Callable[..., T], *args: Any, key: str | None, what: str) -> T:
        """``fn(*args)`` on a deadline thread. A call past its deadline fails this item (ItemError) or, when
        listing (``key`` None), this directory (OSError); a storage with too many stuck calls fails the pass."""
        try:
            return await self.threads.run(fn, *args, what=what)
        except CallTimedOut as exc:
            if key is None:
                raise OSError(errno.ETIMEDOUT, f"{exc} (a hung mount?)") from None
            raise ItemError(key, f"{exc} (a hung mount?)") from None
        except StorageNotAnswering as exc:
            raise SourceError(f"{self.root}: {exc}") from None

    def _open_root(self) -> int:
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    # -- listing ---------------------------------------------------------------------------------
    def _scan_dir(self, rel: tuple[str, ...]) -> list[tuple[str, bool, os.stat_result | None]]:
        """One directory's entries, sorted by name: (name, is_dir, stat for files). Runs in a thread.

        Regular files and symlinks to files inside the root are listed with the file's stat; FIFOs,
        sockets and devices with their own (reading refuses them, and the sweep records why)."""
        quarantine = str(self.quarantine_dir.path)
        directory = os.path.join(self.root, *rel)
        out: list[tuple[str, bool, os.stat_result | None]] = []
        root_fd = self._open_root()
        try:
            try:
                dir_fd = open_directories(root_fd, rel, "/".join(rel))
            except ItemError as exc:  # swapped for a link or gone since its parent was listed
                raise OSError(errno.ENOTDIR, exc.reason) from None
        finally:
            os.close(root_fd)
        try:
            with os.scandir(dir_fd) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    path = os.path.join(directory, name)
                    if path == quarantine:  # plain string compare: a Path per entry costs more than the stat
                        continue
                    try:
                        if entry.is_symlink():
                            target = Path(os.path.realpath(path))
                            if not target.is_relative_to(self.root):
                                self._listing_error("/".join(rel + (name,)), ValueError("symlink leaves the root"))
                                continue
                            if target.is_dir():
                                continue
                            if entry.is_file():
                                out.append((name, False, entry.stat()))
                        elif entry.is_dir(follow_symlinks=False):
                            out.append((name, True, None))
                        else:
                            out.append((name, False, entry.stat(follow_symlinks=False)))
                    except OSError as exc:  # vanished or unreadable entry: note it, keep walking
                        self._listing_error("/".join(rel + (name,)), exc)
        finally:
            os.close(dir_fd)
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
            root_entries = await self._blocking(self._scan_dir, (), key=None, what="list")
        except OSError as exc:
            raise SourceError(f"{self.root}: cannot list ({exc})") from exc

        def scan(parts: tuple[str, ...]) -> Awaitable[list[TreeEntry]]:
            return self._blocking(self._scan_dir, parts, key=None, what="list")

        async for rel, files in walk_tree(root_entries, scan, after, size, (OSError,), self._listing_error):
            prefix = "/".join(rel) + "/" if rel else ""
            batch = [Item(prefix + name, st.st_size, st.st_mtime, None) for name, st in files]
            self._batch_position = batch[-1].key
            yield batch

    # -- reading ---------------------------------------------------------------------------------
    def _symlink_reason(self, key: str) -> str:
        """Why a symlink is not read, for the record: where it leads (a message only; nothing follows it)."""
        target = Path(os.path.realpath(self.root / key))
        if not target.is_relative_to(self.root):
            return "not a regular file but a symbolic link leading outside the root: not followed"
        return (f"not a regular file but a symbolic link to {target.relative_to(self.root).as_posix()}: "
                f"not followed (that file is swept under its own name)")

    def _parent_of(self, key: str) -> tuple[list[int], int, str]:
        """Descriptors of the root and of the directory holding ``key`` (reached without following a
        link), the latter last: (fds to close, parent fd, the key's last component)."""
        fds: list[int] = []
        try:
            fds.append(self._open_root())
            parent_fd, name = open_parent(fds[0], check_key(key))
            fds.append(parent_fd)
        except OSError as exc:  # the root itself is gone or unreadable
            close_all(reversed(fds))
            raise ItemError(key, f"unreadable: {exc.strerror or exc}") from None
        except BaseException:
            close_all(reversed(fds))
            raise
        return fds, parent_fd, name

    def _open_item(self, key: str, doing: str) -> tuple[list[int], int, str, int, os.stat_result]:
        """Descriptors of the item's directory and of the item itself, checked to be a regular file:
        (all fds to close, parent fd, name, file fd, fstat)."""
        fds, parent_fd, name = self._parent_of(key)
        try:
            fd, st = open_regular(parent_fd, name, key, doing)
        except NotRegularFile as exc:
            close_all(reversed(fds))
            if exc.mode is not None and stat.S_ISLNK(exc.mode):
                raise NotRegularFile(key, self._symlink_reason(key), mode=exc.mode) from None
            raise
        except BaseException:
            close_all(reversed(fds))
            raise
        fds.append(fd)
        return fds, parent_fd, name, fd, st

    def _bytes_of(self, key: str, fd: int, st: os.stat_result) -> bytes:
        if st.st_size > self.max_bytes:
            raise ItemError(key, f"too large ({st.st_size} bytes > {self.max_bytes})")
        data = read_fd(fd, self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise ItemError(key, f"too large (grew past {self.max_bytes} bytes while read)")
        return data

    def _read_sync(self, item: Item) -> bytes:
        fds, _, _, fd, st = self._open_item(item.key, "skipped")
        try:
            return self._bytes_of(item.key, fd, st)
        except OSError as exc:
            raise ItemError(item.key, f"unreadable: {exc.strerror or exc}") from None
        finally:
            close_all(reversed(fds))

    async def read(self, item: Item) -> bytes:
        return await self._blocking(self._read_sync, item, key=item.key, what="read")

    def _judged_bytes(self, item: Item, fd: int, st: os.stat_result, sha256: str | None, doing: str) -> bytes:
        """The bytes of the opened file, if they are the ones that were judged: the sha256 when known,
        else the size and mtime the listing saw. One other name sharing them is refused too."""
        refuse_hard_links(item.key, st, doing)
        data = self._bytes_of(item.key, fd, st)
        if sha256 is not None:
            if sha256_hex(data) != sha256:
                raise ItemChanged(item.key, f"its bytes are no longer those that were judged: not {doing}")
        elif (item.size is not None and st.st_size != item.size) or (item.mtime is not None and st.st_mtime != item.mtime):
            raise ItemChanged(item.key, f"changed since it was listed: not {doing}")
        return data

    # -- delete ----------------------------------------------------------------------------------
    def plan(self, item: Item, action: str) -> str | None:
        """A quarantine location, or for a delete the staging directory it will pass through."""
        if action == "delete":
            parent = os.path.dirname(check_key(item.key))
            return os.path.join(self.root, parent, DELETE_STAGING + quarantine_name())
        return super().plan(item, action)

    def _new_quarantine_location(self) -> str:
        return self.quarantine_dir.location_of(quarantine_name())

    def _delete_staging(self, key: str, location: str | None) -> str:
        if location is None:
            return DELETE_STAGING + quarantine_name()
        staging = os.path.basename(location)
        expected_parent = os.path.join(self.root, os.path.dirname(key))
        if not staging.startswith(DELETE_STAGING) or os.path.dirname(location) != expected_parent.rstrip("/"):
            raise ItemError(key, f"{location} is not a delete staging directory of this item")
        return staging

    def _delete_sync(self, item: Item, sha256: str | None, location: str | None) -> None:
        staging = self._delete_staging(item.key, location)
        fds, parent_fd, name, fd, st = self._open_item(item.key, "not deleted")
        try:
            self._judged_bytes(item, fd, st, sha256, "deleted")
            staging_fd = stage(parent_fd, name, st, item.key, staging, "deleted")
            fds.append(staging_fd)
            os.unlink(STAGED, dir_fd=staging_fd)
            remove_directory(parent_fd, staging)
        except OSError as exc:
            raise ItemError(item.key, f"cannot delete: {exc.strerror or exc}") from None
        finally:
            close_all(reversed(fds))

    async def delete(self, item: Item, *, sha256: str | None = None, location: str | None = None) -> None:
        await self._blocking(self._delete_sync, item, sha256, location, key=item.key, what="delete")

    # -- quarantine ------------------------------------------------------------------------------
    def _quarantine_sync(self, item: Item, extra: dict[str, Any], sha256: str | None, location: str | None) -> str:
        name_q = self.quarantine_dir.name_of(location) if location else quarantine_name()
        staging = QUARANTINE_STAGING + name_q
        fds, parent_fd, name, fd, st = self._open_item(item.key, "not quarantined")
        try:
            data = self._judged_bytes(item, fd, st, sha256, "quarantined")
            qfd = self.quarantine_dir.open()
            fds.append(qfd)
            current = Item(item.key, size=len(data), mtime=st.st_mtime, etag=item.etag)
            # Sidecar first: if we die after it, the original is still in place (or in the staging
            # directory the recorded location names) and nothing is lost.
            self.quarantine_dir.write_sidecar_at(qfd, name_q, build_sidecar(current, data, extra, str(self.root)))
            try:
                staging_fd = stage(parent_fd, name, st, item.key, staging, "quarantined")
            except BaseException:
                self.quarantine_dir.discard_at(qfd, name_q)
                raise
            fds.append(staging_fd)
            try:
                if sha256_hex(read_fd(fd, self.max_bytes + 1)) != sha256_hex(data):  # written to meanwhile
                    raise ItemChanged(item.key, "changed while being moved: put back, not quarantined")
                self._into_quarantine(staging_fd, qfd, name_q, fd, data)
            except BaseException as exc:
                returned = put_back(staging_fd, parent_fd, name)
                self.quarantine_dir.discard_at(qfd, name_q)
                if returned:
                    remove_directory(parent_fd, staging)
                elif isinstance(exc, ItemError):
                    raise ItemRefused(item.key, f"{exc.reason}; the name was taken again meanwhile, so the file "
                                                f"stays in the hidden directory {staging} next to it") from None
                raise
            remove_directory(parent_fd, staging)
        except OSError as exc:
            raise ItemError(item.key, f"cannot quarantine: {exc.strerror or exc}") from None
        finally:
            close_all(reversed(fds))
        return self.quarantine_dir.location_of(name_q)

    @staticmethod
    def _into_quarantine(staging_fd: int, qfd: int, name_q: str, fd: int, data: bytes) -> None:
        """The staged file (private now, and verified; ``fd`` open on it) becomes the quarantined item:
        renamed when the quarantine is on the same filesystem and then made 0600 through ``fd``, else the
        verified bytes are written there as a new 0600 file and the staged name removed."""
        try:
            os.rename(STAGED, name_q, src_dir_fd=staging_fd, dst_dir_fd=qfd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            write_new(qfd, name_q, data)
            os.unlink(STAGED, dir_fd=staging_fd)
        else:
            try:
                os.fchmod(fd, 0o600)
            except OSError as exc:  # not the file's owner: the 0700 directory still keeps everyone out
                log.warning("quarantined %s but could not make it 0600: %s", name_q, exc.strerror or exc)
        try:
            os.fsync(qfd)  # the new name survives a power cut too; a failure here changes nothing above
        except OSError:
            pass

    async def quarantine(self, item: Item, sidecar: dict[str, Any], *, sha256: str | None = None,
                         location: str | None = None) -> str:
        return await self._blocking(self._quarantine_sync, item, sidecar, sha256, location, key=item.key,
                                    what="quarantine")

    # -- recovery after a crash ------------------------------------------------------------------
    def _holds_sync(self, key: str, sha256: str | None) -> bool:
        try:
            fds, _, _, fd, st = self._open_item(key, "not read")
        except (ItemGone, NotRegularFile, ItemChanged):
            return False
        try:
            return sha256 is None or sha256_hex(self._bytes_of(key, fd, st)) == sha256
        finally:
            close_all(reversed(fds))

    def _staged(self, key: str, staging: str) -> tuple[list[int], int | None, int | None]:
        """(fds to close, parent fd, staging fd) of a staging directory next to ``key``; None where the
        directory (or its parent) is not there or not ours."""
        try:
            fds, parent_fd, _ = self._parent_of(key)
        except (ItemGone, NotRegularFile):
            return [], None, None
        try:
            staging_fd = open_private_directory(parent_fd, staging, create=False)
        except OSError:
            return fds, parent_fd, None
        fds.append(staging_fd)
        return fds, parent_fd, staging_fd

    def _staged_is_judged(self, staging_fd: int, sha256: str | None) -> tuple[int, os.stat_result] | None:
        """The staged entry opened, if it is a regular file without other names holding the judged bytes."""
        try:
            fd, st = open_regular(staging_fd, STAGED, STAGED, "not read")
        except ItemError:
            return None
        if st.st_nlink == 1 and (sha256 is None or sha256_hex(read_fd(fd, st.st_size + 1)) == sha256):
            return fd, st
        os.close(fd)
        return None

    def _recover_sync(self, item: Item, action: str, location: str | None, sha256: str | None) -> Recovered:
        key = check_key(item.key)
        if action == "deleting":
            return self._recover_delete(key, location, sha256)
        if location is None:
            if self._holds_sync(key, sha256):
                return Recovered("pending")
            return Recovered("review", "interrupted before a quarantine location was recorded, and the "
                                       "storage no longer holds the judged bytes: look in the quarantine")
        name_q = self.quarantine_dir.name_of(location)
        fds, parent_fd, staging_fd = self._staged(key, QUARANTINE_STAGING + name_q)
        try:
            try:
                qfd = self.quarantine_dir.open(create=False)
                fds.append(qfd)
            except FileNotFoundError:
                qfd = None
            in_quarantine = self.quarantine_dir.holds_at(qfd, name_q, sha256) if qfd is not None else False
            has_sidecar = qfd is not None and self.quarantine_dir.has_sidecar_at(qfd, name_q)
            staged = self._staged_is_judged(staging_fd, sha256) if staging_fd is not None else None
            if staged is not None:
                fds.append(staged[0])
                if in_quarantine is True:  # died between copying to another filesystem and unlinking
                    os.unlink(STAGED, dir_fd=staging_fd)
                elif in_quarantine is False and has_sidecar:  # died after staging: finish the move
                    self._into_quarantine(staging_fd, qfd, name_q, staged[0], read_fd(staged[0], self.max_bytes + 1))
                    in_quarantine = True
            leftover = self._clear_staging(parent_fd, staging_fd, key, QUARANTINE_STAGING + name_q, sha256)
            if in_quarantine is True:
                if not has_sidecar:
                    return Recovered("review", f"the judged bytes are at {location} but their sidecar is "
                                               f"missing", location)
                return Recovered("quarantined", location=location)
            if in_quarantine is None:
                return Recovered("review", f"{location} holds something other than the judged bytes; "
                                           f"the storage was not changed")
            if qfd is not None:
                self.quarantine_dir.discard_at(qfd, name_q)
            if leftover:
                return Recovered("review", leftover)
            if self._holds_sync(key, sha256):
                return Recovered("pending")
            return Recovered("gone", "vanished before it was quarantined")
        finally:
            close_all(reversed(fds))

    def _clear_staging(self, parent_fd: int | None, staging_fd: int | None, key: str, staging: str,
                       sha256: str | None) -> str | None:
        """Empty and remove a staging directory a crash left: its entry goes back to ``key`` (it is either
        the judged file, not moved on, or whatever had been swapped in). Returns a reason for the admin
        when the entry cannot go back because the name is taken again."""
        if parent_fd is None or staging_fd is None:
            return None
        try:
            os.stat(STAGED, dir_fd=staging_fd, follow_symlinks=False)
        except FileNotFoundError:
            remove_directory(parent_fd, staging)
            return None
        if put_back(staging_fd, parent_fd, os.path.basename(key)):
            remove_directory(parent_fd, staging)
            return None
        return (f"the name {key} was taken again while the file judged was staged for moving; it is in the "
                f"hidden directory {staging} next to it")

    def _recover_delete(self, key: str, location: str | None, sha256: str | None) -> Recovered:
        if location is not None:
            staging = self._delete_staging(key, location)
            fds, parent_fd, staging_fd = self._staged(key, staging)
            try:
                if staging_fd is not None:
                    staged = self._staged_is_judged(staging_fd, sha256)
                    if staged is not None:
                        fds.append(staged[0])
                        os.unlink(STAGED, dir_fd=staging_fd)
                    leftover = self._clear_staging(parent_fd, staging_fd, key, staging, sha256)
                    if leftover:
                        return Recovered("review", leftover)
            finally:
                close_all(reversed(fds))
        return Recovered("pending") if self._holds_sync(key, sha256) else Recovered("deleted")

    async def recover(self, item: Item, action: str, location: str | None, sha256: str | None) -> Recovered:
        try:
            return await self._blocking(self._recover_sync, item, action, location, sha256, key=item.key,
                                        what="recover")
        except OSError as exc:
            raise ItemError(item.key, f"cannot recover: {exc.strerror or exc}") from None

    async def _quarantine_holds(self, location: str, sha256: str | None) -> bool:
        return await self._blocking(self.quarantine_dir.holds, location, sha256, key=location, what="probe")

    async def _discard_quarantine(self, location: str) -> None:
        await self._blocking(self.quarantine_dir.discard, location, key=location, what="discard")

    # -- release ---------------------------------------------------------------------------------
    def _release_sync(self, location: str) -> Item:
        name_q = self.quarantine_dir.name_of(location)
        fds: list[int] = []
        try:
            try:
                qfd = self.quarantine_dir.open(create=False)
            except FileNotFoundError:
                raise SourceError(f"{location}: no quarantined item (no quarantine directory)") from None
            fds.append(qfd)
            sidecar = self.quarantine_dir.read_sidecar_at(qfd, name_q, location)
            original = sidecar["original"]
            key = check_key(original["key"])
            data_fd, _, data = self.quarantine_dir.read_bytes_at(qfd, name_q, location)
            fds.append(data_fd)
            if sidecar.get("sha256") and sha256_hex(data) != sidecar["sha256"]:
                raise SourceError(f"{location}: quarantined bytes do not match the sidecar's sha256")
            root_fd = self._open_root()
            fds.append(root_fd)
            try:
                parent_fd, name = open_parent(root_fd, key, create=True)
            except ItemError as exc:
                raise SourceError(f"{key}: cannot restore there ({exc.reason})") from None
            fds.append(parent_fd)
            target_fd = self._restore_into(parent_fd, name, key, qfd, name_q, data_fd, data)
            fds.append(target_fd)
            os.fchmod(target_fd, 0o644)
            if original.get("mtime") is not None:
                os.utime(target_fd, (time.time(), original["mtime"]))
            if sidecar.get("sha256") and sha256_hex(read_fd(target_fd, len(data) + 1)) != sidecar["sha256"]:
                raise SourceError(f"{key}: restored bytes do not match the sidecar's sha256")
            self.quarantine_dir.discard_at(qfd, name_q)
            st = os.fstat(target_fd)
        finally:
            close_all(reversed(fds))
        return Item(key, size=st.st_size, mtime=st.st_mtime, etag=None)

    @staticmethod
    def _restore_into(parent_fd: int, name: str, key: str, qfd: int, name_q: str, data_fd: int,
                      data: bytes) -> int:
        """Put the quarantined file back under ``name`` without replacing anything there, and return a
        descriptor of the restored file. A file with the same bytes already there counts as restored."""
        try:
            existing = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if not stat.S_ISREG(existing.st_mode):
                raise SourceError(f"{key}: {describe(existing.st_mode)} now exists there; not overwriting")
            fd, _ = open_regular(parent_fd, name, key, "not overwritten")
            if read_fd(fd, len(data) + 1) != data:
                os.close(fd)
                raise SourceError(f"{key}: a different file now exists there; not overwriting")
            return fd
        try:
            os.link(name_q, name, src_dir_fd=qfd, dst_dir_fd=parent_fd, follow_symlinks=False)
        except FileExistsError:
            raise SourceError(f"{key}: a file appeared there meanwhile; not overwriting") from None
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            try:
                write_new(parent_fd, name, data, 0o644, replace=False)
            except FileExistsError:
                raise SourceError(f"{key}: a file appeared there meanwhile; not overwriting") from None
            fd, _ = open_regular(parent_fd, name, key, "not restored")
            return fd
        fd, st = open_regular(parent_fd, name, key, "not restored")
        if not same_file(st, os.fstat(data_fd)):
            os.close(fd)
            raise SourceError(f"{key}: swapped while being restored; the quarantined copy is kept")
        return fd

    async def release(self, location: str) -> Item:
        try:
            return await self._blocking(self._release_sync, location, key=location, what="release")
        except ItemError as exc:
            raise SourceError(str(exc)) from None
        except OSError as exc:
            raise SourceError(f"{location}: cannot release: {exc.strerror or exc}") from None
