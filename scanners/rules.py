"""horde-safety's NSFWChecker rule set as a pure function: concept similarities -> category scores.

Source of the figures (concept texts, thresholds, prefixes and offsets, multipliers): Haidra-Org/horde-safety,
``horde_safety/nsfw_checker_class.py`` at commit 78f8334 (after v0.2.4; the version in which
``is_underage_subject`` is computed whether or not the image is NSFW). The figures are restated below; the
code is ours. The rules are evaluated the way fedi-safety calls them: ``prompt=''`` and
``model_info={"nsfw": True, "tags": []}``, without DeepDanbooru. What that implies:

- the empty prompt has no negative prompt, so ``is_neg_prompt_suspect`` is False and the second-pass
  multipliers are the plain 0.05 (anime) and 0.4 (not anime);
- ``model_info`` is not read by this version of the checker at all (its use is commented out upstream);
- without DeepDanbooru an anime image is NSFW only through CLIP's anime concept list, and the "realistic"
  tag cannot switch anime mode off. Of the 14 anime concept thresholds upstream, only the 6 whose text is
  also one of the 109 NSFW concepts are ever compared (upstream loops over the 109 concepts), so only those
  are kept here.

Scores. Every decision of the reference is "some similarity exceeds its threshold", "at least k do", or an
AND/OR of those. We turn each into a margin in cosine units (max of ``sim - threshold`` for "any", the k-th
largest for "at least k", min for AND, max for OR) and map it to [0, 1] with ``0.5 + 0.5*tanh(margin/0.01)``:
0.5 is the reference boundary and a score >= 0.5 is exactly the reference's True (a margin of exactly 0 is
the reference's False, since it compares with ``>``, and is mapped just below 0.5). Similarities are first
rounded to 4 decimals as upstream does, so the decisions equal the reference's on the same CLIP output.

Monotonicity. Within one mode (anime or not) every score is non-decreasing in every similarity. The mode
itself is not monotone upstream: a higher "anime" similarity switches from the 109 photo concepts to the 6
anime ones, and a "photo ..." predicate above 0.24 switches weak anime detection back off, so raising one
similarity can turn the reference's NSFW into not NSFW. No score can be both monotone across that switch
and equal to the reference decisions; we keep the reference decisions (tests/test_rules.py shows both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from protocol.verdict import ModelInfo

RULES_VERSION = "78f8334"
RULES_ID = f"horde-safety-nsfwchecker-{RULES_VERSION}"

# --- Figures from horde-safety nsfw_checker_class.py @ 78f8334 -------------------------------------------

IMAGE_PREFIXES: dict[str, float] = {
    "photo of": 0,
    "painting of": 0.005,
    "illustration of": 0.075,
    "3d render of": 0.0125,
}
PREDICATE_DEFAULT_THRESHOLD = 0.202

HUMAN_PREDICATE_PARTS: dict[str, float] = {  # offsets added to the default threshold and the prefix offset
    "a boy": 0, "boys": 0, "a girl": 0, "girls": 0, "a teen": 0, "a man": 0.01, "men": 0, "a woman": 0,
    "a couple": 0, "couple kissing": 0, "a girl in a bikini": 0.01, "girls in bikinis": 0.01,
}
HUMAN_PREDICATES_ISOLATED: dict[str, float] = {
    "boy": 0.194, "boys": 0.194, "man": 0.194, "men": 0.194, "girl": 0.194, "girls": 0.194,
    "woman": 0.194, "women": 0.194, "teenager": 0.194, "teen": 0.19, "teens": 0.19,
}
UNDERAGE_PREDICATES: dict[str, float] = {
    "child": 0.19, "children": 0.19, "young children": 0.189, "a baby": 0.19, "an infant": 0.19,
    "infants": 0.19, "toddler": 0.19, "toddlers": 0.19, "tween": 0.19, "tweens": 0.19, "lolicon": 0.20,
}
UNDERAGE_DANGER_MODIFIERS: dict[str, float] = {  # danger threshold = modifier + underage threshold
    "child": 0.035, "children": 0.035, "young children": 0.03, "a baby": 0.0275, "an infant": 0.0275,
    "infants": 0.0275, "toddler": 0.0275, "toddlers": 0.0275, "tween": 0.045, "tweens": 0.045,
    "lolicon": 0.044,
}
UNPREFIXED_ONLY = ("lolicon",)  # upstream never combines lolicon with an image prefix
NSFW_PREDICATES: dict[str, float] = {
    "18+": 0.20, "explicit content": 0.21, "erotica": 0.21, "exposed erection": 0.215,
    "close up of a vagina": 0.24, "photo of vagina": 0.22, "porn scene": 0.21, "lesbian scene": 0.22,
    "gay scene": 0.22,
}
ANIME_PREDICATES: dict[str, float] = {
    "japanese animation": 0.20, "Japanese cartoon": 0.20, "anime": 0.20, "cartoon": 0.20, "manga": 0.205,
}
NSFW_ISOLATED_CONCEPTS: dict[str, float] = {
    "sexual": 0.2, "sexy": 0.22, "uncensored": 0.21, "naked": 0.22, "nude": 0.22, "nsfw": 0.21,
    "nudity": 0.21, "erotic": 0.21, "fucking": 0.21,
}
NSFW_CONCEPT_PARTS: dict[str, float] = {  # each also combined with every image prefix (+ its offset)
    "explicit content": 0.20, "exposed erection": 0.21, "close up of a vagina": 0.24,
    "a womans legs spread, vagina exposed": 0.23, "exposed vagina": 0.22, "erotica": 0.21, "blowjob": 0.22,
    "vagina": 0.21, "an erection": 0.21, "porn": 0.2, "porn scene": 0.20, "lesbian scene": 0.22,
    "gay scene": 0.22, "a nude man's ass": 0.21, "a nude woman's ass": 0.21, "exposed breasts": 0.22,
    "girl in a bikini": 0.22, "underwear": 0.21, "lingerie": 0.21,
}
# Token soups that CLIP associates with NSFW content; the exact strings (two spaces after "mr", the
# unicode ellipsis and the Thai letter included) are what gets embedded upstream.
NSFW_SYNTH_CONCEPTS: dict[str, float] = {
    "quintesstain corinblazing dean n blondes bronxsmug demi pilebarcelonluisspandex ,... ...#": 0.205,
    "liam paying awwww hubby ... feeding mr  omg dropbox brad(@ zaynwoo \u2026.. burr": 0.205,
    "nel ov lexi lov thwatchin thalaireason zz big oj anticipation \u0e1aci ov prick": 0.205,
    "somehow dang rochelle sizzgusta imrankhanhalftime rankings equities exists skynews -- - smokin epidemiq":
        0.205,
    "asses zeit brunette brunette bikini meatlessdesired androunprecearomatic limestone "
    "juxtatweetapicturevalmelee photo": 0.205,
}
NSFW_POST_ANIME_CONCEPTS: dict[str, float] = {  # thresholds that replace the photo ones in anime mode
    "nsfw": 0.21, "18+": 0.215, "nipples": 0.20, "nipple": 0.20, "naked child": 0.19, "naked breasts": 0.205,
    "illustration of naked breasts": 0.205, "exposed breasts": 0.205, "illustration of exposed breasts": 0.205,
    "nudity": 0.195, "nude": 0.195, "naked": 0.22, "cartoon porn": 0.20, "sex": 0.21,
}
WEAK_ANIME_BELOW = 0.208        # anime detection counts as weak when every matched anime sim is below this
PHOTO_OVERRIDE_ABOVE = 0.24     # ... and then any "photo" predicate above this means "not anime"
ANIME_SECOND_PASS_MULTIPLIER = 0.05
SECOND_PASS_MULTIPLIER = 0.4
TEEN_PREDICATES = ("teen", "teens")  # anime second pass only, at their human-predicate thresholds
SINGULAR_PLURAL_PAIRS = (("tween", "tweens"), ("teen", "teens"), ("an infant", "infants"),
                         ("toddler", "toddlers"), ("child", "children"))
UNDERAGE_SUBJECT_MIN_MATCHES = 2
SIMILARITY_DECIMALS = 4

# --- Derived tables (same float arithmetic and merge order as upstream, so thresholds are bit-equal) -----


def _derive() -> dict[str, dict[str, float]]:
    danger = {p: m + UNDERAGE_PREDICATES[p] for p, m in UNDERAGE_DANGER_MODIFIERS.items()}
    human = dict(HUMAN_PREDICATES_ISOLATED)
    nsfw_predicates = dict(NSFW_PREDICATES)
    underage = dict(UNDERAGE_PREDICATES)
    combined_danger = dict(danger)
    for prefix, offset in IMAGE_PREFIXES.items():
        for part, part_offset in HUMAN_PREDICATE_PARTS.items():
            human[f"{prefix} {part}"] = PREDICATE_DEFAULT_THRESHOLD + offset + part_offset
        for predicate, threshold in NSFW_PREDICATES.items():
            nsfw_predicates[f"{prefix} {predicate}"] = offset + threshold
        for predicate, threshold in danger.items():
            if predicate in UNPREFIXED_ONLY:
                continue
            combined_danger[f"{prefix} {predicate}"] = offset + threshold
            underage[f"{prefix} {predicate}"] = offset + UNDERAGE_PREDICATES[predicate]
    predicates = {**ANIME_PREDICATES, **human, **underage, **nsfw_predicates}
    concepts = {**NSFW_ISOLATED_CONCEPTS, **NSFW_CONCEPT_PARTS}
    for prefix, offset in IMAGE_PREFIXES.items():
        for part, threshold in NSFW_CONCEPT_PARTS.items():
            concepts[f"{prefix} {part}"] = offset + threshold
    concepts.update(NSFW_SYNTH_CONCEPTS)
    anime_concepts = {c: t for c, t in NSFW_POST_ANIME_CONCEPTS.items() if c in concepts}
    second_pass = {p: t + ((combined_danger[p] - underage[p]) * SECOND_PASS_MULTIPLIER)
                   for p, t in underage.items()}
    anime_second_pass = {p: predicates[p] + 0.0 for p in TEEN_PREDICATES}
    for p in UNDERAGE_PREDICATES:
        if p in UNPREFIXED_ONLY or "photo" in p:
            continue
        anime_second_pass[p] = UNDERAGE_PREDICATES[p] + (UNDERAGE_DANGER_MODIFIERS[p] * ANIME_SECOND_PASS_MULTIPLIER)
    return {"predicates": predicates, "danger": combined_danger, "concepts": concepts,
            "anime_concepts": anime_concepts, "second_pass": second_pass,
            "anime_second_pass": anime_second_pass}


_TABLES = _derive()
PREDICATES: dict[str, float] = _TABLES["predicates"]                # 160: human subject present?
DANGER_PREDICATES: dict[str, float] = _TABLES["danger"]             # 51: one is enough for "underage"
NSFW_CONCEPTS: dict[str, float] = _TABLES["concepts"]               # 109: one is enough for "nsfw"
ANIME_NSFW_CONCEPTS: dict[str, float] = _TABLES["anime_concepts"]   # 6: the NSFW concepts in anime mode
SECOND_PASS: dict[str, float] = _TABLES["second_pass"]              # 51: two distinct ones -> "underage"
ANIME_SECOND_PASS: dict[str, float] = _TABLES["anime_second_pass"]  # 12: the same, in anime mode
PHOTO_PREDICATES: tuple[str, ...] = tuple(p for p in PREDICATES if "photo" in p)

# Every text whose similarity the rules read, each once: what the CLIP backend embeds.
TEXTS: tuple[str, ...] = tuple(dict.fromkeys([*PREDICATES, *NSFW_CONCEPTS]))

MARGIN_SCALE = 0.01  # cosine units per tanh unit: about the spacing of the reference thresholds
_JUST_BELOW_HALF = math.nextafter(0.5, 0.0)


def clip_model_info(name: str, version: str) -> ModelInfo:
    return ModelInfo(name=name, version=version, rules=RULES_ID)


@dataclass(frozen=True)
class RuleResult:
    """Scores (0.5 = reference boundary) plus the reference's own booleans and what matched."""

    scores: dict[str, float]
    matched: list[str]
    is_anime: bool
    is_nsfw: bool
    is_underage: bool
    is_csam: bool
    margins: dict[str, float] = field(default_factory=dict)


