"""Hash banks: importing lists of known-bad hashes (python-threatexchange's local-file format and CSV) as the
hostile input they are, and what a match does in the pipeline: it blocks before inference, names the bank
and the matched entry in the answer, the decision row and /metrics, and never becomes a verdict."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tracemalloc

import pytest

from node.banks import Banks
from node.banks.formats import MAX_LINE, BadLines, read_entries
from node.banks.records import BankRecords, ImportRefused
from node.runtime import Node
from node.serve import open_serving_node
from node.store import Store
from scanners.fingerprint import fingerprint
from scanners.media import decode
from tests.images import encode, photo_bytes, photo_image
from tests.node_helpers import ROOT, make_data_dir, metric_value, pictrs_post, run, running_node
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

ALLOWED = "astronaut"          # the tiny test CLIP lets it through
BLOCKED = "hubble_deep_field"  # ... and blocks this one


def _fp(data: bytes):
    return fingerprint(data, decode(data))


def _cli(config, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(config.data_dir / "node.yaml")],
                          env=env, capture_output=True, text=True, timeout=120)


def _import(store: Store, name: str, text: str | bytes, fmt: str = "te", *, replace: bool = False,
            skip_bad: bool = False) -> tuple[dict[str, int], BadLines]:
    bad = BadLines()
    data = text.encode() if isinstance(text, str) else text
    counts = BankRecords(store).import_entries(name, read_entries(io.BytesIO(data), fmt, bad), fmt=fmt, source=None,
                                               replace=replace, accept=lambda: bad.count == 0 or skip_bad)
    return counts.counts, bad


def _bank_rows(store: Store) -> int:
    return store.conn.execute("SELECT COUNT(*) FROM bank_entries").fetchone()[0]


# -- formats and imports -------------------------------------------------------------------------------

def test_both_formats_import_every_kind_and_count_duplicates(tmp_path):
    pdq, md5, sha, phash = "3f" * 32, "9e" * 16, "ab" * 32, "0123456789abcdef"
    with Store(tmp_path / "db.sqlite") as store:
        te = f"# a comment\npdq {pdq}\nmd5 {md5.upper()}\n\nsha256\t{sha}\nphash {phash}\nvideo_md5 {md5}\n"
        counts, bad = _import(store, "ncmec", te)
        assert bad.count == 0
        assert counts == {"pdq": 1, "md5": 1, "sha256": 1, "phash": 1}   # video_md5 is the same md5: one entry
        csv_text = ("\ufeffSignal_Type, signal ,note,extra\n"
                    f"pdq,{pdq},\"known, reviewed\",x\nmd5,{md5}\n")
        counts, bad = _import(store, "stopncii", csv_text, "csv")
        assert bad.count == 0 and counts == {"pdq": 1, "md5": 1}
        notes = {r[0] for r in store.conn.execute("SELECT note FROM bank_entries")}
        assert "known, reviewed" in notes
        banks = {b.name: b.counts for b in BankRecords(store).banks()}
        assert banks == {"ncmec": {"pdq": 1, "md5": 1, "sha256": 1, "phash": 1}, "stopncii": {"pdq": 1, "md5": 1}}


@pytest.mark.parametrize("line, problem", [
    (b"pdq " + b"g" * 64, "pdq must be 64 hex digits"),
    (b"pdq " + b"a" * 63, "pdq must be 64 hex digits"),
    (b"md5 " + b"a" * 33, "md5 must be 32 hex digits"),
    (b"sha1 " + b"a" * 40, "unknown signal type"),
    (b"pdq", "expected '<signal_type> <hash>', got 1 fields"),
    (b"pdq " + b"a" * 64 + b" extra", "got 3 fields"),
    (b"pdq \x00" + b"a" * 63, "NUL byte"),
    (b"pdq \xff\xfe" + b"a" * 62, "not UTF-8"),
    (b"pdq " + b"a" * (MAX_LINE + 10), f"longer than {MAX_LINE} bytes"),
])
def test_each_bad_line_is_reported_by_number_and_nothing_is_imported(tmp_path, line, problem):
    good = ("pdq " + "ab" * 32 + "\n").encode()
    with Store(tmp_path / "db.sqlite") as store:
        with pytest.raises(ImportRefused):
            _import(store, "list", good + line + b"\n" + good.replace(b"ab", b"cd"))
        assert BankRecords(store).banks() == [] and _bank_rows(store) == 0
    bad = BadLines()
    entries = list(read_entries(io.BytesIO(good + line + b"\n" + good.replace(b"ab", b"cd")), "te", bad))
    assert len(entries) == 2 and bad.count == 1
    (number, text), = bad.first
    assert number == 2 and problem in text, text


def test_csv_problems_are_lines_too_and_skip_bad_imports_the_rest(tmp_path):
    text = ("signal_type,signal,note\n"
            f"pdq,{'ab' * 32},fine\n"
            f"pdq,\"{'cd' * 32}\n"                 # an unterminated quote
            "md5\n"                                # too few columns
            f"md5,{'12' * 16},{'x' * 600}\n"       # a note far too long
            f"md5,{'34' * 16},\"bell\x07\"\n")     # a control character in the note
    with Store(tmp_path / "db.sqlite") as store:
        with pytest.raises(ImportRefused):
            _import(store, "list", text, "csv")
        counts, bad = _import(store, "list", text, "csv", skip_bad=True)
        assert counts == {"pdq": 1}
        assert [number for number, _ in bad.first] == [3, 4, 5, 6]
    bad = BadLines()
    assert list(read_entries(io.BytesIO(b"hash,kind\nab,pdq\n"), "csv", bad)) == []
    assert bad.first == [(1, "the header must name the columns signal_type and signal (and optionally note)")]


def test_a_huge_line_is_skipped_without_being_held_in_memory():
    """A 64 MB line without a newline: reported as too long, read through in bounded pieces."""
    huge = b"pdq " + b"a" * (64 << 20)
    stream = io.BytesIO(huge + b"\nmd5 " + b"b" * 32 + b"\n")
    bad = BadLines()
    tracemalloc.start()
    entries = list(read_entries(stream, "te", bad))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [e.kind for e in entries] == ["md5"] and bad.first == [(1, f"longer than {MAX_LINE} bytes")]
    assert peak < 4 << 20   # a few pieces of 64 KB, never the line


def test_many_bad_lines_are_counted_past_the_ones_described():
    bad = BadLines()
    list(read_entries(io.BytesIO(b"nonsense\n" * 5000), "te", bad))
    assert bad.count == 5000 and len(bad.first) == 100 and bad.describe()[-1] == "... and 4,900 more bad lines"


def test_replace_swaps_atomically_and_a_refused_replace_keeps_the_old_list(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        _import(store, "list", f"pdq {'aa' * 32}\nmd5 {'bb' * 16}\n")
        with pytest.raises(ImportRefused, match="exists"):
            _import(store, "list", f"pdq {'cc' * 32}\n")
        with pytest.raises(ImportRefused):
            _import(store, "list", f"pdq {'cc' * 32}\nbroken\n", replace=True)
        records = BankRecords(store)
        assert records.find_exact({"md5": bytes.fromhex("bb" * 16)}) is not None   # still the old list
        counts, _ = _import(store, "list", f"pdq {'cc' * 32}\npdq {'cc' * 32}\n", replace=True)
        assert counts == {"pdq": 1}
        assert records.find_exact({"md5": bytes.fromhex("bb" * 16)}) is None
        (bank,) = records.banks()
        assert bank.counts == {"pdq": 1} and _bank_rows(store) == 1
        assert records.remove("list") and not records.remove("list")
        assert records.banks() == [] and _bank_rows(store) == 0
        with pytest.raises(ImportRefused, match="bank name"):
            _import(store, "../etc", f"pdq {'cc' * 32}\n")


def _count_transactions(monkeypatch, store: Store, before_each) -> None:
    """Call ``before_each(n)`` before the n-th transaction ``store`` begins (when it holds no lock)."""
    original, calls = store.transaction, [0]

    def transaction():
        calls[0] += 1
        before_each(calls[0])
        return original()
    monkeypatch.setattr(store, "transaction", transaction)


def test_a_long_import_leaves_the_database_to_other_writers(tmp_path, monkeypatch):
    """A serving node keeps writing while `banks import` reads a big file: staging locks nothing of the node's
    database, and the copy takes the write lock one chunk at a time."""
    monkeypatch.setattr("node.banks.records.CHUNK", 100)
    path = tmp_path / "db.sqlite"
    lines = "".join(f"pdq {i:064x}\n" for i in range(1000)).encode()
    with Store(path) as store, Store(path) as server:
        server.conn.execute("PRAGMA busy_timeout = 0")   # a writer that cannot wait at all
        writes = []

        def write_now(*_: object) -> bool:
            server.conn.execute("INSERT INTO federation_state (key, value) VALUES (?, 'x')", (f"probe{len(writes)}",))
            writes.append(1)
            return True

        _count_transactions(monkeypatch, store, write_now)
        bad = BadLines()
        counts = BankRecords(store).import_entries("big", read_entries(io.BytesIO(lines), "te", bad), fmt="te",
                                                   source=None, replace=False, accept=write_now)
        assert counts.counts == {"pdq": 1000}
        assert len(writes) >= 1 + 10   # after staging (accept), and between every two chunks of the copy


def test_a_killed_import_stays_invisible_and_the_next_command_deletes_it(tmp_path, monkeypatch):
    path = tmp_path / "db.sqlite"
    with Store(path) as store:
        _import(store, "list", f"pdq {'aa' * 32}\n")
        monkeypatch.setattr("node.banks.records.CHUNK", 1)

        def interrupt_the_second_chunk(n: int) -> None:
            if n == 3:   # 1: the importing bank, 2: the first chunk, 3: the second
                raise KeyboardInterrupt
        _count_transactions(monkeypatch, store, interrupt_the_second_chunk)
        with pytest.raises(KeyboardInterrupt):
            _import(store, "list", f"pdq {'bb' * 32}\nmd5 {'cc' * 16}\n", replace=True)
        monkeypatch.undo()
        records = BankRecords(store)
        assert [b.counts for b in records.banks()] == [{"pdq": 1}]    # the old list, untouched
        assert records.find_exact({"md5": bytes.fromhex("cc" * 16)}) is None
        # What the interrupted copy wrote is invisible (a 'deleting' bank), and so is what a process killed
        # outright leaves (an 'importing' bank whose process is gone): the next command deletes both.
        store.conn.execute("INSERT INTO banks (name, state, importer_pid, format, imported_at, first_entry, "
                           "last_entry) VALUES (NULL, 'importing', 999999999, 'te', 0, 100, 101)")
        dead = store.conn.execute("SELECT MAX(id) FROM banks").fetchone()[0]
        store.conn.execute("INSERT INTO bank_entries (id, bank_id, kind, hash) VALUES (100, ?, 'pdq', ?), "
                           "(101, ?, 'md5', ?)", (dead, b"\1" * 32, dead, bytes.fromhex("dd" * 16)))
        assert [b.name for b in records.banks()] == ["list"]
        assert records.find_exact({"md5": bytes.fromhex("dd" * 16)}) is None
        assert records.remove("list")
        assert store.conn.execute("SELECT COUNT(*) FROM banks").fetchone()[0] == 0 and _bank_rows(store) == 0


def test_cli_import_list_remove_speak_one_line_each(tmp_path):
    config = make_data_dir(tmp_path / "node")
    good = tmp_path / "list.txt"
    good.write_text(f"pdq {'ab' * 32}\nmd5 {'cd' * 16}\nmd5 {'cd' * 16}\n")
    done = _cli(config, "banks", "import", "ncmec", str(good))
    assert done.returncode == 0 and "bank ncmec imported: 1 md5, 1 pdq; 1 duplicate(s) left out" in done.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text(f"signal_type,signal\npdq,{'ab' * 32}\npdq,nothex\n")
    refused = _cli(config, "banks", "import", "other", str(bad))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{bad}: line 3: pdq must be 64 hex digits" in refused.stderr and "nothing imported" in refused.stderr
    listed = _cli(config, "banks", "list").stdout
    assert "ncmec" in listed and "other" not in listed
    assert _cli(config, "banks", "import", "ncmec", str(tmp_path / "missing.txt")).returncode == 1
    assert _cli(config, "banks", "remove", "ncmec").returncode == 0
    assert _cli(config, "banks", "remove", "ncmec").returncode == 1


# -- matching -------------------------------------------------------------------------------------------

async def _with_node(config, body):
    node = open_serving_node(config)
    await node.start()
    try:
        return await body(node)
    finally:
        await node.close()


def test_a_banked_pdq_blocks_a_resized_copy_without_inference_or_a_verdict(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "node", model=tiny_clip_spec)
    original = photo_bytes(ALLOWED)
    resized = encode(photo_image(ALLOWED, size=300), "png")   # new bytes, new pixels, the same picture
    banked = _fp(original).pdq256
    with Store(config.database_path) as store:
        _import(store, "ncmec", f"pdq {banked}\n")

    async def body(node: Node):
        result = await node.pipeline.check(resized)
        assert (result.decision, result.outcome, result.source, result.bank) == ("reject", "block", "bank", "ncmec")
        assert f"hash bank ncmec: pdq {banked}" in result.reason and result.as_json()["bank"] == "ncmec"
        assert node.metrics.inference_images._value.get() == 0
        assert node.store.counts()["own_verdicts"] == 0 and result.verdict_ids == ()
        matches = node.features.get(Banks).matcher.matches
        assert matches.labels("ncmec", "pdq")._value.get() == 1
        node.store.flush()
        (row,) = node.store.decisions()
        assert (row["decision"], row["origin"]) == ("reject", "bank") and banked in row["reason"]
    run(_with_node(config, body))


def test_a_banked_md5_blocks_the_exact_bytes_before_decoding(tmp_path):
    config = make_data_dir(tmp_path / "node")
    data = b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096)   # a 'video': never decoded, never classified
    with Store(config.database_path) as store:
        _import(store, "videos", f"video_md5 {hashlib.md5(data).hexdigest()}\n")

    async def body(node: Node):
        result = await node.pipeline.check(data)
        assert (result.outcome, result.source, result.bank) == ("block", "bank", "videos")
        assert result.reason == f"in hash bank videos: md5 {hashlib.md5(data).hexdigest()}"
        other = await node.pipeline.check(data + b"\0")
        assert other.source == "media"
    run(_with_node(config, body))


def test_a_bank_imported_later_blocks_an_image_already_cleared_by_a_verdict(tmp_path, tiny_clip_spec):
    """The image was classified safe before the list arrived: its own verdict (an exact-key hit) must not
    keep it out of reach of the bank, and a memoised answer ends with the import."""
    config = make_data_dir(tmp_path / "node", model=tiny_clip_spec)
    data = photo_bytes(ALLOWED)

    async def body(node: Node):
        assert (await node.pipeline.check(data)).decision == "accept"
        assert (await node.pipeline.check(data)).source == "cache"
        _import(node.store, "late", f"pdq {_fp(data).pdq256}\n")
        banks = node.features.get(Banks)
        assert banks.matcher.refresh()
        node.store.generation += 1   # what keep_fresh does after a refresh
        again = await node.pipeline.check(data)
        assert (again.decision, again.source, again.bank) == ("reject", "bank", "late")
    run(_with_node(config, body))


async def _until_metric(base: str, value: float, name: str, **labels: str) -> None:
    for _ in range(300):
        if await metric_value(base, name, **labels) == value:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{name}{labels} never became {value}")


def test_serve_picks_up_an_import_and_a_removal_and_metrics_name_the_bank(tmp_path, tiny_clip_spec):
    """`banks import` and `banks remove` in another process while `serve` runs: counted within seconds."""
    config = make_data_dir(tmp_path / "node", model=tiny_clip_spec)
    data = photo_bytes(BLOCKED)
    listed = tmp_path / "list.txt"
    listed.write_text(f"sha256 {hashlib.sha256(data).hexdigest()}\npdq {_fp(data).pdq256}\n")

    async def body():
        async with running_node(config) as (node, base):
            url = f"{base}/pictrs/validate/{config.pictrs.tokens[0]}"
            imported = await asyncio.to_thread(_cli, config, "banks", "import", "tc", str(listed))
            assert imported.returncode == 0, imported.stderr
            await _until_metric(base, 1, "verdictnode_bank_entries", bank="tc", kind="pdq")
            status, answer = await pictrs_post(url, data)
            assert (status, answer["source"], answer["bank"]) == (406, "bank", "tc")
            assert "sha256" in answer["reason"]
            assert await metric_value(base, "verdictnode_bank_matches_total", bank="tc", kind="sha256") == 1
            assert await metric_value(base, "verdictnode_images_total", outcome="block", source="bank") == 1
            assert (await asyncio.to_thread(_cli, config, "banks", "remove", "tc")).returncode == 0
            await _until_metric(base, 0, "verdictnode_bank_entries", bank="tc", kind="pdq")
            status, answer = await pictrs_post(url, data)
            assert answer["source"] == "inference" and "bank" not in answer   # classified like any image
    run(body())


def test_a_sweep_blocks_banked_files_and_the_report_shows_only_the_bank_and_the_matched_hash(tmp_path):
    config = make_data_dir(tmp_path / "node")
    storage = tmp_path / "files"
    storage.mkdir()
    banked = photo_bytes("rocket")
    (storage / "banked.jpg").write_bytes(encode(photo_image("rocket", size=400), "png"))   # a resized copy
    (storage / "other.jpg").write_bytes(photo_bytes(ALLOWED))
    listed = tmp_path / "list.csv"
    listed.write_text(f"signal_type,signal,note\npdq,{_fp(banked).pdq256},confidential case note\n"
                      f"md5,{'ab' * 16},another entry\n")
    assert _cli(config, "banks", "import", "tc", str(listed)).returncode == 0
    swept = _cli(config, "scan", str(storage), "--dry-run", "--json")
    assert swept.returncode == 0, swept.stderr
    report = _cli(config, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    (row,) = json.loads(report.stdout)
    assert row["key"] == "banked.jpg" and row["verdict_from"] == "bank" and row["verdict_ids"] == []
    assert row["reason"].startswith(f"in hash bank tc: pdq {_fp(banked).pdq256} at distance ")
    assert "confidential" not in report.stdout and "ab" * 16 not in report.stdout
