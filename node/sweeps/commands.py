"""`verdict-node scan`, `apply`, `release` and `report`: the sweep commands.

This is a composition root: a sweep runs in its own process, with the node's own pipeline, and installs
what it needs there (hash banks, federation's lookups when configured, the serving node's worker queue).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from typing import Any, Awaitable, Callable

from node import banks, federation, workers
from node.datadir import resolve_config
from node.evidence import refused_for_evidence
from node.federation.outbox import retract as federation_retract
from node.runtime import Node, on_stop_signals
from node.store import Store
from node.sweeps.actions import apply_run, evidence_guard, quarantined_record, release
from node.sweeps.engine import Mode, Progress, Sweep, SweepOptions, SweepStats
from node.sweeps.records import UNDER_WAY_ACTIONS, SweepRecords, public_url, source_identity
from node.sweeps.report import parse_since, render, report_rows
from node.sweeps.times import parse_duration
from scanners.sources import LocalSource, Source, SourceError, open_source


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--option wants NAME=VALUE, got {pair!r}")
        out[name.strip()] = value
    return out


def open_node(config_path: str | None, *, load_model: bool) -> Any:
    """The node a command works with: same data directory, verdicts and keys as `serve`. Peer lookups are
    installed when configured; delivery is left to `serve` (it publishes our new verdicts from the store)."""
    config = resolve_config(config_path)
    node = Node.open(config, load_model=load_model)
    if load_model:
        banks.install(node)  # known-bad hash lists block before inference here too
        if config.federation.lookup_peers:
            federation.install(node)
        workers.install_submitter(node)  # workers.enabled: share serve's worker queue
    node.background.clear()
    return node


def _count_in_background(source: Source, progress: Progress) -> None:
    """A first sweep of a local tree has no earlier run to estimate from: count the files in a thread (a walk
    costs seconds where classifying costs hours) and give the bar its ETA when done. Remote kinds are not
    counted: that would be a second full listing."""
    if not isinstance(source, LocalSource):
        return

    def count() -> None:
        total = 0
        for _dir, dirs, files in os.walk(source.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            total += sum(1 for f in files if not f.startswith("."))
        progress.expected = total

    threading.Thread(target=count, name="sweep-count", daemon=True).start()


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_scan(args: argparse.Namespace) -> int:
    if args.all and args.since:
        return _error("--all sweeps everything: leave out --since (or use --since alone for a partial pass)")
    try:
        mode: Mode = "daemon" if args.daemon else ("since" if args.since else "all")
        options = SweepOptions(
            mode=mode, since_seconds=parse_duration(args.since) if args.since else None,
            interval=parse_duration(args.interval), workers=args.workers,
            action="dry-run" if args.dry_run else args.action, on_unreadable=args.on_unreadable,
            on_video=args.on_video, force=args.force)
        source_options = parse_options(args.option)
    except ValueError as exc:
        return _error(str(exc))
    if args.quarantine_dir:
        source_options["quarantine_dir"] = args.quarantine_dir
    node = open_node(args.config, load_model=True)

    async def main() -> SweepStats:
        source = open_source(args.source, **source_options)
        sweep = Sweep(node, source, args.source, options)
        sweep.progress = Progress(interval=args.log_interval,
                                  expected=sweep.records.expected_items(sweep.source_id))
        if sweep.progress.expected is None and mode == "all":
            _count_in_background(source, sweep.progress)
        on_stop_signals(asyncio.current_task().cancel)
        try:
            return await sweep.run()
        finally:
            sweep.progress.close()
            await source.close()
            print(f"run {sweep.run_id} ({public_url(args.source)}): {sweep.stats.line()}", file=sys.stderr)
            if args.json:
                print(json.dumps({"run": sweep.run_id, "source": sweep.source_id, **sweep.stats.as_dict()},
                                 sort_keys=True), flush=True)

    async def guarded() -> int:
        try:
            await main()
            return 0
        except SourceError as exc:
            print(f"error: {exc} (the sweep is checkpointed: run the same command again to resume)", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            return 130
        finally:
            await node.close()

    if node.backend is None:
        print(f"warning: no classifier ({node.backend_problem}); images without a known verdict stay undecided "
              f"and are tried again by the next sweep", file=sys.stderr)
    return asyncio.run(guarded())


def _source_for(run: dict[str, Any] | None, url: str | None, options: dict[str, str]) -> Source:
    target = url or (run["url"] if run else None)
    if not target:
        raise LookupError("cannot tell which storage this is: pass --source URL")
    return open_source(target, **options)


def _open_for_action(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """`apply` and `release` act on what a sweep recorded: the node without a model, and the source options
    (--option NAME=VALUE, --quarantine-dir). Raises ValueError for the caller to report."""
    options = parse_options(args.option)
    if args.quarantine_dir:
        options["quarantine_dir"] = args.quarantine_dir
    return open_node(args.config, load_model=False), options


def _run_action(node: Any, main: Callable[[SweepRecords], Awaitable[int]]) -> int:
    """Run an admin action on what a sweep recorded: storage and lookup problems become one error line,
    and the node is closed (pending writes flushed) whatever happens."""
    async def wrapper() -> int:
        try:
            return await main(SweepRecords(node.store))
        except (LookupError, SourceError) as exc:
            return _error(str(exc))
        finally:
            await node.close()

    return asyncio.run(wrapper())


async def _on_source(run: Any, source_url: str | None, options: dict[str, str],
                     act: Callable[[Source], Awaitable[Any]]) -> Any:
    """Open the storage a run swept (or ``source_url``), act on it, and close it."""
    source = _source_for(run, source_url, options)
    try:
        return await act(source)
    finally:
        await source.close()


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        node, options = _open_for_action(args)
    except ValueError as exc:
        return _error(str(exc))

    async def main(records: SweepRecords) -> int:
        run = records.get_run(args.run)
        if run is None:
            return _error(f"no sweep run {args.run} (see the run number in `scan`'s summary)")
        if run["action"] != "dry-run":
            print(f"note: run {args.run} was not a dry run ({run['action']}); acting on any positives it "
                  f"left unacted", file=sys.stderr)
        counts = await _on_source(run, args.source, options, lambda source: apply_run(
            records, args.run, source, action=args.action, actor_id=node.actor_id,
            protect=evidence_guard(node.evidence, force=args.force)))
        for record in records.run_items(args.run, outcome="block", action="refused"):
            if refused_for_evidence(record.action_error):
                print(f"refused: {record.key}: {record.action_error}", file=sys.stderr)
        print(json.dumps({"run": args.run, **counts}, sort_keys=True))
        return 0 if counts["failed"] == 0 and counts["protected"] == 0 else 1

    return _run_action(node, main)


def cmd_release(args: argparse.Namespace) -> int:
    try:
        node, options = _open_for_action(args)
    except ValueError as exc:
        return _error(str(exc))

    def retract(verdict_id: str, reason: str) -> str:
        row = node.store.conn.execute("SELECT retracted_at FROM verdicts WHERE verdict_id = ?", (verdict_id,)).fetchone()
        if row is None:
            raise LookupError(f"{verdict_id}: not in the verdict store")
        if row[0] is not None:
            return f"{verdict_id} was already retracted"
        return federation_retract(node.store, node.config, node.ed25519_key, verdict_id, reason)

    async def main(records: SweepRecords) -> int:
        # An item whose quarantine a crash cut short is released too: release() settles it first.
        record = next((r for r in records.find(args.item) if r.action in UNDER_WAY_ACTIONS and r.location),
                      None) or quarantined_record(records, args.item)
        kept = evidence_guard(node.evidence, force=args.force)(record.sha256, record.location)
        if kept:
            return _error(f"not released: {kept}", 1)
        run = records.get_run(record.run_id) if record.run_id is not None else None
        local_dir = _quarantine_dir_of(record.location)
        if "quarantine_dir" not in options and local_dir is not None:
            options["quarantine_dir"] = local_dir
        outcome = await _on_source(run, args.source, options, lambda source: release(
            records, args.item, source, reason=args.reason, retract=retract))
        print(json.dumps(outcome, sort_keys=True))
        return 0

    return _run_action(node, main)


def _quarantine_dir_of(location: str | None) -> str | None:
    """Local and pict-rs quarantines are directories holding the location file; SSH/S3 ones are not local
    paths and the source's default (or --quarantine-dir) is used."""
    if location and os.path.isabs(location) and os.path.exists(location):
        return os.path.dirname(location)
    return None


def cmd_report(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        return _error(str(exc))
    store = Store(config.database_path)
    try:
        rows = report_rows(SweepRecords(store), since, source_identity(args.source) if args.source else None)
    finally:
        store.close()
    text = render(rows, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        print(f"{len(rows)} positives written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
