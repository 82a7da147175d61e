"""`verdict-node banks import|list|remove` and `verdict-node exchange-tokens add|list|remove`.

Both act on the data directory's database and work whether or not `serve` runs: a running server loads a new
bank within seconds (node.banks.REFRESH_SECONDS), and a removed token is refused from its next request on.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sqlite3
import sys
from pathlib import Path

from node.banks.formats import BadLines, read_entries
from node.banks.records import BankRecords, ImportRefused
from node.banks.tokens import ExchangeTokens
from node.datadir import resolve_config
from node.store import Store

EXIT_REFUSED = 1


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _said(done: bool, success: str, failure: str) -> int:
    """The one line a removal prints, and its exit code."""
    if not done:
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_REFUSED
    print(success)
    return 0


def cmd_banks(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    with Store(config.database_path) as store:
        records = BankRecords(store)
        if args.banks_command == "import":
            return _import(records, args)
        if args.banks_command == "remove":
            return _said(records.remove(args.name), f"bank {args.name} removed", f"no bank named {args.name!r}")
        banks = records.banks()
        if getattr(args, "json", False):
            print(json.dumps([{"name": b.name, "entries": b.counts, "format": b.format, "source": b.source,
                               "imported_at": b.imported_at} for b in banks], indent=2))
            return 0
        if not banks:
            print("no banks (import one with: verdict-node banks import NAME FILE)")
            return 0
        print(f"{'NAME':<24} {'ENTRIES':>11}  {'BY KIND':<40} IMPORTED")
        for b in banks:
            kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(b.counts.items())) or "-"
            print(f"{b.name:<24} {b.entries:>11,}  {kinds:<40} {_when(b.imported_at)}")
        return 0


def _import(records: BankRecords, args: argparse.Namespace) -> int:
    path = Path(args.file)
    fmt = args.format or ("csv" if path.suffix.lower() == ".csv" else "te")
    bad = BadLines()
    try:
        with open(path, "rb") as stream:
            counts = records.import_entries(
                args.name, read_entries(stream, fmt, bad), fmt=fmt, source=str(path.resolve()),
                replace=args.replace, accept=lambda: bad.count == 0 or args.skip_bad)
    except ImportRefused as exc:
        for line in bad.describe():
            print(f"{path}: {line}", file=sys.stderr)
        if bad.count and not args.skip_bad:
            print(f"error: {bad.count:,} bad line(s) in {path}: nothing imported (fix them, or import the good "
                  f"lines with --skip-bad)", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    except sqlite3.Error as exc:
        print(f"error: the database refused the import (nothing imported): {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for line in bad.describe():
        print(f"{path}: {line} (skipped)", file=sys.stderr)
    kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(counts.counts.items())) or "no entries"
    skipped = f"; {bad.count:,} bad line(s) skipped" if bad.count else ""
    duplicates = f"; {counts.duplicates:,} duplicate(s) left out" if counts.duplicates else ""
    verb = "replaced" if args.replace else "imported"
    print(f"bank {args.name} {verb}: {kinds}{duplicates}{skipped}")
    return 0


def cmd_exchange_tokens(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    with Store(config.database_path) as store:
        tokens = ExchangeTokens(store)
        if args.tokens_command == "add":
            try:
                token = tokens.add(args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(token)
            print(f"exchange token {args.name} added. It is shown only this once; a reader sends it as\n"
                  f"  Authorization: Bearer <token>   to {config.node.url}/exchange/v1/signals\n"
                  f"(python-threatexchange and HMA: see README, Exchange for HMA / python-threatexchange)",
                  file=sys.stderr)
            return 0
        if args.tokens_command == "remove":
            return _said(tokens.remove(args.name), f"exchange token {args.name} removed: its next request gets 401",
                         f"no exchange token named {args.name!r}")
        records = tokens.records()
        if getattr(args, "json", False):
            print(json.dumps([r.__dict__ for r in records], indent=2))
            return 0
        if not records:
            print("no exchange tokens (add one with: verdict-node exchange-tokens add NAME)")
            return 0
        print(f"{'NAME':<24} {'CREATED':<22} LAST USED")
        for r in records:
            print(f"{r.name:<24} {_when(r.created_at):<22} {_when(r.last_used_at)}")
        return 0
