"""A private local directory (0700) holding quarantined bytes plus one JSON sidecar each (0600).

Files are named ``<UTC time>-<random>`` so two quarantines of the same key never collide; the sidecar
``<name>.json`` says where the bytes came from. The location string is the data file's path.

Everything here goes through a descriptor of the directory opened with ``O_NOFOLLOW``: the directory
itself must not be a symlink (someone able to replace it could redirect evidence anywhere), and entries
in it are read only when they are regular files, so a link planted in the quarantine is never followed
by a release or a report. Files are written under a temporary name and renamed into place, so a crash
never leaves half a file under a quarantine name.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .base import ItemError, ItemGone, SourceError, quarantine_name, sha256_hex
from .nofollow import open_private_directory, open_regular, read_fd, write_new

#: Sidecars are small; one larger than this is not ours.
MAX_SIDECAR_BYTES = 1 << 20


class QuarantineDir:
    """The quarantine of a local or pict-rs source (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        absolute = Path(os.path.abspath(path))
        # The directories above are the admin's to arrange (and may be links); the quarantine itself is
        # opened without following one.
        self.path = Path(os.path.realpath(absolute.parent)) / absolute.name

    def open(self, *, create: bool = True) -> int:
        """A descriptor of the quarantine directory (the caller closes it), made 0700 and required to be
        ours. Raises SourceError if it is a symlink or not ours; FileNotFoundError if missing and not
        ``create``."""
        parent = self.path.parent
        if create:
            parent.mkdir(parents=True, exist_ok=True)
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                return open_private_directory(parent_fd, self.path.name, create=False)
            except FileNotFoundError:
                if not create:
                    raise
            try:
                return open_private_directory(parent_fd, self.path.name, create=True)
            except FileExistsError:  # made by a concurrent quarantine a moment ago
                return open_private_directory(parent_fd, self.path.name, create=False)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SourceError(f"quarantine directory {self.path} is a symlink or not a directory; "
                                  f"refusing to put evidence through it") from None
            if exc.errno == errno.EPERM:
                raise SourceError(f"quarantine directory {self.path} is not ours: {exc.strerror}") from None
            if exc.errno == errno.ENOENT:
                raise
            raise SourceError(f"quarantine directory {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(parent_fd)

    def new_location(self) -> Path:
        """A fresh location in this quarantine (the directory is made if missing)."""
        os.close(self.open())
        return self.path / quarantine_name()

    def location_of(self, name: str) -> str:
        return str(self.path / name)

    def name_of(self, location: str | os.PathLike[str]) -> str:
        """The entry name of a location string, which must name a plain entry of this quarantine."""
        absolute = Path(os.path.abspath(location))
        if Path(os.path.realpath(absolute.parent)) != self.path or absolute.name.startswith(".") \
                or absolute.name.endswith(".json"):
            raise SourceError(f"{location} is not inside the quarantine directory {self.path}")
        return absolute.name

    @staticmethod
    def sidecar_name(name: str) -> str:
        return name + ".json"

    @staticmethod
    def sidecar_path(location: Path) -> Path:
        return location.with_name(location.name + ".json")

    # -- writing ---------------------------------------------------------------------------------

    def write_sidecar(self, location: str | os.PathLike[str], sidecar: dict[str, Any]) -> None:
        name = self.name_of(location)
        fd = self.open()
        try:
            self.write_sidecar_at(fd, name, sidecar)
        finally:
            os.close(fd)

    def write_sidecar_at(self, qfd: int, name: str, sidecar: dict[str, Any]) -> None:
        write_new(qfd, self.sidecar_name(name), json.dumps(sidecar, indent=2, sort_keys=True).encode())

    def write_bytes(self, location: str | os.PathLike[str], data: bytes) -> None:
        name = self.name_of(location)
        fd = self.open()
        try:
            write_new(fd, name, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------------------------

    def read_sidecar_at(self, qfd: int, name: str, location: str) -> dict[str, Any]:
        try:
            fd, _ = open_regular(qfd, self.sidecar_name(name), location, "not read")
        except ItemGone:
            raise SourceError(f"{location}: no quarantined item (sidecar missing)") from None
        except ItemError as exc:
            raise SourceError(f"{location}: sidecar is unusable ({exc.reason})") from None
        try:
            raw = read_fd(fd, MAX_SIDECAR_BYTES + 1)
        finally:
            os.close(fd)
        try:
            if len(raw) > MAX_SIDECAR_BYTES:
                raise ValueError("too large")
            sidecar = json.loads(raw)
            if not isinstance(sidecar["original"]["key"], str):
                raise TypeError("original key is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{location}: unreadable sidecar ({exc})") from None
        return sidecar

    def read_bytes_at(self, qfd: int, name: str, location: str) -> tuple[int, os.stat_result, bytes]:
        """(fd, fstat, bytes) of a quarantined data file that is a regular file; the caller closes fd."""
        try:
            fd, st = open_regular(qfd, name, location, "not read")
        except ItemGone:
            raise SourceError(f"{location}: quarantined bytes missing") from None
        except ItemError as exc:
            raise SourceError(f"{location}: quarantined bytes unusable ({exc.reason})") from None
        try:
            return fd, st, read_fd(fd, st.st_size + 1)
        except BaseException:
            os.close(fd)
            raise

    def read(self, location: str) -> tuple[dict[str, Any], bytes]:
        """The sidecar and the bytes of a quarantined item, both read without following links; the bytes
        must match the sidecar's sha256."""
        name = self.name_of(location)
        try:
            qfd = self.open(create=False)
        except FileNotFoundError:
            raise SourceError(f"{location}: no quarantined item (no quarantine directory)") from None
        try:
            sidecar = self.read_sidecar_at(qfd, name, location)
            fd, _, data = self.read_bytes_at(qfd, name, location)
            os.close(fd)
        finally:
            os.close(qfd)
        if sha256_hex(data) != sidecar.get("sha256"):
            raise SourceError(f"{location}: quarantined bytes do not match the sidecar's sha256")
        return sidecar, data

    def holds_at(self, qfd: int, name: str, sha256: str | None) -> bool | None:
        """True: a regular file ``name`` with the bytes ``sha256``; False: nothing there; None: something
        else is there (other bytes, a link, a FIFO)."""
        try:
            os.stat(name, dir_fd=qfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        try:
            fd, st = open_regular(qfd, name, name, "not read")
        except ItemError:
            return None
        try:
            data = read_fd(fd, st.st_size + 1)
        finally:
            os.close(fd)
        return sha256 is None or sha256_hex(data) == sha256

    def has_sidecar_at(self, qfd: int, name: str) -> bool:
        try:
            os.stat(self.sidecar_name(name), dir_fd=qfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def holds(self, location: str, sha256: str | None) -> bool:
        """Whether ``location`` is a complete quarantined item: the judged bytes and their sidecar."""
        name = self.name_of(location)
        try:
            qfd = self.open(create=False)
        except FileNotFoundError:
            return False
        try:
            return self.holds_at(qfd, name, sha256) is True and self.has_sidecar_at(qfd, name)
        finally:
            os.close(qfd)

    # -- removing --------------------------------------------------------------------------------

    def discard_at(self, qfd: int, name: str) -> None:
        """Remove an item's data file, sidecar and any temporary leftovers of writing them."""
        sidecar = self.sidecar_name(name)
        for entry in (name, sidecar, f".{name}.part", f".{sidecar}.part"):
            try:
                os.unlink(entry, dir_fd=qfd)
            except FileNotFoundError:
                pass

    def discard(self, location: str | os.PathLike[str]) -> None:
        name = self.name_of(location)
        try:
            qfd = self.open(create=False)
        except FileNotFoundError:
            return
        try:
            self.discard_at(qfd, name)
        finally:
            os.close(qfd)
