"""One image in, one decision out (docs/architecture.md draws the flow), without HTTP (pict-rs hook, sweeps and
`check` all call `Pipeline.check`).

    bytes -> [node.bank_check] sha256 / md5 in a hash bank: block (no decode)
          -> exact keys (no decode) -> stored verdicts -> policy
          -> decode -> video / unreadable per config
          -> fingerprint -> [node.bank_check] PDQ / pHash in a hash bank: block -> perceptual index -> policy
          -> [node.lookup_peers] -> policy
          -> inference (singleflight per sha256, bounded by the budget) -> sign own verdict -> store
             -> [node.on_own_verdict] -> policy -> answer

Every answer comes within the budget: when there is no classifier, its queue is full, or the budget
runs out, an undecided image gets `on_unavailable` (reject by default) and source "unavailable"; an
inference that finishes late still stores its verdict, so the next upload of that image is a cache hit.

An answer that falls back to on_unavailable or to inference says which verdicts matched and did not count
(the policy's ``Decision.unused``: issuer and rule) and which lookup peers gave no usable answer, in its
reason and in one log line. Every answer carries the media flags a walk or a decode found (trailing data,
truncation, animation); ``media.on_trailing_data: reject`` turns an accept into a reject when more than
``media.max_trailing_bytes`` follow the image, whatever decided it (the outcome, what sweeps act on, stays).
A hash bank acts like a block-only source that never becomes a verdict: its match blocks before inference and
is recorded (the bank's name and the matched entry) but nothing is signed, stored as a verdict or published.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from node.answers import REPORTED_FLAGS, Answers, Result, Source, Work, matches
from node.config import is_model_none
from node.policy import PERCEPTUAL_BITS, Candidate, Decision, PolicyConfig, decide, label_for
from node.store import StoredVerdict
from protocol.verdict import Fingerprint, Verdict, new_verdict_id, sign_verdict, utc_timestamp
from scanners import fingerprint as fingerprinting
from scanners.batching import QueueFull
from scanners.classifier import Classification
from scanners.media import decode, walk, walk_flags

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger("verdict_node.pipeline")


# Bodies above this are hashed in a worker thread, so one big upload does not stall the event loop.
_INLINE_HASH_BYTES = 256 * 1024
# Exact-key decisions remembered (sha256 -> answer) until a verdict or the policy changes.
_MEMO_SIZE = 100_000
# Margin kept from the budget to write the answer.
_ANSWER_MARGIN = 0.05
@dataclass
class _Inference:
    """The outcome of one shared inference: own scores and the verdict that records them."""

    classification: Any
    verdict: Verdict
    document: dict


@dataclass(frozen=True, slots=True)
class _Memo:
    """An exact-key decision, valid while the store's verdicts (``generation``) and the policy are the ones
    it was made with."""

    generation: int
    policy: PolicyConfig
    outcome: str
    reason: str
    source: Source
    verdict_ids: tuple[str, ...]
    scores: dict[str, float] | None
    match: str
    pixel_sha256: str | None
    origin: str | None
    media_flags: dict[str, Any] | None

    def valid_for(self, generation: int, policy: PolicyConfig) -> bool:
        return self.generation == generation and self.policy is policy


class Pipeline:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.answers = Answers(node.config, node.metrics, node.store)
        self._inflight: dict[str, asyncio.Task] = {}
        self._memo: dict[str, _Memo] = {}

    # -- public ----------------------------------------------------------------------------------

    async def check(self, data: bytes, *, source: str = "pictrs", source_key: str | None = None,
                    media_type: str | None = None, budget: float | None = None) -> Result:
        """Decide for one image within `budget` seconds (default: pictrs.budget_seconds) and record it."""
        loop = asyncio.get_running_loop()
        budget = self.node.config.pictrs.budget_seconds if budget is None else budget
        started = loop.time()
        work = Work(data, source, source_key, media_type, started, started + budget - _ANSWER_MARGIN)
        try:
            result = self.answers.media_rules(await self._check(work))
        except Exception as e:  # noqa: BLE001 - a bug here must still give a chosen answer, not a 500
            log.exception("pipeline failed for %s", work.sha256 or "an image")
            result = self._unavailable(work, f"internal error: {type(e).__name__}", explain=False)
        self.answers.record(work, result)
        return result

    async def drain(self) -> None:
        """Wait for running inferences (their verdicts are stored even if every caller gave up)."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- stages ----------------------------------------------------------------------------------

    async def _check(self, work: Work) -> Result:
        node = self.node
        loop = asyncio.get_running_loop()
        big = len(work.data) > _INLINE_HASH_BYTES
        if big:
            work.sha256 = await loop.run_in_executor(node.executor, _sha256_hex, work.data)
        else:
            work.sha256 = _sha256_hex(work.data)

        # 0. the same bytes decided a moment ago, with the same verdicts and policy: same answer.
        memo = self._memo.get(work.sha256)
        if memo is not None and memo.valid_for(node.store.generation, node.policy):
            work.pixel_sha256, work.media_flags = memo.pixel_sha256, memo.media_flags
            node.metrics.child(node.metrics.cache_hits, memo.source, memo.match).inc()
            return self.answers.result(work, self.answers.answer(memo.outcome), memo.outcome, memo.reason, memo.source,
                                verdict_ids=memo.verdict_ids, scores=memo.scores, origin=memo.origin)

        # 0b. the bytes in a hash bank (sha256, md5): blocked before anything is decoded. (A memoised decision
        #     is only reused while nothing changed, banks included: their changes bump the store's generation.)
        banks = node.bank_check
        if banks is not None:
            if big:
                hit = await loop.run_in_executor(node.executor, banks.match_bytes, work.sha256, work.data)
            else:
                hit = banks.match_bytes(work.sha256, work.data)
            if hit is not None:
                return self.answers.bank(work, hit)

        # 1. exact keys, no decode: the hot path for images seen before. Bytes we classified ourselves
        #    need no pixel key: the store knows it from our verdict. One walk of the container (no decode)
        #    gives the pixel key when it is needed, and the media flags of the answer.
        hits, complete = node.store.find_by_bytes(work.sha256)
        if not complete:
            work.pixel_sha256, work.media_flags = await self._walk(work, want_pixel_key=True)
            hits = node.store.find_exact(work.sha256, work.pixel_sha256) if work.pixel_sha256 else hits
        else:
            work.pixel_sha256 = next((h.verdict.fingerprint.pixel_sha256 for h in hits if h.own), None)
        for hit in hits:
            work.candidates[hit.rowid] = Candidate(hit.verdict, hit.match, 0, hit.own)
        if work.candidates:
            decision = decide(node.policy, list(work.candidates.values()), own_model=node.model)
            if decision.outcome == "allow" and banks is not None:
                # Verdicts on these very pixels carry their perceptual hashes: a bank imported after they were
                # made still blocks the image.
                known = [c.verdict.fingerprint for c in work.candidates.values()]
                hit = banks.match_perceptual(next((f for f in known if f.pdq256), known[0]))
                if hit is not None:
                    return self.answers.bank(work, hit)
            if decision.outcome != "unknown":
                if work.media_flags is None:
                    work.media_flags = (await self._walk(work, want_pixel_key=False))[1]
                result = self.answers.from_decision(work, decision)
                self._remember(work, result)
                return result

        # 2. decode (never raises) and fingerprint, off the event loop.
        limits = node.config.media_limits()
        media, fp, problem = await loop.run_in_executor(node.executor, _decode_and_fingerprint, work.data, limits)
        work.media_format = media.format
        work.media_flags = {k: media.flags[k] for k in REPORTED_FLAGS if k in media.flags}
        if media.outcome == "video":
            accept = node.config.media.on_video == "accept"
            return self.answers.media_result(work, "video", accept, f"video ({media.format or 'unknown format'}) is not "
                                      f"classified; media.on_video is {node.config.media.on_video}")
        if fp is None:
            accept = node.config.media.on_unreadable == "accept"
            return self.answers.media_result(work, "unreadable", accept, f"unreadable: {problem}; media.on_unreadable is "
                                      f"{node.config.media.on_unreadable}")
        work.fingerprint = fp
        if banks is not None:
            hit = banks.match_perceptual(fp)
            if hit is not None:
                return self.answers.bank(work, hit)

        # 3. perceptual neighbours (block verdicts reuse on these; safe ones only if the admin opted in).
        self._add_perceptual_candidates(work)
        decision = self._decide(work)
        if decision.outcome != "unknown":
            return self.answers.from_decision(work, decision)

        # 4. peers (federation plugs in here).
        if node.lookup_peers is not None and loop.time() < work.deadline:
            await self._ask_peers(work)
            decision = self._decide(work)
            if decision.outcome != "unknown":
                return self.answers.from_decision(work, decision)

        # 4b. bytes the admin released as a false positive (`verdict-node release`): not classified (and
        #     published) again; sweeps check the same overrides.
        if node.store.released(work.sha256, work.fingerprint.pixel_sha256):
            return self.answers.result(work, "accept", "allow", "released as a false positive by the admin", "cache")

        # 4c. retracted verdicts on the exact keys never count; the policy lists them, so an answer that
        #     falls back says a verdict matched and was retracted (not that nothing was known).
        for hit, why in node.store.find_exact_retracted(work.sha256, work.fingerprint.pixel_sha256):
            work.candidates.setdefault(hit.rowid, Candidate(hit.verdict, hit.match, 0, hit.own, retracted=why))

        # 5. our own scores: an earlier own verdict of the current model, or inference now.
        own_hit = self._own_current_verdict(work)
        if own_hit is not None:
            return self._from_own_verdict(work, own_hit.verdict)
        return await self._infer_and_decide(work, media.frames)

    async def _walk(self, work: Work, *, want_pixel_key: bool) -> tuple[str | None, dict[str, Any]]:
        """One walk of the container (no decode): the pixel key if wanted, and the media flags; big bodies
        are walked off the event loop."""
        if len(work.data) > _INLINE_HASH_BYTES:
            return await asyncio.get_running_loop().run_in_executor(self.node.executor, _walk_keys, work.data,
                                                                    want_pixel_key)
        return _walk_keys(work.data, want_pixel_key)

    def _unavailable(self, work: Work, why: str, *, explain: bool = True, busy: bool = False) -> Result:
        """Undecided; ``explain=False`` after an internal error: nothing more is computed; ``busy``: the
        classifier's queue was full (a sweep waits and asks again)."""
        return self.answers.unavailable(work, why, self._decide(work) if explain and work.candidates else None,
                                        busy=busy)

    def _decide(self, work: Work) -> Decision:
        return decide(self.node.policy, list(work.candidates.values()), own_model=self.node.model)

    def _add_perceptual_candidates(self, work: Work) -> None:
        node, fp, policy = self.node, work.fingerprint, self.node.policy
        assert fp is not None
        hits: list[tuple[int, str, int]] = []
        if fp.phash64:
            radius = max(policy.block_phash_distance, policy.safe_phash_distance if policy.reuse_safe_perceptual else 0)
            hits += [(ref, "phash64", d) for ref, d in node.phash_index.search(fp.phash64, radius)]
        if fp.pdq256:
            radius = max(policy.block_pdq_distance, policy.safe_pdq_distance if policy.reuse_safe_perceptual else 0)
            hits += [(ref, "pdq256", d) for ref, d in node.pdq_index.search(fp.pdq256, radius)]
        fresh = [h for h in hits if h[0] not in work.candidates]
        if not fresh:
            return
        stored = node.store.verdicts_by_rowid(ref for ref, _, _ in fresh)
        for ref in dict.fromkeys(ref for ref, _, _ in fresh):
            hit = stored.get(ref)
            # Perceptual hashes from another preprocessing recipe are not comparable (_candidate says None).
            candidate = _candidate(fp, hit.verdict, hit.own) if hit is not None else None
            if candidate is not None:
                # An exact match here was stored since our exact lookup (a twin request's inference).
                work.candidates[ref] = candidate

    async def _ask_peers(self, work: Work) -> None:
        node, fp = self.node, work.fingerprint
        assert fp is not None and node.lookup_peers is not None
        loop = asyncio.get_running_loop()
        try:
            answers = await asyncio.wait_for(node.lookup_peers(fp, work.deadline),
                                             max(0.0, work.deadline - loop.time()))
        except asyncio.TimeoutError:
            work.lookup_problems = ("lookup peers gave no answer within the pict-rs budget",)
            return
        except Exception:  # noqa: BLE001 - a peer problem must not fail an upload
            log.exception("peer lookup failed for %s", fp.sha256)
            work.lookup_problems = ("lookup failed (this node's log has the detail)",)
            return
        work.lookup_problems = tuple(answers.problems)
        for verdict, document in answers.verdicts:
            if verdict.issuer == node.actor_id:
                continue  # our own verdicts come only from our store
            rowid, inserted = node.add_verdict(verdict, document, own=False, origin="lookup")
            if inserted:
                node.metrics.peer_verdicts_stored.inc()
            candidate = _candidate(fp, verdict, False)
            if candidate is not None:
                work.candidates[rowid] = candidate

    def _own_current_verdict(self, work: Work) -> StoredVerdict | None:
        """An own verdict on an exact key made by the model we run now: its scores are what inference would
        say again, so we do not pay for it twice (e.g. when the policy wanted more than it gave)."""
        model = self.node.model
        if model is None:
            return None
        for rowid, c in work.candidates.items():
            if c.own and c.retracted is None and c.match in ("sha256", "pixel_sha256") and c.verdict.model == model:
                return StoredVerdict(rowid, c.verdict, True, c.match)
        return None

    def _from_own_verdict(self, work: Work, verdict: Verdict) -> Result:
        """Decide with a stored own verdict's scores standing in for inference (same model, same answer)."""
        decision = decide(self.node.policy, list(work.candidates.values()),
                          own=Classification(scores=dict(verdict.scores)), own_model=self.node.model)
        return self.answers.from_decision(work, decision, forced_source="cache", own_verdict=verdict)

    async def _infer_and_decide(self, work: Work, frames: Sequence[Any]) -> Result:
        node = self.node
        loop = asyncio.get_running_loop()
        if node.backend is None:
            model = node.config.classifier.model
            why = "classifier.model is none" if is_model_none(model) else f"{model} is not loaded, see /healthz"
            return self._unavailable(work, f"no classifier ({why})")
        task = self._inflight.get(work.sha256)
        if task is None:
            # A twin request may have finished its inference while we were decoding: use its verdict.
            for hit in node.store.find_exact(work.sha256, work.pixel_sha256):
                work.candidates[hit.rowid] = Candidate(hit.verdict, hit.match, 0, hit.own)  # exact beats perceptual
            own_hit = self._own_current_verdict(work)
            if own_hit is not None:
                return self._from_own_verdict(work, own_hit.verdict)
            task = loop.create_task(self._infer(work.fingerprint, list(frames)), name=f"infer-{work.sha256[:12]}")
            self._inflight[work.sha256] = task
            task.add_done_callback(lambda t, key=work.sha256: self._forget(key, t))
        remaining = work.deadline - loop.time()
        try:
            inference = await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        except asyncio.TimeoutError:
            node.metrics.inference_failures.labels("budget").inc()
            return self._unavailable(work, f"classification did not finish within the "
                                           f"{node.config.pictrs.budget_seconds:g} s budget")
        except _QueueFullError as e:
            return self._unavailable(work, str(e), busy=e.passes)
        except Exception as e:  # noqa: BLE001 - a model error is an unavailable classifier, not a crash
            return self._unavailable(work, f"classification failed: {type(e).__name__}: {e}")
        decision = decide(node.policy, list(work.candidates.values()), own=inference.classification,
                          own_model=inference.verdict.model)
        return self.answers.from_decision(work, decision, forced_source="inference", own_verdict=inference.verdict,
                                   inferred=True)

    def _remember(self, work: Work, result: Result) -> None:
        """Memoise an exact-key decision; valid while the store's verdicts and the policy are unchanged."""
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()  # simple and bounded; re-filled by the next requests
        found = matches(work, result.verdict_ids)
        match = next((m for m in ("sha256", "pixel_sha256") if m in found), "sha256")
        self._memo[work.sha256] = _Memo(self.node.store.generation, self.node.policy, result.outcome, result.reason,
                                        result.source, result.verdict_ids, result.scores, match, work.pixel_sha256,
                                        result.origin, work.media_flags)

    def _forget(self, key: str, task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # marks it retrieved, so asyncio does not log "never retrieved"; callers saw it

    async def _infer(self, fp: Fingerprint | None, frames: list[Any]) -> _Inference:
        """Classify, sign, store, index, publish: runs to the end even if every caller stopped waiting."""
        node = self.node
        backend = node.backend
        assert fp is not None and backend is not None
        try:
            classification = await backend.classify_frames(frames)
        except QueueFull as e:
            node.metrics.inference_failures.labels("queue_full").inc()
            raise _QueueFullError(f"{e.summary} ({e})", passes=e.passes) from None
        except Exception:
            node.metrics.inference_failures.labels("error").inc()
            raise
        node.metrics.inference_images.inc()
        scores = {k: float(v) for k, v in classification.scores.items()}
        verdict = Verdict(id=new_verdict_id(node.actor_id), issuer=node.actor_id, fingerprint=fp, scores=scores,
                          label=label_for(scores, node.policy.thresholds), model=backend.model,
                          published=utc_timestamp())
        document = sign_verdict(verdict, node.ed25519_key, node.ed25519_key_id)
        node.add_verdict(verdict, document, own=True)
        node.metrics.own_verdicts.inc()
        await node.emit_own_verdict(verdict, document)
        return _Inference(classification, verdict, document)

class _QueueFullError(Exception):
    """QueueFull, re-raised under our name so the waiting callers can tell it from a model error."""

    def __init__(self, message: str, *, passes: bool) -> None:
        super().__init__(message)
        self.passes = passes


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _walk_keys(data: bytes, want_pixel_key: bool) -> tuple[str | None, dict[str, Any]]:
    """(the metadata-insensitive key, or None when not wanted or the bytes are no image; the media flags a
    walk tells) from one walk of the container, without decoding pixels where the format allows. Never raises."""
    try:
        structure = walk(data)
    except Exception:  # noqa: BLE001 - hostile bytes have only their byte key, and no flags
        return None, {}
    flags = walk_flags(structure, len(data))
    if not want_pixel_key:
        return None, flags
    try:
        return fingerprinting.pixel_sha256(data, structure), flags
    except Exception:  # noqa: BLE001 - hostile bytes have only their byte key
        return None, flags


def _decode_and_fingerprint(data: bytes, limits: Any) -> tuple[Any, Fingerprint | None, str | None]:
    """Runs in a worker thread. Never raises: a hostile body becomes (media, None, why)."""
    media = decode(data, limits)
    if media.outcome != "image":
        return media, None, media.reason or media.outcome
    try:
        return media, fingerprinting.fingerprint(data, media), None
    except Exception as e:  # noqa: BLE001 - Unreadable or a decoder bug: recorded as unreadable, never CSAM
        return media, None, f"{type(e).__name__}: {e}"


def _candidate(ours: Fingerprint, theirs: Verdict, own: bool) -> Candidate | None:
    """How a verdict's fingerprint matches ours: an exact key, else every perceptual hash both carry (the
    policy needs them all to refuse a forged single-hash collision); None when nothing is comparable."""
    fp = theirs.fingerprint
    if fp.sha256 == ours.sha256:
        return Candidate(theirs, "sha256", 0, own)
    if fp.pixel_sha256 == ours.pixel_sha256:
        return Candidate(theirs, "pixel_sha256", 0, own)
    if fp.preprocessing != ours.preprocessing:
        return None
    distances: dict[str, int] = {}
    if fp.phash64 and ours.phash64:
        distances["phash64"] = fingerprinting.hamming(fp.phash64, ours.phash64)
    if fp.pdq256 and ours.pdq256:
        distances["pdq256"] = fingerprinting.hamming(fp.pdq256, ours.pdq256)
    if not distances:
        return None
    kind = min(distances, key=lambda k: distances[k] / PERCEPTUAL_BITS[k])  # the closest, relative to its bits
    return Candidate(theirs, kind, distances[kind], own, distances=distances)  # type: ignore[arg-type]
