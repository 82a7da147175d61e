"""A directory on another host, over SFTP (asyncssh).

What fedi-safety got wrong and this does not: any key type (ed25519, ECDSA, RSA), no interactive passphrase
prompt (the passphrase comes from an environment variable, or the key from ssh-agent), host keys checked
by default, ONE connection reused for the whole sweep with bounded parallel reads instead of a new
connection per file, automatic reconnect with backoff when the connection drops, and a delete that deletes
on the remote host (``sftp.remove``), not on the local disk.

Walk order, hidden-file and symlink rules are the same as :mod:`scanners.sources.local`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import asyncssh

from scanners.backoff import Backoff

from .base import (Item, ItemChanged, ItemError, ItemGone, ItemRefused, NotRegularFile, Recovered, Source, SourceError,
                   TreeEntry, build_sidecar, quarantine_name, sha256_hex, walk_tree)
from .blocking import CallTimedOut, within
from .local import DEFAULT_MAX_BYTES, check_key

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors after which the connection is rebuilt and the operation tried again.
_CONNECTION_ERRORS = (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError,
                      asyncssh.sftp.SFTPConnectionLost, ConnectionError, BrokenPipeError, EOFError,
                      asyncio.TimeoutError, OSError)
_SFTP_CONNECTION_CODES = (asyncssh.sftp.FX_NO_CONNECTION, asyncssh.sftp.FX_CONNECTION_LOST)
_FILE_TYPE_DIR = asyncssh.sftp.FILEXFER_TYPE_DIRECTORY
_FILE_TYPE_LINK = asyncssh.sftp.FILEXFER_TYPE_SYMLINK
_FILE_TYPE_REGULAR = asyncssh.sftp.FILEXFER_TYPE_REGULAR
_SPECIAL_TYPES = (asyncssh.sftp.FILEXFER_TYPE_FIFO, asyncssh.sftp.FILEXFER_TYPE_SOCKET,
                  asyncssh.sftp.FILEXFER_TYPE_CHAR_DEVICE, asyncssh.sftp.FILEXFER_TYPE_BLOCK_DEVICE,
                  asyncssh.sftp.FILEXFER_TYPE_SPECIAL)


class SSHSource(Source):
    """``ssh://user@host:port/srv/pictrs/files``.

    Options: ``client_keys`` (private key paths; default: ssh-agent, then ~/.ssh defaults),
    ``passphrase_env`` (env var holding the key passphrase, default ``VERDICT_SSH_PASSPHRASE``),
    ``known_hosts`` (file path; default ~/.ssh/known_hosts, strict), ``host_key`` (the server's public key
    line, pins it instead of a known_hosts file), ``insecure_skip_host_check`` (never do this outside a
    lab), ``concurrency`` (parallel SFTP reads, default 8), ``retries`` (reconnect attempts, default 5),
    ``quarantine_dir`` (remote, default ``<root>/../verdict-quarantine``), ``max_bytes``,
    ``connect_timeout`` (s), ``op_timeout`` (s one operation on one item may take, default 120).
    """

    scheme = "ssh"

    def __init__(self, host: str, port: int = 22, username: str | None = None, root: str = ".", *,
                 client_keys: list[str] | str | None = None, passphrase_env: str = "VERDICT_SSH_PASSPHRASE",
                 known_hosts: str | None = None, host_key: str | None = None,
                 insecure_skip_host_check: bool = False, concurrency: int = 8, retries: int = 5,
                 backoff: float = 0.2, quarantine_dir: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, connect_timeout: float = 15.0, op_timeout: float = 120.0):
        super().__init__()
        self.host, self.port, self.username = host, int(port), username
        self.root = posixpath.normpath(root) if root else "."
        self.max_bytes = int(max_bytes)
        self.retries, self.backoff = int(retries), float(backoff)
        self.connect_timeout = float(connect_timeout)
        self.op_timeout = float(op_timeout)
        self.quarantine_dir = quarantine_dir or posixpath.join(posixpath.dirname(self.root), "verdict-quarantine")
        self._limit = asyncio.Semaphore(int(concurrency))
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._generation = 0
        self.reconnects = 0
        self._connect_options = self._build_options(client_keys, passphrase_env, known_hosts, host_key,
                                                    insecure_skip_host_check)

    def __repr__(self) -> str:
        return f"SSHSource({self.username}@{self.host}:{self.port}{self.root})"

    def _build_options(self, client_keys, passphrase_env, known_hosts, host_key, skip_check) -> dict[str, Any]:
        options: dict[str, Any] = {"username": self.username, "port": self.port,
                                   "connect_timeout": self.connect_timeout, "keepalive_interval": 15}
        if isinstance(client_keys, str):
            client_keys = [k for k in client_keys.split(",") if k]
        passphrase = os.environ.get(passphrase_env) if passphrase_env else None
        if passphrase:
            options["passphrase"] = passphrase  # for default ~/.ssh keys too
        if client_keys:
            keys = []
            for path in client_keys:
                try:
                    keys.append(asyncssh.read_private_key(os.path.expanduser(path), passphrase))
                except asyncssh.KeyImportError as exc:
                    hint = (f" (set {passphrase_env} to the key's passphrase)"
                            if "passphrase" in str(exc).lower() else "")
                    raise SourceError(f"cannot load SSH key {path}: {exc}{hint}") from None
                except OSError as exc:
                    raise SourceError(f"cannot read SSH key {path}: {exc.strerror or exc}") from None
            options["client_keys"] = keys
            options["agent_path"] = None  # explicit keys: do not mix in whatever an agent offers
        # Never prompt: no password or keyboard-interactive auth at all.
        options["password"] = None
        options["kbdint_auth"] = False
        options["password_auth"] = False
        if isinstance(skip_check, str):  # from a URL query
            skip_check = skip_check.lower() in ("1", "true", "yes")
        if skip_check:
            options["known_hosts"] = None
        elif host_key:
            try:
                options["known_hosts"] = ([asyncssh.import_public_key(host_key)], [], [])
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise SourceError(f"invalid host_key: {exc}") from None
        elif known_hosts:
            options["known_hosts"] = os.path.expanduser(known_hosts)
        return options

    # -- connection ------------------------------------------------------------------------------
    async def _client(self) -> tuple[asyncssh.SFTPClient, int]:
        async with self._lock:
            if self._sftp is None:
                try:
                    conn = await asyncssh.connect(self.host, **self._connect_options)
                    try:
                        sftp = await conn.start_sftp_client()
                    except BaseException:  # no SFTP on a live connection: close it, or each retry leaks one
                        conn.abort()
                        raise
                    self._conn, self._sftp = conn, sftp
                except asyncssh.PermissionDenied as exc:
                    raise SourceError(f"ssh {self.host}:{self.port}: authentication failed ({exc.reason})") from None
                except asyncssh.HostKeyNotVerifiable as exc:
                    raise SourceError(f"ssh {self.host}:{self.port}: host key not trusted ({exc.reason}); "
                                      "add it to known_hosts or pass host_key") from None
                self._generation += 1
            return self._sftp, self._generation

    async def _drop(self, generation: int) -> None:
        """Forget a broken connection (once, even if many parallel operations saw it break)."""
        async with self._lock:
            if self._generation != generation or self._conn is None:
                return
            conn, self._conn, self._sftp = self._conn, None, None
            self.reconnects += 1
        conn.abort()

    async def _op(self, what: str, fn: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        """Run one SFTP operation; on a dropped connection reconnect (backoff) and run it again."""
        backoff = Backoff(self.backoff, 10.0)
        for attempt in range(self.retries + 1):
            sftp, generation = None, -1
            try:
                sftp, generation = await self._client()
                return await fn(sftp)
            except asyncssh.SFTPError as exc:
                if exc.code not in _SFTP_CONNECTION_CODES:
                    raise
                error: BaseException = exc
            except SourceError:
                raise
            except _CONNECTION_ERRORS as exc:
                error = exc
            if attempt >= self.retries:
                raise SourceError(f"ssh {self.host}:{self.port}: {what} failed after "
                                  f"{self.retries} reconnects: {error!r}") from None
            delay = backoff.next()
            log.warning("ssh %s:%s %s: connection lost (%r); reconnecting in %.1fs",
                        self.host, self.port, what, error, delay)
            if generation >= 0:
                await self._drop(generation)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    # -- listing ---------------------------------------------------------------------------------
    async def _real_root(self) -> str:
        return await self._op("realpath", lambda sftp: sftp.realpath(self.root))

    async def _scan_dir(self, real_root: str, rel: tuple[str, ...]) -> list[tuple[str, bool, Any]]:
        directory = posixpath.join(self.root, *rel)

        async def read(sftp: asyncssh.SFTPClient) -> list:
            return await sftp.readdir(directory)

        names = await self._op(f"list {directory}", read)
        out = []
        for entry in names:
            name = entry.filename
            if name in (".", "..") or name.startswith("."):
                continue
            path = posixpath.join(directory, name)
            if path == self.quarantine_dir or posixpath.normpath(path) == posixpath.normpath(self.quarantine_dir):
                continue
            attrs = entry.attrs
            if attrs.type == _FILE_TYPE_LINK:
                try:
                    target = await self._op("realpath", lambda sftp, p=path: sftp.realpath(p))
                    if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
                        self._listing_error("/".join(rel + (name,)), ValueError("symlink leaves the root"))
                        continue
                    attrs = await self._op("stat", lambda sftp, p=path: sftp.stat(p))
                except asyncssh.SFTPError as exc:
                    self._listing_error("/".join(rel + (name,)), exc)
                    continue
                if attrs.type == _FILE_TYPE_DIR:
                    continue
            if attrs.type == _FILE_TYPE_DIR:
                out.append((name, True, None))
            elif attrs.type == _FILE_TYPE_REGULAR or attrs.type in _SPECIAL_TYPES:
                out.append((name, False, attrs))  # a FIFO, socket or device: listed so the sweep records it
        out.sort(key=lambda e: e[0])
        return out

    async def _list(self, since: float | None, after: str | None) -> AsyncIterator[Item]:
        try:
            real_root = await self._real_root()
            root_entries = await self._scan_dir(real_root, ())
        except asyncssh.SFTPError as exc:
            raise SourceError(f"ssh {self.host}:{self.port}: cannot list {self.root}: {exc.reason}") from None

        def scan(parts: tuple[str, ...]) -> Awaitable[list[TreeEntry]]:
            return self._scan_dir(real_root, parts)

        async for rel, files in walk_tree(root_entries, scan, after, 256, (asyncssh.SFTPError,), self._listing_error):
            for name, attrs in files:
                yield Item(key="/".join(rel + (name,)), size=attrs.size,
                           mtime=float(attrs.mtime) if attrs.mtime is not None else None, etag=None)

    # -- item operations -------------------------------------------------------------------------
    # SFTP has no descriptors for directories and no O_NOFOLLOW: what can be done is to lstat before every
    # step (a link or FIFO is refused before it is opened), open only what lstat called a regular file and
    # compare the open handle's stat with it, move a name into a private staging directory before trusting
    # it, count its links there (the server's `ls -l` line), and chmod through an open handle, never a
    # path. OpenSSH's rename never replaces an existing name, which makes putting things back safe.

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, check_key(key))

    @staticmethod
    def _item_error(key: str, exc: asyncssh.SFTPError, doing: str) -> ItemError:
        if exc.code == asyncssh.sftp.FX_NO_SUCH_FILE:
            return ItemGone(key, "vanished")
        return ItemError(key, f"{doing}: {exc.reason}")

    async def _item_op(self, key: str, what: str, fn: Callable[[asyncssh.SFTPClient], Awaitable[T]],
                       doing: str = "unreadable") -> T:
        """One SFTP operation on one item, with the item's deadline: a server stuck on it (a FIFO opened in
        the instant after its lstat) costs this item and the connection, which is rebuilt, not the sweep."""
        async def bounded(sftp: asyncssh.SFTPClient) -> T:
            try:
                return await within(fn(sftp), self.op_timeout, what)
            except CallTimedOut:
                raise _ItemTimeout() from None

        try:
            return await self._op(what, bounded)
        except _ItemTimeout:
            await self._drop(self._generation)
            raise ItemError(key, f"{what}: no answer within {self.op_timeout:g} s (a FIFO or a hung file?); "
                                 f"connection rebuilt") from None
        except asyncssh.SFTPError as exc:
            raise self._item_error(key, exc, doing) from None

    async def _lstat(self, key: str, path: str, doing: str = "skipped") -> asyncssh.SFTPAttrs:
        """lstat of a name that must be a regular file (NotRegularFile otherwise, naming what it is)."""
        attrs = await self._item_op(key, f"lstat {path}", lambda sftp: sftp.lstat(path))
        if attrs.type != _FILE_TYPE_REGULAR:
            raise NotRegularFile(key, f"not a regular file but {_describe(attrs.type)}: {doing}")
        return attrs

    async def _check_parents(self, key: str, *, create: bool = False) -> None:
        """Every directory between the root and the key must be a real directory, not a link out of the
        root (``create``: make missing ones, for a file put back)."""
        directory = self.root
        for part in check_key(key).split("/")[:-1]:
            directory = posixpath.join(directory, part)
            try:
                attrs = await self._item_op(key, f"lstat {directory}", lambda sftp, d=directory: sftp.lstat(d))
            except ItemGone:
                if not create:
                    raise
                await self._item_op(key, f"mkdir {directory}", lambda sftp, d=directory: sftp.mkdir(d), "cannot restore")
                continue
            if attrs.type != _FILE_TYPE_DIR:
                raise NotRegularFile(key, f"{directory} is not a directory but {_describe(attrs.type)}: not followed")

    async def _read_checked(self, key: str, path: str, doing: str = "skipped") -> tuple[bytes, asyncssh.SFTPAttrs]:
        """The bytes of ``path`` if it is a regular file (lstat), and the handle opened sees the same
        size and mtime (a name swapped between the two is refused)."""
        before = await self._lstat(key, path, doing)

        async def read(sftp: asyncssh.SFTPClient) -> bytes:
            async with sftp.open(path, "rb") as fh:
                attrs = await fh.stat()
                if attrs.type not in (_FILE_TYPE_REGULAR, None) or (attrs.size, attrs.mtime) != (before.size, before.mtime):
                    raise ItemChanged(key, f"changed between its lstat and its open: {doing}")
                if attrs.size is not None and attrs.size > self.max_bytes:
                    raise ItemError(key, f"too large ({attrs.size} bytes > {self.max_bytes})")
                return await fh.read(self.max_bytes + 1)

        async with self._limit:
            return await self._item_op(key, f"read {path}", read), before

    async def _read_path(self, key: str, path: str) -> bytes:
        return (await self._read_checked(key, path))[0]

    async def read(self, item: Item) -> bytes:
        await self._check_parents(item.key)
        return await self._read_path(item.key, self._path(item.key))

    async def _judged(self, item: Item, sha256: str | None, doing: str) -> tuple[bytes, asyncssh.SFTPAttrs]:
        """The item's bytes and lstat, if they are those judged (sha256; else the listed size and mtime)."""
        await self._check_parents(item.key)
        data, attrs = await self._read_checked(item.key, self._path(item.key), f"not {doing}")
        if sha256 is not None:
            if sha256_hex(data) != sha256:
                raise ItemChanged(item.key, f"its bytes are no longer those that were judged: not {doing}")
        elif (item.size is not None and attrs.size != item.size) or \
                (item.mtime is not None and attrs.mtime is not None and float(attrs.mtime) != item.mtime):
            raise ItemChanged(item.key, f"changed since it was listed: not {doing}")
        return data, attrs

    async def delete(self, item: Item, *, sha256: str | None = None, location: str | None = None) -> None:
        await self._judged(item, sha256, "deleted")
        path = self._path(item.key)
        await self._lstat(item.key, path, "not deleted")  # the last look before the unlink (which follows nothing)
        await self._item_op(item.key, f"remove {path}", lambda sftp: sftp.remove(path), "cannot delete")

    async def _ensure_quarantine_dir(self) -> None:
        async def make(sftp: asyncssh.SFTPClient) -> None:
            await sftp.makedirs(self.quarantine_dir, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
            attrs = await sftp.lstat(self.quarantine_dir)
            if attrs.type != _FILE_TYPE_DIR:
                raise SourceError(f"remote quarantine directory {self.quarantine_dir} is "
                                  f"{_describe(attrs.type)}; refusing to put evidence through it")
            await _chmod_nofollow(sftp, self.quarantine_dir, 0o700)  # umask, or an existing lax directory
        await self._op("mkdir quarantine", make)

    async def _write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """A new file (never through a link: exclusive create), chmodded through its handle."""
        async def write(sftp: asyncssh.SFTPClient) -> None:
            async with sftp.open(path, "xb", attrs=asyncssh.SFTPAttrs(permissions=mode)) as fh:
                await fh.write(data)
                await fh.chmod(mode)
        await self._op(f"write {path}", write)

    def _new_quarantine_location(self) -> str:
        return posixpath.join(self.quarantine_dir, quarantine_name())

    def _quarantine_name(self, location: str) -> str:
        location = posixpath.normpath(location)
        name = posixpath.basename(location)
        if posixpath.dirname(location) != posixpath.normpath(self.quarantine_dir) or name.startswith(".") \
                or name.endswith(".json"):
            raise SourceError(f"{location} is not inside the quarantine directory {self.quarantine_dir}")
        return name

    def _staging(self, name: str) -> str:
        return posixpath.join(self.quarantine_dir, f".incoming-{name}")

    async def _link_count(self, key: str, directory: str, name: str) -> int | None:
        """The link count of ``directory/name`` from the server's ``ls -l`` style listing (SFTP v3 has no
        such attribute); None when the server's listing does not show it."""
        entries = await self._item_op(key, f"list {directory}", lambda sftp: sftp.readdir(directory))
        for entry in entries:
            if entry.filename == name:
                fields = str(entry.longname or "").split()
                return int(fields[1]) if len(fields) > 2 and fields[1].isdigit() else None
        return None

    async def _rename(self, key: str, old: str, new: str, doing: str) -> bool:
        """rename (never replacing an existing name); False if the server refused it."""
        try:
            await self._item_op(key, f"rename {old}", lambda sftp: sftp.rename(old, new), doing)
        except ItemGone:
            raise
        except ItemError:
            return False
        return True

    async def _verify_staged(self, key: str, staged: str, sha256: str, doing: str) -> bytes | None:
        """The staged entry's bytes if it is a regular file with one link holding ``sha256``, else None."""
        try:
            data, _ = await self._read_checked(key, staged, f"not {doing}")
        except (NotRegularFile, ItemChanged):
            return None
        links = await self._link_count(key, posixpath.dirname(staged), posixpath.basename(staged))
        if links is not None and links != 1:
            raise ItemRefused(key, f"has {links} hard links: another name shares these bytes; not {doing}")
        return data if sha256_hex(data) == sha256 else None

    async def quarantine(self, item: Item, sidecar: dict[str, Any], *, sha256: str | None = None,
                         location: str | None = None) -> str:
        data, attrs = await self._judged(item, sha256, "quarantined")
        judged = sha256 or sha256_hex(data)
        path = self._path(item.key)
        location = location or self._new_quarantine_location()
        name = self._quarantine_name(location)
        current = Item(item.key, size=len(data), mtime=float(attrs.mtime or 0) or None, etag=item.etag)
        await self._ensure_quarantine_dir()
        # Sidecar first: a crash after it leaves the original in place (or in the staging directory the
        # recorded location names), nothing lost.
        payload = json.dumps(build_sidecar(current, data, sidecar, repr(self)), indent=2, sort_keys=True)
        await self._write(location + ".json", payload.encode())
        staging = self._staging(name)
        staged = posixpath.join(staging, "item")
        try:
            await self._op("mkdir staging", lambda sftp: sftp.mkdir(staging, asyncssh.SFTPAttrs(permissions=0o700)))
            if not await self._rename(item.key, path, staged, "cannot quarantine"):
                # another filesystem (SFTP will not rename across): copy the bytes checked, then remove
                # the name if it still looks like the file that was read
                await self._write(location, data)
                await self._lstat(item.key, path, "not removed")
                await self._item_op(item.key, f"remove {path}", lambda sftp: sftp.remove(path), "cannot remove")
                await self._op("rmdir staging", lambda sftp: sftp.rmdir(staging))
                return location
            try:
                if await self._verify_staged(item.key, staged, judged, "quarantined") is None:
                    raise ItemChanged(item.key, "was swapped for another file right before the move; put back, "
                                                "not quarantined")
                await self._finish_quarantine(staged, location)
            except BaseException:
                if not await self._rename(item.key, staged, path, "cannot put back"):
                    raise ItemRefused(item.key, f"swapped during the move and the name was taken again; what "
                                                f"was moved is in {staging}") from None
                raise
            await self._op("rmdir staging", lambda sftp: sftp.rmdir(staging))
        except BaseException:
            await self._discard_quarantine(location)
            await self._remove_staging(staging)
            raise
        return location

    async def _remove_staging(self, staging: str) -> None:
        """rmdir, quietly: a staging directory that still holds something is left for recovery or the admin."""
        try:
            await self._op("rmdir staging", lambda sftp: sftp.rmdir(staging))
        except asyncssh.SFTPError:
            pass

    async def _finish_quarantine(self, staged: str, location: str) -> None:
        """The staged file (private now, checked) becomes the quarantined item, 0600 via its handle."""
        async def seal(sftp: asyncssh.SFTPClient) -> None:
            async with sftp.open(staged, "rb") as fh:
                await fh.chmod(0o600)
            await sftp.rename(staged, location)
        await self._op("seal quarantined item", seal)

    async def recover(self, item: Item, action: str, location: str | None, sha256: str | None) -> Recovered:
        if action == "quarantining" and location is not None:
            name = self._quarantine_name(location)
            staging = self._staging(name)
            staged = posixpath.join(staging, "item")
            try:
                await self._item_op(item.key, f"lstat {staged}", lambda sftp: sftp.lstat(staged))
            except ItemGone:
                pass
            else:  # died between staging and sealing: finish it, or put back what is not the judged file
                try:
                    judged = sha256 is not None and await self._verify_staged(item.key, staged, sha256,
                                                                              "quarantined") is not None
                except ItemRefused:  # a second hard link: not ours to quarantine after all
                    judged = False
                has_sidecar = await self._op("exists", lambda sftp: sftp.exists(location + ".json"))
                if judged and has_sidecar:
                    await self._finish_quarantine(staged, location)
                elif not await self._rename(item.key, staged, self._path(item.key), "cannot put back"):
                    return Recovered("review", f"the name {item.key} was taken again while the file judged was "
                                               f"staged for moving; it is in {staging}")
            await self._remove_staging(staging)
        return await super().recover(item, action, location, sha256)

    async def _quarantine_holds(self, location: str, sha256: str | None) -> bool:
        name = self._quarantine_name(location)
        try:
            await self._lstat(name, location + ".json", "not read")
            data = await self._read_path(name, location)
        except (ItemGone, NotRegularFile, ItemChanged):
            return False
        return sha256 is None or sha256_hex(data) == sha256

    async def _discard_quarantine(self, location: str) -> None:
        for path in (location, location + ".json"):
            try:
                await self._op(f"remove {path}", lambda sftp, p=path: sftp.remove(p))
            except asyncssh.SFTPError:
                pass

    async def release(self, location: str) -> Item:
        location = posixpath.normpath(location)
        name = self._quarantine_name(location)
        try:
            raw, _ = await self._read_checked(name, location + ".json", "not read")
            sidecar = json.loads(raw)
            original = sidecar["original"]
            key = check_key(original["key"])
        except ItemGone:
            raise SourceError(f"{location}: no quarantined item (sidecar missing)") from None
        except ItemError as exc:
            raise SourceError(f"{location}: no usable sidecar ({exc.reason})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{location}: unreadable sidecar ({exc})") from None
        target = self._path(key)
        try:
            data, held = await self._read_checked(key, location, "not released")
            await self._check_parents(key, create=True)
        except ItemError as exc:
            raise SourceError(f"{location}: {exc.reason}") from None
        if sha256_hex(data) != sidecar.get("sha256"):
            raise SourceError(f"{location}: quarantined bytes do not match the sidecar's sha256")
        try:
            current, there = await self._read_checked(key, target, "not overwritten")
        except ItemGone:
            current = None
        except ItemError as exc:
            raise SourceError(f"{key}: {exc.reason}; not overwriting") from None
        if current is not None:
            if current != data:
                raise SourceError(f"{key}: a different file now exists there; not overwriting")
            await self._op("remove", lambda sftp: sftp.remove(location))
            held = there
        elif not await self._rename(key, location, target, "cannot restore"):
            raise SourceError(f"{key}: cannot restore there (a file appeared meanwhile?); not overwriting")
        mtime = int(original["mtime"]) if original.get("mtime") is not None else None

        async def settle(sftp: asyncssh.SFTPClient) -> asyncssh.SFTPAttrs:
            async with sftp.open(target, "rb") as fh:
                opened = await fh.stat()
                if opened.type not in (_FILE_TYPE_REGULAR, None) or (opened.size, opened.mtime) != (held.size, held.mtime):
                    raise SourceError(f"{key}: swapped right after it was restored; its mode and time are left alone")
                await fh.chmod(0o644)
                if mtime is not None:
                    await fh.utime((int(time.time()), mtime))
                return await fh.stat()
        await self._lstat(key, target, "not released")  # what we opened is what we put there
        attrs = await self._op("settle restored", settle)
        await self._op("remove sidecar", lambda sftp: sftp.remove(location + ".json"))
        return Item(key, size=attrs.size, mtime=float(attrs.mtime) if attrs.mtime is not None else None)


class _ItemTimeout(Exception):
    """An item's operation ran past its deadline (kept apart from connection timeouts, which are retried)."""


_TYPE_NAMES = {_FILE_TYPE_LINK: "a symbolic link", _FILE_TYPE_DIR: "a directory",
               asyncssh.sftp.FILEXFER_TYPE_FIFO: "a FIFO (named pipe)", asyncssh.sftp.FILEXFER_TYPE_SOCKET: "a socket",
               asyncssh.sftp.FILEXFER_TYPE_CHAR_DEVICE: "a character device",
               asyncssh.sftp.FILEXFER_TYPE_BLOCK_DEVICE: "a block device", _FILE_TYPE_REGULAR: "a regular file"}


def _describe(file_type: int | None) -> str:
    return _TYPE_NAMES.get(file_type, "an unknown kind of file")  # type: ignore[arg-type]


async def _chmod_nofollow(sftp: asyncssh.SFTPClient, path: str, mode: int) -> None:
    """chmod that does not follow a link (OpenSSH's lsetstat), or a plain one where the server lacks it
    (the caller lstat'ed ``path`` as a directory just before)."""
    try:
        await sftp.chmod(path, mode, follow_symlinks=False)
    except asyncssh.sftp.SFTPOpUnsupported:
        await sftp.chmod(path, mode)


async def _read_all(sftp: asyncssh.SFTPClient, path: str) -> bytes:
    async with sftp.open(path, "rb") as fh:
        return await fh.read()
