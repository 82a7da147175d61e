"""Mastodon's database: a stored media file's attachment, account and status.

Mastodon (Paperclip) stores an attachment's files under ``media_attachments/files/<partition>/<style>/<name>``,
the partition being the attachment id zero-padded to 18 digits in groups of three (id 109876543210987654 ->
``109/876/543/210/987/654``), and media of remote accounts it cached under a ``cache/`` prefix. The path
alone names the attachment; the database says whose it is and where it was posted. Mastodon keeps no hash
of the bytes, so a file is found by its path only.
"""
from __future__ import annotations

import re
from typing import Any

from node.attribution.database import ReadOnlyDatabase

# Mastodon partitions an attachment id into groups of three digits: three for the small ids of old
# instances (zero-padded to nine), six for today's 18-digit snowflakes; never more.
_PATH = re.compile(r"^(?:[^/]+/)*?(cache/)?media_attachments/files/((?:\d{3}/){2,5}\d{3})/(\w+)/([^/]+)$")
TABLES = ("media_attachments", "accounts", "statuses")


def attachment_of(path: str) -> tuple[int, bool, str] | None:
    """(attachment id, cached remote media, style) of a Mastodon storage path, or None."""
    match = _PATH.search(path.strip().lstrip("/"))
    if match is None:
        return None
    return int(match.group(2).replace("/", "")), bool(match.group(1)), match.group(3)


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else value


class MastodonReader:
    def __init__(self, db: ReadOnlyDatabase, public_url: str | None = None) -> None:
        self.db = db
        self.public_url = public_url

    def _account_link(self, username: str, domain: str | None, url: str | None) -> str | None:
        if url:
            return url
        if domain is None and self.public_url:
            return f"{self.public_url}/@{username}"
        return None

    async def attribute(self, path: str) -> dict[str, Any] | None:
        """The attachment a path belongs to, with its account and status; None for a path that is not an
        attachment's; ``{"attachment_id": ..., "found": False}`` for one the database does not have."""
        parsed = attachment_of(path)
        if parsed is None:
            return None
        attachment_id, cached, style = parsed
        rows = await self.db.fetch(
            "SELECT m.id, m.status_id, m.account_id, m.remote_url, m.file_file_name, m.file_content_type, m.type,"
            " m.created_at, a.username, a.domain, a.url AS account_url, a.created_at AS account_created,"
            " s.uri AS status_uri, s.url AS status_url, s.created_at AS status_created"
            " FROM media_attachments m LEFT JOIN accounts a ON a.id = m.account_id"
            " LEFT JOIN statuses s ON s.id = m.status_id WHERE m.id = %s", (attachment_id,))
        if not rows:
            return {"attachment_id": attachment_id, "path": path, "found": False}
        r = rows[0]
        account = None
        if r["username"] is not None:
            handle = r["username"] if r["domain"] is None else f"{r['username']}@{r['domain']}"
            account = {"account_id": r["account_id"], "username": r["username"], "domain": r["domain"],
                       "handle": "@" + handle, "local": r["domain"] is None,
                       "url": self._account_link(r["username"], r["domain"], r["account_url"]),
                       "created_at": _when(r["account_created"])}
        status = None
        if r["status_id"] is not None:
            status = {"status_id": r["status_id"], "uri": r["status_uri"], "url": r["status_url"] or r["status_uri"],
                      "created_at": _when(r["status_created"])}
        return {"attachment_id": attachment_id, "path": path, "found": True, "cached_remote": cached,
                "style": style, "file_name": r["file_file_name"], "content_type": r["file_content_type"],
                "remote_url": r["remote_url"] or None, "created_at": _when(r["created_at"]),
                "account": account, "status": status}
