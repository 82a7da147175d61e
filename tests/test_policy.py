"""node.policy: trust levels x match kinds x distances at the boundaries, quorum, models, per-peer thresholds,
a node without a model of its own, both perceptual hashes for a block (a forged pHash alone reuses
nothing), why each unused verdict did not count, and three properties: lowering thresholds is monotone,
perceptual safe reuse needs the opt-in, and only trusted issuers ever decide."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import NodeConfig, PeerEntry
from node.policy import (Candidate, PeerTrust, PolicyConfig, Thresholds, decide, label_for, model_key, policy_config_of,
                         unused_lines)
from protocol.verdict import Fingerprint, ModelInfo, Verdict

OWN = "https://own.example/actor"
FULL = "https://full.example/actor"
FULL2 = "https://full2.example/actor"
BLOCK_ONLY = "https://blockonly.example/actor"
OBSERVE = "https://observe.example/actor"
STRANGER = "https://stranger.example/actor"

CLIP = ModelInfo("ViT-L-14/openai", "0.1.0", "horde-safety-2024")
OTHER_MODEL = ModelInfo("mystery-net", "1", "mystery-rules")
PEERS = {FULL: PeerTrust("full"), FULL2: PeerTrust("full"), BLOCK_ONLY: PeerTrust("block-only"),
         OBSERVE: PeerTrust("observe")}
BASE = PolicyConfig(peers=PEERS, known_models=frozenset({model_key(CLIP)}))

BLOCK_SCORES = {"csam": 0.9, "nsfw": 0.95, "underage": 0.8}
SAFE_SCORES = {"csam": 0.02, "nsfw": 0.1, "underage": 0.3}
FINGERPRINT = Fingerprint("a" * 64, "b" * 64, "0123456789abcdef", "pil-lanczos-v1", "c" * 64)


@dataclass
class Inference:
    """Own fresh scores, shaped like scanners.classifier.Classification."""

    scores: Mapping[str, float]
    matched: tuple[str, ...] = ()


_serial = itertools.count()


def verdict(issuer: str, scores: Mapping[str, float], model: ModelInfo = CLIP) -> Verdict:
    origin = issuer.rsplit("/", 1)[0]
    return Verdict(f"{origin}/verdicts/{next(_serial)}", issuer, FINGERPRINT, dict(scores), "safe", model,
                   "2026-11-21T05:00:00Z")


def candidate(issuer: str, scores: Mapping[str, float], match: str = "sha256", distance: int = 0,
              model: ModelInfo = CLIP, distances: Mapping[str, int] | None = None,
              retracted: str | None = None) -> Candidate:
    return Candidate(verdict(issuer, scores, model), match, distance, own=issuer == OWN,  # type: ignore[arg-type]
                     distances=distances, retracted=retracted)


# ---------------------------------------------------------------------------------------------------------------
# The table: every trust level x match kind x distance at the boundaries x block/safe x opt-in

MATCHES = [("sha256", 0), ("pixel_sha256", 0),
           ("phash64", 0), ("phash64", 2), ("phash64", 3), ("phash64", 8), ("phash64", 9),
           ("pdq256", 0), ("pdq256", 10), ("pdq256", 11), ("pdq256", 31), ("pdq256", 32)]
# within (block radius, safe radius) for each perceptual kind, from the policy defaults
WITHIN_BLOCK = {("phash64", d): d <= 8 for d in range(65)} | {("pdq256", d): d <= 31 for d in range(257)}
WITHIN_SAFE = {("phash64", d): d <= 2 for d in range(65)} | {("pdq256", d): d <= 10 for d in range(257)}
TABLE = list(itertools.product([OWN, FULL, BLOCK_ONLY, OBSERVE, STRANGER], MATCHES, ["block", "safe"],
                               [False, True]))


def expected(issuer: str, match: str, distance: int, kind: str, opt_in: bool) -> tuple[str, str | None]:
    exact = match in ("sha256", "pixel_sha256")
    source = "cache" if issuer == OWN else "peer"
    if kind == "block":
        if issuer in (OWN, FULL, BLOCK_ONLY) and (exact or WITHIN_BLOCK[(match, distance)]):
            return "block", source
        return "unknown", None
    if issuer in (OWN, FULL) and (exact or (opt_in and WITHIN_SAFE[(match, distance)])):
        return "allow", source
    return "unknown", None


@pytest.mark.parametrize("issuer, match_distance, kind, opt_in", TABLE)
def test_trust_match_distance_table(issuer: str, match_distance: tuple[str, int], kind: str,
                                    opt_in: bool) -> None:
    match, distance = match_distance
    config = replace(BASE, reuse_safe_perceptual=opt_in)
    c = candidate(issuer, BLOCK_SCORES if kind == "block" else SAFE_SCORES, match, distance)
    decision = decide(config, [c])
    outcome, source = expected(issuer, match, distance, kind, opt_in)
    assert (decision.outcome, decision.source) == (outcome, source), decision.reason
    if outcome == "unknown":
        assert decision.used == () and decision.scores is None
    else:
        assert decision.used == (c.verdict,)
        assert c.verdict.id in decision.reason and match in decision.reason
        assert decision.scores == dict(c.verdict.scores)
    assert decision.observed == ((c.verdict,) if issuer == OBSERVE else ())


def test_safe_radius_is_configurable() -> None:
    config = replace(BASE, reuse_safe_perceptual=True, safe_phash_distance=5, safe_pdq_distance=20)
    assert decide(config, [candidate(FULL, SAFE_SCORES, "phash64", 5)]).outcome == "allow"
    assert decide(config, [candidate(FULL, SAFE_SCORES, "phash64", 6)]).outcome == "unknown"
    assert decide(config, [candidate(FULL, SAFE_SCORES, "pdq256", 20)]).outcome == "allow"
    assert decide(config, [candidate(FULL, SAFE_SCORES, "pdq256", 21)]).outcome == "unknown"


def test_block_radius_is_configurable() -> None:
    config = replace(BASE, block_phash_distance=4)
    assert decide(config, [candidate(FULL, BLOCK_SCORES, "phash64", 4)]).outcome == "block"
    assert decide(config, [candidate(FULL, BLOCK_SCORES, "phash64", 5)]).outcome == "unknown"


# ---------------------------------------------------------------------------------------------------------------
# Block wins, own inference


def test_trusted_block_beats_own_safe_verdict_and_says_so() -> None:
    own_safe = candidate(OWN, SAFE_SCORES, "sha256")
    peer_block = candidate(BLOCK_ONLY, BLOCK_SCORES, "phash64", 6)
    decision = decide(BASE, [own_safe, peer_block])
    assert (decision.outcome, decision.source, decision.used) == ("block", "peer", (peer_block.verdict,))
    assert BLOCK_ONLY in decision.reason and "distance 6" in decision.reason and "csam 0.900 >= 0.5" in decision.reason


def test_trusted_block_beats_own_safe_inference() -> None:
    peer_block = candidate(FULL, BLOCK_SCORES, "pdq256", 31)
    decision = decide(BASE, [peer_block], own=Inference(SAFE_SCORES), own_model=CLIP)
    assert (decision.outcome, decision.source) == ("block", "peer")
    assert "overrides own inference" in decision.reason


def test_own_inference_block_wins_over_safe_verdicts() -> None:
    safe = [candidate(OWN, SAFE_SCORES), candidate(FULL, SAFE_SCORES)]
    decision = decide(BASE, safe, own=Inference({"csam": 0.51, "nsfw": 0.2}), own_model=CLIP)
    assert (decision.outcome, decision.source, decision.used) == ("block", "inference", ())
    assert decision.scores == {"csam": 0.51, "nsfw": 0.2}
    assert "own inference" in decision.reason and CLIP.name in decision.reason


def test_own_inference_safe_allows() -> None:
    decision = decide(BASE, [], own=Inference(SAFE_SCORES), own_model=CLIP)
    assert (decision.outcome, decision.source) == ("allow", "inference")
    assert "csam 0.020 < 0.5" in decision.reason


def test_threshold_is_inclusive() -> None:
    assert decide(BASE, [], own=Inference({"csam": 0.5})).outcome == "block"
    assert decide(BASE, [], own=Inference({"csam": 0.4999})).outcome == "allow"


def test_own_block_verdict_is_preferred_in_the_reason_and_source() -> None:
    peer = candidate(FULL, BLOCK_SCORES, "sha256")
    own = candidate(OWN, BLOCK_SCORES, "phash64", 3)
    decision = decide(BASE, [peer, own])
    assert decision.source == "cache" and decision.used[0] is own.verdict and len(decision.used) == 2
    assert "1 more" in decision.reason


def test_untrusted_and_observed_blocks_never_block() -> None:
    decision = decide(BASE, [candidate(STRANGER, BLOCK_SCORES), candidate(OBSERVE, BLOCK_SCORES)])
    assert decision.outcome == "unknown"
    assert "not a peer" in decision.reason and len(decision.observed) == 1


# ---------------------------------------------------------------------------------------------------------------
# Missing categories and odd scores


def test_verdict_without_csam_cannot_vouch() -> None:
    nsfw_only = candidate(FULL, {"nsfw": 0.01})
    decision = decide(BASE, [nsfw_only])
    assert decision.outcome == "unknown" and "no score for csam" in decision.reason


def test_own_inference_without_csam_cannot_vouch_but_a_peer_can() -> None:
    decision = decide(BASE, [], own=Inference({"nsfw": 0.01}))
    assert decision.outcome == "unknown" and "own inference cannot vouch" in decision.reason
    decision = decide(BASE, [candidate(FULL, SAFE_SCORES)], own=Inference({"nsfw": 0.01}))
    assert (decision.outcome, decision.source) == ("allow", "peer")


def test_missing_category_still_blocks_on_another() -> None:
    config = replace(BASE, thresholds=Thresholds(csam=0.5, nsfw=0.7))
    assert decide(config, [candidate(FULL, {"nsfw": 0.8})]).outcome == "block"
    assert decide(config, [candidate(FULL, {"nsfw": 0.6})]).outcome == "unknown"
    assert decide(config, [candidate(FULL, {"nsfw": 0.6, "csam": 0.1})]).outcome == "allow"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.1", None, True])
def test_non_finite_or_non_numeric_scores_count_as_missing(bad: object) -> None:
    decision = decide(BASE, [candidate(FULL, {"csam": bad, "nsfw": 0.1})])  # type: ignore[dict-item]
    assert decision.outcome == "unknown"


def test_no_thresholds_means_everything_is_safe() -> None:
    config = replace(BASE, thresholds=Thresholds(csam=None))
    assert decide(config, [candidate(FULL, BLOCK_SCORES)]).outcome == "allow"


# ---------------------------------------------------------------------------------------------------------------
# Quorum


def test_quorum_needs_distinct_full_peers() -> None:
    config = replace(BASE, safe_quorum=2)
    one = candidate(FULL, SAFE_SCORES)
    same_peer_again = candidate(FULL, SAFE_SCORES, "pixel_sha256")
    block_only_safe = candidate(BLOCK_ONLY, SAFE_SCORES)
    decision = decide(config, [one, same_peer_again, block_only_safe])
    assert decision.outcome == "unknown" and "quorum is 2" in decision.reason
    other = candidate(FULL2, SAFE_SCORES, "pixel_sha256")
    decision = decide(config, [one, other])
    assert (decision.outcome, decision.source) == ("allow", "peer")
    assert {v.issuer for v in decision.used} == {FULL, FULL2} and "2 trusted peers agree" in decision.reason


def test_own_safe_verdict_suffices_whatever_the_quorum() -> None:
    config = replace(BASE, safe_quorum=3)
    decision = decide(config, [candidate(OWN, SAFE_SCORES, "pixel_sha256")])
    assert (decision.outcome, decision.source) == ("allow", "cache")


def test_quorum_does_not_outvote_a_block() -> None:
    config = replace(BASE, safe_quorum=1)
    decision = decide(config, [candidate(FULL, SAFE_SCORES), candidate(FULL2, SAFE_SCORES),
                               candidate(BLOCK_ONLY, BLOCK_SCORES, "phash64", 8)])
    assert decision.outcome == "block"


# ---------------------------------------------------------------------------------------------------------------
# Models


def test_unknown_model_is_not_compared() -> None:
    for scores in (BLOCK_SCORES, SAFE_SCORES):
        decision = decide(BASE, [candidate(FULL, scores, model=OTHER_MODEL)])
        assert decision.outcome == "unknown" and "mystery-net" in decision.reason and "not known" in decision.reason


def test_unknown_model_compared_when_configured() -> None:
    c = candidate(FULL, BLOCK_SCORES, model=OTHER_MODEL)
    assert decide(replace(BASE, compare_unknown_models=True), [c]).outcome == "block"
    peers = dict(PEERS, **{FULL: PeerTrust("full", known_models=frozenset({model_key(OTHER_MODEL)}))})
    assert decide(replace(BASE, peers=peers), [c]).outcome == "block"
    # ...but a peer's known model is that peer's only
    other_peer = candidate(FULL2, BLOCK_SCORES, model=OTHER_MODEL)
    assert decide(replace(BASE, peers=peers), [other_peer]).outcome == "unknown"


def test_model_identity_ignores_version_but_not_rules() -> None:
    newer = replace(CLIP, version="9.9.9")
    assert decide(BASE, [candidate(FULL, BLOCK_SCORES, model=newer)]).outcome == "block"
    other_rules = replace(CLIP, rules="horde-safety-2099")
    assert decide(BASE, [candidate(FULL, BLOCK_SCORES, model=other_rules)]).outcome == "unknown"


def test_own_model_counts_as_known() -> None:
    config = replace(BASE, known_models=frozenset())
    c = candidate(OWN, SAFE_SCORES)
    assert decide(config, [c]).outcome == "unknown"
    assert decide(config, [c], own_model=CLIP).outcome == "allow"
    assert PolicyConfig(known_models=[CLIP]).known_models == frozenset({model_key(CLIP)})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# A node without a model of its own


WITHOUT_MODEL = replace(BASE, known_models=frozenset(), use_issuer_models=True)


def test_a_node_without_a_model_uses_full_and_block_only_peers_under_their_model() -> None:
    # Today's rule first: the same verdicts, model unknown, are not compared.
    assert decide(replace(WITHOUT_MODEL, use_issuer_models=False),
                  [candidate(FULL, BLOCK_SCORES, model=OTHER_MODEL)]).outcome == "unknown"
    block = decide(WITHOUT_MODEL, [candidate(FULL, BLOCK_SCORES, model=OTHER_MODEL)])
    assert (block.outcome, block.source) == ("block", "peer") and "issuer's model" in block.reason
    assert decide(WITHOUT_MODEL, [candidate(BLOCK_ONLY, BLOCK_SCORES, model=OTHER_MODEL)]).outcome == "block"
    assert decide(WITHOUT_MODEL, [candidate(FULL, SAFE_SCORES, model=OTHER_MODEL)]).outcome == "allow"


def test_trusting_the_issuers_model_trusts_no_one_else_more() -> None:
    """What stays safe: an observe peer never counts, a stranger never counts, a block-only peer's safe verdict
    never clears an image, a safe verdict still needs an exact key and every thresholded category."""
    for fooling in (candidate(OBSERVE, BLOCK_SCORES, model=OTHER_MODEL),
                    candidate(STRANGER, BLOCK_SCORES, model=OTHER_MODEL),
                    candidate(BLOCK_ONLY, SAFE_SCORES, model=OTHER_MODEL),
                    candidate(FULL, SAFE_SCORES, "phash64", 0, model=OTHER_MODEL),
                    candidate(FULL, {"nsfw": 0.01}, model=OTHER_MODEL)):
        decision = decide(WITHOUT_MODEL, [fooling])
        assert decision.outcome == "unknown" and decision.used == (), decision.reason
        assert [u.verdict_id for u in decision.unused] == [fooling.verdict.id]
    assert [u.rule for u in decide(WITHOUT_MODEL, [candidate(OBSERVE, BLOCK_SCORES)]).unused] == ["observe"]


def test_policy_config_of_compares_under_the_issuers_model_only_without_a_model() -> None:
    peers = [PeerEntry(actor=FULL, trust="full")]
    model_none = NodeConfig()
    model_none.classifier.model = "none"
    assert policy_config_of(model_none, peers).use_issuer_models is True
    assert policy_config_of(model_none, peers, own_model=CLIP).use_issuer_models is False  # workers' model
    assert policy_config_of(NodeConfig(), peers).use_issuer_models is False  # a model, even one not loaded
    model_none.policy.trust_issuer_models = False
    assert policy_config_of(model_none, peers).use_issuer_models is False


# ---------------------------------------------------------------------------------------------------------------
# Why a verdict was not used


def test_every_unused_verdict_names_its_issuer_and_rule() -> None:
    config = replace(BASE, safe_quorum=2)
    cases = [
        (candidate(FULL, BLOCK_SCORES, model=OTHER_MODEL), "unknown_model",
         f"1 verdict from {FULL} not used: model mystery-net@mystery-rules is not in known_models"),
        (candidate(OBSERVE, BLOCK_SCORES), "observe", f"1 verdict from {OBSERVE} not used: the issuer is trusted to "
                                                      "observe only"),
        (candidate(STRANGER, BLOCK_SCORES), "not_a_peer", f"1 verdict from {STRANGER} not used: the issuer is not a "
                                                          "peer in peers.yaml"),
        (candidate(FULL, SAFE_SCORES), "quorum", f"1 verdict from {FULL} not used: safe, but safe_quorum is 2 and 1 "
                                                 "full peer(s) say so"),
        (candidate(FULL, BLOCK_SCORES, "phash64", 9), "too_far", f"1 verdict from {FULL} not used: it blocks, but "
                                                                 "phash64 distance 9 is beyond the block radius 8"),
        (candidate(BLOCK_ONLY, SAFE_SCORES), "blocks_only", f"1 verdict from {BLOCK_ONLY} not used: safe, but the "
                                                            "issuer is trusted for blocks only"),
        (candidate(FULL, BLOCK_SCORES, retracted="false positive on review"), "retracted",
         f"1 verdict from {FULL} not used: retracted: false positive on review"),
        (candidate(OWN, {"nsfw": 0.2}), "cannot_vouch", "1 own verdict not used: it cannot vouch: no score for csam"),
    ]
    for c, rule, line in cases:
        decision = decide(config, [c])
        assert decision.outcome == "unknown", decision.reason
        assert [(u.verdict_id, u.issuer, u.rule) for u in decision.unused] == [(c.verdict.id, c.verdict.issuer, rule)]
        assert unused_lines(decision.unused)[0].startswith(line), unused_lines(decision.unused)
        assert line in decision.reason
    two = decide(BASE, [candidate(OBSERVE, BLOCK_SCORES), candidate(OBSERVE, SAFE_SCORES)])
    assert unused_lines(two.unused) == [f"2 verdicts from {OBSERVE} not used: the issuer is trusted to observe only "
                                        "(trust: observe)"]


def test_a_retracted_verdict_never_counts() -> None:
    for issuer in (OWN, FULL):
        decision = decide(BASE, [candidate(issuer, BLOCK_SCORES, retracted="reviewed")], own=Inference(SAFE_SCORES))
        assert (decision.outcome, decision.source, decision.used) == ("allow", "inference", ())
        assert [u.rule for u in decision.unused] == ["retracted"]


# ---------------------------------------------------------------------------------------------------------------
# Both perceptual hashes for a block


def test_a_phash_collision_with_pdq_far_apart_reuses_no_block() -> None:
    forged = candidate(FULL, BLOCK_SCORES, "phash64", 0, distances={"phash64": 0, "pdq256": 118})
    decision = decide(BASE, [forged])
    assert decision.outcome == "unknown"
    assert [u.rule for u in decision.unused] == ["too_far"]
    assert "pdq256 distance 118 is beyond the block radius 31" in decision.reason
    assert "block_match is both" in decision.reason
    assert decide(replace(BASE, block_match="either"), [forged]).outcome == "block"  # the opt-in


def test_block_match_both_at_the_boundaries() -> None:
    def outcome(distances: dict[str, int], **kw) -> str:
        kind = min(distances, key=lambda k: distances[k])
        return decide(replace(BASE, **kw), [candidate(FULL, BLOCK_SCORES, kind, distances[kind],
                                                      distances=distances)]).outcome
    assert outcome({"phash64": 8, "pdq256": 31}) == "block"
    assert outcome({"phash64": 8, "pdq256": 32}) == "unknown"
    assert outcome({"phash64": 9, "pdq256": 0}) == "unknown"     # PDQ alone within is not enough either
    assert outcome({"phash64": 9, "pdq256": 0}, block_match="either") == "block"
    assert outcome({"phash64": 9, "pdq256": 32}, block_match="either") == "unknown"
    assert outcome({"phash64": 3}) == "block"                     # only one hash on both sides: it counts
    assert outcome({"pdq256": 31}) == "block"
    assert outcome({"pdq256": 32}) == "unknown"


def test_safe_perceptual_reuse_needs_every_hash_within_the_safe_radius() -> None:
    config = replace(BASE, reuse_safe_perceptual=True)
    close = candidate(FULL, SAFE_SCORES, "phash64", 1, distances={"phash64": 1, "pdq256": 6})
    forged = candidate(FULL, SAFE_SCORES, "phash64", 0, distances={"phash64": 0, "pdq256": 90})
    assert decide(config, [close]).outcome == "allow"
    assert decide(config, [forged]).outcome == "unknown"
    assert decide(replace(config, block_match="either"), [forged]).outcome == "unknown"


def test_a_bad_block_match_is_refused() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(block_match="any")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Candidate(verdict(FULL, SAFE_SCORES), "phash64", 0, False, distances={"pdq256": 300})


# ---------------------------------------------------------------------------------------------------------------
# Per-peer thresholds


def test_per_peer_thresholds_looser_and_stricter() -> None:
    peers = dict(PEERS, **{FULL: PeerTrust("full", thresholds=Thresholds(csam=0.9)),
                           FULL2: PeerTrust("full", thresholds=Thresholds(csam=0.3))})
    config = replace(BASE, peers=peers)
    middling = {"csam": 0.6, "nsfw": 0.1}
    assert decide(config, [candidate(FULL, middling)]).outcome == "allow"     # looser for FULL
    assert decide(config, [candidate(FULL2, {"csam": 0.4})]).outcome == "block"  # stricter for FULL2
    assert decide(config, [candidate(OWN, middling)]).outcome == "block"      # own thresholds unchanged
    assert decide(config, [candidate(BLOCK_ONLY, middling)]).outcome == "block"


# ---------------------------------------------------------------------------------------------------------------
# label_for and validation


@pytest.mark.parametrize("scores, thresholds, label", [
    ({"csam": 0.5, "nsfw": 0.9}, Thresholds(), "csam"),
    ({"csam": 0.49, "nsfw": 0.9}, Thresholds(), "nsfw"),       # nsfw has no threshold: reference 0.5 labels it
    ({"csam": 0.49, "nsfw": 0.49}, Thresholds(), "safe"),
    ({"csam": 0.35, "nsfw": 0.1}, Thresholds(csam=0.3), "csam"),
    ({"csam": 0.1, "nsfw": 0.65}, Thresholds(nsfw=0.7), "safe"),
    ({"csam": 0.1, "nsfw": 0.1, "underage": 0.99}, Thresholds(underage=0.5), "safe"),
    ({"nsfw": 0.7}, Thresholds(), "nsfw"),
    ({"csam": float("nan")}, Thresholds(), "safe"),
])
def test_label_for(scores: dict, thresholds: Thresholds, label: str) -> None:
    assert label_for(scores, thresholds) == label


@pytest.mark.parametrize("build", [
    lambda: Thresholds(csam=1.5),
    lambda: Thresholds(nsfw=-0.1),
    lambda: Thresholds(csam="0.5"),
    lambda: PeerTrust("trusted"),
    lambda: PolicyConfig(block_phash_distance=65),
    lambda: PolicyConfig(safe_pdq_distance=-1),
    lambda: PolicyConfig(safe_quorum=0),
    lambda: PolicyConfig(peers={FULL: "full"}),
    lambda: PolicyConfig(known_models=frozenset({"ViT-L-14"})),
    lambda: Candidate(verdict(FULL, SAFE_SCORES), "md5", 0, False),
    lambda: Candidate(verdict(FULL, SAFE_SCORES), "phash64", 65, False),
    lambda: Candidate(verdict(FULL, SAFE_SCORES), "sha256", 3, False),
])
def test_bad_configuration_is_refused(build) -> None:
    with pytest.raises(ValueError):
        build()


# ---------------------------------------------------------------------------------------------------------------
# Properties

ISSUERS = [OWN, FULL, FULL2, BLOCK_ONLY, OBSERVE, STRANGER]
score_value = st.floats(0.0, 1.0)
scores_st = st.dictionaries(st.sampled_from(["csam", "nsfw", "underage"]), score_value, max_size=3)
threshold_st = st.one_of(st.none(), score_value)
thresholds_st = st.builds(Thresholds, csam=threshold_st, nsfw=threshold_st, underage=threshold_st)
match_st = st.one_of(st.tuples(st.sampled_from(["sha256", "pixel_sha256"]), st.just(0)),
                     st.tuples(st.just("phash64"), st.integers(0, 64)),
                     st.tuples(st.just("pdq256"), st.integers(0, 256)))


@st.composite
def candidates_st(draw, matches=match_st) -> list[Candidate]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        issuer = draw(st.sampled_from(ISSUERS))
        match, distance = draw(matches)
        model = draw(st.sampled_from([CLIP, OTHER_MODEL]))
        distances = None
        if match in ("phash64", "pdq256") and draw(st.booleans()):  # the other hash measured too
            other, bits = ("pdq256", 256) if match == "phash64" else ("phash64", 64)
            distances = {match: distance, other: draw(st.integers(0, bits))}
        retracted = draw(st.one_of(st.none(), st.just("retracted by its issuer")))
        out.append(candidate(issuer, draw(scores_st), match, distance, model, distances, retracted))
    return out


@st.composite
def configs_st(draw) -> PolicyConfig:
    peer_thresholds = {issuer: draw(st.one_of(st.none(), thresholds_st)) for issuer in PEERS}
    return replace(BASE, thresholds=draw(thresholds_st),
                   peers={i: replace(t, thresholds=peer_thresholds[i]) for i, t in PEERS.items()},
                   reuse_safe_perceptual=draw(st.booleans()), safe_quorum=draw(st.integers(1, 3)),
                   compare_unknown_models=draw(st.booleans()), use_issuer_models=draw(st.booleans()),
                   block_match=draw(st.sampled_from(["both", "either"])))


def lowered(draw, thresholds: Thresholds | None) -> Thresholds | None:
    if thresholds is None:
        return None
    values = {}
    for category in ("csam", "nsfw", "underage"):
        current = getattr(thresholds, category)
        values[category] = draw(st.one_of(st.none(), score_value) if current is None else st.floats(0.0, current))
    return Thresholds(**values)


@given(st.data(), configs_st(), candidates_st(), st.one_of(st.none(), scores_st))
@settings(max_examples=400, deadline=None)
def test_lowering_thresholds_never_unblocks(data, config: PolicyConfig, candidates, own_scores) -> None:
    own = None if own_scores is None else Inference(own_scores)
    stricter = replace(config, thresholds=lowered(data.draw, config.thresholds),
                       peers={i: replace(t, thresholds=lowered(data.draw, t.thresholds))
                              for i, t in config.peers.items()})
    before = decide(config, candidates, own, CLIP)
    after = decide(stricter, candidates, own, CLIP)
    if before.outcome == "block":
        assert after.outcome == "block", (before.reason, after.reason)
    if after.outcome == "allow":
        assert before.outcome == "allow", (before.reason, after.reason)


perceptual_only = st.one_of(st.tuples(st.just("phash64"), st.integers(0, 64)),
                            st.tuples(st.just("pdq256"), st.integers(0, 256)))


@given(configs_st(), candidates_st(matches=perceptual_only))
@settings(max_examples=300, deadline=None)
def test_perceptual_matches_never_allow_without_opt_in(config: PolicyConfig, candidates) -> None:
    decision = decide(replace(config, reuse_safe_perceptual=False), candidates, own_model=CLIP)
    assert decision.outcome != "allow", decision.reason


@given(configs_st(), candidates_st())
@settings(max_examples=300, deadline=None)
def test_allow_rests_only_on_trusted_full_issuers(config: PolicyConfig, candidates) -> None:
    decision = decide(config, candidates, own_model=CLIP)
    if decision.outcome == "allow":
        assert decision.used and all(v.issuer in (OWN, FULL, FULL2) for v in decision.used)
    if decision.outcome == "block":
        assert all(v.issuer in (OWN, FULL, FULL2, BLOCK_ONLY) for v in decision.used)
    assert all(v.issuer == OBSERVE for v in decision.observed)
    retracted = {c.verdict.id for c in candidates if c.retracted is not None}
    assert not retracted & {v.id for v in decision.used}
    # every candidate either decided or is accounted for (unused), never silently dropped
    accounted = {v.id for v in decision.used} | {u.verdict_id for u in decision.unused}
    if decision.outcome == "unknown":
        assert accounted == {c.verdict.id for c in candidates}


@given(configs_st(), candidates_st(matches=perceptual_only))
@settings(max_examples=300, deadline=None)
def test_with_both_hashes_a_perceptual_block_needs_both_within_unless_either(config: PolicyConfig,
                                                                            candidates) -> None:
    decision = decide(config, candidates, own_model=CLIP)
    if decision.outcome != "block" or config.block_match == "either":
        return
    by_id = {c.verdict.id: c for c in candidates}
    for used in decision.used:
        distances = by_id[used.id].perceptual_distances()
        assert distances.get("phash64", 0) <= config.block_phash_distance, distances
        assert distances.get("pdq256", 0) <= config.block_pdq_distance, distances
