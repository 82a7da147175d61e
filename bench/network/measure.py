"""What the nodes themselves say about a run: their /metrics, their databases, and their processes' CPU time
and memory, read before and after the workload; and the relay's counts of what went between them.

Inference is counted by the nodes (``verdictnode_inference_images_total``, their own verdicts in the
database), not from the answers, so the headline does not depend on the driver's view.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from typing import Mapping

from prometheus_client.parser import text_string_to_metric_families

from bench.federation import cpu_seconds
from bench.network.children import CHILDREN
from bench.network.topology import Network
from tests.node_helpers import ROOT


class Samples:
    """One read of a node's /metrics: every sample by name and labels."""

    def __init__(self, values: Mapping[tuple[str, frozenset], float]) -> None:
        self.values = dict(values)

    @classmethod
    def read(cls, base: str) -> "Samples":
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
            text = r.read().decode()
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(values)

    def get(self, name: str, **labels: str) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and want <= ls)

    def __sub__(self, before: "Samples") -> "Samples":
        return Samples({k: v - before.values.get(k, 0.0) for k, v in self.values.items()})


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, MiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@dataclass
class NodeReading:
    metrics: Samples
    cpu: float


def read_nodes(network: Network) -> list[NodeReading]:
    out = []
    for i, peer in enumerate(network.peers):
        assert peer.proc is not None
        out.append(NodeReading(Samples.read(network.node_base(i)), cpu_seconds(peer.proc.pid)))
    return out


def follows_accepted(network: Network) -> bool:
    return all(network.peers[f].following_state(network.peers[c]) == "accepted"
               for f, followed in network.follows.items() for c in followed)


def settled(network: Network, answered: Mapping[int, int]) -> bool:
    """Nothing in flight: no delivery queued at any node, every follower holds every verdict of the nodes it
    follows, and every node wrote a decision row for each upload it answered."""
    for i, peer in enumerate(network.peers):
        if peer.scalar("SELECT COUNT(*) FROM deliveries"):
            return False
        if peer.scalar("SELECT COUNT(*) FROM decisions WHERE source = 'pictrs'") < answered.get(i, 0):
            return False
    for f, followed in network.follows.items():
        for c in followed:
            own = network.peers[c].scalar("SELECT COUNT(*) FROM verdicts WHERE own = 1")
            if network.peers[f].verdicts_of(network.peers[c]) < own:
                return False
    return True


def verdict_delays(network: Network) -> tuple[list[float], int]:
    """Seconds from each own verdict (stored at its issuer) to its arrival at each node that follows the
    issuer, however it arrived (push, backfill, or a lookup that came first); and how many never arrived."""
    delays, missing = [], 0
    for c, peer in enumerate(network.peers):
        followers = network.followers(c)
        if not followers:
            continue
        issued = dict(peer.query("SELECT verdict_id, received_at FROM verdicts WHERE own = 1"))
        for f in followers:
            held = dict(network.peers[f].query("SELECT verdict_id, received_at FROM verdicts WHERE issuer = ?",
                                               peer.actor))
            for verdict_id, at in issued.items():
                if verdict_id in held:
                    delays.append(held[verdict_id] - at)
                else:
                    missing += 1
    return delays, missing


class WireCounts:
    """The relay process (bench.network.wire) in front of a network's nodes."""

    def __init__(self, routes: Mapping[int, int]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = CHILDREN.add(subprocess.Popen(
            [sys.executable, "-m", "bench.network.wire", *(f"{a}={b}" for a, b in routes.items())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the relay did not start: {line!r}")

    def counts(self) -> dict[str, list[int]]:
        """Totals over all nodes: {kind: [requests, bytes to the node, bytes from it]}."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        per_node = json.loads(self.proc.stdout.readline())
        total: dict[str, list[int]] = {}
        for table in per_node.values():
            for kind, row in table.items():
                acc = total.setdefault(kind, [0, 0, 0])
                for j, v in enumerate(row):
                    acc[j] += v
        return total

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        CHILDREN.stop(self.proc, grace=5.0)


def wire_delta(after: Mapping[str, list[int]], before: Mapping[str, list[int]]) -> dict[str, list[int]]:
    return {k: [a - b for a, b in zip(row, before.get(k, [0, 0, 0]))] for k, row in after.items()}
