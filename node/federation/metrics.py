"""Federation's Prometheus counters, made once per node registry (several nodes may share a process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class FederationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter("verdictnode_federation_verdicts_received_total",
                                "Peer verdicts taken in through inbox, backfill or lookup, by result.",
                                ["result"], registry=registry)
        self.refused = Counter("verdictnode_federation_refused_total",
                               "Federation requests refused, by HTTP status.", ["status"], registry=registry)
        self.retractions = Counter("verdictnode_federation_retractions_received_total",
                                   "Retractions received from peers' issuers and applied.", registry=registry)
        self.outbox_entries = Counter("verdictnode_federation_outbox_entries_total",
                                      "Entries appended to the outbox log, by type.", ["type"], registry=registry)
        self.outbox_reads = Counter("verdictnode_federation_outbox_pages_served_total",
                                    "Pages of our change log served to peers: part=log (everything, backfill) or "
                                    "part=deletes (retractions only, for nodes that only look up).", ["part"],
                                    registry=registry)
        self.deliveries = Counter("verdictnode_federation_deliveries_total",
                                  "Outbox entries sent to peers' inboxes, by result (delivered, retry, dropped).",
                                  ["result"], registry=registry)
