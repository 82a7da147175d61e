"""Prometheus metrics of one node. Each Node owns its own CollectorRegistry, so several nodes in one
process (tests, benchmarks) never share or collide on counters. Other modules add their metrics to
`Metrics.registry` (e.g. `Counter("verdictnode_deliveries_total", "...", registry=node.metrics.registry)`).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets around what matters: exact hits take ~1 ms, inference 0.1-2 s, the budget is 25 s.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict = {}
        r = self.registry
        self.images = Counter("verdictnode_images_total", "Images decided, by outcome and by what the decision came from.",
                              ["outcome", "source"], registry=r)
        self.inference_images = Counter("verdictnode_inference_images_total",
                                        "Images classified by this node's own model (one per singleflight group).",
                                        registry=r)
        self.inference_failures = Counter("verdictnode_inference_failures_total",
                                          "Images whose classification could not run, by reason.", ["reason"], registry=r)
        self.cache_hits = Counter("verdictnode_cache_hits_total",
                                  "Images decided from stored verdicts, by origin (cache: own, peer) and key matched.",
                                  ["origin", "match"], registry=r)
        self.validate_seconds = Histogram("verdictnode_validate_seconds", "Time to answer a pict-rs validation request.",
                                          buckets=_BUCKETS, registry=r)
        self.pipeline_seconds = Histogram("verdictnode_pipeline_seconds", "Time to decide one image, by source.",
                                          ["source"], buckets=_BUCKETS, registry=r)
        self.own_verdicts = Counter("verdictnode_own_verdicts_total", "Verdicts signed by this node.", registry=r)
        self.peer_decisions = Counter("verdictnode_peer_decisions_total",
                                      "Images decided from peers' verdicts, by how the deciding verdict reached this "
                                      "node (push, backfill, lookup; unknown for verdicts stored before this was "
                                      "recorded).", ["origin"], registry=r)
        self.peer_verdicts_stored = Counter("verdictnode_peer_lookup_verdicts_total",
                                            "Verified peer verdicts stored from peer lookups.", registry=r)
        self.classifier_available = Gauge("verdictnode_classifier_available", "1 when images can be classified now.",
                                          registry=r)
        self.index_size = Gauge("verdictnode_index_entries", "Entries in the perceptual indexes.", ["hash"], registry=r)

    def child(self, metric, *labels: str):
        """`metric.labels(*labels)`, cached: prometheus-client's lookup costs more than the rest of a cache hit."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
