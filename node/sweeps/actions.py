"""What happens to a storage item once it is decided: quarantine (the default: reversible, evidence kept),
delete, or nothing (dry run); applying a dry run's positives later; releasing a false positive.

Every action is written down BEFORE it touches storage (action `quarantining` / `deleting`, with the
location the source will use) and again right after, so a process killed in between leaves a row that
says what was under way and where: `node.recovery.reconcile` settles it on the next start (finished,
undone for the next sweep to redo, or marked for the admin's review).

Retention: a file that an evidence record still covers (node.evidence, a positive an admin confirmed) is
not deleted unless the admin forces it: the deletion is refused and recorded with the record's reason.

The source is told which bytes were judged (their sha256) and acts on that file or on nothing: a file
swapped, rewritten, linked elsewhere or turned into a FIFO after it was classified is refused and the
refusal recorded (action `refused`, the reason in `action_error`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from typing import Any, Callable

from node.evidence import EvidenceRecords, protection_reason, refused_for_evidence
from node.sweeps.recovery import reconcile
from node.sweeps.records import ItemRecord, SweepRecords, UNDER_WAY_ACTIONS
from scanners.sources import Item, ItemError, ItemGone, ItemRefused, Source, SourceError

log = logging.getLogger("verdict_node.actions")

ACTIONS = ("quarantine", "delete", "dry-run")
#: For unreadable items and videos: left alone unless configured otherwise.
MEDIA_ACTIONS = ("leave", "quarantine", "delete")


#: (sha256, quarantine location) -> why this file must not be destroyed, or None.
Protection = Callable[[str | None, str | None], "str | None"]


def evidence_guard(evidence: EvidenceRecords, *, force: bool = False) -> Protection:
    """The retention check of node.evidence for whatever would destroy or publish a file (`act`'s deletion,
    `release`): refuses by the record's reason, or with ``force`` lets it go ahead, saying so in the log."""
    def protect(sha256: str | None, location: str | None) -> str | None:
        record = evidence.protecting(sha256, location=location)
        if record is None:
            return None
        if force:
            log.warning("--force: acting on a file that evidence record %d still keeps (sha256 %s, %s)",
                        record["id"], sha256, location)
            return None
        return protection_reason(record)
    return protect


def evidence(record: ItemRecord, actor_id: str, run_id: int | None) -> dict[str, Any]:
    """The sidecar kept next to quarantined bytes: why it was taken out and on whose word (for review and,
    where the law asks for it, for a report to the authorities)."""
    return {"verdict_node": {"actor": actor_id, "run": run_id, "outcome": record.outcome, "origin": record.origin,
                             "reason": record.reason, "scores": record.scores, "verdict_ids": list(record.verdict_ids),
                             "fingerprint": {"sha256": record.sha256, "pixel_sha256": record.pixel_sha256,
                                             "phash64": record.phash64, "pdq256": record.pdq256},
                             "decided_at": record.decided_at}}


async def act(source: Source, item: Item, record: ItemRecord, action: str, records: SweepRecords, *,
              actor_id: str, protect: Protection | None = None) -> ItemRecord:
    """Apply `action` (quarantine / delete / dry-run / leave) to one decided item; returns its record with
    the action's result. Never raises for a per-item failure (recorded as action `failed`). ``protect``:
    the retention check a deletion must pass (a refusal is recorded as action `refused`)."""
    if action in ("leave", "none"):
        return record
    if action == "dry-run":
        return dataclasses.replace(record, action="dry-run")
    if action not in ("quarantine", "delete"):
        raise ValueError(f"unknown action {action!r}")
    if action == "delete" and protect is not None:
        kept = protect(record.sha256, record.location)
        if kept:
            log.warning("delete %s refused: %s", item.key, kept)
            refused = dataclasses.replace(record, action="refused", action_error=kept)
            await asyncio.to_thread(records.commit, [refused])
            return refused
    under_way = "quarantining" if action == "quarantine" else "deleting"
    planned = source.plan(item, action)
    await asyncio.to_thread(records.commit, [dataclasses.replace(record, action=under_way, location=planned)])
    try:
        if action == "quarantine":
            location = await source.quarantine(item, evidence(record, actor_id, record.run_id),
                                               sha256=record.sha256, location=planned)
            done = dataclasses.replace(record, action="quarantined", location=location, action_error=None)
        else:
            await source.delete(item, sha256=record.sha256, location=planned)
            done = dataclasses.replace(record, action="deleted", action_error=None)
    except ItemGone as exc:
        done = dataclasses.replace(record, action="gone", action_error=str(exc))
    except ItemRefused as exc:
        log.warning("%s %s refused: %s", action, item.key, exc.reason)
        done = dataclasses.replace(record, action="refused", action_error=exc.reason)
    except (ItemError, SourceError, OSError) as exc:
        log.warning("%s %s failed: %s", action, item.key, exc)
        done = dataclasses.replace(record, action="failed", action_error=f"{type(exc).__name__}: {exc}")
    # On record at once: a kill after the move must not leave the row under way.
    await asyncio.to_thread(records.commit, [done])
    return done


