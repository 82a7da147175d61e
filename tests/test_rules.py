"""scanners.rules against an independent re-statement of horde-safety's NSFWChecker.check_for_nsfw.

``ReferenceChecker`` below follows the structure of the upstream class (horde_safety/nsfw_checker_class.py
@ 78f8334): its table building (_set_default_predicates/_refresh_predicates/_refresh_concepts) and the
boolean logic of check_for_nsfw with prompt='' and no DeepDanbooru, line by line, with its own derived
tables. Only the raw figures (the upstream dict literals, restated in rules.py) are shared. rules.py
computes margins and scores instead of booleans; both must agree on every decision.
"""
from __future__ import annotations

import math
import random

import pytest

from scanners import rules


class ReferenceChecker:
    """Upstream's check_for_nsfw, boolean logic only, prompt='' (no suspect negative prompt), no DeepDanbooru."""

    def __init__(self) -> None:
        self.image_description_prefixes = dict(rules.IMAGE_PREFIXES)
        self.human_predicate_parts = dict(rules.HUMAN_PREDICATE_PARTS)
        self.human_predicates_isolated = dict(rules.HUMAN_PREDICATES_ISOLATED)
        self.underage_predicates = dict(rules.UNDERAGE_PREDICATES)
        self.underage_danger_modifiers = dict(rules.UNDERAGE_DANGER_MODIFIERS)
        self.underage_danger_concepts = {}
        for predicate, predicate_value in self.underage_danger_modifiers.items():
            self.underage_danger_concepts[predicate] = predicate_value + self.underage_predicates[predicate]
        self.nsfw_predicates = dict(rules.NSFW_PREDICATES)
        self.anime_cartoon_predicates = dict(rules.ANIME_PREDICATES)
        # _refresh_predicates
        nsfw_combined = dict(self.nsfw_predicates)
        combined_underage = dict(self.underage_predicates)
        self.combined_danger = dict(self.underage_danger_concepts)
        all_human = dict(self.human_predicates_isolated)
        for prefix, prefix_value in self.image_description_prefixes.items():
            for part, part_value in self.human_predicate_parts.items():
                all_human[f"{prefix} {part}"] = 0.202 + prefix_value + part_value
            for nsfw_predicate, nsfw_value in self.nsfw_predicates.items():
                nsfw_combined[f"{prefix} {nsfw_predicate}"] = prefix_value + nsfw_value
            for danger_predicate, danger_value in self.underage_danger_concepts.items():
                if danger_predicate == "lolicon":
                    continue
                self.combined_danger[f"{prefix} {danger_predicate}"] = prefix_value + danger_value
                combined_underage[f"{prefix} {danger_predicate}"] = (
                    prefix_value + self.underage_predicates[danger_predicate])
        self.combined_underage = combined_underage
        self.all_predicates = {**self.anime_cartoon_predicates, **all_human, **combined_underage,
                               **nsfw_combined}
        # _refresh_concepts
        combined = {}
        for prefix, prefix_value in self.image_description_prefixes.items():
            for part, part_value in rules.NSFW_CONCEPT_PARTS.items():
                combined[f"{prefix} {part}"] = prefix_value + part_value
        self.all_nsfw_concepts = {**rules.NSFW_ISOLATED_CONCEPTS, **rules.NSFW_CONCEPT_PARTS, **combined,
                                  **rules.NSFW_SYNTH_CONCEPTS}
        self.nsfw_post_anime_concepts = dict(rules.NSFW_POST_ANIME_CONCEPTS)

    def check(self, sims: dict[str, float]) -> dict[str, bool]:
        p = {k: round(float(sims[k]), 4) for k in self.all_predicates}  # get_predicate_similarities
        c = {k: round(float(sims[k]), 4) for k in self.all_nsfw_concepts}  # get_nsfw_concept_similarities
        is_anime = False
        found_anime = {}
        for a in self.anime_cartoon_predicates:
            if p[a] > self.anime_cartoon_predicates[a]:
                is_anime = True
                found_anime[a] = p[a]
        if is_anime and all(v < 0.208 for v in found_anime.values()):
            for name, value in p.items():
                if "photo" in name and value > 0.24:
                    is_anime = False
                    break
        is_nsfw = False
        subject = False
        for term in self.all_predicates:
            if p[term] > self.all_predicates[term]:
                subject = True
            elif term in self.combined_danger and p[term] > self.combined_danger[term]:
                subject = True
        if not is_nsfw and subject:
            for concept in c:
                threshold = self.all_nsfw_concepts[concept]
                if is_anime and concept in self.nsfw_post_anime_concepts:
                    threshold = self.nsfw_post_anime_concepts[concept]
                if is_anime and concept not in self.nsfw_post_anime_concepts:
                    continue
                if c[concept] > threshold:
                    is_nsfw = True
        underage = False
        found = {}
        for predicate, value in self.combined_danger.items():
            if p[predicate] > value:
                found[predicate] = p[predicate]
        if len(found) >= 1:
            underage = True
        if not underage:
            if is_anime:
                multiplier = 0.05
                for teen in ("teen", "teens"):
                    if p[teen] > (self.all_predicates[teen] + 0.0):
                        found[teen] = p[teen]
                for predicate in self.underage_predicates:
                    if predicate == "lolicon" or predicate == "shota" or "photo" in predicate:
                        continue
                    adjusted = self.underage_predicates[predicate] + (
                        self.underage_danger_modifiers[predicate] * multiplier)
                    if p[predicate] > adjusted:
                        found[predicate] = p[predicate]
            else:
                multiplier = 0.4
                for predicate, value in self.combined_underage.items():
                    adjusted = value + ((self.combined_danger[predicate] - self.combined_underage[predicate])
                                        * multiplier)
                    if p[predicate] > adjusted:
                        found[predicate] = p[predicate]
            pairs = [("tween", "tweens"), ("tweens", "tween"), ("teen", "teens"), ("teens", "teen"),
                     ("an infant", "infants"), ("infants", "an infant"), ("toddler", "toddlers"),
                     ("toddlers", "toddler"), ("child", "children"), ("children", "child")]
            for one, other in pairs:
                if one in found and other in found:
                    if found[one] > found[other]:
                        del found[other]
                    else:
                        del found[one]
            if len(found) >= 2:
                underage = True
        return {"is_anime": is_anime, "is_nsfw": is_nsfw, "is_underage": underage,
                "is_csam": underage and is_nsfw}


