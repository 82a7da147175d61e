"""Storage sources a sweep walks: local directory, SSH/SFTP, S3-compatible buckets, pict-rs admin API.

``open_source(url, **options)`` picks the kind from the URL; each kind lives in its own module. The SSH and
S3 kinds are imported only when used, so asyncssh and boto3 stay unloaded for a local sweep.
"""
from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .base import (Cursor, Item, ItemChanged, ItemError, ItemGone, ItemRefused, NotRegularFile, Recovered, Source,
                   SourceError)
from .local import LocalSource
from .pictrs import PictrsSource

__all__ = ["Cursor", "Item", "ItemChanged", "ItemError", "ItemGone", "ItemRefused", "LocalSource", "NotRegularFile", "Recovered",
           "Source", "SourceError", "open_source"]


def open_source(url: str, **options: Any) -> Source:
    """Open a source from a URL; ``options`` are passed to the kind's constructor (they override the
    URL's query parameters).

    - ``/path`` or ``file:///path``: :class:`~scanners.sources.local.LocalSource`
    - ``ssh://user@host:port/path``: :class:`~scanners.sources.ssh.SSHSource`
    - ``s3://bucket/prefix?endpoint=http://...&prefix=other/``: :class:`~scanners.sources.s3.S3Source`
    - ``pictrs://host:port`` (http) or ``pictrs+https://host``: :class:`~scanners.sources.pictrs.PictrsSource`
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in query:  # repeated parameter (prefix=a&prefix=b) -> list
            query[name] = (query[name] if isinstance(query[name], list) else [query[name]]) + [value]
        else:
            query[name] = value
    merged = {**query, **options}
    if scheme in ("", "file"):
        return _construct(LocalSource, url, parts.path if scheme == "file" else url, **options)
    if scheme in ("ssh", "sftp"):
        from .ssh import SSHSource  # heavy: asyncssh
        if not parts.hostname:
            raise SourceError(f"{url}: ssh URL needs a host (ssh://user@host:port/path)")
        return _construct(SSHSource, url, host=parts.hostname, port=parts.port or 22, username=parts.username,
                          root=parts.path or ".", **merged)
    if scheme == "s3":
        from .s3 import S3Source  # heavy: boto3
        if not parts.netloc:
            raise SourceError(f"{url}: s3 URL needs a bucket (s3://bucket/prefix)")
        prefixes = merged.pop("prefix", None)
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        path_prefix = parts.path.lstrip("/")
        prefixes = list(prefixes or []) or [path_prefix]
        return _construct(S3Source, url, bucket=parts.netloc, prefixes=prefixes, **merged)
    if scheme in ("pictrs", "pictrs+http", "pictrs+https"):
        http = "https" if scheme == "pictrs+https" else "http"
        if not parts.netloc:
            raise SourceError(f"{url}: pictrs URL needs host:port")
        return _construct(PictrsSource, url, base_url=f"{http}://{parts.netloc}{parts.path.rstrip('/')}", **merged)
    raise SourceError(f"{url}: unknown source kind {scheme!r} (use a path, ssh://, s3:// or pictrs://)")


def _construct(kind: type[Source], url: str, *args: Any, **options: Any) -> Source:
    """Open one kind with options that come from the command line or the URL's query: an unknown name or a
    value of the wrong shape (``max_bytes=lots``) is the user's mistake and gets a SourceError naming it,
    not a TypeError traceback from the constructor."""
    accepted = inspect.signature(kind).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = sorted(n for n, p in accepted.items() if p.kind == p.KEYWORD_ONLY)
        raise SourceError(f"{url}: unknown option {', '.join(unknown)} for a {kind.scheme} source "
                          f"(options: {', '.join(known)})")
    try:
        return kind(*args, **options)
    except ValueError as exc:
        raise SourceError(f"{url}: bad option value ({exc})") from None
