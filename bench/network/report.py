"""The table a person reads, per shape; the JSON line beside it carries the same figures for machines."""
from __future__ import annotations

import json
from typing import Any

from bench.network.figures import SOURCES
from bench.network.scale import REAL_MODEL_CPU_S, at_scale

_LABELS = {"cache": "cache (own verdict)", "peer-push": "peer (push)", "peer-backfill": "peer (backfill)",
           "peer-lookup": "peer (lookup)", "inference": "inference", "unavailable": "unavailable (rejected)",
           "media": "media", "no answer": "no answer"}


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _kb(n: float) -> str:
    return f"{n / 1000:,.1f} KB"


def _row(label: str, *cells: str, width: int = 44) -> str:
    return f"  {label:<{width}}" + "".join(f"{c:>17}" for c in cells)


def render(fig: dict[str, Any]) -> str:
    w, fed, cost = fig["workload"], fig["federated"], fig["federation"]
    off = fig.get("federation_off")
    kinds = list(fed["by_kind"])
    lines = [
        f"== network bench, shape {fig['shape']}: {fig['nodes']['classifying']} classifying node(s) (tiny CLIP), "
        f"{fig['nodes']['model-none']} with classifier.model: none ==",
        f"workload (seed {w['seed']}): {w['posts']} posts ({w['distinct_images']} distinct images: "
        + ", ".join(f"{w.get('kind_' + k, 0)} {k}s" for k in ("photo", "variant", "generated", "repost"))
        + f"), {w['uploads']} uploads; median file {w['median_bytes'] / 1000:.0f} KB",
        f"  posts spread over {w['window_s']:g} s at a classifying origin; reach Zipf a={w['zipf']:g} "
        f"(mean {w['mean_reach']:.2f} nodes, {w['reach_all']} posts reach all {sum(fig['nodes'].values())}); "
        f"arrivals {w['delay_min_s']:g}-{w['delay_max_s']:g} s after the origin's answer (log-uniform); "
        f"{w['clients']} pict-rs clients per node",
        f"  federation: {w['federation_settings']}",
        "",
        _row("", "federated", "federation off"),
        _row("inference runs per distinct image (goal <= 1.1)", f"{fed['inference_per_distinct_image']:.2f}",
             f"{off['inference_per_distinct_image']:.2f}" if off else "-"),
        _row("inference runs (counted by the nodes)", f"{fed['inference']}", f"{off['inference']}" if off else "-"),
        _row("CPU seconds, all nodes, during the workload", f"{fed['cpu_s']:.1f}", f"{off['cpu_s']:.1f}" if off else "-"),
    ]
    if off:
        lines.append(_row("saved by federation", f"inference {_pct(fig['saved']['inference'])}",
                          f"CPU {_pct(fig['saved']['cpu'])}"))
        lines.append(_row(f"  CPU saved with a {REAL_MODEL_CPU_S:g} s/image model (computed)", "",
                          _pct(fig['saved']['cpu_real_model_computed'])))
    lines += ["", _row("answers by source, share of uploads", *kinds, "off: all")]
    for source in SOURCES:
        shares = [fed["by_kind"][k]["share"][source] for k in kinds]
        off_share = off["by_kind"]["classifying"]["share"][source] if off else 0.0
        if any(shares) or off_share:
            lines.append(_row(f"  {_LABELS[source]}", *map(_pct, shares), _pct(off_share) if off else "-"))
    lines += [
        _row("  uploads", *(f"{fed['by_kind'][k]['uploads']}" for k in kinds),
             f"{off['by_kind']['classifying']['uploads']}" if off else "-"),
        _row("hook latency p50 / p99, ms", *(_lat(fed["by_kind"][k]) for k in kinds),
             _lat(off["by_kind"]["classifying"]) if off else "-"),
        _row("  the node's own time (elapsed_ms) p50 / p99", *(_lat(fed["by_kind"][k], "pipeline_ms") for k in kinds),
             _lat(off["by_kind"]["classifying"], "pipeline_ms") if off else "-"),
        _row("resident memory per node (max), MiB", *(f"{fed['by_kind'][k]['memory_mib']['resident']}" for k in kinds),
             f"{off['by_kind']['classifying']['memory_mib']['resident']}" if off else "-"),
        _row("CPU ms per upload, nodes of the kind", *(f"{fed['by_kind'][k]['cpu_ms_per_upload']:.1f}" for k in kinds),
             f"{off['by_kind']['classifying']['cpu_ms_per_upload']:.1f}" if off else "-"),
        "",
        "  latency by source (federated), p50 / p99 ms: " + "; ".join(
            f"{s} {v['p50']:g} / {v['p99']:g} (n={v['n']})" for s, v in sorted(fed["latency_by_source_ms"].items())),
    ]
    d = fig["verdict_to_follower_s"]
    if d["p50"] is not None:
        lines.append(f"  first verdict -> follower: p50 {d['p50']:.2f} s, p99 {d['p99']:.2f} s "
                     f"({d['arrivals']} arrivals, {d['missing']} missing)")
    kinds_line = ", ".join(f"{k} {v['requests']} req {_kb(v['bytes'])}" for k, v in cost["by_kind"].items())
    lines += [
        f"  between nodes (relay counts, HTTP bytes both ways): {cost['requests']} requests, {_kb(cost['bytes'])} "
        f"for {cost['verdicts']} verdicts = {cost['requests_per_verdict']:.2f} requests and "
        f"{_kb(cost['bytes_per_verdict'])} per verdict ({kinds_line})",
        f"  push: {_kb(cost['push_bytes_per_verdict_follower'])} per verdict and follower, "
        f"{cost['verdicts_per_push']:.1f} verdicts per Create, {_pct(cost['pushed_used']).strip()} of pushed "
        f"verdicts decided an upload there; lookups: {cost['lookups_per_upload']:.2f} per upload, "
        f"{_kb(cost['lookup_bytes_each'])} each; retraction-log polls {cost['deletes_polls_per_second']:.2f}/s",
        f"  outbox pages served: log {cost['outbox_pages_served']['log']} (before the workload: "
        f"{cost['start_outbox_pages']}), deletes "
        f"{cost['outbox_pages_served']['deletes']}; verdicts received: " +
        ", ".join(f"{k} {v}" for k, v in cost["received"].items()) + f"; relay CPU {cost['relay_cpu_s']:.1f} s "
        "(not in the nodes' CPU)",
        f"  start-up: federated {fed['start_s']:.0f} s" + (f", off {off['start_s']:.0f} s" if off else "") +
        f"; workload {fed['play_s']:.0f} s; load average {fig['load_average'][0]:.1f} before, "
        f"{fig['load_average'][1]:.1f} after (2 shared cores)",
        "",
        "  cost at scale, COMPUTED from the figures above (not measured):",
    ]
    for r in at_scale(fig):
        saved = 1 - r["inference_per_day"] / max(1, r["inference_per_day_off"])
        lines.append(f"    {r['instances']:>5,} instances, {r['load']}: inference {r['inference_per_day_off']:,}"
                     f" -> {r['inference_per_day']:,}/day ({_pct(saved).strip()} saved); pushes "
                     f"{r['push_gb_per_day']:,} GB/day network-wide, {r['model_none_in_mb_per_day']:,} MB/day into "
                     f"each model-none node; lookups {r['lookup_gb_per_day']:,} GB/day"
                     + (f"; retraction polls {r['retraction_polls_per_day']:,}/day "
                        f"({r['retraction_polls_gb_per_day']:,} GB)" if r["retraction_polls_per_day"] else ""))
    lines += ["", "  checks (the counters add up):"]
    for phase_name, phase in (("federated", fed), ("federation off", off)):
        for c in (phase or {}).get("checks", []):
            lines.append(f"    {'ok  ' if c['ok'] else 'FAIL'} {phase_name}: {c['what']} ({c['detail']})")
    return "\n".join(lines)


def _lat(kind: dict[str, Any], key: str = "latency_ms") -> str:
    lat = kind[key]
    return "-" if lat["p50"] is None else f"{lat['p50']:g} / {lat['p99']:g}"


def json_line(fig: dict[str, Any]) -> str:
    return json.dumps({**fig, "at_scale_computed": at_scale(fig)}, sort_keys=False)
