"""Sweeps of a local directory on a real node (tiny CLIP, real store, real signatures): quarantine, known
items, content under another key, dry run + apply, delete, release with override and retraction, peers'
verdicts, report, the hostile corpus."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from node.sweeps.actions import apply_run, release
from node.cli import main as cli_main
from node.sweeps.report import report_rows
from node.sweeps.records import source_identity
from scanners.sources import open_source
from tests.images import photo_bytes
from tests.node_helpers import make_data_dir, run
from tests.sweep_helpers import (hostile_items, inferred, own_verdicts, photo_corpus, records, rows, sweep, with_node,
                                 write_tree)
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

THRESHOLDS = {"csam": 0.5}


def setup_tree(tmp_path: Path, hostile: bool = True) -> tuple[Path, dict[str, bytes], dict[str, str]]:
    root = tmp_path / "files"
    items = photo_corpus()
    expected_media = {}
    if hostile:
        for key, (data, outcome) in hostile_items().items():
            items[key] = data
            expected_media[key] = outcome
    write_tree(root, items)
    return root, items, expected_media


def blocked_by_own_verdicts(node) -> set[str]:
    """sha256s whose own signed verdict scores csam >= our threshold (what must be acted on)."""
    return {v["sha256"] for v in own_verdicts(node) if json.loads(v["scores"]).get("csam", 0) >= THRESHOLDS["csam"]}


def test_local_sweep_quarantines_positives_skips_known_and_reuses_content(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root, items, media = setup_tree(tmp_path)
    # The same bytes as a photo under another key: decided from the verdict store, not classified again.
    items["copies/again-coffee"] = items["02/00/photo-coffee"]
    items["copies/again-astronaut"] = items["00/00/photo-astronaut"]
    write_tree(root, items)
    quarantine = tmp_path / "quarantine"

    async def body(node):
        source = open_source(str(root), quarantine_dir=str(quarantine))
        stats, run_id = await sweep(node, source, str(root), workers=3)
        recorded = rows(node)
        assert set(recorded) == set(items)  # every item decided, exactly one row each
        assert stats.listed == len(items) and stats.known == 0
        distinct_images = {items[k] for k in items if k not in media or media[k] == "image"}
        assert inferred(node) == len(own_verdicts(node)) <= len(distinct_images)
        assert stats.inferred == inferred(node) and stats.cache >= 2
        blocked = blocked_by_own_verdicts(node)
        positives = {k for k, r in recorded.items() if r["outcome"] == "block"}
        assert positives and positives != set(items)
        assert positives == {k for k, r in recorded.items() if r["sha256"] in blocked}
        assert {"copies/again-coffee", "02/00/photo-coffee"} <= positives or not {"02/00/photo-coffee"} & positives
        for key in positives:
            r = recorded[key]
            assert r["action"] == "quarantined" and not (root / key).exists()
            assert Path(r["location"]).read_bytes() == items[key]
            sidecar = json.loads(Path(r["location"] + ".json").read_text())
            assert sidecar["original"]["key"] == key and sidecar["verdict_node"]["verdict_ids"] == r["verdict_ids"]
            assert oct(os.stat(quarantine).st_mode & 0o777) == "0o700"
        for key in set(items) - positives:
            assert (root / key).read_bytes() == items[key]  # allowed, unreadable and video: left alone
        for key, outcome in media.items():
            if outcome != "image":
                assert recorded[key]["outcome"] == outcome and recorded[key]["action"] == "none"
        assert stats.positives == stats.quarantined == len(positives)
        # Our verdicts from the sweep are published like any other: federation's collector (run by `serve`)
        # appends each signed verdict to the outbox log.
        from node.federation.service import Federation

        assert Federation(node).outbox.collect_own_verdicts() == len(own_verdicts(node))
        logged = {r["activity_id"]: r["document"] for r in node.store.db.query("SELECT activity_id, document FROM outbox")}
        assert set(logged) == {v["verdict_id"] + "/create" for v in own_verdicts(node)}
        assert all('"proof"' in document for document in logged.values())

        # Second sweep: everything is known by its stat; nothing read, nothing classified.
        before = inferred(node)
        again, _ = await sweep(node, open_source(str(root), quarantine_dir=str(quarantine)), str(root))
        assert again.listed == len(items) - len(positives) and again.known == again.listed and again.decided == 0
        assert inferred(node) == before

        # A changed file is decided again (and only it).
        changed = next(k for k in items if k not in positives and k not in media)
        (root / changed).write_bytes(photo_bytes("immunohistochemistry", size=200))
        third, _ = await sweep(node, open_source(str(root), quarantine_dir=str(quarantine)), str(root))
        assert third.decided == 1 and third.known == third.listed - 1
        assert rows(node)[changed]["outcome"] == "allow"
    run(with_node(config, body))


def test_dry_run_then_apply_without_classifying_again_and_delete(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root, items, _ = setup_tree(tmp_path, hostile=False)
    quarantine = tmp_path / "q"

    async def body(node):
        src = open_source(str(root), quarantine_dir=str(quarantine))
        stats, run_id = await sweep(node, src, str(root), action="dry-run")
        positives = {k for k, r in rows(node).items() if r["outcome"] == "block"}
        assert positives and stats.dry_run == len(positives)
        assert all((root / k).exists() for k in items)  # nothing touched
        assert {rows(node)[k]["action"] for k in positives} == {"dry-run"}
        # A dry run's positives are not "known" to a dry run again...
        again, _ = await sweep(node, src, str(root), action="dry-run")
        assert again.decided == 0
        classified = inferred(node)
        counts = await apply_run(records(node), run_id, src, actor_id=node.actor_id)
        assert counts["positives"] == counts["quarantined"] == len(positives) and counts["changed"] == 0
        assert inferred(node) == classified
        assert not any((root / k).exists() for k in positives)
        assert all(rows(node)[k]["action"] == "quarantined" for k in positives)
        # Applying again finds nothing left to do.
        assert (await apply_run(records(node), run_id, src, actor_id=node.actor_id))["positives"] == 0

        # Delete mode on a fresh copy of the tree: positives are removed, from the verdict store (no inference).
        other = tmp_path / "other"
        write_tree(other, items)
        deleted, _ = await sweep(node, open_source(str(other)), str(other), action="delete")
        assert deleted.deleted == len(positives) and deleted.inferred == 0
        assert {p.relative_to(other).as_posix() for p in other.rglob("*") if p.is_file()} == set(items) - positives
    run(with_node(config, body))


def test_apply_skips_items_changed_since_the_dry_run(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    write_tree(root, {"a": photo_bytes("hubble_deep_field", size=256)})

    async def body(node):
        src = open_source(str(root), quarantine_dir=str(tmp_path / "q"))
        assert records(node).expected_items(source_identity(str(root))) is None  # nothing known: no ETA yet
        _, run_id = await sweep(node, src, str(root), action="dry-run")
        assert records(node).expected_items(source_identity(str(root))) == 1  # the finished run listed one
        (root / "a").write_bytes(photo_bytes("astronaut", size=256))
        counts = await apply_run(records(node), run_id, src, actor_id=node.actor_id)
        assert counts == {"positives": 1, "quarantined": 0, "deleted": 0, "gone": 0, "changed": 1, "failed": 0,
                          "protected": 0}
        assert (root / "a").exists()
    run(with_node(config, body))


def test_release_restores_overrides_and_retracts_own_verdict(tmp_path, tiny_clip_spec):
    from node.federation.outbox import retract

    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    bad = photo_bytes("hubble_deep_field", size=256)
    write_tree(root, {"x/hubble": bad, "x/astronaut": photo_bytes("astronaut", size=256)})
    quarantine = tmp_path / "q"

    async def body(node):
        src = open_source(str(root), quarantine_dir=str(quarantine))
        stats, _ = await sweep(node, src, str(root))
        assert stats.quarantined == 1 and not (root / "x/hubble").exists()
        record = rows(node)["x/hubble"]
        verdict_id = record["verdict_ids"][0]
        outcome = await release(records(node), record["location"], src, reason="reviewed: a galaxy",
                                retract=lambda v, why: retract(node.store, node.config, node.ed25519_key, v, why))
        assert (root / "x/hubble").read_bytes() == bad
        assert outcome["retracted"] and not outcome["problems"]
        held = node.store.db.query("SELECT retracted_at, retract_reason FROM verdicts WHERE verdict_id = ?", [verdict_id])
        assert [r["retract_reason"] for r in held] == ["reviewed: a galaxy"]
        deletes = list(node.store.db.query("SELECT type, object_id FROM outbox WHERE type = 'Delete'"))
        assert [d["object_id"] for d in deletes] == [verdict_id]  # withdrawn at every peer
        assert rows(node)["x/hubble"]["action"] == "released" and rows(node)["x/hubble"]["outcome"] == "allow"
        # Not quarantined again: neither where it was, nor the same bytes under another key (no inference).
        before = inferred(node)
        (root / "y").mkdir()
        (root / "y/copy").write_bytes(bad)
        again, _ = await sweep(node, open_source(str(root), quarantine_dir=str(quarantine)), str(root))
        assert again.quarantined == 0 and again.overridden == 1 and inferred(node) == before
        assert (root / "x/hubble").exists() and (root / "y/copy").exists()
        assert rows(node)["y/copy"]["origin"] == "override"
        # The pict-rs hook agrees: the released image is accepted, not classified and published again.
        published = len(own_verdicts(node))
        hook = await node.pipeline.check(bad, source="pictrs")
        assert (hook.decision, hook.outcome, hook.inferred) == ("accept", "allow", False)
        assert inferred(node) == before and len(own_verdicts(node)) == published
    run(with_node(config, body))


def test_peer_verdicts_decide_without_inference_and_report_names_the_peer(tmp_path, tiny_clip_spec, capsys):
    from protocol.verdict import Verdict, new_verdict_id, sign_verdict, utc_timestamp
    from scanners.fingerprint import fingerprint

    peer = "https://peer.example/actor"
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS,
                           peers=[{"actor": peer, "trust": "full"}])
    root = tmp_path / "files"
    flagged = photo_bytes("chelsea", size=256)  # our own model allows it; the peer says otherwise
    write_tree(root, {"a/cat": flagged, "a/astronaut": photo_bytes("astronaut", size=256)})
    peer_key = ed25519.Ed25519PrivateKey.generate()

    async def body(node):
        verdict = Verdict(id=new_verdict_id(peer), issuer=peer, fingerprint=fingerprint(flagged),
                          scores={"csam": 0.93, "nsfw": 0.99, "underage": 0.93}, label="csam", model=node.model,
                          published=utc_timestamp())
        node.add_verdict(verdict, sign_verdict(verdict, peer_key, f"{peer}#ed25519-key"), own=False)
        stats, _ = await sweep(node, open_source(str(root), quarantine_dir=str(tmp_path / "q")), str(root))
        assert stats.peer == 1 and stats.inferred == 1 and stats.quarantined == 1
        assert rows(node)["a/cat"]["origin"] == "peer"
        return verdict.id
    verdict_id = run(with_node(config, body))

    config_arg = ["--config", str(config.data_dir / "node.yaml")]
    assert cli_main(["report", "--format", "json", *config_arg]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["verdict_from"], r["verdict_ids"]) for r in report] == [("a/cat", f"peer {peer}", [verdict_id])]
    assert report[0]["scores"]["csam"] == 0.93 and report[0]["sha256"] and report[0]["phash64"]
    assert cli_main(["report", "--format", "csv", "--since", "1h", *config_arg]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["key"], r["verdict_from"], r["action"]) for r in table] == [("a/cat", f"peer {peer}", "quarantined")]
    assert json.loads(table[0]["scores"]) == report[0]["scores"]
    assert cli_main(["report", "--format", "csv", "--since", "2999-01-01T00:00:00Z", *config_arg]) == 0
    assert capsys.readouterr().out.strip().count("\n") == 0  # header only


def test_report_names_own_inference(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    write_tree(root, {"h": photo_bytes("hubble_deep_field", size=256), "copy-h": photo_bytes("hubble_deep_field", size=256)})

    async def body(node):
        await sweep(node, open_source(str(root), quarantine_dir=str(tmp_path / "q")), str(root), workers=1)
        return {r["key"]: r for r in report_rows(records(node))}
    report = run(with_node(config, body))
    assert report["copy-h"]["verdict_from"] == "own inference"  # listed first ('c' < 'h'): classified
    assert report["h"]["verdict_from"] == "own verdict"         # same bytes: our earlier verdict


def test_full_hostile_corpus_never_stops_a_sweep_and_is_never_csam(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds={"csam": 0.0})  # block every image
    root = tmp_path / "files"
    corpus = hostile_items(None)
    write_tree(root, {k: v[0] for k, v in corpus.items()})
    (root / "zz-last-photo").write_bytes(photo_bytes("astronaut", size=128))

    async def body(node):
        stats, _ = await sweep(node, open_source(str(root), quarantine_dir=str(tmp_path / "q")), str(root),
                               workers=2, on_video="leave", on_unreadable="leave")
        recorded = rows(node)
        assert set(recorded) == set(corpus) | {"zz-last-photo"}
        for key, (_, outcome) in corpus.items():
            expected = "block" if outcome == "image" else outcome  # threshold 0: every readable image blocks
            assert recorded[key]["outcome"] == expected, key
            if outcome != "image":
                assert (root / key).exists() and recorded[key]["action"] == "none"
        assert recorded["zz-last-photo"]["outcome"] == "block" and stats.errors == 0
    run(with_node(config, body))


def test_unreadable_items_are_acted_on_only_when_configured(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    write_tree(root, {k: v[0] for k, v in hostile_items(("random_bytes", "mp4_header")).items()})

    async def body(node):
        stats, _ = await sweep(node, open_source(str(root), quarantine_dir=str(tmp_path / "q")), str(root),
                               on_unreadable="quarantine")
        assert (stats.unreadable, stats.video, stats.quarantined, stats.positives) == (1, 1, 1, 0)
        assert not (root / "hostile/random_bytes").exists() and (root / "hostile/mp4_header").exists()
    run(with_node(config, body))


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise():
    from node.sweeps.engine import Progress, SweepStats

    stats = SweepStats(listed=50, known=40, inferred=3, positives=1)
    tty = io.StringIO()
    bar = Progress(tty, tty=True, expected=200)
    bar.started -= 10  # 10 s in: 5 items/s, 150 left -> 30 s
    bar.update(stats, force=True)
    bar.close()
    assert tty.getvalue().startswith("\r[#####...............] 50/200 items 5/s ETA 0:00:30")
    log = io.StringIO()
    lines = Progress(log, tty=False, interval=3600)
    lines.update(stats, force=True)
    lines.update(stats)  # within the interval: nothing
    assert log.getvalue().count("\n") == 1 and "scanned 50, known 40" in log.getvalue() and "\r" not in log.getvalue()


def test_cli_scan_summary_and_bad_arguments(tmp_path, tiny_clip_spec, capsys):
    config = make_data_dir(tmp_path / "data", model="none")
    root = tmp_path / "files"
    write_tree(root, {"a": photo_bytes("astronaut", size=64)})
    args = ["--config", str(config.data_dir / "node.yaml")]
    assert cli_main(["scan", str(root), "--since", "soon", *args]) == 2
    assert "not a duration" in capsys.readouterr().err
    # No classifier: the image stays undecided (tried again next time), never acted on.
    assert cli_main(["scan", str(root), "--json", "--quarantine-dir", str(tmp_path / "q"), *args]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["listed"], summary["unknown"], summary["quarantined"]) == (1, 1, 0)
    assert "no classifier" in captured.err and (root / "a").exists()
    assert cli_main(["apply", "99", *args]) == 2
    assert cli_main(["release", "nothing-like-this", *args]) == 2


def test_since_and_daemon_passes_see_only_recent_items(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    write_tree(root, {"old": photo_bytes("chelsea", size=128), "new": photo_bytes("astronaut", size=128)})
    day_ago = os.stat(root / "old").st_mtime - 86400
    os.utime(root / "old", (day_ago, day_ago))

    async def body(node):
        src = lambda: open_source(str(root), quarantine_dir=str(tmp_path / "q"))  # noqa: E731
        recent, _ = await sweep(node, src(), str(root), mode="since", since_seconds=3600)
        assert recent.listed == 1 and set(rows(node)) == {"new"}
        # A daemon's first pass (no cursor yet) with a look-back, then incremental passes from its cursor.
        first, _ = await sweep(node, src(), str(root), mode="daemon", since_seconds=3600, cycles=2, interval=0.01)
        assert first.listed == 2 and first.known == 2 and first.decided == 0  # "new" in each pass, known
        (root / "later").write_bytes(photo_bytes("immunohistochemistry", size=128))
        again, _ = await sweep(node, src(), str(root), mode="daemon", cycles=1)
        assert again.listed == 2 and again.decided == 1  # "old" is below the cursor's bound: not listed
        assert set(rows(node)) == {"new", "later"}
        everything, _ = await sweep(node, src(), str(root))
        assert everything.listed == 3 and everything.decided == 1 and set(rows(node)) == {"new", "later", "old"}
    run(with_node(config, body))


def test_daemon_pass_that_fails_as_a_whole_is_tried_again(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    write_tree(root, {"a": photo_bytes("astronaut", size=64)})

    async def body(node):
        src = open_source(str(root), quarantine_dir=str(tmp_path / "q"))
        real_scan, calls = src._scan_dir, []

        def scan_dir(rel):  # the storage root cannot be listed during the first pass (e.g. an NFS outage)
            calls.append(rel)
            if len(calls) == 1:
                raise PermissionError(13, "Permission denied")
            return real_scan(rel)
        src._scan_dir = scan_dir
        stats, _ = await sweep(node, src, str(root), mode="daemon", cycles=2, interval=0.01)
        assert stats.listing_errors == 1 and stats.decided == 1 and set(rows(node)) == {"a"}
    run(with_node(config, body))


def test_an_item_listed_twice_in_one_pass_is_decided_and_quarantined_once(tmp_path, tiny_clip_spec):
    from scanners.sources.local import LocalSource

    class RepeatingListing(LocalSource):
        """At-least-once listing, as a page boundary of a remote kind gives: every batch comes twice."""

        async def _list_batches(self, since, after, size):
            async for batch in super()._list_batches(since, after, size):
                yield batch
                yield list(batch)

    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec, thresholds=THRESHOLDS)
    root = tmp_path / "files"
    bad = photo_bytes("hubble_deep_field", size=256)
    write_tree(root, {"bad": bad, "good": photo_bytes("astronaut", size=256)})

    async def body(node):
        stats, _ = await sweep(node, RepeatingListing(root, quarantine_dir=tmp_path / "q"), str(root), workers=4)
        assert stats.listed == 4 and stats.decided == 2 and stats.quarantined == 1 and stats.action_failures == 0
        record = rows(node)["bad"]
        assert record["action"] == "quarantined" and Path(record["location"]).read_bytes() == bad
    run(with_node(config, body))