async def apply_run(records: SweepRecords, run_id: int, source: Source, *, action: str = "quarantine",
                    actor_id: str, protect: Protection | None = None) -> dict[str, int]:
    """Act on the positives a dry run recorded, without classifying again. An item whose bytes differ from
    those judged (sha256) is left alone and counted as `changed` (scan it again); one whose deletion the
    retention check refuses is counted as `protected`, its reason in the record's action_error."""
    if action not in ("quarantine", "delete"):
        raise ValueError("apply acts with quarantine or delete")
    run = records.get_run(run_id)
    if run is not None:
        await reconcile(records, source, run["source"])
    counts = {"positives": 0, "quarantined": 0, "deleted": 0, "gone": 0, "changed": 0, "failed": 0, "protected": 0}
    # Also the positives an earlier apply left failed (an interrupted one among them, once reconciled) or
    # refused (the cause may be gone, or the admin now forces past an evidence record), as sweeps redo them.
    unacted = records.run_items(run_id, outcome="block", action="dry-run") + \
        records.run_items(run_id, outcome="block", action="failed") + \
        records.run_items(run_id, outcome="block", action="refused")
    for record in sorted(unacted, key=lambda r: r.key):
        counts["positives"] += 1
        item = record.as_item()
        try:
            data = await source.read(item)
        except ItemGone:
            counts["gone"] += 1
            records.commit([dataclasses.replace(record, action="gone")])
            continue
        except (ItemError, SourceError) as exc:
            counts["failed"] += 1
            records.commit([dataclasses.replace(record, action_error=f"apply: {exc}")])
            continue
        if record.sha256 and hashlib.sha256(data).hexdigest() != record.sha256:
            counts["changed"] += 1
            continue
        done = await act(source, item, record, action, records, actor_id=actor_id, protect=protect)
        if done.action == "refused" and refused_for_evidence(done.action_error):
            counts["protected"] += 1
            continue
        key = {"quarantined": "quarantined", "deleted": "deleted", "gone": "gone"}.get(done.action, "failed")
        counts[key] += 1
    return counts


async def release(records: SweepRecords, ref: str, source: Source, *, reason: str,
                  retract: Any = None) -> dict[str, Any]:
    """Put a quarantined item back (a false positive): restore it, record an override so no sweep
    quarantines these bytes again, mark its record released, and retract the verdicts that blocked it
    (`retract(verdict_id, reason) -> str`, federation's: our own is withdrawn at every peer).

    `ref`: the quarantine location, the storage key, or the sha256."""
    interrupted = [r for r in records.find(ref) if r.action in UNDER_WAY_ACTIONS]
    if interrupted:
        await reconcile(records, source, rows=interrupted)
    record = quarantined_record(records, ref)
    restored = await source.release(record.location or "")
    now = time.time()
    records.add_override(record.sha256 or "", record.pixel_sha256, reason, record.source, record.key)
    old = dataclasses.replace(record, action="released", location=None, action_error=None, decided_at=now)
    back = dataclasses.replace(record, key=restored.key, size=restored.size, mtime=restored.mtime,
                               etag=restored.etag, outcome="allow", origin="override",
                               reason=f"released by the admin: {reason}", action="released", location=None,
                               action_error=None, decided_at=now)
    records.commit([old, back] if restored.key != record.key else [back])
    retracted, problems = [], []
    for verdict_id in record.verdict_ids:
        if retract is None:
            problems.append(f"{verdict_id}: no retract function; retract it with `verdict-node verdicts retract`")
            continue
        try:
            retracted.append(retract(verdict_id, reason))
        except LookupError as exc:
            problems.append(str(exc))
    return {"key": record.key, "restored_key": restored.key, "source": record.source, "sha256": record.sha256,
            "retracted": retracted, "problems": problems}


def quarantined_record(records: SweepRecords, ref: str) -> ItemRecord:
    found = [r for r in records.find(ref) if r.action == "quarantined" and r.location]
    if not found:
        raise LookupError(f"no quarantined item matches {ref!r} (give the quarantine location, the storage key "
                          f"or the sha256 shown by `verdict-node report`)")
    if len({r.location for r in found}) > 1:
        raise LookupError(f"{ref!r} matches {len(found)} quarantined items; give the quarantine location: "
                          + ", ".join(str(r.location) for r in found))
    return found[0]
