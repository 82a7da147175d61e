"""Evidence and retention: sweeps' delete (scan --action delete, apply --action delete) and release refuse a
file that a confirmed positive's evidence record keeps, naming the record, unless --force; `evidence export`
hands on every field (hashes, storage, uploader and posts from the attribution, decision, review) as JSON
and CSV; `attribute` prints a readable report; `attribution purge` goes through Lemmy's admin API."""
from __future__ import annotations

import asyncio
import sqlite3
import csv
import hashlib
import io
import json
import os
import subprocess
import sys


from node.evidence import Positive
from node.sweeps.actions import apply_run, evidence_guard
from scanners.sources import open_source
from tests import lemmy_schema as schema
from tests.attribution_helpers import databases  # noqa: F401
from tests.images import photo_bytes
from tests.lemmy_api_server import ADMIN_JWT, lemmy_api
from tests.node_helpers import ROOT, make_data_dir, run
from tests.postgres_server import postgres_server  # noqa: F401
from tests.sweep_helpers import records, rows, sweep, with_node, write_tree
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

THRESHOLDS = {"csam": 0.5}


def _cli(config, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(config.data_dir / "node.yaml")],
                          env=env, capture_output=True, text=True, timeout=120, input=stdin)


def _positive(sha256: str, key: str, location: str | None = None, **extra) -> Positive:
    return Positive(sha256=sha256, source=extra.pop("source", "pictrs"), key=key, md5="9e" * 16, pixel_sha256="c" * 64,
                    pdq256="d" * 64, phash64="e" * 16, size=1234, media_type="image/png", location=location,
                    stored_at=1_700_000_000.0, decision={"outcome": "block", "reason": "csam 0.97 >= 0.5",
                                                         "origin": "inference",
                                                         "verdicts": [{"id": "https://n.example/v/1",
                                                                       "issuer": "https://n.example/actor"}]},
                    **extra)


