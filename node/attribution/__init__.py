"""Attribution: who uploaded an image and where it is used, as the instance's own records say: pict-rs's
aliases of a file, Lemmy's uploader, posts and comments, Mastodon's account and status of a media file.
Read-only everywhere; the one action it takes (purging through Lemmy's admin API) is taken only when an
admin asks for it.

  database  read-only pooled connections to an instance's PostgreSQL, and the one line an outage gives
  pictrs    pict-rs's internal API: hash -> aliases -> stored file
  lemmy     Lemmy's tables (0.19 and 1.0): uploads, posts, comments
  mastodon  Mastodon's tables: storage path -> media attachment -> account and status
  lemmy_api Lemmy's admin API: purge a post, a comment or a person
  records   the package's SQL: the cache, the admin actions, the follower's position
  service   the Attributor (node.hooks) that puts these together
  commands  `verdict-node attribute`, `attribution purge|actions`, `evidence export|list`

``install(node)`` sets ``node.attribution`` when anything is configured (else it stays None and the node
works as before) and, with ``attribution.follow_positives``, attributes every new positive in the background.
Image decisions never wait on any of it: an instance database that is down costs one log line, not an upload.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from urllib.parse import urlsplit

from node.attribution.database import ReadOnlyDatabase
from node.attribution.lemmy import LemmyReader
from node.attribution.lemmy_api import LemmyAdminApi
from node.attribution.mastodon import MastodonReader
from node.attribution.pictrs import PictrsClient
from node.attribution.records import AttributionRecords
from node.attribution.service import AttributionService
from node.config import ConfigError, NodeConfig
from node.runtime import Node
from node.store import Store
from node.sweeps.records import SweepRecords

log = logging.getLogger("verdict_node.attribution")

FOLLOW_SECONDS = 5.0
PICTRS_KEY_ENV = "VERDICT_PICTRS_API_KEY"


def _secret(config: NodeConfig, value: str | None, file: str | None, key: str) -> str | None:
    if value:
        return value
    if file:
        path = config.path(file)
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"node.yaml: {key}: cannot read {path}: {exc.strerror or exc}") from None
    return None


def last_pictrs_sweep_url(store: Store) -> str | None:
    """The pict-rs a sweep last read (``pictrs://host:port``), as an http(s) base URL."""
    row = store.conn.execute("SELECT url FROM sweep_runs WHERE url LIKE 'pictrs%' ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    parts = urlsplit(row[0])
    scheme = "https" if parts.scheme == "pictrs+https" else "http"
    return f"{scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"


def open_attributor(config: NodeConfig, store: Store) -> AttributionService | None:
    """The Attributor that node.yaml's ``attribution:`` describes, or None when nothing is configured. Opens
    no connection: databases are connected at their first query."""
    section = config.attribution
    timeouts = dict(connect_timeout=section.connect_timeout_seconds, query_timeout=section.query_timeout_seconds)
    lemmy = mastodon = None
    if section.lemmy.database_url:
        password = _secret(config, None, section.lemmy.database_password_file, "attribution.lemmy.database_password_file")
        lemmy = LemmyReader(ReadOnlyDatabase("lemmy", section.lemmy.database_url, password=password, **timeouts),
                            section.lemmy.version)
    if section.mastodon.database_url:
        password = _secret(config, None, section.mastodon.database_password_file,
                           "attribution.mastodon.database_password_file")
        mastodon = MastodonReader(ReadOnlyDatabase("mastodon", section.mastodon.database_url, password=password,
                                                   **timeouts), section.mastodon.public_url)
    pictrs = None
    api_url = section.pictrs.api_url or (last_pictrs_sweep_url(store) if (lemmy or mastodon) else None)
    if api_url:
        api_key = _secret(config, section.pictrs.api_key, section.pictrs.api_key_file,
                          "attribution.pictrs.api_key_file") or os.environ.get(PICTRS_KEY_ENV)
        if api_key:
            pictrs = PictrsClient(api_url, api_key, timeout=section.connect_timeout_seconds + section.query_timeout_seconds,
                                  max_pages=section.pictrs.max_pages)
        elif section.pictrs.api_url:
            raise ConfigError("node.yaml: attribution.pictrs.api_url: needs attribution.pictrs.api_key (or api_key_file, "
                              f"or env {PICTRS_KEY_ENV}), the value of pict-rs's PICTRS__SERVER__API_KEY")
    lemmy_api = None
    if section.lemmy.api_url:
        jwt = _secret(config, section.lemmy.api_jwt, section.lemmy.api_jwt_file, "attribution.lemmy.api_jwt_file")
        if not jwt:
            raise ConfigError("node.yaml: attribution.lemmy.api_url: needs attribution.lemmy.api_jwt or api_jwt_file "
                              "(an admin's login token)")
        lemmy_api = LemmyAdminApi(section.lemmy.api_url, jwt,
                                  version="1.0" if section.lemmy.version == "1.0" else "0.19")
    if not (lemmy or mastodon or pictrs or lemmy_api):
        return None
    return AttributionService(AttributionRecords(store), pictrs=pictrs, lemmy=lemmy, mastodon=mastodon,
                              lemmy_api=lemmy_api, cache_hours=section.cache_hours)


async def follow_positives(service: AttributionService, node: Node, *, interval: float = FOLLOW_SECONDS,
                           rounds: int | None = None) -> None:
    """Attribute every new positive and keep it in the cache: the hook's rejections and peer blocks (decision
    rows), sweeps' blocked items, and evidence records not attributed yet. Starts from now on a first run
    (the backlog is attributed on demand, not all at once)."""
    records = service.records
    sweeps = SweepRecords(node.store)
    if records.position("decisions") is None:
        row = node.store.conn.execute("SELECT coalesce(max(id), 0) FROM decisions").fetchone()
        records.set_position("decisions", float(row[0]))
        records.set_position("sweep_items", time.time())
    done = 0
    while rounds is None or done < rounds:
        done += 1
        await asyncio.sleep(interval)
        try:
            await _follow_once(service, node, sweeps)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad round must not end attribution for good
            log.exception("attributing new positives failed; trying again in %.0f s", interval)


async def _follow_once(service: AttributionService, node: Node, sweeps: SweepRecords) -> None:
    said: set[str] = set()
    records = service.records
    started = time.time()
    after = int(records.position("decisions") or 0)
    for row in records.new_positive_decisions(after):
        attribution = await service.attribute(row["sha256"], source=row["source"], key=row["source_key"],
                                              seen_at=row["created_at"])
        if attribution.looked_up_at >= started and row["sha256"] not in said:
            said.add(row["sha256"])  # the same bytes rejected again: looked up (and said) once
            log.info("attribution: %s %s (%s): %s", row["source"], row["sha256"][:16], row["origin"],
                     attribution.summary)
        records.set_position("decisions", float(row["id"]))
    since = records.position("sweep_items") or 0.0
    for item in sweeps.positives(since=since):
        if item.sha256:
            attribution = await service.attribute(item.sha256, source=item.source, key=item.key,
                                                  seen_at=item.decided_at)
            if attribution.looked_up_at >= started:
                log.info("attribution: %s %s: %s", item.source, item.key, attribution.summary)
        records.set_position("sweep_items", item.decided_at)
    for record in node.evidence.unattributed():
        attribution = await service.attribute(record["sha256"], source=record["source"], key=record["key"] or None,
                                              seen_at=record["stored_at"] or record["created_at"])
        if not attribution.problems:
            node.evidence.attach_attribution(record["id"], {"summary": attribution.summary, "found": attribution.found,
                                                            **attribution.details}, attribution.looked_up_at)


def install(node: Node) -> AttributionService | None:
    """Attribution for a serving node: ``node.attribution`` when configured, the follower of new positives,
    and the pools closed with the node."""
    service = open_attributor(node.config, node.store)
    if service is None:
        return None
    node.attribution = service
    node.features.add(service)
    node.on_close.append(service.close)
    if node.config.attribution.follow_positives:
        async def follow(n: Node) -> None:
            await follow_positives(service, n)
        follow.__name__ = "attribution-follow"
        node.background.append(follow)
    return service
