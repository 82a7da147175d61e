"""Own thresholds + per-peer trust + candidate verdicts (+ own fresh scores) -> block / allow / unknown.

Pure: no I/O, no clock, no globals. The caller (node/pipeline.py) finds the candidate verdicts (store + index),
drops retracted and superseded ones, and passes them in with how each matched; this module only decides, and
says why in one human-readable line.

The rules, and why:

* **Any trusted block blocks.** A false negative (CSAM stored and served) is the worse error, so own inference,
  an own verdict or a trusted peer's verdict that blocks under our thresholds wins over every safe signal,
  including own fresh inference that says safe. Retractions are the remedy for a peer's false positive.
* **Reuse is asymmetric.** A block verdict counts on an exact key (sha256, pixel_sha256) or a perceptual match
  (pHash <= 8 of 64, PDQ <= 31 of 256). A safe verdict counts only on an exact key, because a perceptual hash
  can be shaped by an attacker to collide with a known-safe image. Admins may opt in
  (``reuse_safe_perceptual``) with tighter distances: pHash <= 2, PDQ <= 10 by default. Those defaults sit
  where re-encodes and resizes land (measured on photos: PDQ moves 2 bits for a JPEG q30 re-encode and 14 for
  a 50 % resize; pHash 0 for both) while staying far from the block radii.
* **Safe means "vouches for every category we block on".** A verdict (or own inference) is safe only if it
  carries a finite score for every category with a threshold and all are below it: a verdict without ``csam``
  (e.g. from open_nsfw) cannot say an image is not CSAM. Non-finite scores count as missing.
* **Trust is per peer.** ``full``: its block and safe verdicts count; ``block-only``: only its blocks;
  ``observe``: never acted on, only listed in ``Decision.observed``. Issuers neither own nor listed never
  count. A peer's ``thresholds`` replace ours (all categories at once) for that peer's scores.
* **Peers' safe verdicts may need a quorum** of distinct ``full`` issuers (``safe_quorum``); one own safe
  verdict always suffices.
* **Model identity is (name, rules)**, not version: ``name`` fixes the weights and ``rules`` the concept lists
  and thresholds that turn similarities into scores; ``version`` is the implementation's release, which must
  not change scores for the same (name, rules) and so must not make every cached verdict unusable after an
  upgrade. A verdict whose model is not known (``known_models``, the peer's ``known_models``, or ``own_model``)
  is not compared with thresholds unless ``compare_unknown_models`` is set. Own fresh inference is always
  trusted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Protocol, Sequence

from node.config import NodeConfig, PeerEntry, PeerThresholds, ThresholdsSection
from protocol.verdict import CATEGORIES, ModelInfo, Verdict

Outcome = Literal["block", "allow", "unknown"]
Source = Literal["cache", "peer", "inference"]
MatchKind = Literal["sha256", "pixel_sha256", "phash64", "pdq256"]
TrustLevel = Literal["full", "block-only", "observe"]
ModelKey = tuple[str, str]

EXACT_MATCHES: frozenset[str] = frozenset({"sha256", "pixel_sha256"})
PERCEPTUAL_BITS: Mapping[str, int] = {"phash64": 64, "pdq256": 256}
TRUST_LEVELS: tuple[str, ...] = ("full", "block-only", "observe")
# Labels are descriptive (what the image is), not a decision: a category without a threshold still gets the
# reference rule set's boundary, so a node that does not block nsfw still tells peers that an image is nsfw.
LABEL_BOUNDARY = 0.5


class Scored(Protocol):
    """What decide() needs of scanners.classifier.Classification: its merged per-category scores."""

    scores: Mapping[str, float]


def model_key(model: ModelInfo) -> ModelKey:
    """The identity under which scores are comparable: (name, rules); see the module docstring."""
    return (model.name, model.rules)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Score at or above which a category blocks; None = the category never blocks."""

    csam: float | None = 0.5
    nsfw: float | None = None
    underage: float | None = None

    def __post_init__(self) -> None:
        for category, value in self.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold {category}: must be a number in [0, 1] or None, got {value!r}")

    def items(self) -> list[tuple[str, float]]:
        """The categories that block, with their thresholds, in CATEGORIES order."""
        return [(c, getattr(self, c)) for c in CATEGORIES if getattr(self, c) is not None]


