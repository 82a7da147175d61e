"""The Attributor (node.hooks): who uploaded an image and where it is used, from pict-rs, Lemmy and
Mastodon, cached in the node's database with the time it was looked up.

How one image is attributed:
  1. its pict-rs aliases: from the alias when it is known (a pict-rs sweep's key), else by its sha256 in
     pict-rs's hash listing; with no pict-rs API configured, a ``pictrs`` key is taken as the one alias;
  2. Lemmy: each alias's upload row (the uploader, or a federated thumbnail and its remote post), the posts
     whose url or thumbnail ends in an alias, and with ``search_text`` posts and comments mentioning one;
  3. Mastodon: a storage key shaped like a media attachment's path gives the attachment, account, status.
A source that cannot be asked is one entry of ``problems``; the others still answer. Only complete lookups
(no problems) are cached, so an outage is not remembered as "not found".
"""
from __future__ import annotations

import logging
import time
from typing import Any

from node.attribution.database import DatabaseUnavailable
from node.attribution.lemmy import LemmyReader
from node.attribution.lemmy_api import KINDS, LemmyAdminApi
from node.attribution.mastodon import MastodonReader, attachment_of
from node.attribution.pictrs import PictrsClient, PictrsUnavailable
from node.attribution.records import AttributionRecords, cache_key
from node.hooks import Attribution

log = logging.getLogger("verdict_node.attribution")

HOUR = 3600.0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _person_line(person: dict[str, Any]) -> str:
    created = (person.get("created_at") or "")[:10]
    parts = [person.get("actor_url") or "no actor URL"]
    if created:
        parts.append(f"account created {created}")
    if person.get("deleted"):
        parts.append("account deleted")
    return f"{person['name']} ({', '.join(parts)})"


def summarize(details: dict[str, Any]) -> tuple[bool, str]:
    """(found, the one line for the log and the console)."""
    lemmy = details.get("lemmy") or {}
    uploads = lemmy.get("uploads") or []
    posts = lemmy.get("posts") or []
    comments = lemmy.get("comments") or []
    media = [m for m in details.get("mastodon") or [] if m.get("found")]
    said: list[str] = []
    uploaders = [u["uploader"] for u in uploads if u.get("uploader")]
    if uploaders:
        names = []
        for person in uploaders:
            line = _person_line(person)
            if line not in names:
                names.append(line)
        said.append("uploaded by " + " and ".join(names))
    for upload in uploads:
        if upload.get("federated_thumbnail"):
            remote = upload.get("remote_post")
            said.append("federated thumbnail" + (f" of {remote['ap_id']}" if remote else " (no post names it)"))
    if posts or comments:
        used = [_plural(len(posts), "post")] if posts else []
        if comments:
            used.append(_plural(len(comments), "comment"))
        said.append("in " + " and ".join(used))
    for m in media:
        account = m.get("account") or {}
        status = m.get("status") or {}
        line = f"mastodon media {m['attachment_id']} of {account.get('handle', 'no account')}"
        if status.get("url"):
            line += f" in {status['url']}"
        said.append(line)
    if said:
        return True, ", ".join(said)
    aliases = (details.get("pictrs") or {}).get("aliases") or []
    if aliases and lemmy:
        return False, f"not found: Lemmy has no upload or post of alias {', '.join(aliases)}"
    if aliases:
        return False, f"not found: pict-rs alias {', '.join(aliases)}, no instance database to say who uploaded it"
    if any(not m.get("found") for m in details.get("mastodon") or []):
        return False, "not found: Mastodon has no media attachment for that path"
    if "pictrs" in details:
        return False, "not found: no pict-rs alias for these bytes"
    if not details.get("key"):
        return False, ("not found: no pict-rs alias known for these bytes (the pict-rs hook is told none; "
                       "attribution.pictrs lets the node look their hash up)")
    return False, "not found: nothing configured could say where these bytes came from"