def test_delete_and_release_refuse_what_evidence_keeps_unless_forced(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    bad = photo_bytes("hubble_deep_field", size=256)
    sha = hashlib.sha256(bad).hexdigest()
    write_tree(root, {"a/hubble": bad, "b/astronaut": photo_bytes("astronaut", size=256)})

    async def body(node):
        src = open_source(str(root), quarantine_dir=str(tmp_path / "q"))
        _, run_id = await sweep(node, src, str(root), action="dry-run")
        assert rows(node)["a/hubble"]["outcome"] == "block"
        record_id = node.evidence.confirm(_positive(sha, "a/hubble", source=str(root)), reviewer="alice")
        counts = await apply_run(records(node), run_id, src, action="delete", actor_id=node.actor_id,
                                 protect=evidence_guard(node.evidence))
        assert counts["protected"] == 1 and counts["deleted"] == 0 and (root / "a/hubble").exists()
        row = rows(node)["a/hubble"]
        assert row["action"] == "refused" and row["action_error"].startswith(f"evidence record {record_id} ")
        assert "--force" in row["action_error"]
        # A sweep that deletes refuses it too, by the same bytes under another key.
        other = tmp_path / "other"
        write_tree(other, {"copy": bad})
        stats, _ = await sweep(node, open_source(str(other)), str(other), action="delete")
        assert stats.deleted == 0 and stats.refused == 1 and (other / "copy").exists()
        forced, _ = await sweep(node, open_source(str(other)), str(other), action="delete", force=True)
        assert forced.deleted == 1 and not (other / "copy").exists()
        return run_id

    run_id = run(with_node(config, body))
    # The CLI: apply --action delete says which record keeps the file and exits 1; --force deletes it.
    refused = _cli(config, "apply", str(run_id), "--action", "delete")
    assert refused.returncode == 1, refused.stderr
    assert f"refused: a/hubble: evidence record 1 (sha256 {sha[:16]}…, confirmed by alice) keeps this file" in refused.stderr
    assert json.loads(refused.stdout)["protected"] == 1 and (root / "a/hubble").exists()
    forced = _cli(config, "apply", str(run_id), "--action", "delete", "--force")
    assert forced.returncode == 0 and json.loads(forced.stdout)["deleted"] == 1 and not (root / "a/hubble").exists()
    write_tree(root, {"a/hubble": bad})  # back, for the release check
    scanned = _cli(config, "scan", str(root), "--dry-run", "--json", "--quarantine-dir", str(tmp_path / "q"))
    run_id = json.loads(scanned.stdout.strip().splitlines()[-1])["run"]
    quarantined = _cli(config, "apply", str(run_id), "--action", "quarantine")
    assert quarantined.returncode == 0 and json.loads(quarantined.stdout)["quarantined"] == 1
    # Releasing a confirmed positive back into storage is refused the same way.
    release = _cli(config, "release", sha)
    assert release.returncode == 1 and "not released: evidence record 1" in release.stderr
    assert not (root / "a/hubble").exists()
    released = _cli(config, "release", sha, "--force")
    assert released.returncode == 0, released.stderr
    assert (root / "a/hubble").read_bytes() == bad


def test_evidence_export_attribute_report_and_purge_from_the_command_line(tmp_path, databases):  # noqa: F811
    async def main():
        async with lemmy_api("0.19") as api:
            config = make_data_dir(tmp_path / "data", attribution={
                "lemmy": {"database_url": databases["lemmy019"], "api_url": api.url, "api_jwt_file": "lemmy.jwt"}})
            (config.data_dir / "lemmy.jwt").write_text(ADMIN_JWT + "\n")
            from node.store import Store
            from node.evidence import EvidenceRecords

            with Store(config.database_path) as store:
                evidence = EvidenceRecords(store, 30)
                evidence.confirm(_positive("a" * 64, schema.ALICE_ALIAS, location="/srv/q/1"), reviewer="alice",
                                 note="reported to NCMEC")
                evidence.confirm(_positive("b" * 64, ""), reviewer="bob")

            report = await asyncio.to_thread(_cli, config, "attribute", "a" * 64, "--path", schema.ALICE_ALIAS,
                                             "--search-text")
            assert report.returncode == 0, report.stderr
            text = report.stdout
            assert "uploaded by alice (https://lemmy.example/u/alice, account created 2024-01-02)" in text
            assert f"post 101 'first use' (url) by alice" in text and f"{schema.LEMMY}/post/101" in text
            assert f"comment 201 on post 101 by bob" in text
            missing = await asyncio.to_thread(_cli, config, "attribute", "c" * 64, "--path", "nope.png")
            assert missing.returncode == 0 and "not found: Lemmy has no upload or post of alias nope.png" in missing.stdout
            bad = await asyncio.to_thread(_cli, config, "attribute", "xyz")
            assert bad.returncode == 2 and "not a sha256" in bad.stderr

            out = config.data_dir / "evidence.json"
            exported = await asyncio.to_thread(_cli, config, "evidence", "export", "--format", "json", "--output",
                                               str(out), "--attribute")
            assert exported.returncode == 0, exported.stderr
            assert oct(out.stat().st_mode & 0o777) == "0o600"
            first, second = json.loads(out.read_text())
            assert first["sha256"] == "a" * 64 and first["md5"] == "9e" * 16 and first["pdq256"] == "d" * 64
            assert first["phash64"] == "e" * 16 and first["pixel_sha256"] == "c" * 64
            assert first["size"] == 1234 and first["media_type"] == "image/png" and first["location"] == "/srv/q/1"
            assert first["stored_at_utc"] == "2023-11-14T22:13:20Z" and first["key"] == schema.ALICE_ALIAS
            assert first["outcome"] == "block" and first["verdicts"][0]["issuer"] == "https://n.example/actor"
            assert first["reviewer"] == "alice" and first["review_note"] == "reported to NCMEC"
            assert [u["name"] for u in first["uploaders"]] == ["alice"]
            assert first["public_links"] == [f"{schema.LEMMY}/post/101", f"{schema.LEMMY}/post/102"]
            assert first["attribution_summary"].startswith("uploaded by alice") and first["attributed_at"]
            assert second["key"] == "" and second["uploaders"] == [] and second["reviewer"] == "bob"

            as_csv = await asyncio.to_thread(_cli, config, "evidence", "export", "--format", "csv")
            table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
            assert len(table) == 2 and table[0]["md5"] == "9e" * 16 and table[0]["reviewer"] == "alice"
            assert json.loads(table[0]["uploaders"])[0]["actor_url"] == f"{schema.LEMMY}/u/alice"
            assert json.loads(table[0]["decision"])["reason"] == "csam 0.97 >= 0.5"
            listed = await asyncio.to_thread(_cli, config, "evidence", "list")
            assert listed.stdout.count("\n") == 2 and "uploaded by alice" in listed.stdout

            purged = await asyncio.to_thread(_cli, config, "attribution", "purge", "post", "101", "--reason",
                                             "CSAM", "--actor", "alice")
            assert purged.returncode == 0 and purged.stdout.strip() == f"lemmy {api.url} did purge post 101 (Lemmy 0.19)"
            assert api.calls[-1]["body"] == {"post_id": 101, "reason": "CSAM"}
            refused = await asyncio.to_thread(_cli, config, "attribution", "purge", "person", "99", "--reason", "x")
            assert refused.returncode == 1 and "HTTP 404 couldnt_find_person" in refused.stderr
            image = await asyncio.to_thread(_cli, config, "attribution", "purge", "image", "nope.png", "--reason", "x")
            assert image.returncode == 1 and "Lemmy 0.19 deletes an image by the token" in image.stderr
            not_id = await asyncio.to_thread(_cli, config, "attribution", "purge", "post", "abc", "--reason", "x")
            assert not_id.returncode == 2 and "named by Lemmy's id" in not_id.stderr
            actions = await asyncio.to_thread(_cli, config, "attribution", "actions")
            assert "alice: purge post 101 (CSAM): done" in actions.stdout and "NOT DONE" in actions.stdout
            printed = "".join(r.stdout + r.stderr for r in (refused, image, not_id, actions))
            with sqlite3.connect(config.database_path) as db:
                recorded = str(db.execute("SELECT * FROM attribution_actions").fetchall())
            assert ADMIN_JWT not in printed and ADMIN_JWT not in recorded, "the token is never printed nor recorded"

    asyncio.run(main())
