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
* **A forged hash alone reuses nothing.** A 64-bit pHash is made to collide by adding a faint low-frequency
  pattern to any photo, so whoever holds one blocked image could get any picture blocked network-wide. When
  both sides carry both hashes, a block verdict is reused perceptually only when both are within their
  radius (``block_match: both``; ``either`` is the opt-in); with one hash present, that one counts. A safe
  verdict's perceptual reuse always needs every hash present within the safe radius.
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
* **A node without a model of its own compares under the issuer's model** (``use_issuer_models``): it has
  no scores of its own for a peer's to be measured against, so a ``full`` or ``block-only`` peer's verdict
  counts with the model that peer signed it with. What stays: ``observe`` peers and strangers never count,
  block-only peers' safe verdicts never count, and a node that has a model keeps the known_models rule.
* **Every verdict that matched and did not count says why** (``Decision.unused``: issuer, rule, the rule in
  words), so an answer names the peer and the rule instead of looking like "no classifier".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Protocol, Sequence

from node.config import NodeConfig, PeerEntry, PeerThresholds, ThresholdsSection, is_model_none
from protocol.verdict import CATEGORIES, ModelInfo, Verdict

Outcome = Literal["block", "allow", "unknown"]
Source = Literal["cache", "peer", "inference"]
MatchKind = Literal["sha256", "pixel_sha256", "phash64", "pdq256"]
TrustLevel = Literal["full", "block-only", "observe"]
BlockMatch = Literal["both", "either"]
UnusedRule = Literal["not_a_peer", "observe", "unknown_model", "cannot_vouch", "blocks_only", "too_far",
                     "safe_perceptual_off", "quorum", "retracted"]
ModelKey = tuple[str, str]

