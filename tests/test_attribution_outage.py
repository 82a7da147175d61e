"""An instance database that is down, silent or refuses the password: one clear log line naming the database
(never its password), the same words in Attribution.problems, nothing cached as "not found", and the pict-rs
hook deciding as fast as ever meanwhile (attribution runs beside decisions, never in front of them)."""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import socket
import time

import pytest

import node.attribution as attribution_feature
from node.attribution.database import DatabaseUnavailable, ReadOnlyDatabase, redacted
from node.attribution.lemmy import LemmyReader
from node.attribution.records import AttributionRecords
from node.attribution.service import AttributionService
from node.banks.formats import BadLines, read_entries
from node.banks.records import BankRecords
from node.store import Store
from tests.attribution_helpers import RO_PASSWORD, databases  # noqa: F401
from tests.node_helpers import free_port, make_data_dir, pictrs_post, running_node, validate_url
from tests.postgres_server import postgres_server  # noqa: F401
from tests.storage_servers import pictrs_server  # noqa: F401

LOG = "verdict_node.attribution"


def test_redacted_urls_keep_everything_but_the_password():
    assert redacted("postgresql://ro:s3cret@db:5432/lemmy") == "postgresql://ro@db:5432/lemmy"
    assert redacted("postgresql://ro@db/lemmy") == "postgresql://ro@db/lemmy"
    # libpq also takes the password as a query parameter: it must not reach a log line either.
    assert redacted("postgresql://ro@db/lemmy?password=s3cret&sslmode=require") == \
        "postgresql://ro@db/lemmy?sslmode=require"


def test_a_wrong_password_is_one_clear_line_and_a_problem(tmp_path, databases, caplog):  # noqa: F811
    url = databases["lemmy019"].replace(RO_PASSWORD, "not-the-password")
    caplog.set_level(logging.INFO, logger=LOG)

    async def main():
        service = AttributionService(AttributionRecords(Store(tmp_path / "db.sqlite")),
                                     lemmy=LemmyReader(ReadOnlyDatabase("lemmy", url, connect_timeout=3)))
        try:
            first = await service.attribute("a" * 64, source="pictrs", key="x.png")
            started = time.monotonic()
            second = await service.attribute("a" * 64, source="pictrs", key="x.png")
            again_seconds = time.monotonic() - started
        finally:
            await service.close()
        return first, second, again_seconds

    first, second, again_seconds = asyncio.run(main())
    expected = (f"lemmy database {redacted(url)} unreachable: password authentication failed for user "
                f"\"verdict_node_ro\"")
    assert first.problems == (expected,) and not first.found and first.summary == "unknown: " + expected
    assert second.problems == first.problems and again_seconds < 0.5, "an outage is not waited on again"
    lines = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert lines == [f"attribution: {expected} (tried again in 30 s; image decisions are not affected)"]
    assert "not-the-password" not in caplog.text
    assert AttributionRecords(Store(tmp_path / "db.sqlite")).cached_count() == 0, "an outage is not 'not found'"


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never says a word (a hung database host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, listener.getsockname()[1]


def test_the_hook_decides_while_the_database_is_down(tmp_path, caplog, monkeypatch, pictrs_server):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOG)
    monkeypatch.setattr(attribution_feature, "FOLLOW_SECONDS", 0.2)
    silent, silent_port = _silent_server()
    config = make_data_dir(tmp_path, pictrs={"on_unavailable": "accept"}, media={"on_unreadable": "accept"}, attribution={
        "lemmy": {"database_url": f"postgresql://verdict_node_ro:pw@127.0.0.1:{silent_port}/lemmy"},
        "mastodon": {"database_url": f"postgresql://verdict_node_ro:pw@127.0.0.1:{free_port()}/mastodon"},
        "pictrs": {"api_url": f"http://{pictrs_server.host}:{pictrs_server.port}", "api_key": pictrs_server.api_key},
        "connect_timeout_seconds": 1.5})
    banned = b"\xff\xd8\xff" + os.urandom(500)
    sha = hashlib.sha256(banned).hexdigest()
    pictrs_server.reset()
    pictrs_server.state.add(banned, alias="earlier-upload.jpeg")  # the same bytes, stored before the bank knew them
    with Store(config.database_path) as store:
        bad = BadLines()
        BankRecords(store).import_entries("test", read_entries(io.BytesIO(f"sha256 {sha}\n".encode()), "te", bad),
                                          fmt="te", source=None, replace=False, accept=lambda: True)

    async def main():
        async with running_node(config) as (node, base):
            await node.start()
            assert node.attribution is not None
            url = validate_url(config, base)
            # An attribution waiting on the hung database while uploads are decided.
            pending = asyncio.create_task(node.attribution.attribute(sha, source="pictrs", key="a.jpeg"))
            await asyncio.sleep(0.05)
            timings = []
            for _ in range(5):
                started = time.monotonic()
                status, body = await pictrs_post(url, banned)
                timings.append(time.monotonic() - started)
                assert status == 406, body
                status, _ = await pictrs_post(url, b"\xff\xd8\xff" + os.urandom(300))
                assert status == 200
            attribution = await pending
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "attribution: pictrs" not in caplog.text:
                await asyncio.sleep(0.1)
            return timings, attribution

    try:
        timings, attribution = asyncio.run(main())
    finally:
        silent.close()
    assert max(timings) < 1.0, f"the hook waited on attribution: {timings}"
    assert attribution.problems == (f"lemmy database postgresql://verdict_node_ro@127.0.0.1:{silent_port}/lemmy "
                                    "unreachable: no answer within 1.5 s",)
    # The follower attributed the hook's rejection in the background and said why it could not.
    followed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attribution: pictrs ")]
    assert len(followed) == 1, "five rejections of the same bytes: one lookup, one line"
    assert followed[0].startswith(f"attribution: pictrs {sha[:16]} (bank): unknown: lemmy database")
    assert "pw@" not in caplog.text


def test_the_mastodon_database_refusing_connections_is_said(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    port = free_port()

    async def main():
        db = ReadOnlyDatabase("mastodon", f"postgresql://ro:secret@127.0.0.1:{port}/mastodon_production",
                              connect_timeout=2)
        try:
            with pytest.raises(DatabaseUnavailable) as caught:
                await db.fetch("SELECT 1")
            return str(caught.value)
        finally:
            await db.close()

    problem = asyncio.run(main())
    assert problem.startswith(f"mastodon database postgresql://ro@127.0.0.1:{port}/mastodon_production unreachable: ")
    assert "Connection refused" in problem or "connection refused" in problem.lower()
    assert "secret" not in caplog.text
