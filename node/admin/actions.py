"""What an admin decides about one item, and what each decision does.

  confirm   a true positive: the quarantined file stays as evidence; an evidence record is written
            (node.evidence) with the hashes, the decision and the verdicts behind it (and, when attribution
            is installed, who uploaded it and where it is used); the item leaves the queue.
  release   a false positive: the file goes back where the source allows (the sweeps feature's release),
            an override lets sweeps and the hook accept those bytes, and our own verdict is retracted at
            every peer (federation's retraction, queued for delivery); a peer's verdict is retracted here.
  delete    destroy the quarantined file, after a second confirmation; refused while an evidence record
            protects it unless the admin forces it. The evidence record itself stays.
  retract   a peer's false positive: its verdict no longer decides anything here (locally only: only its
            issuer can retract it everywhere).
  purge     via Lemmy, a post, comment or person that the attribution names: always explicit.

The other features are reached through ``Links``, callables that the package's ``install`` wires to the
sweeps and federation code: this module never names another feature. Every action is written to the audit
log, whatever its result, and returns the one line the admin reads.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from node.admin.audit import AuditLog
from node.admin.previews import PreviewError, read_quarantined
from node.admin.queue import QueueItem, ReviewQueue
from node.evidence import Positive, protection_reason
from node.runtime import Node
from scanners.media import sniff

PURGE_KINDS = ("post", "comment", "person")


# What scanners.media.sniff names, as the media type a report states (pict-rs's hook sends its own).
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
               "tiff": "image/tiff", "avif": "image/avif", "heif": "image/heif", "jxl": "image/jxl",
               "ico": "image/x-icon", "svg": "image/svg+xml", "mp4": "video/mp4", "mov": "video/quicktime",
               "webm": "video/webm", "avi": "video/x-msvideo", "html": "text/html"}


class ActionRefused(Exception):
    """The action was not done; the message says why, naming the item."""


@dataclass
class Links:
    """How the console reaches the other features (set by node.admin.install; None: not available here)."""

    #: (item, reason) -> outcome dict of the sweeps' release (restored_key, retracted, problems)
    release_file: Callable[[QueueItem, str], Awaitable[dict[str, Any]]] | None = None
    #: (item) -> one line: the quarantined file and its sidecar are destroyed, the sweep record says so
    discard_file: Callable[[QueueItem], Awaitable[str]] | None = None
    #: (sha256, pixel_sha256, reason, source, key) -> None: sweeps and the hook accept these bytes
    add_override: Callable[[str, str | None, str, str | None, str | None], None] | None = None
    #: (verdict_id, reason) -> one line: own verdicts are retracted at every peer, a peer's here only
    retract: Callable[[str, str], str] | None = None
    #: actor -> one line (federation's follow decisions)
    approve_follow: Callable[[str], str] | None = None
    reject_follow: Callable[[str], str] | None = None
    #: () -> one row per peer (federation's listing: trust, follow states, backlog, last error)
    peer_listing: Callable[[], list[dict[str, Any]]] | None = None
    #: () -> one line per connected remote worker, or None when the workers feature is not installed
    workers: Callable[[], list[str] | None] = field(default=lambda: None)


class ReviewActions:
    def __init__(self, node: Node, queue: ReviewQueue, audit: AuditLog, links: Links) -> None:
        self.node = node
        self.queue = queue
        self.audit = audit
        self.links = links
        self._busy: set[str] = set()  # refs with an action running (see _exclusive)

    def _done(self, admin: str, action: str, target: str, result: str, client: str | None) -> str:
        self.audit.write(admin, action, target, result, client)
        return result

    def _refuse(self, admin: str, action: str, target: str, why: str, client: str | None) -> ActionRefused:
        self.audit.write(admin, action, target, f"refused: {why}", client)
        return ActionRefused(why)

    # -- one review at a time per item ----------------------------------------------------------------

    async def _exclusive(self, item: QueueItem, admin: str, action: str, client: str | None,
                         run: Callable[[], Awaitable[str]]) -> str:
        """Run one action on an item while no other runs on it, and confirm or release only an item nobody
        reviewed meanwhile: a double click, a bulk action beside a single one, or two admins must not write
        two evidence records or release twice (the checks before run awaited the file and attribution)."""
        if item.ref in self._busy:
            raise self._refuse(admin, action, item.audit_target, f"{item.title()} is being reviewed right now "
                               "(another click or another admin): nothing done", client)
        self._busy.add(item.ref)
        try:
            review = self.queue.review_of(item.ref)
            if review and action in ("confirm", "release"):
                raise self._refuse(admin, action, item.audit_target, f"{item.title()} was reviewed already "
                                   f"({review['decision']} by {review['reviewer']}): nothing done", client)
            return await run()
        finally:
            self._busy.discard(item.ref)

    async def confirm(self, item: QueueItem, admin: str, note: str = "", client: str | None = None) -> str:
        return await self._exclusive(item, admin, "confirm", client, lambda: self._confirm(item, admin, note, client))

    async def release(self, item: QueueItem, admin: str, reason: str, client: str | None = None) -> str:
        return await self._exclusive(item, admin, "release", client,
                                     lambda: self._release(item, admin, reason, client))

    async def delete(self, item: QueueItem, admin: str, *, force: bool, client: str | None = None) -> str:
        return await self._exclusive(item, admin, "delete", client,
                                     lambda: self._delete(item, admin, force=force, client=client))

    # -- confirm -----------------------------------------------------------------------------------

    def positive(self, item: QueueItem) -> Positive:
        """The evidence of one item: hashes and the file's type (the md5 and the type read from the quarantined
        file when there is one: a sweep records neither)."""
        md5, size, media_type = None, item.size, item.media_type
        if item.has_file:
            try:
                data = read_quarantined(item.location or "", self.node.config.media.max_bytes, item.sha256)
                md5, size = hashlib.md5(data).hexdigest(), len(data)
                media_type = media_type or MEDIA_TYPES.get(sniff(data) or "")
            except PreviewError:
                pass
        decision = {"outcome": "block", "kind": item.kind, "reason": item.reason, "origin": item.origin,
                    "scores": item.scores, "thresholds": dict(self.node.policy.thresholds.items()),
                    "verdicts": [{"id": v.verdict_id, "issuer": v.issuer, "own": v.own, "label": v.label,
                                  "scores": v.scores} for v in item.verdicts],
                    "media_flags": item.media_flags, "times_seen": item.times_seen}
        return Positive(sha256=item.sha256 or "", source=item.source, key=item.key, md5=md5,
                        pixel_sha256=item.pixel_sha256, pdq256=item.pdq256, phash64=item.phash64, size=size,
                        media_type=media_type, location=item.location if item.has_file else None,
                        stored_at=item.first_seen, decision=decision)

    async def _confirm(self, item: QueueItem, admin: str, note: str = "", client: str | None = None) -> str:
        target = item.audit_target
        if not item.sha256:
            raise self._refuse(admin, "confirm", target, f"{item.title()} has no sha256: nothing to record", client)
        positive = await asyncio.to_thread(self.positive, item)  # reads the quarantined file for its md5
        record_id = self.node.evidence.confirm(positive, reviewer=admin, note=note)
        attributed = ""
        if self.node.attribution is not None:
            found = await self.node.attribution.attribute(item.sha256, source=item.source, key=item.key or None)
            self.node.evidence.attach_attribution(record_id, {"summary": found.summary, "found": found.found,
                                                              "problems": list(found.problems), **found.details},
                                                  found.looked_up_at)
            attributed = f"; attribution: {found.summary}"
        self.queue.mark_reviewed(item, "confirmed", admin, note)
        kept = f"the quarantined file {item.location} is kept as evidence" if item.has_file else "no file kept"
        return self._done(admin, "confirm", target,
                          f"confirmed {item.title()} as a positive: evidence record {record_id} written ({kept}, "
                          f"protected for evidence.retain_days = {self.node.evidence.retain_days:g} days){attributed}",
                          client)

    # -- release -----------------------------------------------------------------------------------

    async def _release(self, item: QueueItem, admin: str, reason: str, client: str | None = None) -> str:
        target = item.audit_target
        reason = reason.strip() or f"false positive (released by {admin} in the review console)"
        if not item.sha256:
            raise self._refuse(admin, "release", target, f"{item.title()} has no sha256: cannot release", client)
        lines: list[str] = []
        protecting = self.node.evidence.protecting(item.sha256, location=item.location) if item.has_file else None
        if protecting is not None:
            # A confirmed positive put back into public storage by one click is the worst mistake this page
            # could make; undoing a confirmation is a deliberate step at the command line.
            why = protection_reason(protecting).replace(
                "pass --force to destroy it anyway",
                f"releasing it would publish it again; if the confirmation was wrong, run `verdict-node release "
                f"--force {item.location}`")
            raise self._refuse(admin, "release", target, f"{item.title()} was not released: {why}", client)
        if item.has_file:
            if self.links.release_file is None:
                raise self._refuse(admin, "release", target, "the sweeps feature is not installed here", client)
            try:
                outcome = await self.links.release_file(item, reason)
            except Exception as exc:  # noqa: BLE001 - the storage's refusal (SourceError, LookupError), for the admin
                raise self._refuse(admin, "release", target, f"{item.title()} was not released: {exc}", client) from exc
            lines.append(f"restored to {outcome.get('restored_key') or item.key} in {item.source}")
            lines += [f"verdict: {r}" for r in outcome.get("retracted", [])]
            lines += [f"problem: {p}" for p in outcome.get("problems", [])]
        else:
            if self.links.add_override is None or self.links.retract is None:
                raise self._refuse(admin, "release", target, "the sweeps and federation features are needed", client)
            self.links.add_override(item.sha256, item.pixel_sha256, reason, item.source, item.key or None)
            lines.append("no file to restore (pict-rs keeps none of a rejected upload: it is accepted when uploaded "
                         "again)" if item.kind == "hook" else "no file to restore")
            for verdict in item.verdicts:
                if verdict.retracted:
                    lines.append(f"verdict {verdict.verdict_id} was already retracted")
                    continue
                try:
                    lines.append(f"verdict: {self.links.retract(verdict.verdict_id, reason)}")
                except LookupError as exc:
                    lines.append(f"problem: {exc}")
        self.node.sync_with_store()
        self.queue.mark_reviewed(item, "released", admin, reason)
        return self._done(admin, "release", target, f"released {item.title()} as a false positive ({reason}): "
                          f"sweeps and the hook accept these bytes from now on; " + "; ".join(lines), client)

    # -- delete ------------------------------------------------------------------------------------

    async def _delete(self, item: QueueItem, admin: str, *, force: bool, client: str | None = None) -> str:
        target = item.audit_target
        if not item.has_file:
            raise self._refuse(admin, "delete", target, f"{item.title()}: no file kept, nothing to delete", client)
        protecting = self.node.evidence.protecting(item.sha256, location=item.location)
        if protecting is not None and not force:
            why = protection_reason(protecting).replace("pass --force", "tick 'force'")
            raise self._refuse(admin, "delete", target, f"{item.location} not deleted: {why}", client)
        if self.links.discard_file is None:
            raise self._refuse(admin, "delete", target, "the sweeps feature is not installed here", client)
        try:
            line = await self.links.discard_file(item)
        except (LookupError, OSError) as exc:
            raise self._refuse(admin, "delete", target, f"{item.location} not deleted: {exc}", client) from exc
        self.queue.mark_reviewed(item, "deleted", admin, "forced past evidence retention" if protecting else "")
        kept = (f"; evidence record {protecting['id']} stays (forced past its retention)" if protecting
                else "; any evidence record stays")
        return self._done(admin, "delete", target, f"deleted {item.title()}: {line}{kept}", client)

    # -- a peer's verdict ----------------------------------------------------------------------------

    def retract_peer_verdict(self, item: QueueItem, verdict_id: str, admin: str, reason: str,
                             client: str | None = None) -> str:
        verdict = next((v for v in item.verdicts if v.verdict_id == verdict_id), None)
        if verdict is None or verdict.own:
            raise self._refuse(admin, "retract-peer-verdict", verdict_id,
                               f"{verdict_id} is not a peer's verdict behind {item.title()}", client)
        if not reason.strip():
            raise self._refuse(admin, "retract-peer-verdict", verdict_id, "give a reason: it is recorded with the "
                               "retraction", client)
        if self.links.retract is None:
            raise self._refuse(admin, "retract-peer-verdict", verdict_id, "the federation feature is needed", client)
        try:
            line = self.links.retract(verdict_id, reason.strip())
        except LookupError as exc:
            raise self._refuse(admin, "retract-peer-verdict", verdict_id, str(exc), client) from exc
        self.node.sync_with_store()
        # The item leaves the queue only once no verdict blocks it any more (our own included).
        if all(v.retracted or v.verdict_id == verdict_id for v in item.verdicts):
            self.queue.mark_reviewed(item, "retracted-peer", admin, reason)
        return self._done(admin, "retract-peer-verdict", verdict_id,
                          f"{line}; {verdict.issuer}'s verdict no longer decides anything on this node", client)

    def retract_own(self, verdict_id: str, admin: str, reason: str, client: str | None = None) -> str:
        if not reason.strip():
            raise self._refuse(admin, "retract-verdict", verdict_id, "give a reason: peers receive it", client)
        if self.links.retract is None:
            raise self._refuse(admin, "retract-verdict", verdict_id, "the federation feature is needed", client)
        stored = self.node.store.get_verdict(verdict_id)
        if stored is not None and not stored.own:
            raise self._refuse(admin, "retract-verdict", verdict_id, f"{verdict_id} is {stored.verdict.issuer}'s "
                               "verdict: only its issuer retracts it everywhere (retract it locally from its item)",
                               client)
        try:
            line = self.links.retract(verdict_id, reason.strip())
        except LookupError as exc:
            raise self._refuse(admin, "retract-verdict", verdict_id, str(exc), client) from exc
        self.node.sync_with_store()
        return self._done(admin, "retract-verdict", verdict_id, line, client)

    # -- purge via Lemmy -------------------------------------------------------------------------------

    async def purge(self, kind: str, target_id: int, admin: str, reason: str, client: str | None = None, *,
                    item: QueueItem, named: set[tuple[str, int]]) -> str:
        """Purge one of the posts, comments or uploaders that this item's attribution ``named``: a form posted
        with any other id is refused (the console purges what it showed about an image, nothing else)."""
        target = f"lemmy {kind} {target_id}"
        if self.node.attribution is None:
            raise self._refuse(admin, "purge", target, "attribution is not installed: no Lemmy to ask", client)
        if kind not in PURGE_KINDS:
            raise self._refuse(admin, "purge", target, f"cannot purge a {kind!r} (post, comment or person)", client)
        if (kind, target_id) not in named:
            raise self._refuse(admin, "purge", target, f"Lemmy {kind} {target_id} is not among what the attribution "
                               f"of {item.title()} ({item.ref}) names: nothing purged", client)
        if not reason.strip():
            raise self._refuse(admin, "purge", target, "give a reason: Lemmy records it with the purge", client)
        answer = await self.node.attribution.purge(kind, target_id, reason=reason.strip(), actor=admin)
        return self._done(admin, "purge", target, answer, client)

    # -- follow requests -------------------------------------------------------------------------------

    def follow_decision(self, actor: str, approve: bool, admin: str, client: str | None = None) -> str:
        action = "approve-follow" if approve else "reject-follow"
        link = self.links.approve_follow if approve else self.links.reject_follow
        if link is None:
            raise self._refuse(admin, action, actor, "the federation feature is not installed here", client)
        try:
            return self._done(admin, action, actor, link(actor), client)
        except Exception as exc:  # noqa: BLE001 - PeerCommandError and the like: the admin's line
            raise self._refuse(admin, action, actor, str(exc), client) from exc

