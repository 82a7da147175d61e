"""pict-rs's internal API (0.5, behind ``X-Api-Token``), asked which aliases a stored file has.

pict-rs deduplicates by hash: one file, any number of aliases (one per upload of the same bytes, so possibly
several uploaders). The external-validation request that the pict-rs hook answers carries neither alias nor
uploader, so a hook rejection is attributed later, by hash, once pict-rs has stored it (a rejected upload
is never stored, but the same bytes uploaded before, or on another path, are).

* ``GET /internal/aliases?alias=A`` gives every alias of A's hash (when an alias is known: a pict-rs sweep).
* With only the sha256, ``GET /internal/hashes`` is paged newest first (``timestamp=`` starts at a time, e.g.
  just after the node met the bytes, ``slug=`` continues) until the hash turns up, at most ``max_pages``.
  pict-rs's hash hex may carry more than the sha256 (its size and format follow it in some versions), so a
  hash matches when its hex starts with the sha256.
* ``GET /internal/identifier?alias=A`` says where the file is stored (its path or object key).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import aiohttp


class PictrsUnavailable(Exception):
    """pict-rs could not be asked; the message is the one line for the admin."""


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PictrsClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0, page_size: int = 100,
                 max_pages: int = 50) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.page_size = page_size
        self.max_pages = max_pages
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers={"X-Api-Token": self.api_key})
        return self._session

    async def _get(self, path: str) -> tuple[int, Any]:
        try:
            async with self._http().get(self.base_url + path) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status == 401:
                    raise PictrsUnavailable(f"pict-rs {self.base_url} refused the API key (HTTP 401): check "
                                            f"attribution.pictrs.api_key against PICTRS__SERVER__API_KEY")
                if resp.status >= 500:
                    raise PictrsUnavailable(f"pict-rs {self.base_url} failed: HTTP {resp.status}")
                return resp.status, body
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PictrsUnavailable(f"pict-rs {self.base_url} unreachable: {type(exc).__name__} {exc}".strip()) from None

    async def aliases_of(self, alias: str) -> list[str]:
        """Every alias of the hash that ``alias`` names ([] when pict-rs does not know it)."""
        status, body = await self._get(f"/internal/aliases?alias={quote(alias)}")
        if status != 200 or not isinstance(body, dict):
            return []
        return [a for a in body.get("aliases") or [] if isinstance(a, str)]

    async def identifier_of(self, alias: str) -> str | None:
        status, body = await self._get(f"/internal/identifier?alias={quote(alias)}")
        if status != 200 or not isinstance(body, dict):
            return None
        identifier = body.get("identifier")
        return identifier if isinstance(identifier, str) else None

    async def find_hash(self, sha256: str, *, near: float | None = None) -> dict[str, Any] | None:
        """The /internal/hashes entry of these bytes ({hex, aliases, details}) or None. ``near``: when the
        node met them; the search starts an hour after it (pict-rs stores a file after validating it) and
        goes on to older pages."""
        sha256 = sha256.lower()
        query = f"limit={self.page_size}"
        if near is not None:
            query += f"&timestamp={quote(_rfc3339(near + 3600))}"
        for _ in range(self.max_pages):
            status, body = await self._get(f"/internal/hashes?{query}")
            try:
                page = body["page"]
                hashes = page["hashes"]
            except (KeyError, TypeError):
                raise PictrsUnavailable(f"pict-rs {self.base_url} /internal/hashes: unexpected answer "
                                        f"(HTTP {status})") from None
            for entry in hashes:
                if isinstance(entry, dict) and str(entry.get("hex", "")).lower().startswith(sha256):
                    return entry
            slug = page.get("next")
            if not slug or not hashes:
                return None
            query = f"limit={self.page_size}&slug={quote(slug)}"
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
