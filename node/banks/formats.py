"""Reading a bank file, which is hostile input like any upload: python-threatexchange's local-file format
(``<signal_type> <hash>`` a line) and CSV with a header (``signal_type,signal[,note]``).

Why this much care: lists come from outside (mailed, downloaded, converted by scripts) and can be tens of
millions of lines. So a line is read with a bounded length (a longer one is skipped without ever being held
whole), every bad line gets one clear problem with its line number instead of a traceback, and entries are
yielded one by one so that memory does not grow with the file. Duplicates are left to the database (a unique
index), which counts them without a set of every hash in memory.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Literal

Format = Literal["te", "csv"]
FORMATS: tuple[Format, ...] = ("te", "csv")

# Hash kinds a bank may hold, and their size in bytes.
KIND_BYTES = {"pdq": 32, "md5": 16, "sha256": 32, "phash": 8}
# Signal type names as other tools write them (python-threatexchange's video_md5 is an md5 of the bytes).
KIND_ALIASES = {"pdq": "pdq", "md5": "md5", "sha256": "sha256", "phash": "phash", "phash64": "phash",
                "pdq256": "pdq", "video_md5": "md5", "photo_md5": "md5", "video_sha256": "sha256"}
MAX_LINE = 4096           # bytes, newline included; far above any real line (a hash, a type, a short note)
MAX_NOTE = 512            # characters
MAX_REPORTED = 100        # bad lines described one by one; the rest are counted
_HEX = re.compile(r"[0-9a-fA-F]+\Z")


@dataclass(frozen=True, slots=True)
class Entry:
    """One hash of a bank: its kind, its raw bytes, and the list's note about it (CSV only)."""

    kind: str
    digest: bytes
    note: str | None = None


@dataclass
class BadLines:
    """What was wrong with a file: the first MAX_REPORTED problems with their line numbers, and the count."""

    count: int = 0
    first: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, problem: str) -> None:
        self.count += 1
        if len(self.first) < MAX_REPORTED:
            self.first.append((line, problem))

    def describe(self) -> list[str]:
        lines = [f"line {number}: {problem}" for number, problem in self.first]
        if self.count > len(self.first):
            lines.append(f"... and {self.count - len(self.first):,} more bad lines")
        return lines


def parse_hash(kind_text: str, value: str) -> tuple[str, bytes]:
    """(kind, raw bytes) of one signal, or ValueError with the problem in words."""
    kind = KIND_ALIASES.get(kind_text.strip().lower())
    if kind is None:
        known = ", ".join(sorted(KIND_BYTES))
        raise ValueError(f"unknown signal type {_show(kind_text)} (known: {known})")
    value = value.strip()
    digits = 2 * KIND_BYTES[kind]
    if len(value) != digits or not _HEX.match(value):
        raise ValueError(f"{kind} must be {digits} hex digits, got {_show(value)}")
    return kind, bytes.fromhex(value)


def read_entries(stream: BinaryIO, fmt: Format, bad: BadLines) -> Iterator[Entry]:
    """Every good entry of the file, in order; every bad line goes to ``bad`` (never an exception)."""
    lines = _lines(stream, bad)
    if fmt == "te":
        yield from _te_entries(lines, bad)
    elif fmt == "csv":
        yield from _csv_entries(lines, bad)
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _lines(stream: BinaryIO, bad: BadLines) -> Iterator[tuple[int, str]]:
    """(line number, text without the line end) of every line that can be read as UTF-8 text at all."""
    number = 0
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):   # skip the rest of the line without holding it
                raw = stream.readline(1 << 16)
            bad.add(number, f"longer than {MAX_LINE} bytes")
            continue
        if b"\0" in raw:
            bad.add(number, "contains a NUL byte")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.add(number, f"not UTF-8 text (byte {exc.start + 1})")
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        yield number, text.rstrip("\r\n")


def _te_entries(lines: Iterator[tuple[int, str]], bad: BadLines) -> Iterator[Entry]:
    for number, text in lines:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        if len(parts) != 2:
            bad.add(number, f"expected '<signal_type> <hash>', got {len(parts)} fields")
            continue
        try:
            kind, digest = parse_hash(parts[0], parts[1])
        except ValueError as exc:
            bad.add(number, str(exc))
            continue
        yield Entry(kind, digest)


def _csv_entries(lines: Iterator[tuple[int, str]], bad: BadLines) -> Iterator[Entry]:
    columns: dict[str, int] | None = None
    for number, text in lines:
        if not text.strip():
            continue
        try:
            (row,) = list(csv.reader([text], strict=True))
        except (csv.Error, ValueError) as exc:
            bad.add(number, f"not a CSV row: {exc}")
            continue
        if columns is None:
            names = [name.strip().lower() for name in row]
            if "signal_type" not in names or "signal" not in names:
                bad.add(number, "the header must name the columns signal_type and signal (and optionally note)")
                return
            columns = {name: names.index(name) for name in ("signal_type", "signal", "note") if name in names}
            continue
        needed = max(columns["signal_type"], columns["signal"]) + 1
        if len(row) < needed:
            bad.add(number, f"expected at least {needed} columns, got {len(row)}")
            continue
        try:
            kind, digest = parse_hash(row[columns["signal_type"]], row[columns["signal"]])
        except ValueError as exc:
            bad.add(number, str(exc))
            continue
        note = row[columns["note"]].strip() if "note" in columns and columns["note"] < len(row) else ""
        if len(note) > MAX_NOTE or not note.isprintable():
            bad.add(number, f"note must be at most {MAX_NOTE} printable characters")
            continue
        yield Entry(kind, digest, note or None)


def _show(text: str, limit: int = 40) -> str:
    """A value for an error message: quoted, control characters escaped, cut to ``limit`` characters."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")
