"""peers.yaml while the node runs, and when `verdict-node peers add` writes it.

Adding a peer used to mean editing YAML and restarting every time. `serve` now takes a new peers.yaml in
on SIGHUP and when the file changes (``watch``: the file's signature is looked at every
``WATCH_SECONDS``, and a change is taken once it has settled for one look, so an editor's half-written
file is not read). ``Node.reload_peers`` swaps everything at once, between two requests; a broken file is
refused with its one-line error and the peers in force stay.

``add_entry`` appends one entry: the new text is checked (parsed, every other entry unchanged) before it
replaces the file (temporary file + rename, so a reader never sees half a file). The admin's comments and
layout are kept by appending to the text; only a file whose layout that cannot extend (a flow-style list)
is written out anew.
"""
from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from node.config import ConfigError, PeerEntry, load_peers, parse_peers

#: How often `serve` looks at peers.yaml for a change.
WATCH_SECONDS = 1.0

Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    """(inode, size, mtime in ns) of the file, or None when it does not exist: what changes with any write."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class PeersFileWatch:
    """Tells when peers.yaml differs from the file in force and has settled (the same signature at two
    looks in a row). ``in_force``: the signature of the file the node read last (SIGHUP reads it too)."""

    def __init__(self, path: Path, in_force: Callable[[], Signature]) -> None:
        self.path = path
        self.in_force = in_force
        self._seen = signature(path)

    def changed(self) -> bool:
        now = signature(self.path)
        settled = now == self._seen
        self._seen = now
        return settled and now != self.in_force()


async def watch(reload: Callable[[], Any], path: Path, in_force: Callable[[], Signature],
                interval: float = WATCH_SECONDS) -> None:
    """Call ``reload()`` whenever peers.yaml changed and settled; runs until cancelled."""
    watcher = PeersFileWatch(path, in_force)
    while True:
        await asyncio.sleep(interval)
        if watcher.changed():
            reload()


# -- writing one more entry --------------------------------------------------------------------------------

_ITEM_INDENT = re.compile(r"^( *)- ", re.MULTILINE)


def _entry_yaml(entry: Mapping[str, Any], indent: int) -> str:
    text = yaml.safe_dump([dict(entry)], sort_keys=False, default_flow_style=False)
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def add_entry(path: Path, entry: Mapping[str, Any]) -> list[PeerEntry]:
    """Append ``entry`` to peers.yaml, keeping every other entry (and, where the layout allows, the file's
    text), after checking the result; returns the peers now listed. ConfigError when the file in place
    does not parse, when the actor is listed already, or when the new entry is invalid."""
    before = load_peers(path)  # the file in place must parse: its one-line error otherwise
    old_text = path.read_text(encoding="utf-8") if path.exists() else ""
    if any(p.actor == entry["actor"] for p in before):
        raise ConfigError(f"{path.name}: {entry['actor']} is listed already; edit its entry there")
    new_text = _appended(old_text, entry)
    after = _parse(new_text, path.name)
    if after is None or [p.actor for p in after] != [*[p.actor for p in before], entry["actor"]]:
        # A layout appending cannot extend (flow style, odd indentation): write the entries out anew.
        raw = yaml.safe_load(old_text) if old_text.strip() else None
        items = list((raw or {}).get("peers") or []) + [dict(entry)]
        new_text = yaml.safe_dump({"peers": items}, sort_keys=False, default_flow_style=False)
        after = parse_peers(yaml.safe_load(new_text), path.name)
    _replace(path, new_text)
    return after


def _appended(old_text: str, entry: Mapping[str, Any]) -> str:
    body = old_text.rstrip("\n")
    if not body.strip() or yaml.safe_load(body) in (None, {"peers": None}):
        head = body + "\n" if body.strip() else ""
        if "peers:" not in head:
            head += "peers:\n"
        return head + _entry_yaml(entry, 2)
    found = _ITEM_INDENT.findall(body)
    indent = len(found[0]) if found else 2
    return body + "\n" + _entry_yaml(entry, indent)


def _parse(text: str, name: str) -> list[PeerEntry] | None:
    try:
        return parse_peers(yaml.safe_load(text), name)
    except (ConfigError, yaml.YAMLError):
        return None


def _replace(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it over ``path`` (as `init` writes node.yaml): a reader (the
    running server) sees the old file or the new one, never half of one. The file's mode is kept."""
    mode = os.stat(path).st_mode & 0o777 if path.exists() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    tmp.replace(path)