def margin_to_score(margin: float) -> float:
    """Map a margin (how far the deciding similarity is past its threshold) to [0, 1]: monotone, and
    >= 0.5 exactly when the margin is > 0 (the reference compares with a strict >)."""
    if math.isnan(margin):
        margin = -math.inf
    score = 0.5 + 0.5 * math.tanh(margin / MARGIN_SCALE)
    return max(score, 0.5) if margin > 0 else min(score, _JUST_BELOW_HALF)


def _kth_largest(values: Iterable[float], k: int) -> float:
    ordered = sorted(values, reverse=True)
    return ordered[k - 1] if len(ordered) >= k else -math.inf


def _group_margins(margins: Mapping[str, float]) -> list[float]:
    """Upstream keeps only one of a singular/plural pair when both match: a pair counts once."""
    grouped = dict(margins)
    result = []
    for a, b in SINGULAR_PLURAL_PAIRS:
        if a in grouped and b in grouped:
            result.append(max(grouped.pop(a), grouped.pop(b)))
    result.extend(grouped.values())
    return result


def _clean(value: float) -> float:
    value = float(value)
    if math.isnan(value):
        return -math.inf  # upstream: NaN > threshold is False, i.e. never matches
    return round(value, SIMILARITY_DECIMALS) if math.isfinite(value) else value


