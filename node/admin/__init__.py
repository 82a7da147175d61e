"""The review console: a web page, on its own listener (``admin.listen``, off unless ``admin.enabled``),
where an instance's admins review what the node took out of circulation, without harm: blurred previews
drawn on request, reveals only behind a warning, every action and reveal audited.

  accounts      console accounts, argon2id hashes only (`verdict-node admin add|list|remove`)
  sessions      sessions in the database (token hashes only), CSRF tokens, the login rate limit
  audit         the audit log: who did what, when, to what, with what result
  queue         the review queue: quarantined sweep items, hook rejections, peer-verdict blocks; filters
  previews      blurred greyscale previews and one-time reveals, in memory, from quarantined files
  actions       confirm (evidence), release (false positive), delete, a peer's verdict retracted, purge
  charts        the overview's server-side SVG charts
  html          escaping, the page frame, forms with the CSRF token
  web           the application: security headers, the session guard, login / logout / password
  pages_review  the queue and item pages and the action routes
  pages_node    overview, peers, verdicts, evidence, audit
  console       the Console object (``node.features.get(Console)``)
  commands      `verdict-node admin ...`

This ``__init__`` is the package's composition root: ``install`` wires the console's ``Links`` to the sweeps
feature's release and quarantine code and to the federation feature's retraction and follow decisions, so
that no other module of the package names another feature.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

from aiohttp import web

from node.admin import pages_node, pages_review
from node.admin.actions import Links
from node.admin.console import Console
from node.admin.queue import QueueItem
from node.admin.web import build_app
from node.federation.commands import listing as federation_listing
from node.federation.follows import approve as federation_approve, reject as federation_reject
from node.federation.outbox import retract as federation_retract
from node.runtime import Node
from node.sweeps.actions import release as sweeps_release
from node.sweeps.records import SweepRecords
from node.workers.hub import WorkerHub
from scanners.sources import open_source
from scanners.sources.quarantine_dir import QuarantineDir

log = logging.getLogger("verdict_node.admin")

__all__ = ["Console", "install", "console_app"]


def links_for(node: Node) -> Links:
    """The console's reach into the sweeps and federation features of this node."""
    records = SweepRecords(node.store)

    def retract(verdict_id: str, reason: str) -> str:
        row = node.store.conn.execute("SELECT retracted_at FROM verdicts WHERE verdict_id = ?",
                                      (verdict_id,)).fetchone()
        if row is None:
            raise LookupError(f"{verdict_id}: not in the verdict store")
        if row[0] is not None:
            return f"{verdict_id} was already retracted"
        return federation_retract(node.store, node.config, node.ed25519_key, verdict_id, reason)

    def record_of(item: QueueItem) -> Any:
        record = records.item(item.source, item.key)
        if record is None or record.location != item.location:
            raise LookupError(f"{item.key}: the sweep record changed since the page was drawn; reload it")
        return record

    async def release_file(item: QueueItem, reason: str) -> dict[str, Any]:
        record = record_of(item)
        run = records.get_run(record.run_id) if record.run_id is not None else None
        if run is None:
            raise LookupError(f"{item.key}: the sweep run that quarantined it is not recorded; use `verdict-node "
                              f"release --source URL {item.location}`")
        options = {}
        if record.location and os.path.isabs(record.location):
            options["quarantine_dir"] = os.path.dirname(record.location)
        source = open_source(run["url"], **options)
        try:
            return await sweeps_release(records, record.location or "", source, reason=reason, retract=retract)
        finally:
            await source.close()

    async def discard_file(item: QueueItem) -> str:
        record = record_of(item)
        location = record.location or ""
        if not os.path.isabs(location):
            raise LookupError(f"{location}: a remote quarantine; delete it on that storage")
        QuarantineDir(os.path.dirname(location)).discard(location)
        records.commit([dataclasses.replace(record, action="deleted", location=None,
                                            action_error=None, decided_at=time.time())])
        return f"the quarantined file {location} and its sidecar are destroyed"

    def workers() -> list[str] | None:
        hub = node.features.get(WorkerHub)
        if hub is None:
            return None
        cutoff = hub.clock() - hub.settings.stale_after_s
        return [f"{name}: last request {hub.clock() - p.last_seen:.0f} s ago"
                for name, p in sorted(hub.presence.items()) if p.last_seen >= cutoff]

    return Links(
        release_file=release_file, discard_file=discard_file,
        add_override=lambda sha, pixel, reason, source, key: records.add_override(sha, pixel, reason, source, key),
        retract=retract,
        approve_follow=lambda actor: federation_approve(node.store, node.actor_id, actor),
        reject_follow=lambda actor: federation_reject(node.store, node.actor_id, actor),
        peer_listing=lambda: federation_listing(node.store, node.config), workers=workers)


def install(node: Node) -> Console:
    """Add the console to a node: the Console object (its application is built by ``console_app`` and served
    on its own listener by node.serve). Installed only when ``admin.enabled``; the feature adds no route to
    the node's main application."""
    console = Console(node, links_for(node))
    node.features.add(console)
    return console


def console_app(console: Console) -> web.Application:
    return build_app(console, [pages_review.add_routes, pages_node.add_routes])
