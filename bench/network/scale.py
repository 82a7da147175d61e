"""Cost at scale: COMPUTED from the per-verdict and per-upload figures one run measured, not measured.

A network of N instances, each receiving M media files a day, where an image reaches as many instances as
in the bench's workload (uploads per distinct image, measured), classified as often per distinct image as
the bench measured, and each verdict pushed to every follower of its issuer at the measured bytes per
verdict and follower (batches as full as in the run; fuller batches cost less), and each node that lists an
issuer it does not follow polling that issuer's retractions as often as measured (every
federation.poll_seconds, whatever the load). The shape grows as it is:

  hub   one classifying node followed by the N - 1 others;
  mesh  40% classifying nodes following each other, 60% model-none nodes following two of them.

Loads: IFTAS's measured load, about 10,000 media files a day across 8 servers (1,250 per server), and
lemmy.world's order of magnitude, taken here as 100,000 media files a day per instance (a round figure
for a large instance, not a measurement).
"""
from __future__ import annotations

from typing import Any

#: CPU seconds one image costs a real model on CPU: ViT-B-32 runs at about 20 images/s on 2 cores (README's
#: classifier figure); the tiny test model costs a few milliseconds, so it hides what inference saved costs.
REAL_MODEL_CPU_S = 0.1

LOADS = {"IFTAS (1,250 media/day/instance)": 1_250, "lemmy.world order (100,000 media/day/instance)": 100_000}
SIZES = (100, 1_000)


def real_model_cpu_saved(federated: dict[str, Any], off: dict[str, Any]) -> float:
    """The CPU share federation saves when each inference costs REAL_MODEL_CPU_S more than the tiny model's
    (computed: the measured CPU plus that much per measured inference run, with and without federation)."""
    with_fed = federated["cpu_s"] + federated["inference"] * REAL_MODEL_CPU_S
    without = off["cpu_s"] + off["inference"] * REAL_MODEL_CPU_S
    return 1 - with_fed / without


def fan_out(shape: str, n: int) -> float:
    """Followers per verdict in a network of ``n`` instances of this shape."""
    if shape == "hub":
        return n - 1
    classifying = 0.4 * n
    return (classifying - 1) + (n - classifying) * 2 / classifying


def followed_share(shape: str, n: int) -> float:
    """The share of the network's verdicts a model-none node receives (those of the nodes it follows)."""
    return 1.0 if shape == "hub" else 2 / (0.4 * n)


def unfollowed_pairs(shape: str, n: int) -> float:
    """(node, issuer) pairs that poll for retractions: in the mesh each model-none node lists every classifying
    node and follows two; in the hub every node follows the one issuer."""
    return 0.0 if shape == "hub" else 0.6 * n * (0.4 * n - 2)


def at_scale(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (size, load): inference a day with and without federation, and federation traffic."""
    work = figures["workload"]
    fed = figures["federation"]
    per_distinct = figures["federated"]["inference_per_distinct_image"]
    uploads_per_image = work["uploads"] / work["distinct_images"]
    off = figures.get("federation_off")
    off_per_upload = off["inference"] / work["uploads"] if off else 1.0
    rows = []
    for load_name, per_instance in LOADS.items():
        for n in SIZES:
            uploads = n * per_instance
            verdicts = uploads / uploads_per_image * per_distinct
            push = verdicts * fan_out(figures["shape"], n) * fed["push_bytes_per_verdict_follower"]
            lookups = uploads * fed["lookups_per_upload"] * fed["lookup_bytes_each"]
            # Retraction polls do not grow with the load but with the pairs: a rate per pair, as measured.
            per_pair = fed["deletes_polls_per_second"] / fed["deletes_poll_pairs"] if fed["deletes_poll_pairs"] else 0.0
            polls = unfollowed_pairs(figures["shape"], n) * per_pair * 86_400
            rows.append({"instances": n, "load": load_name, "uploads_per_day": uploads,
                         "inference_per_day_off": round(uploads * off_per_upload),
                         "inference_per_day": round(verdicts),
                         "push_gb_per_day": round(push / 1e9, 2), "lookup_gb_per_day": round(lookups / 1e9, 2),
                         "retraction_polls_per_day": round(polls),
                         "retraction_polls_gb_per_day": round(polls * fed["deletes_poll_bytes_each"] / 1e9, 2),
                         "model_none_in_mb_per_day": round(verdicts * followed_share(figures["shape"], n)
                                                           * fed["push_bytes_per_verdict_follower"] / 1e6, 1)})
    return rows