class AttributionService:
    """``node.attribution``: the Attributor of node.hooks."""

    def __init__(self, records: AttributionRecords, *, pictrs: PictrsClient | None = None,
                 lemmy: LemmyReader | None = None, mastodon: MastodonReader | None = None,
                 lemmy_api: LemmyAdminApi | None = None, cache_hours: float = 24.0) -> None:
        self.records = records
        self.pictrs = pictrs
        self.lemmy = lemmy
        self.mastodon = mastodon
        self.lemmy_api = lemmy_api
        self.cache_seconds = cache_hours * HOUR

    async def attribute(self, sha256: str, *, source: str | None = None, key: str | None = None,
                        refresh: bool = False, search_text: bool = False,
                        seen_at: float | None = None) -> Attribution:
        """See node.hooks.Attributor. ``seen_at``: when the node met the bytes (where pict-rs's listing is
        searched from)."""
        sha256 = sha256.lower()
        ckey = cache_key(sha256, source, key, search_text)
        if not refresh:
            cached = self.records.cached(ckey)
            if cached is not None and time.time() - cached.looked_up_at < self.cache_seconds:
                return cached
        problems: list[str] = []
        details: dict[str, Any] = {"sha256": sha256, "source": source, "key": key}
        aliases = await self._aliases(sha256, source, key, seen_at, details, problems)
        if self.lemmy is not None and aliases:
            try:
                details["lemmy"] = await self.lemmy.attribute(aliases, search_text=search_text)
            except DatabaseUnavailable as exc:
                problems.append(str(exc))
            except LookupError as exc:
                problems.append(str(exc))
        if self.mastodon is not None and key and attachment_of(key) is not None:
            try:
                found = await self.mastodon.attribute(key)
                details["mastodon"] = [found] if found else []
            except DatabaseUnavailable as exc:
                problems.append(str(exc))
        found, summary = summarize(details)
        if problems and not found:
            summary = "unknown: " + "; ".join(problems)
        attribution = Attribution(looked_up_at=time.time(), found=found, summary=summary, details=details,
                                  problems=tuple(problems))
        if not problems:
            self.records.remember(ckey, sha256, attribution)
        return attribution

    async def _aliases(self, sha256: str, source: str | None, key: str | None, seen_at: float | None,
                       details: dict[str, Any], problems: list[str]) -> list[str]:
        from_pictrs = bool(source and source.split(":", 1)[0].split("+", 1)[0] == "pictrs")
        if self.pictrs is None:
            if from_pictrs and key:
                details["pictrs"] = {"aliases": [key], "asked": False}
                return [key]
            return []
        info: dict[str, Any] = {"aliases": [], "asked": True}
        details["pictrs"] = info
        try:
            aliases: list[str] = []
            if from_pictrs and key:
                aliases = await self.pictrs.aliases_of(key) or [key]
            else:
                entry = await self.pictrs.find_hash(sha256, near=seen_at)
                if entry is not None:
                    aliases = [a for a in entry.get("aliases") or [] if isinstance(a, str)]
                    info["hash"] = entry.get("hex")
                    info["created_at"] = (entry.get("details") or {}).get("created_at")
                    info["content_type"] = (entry.get("details") or {}).get("content_type")
                else:
                    info["searched_pages"] = self.pictrs.max_pages
            info["aliases"] = aliases
            if aliases:
                info["identifier"] = await self.pictrs.identifier_of(aliases[0])
            return aliases
        except PictrsUnavailable as exc:
            problems.append(str(exc))
            return [key] if from_pictrs and key else []

    async def purge(self, kind: str, target_id: int, *, reason: str, actor: str) -> str:
        """See node.hooks.Attributor.purge: recorded (attribution_actions) and logged, done or not."""
        if kind not in KINDS:
            raise ValueError(f"cannot purge a {kind!r}: one of {', '.join(KINDS)}")
        if not reason.strip():
            raise ValueError("a purge needs a reason (Lemmy records it in its modlog)")
        if self.lemmy_api is None:
            line = "no purge: attribution.lemmy.api_url and api_jwt (or api_jwt_file) are not configured"
            ok = False
        else:
            await self._settle_api_version()
            ok, line = await self.lemmy_api.purge(kind, target_id, reason)
        self.records.record_action(actor=actor, kind=kind, target=target_id, reason=reason, ok=ok, answer=line)
        (log.warning if not ok else log.info)("attribution: %s asked to purge %s %d (%s): %s", actor, kind,
                                              target_id, reason, line)
        return line

    async def delete_image(self, alias: str, *, reason: str, actor: str) -> str:
        """An explicit admin action: delete one image from the instance through Lemmy (every alias of its
        bytes is another upload, deleted on its own). Recorded and logged like a purge."""
        if not reason.strip():
            raise ValueError("a deletion needs a reason (recorded with it)")
        if self.lemmy_api is None:
            ok, line = False, "no deletion: attribution.lemmy.api_url and api_jwt (or api_jwt_file) are not configured"
        else:
            await self._settle_api_version()
            token = None
            if self.lemmy_api.version != "1.0" and self.lemmy is not None:
                try:
                    token = await self.lemmy.delete_token(alias)
                except (DatabaseUnavailable, LookupError) as exc:
                    log.warning("attribution: the delete token of %s not read: %s", alias, exc)
            ok, line = await self.lemmy_api.delete_image(alias, delete_token=token)
        self.records.record_action(actor=actor, kind="image", target=alias, reason=reason, ok=ok, answer=line)
        (log.warning if not ok else log.info)("attribution: %s asked to delete image %s (%s): %s", actor, alias,
                                              reason, line)
        return line

    async def _settle_api_version(self) -> None:
        """With attribution.lemmy.version auto, the API's routes follow the schema of Lemmy's database."""
        assert self.lemmy_api is not None
        if self.lemmy is None or self.lemmy.configured_version != "auto":
            return
        try:
            self.lemmy_api.version = (await self.lemmy.schema()).version
        except (DatabaseUnavailable, LookupError) as exc:
            log.warning("attribution: Lemmy's version not told by its database (%s); using the %s routes", exc,
                        self.lemmy_api.version)

    async def close(self) -> None:
        for part in (self.pictrs, self.lemmy and self.lemmy.db, self.mastodon and self.mastodon.db):
            if part is not None:
                await part.close()