EXACT_MATCHES: frozenset[str] = frozenset({"sha256", "pixel_sha256"})
PERCEPTUAL_BITS: Mapping[str, int] = {"phash64": 64, "pdq256": 256}
TRUST_LEVELS: tuple[str, ...] = ("full", "block-only", "observe")
BLOCK_MATCHES: tuple[str, ...] = ("both", "either")
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
    block_match: BlockMatch = "both"
    use_issuer_models: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "known_models", frozenset(_as_model_keys(self.known_models)))
        if self.block_match not in BLOCK_MATCHES:
            raise ValueError(f"block_match: must be one of {', '.join(BLOCK_MATCHES)}, got {self.block_match!r}")
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
    matches and 0 for exact ones. ``own``: issued by this node.

    ``distances``: for a perceptual match, the distance of every perceptual hash both sides carry (the
    caller measures them all, not only the one the index found); None when only ``match`` is known.
    ``retracted``: the recorded reason when the verdict was retracted; such a candidate never counts, it is
    passed so the answer can say why a verdict that matched was not used."""

    verdict: Verdict
    match: MatchKind
    distance: int
    own: bool
    distances: Mapping[str, int] | None = None
    retracted: str | None = None

    def __post_init__(self) -> None:
        if self.match not in EXACT_MATCHES and self.match not in PERCEPTUAL_BITS:
            raise ValueError(f"match must be sha256, pixel_sha256, phash64 or pdq256, got {self.match!r}")
        for kind, distance in ((self.match, self.distance), *(self.distances or {}).items()):
            if kind not in EXACT_MATCHES and kind not in PERCEPTUAL_BITS:
                raise ValueError(f"distances: {kind!r} is not a perceptual hash (phash64, pdq256)")
            bits = PERCEPTUAL_BITS.get(kind, 0)
            if isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance <= bits:
                raise ValueError(f"distance for a {kind} match must be an integer in [0, {bits}], got {distance!r}")

    def perceptual_distances(self) -> dict[str, int]:
        """Distance per perceptual hash present on both sides ({} for an exact match)."""
        if self.match in EXACT_MATCHES:
            return {}
        known = dict(self.distances or {})
        known.setdefault(self.match, self.distance)
        return known


@dataclass(frozen=True, slots=True)
class Unused:
    """A verdict that matched the image and did not count: who issued it (``own`` for this node's), the rule
    (``rule``, a stable name) and that rule in words (``detail``, what the admin reads)."""

    verdict_id: str
    issuer: str
    own: bool
    rule: UnusedRule
    detail: str


def unused_lines(unused: Iterable[Unused]) -> list[str]:
    """One line per (issuer, rule in words), in first-seen order: ``1 verdict from https://a.example/actor not
    used: model X@Y is not in known_models (...)``."""
    counts: dict[tuple[str, bool, str], int] = {}
    for item in unused:
        key = (item.issuer, item.own, item.detail)
        counts[key] = counts.get(key, 0) + 1
    lines = []
    for (issuer, own, detail), count in counts.items():
        what = f"{count} verdict{'s' if count != 1 else ''}"
        lines.append(f"{count} own verdict{'s' if count != 1 else ''} not used: {detail}" if own
                     else f"{what} from {issuer} not used: {detail}")
    return lines


@dataclass(frozen=True, slots=True)
class Decision:
    """``used``: the verdicts the outcome rests on. ``scores``: the deciding scores (own inference, or the
    per-category maximum over ``used``). ``observed``: verdicts of ``observe`` peers that matched, for the
    record; they never influence the outcome. ``unused``: every candidate that did not count, and why."""

    outcome: Outcome
    reason: str
    source: Source | None
    used: tuple[Verdict, ...] = ()
    scores: dict[str, float] | None = None
    observed: tuple[Verdict, ...] = ()
    unused: tuple[Unused, ...] = ()


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
    unused: list[Unused] = []

    def skip(candidate: Candidate, rule: UnusedRule, detail: str) -> None:
        verdict = candidate.verdict
        unused.append(Unused(verdict.id, verdict.issuer, candidate.own, rule, detail))

    for candidate in candidates:
        verdict = candidate.verdict
        if candidate.retracted is not None:
            skip(candidate, "retracted", f"retracted: {candidate.retracted}")
            continue
        if candidate.own:
            trust, who, thresholds = None, "own", config.thresholds
        else:
            trust = config.peers.get(verdict.issuer)
            if trust is None:
                skip(candidate, "not_a_peer", "the issuer is not a peer in peers.yaml")
                continue
            if trust.level == "observe":
                observed.append(verdict)
                skip(candidate, "observe", "the issuer is trusted to observe only (trust: observe)")
                continue
            who = f"{verdict.issuer} ({trust.level})"
            thresholds = trust.thresholds if trust.thresholds is not None else config.thresholds
        peer_models = trust.known_models if trust is not None else frozenset()
        key = model_key(verdict.model)
        issuer_model = trust is not None and config.use_issuer_models
        if not (config.compare_unknown_models or key in known or key in peer_models or issuer_model):
            skip(candidate, "unknown_model", f"model {key[0]}@{key[1]} is not in known_models (its scores are "
                                             f"not known to be comparable with ours)")
            continue
        assessment, detail = assess(verdict.scores, thresholds)
        judged = _Judged(candidate, who, assessment, detail)
        if assessment == "block":
            too_far = _beyond_block_radius(config, candidate)
            if too_far is None:
                blocking.append(judged)
            else:
                skip(candidate, "too_far", f"it blocks, but {too_far}")
        elif assessment == "safe":
            if trust is not None and trust.level != "full":
                skip(candidate, "blocks_only", "safe, but the issuer is trusted for blocks only (trust: block-only)")
            elif candidate.match not in EXACT_MATCHES and not config.reuse_safe_perceptual:
                skip(candidate, "safe_perceptual_off", f"safe, matched by {_match_text(candidate)} (perceptual "
                                                       f"reuse of safe verdicts is off)")
            elif not _within_safe_radius(config, candidate):
                skip(candidate, "too_far", f"safe, matched by {_match_text(candidate)} (beyond the safe radius)")
            else:
                (safe_own if candidate.own else safe_peer).append(judged)
        else:
            skip(candidate, "cannot_vouch", f"it cannot vouch: {detail}")

    observed_t = tuple(observed)
    own_assessment: tuple[Assessment, str] | None = None
    if own is not None:
        own_assessment = assess(own.scores, config.thresholds)
        if own_assessment[0] == "block":
            return Decision("block", f"block: own inference{_model_text(own_model)}: {own_assessment[1]}",
                            "inference", (), dict(own.scores), observed_t, tuple(unused))

    if blocking:
        blocking.sort(key=lambda j: (not j.candidate.own, j.candidate.distance))
        first = blocking[0]
        reason = f"block: {_judged_text(first, config)}"
        if len(blocking) > 1:
            reason += f" (and {len(blocking) - 1} more trusted block verdict(s))"
        if own_assessment is not None:
            reason += f"; overrides own inference ({own_assessment[1]})"
        used = tuple(j.candidate.verdict for j in blocking)
        return Decision("block", reason, "cache" if first.candidate.own else "peer", used,
                        _max_scores(used), observed_t, tuple(unused))

    if own is not None and own_assessment is not None and own_assessment[0] == "safe":
        return Decision("allow", f"allow: own inference{_model_text(own_model)}: {own_assessment[1]}",
                        "inference", (), dict(own.scores), observed_t, tuple(unused))

    if safe_own:
        safe_own.sort(key=lambda j: j.candidate.distance)
        first = safe_own[0]
        return Decision("allow", f"allow: {_judged_text(first, config)}", "cache", (first.candidate.verdict,),
                        dict(first.candidate.verdict.scores), observed_t, tuple(unused))

    by_issuer: dict[str, _Judged] = {}
    for judged in sorted(safe_peer, key=lambda j: j.candidate.distance):
        by_issuer.setdefault(judged.candidate.verdict.issuer, judged)
    if by_issuer and len(by_issuer) >= config.safe_quorum:
        agreeing = list(by_issuer.values())
        reason = f"allow: {_judged_text(agreeing[0], config)}"
        if len(agreeing) > 1:
            reason += f"; {len(agreeing)} trusted peers agree (quorum {config.safe_quorum})"
        used = tuple(j.candidate.verdict for j in agreeing)
        return Decision("allow", reason, "peer", used, _max_scores(used), observed_t, tuple(unused))

    for judged in safe_peer:
        skip(judged.candidate, "quorum", f"safe, but safe_quorum is {config.safe_quorum} and "
                                         f"{len(by_issuer)} full peer(s) say so")
    notes = []
    if own_assessment is not None:
        notes.append(f"own inference cannot vouch: {own_assessment[1]}")
    notes.extend(unused_lines(unused))
    reason = "unknown: no usable verdict" + (f" ({'; '.join(notes)})" if notes else "")
    return Decision("unknown", reason, None, (), None, observed_t, tuple(unused))


def _block_radius(config: PolicyConfig, kind: str) -> int:
    return config.block_phash_distance if kind == "phash64" else config.block_pdq_distance


def _beyond_block_radius(config: PolicyConfig, candidate: Candidate) -> str | None:
    """None when a block verdict's match is close enough to reuse; otherwise why not, in words. Both hashes
    present: both within (``block_match: both``) or one (``either``); one present: that one."""
    distances = candidate.perceptual_distances()
    if not distances:
        return None
    within = {kind: d <= _block_radius(config, kind) for kind, d in distances.items()}
    if all(within.values()) or (config.block_match == "either" and any(within.values())):
        return None
    far = [f"{kind} distance {d} is beyond the block radius {_block_radius(config, kind)}"
           for kind, d in distances.items() if not within[kind]]
    near = [f"{kind} distance {d}" for kind, d in distances.items() if within[kind]]
    if near:
        return f"{'; '.join(far)}, while {', '.join(near)} is within (policy.block_match is both: both must be)"
    return "; ".join(far)


def _within_safe_radius(config: PolicyConfig, candidate: Candidate) -> bool:
    """Exact keys always; a perceptual match only with the opt-in and every hash present within the safe
    radius (safe reuse is what a forged hash would buy, so one close hash never suffices)."""
    distances = candidate.perceptual_distances()
    if not distances:
        return True
    if not config.reuse_safe_perceptual:
        return False
    limits = {"phash64": config.safe_phash_distance, "pdq256": config.safe_pdq_distance}
    return all(d <= limits[kind] for kind, d in distances.items())


def _max_scores(verdicts: Iterable[Verdict]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for verdict in verdicts:
        for category, value in verdict.scores.items():
            if _score(verdict.scores, category) is not None:
                merged[category] = max(merged.get(category, value), value)
    return merged


def _match_text(candidate: Candidate) -> str:
    if candidate.match in EXACT_MATCHES:
        return candidate.match
    return ", ".join(f"{kind} distance {d}" for kind, d in candidate.perceptual_distances().items())


def _model_text(model: ModelInfo | None) -> str:
    return "" if model is None else f" ({model.name}, rules {model.rules})"


def _judged_text(judged: _Judged, config: PolicyConfig) -> str:
    verdict = judged.candidate.verdict
    owner = "own verdict" if judged.who == "own" else f"verdict of {judged.who}"
    issuers_model = ""
    if judged.who != "own" and config.use_issuer_models and not config.compare_unknown_models \
            and model_key(verdict.model) not in config.known_models:
        issuers_model = " (the issuer's model: this node has none of its own)"
    return (f"{owner} {verdict.id} matched by {_match_text(judged.candidate)}, "
            f"model {verdict.model.name} rules {verdict.model.rules}{issuers_model}: {judged.detail}")


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
    rules) pairs of models behind our stored verdicts) count as known models. A node with
    ``classifier.model: none`` and no model from workers (`own_model` None) has no model of its own: its
    peers' scores are compared under their issuer's model unless ``policy.trust_issuer_models`` is off."""
    p = config.policy
    without_own_model = own_model is None and is_model_none(config.classifier.model)
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
        "block_match": p.block_match,
        "use_issuer_models": without_own_model and p.trust_issuer_models,
    })
