"""Settling the actions a crash cut short, before anything else acts on a source.

Every quarantine or delete is written down as under way (`quarantining` / `deleting`, with the location
it will use) before storage is touched, and as done right after. A process killed in between leaves a
row that says exactly where to look; `reconcile` asks the source what that location and the storage
hold now and records the answer, so no row stays in between:

    bytes + sidecar in the quarantine, name gone     -> quarantined (release and report see it)
    the storage still holds the judged bytes         -> partial traces undone; `failed`, so the next
                                                        sweep acts on it again
    the judged bytes left the storage on their own   -> gone
    neither finished nor safely undone               -> review, with the reason, shown by `report`

`scan`, `apply` and `release` call it before they act; `serve` (or anything that sweeps) can too.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from typing import Iterable

from node.sweeps.records import ItemRecord, SweepRecords
from scanners.sources import ItemError, Recovered, Source, SourceError

log = logging.getLogger("verdict_node.recovery")

#: The row's action for each state a source reports.
_ACTIONS = {"quarantined": "quarantined", "deleted": "deleted", "pending": "failed", "gone": "gone",
            "review": "review"}


def settled(record: ItemRecord, found: Recovered) -> ItemRecord:
    """The record of an interrupted action once the source has said what became of it."""
    action = _ACTIONS[found.state]
    if found.state == "quarantined":
        return dataclasses.replace(record, action=action, location=found.location or record.location,
                                   action_error=None)
    if found.state == "pending":
        note = (f"{record.action} was interrupted before it took effect; what it left was undone and the "
                f"next sweep acts on it again")
        return dataclasses.replace(record, action=action, location=None, action_error=note)
    if found.state == "review":
        return dataclasses.replace(record, action=action, location=found.location or record.location,
                                   action_error=f"{record.action} was interrupted: {found.reason}")
    return dataclasses.replace(record, action=action, location=None, action_error=found.reason or None)


async def reconcile(records: SweepRecords, source: Source, source_id: str | None = None, *,
                    rows: Iterable[ItemRecord] | None = None) -> dict[str, int]:
    """Settle every interrupted action on ``source``: the rows of ``source_id`` left under way, or just
    ``rows``. Returns how many ended in each state (plus ``left``: the source could not tell now, e.g.
    unreachable; those rows stay under way and the next call tries again)."""
    if rows is None:
        if source_id is None:
            raise ValueError("reconcile needs a source_id or rows")
        rows = await asyncio.to_thread(records.under_way, source_id)
    counts: collections.Counter[str] = collections.Counter()
    for record in rows:
        try:
            found = await source.recover(record.as_item(), record.action, record.location, record.sha256)
        except (ItemError, SourceError, OSError) as exc:
            log.warning("cannot settle the interrupted %s of %s yet: %s", record.action, record.key, exc)
            counts["left"] += 1
            continue
        await asyncio.to_thread(records.commit, [settled(record, found)])
        counts[found.state] += 1
        log.warning("settled the interrupted %s of %s: %s%s", record.action, record.key, found.state,
                    f" ({found.reason})" if found.reason else "")
    return dict(counts)