REFERENCE = ReferenceChecker()

# Every text's own threshold (the lowest role it plays), around which random vectors are drawn.
_BASE: dict[str, float] = {}
for _table in (rules.NSFW_CONCEPTS, rules.SECOND_PASS, rules.ANIME_SECOND_PASS, rules.PREDICATES):
    _BASE.update(_table)
_GROUPS = {
    "anime": set(rules.ANIME_PREDICATES),
    "photo": set(rules.PHOTO_PREDICATES),
    "underage": set(rules.DANGER_PREDICATES) | set(rules.ANIME_SECOND_PASS),
    "concept": set(rules.NSFW_CONCEPTS),
}
_OWN_THRESHOLDS: dict[str, list[float]] = {}
for _table in (rules.PREDICATES, rules.DANGER_PREDICATES, rules.NSFW_CONCEPTS, rules.ANIME_NSFW_CONCEPTS,
               rules.SECOND_PASS, rules.ANIME_SECOND_PASS):
    for _text, _threshold in _table.items():
        _OWN_THRESHOLDS.setdefault(_text, []).append(round(_threshold, 4))


def _group(text: str) -> str:
    for name, members in _GROUPS.items():
        if text in members:
            return name
    return "other"


def random_similarities(rng: random.Random) -> dict[str, float]:
    """Similarities near each text's threshold, with one random level per group of texts (anime cues,
    photo cues, underage cues, NSFW concepts, other human cues) so that every decision and the anime
    switch come out both ways often; some values sit exactly on a threshold to exercise the strict >."""
    # "Any of 109 concepts" / "any of 160 predicates" fire easily: their levels sit lower.
    levels = {name: rng.uniform(-0.06, 0.02) - (0.02 if name in ("concept", "other") else 0.0)
              for name in (*_GROUPS, "other")}
    sims = {}
    for text in rules.TEXTS:
        value = _BASE[text] + levels[_group(text)] + rng.gauss(0, 0.008)
        if rng.random() < 0.05:
            value = rng.choice(_OWN_THRESHOLDS[text])
        sims[text] = value
    return sims


def test_figures_match_the_reference_counts_and_spot_values():
    # Counts computed from horde-safety's NSFWChecker (commit 78f8334): 160 predicates, 51 danger concepts, 109 concepts.
    assert len(rules.PREDICATES) == 160
    assert len(rules.DANGER_PREDICATES) == 51
    assert len(rules.NSFW_CONCEPTS) == 109
    assert rules.DANGER_PREDICATES["child"] == pytest.approx(0.225)
    assert rules.DANGER_PREDICATES["young children"] == pytest.approx(0.219)
    assert rules.DANGER_PREDICATES["a baby"] == pytest.approx(0.2175)
    assert rules.DANGER_PREDICATES["tween"] == pytest.approx(0.235)
    assert rules.DANGER_PREDICATES["lolicon"] == pytest.approx(0.244)
    assert rules.DANGER_PREDICATES["illustration of child"] == pytest.approx(0.3)
    assert "painting of lolicon" not in rules.DANGER_PREDICATES
    assert rules.PREDICATES["3d render of a man"] == pytest.approx(0.2245)
    assert rules.NSFW_CONCEPTS["illustration of porn"] == pytest.approx(0.275)
    assert set(rules.ANIME_NSFW_CONCEPTS) == {"nsfw", "exposed breasts", "illustration of exposed breasts",
                                              "nudity", "nude", "naked"}
    # Every threshold used by the rules is bit-equal to the one the re-statement derives.
    assert rules.PREDICATES == REFERENCE.all_predicates
    assert rules.NSFW_CONCEPTS == REFERENCE.all_nsfw_concepts
    assert rules.DANGER_PREDICATES == REFERENCE.combined_danger


