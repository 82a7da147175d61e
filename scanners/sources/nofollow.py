"""Filesystem steps that never follow a symbolic link and always act on the file that was checked.

Storage a sweep walks is written by others while the sweep runs: any name can become a symlink to a file
outside the store, a hard link to one, a FIFO or another file between two system calls. A path checked
and then used again (``realpath``, then ``open``/``rename``/``chmod``) acts on whatever is there by
then. So every step here works on descriptors:

* directories are opened one component at a time, relative to the previous one, with ``O_NOFOLLOW``;
* a file is opened relative to its directory with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block the
  open) and accepted only when ``fstat`` on that descriptor says it is a regular file;
* a name is moved away by first renaming it into a private (0700) staging directory created next to it
  (same filesystem, so the rename cannot fail with EXDEV), then comparing the device and inode of what
  arrived there with the descriptor that was checked. A mismatch (the name was swapped in between) is
  put back where it was. Once in the staging directory nobody else can reach the entry.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Iterator

from .base import ItemChanged, ItemError, ItemGone, ItemRefused, NotRegularFile

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: The one entry of a staging directory: the name being moved.
STAGED = "item"

_TYPE_NAMES = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"))


def describe(mode: int) -> str:
    """'a FIFO (named pipe)', 'a symbolic link', ... for an ``st_mode``."""
    return next((name for test, name in _TYPE_NAMES if test(mode)), "an unknown kind of file")


def not_regular(key: str, mode: int, doing: str = "skipped") -> NotRegularFile:
    return NotRegularFile(key, f"not a regular file but {describe(mode)}: {doing}", mode=mode)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def refuse_hard_links(key: str, st: os.stat_result, doing: str) -> None:
    """A file with a second name is shared with something outside our reach: moving, chmodding or
    deleting this name would change or keep what that other name shows, so it is left alone."""
    if st.st_nlink != 1:
        raise ItemRefused(key, f"has {st.st_nlink} hard links: another name shares these bytes; not {doing}")


def close_all(fds: Iterator[int] | list[int]) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def open_parent(root_fd: int, key: str, *, create: bool = False) -> tuple[int, str]:
    """The directory that holds ``key`` (a descriptor the caller closes) and the key's last component.
    ``create`` makes missing directories (0755, as an upload would) for a file being put back."""
    parts = key.split("/")
    return open_directories(root_fd, parts[:-1], key, create=create), parts[-1]


def open_directories(root_fd: int, parts: list[str] | tuple[str, ...], key: str, *, create: bool = False) -> int:
    """The directory ``root/parts...`` as a descriptor the caller closes. Each component is opened
    relative to the previous one without following links: a directory swapped for a symlink is refused,
    never followed out of the root."""
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts):
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                next_fd = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as exc:
                where = "/".join(parts[: depth + 1])
                if exc.errno == errno.ENOENT:
                    raise ItemGone(key, f"vanished ({where} is gone)") from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise NotRegularFile(key, f"{where} is not a directory (a symbolic link or a file): "
                                              f"not followed") from None
                raise ItemError(key, f"cannot open {where}: {exc.strerror or exc}") from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(dir_fd: int, name: str, key: str, doing: str = "skipped") -> tuple[int, os.stat_result]:
    """Open ``name`` in ``dir_fd`` for reading if, and only if, it is a regular file: (fd, fstat).

    ``lstat`` first, so a device node is never even opened; then the open itself refuses links and cannot
    block on a FIFO, and ``fstat`` on the descriptor confirms it is the file that was looked at."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise ItemGone(key, "vanished") from None
    except OSError as exc:
        raise ItemError(key, f"unreadable: {exc.strerror or exc}") from None
    if not stat.S_ISREG(before.st_mode):
        raise not_regular(key, before.st_mode, doing)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ItemGone(key, "vanished") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # became a symlink / a socket since the lstat
            raise ItemChanged(key, f"changed into something that is not a regular file: {doing}") from None
        raise ItemError(key, f"unreadable: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not same_file(st, before):
        os.close(fd)
        raise ItemChanged(key, f"changed into {describe(st.st_mode)} while being opened: {doing}")
    return fd, st


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of an open file (positioned reads: the offset is not shared)."""
    chunks, offset = [], 0
    while offset < limit:
        chunk = os.pread(fd, min(1 << 20, limit - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def open_private_directory(parent_fd: int, name: str, *, create: bool) -> int:
    """A directory only we can enter (0700), opened without following links; created when asked (and
    then required to be new: a name someone else created first is not ours to trust)."""
    if create:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, DIRECTORY_FLAGS, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, f"{name} belongs to uid {st.st_uid}, not to us")
        os.fchmod(fd, 0o700)  # mkdir's mode is masked by umask; an existing directory may be lax
    except BaseException:
        os.close(fd)
        raise
    return fd


def stage(parent_fd: int, name: str, checked: os.stat_result, key: str, staging: str, doing: str) -> int:
    """Move ``name`` into a new private directory ``staging`` next to it and return that directory's fd,
    if what arrived is the file ``checked`` (same device and inode) with no other name. Otherwise put it
    back and raise ItemRefused; if even that is impossible (the name was taken again meanwhile) the entry
    stays in ``staging`` and the reason says so."""
    try:
        staging_fd = open_private_directory(parent_fd, staging, create=True)
    except OSError as exc:
        raise ItemError(key, f"cannot make a private staging directory: {exc.strerror or exc}") from None
    try:
        try:
            os.rename(name, STAGED, src_dir_fd=parent_fd, dst_dir_fd=staging_fd)
        except FileNotFoundError:
            raise ItemGone(key, "vanished") from None
        except OSError as exc:
            raise ItemError(key, f"cannot move: {exc.strerror or exc}") from None
        arrived = os.stat(STAGED, dir_fd=staging_fd, follow_symlinks=False)
        if not same_file(arrived, checked):
            what = describe(arrived.st_mode) if not stat.S_ISREG(arrived.st_mode) else "another file"
            raise _put_back(staging_fd, parent_fd, name, staging, key,
                            ItemChanged(key, f"was swapped for {what} right before the move; "
                                             f"put back, not {doing}"))
        if arrived.st_nlink != 1:  # a link made between the check and the move
            raise _put_back(staging_fd, parent_fd, name, staging, key,
                            ItemRefused(key, f"has {arrived.st_nlink} hard links: another name shares these "
                                             f"bytes; not {doing}"))
    except BaseException:
        os.close(staging_fd)
        remove_directory(parent_fd, staging)
        raise
    return staging_fd


def put_back(staging_fd: int, parent_fd: int, name: str) -> bool:
    """Return the staged entry to ``name`` without replacing anything that appeared there meanwhile
    (a hard link made first, then the staged name dropped). False if ``name`` is taken."""
    try:
        os.link(STAGED, name, src_dir_fd=staging_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EISDIR, errno.EXDEV, errno.EMLINK):
            raise
        # a directory (no hard links to those): rename it back unless the name is taken
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            return False
        except FileNotFoundError:
            os.rename(STAGED, name, src_dir_fd=staging_fd, dst_dir_fd=parent_fd)
            return True
    os.unlink(STAGED, dir_fd=staging_fd)
    return True


def _put_back(staging_fd: int, parent_fd: int, name: str, staging: str, key: str,
              refusal: ItemError) -> ItemError:
    if put_back(staging_fd, parent_fd, name):
        return refusal
    return ItemRefused(key, f"{refusal.reason}; but the name was taken again meanwhile, so what was moved "
                            f"stays in the hidden directory {staging} next to it for the admin")


def remove_directory(parent_fd: int, name: str) -> None:
    """rmdir, quietly: an emptied staging directory; one that is gone or not empty is left as it is."""
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass


def write_new(dir_fd: int, name: str, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """Write ``data`` as a new file ``name`` in ``dir_fd``, completely or not at all: written to a
    temporary name (created exclusively, never through a link), synced, then renamed into place; with
    ``replace=False`` linked into place instead, so that a file that appeared there meanwhile is kept
    (FileExistsError)."""
    part = f".{name}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the create mode is masked by umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(part, dir_fd=dir_fd)
        raise
    os.close(fd)
    if replace:
        os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.unlink(part, dir_fd=dir_fd)