@dataclass(frozen=True, slots=True)
class PeerTrust:
    """How far one peer is trusted. ``thresholds`` (if set) replace ours for this peer's scores;
    ``known_models`` adds (name, rules) pairs whose scores we compare when they come from this peer."""

    level: TrustLevel = "full"
    thresholds: Thresholds | None = None
    known_models: frozenset[ModelKey] = frozenset()

    def __post_init__(self) -> None:
        if self.level not in TRUST_LEVELS:
            raise ValueError(f"trust level must be one of {', '.join(TRUST_LEVELS)}, got {self.level!r}")
        object.__setattr__(self, "known_models", frozenset(_as_model_keys(self.known_models)))


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    peers: Mapping[str, PeerTrust] = field(default_factory=dict)
    known_models: frozenset[ModelKey] = frozenset()
    reuse_safe_perceptual: bool = False
    safe_phash_distance: int = 2
    block_phash_distance: int = 8
    block_pdq_distance: int = 31
    safe_pdq_distance: int = 10
    safe_quorum: int = 1
    compare_unknown_models: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "known_models", frozenset(_as_model_keys(self.known_models)))
        for name, bits in (("safe_phash_distance", 64), ("block_phash_distance", 64),
                           ("safe_pdq_distance", 256), ("block_pdq_distance", 256)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bits:
                raise ValueError(f"{name}: must be an integer in [0, {bits}], got {value!r}")
        if isinstance(self.safe_quorum, bool) or not isinstance(self.safe_quorum, int) or self.safe_quorum < 1:
            raise ValueError(f"safe_quorum: must be an integer >= 1, got {self.safe_quorum!r}")
        for issuer, trust in self.peers.items():
            if not isinstance(trust, PeerTrust):
                raise ValueError(f"peers[{issuer!r}]: must be a PeerTrust, got {type(trust).__name__}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored verdict that matched the image, and how: ``distance`` is the Hamming distance for perceptual
    matches and 0 for exact ones. ``own``: issued by this node."""

    verdict: Verdict
    match: MatchKind
    distance: int
    own: bool

    def __post_init__(self) -> None:
        if self.match not in EXACT_MATCHES and self.match not in PERCEPTUAL_BITS:
            raise ValueError(f"match must be sha256, pixel_sha256, phash64 or pdq256, got {self.match!r}")
        bits = PERCEPTUAL_BITS.get(self.match, 0)
        if isinstance(self.distance, bool) or not isinstance(self.distance, int) or not 0 <= self.distance <= bits:
            raise ValueError(f"distance for a {self.match} match must be an integer in [0, {bits}], "
                             f"got {self.distance!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """``used``: the verdicts the outcome rests on. ``scores``: the deciding scores (own inference, or the
    per-category maximum over ``used``). ``observed``: verdicts of ``observe`` peers that matched, for the
    record; they never influence the outcome."""

    outcome: Outcome
    reason: str
    source: Source | None
    used: tuple[Verdict, ...] = ()
    scores: dict[str, float] | None = None
    observed: tuple[Verdict, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# Assessing one set of scores


Assessment = Literal["block", "safe", "incomplete"]


def _score(scores: Mapping[str, float], category: str) -> float | None:
    value = scores.get(category)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def assess(scores: Mapping[str, float], thresholds: Thresholds) -> tuple[Assessment, str]:
    """block if any thresholded category reaches its threshold; safe if every thresholded category is present
    and below; otherwise incomplete (cannot vouch). The text names the deciding categories and figures."""
    blocking, missing, below = [], [], []
    for category, threshold in thresholds.items():
        value = _score(scores, category)
        if value is None:
            missing.append(category)
        elif value >= threshold:
            blocking.append(f"{category} {value:.3f} >= {threshold:g}")
        else:
            below.append(f"{category} {value:.3f} < {threshold:g}")
    if blocking:
        return "block", ", ".join(blocking)
    if missing:
        return "incomplete", f"no score for {', '.join(missing)}"
    return "safe", ", ".join(below) if below else "no category has a threshold"


def blocks(scores: Mapping[str, float], thresholds: Thresholds) -> bool:
    return assess(scores, thresholds)[0] == "block"


def label_for(scores: Mapping[str, float], thresholds: Thresholds) -> str:
    """The advisory label of an own verdict: "csam" or "nsfw" when that category reaches our threshold (or the
    reference boundary 0.5 where we set none), else "safe". ``underage`` alone has no label of its own; receivers
    decide on the scores anyway."""
    for category in ("csam", "nsfw"):
        value = _score(scores, category)
        threshold = getattr(thresholds, category)
        if value is not None and value >= (LABEL_BOUNDARY if threshold is None else threshold):
            return category
    return "safe"


# ---------------------------------------------------------------------------------------------------------------
# Deciding


@dataclass(frozen=True, slots=True)
class _Judged:
    candidate: Candidate
    who: str             # "own" or "<issuer> (<level>)", for the reason
    assessment: Assessment
    detail: str


def decide(config: PolicyConfig, candidates: Sequence[Candidate], own: Scored | None = None,
           own_model: ModelInfo | None = None) -> Decision:
    """Decide for one image. ``own``: fresh own inference (always trusted, compared with our thresholds);
    ``own_model``: the model behind it, also accepted as a known model for cached verdicts."""
    known = set(config.known_models)
    if own_model is not None:
        known.add(model_key(own_model))

    blocking: list[_Judged] = []
    safe_own: list[_Judged] = []
    safe_peer: list[_Judged] = []
    observed: list[Verdict] = []
    skipped: list[str] = []

    for candidate in candidates:
        verdict = candidate.verdict
        if candidate.own:
            trust, who, thresholds = None, "own", config.thresholds
        else:
            trust = config.peers.get(verdict.issuer)
            if trust is None:
                skipped.append(f"{_ref(verdict)}: issuer {verdict.issuer} is not a peer")
                continue
            if trust.level == "observe":
                observed.append(verdict)
                continue
            who = f"{verdict.issuer} ({trust.level})"
            thresholds = trust.thresholds if trust.thresholds is not None else config.thresholds
        peer_models = trust.known_models if trust is not None else frozenset()
        key = model_key(verdict.model)
        if not (config.compare_unknown_models or key in known or key in peer_models):
            skipped.append(f"{_ref(verdict)}: model {key[0]} rules {key[1]} is not known")
            continue
        assessment, detail = assess(verdict.scores, thresholds)
        judged = _Judged(candidate, who, assessment, detail)
        if assessment == "block":
            if _block_match_ok(config, candidate):
                blocking.append(judged)
            else:
                skipped.append(f"{_ref(verdict)}: blocks but {_match_text(candidate)} is beyond the block radius")
        elif assessment == "safe":
            if trust is not None and trust.level != "full":
                skipped.append(f"{_ref(verdict)}: safe, but {verdict.issuer} is trusted for blocks only")
            elif not _safe_match_ok(config, candidate):
                why = ("perceptual reuse of safe verdicts is off" if not config.reuse_safe_perceptual
                       else "beyond the safe radius")
                skipped.append(f"{_ref(verdict)}: safe, matched by {_match_text(candidate)} ({why})")
            else:
                (safe_own if candidate.own else safe_peer).append(judged)
        else:
            skipped.append(f"{_ref(verdict)}: {detail}")

    own_assessment: tuple[Assessment, str] | None = None
    if own is not None:
        own_assessment = assess(own.scores, config.thresholds)
        if own_assessment[0] == "block":
            return Decision("block", f"block: own inference{_model_text(own_model)}: {own_assessment[1]}",
                            "inference", (), dict(own.scores), tuple(observed))

    if blocking:
        blocking.sort(key=lambda j: (not j.candidate.own, j.candidate.distance))
        first = blocking[0]
        reason = f"block: {_judged_text(first)}"
        if len(blocking) > 1:
            reason += f" (and {len(blocking) - 1} more trusted block verdict(s))"
        if own_assessment is not None:
            reason += f"; overrides own inference ({own_assessment[1]})"
        used = tuple(j.candidate.verdict for j in blocking)
        return Decision("block", reason, "cache" if first.candidate.own else "peer", used,
                        _max_scores(used), tuple(observed))

    if own is not None and own_assessment is not None and own_assessment[0] == "safe":
        return Decision("allow", f"allow: own inference{_model_text(own_model)}: {own_assessment[1]}",
                        "inference", (), dict(own.scores), tuple(observed))

    if safe_own:
        safe_own.sort(key=lambda j: j.candidate.distance)
        first = safe_own[0]
        return Decision("allow", f"allow: {_judged_text(first)}", "cache", (first.candidate.verdict,),
                        dict(first.candidate.verdict.scores), tuple(observed))

    by_issuer: dict[str, _Judged] = {}
    for judged in sorted(safe_peer, key=lambda j: j.candidate.distance):
        by_issuer.setdefault(judged.candidate.verdict.issuer, judged)
    if by_issuer and len(by_issuer) >= config.safe_quorum:
        agreeing = list(by_issuer.values())
        reason = f"allow: {_judged_text(agreeing[0])}"
        if len(agreeing) > 1:
            reason += f"; {len(agreeing)} trusted peers agree (quorum {config.safe_quorum})"
        used = tuple(j.candidate.verdict for j in agreeing)
        return Decision("allow", reason, "peer", used, _max_scores(used), tuple(observed))

    notes = []
    if own_assessment is not None:
        notes.append(f"own inference cannot vouch: {own_assessment[1]}")
    if by_issuer:
        notes.append(f"{len(by_issuer)} trusted peer(s) say safe, quorum is {config.safe_quorum}")
    notes.extend(skipped)
    if observed:
        notes.append(f"{len(observed)} observed verdict(s) not acted on")
    reason = "unknown: no usable verdict" + (f" ({'; '.join(notes)})" if notes else "")
    return Decision("unknown", reason, None, (), None, tuple(observed))


def _block_match_ok(config: PolicyConfig, candidate: Candidate) -> bool:
    if candidate.match in EXACT_MATCHES:
        return True
    limit = config.block_phash_distance if candidate.match == "phash64" else config.block_pdq_distance
    return candidate.distance <= limit


def _safe_match_ok(config: PolicyConfig, candidate: Candidate) -> bool:
    if candidate.match in EXACT_MATCHES:
        return True
    if not config.reuse_safe_perceptual:
        return False
    limit = config.safe_phash_distance if candidate.match == "phash64" else config.safe_pdq_distance
    return candidate.distance <= limit


def _max_scores(verdicts: Iterable[Verdict]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for verdict in verdicts:
        for category, value in verdict.scores.items():
            if _score(verdict.scores, category) is not None:
                merged[category] = max(merged.get(category, value), value)
    return merged


def _ref(verdict: Verdict) -> str:
    return f"verdict {verdict.id}"


def _match_text(candidate: Candidate) -> str:
    if candidate.match in EXACT_MATCHES:
        return candidate.match
    return f"{candidate.match} distance {candidate.distance}"


def _model_text(model: ModelInfo | None) -> str:
    return "" if model is None else f" ({model.name}, rules {model.rules})"


def _judged_text(judged: _Judged) -> str:
    verdict = judged.candidate.verdict
    owner = "own verdict" if judged.who == "own" else f"verdict of {judged.who}"
    return (f"{owner} {verdict.id} matched by {_match_text(judged.candidate)}, "
            f"model {verdict.model.name} rules {verdict.model.rules}: {judged.detail}")


def _as_model_keys(models: Iterable[ModelKey | ModelInfo]) -> Iterable[ModelKey]:
    """Accept ModelInfo or (name, rules) pairs, so config code can pass either."""
    for model in models:
        if isinstance(model, ModelInfo):
            yield model_key(model)
        elif isinstance(model, tuple) and len(model) == 2 and all(isinstance(p, str) for p in model):
            yield model
        else:
            raise ValueError(f"known_models: expected (name, rules) or ModelInfo, got {model!r}")


# -- from node.yaml and peers.yaml ------------------------------------------------------------------------

def _model_keys(refs: list[str]) -> frozenset[tuple[str, str]]:
    """NAME@RULES strings -> policy's (name, rules) model keys."""
    keys = set()
    for ref in refs:
        name, _, rules = ref.rpartition("@")
        keys.add((name, rules))
    return frozenset(keys)


def thresholds_of(section: ThresholdsSection | PeerThresholds) -> Thresholds:
    return Thresholds(csam=section.csam, nsfw=section.nsfw, underage=section.underage)


def peer_trust_of(entry: PeerEntry, own: ThresholdsSection) -> PeerTrust:
    """PeerTrust for one peer; per-peer overrides fall back to our own value per category."""
    thresholds = None
    if entry.thresholds is not None:
        merged = ThresholdsSection(**{c: (getattr(entry.thresholds, c) if getattr(entry.thresholds, c) is not None
                                          else getattr(own, c)) for c in ("csam", "nsfw", "underage")})
        thresholds = thresholds_of(merged)
    return PeerTrust(level=entry.trust, thresholds=thresholds, known_models=_model_keys(entry.known_models))


def policy_config_of(config: NodeConfig, peers: Sequence[PeerEntry], own_model: ModelInfo | None = None,
                     own_models: Iterable[tuple[str, str]] = ()) -> PolicyConfig:
    """PolicyConfig from node.yaml's policy section and peers.yaml. `own_model` and `own_models` ((name,
    rules) pairs of models behind our stored verdicts) count as known models."""
    p = config.policy
    known = set(_model_keys(p.known_models)) | set(own_models)
    if own_model is not None:
        known.add((own_model.name, own_model.rules))
    return PolicyConfig(**{
        "thresholds": thresholds_of(p.thresholds),
        "peers": {e.actor: peer_trust_of(e, p.thresholds) for e in peers},
        "known_models": frozenset(known),
        "reuse_safe_perceptual": p.reuse_safe_perceptual,
        "safe_phash_distance": p.safe_phash_distance,
        "block_phash_distance": p.block_phash_distance,
        "block_pdq_distance": p.block_pdq_distance,
        "safe_pdq_distance": p.safe_pdq_distance,
        "safe_quorum": p.safe_quorum,
        "compare_unknown_models": p.compare_unknown_models,
    })