def test_decisions_equal_the_reference_on_thousands_of_random_vectors():
    rng = random.Random(20241219)
    outcomes = {key: [0, 0] for key in ("is_anime", "is_nsfw", "is_underage", "is_csam")}
    for _ in range(4000):
        sims = random_similarities(rng)
        expected = REFERENCE.check(sims)
        got = rules.evaluate(sims)
        actual = {"is_anime": got.is_anime, "is_nsfw": got.is_nsfw, "is_underage": got.is_underage,
                  "is_csam": got.is_csam}
        assert actual == expected, sims
        # The scores carry the same decisions at the 0.5 boundary.
        assert (got.scores["nsfw"] >= 0.5) == expected["is_nsfw"]
        assert (got.scores["underage"] >= 0.5) == expected["is_underage"]
        assert (got.scores["csam"] >= 0.5) == expected["is_csam"]
        assert all(0.0 <= s <= 1.0 for s in got.scores.values())
        for key, value in expected.items():
            outcomes[key][value] += 1
    for key, (negatives, positives) in outcomes.items():
        assert negatives > 400 and positives > 400, (key, negatives, positives)


def test_exact_tie_is_not_a_match():
    sims = {t: -0.5 for t in rules.TEXTS}
    sims["photo of a girl"] = rules.PREDICATES["photo of a girl"] + 0.01
    sims["naked"] = rules.NSFW_CONCEPTS["naked"]
    result = rules.evaluate(sims)
    assert not result.is_nsfw and result.scores["nsfw"] < 0.5
    sims["naked"] += 0.0001
    result = rules.evaluate(sims)
    assert result.is_nsfw and result.scores["nsfw"] >= 0.5 and result.matched == ["nsfw:naked"]


def test_scores_are_monotone_in_every_similarity_within_a_mode():
    rng = random.Random(7)
    checked = 0
    for _ in range(1500):
        sims = random_similarities(rng)
        before = rules.evaluate(sims)
        text = rng.choice(rules.TEXTS)
        raised = dict(sims)
        raised[text] = sims[text] + rng.choice([0.0001, 0.003, 0.02, 0.1])
        after = rules.evaluate(raised)
        if after.is_anime != before.is_anime:
            # Only the anime cues and the "photo" override can switch the mode.
            assert text in rules.ANIME_PREDICATES or text in rules.PHOTO_PREDICATES
            continue
        checked += 1
        for category in before.scores:
            assert after.scores[category] >= before.scores[category], (text, category)
    assert checked > 1300


def test_reference_itself_is_not_monotone_across_the_anime_switch():
    """Why monotonicity holds within a mode only: raising the "anime" similarity switches the reference
    from the photo concepts to the anime ones, and an image NSFW through "porn" stops being NSFW."""
    sims = {t: 0.0 for t in rules.TEXTS}
    sims["photo of a woman"] = 0.25
    sims["porn"] = 0.23
    assert REFERENCE.check(sims)["is_nsfw"] and rules.evaluate(sims).is_nsfw
    sims["anime"] = 0.22
    assert not REFERENCE.check(sims)["is_nsfw"] and not rules.evaluate(sims).is_nsfw


def test_nan_and_missing_similarities():
    sims = {t: float("nan") for t in rules.TEXTS}
    result = rules.evaluate(sims)
    assert result.scores == {"csam": 0.0, "nsfw": 0.0, "underage": 0.0}
    del sims["nsfw"]
    with pytest.raises(KeyError, match="no similarity"):
        rules.evaluate(sims)


def test_margin_to_score_shape():
    assert rules.margin_to_score(0.0) < 0.5
    assert rules.margin_to_score(1e-12) >= 0.5
    assert rules.margin_to_score(1e-300) == 0.5
    assert rules.margin_to_score(-1e-12) < 0.5
    assert rules.margin_to_score(0.01) == pytest.approx(0.5 + 0.5 * math.tanh(1))
    assert rules.margin_to_score(math.inf) == 1.0 and rules.margin_to_score(-math.inf) == 0.0
