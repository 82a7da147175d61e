"""What the pipeline answers: the Result of one image, the state one check accumulates (Work), and how a
decision becomes an answer (reasons that name the peers and rules behind ignored verdicts, on_unavailable,
the media rules), a metric and a decision record.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

from node.config import NodeConfig
from node.hooks import BankHit
from node.metrics import Metrics
from node.policy import Candidate, Decision, unused_lines
from node.store import Store
from protocol.verdict import Fingerprint, Verdict

log = logging.getLogger("verdict_node.pipeline")

Answer = Literal["accept", "reject"]
Source = Literal["cache", "peer", "inference", "unavailable", "media", "bank"]

# The media flags an answer and a decision record carry: what a walk of the container tells without a
# decode, so the exact-key fast path reports the same flags as a decode would.
REPORTED_FLAGS = ("trailing_bytes", "truncated", "animated")


@dataclass(frozen=True)
class Result:
    """What the pipeline decided for one image.

    `decision` is the pict-rs answer (accept -> 2xx, reject -> 406). `outcome` is what we know about the
    image: block / allow / unknown (undecided: no classifier, queue full, out of budget), or video /
    unreadable (not classified). Sweeps act on `outcome`; the hook answers `decision`."""

    decision: Answer
    outcome: Literal["block", "allow", "unknown", "video", "unreadable"]
    reason: str
    source: Source
    sha256: str
    fingerprint: Fingerprint | None = None
    verdict_ids: tuple[str, ...] = ()
    scores: dict[str, float] | None = None
    inferred: bool = False
    elapsed_ms: float = 0.0
    media_format: str | None = None
    origin: str | None = None
    media_flags: dict[str, Any] | None = None
    bank: str | None = None
    busy: bool = False  # undecided because the classifier's queue was full: trying again soon may succeed

    @property
    def verdict_id(self) -> str | None:
        return self.verdict_ids[0] if self.verdict_ids else None

    def as_json(self) -> dict[str, Any]:
        """The pict-rs answer's body. ``origin``: how the deciding verdict reached this node (own, push,
        backfill, lookup; null without one). ``media``: the flags found (trailing_bytes, truncated, animated)."""
        answer = {"decision": self.decision, "outcome": self.outcome, "reason": self.reason, "source": self.source,
                  "origin": self.origin, "verdict": self.verdict_id, "scores": self.scores,
                  "media": dict(self.media_flags) if self.media_flags is not None else None,
                  "elapsed_ms": round(self.elapsed_ms, 3)}
        if self.bank is not None:
            answer["bank"] = self.bank  # which hash bank blocked it (never the bank's other entries)
        return answer


@dataclass
class Work:
    """What one check knows so far (kept across the stages)."""

    data: bytes
    source: str
    source_key: str | None
    media_type: str | None
    started: float
    deadline: float
    sha256: str = ""
    pixel_sha256: str | None = None
    fingerprint: Fingerprint | None = None
    candidates: dict[int, Candidate] = field(default_factory=dict)
    media_format: str | None = None
    media_flags: dict[str, Any] | None = None
    lookup_problems: tuple[str, ...] = ()


def matches(work: Work, verdict_ids: Sequence[str]) -> set[str]:
    """The keys (sha256, pixel_sha256, phash64, pdq256) on which these verdicts matched the image."""
    by_id = {c.verdict.id: c.match for c in work.candidates.values()}
    return {by_id[v] for v in verdict_ids if v in by_id}


class Answers:
    """Turns decisions into answers, metrics and decision records (one per image, whoever asked)."""

    def __init__(self, config: NodeConfig, metrics: Metrics, store: Store) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store

    def bank(self, work: Work, hit: BankHit) -> Result:
        """Block on a bank match; no verdict is made, so nothing of the bank is signed or published."""
        return self.result(work, "reject", "block", hit.reason(), "bank", bank=hit.bank)

    def answer(self, outcome: str) -> Answer:
        if outcome == "block":
            return "reject"
        if outcome == "allow":
            return "accept"
        return "accept" if self.config.pictrs.on_unavailable == "accept" else "reject"

    def from_decision(self, work: Work, decision: Decision, *, forced_source: Source | None = None,
                       own_verdict: Verdict | None = None, inferred: bool = False) -> Result:
        used = tuple(v.id for v in decision.used)
        if own_verdict is not None and own_verdict.id not in used:
            used = (own_verdict.id, *used)
        source: Source = forced_source or decision.source or "unavailable"
        reason = decision.reason
        if source == "inference" or decision.outcome == "unknown":
            # We paid for inference, or fall back: say which matching verdicts did not count, and why.
            notes = [*work.lookup_problems, *(unused_lines(decision.unused) if decision.outcome != "unknown" else ())]
            reason = "; ".join([reason, *notes])
            self.log_notes(work, decision)
        if decision.outcome == "unknown":
            reason = f"{reason}; pictrs.on_unavailable is {self.config.pictrs.on_unavailable}"
        if source in ("cache", "peer") and not inferred:
            found = matches(work, used)
            best = next((m for m in ("sha256", "pixel_sha256", "phash64", "pdq256") if m in found), "none")
            self.metrics.child(self.metrics.cache_hits, source, best).inc()
        origin = None
        if source in ("cache", "inference"):
            origin = "own"
        elif source == "peer" and used:
            origin = self.store.verdict_origin(used[0])
        return self.result(work, self.answer(decision.outcome), decision.outcome, reason, source,
                            verdict_ids=used, scores=decision.scores, inferred=inferred, origin=origin)

    def media_result(self, work: Work, outcome: str, accept: bool, reason: str) -> Result:
        return self.result(work, "accept" if accept else "reject", outcome, reason, "media")

    def unavailable(self, work: Work, why: str, decision: Decision | None, *, busy: bool = False) -> Result:
        """Undecided: the matching verdicts that did not count (``decision``, when the caller decided on the
        candidates) and the lookups that gave nothing come first (they are usually what the admin must fix),
        then why nothing else could decide."""
        notes = [*(unused_lines(decision.unused) if decision is not None else ()), *work.lookup_problems]
        if decision is not None:
            self.log_notes(work, decision)
        elif work.lookup_problems:
            log.info("%s %s: %s", work.source, work.sha256[:16], "; ".join(work.lookup_problems))
        reason = "; ".join([*notes, why, f"pictrs.on_unavailable is {self.config.pictrs.on_unavailable}"])
        return self.result(work, self.answer("unknown"), "unknown", reason, "unavailable", busy=busy)

    def log_notes(self, work: Work, decision: Decision) -> None:
        """One log line naming the peers and rules behind verdicts that matched and did not count, and the
        lookups that gave nothing: what the admin reads when an answer is not what a peer said."""
        notes = [*unused_lines(decision.unused), *work.lookup_problems]
        if notes:
            log.info("%s %s: %s", work.source, work.sha256[:16], "; ".join(notes))

    def media_rules(self, result: Result) -> Result:
        """``media.on_trailing_data: reject``: refuse an upload carrying more than ``max_trailing_bytes``
        after the image's end marker (a ZIP glued to a JPEG), whatever decided it. Only the pict-rs answer
        changes: the outcome (what sweeps act on) and the verdict stay as decided."""
        media = self.config.media
        trailing = (result.media_flags or {}).get("trailing_bytes", 0)
        if media.on_trailing_data != "reject" or trailing <= media.max_trailing_bytes or result.decision == "reject":
            return result
        reason = (f"{result.reason}; {trailing} bytes of trailing data after the image (media.on_trailing_data "
                  f"is reject above media.max_trailing_bytes, {media.max_trailing_bytes})")
        return replace(result, decision="reject", reason=reason)

    def result(self, work: Work, decision: Answer, outcome: str, reason: str, source: Source, *,
                verdict_ids: tuple[str, ...] = (), scores: dict | None = None, inferred: bool = False,
                origin: str | None = None, bank: str | None = None, busy: bool = False) -> Result:
        elapsed = asyncio.get_running_loop().time() - work.started
        return Result(decision=decision, outcome=outcome, reason=reason, source=source, sha256=work.sha256,
                      fingerprint=work.fingerprint, verdict_ids=verdict_ids,
                      scores=dict(scores) if scores is not None else None, inferred=inferred,
                      elapsed_ms=elapsed * 1000.0, media_format=work.media_format, origin=origin,
                      media_flags=dict(work.media_flags) if work.media_flags is not None else None, bank=bank,
                      busy=busy)

    def record(self, work: Work, result: Result) -> None:
        metrics = self.metrics
        metrics.child(metrics.images, result.outcome, result.source).inc()
        metrics.child(metrics.pipeline_seconds, result.source).observe(result.elapsed_ms / 1000.0)
        if result.source == "peer":
            metrics.child(metrics.peer_decisions, result.origin or "unknown").inc()
        self.store.record_decision(
            source=work.source, source_key=work.source_key, decision=result.decision, reason=result.reason,
            origin=result.source, fingerprint=result.fingerprint, sha256=result.sha256,
            pixel_sha256=work.pixel_sha256, media_type=work.media_type, verdict_ids=result.verdict_ids,
            inferred=result.inferred, elapsed_ms=result.elapsed_ms, verdict_origin=result.origin,
            media_flags=result.media_flags)
