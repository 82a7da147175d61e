"""The follower of new positives: hook rejections and peer blocks (decision rows, not unreadable bodies or
a missing classifier), sweep positives with their source and key, and evidence records without an
attribution, each attributed and cached; what came before the first start is left to on-demand lookups."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time

from node.attribution import follow_positives, open_attributor
from node.evidence import Positive
from node.runtime import Node
from node.sweeps.records import ItemRecord, SweepRecords
from tests import lemmy_schema as schema
from tests.attribution_helpers import databases  # noqa: F401
from tests.node_helpers import make_data_dir
from tests.postgres_server import postgres_server  # noqa: F401
from tests.storage_servers import pictrs_server  # noqa: F401

PNG = b"\x89PNG\r\n\x1a\n"


def test_follower_attributes_each_kind_of_positive(tmp_path, databases, pictrs_server):  # noqa: F811
    server = pictrs_server
    server.reset()
    hook_bytes, peer_bytes, swept_bytes, old_bytes = (PNG + os.urandom(50) for _ in range(4))
    server.state.add(hook_bytes, alias=schema.ALICE_ALIAS)
    server.state.add(peer_bytes, alias=schema.THUMB_ALIAS)
    server.state.add(swept_bytes, alias=schema.DELETED_ALIAS)
    sha = {name: hashlib.sha256(b).hexdigest() for name, b in
           (("hook", hook_bytes), ("peer", peer_bytes), ("swept", swept_bytes), ("old", old_bytes))}
    config = make_data_dir(tmp_path, attribution={
        "lemmy": {"database_url": databases["lemmy10"]},
        "pictrs": {"api_url": f"http://{server.host}:{server.port}", "api_key": server.api_key}})
    node = Node.open(config, load_model=False)
    service = open_attributor(config, node.store)
    node.store.record_decision(source="pictrs", decision="reject", reason="old", origin="inference", sha256=sha["old"])
    node.store.flush()

    async def main():
        first = asyncio.create_task(follow_positives(service, node, interval=0.01, rounds=1))
        await first  # sets the starting point: the rejection above is history
        node.store.record_decision(source="pictrs", decision="reject", reason="csam", origin="inference",
                                   sha256=sha["hook"])
        node.store.record_decision(source="pictrs", decision="reject", reason="peer", origin="peer", sha256=sha["peer"])
        node.store.record_decision(source="pictrs", decision="reject", reason="no classifier", origin="unavailable",
                                   sha256="9" * 64)
        node.store.record_decision(source="pictrs", decision="reject", reason="unreadable", origin="media",
                                   sha256="8" * 64)
        node.store.flush()
        swept_source = f"pictrs://{server.host}:{server.port}"
        SweepRecords(node.store).commit([ItemRecord(
            source=swept_source, key=schema.DELETED_ALIAS, size=None, mtime=None, etag=sha["swept"], run_id=None,
            decided_at=time.time() + 1, outcome="block", origin="inference", reason="csam", sha256=sha["swept"],
            action="quarantined", location="/q/1")])
        record_id = node.evidence.confirm(Positive(sha256=sha["hook"], source="pictrs", decision={"outcome": "block"}),
                                          reviewer="alice")
        await follow_positives(service, node, interval=0.01, rounds=1)
        return record_id

    try:
        record_id = asyncio.run(main())
        cached = {row[0]: (row[1], row[2]) for row in node.store.conn.execute(
            "SELECT sha256, found, summary FROM attribution_cache")}
        assert set(cached) == {sha["hook"], sha["peer"], sha["swept"]}, "not the history, not non-positives"
        assert cached[sha["hook"]][1].startswith("uploaded by alice")
        assert cached[sha["peer"]][1].startswith("federated thumbnail of https://remote.example/post/77")
        assert "mallory" in cached[sha["swept"]][1] and "account deleted" in cached[sha["swept"]][1]
        evidence = node.evidence.get(record_id)
        assert evidence["attribution"]["summary"].startswith("uploaded by alice") and evidence["attributed_at"]
        assert evidence["attribution"]["lemmy"]["posts"][0]["ap_id"] == f"{schema.LEMMY}/post/101"
    finally:
        asyncio.run(service.close())
        asyncio.run(node.close())
