"""From a run to its figures: the headline, where answers came from, latency, federation cost, the baseline,
and the checks that the counters add up. One dict per shape, which the table and the JSON line both show.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Sequence

from bench.federation import percentile
from bench.network.run import Phase, ShapeRun
from bench.network.scale import real_model_cpu_saved
from bench.network.workload import describe

#: Where an answer's decision came from, in the order the table lists them.
SOURCES = ("cache", "peer-push", "peer-backfill", "peer-lookup", "inference", "unavailable", "media", "no answer")


def _ms(values: Sequence[float], q: float) -> float | None:
    return round(percentile(list(values), q) * 1000, 1) if values else None


def _total(phase: Phase, name: str, **labels: str) -> float:
    return sum(m.get(name, **labels) for m in phase.metrics)


def by_kind(phase: Phase) -> dict[str, dict[str, Any]]:
    """Per node kind: how many nodes, answers by source (shares), hook latency, CPU and memory."""
    out: dict[str, dict[str, Any]] = {}
    kinds = sorted({phase.kind(i) for i in range(len(phase.network.peers))})
    for kind in kinds:
        nodes = [i for i in range(len(phase.network.peers)) if phase.kind(i) == kind]
        answers = [a for a in phase.answers if a.node in nodes]
        sources = Counter(a.source for a in answers)
        latency = [a.latency for a in answers if a.status is not None]
        pipeline = [a.body["elapsed_ms"] / 1000 for a in answers if isinstance(a.body.get("elapsed_ms"), (int, float))]
        out[kind] = {
            "nodes": len(nodes), "uploads": len(answers),
            "share": {s: round(sources.get(s, 0) / max(1, len(answers)), 4) for s in SOURCES},
            "latency_ms": {"p50": _ms(latency, 0.5), "p99": _ms(latency, 0.99)},
            # The node's own time for the decision (the answer's elapsed_ms): what is left of the latency is
            # HTTP, and waiting for a CPU on the shared cores.
            "pipeline_ms": {"p50": _ms(pipeline, 0.5), "p99": _ms(pipeline, 0.99)},
            "queue_wait_ms_p99": _ms([a.sent - a.due for a in answers], 0.99),
            "cpu_s": round(sum(phase.cpu[i] for i in nodes), 2),
            "cpu_ms_per_upload": round(1000 * sum(phase.cpu[i] for i in nodes) / max(1, len(answers)), 1),
            "memory_mib": {"resident": round(max(phase.memory[i][0] for i in nodes)),
                           "peak": round(max(phase.memory[i][1] for i in nodes))},
        }
    return out


def latency_by_source(phase: Phase) -> dict[str, dict[str, float]]:
    grouped: dict[str, list[float]] = defaultdict(list)
    for a in phase.answers:
        if a.status is not None:
            grouped[a.source].append(a.latency)
    return {s: {"n": len(v), "p50": _ms(v, 0.5), "p99": _ms(v, 0.99)} for s, v in grouped.items()}


def federation_cost(phase: Phase) -> dict[str, Any]:
    """Requests and bytes between nodes (the relay's counts) per verdict issued, by what they were for; the
    push cost per verdict and follower; outbox pages served; duplicates received."""
    verdicts = int(_total(phase, "verdictnode_inference_images_total"))
    wire = phase.wire or {}
    kinds = {k: {"requests": r, "bytes": up + down} for k, (r, up, down) in sorted(wire.items()) if r or up or down}
    requests = sum(k["requests"] for k in kinds.values())
    total_bytes = sum(k["bytes"] for k in kinds.values())
    # Every own verdict goes to every follower of its issuer: the pushes' unit of work.
    deliveries = sum(phase.own_verdicts[c] * len(phase.network.followers(c)) for c in range(len(phase.own_verdicts)))
    inbox = kinds.get("inbox", {"requests": 0, "bytes": 0})
    lookup = kinds.get("lookup", {"requests": 0, "bytes": 0})
    deletes = kinds.get("deletes", {"requests": 0, "bytes": 0})
    return {
        "verdicts": verdicts, "requests": requests, "bytes": total_bytes,
        "requests_per_verdict": round(requests / max(1, verdicts), 2),
        "bytes_per_verdict": round(total_bytes / max(1, verdicts)),
        "by_kind": kinds,
        "push_bytes_per_verdict_follower": round(inbox["bytes"] / max(1, deliveries)),
        "verdicts_per_push": round(deliveries / max(1, inbox["requests"]), 2),
        # How much of what was pushed decided an upload at the follower: the rest is held in case.
        "pushed_used": round(sum(a.source == "peer-push" for a in phase.answers) / max(1, deliveries), 3),
        "lookup_bytes_each": round(lookup["bytes"] / max(1, lookup["requests"])),
        "lookups_per_upload": round(lookup["requests"] / max(1, len(phase.answers)), 3),
        "deletes_polls_per_second": round(deletes["requests"] / max(1e-9, phase.measured_seconds), 2),
        "deletes_poll_pairs": phase.network.unfollowed_issuers(),
        "deletes_poll_bytes_each": round(deletes["bytes"] / max(1, deletes["requests"])),
        "outbox_pages_served": {part: int(_total(phase, "verdictnode_federation_outbox_pages_served_total", part=part))
                                for part in ("log", "deletes")},
        "received": {result: int(_total(phase, "verdictnode_federation_verdicts_received_total", result=result))
                     for result in ("stored", "duplicate", "lookup", "refused")},
        "relay_cpu_s": round(phase.wire_cpu, 2),
        "start_outbox_pages": phase.start_outbox_pages,
    }


def checks(phase: Phase, run: ShapeRun) -> list[tuple[str, bool, str]]:
    """The counters that must add up, each (what, holds, the numbers)."""
    sched = run.schedule
    expected = Counter([(p, o) for p, o in enumerate(sched.origins)] +
                       [(p, a.node) for p, arrivals in enumerate(sched.arrivals) for a in arrivals])
    got = Counter((a.post, a.node) for a in phase.answers if a.status in (200, 406) and "decision" in a.body)
    out = [("every posted image answered at every node it reached", got == expected,
            f"{sum(got.values())} answers for {sum(expected.values())} uploads")]
    per_node = Counter(a.node for a in phase.answers)
    counted = [int(m.get("verdictnode_images_total")) for m in phase.metrics]
    out.append(("each node counted each upload it answered (verdictnode_images_total)",
                counted == [per_node.get(i, 0) for i in range(len(counted))], f"{counted}"))
    out.append(("each node recorded each upload it answered (decisions table)",
                phase.decision_rows == [per_node.get(i, 0) for i in range(len(counted))], f"{phase.decision_rows}"))
    inference = [int(m.get("verdictnode_inference_images_total")) for m in phase.metrics]
    signed = [int(m.get("verdictnode_own_verdicts_total")) for m in phase.metrics]
    answered = len({a.body.get("verdict") for a in phase.answers if a.source == "inference"})
    out.append(("inference count equals the verdicts issued (metric, own verdicts stored, inference answers)",
                inference == signed == phase.own_verdicts and sum(inference) == answered,
                f"inference {sum(inference)}, signed {sum(signed)}, stored {sum(phase.own_verdicts)}, "
                f"distinct verdicts in inference answers {answered}"))
    for origin in ("push", "backfill", "lookup"):
        metric = [int(m.get("verdictnode_peer_decisions_total", origin=origin)) for m in phase.metrics]
        seen = Counter(a.node for a in phase.answers if a.source == f"peer-{origin}")
        out.append((f"peer decisions by origin {origin} match the answers",
                    metric == [seen.get(i, 0) for i in range(len(metric))], f"{sum(metric)}"))
    if phase.network.follows:
        out.append(("every verdict reached every follower of its issuer", phase.missing == 0,
                    f"{len(phase.delays)} arrived, {phase.missing} missing"))
    return out


def phase_figures(phase: Phase, run: ShapeRun) -> dict[str, Any]:
    inference = int(_total(phase, "verdictnode_inference_images_total"))
    return {
        "inference": inference,
        "inference_per_distinct_image": round(inference / max(1, run.schedule.distinct_images), 3),
        "cpu_s": round(sum(phase.cpu), 2),
        "by_kind": by_kind(phase),
        "latency_by_source_ms": latency_by_source(phase),
        "start_s": round(phase.start_seconds, 1), "play_s": round(phase.play_seconds, 1),
        "checks": [{"what": w, "ok": ok, "detail": d} for w, ok, d in checks(phase, run)],
    }


def shape_figures(run: ShapeRun, settings: dict[str, Any]) -> dict[str, Any]:
    fed = run.federated
    delays = fed.delays
    out: dict[str, Any] = {
        "bench": "network", "shape": run.shape.name,
        "nodes": {"classifying": run.shape.classifying, "model-none": run.shape.small},
        "workload": {**describe(run.schedule), **settings},
        "federated": phase_figures(fed, run),
        "verdict_to_follower_s": {"p50": round(percentile(delays, 0.5), 3) if delays else None,
                                  "p99": round(percentile(delays, 0.99), 3) if delays else None,
                                  "arrivals": len(delays), "missing": fed.missing},
        "federation": federation_cost(fed),
        "load_average": [round(x, 2) for x in run.load],
    }
    if run.baseline is not None:
        off = phase_figures(run.baseline, run)
        out["federation_off"] = off
        out["saved"] = {"inference": round(1 - out["federated"]["inference"] / max(1, off["inference"]), 3),
                        "cpu": round(1 - out["federated"]["cpu_s"] / max(1e-9, off["cpu_s"]), 3),
                        "cpu_real_model_computed": round(real_model_cpu_saved(out["federated"], off), 3)}
    return out
