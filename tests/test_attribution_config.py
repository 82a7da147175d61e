"""Attribution's place in a node: nothing configured leaves the node as it was (node.attribution None, no
background task); what is configured but cannot work is one line at start; the pict-rs API defaults to
the last pict-rs sweep's; a stale cache entry is looked up again when viewed."""
from __future__ import annotations

import asyncio
import time

import pytest

from node.attribution import last_pictrs_sweep_url, open_attributor
from node.attribution.records import AttributionRecords, cache_key
from node.attribution.service import AttributionService
from node.config import ConfigError
from node.hooks import Attribution
from node.serve import open_serving_node
from node.store import Store
from tests.node_helpers import make_data_dir


def test_nothing_configured_leaves_the_node_unchanged(tmp_path):
    config = make_data_dir(tmp_path)
    node = open_serving_node(config, load_model=False)
    try:
        assert node.attribution is None
        assert not any("attribution" in getattr(t, "__name__", "") for t in node.background)
    finally:
        asyncio.run(node.close())


def test_configured_attribution_is_installed_with_its_follower(tmp_path):
    config = make_data_dir(tmp_path, attribution={"lemmy": {"database_url": "postgresql://ro@127.0.0.1:1/lemmy"}})
    node = open_serving_node(config, load_model=False)
    try:
        assert isinstance(node.attribution, AttributionService)
        assert any(getattr(t, "__name__", "") == "attribution-follow" for t in node.background)
    finally:
        asyncio.run(node.close())


@pytest.mark.parametrize("section,message", [
    ({"pictrs": {"api_url": "http://pictrs:8080"}}, "attribution.pictrs.api_url: needs attribution.pictrs.api_key"),
    ({"lemmy": {"api_url": "http://lemmy:8536"}}, "attribution.lemmy.api_url: needs attribution.lemmy.api_jwt"),
    ({"lemmy": {"database_url": "postgresql://ro@db/lemmy", "database_password_file": "missing.pw"}},
     "attribution.lemmy.database_password_file: cannot read"),
])
def test_what_cannot_work_is_one_line(tmp_path, monkeypatch, section, message):
    monkeypatch.delenv("VERDICT_PICTRS_API_KEY", raising=False)
    config = make_data_dir(tmp_path, attribution=section)
    with Store(config.database_path) as store, pytest.raises(ConfigError, match=message):
        open_attributor(config, store)


def test_bad_urls_are_refused_when_node_yaml_is_read(tmp_path):
    with pytest.raises(ConfigError, match="attribution.lemmy.database_url: must be a postgresql:// URL"):
        make_data_dir(tmp_path, attribution={"lemmy": {"database_url": "mysql://x"}})


def test_the_pictrs_api_defaults_to_the_last_pictrs_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("VERDICT_PICTRS_API_KEY", "k" * 20)
    config = make_data_dir(tmp_path, attribution={"lemmy": {"database_url": "postgresql://ro@db/lemmy"}})
    with Store(config.database_path) as store:
        assert last_pictrs_sweep_url(store) is None
        assert open_attributor(config, store).pictrs is None
        with store.transaction() as conn:
            conn.execute("INSERT INTO sweep_runs (source, url, mode, action, started_at, updated_at) VALUES"
                         " ('pictrs://pictrs:8080', 'pictrs://pictrs:8080', 'all', 'quarantine', 0, 0)")
        assert last_pictrs_sweep_url(store) == "http://pictrs:8080"
        service = open_attributor(config, store)
        assert service.pictrs.base_url == "http://pictrs:8080" and service.pictrs.api_key == "k" * 20


def test_a_stale_cache_entry_is_looked_up_again(tmp_path):
    records = AttributionRecords(Store(tmp_path / "db.sqlite"))
    key = cache_key("a" * 64, "pictrs", "x.png", False)
    records.remember(key, "a" * 64, Attribution(looked_up_at=time.time() - 2 * 3600, found=True, summary="old"))
    fresh_service = AttributionService(records, cache_hours=3)
    stale_service = AttributionService(records, cache_hours=1)

    async def main():
        assert (await fresh_service.attribute("a" * 64, source="pictrs", key="x.png")).summary == "old"
        again = await stale_service.attribute("a" * 64, source="pictrs", key="x.png")
        assert again.summary != "old" and time.time() - again.looked_up_at < 5

    asyncio.run(main())
    assert records.cached(key).summary != "old", "the new lookup replaced the stale entry"