def evaluate(similarities: Mapping[str, float]) -> RuleResult:
    """Apply the rule set to cosine similarities keyed by text (at least every text in TEXTS)."""
    missing = [t for t in TEXTS if t not in similarities]
    if missing:
        raise KeyError(f"{len(missing)} rule texts have no similarity, e.g. {missing[0]!r}")
    sim = {t: _clean(similarities[t]) for t in TEXTS}

    matched_anime = [sim[p] for p, t in ANIME_PREDICATES.items() if sim[p] > t]
    is_anime = bool(matched_anime)
    if is_anime and all(v < WEAK_ANIME_BELOW for v in matched_anime):
        if any(sim[p] > PHOTO_OVERRIDE_ABOVE for p in PHOTO_PREDICATES):
            is_anime = False

    subject_margin = max(sim[p] - t for p, t in PREDICATES.items())
    nsfw_thresholds = ANIME_NSFW_CONCEPTS if is_anime else NSFW_CONCEPTS
    concept_margins = {c: sim[c] - t for c, t in nsfw_thresholds.items()}
    nsfw_margin = min(subject_margin, max(concept_margins.values()))

    danger_margins = {p: sim[p] - t for p, t in DANGER_PREDICATES.items()}
    second = ANIME_SECOND_PASS if is_anime else SECOND_PASS
    second_margins = {p: sim[p] - t for p, t in second.items()}
    second_margin = _kth_largest(_group_margins(second_margins), UNDERAGE_SUBJECT_MIN_MATCHES)
    underage_margin = max(max(danger_margins.values()), second_margin)
    csam_margin = min(nsfw_margin, underage_margin)

    is_nsfw, is_underage = nsfw_margin > 0, underage_margin > 0
    matched: list[str] = []
    if is_nsfw:
        matched += [f"nsfw:{c}" for c, m in concept_margins.items() if m > 0]
    if is_underage:
        danger_hits = [p for p, m in danger_margins.items() if m > 0]
        matched += [f"underage:{p}" for p in (danger_hits or [p for p, m in second_margins.items() if m > 0])]
    margins = {"csam": csam_margin, "nsfw": nsfw_margin, "underage": underage_margin}
    return RuleResult(
        scores={category: margin_to_score(m) for category, m in margins.items()},
        matched=matched, is_anime=is_anime, is_nsfw=is_nsfw, is_underage=is_underage,
        is_csam=is_nsfw and is_underage, margins=margins)
