"""Evidence records (node.evidence): what a confirmation stores, that a second one renews rather than
duplicates, and that retention protects a file by its bytes or by its quarantine location, then lets go."""
from __future__ import annotations

import csv
import io

from node.evidence import DAY, EvidenceRecords, Positive, protection_reason, render_export
from node.store import Store


def _positive(**over) -> Positive:
    values = dict(sha256="a" * 64, source="file:///srv/media", key="ab/cd.png", md5="b" * 32,
                  pixel_sha256="c" * 64, pdq256="d" * 64, phash64="e" * 16, size=1234, media_type="image/png",
                  location="/srv/quarantine/ab/cd.png", stored_at=1000.0,
                  decision={"outcome": "block", "reason": "csam 0.97 >= 0.8", "origin": "inference"})
    values.update(over)
    return Positive(**values)


def test_confirm_stores_everything_and_renews_in_place(tmp_path):
    records = EvidenceRecords(Store(tmp_path / "db.sqlite"), retain_days=30)
    first = records.confirm(_positive(), reviewer="alice", note="clear case", now=10_000.0)
    record = records.get(first)
    assert record["md5"] == "b" * 32 and record["size"] == 1234 and record["decision"]["origin"] == "inference"
    assert record["reviewer"] == "alice" and record["retain_until"] == 10_000.0 + 30 * DAY
    again = records.confirm(_positive(md5=None), reviewer="bob", now=20_000.0)
    assert again == first and records.count() == 1
    record = records.get(first)
    assert record["md5"] == "b" * 32, "a later confirmation without the MD5 must not erase it"
    assert record["reviewer"] == "bob" and record["created_at"] == 10_000.0
    records.attach_attribution(first, {"uploader": {"name": "mallory"}}, looked_up_at=20_001.0)
    assert records.for_sha256("a" * 64)[0]["attribution"] == {"uploader": {"name": "mallory"}}


def test_retention_protects_by_bytes_and_by_location_until_it_ends(tmp_path):
    records = EvidenceRecords(Store(tmp_path / "db.sqlite"), retain_days=1)
    records.confirm(_positive(), reviewer="alice", now=0.0)
    assert records.protecting("a" * 64, now=DAY - 1)["reviewer"] == "alice"
    assert records.protecting("f" * 64, location="/srv/quarantine/ab/cd.png", now=10.0) is not None
    assert records.protecting("f" * 64, location="/srv/quarantine/other.png", now=10.0) is None
    assert records.protecting(None, now=10.0) is None
    assert records.protecting("a" * 64, now=DAY + 1) is None, "retention ends"
    assert "--force" in protection_reason(records.get(1))


def test_csv_export_keeps_text_from_outside_as_text(tmp_path):
    """A user name or note that starts like a formula must not run when the export is opened in a spreadsheet."""
    records = EvidenceRecords(Store(tmp_path / "db.sqlite"), retain_days=1)
    record_id = records.confirm(_positive(), reviewer="alice", note='=HYPERLINK("https://evil.example")', now=0.0)
    records.attach_attribution(record_id, {"summary": "@mallory uploaded it", "lemmy": {"uploads": []}}, 1.0)
    (row,) = list(csv.DictReader(io.StringIO(render_export(records.every(), "csv"))))
    assert row["review_note"] == '\'=HYPERLINK("https://evil.example")'
    assert row["attribution_summary"] == "'@mallory uploaded it"
    assert row["sha256"] == "a" * 64 and row["size"] == "1234"
