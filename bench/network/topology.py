"""Who classifies, who follows and asks whom: the two shapes, and the data directories that make them.

  hub   one classifying node; every other node has ``classifier.model: none``, follows it and names it as
        its lookup peer (small instances leaning on a larger one).
  mesh  four classifying nodes that follow each other and ask each other on a cache miss; six model-none
        nodes, each following (and asking) a different two of them.

Every node is configured the way README's peering walk-through does it, so the bench also runs the
documented set-up: ``verdict-node init`` (tests.node_helpers.make_data_dir), ``classifier.model: none`` on
the small nodes, ``federation.lookup_peers``, and peers.yaml entries with trust levels and the Ed25519 pin
each admin reads from ``verdict-node peers show-key``, written exactly as ``peers add ACTOR --trust T
--key-fingerprint PIN [--share] [--follow]`` writes them (node.federation.adding.new_entry through
node.peers_file.add_entry). The entries are written before the nodes start, instead of with ten rounds of
``peers add`` against running nodes (tests/test_federation_small_instances.py runs that path): the files
are the same, and the ten-minute budget is kept for the workload.

  a classifying node lists its followers ``--trust observe --share`` (it lets them follow, ask and read
  its retractions), and in the mesh the other classifiers ``--trust full --share --follow``;
  a model-none node lists the classifiers it follows ``--trust full --follow``, and in the mesh the other
  two ``--trust full``: their verdicts reach it only through lookups at the two it asks, and a verdict
  counts only when its issuer is listed.

Without federation (the baseline) every node gets the tiny model and an empty peers.yaml.

Each node's ``node.url`` is a port of the counting relay (bench.network.wire); it listens on another.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from node.federation.adding import new_entry
from node.peers_file import add_entry
from tests.multinode import TEST_FEDERATION, Peer
from tests.node_helpers import free_port

Kind = Literal["classifying", "model-none"]

# The tests' fast settings (short retries), with README's poll interval and periodic backfill, a shorter
# batch window, and README's request timeout (generous on a loaded machine).
BENCH_FEDERATION = {**TEST_FEDERATION, "poll_seconds": 1.0, "batch_wait_seconds": 0.5,
                    "backfill_interval_seconds": 300.0, "request_timeout_seconds": 30.0}


@dataclass(frozen=True)
class Shape:
    name: str
    classifying: int
    small: int

    @property
    def nodes(self) -> int:
        return self.classifying + self.small

    def kind(self, index: int) -> Kind:
        return "classifying" if index < self.classifying else "model-none"

    def followed(self, index: int) -> list[int]:
        """The classifying nodes that node ``index`` follows (and asks on a cache miss)."""
        if index < self.classifying:
            return [c for c in range(self.classifying) if c != index] if self.name == "mesh" else []
        if self.name == "hub":
            return list(range(self.classifying))
        pairs = list(itertools.combinations(range(self.classifying), 2))
        return list(pairs[(index - self.classifying) % len(pairs)])


SHAPES = {"hub": Shape("hub", 1, 9), "mesh": Shape("mesh", 4, 6)}


@dataclass
class Network:
    """The nodes of one run, in index order, and what each follows."""

    shape: Shape
    federated: bool
    peers: list[Peer]
    follows: dict[int, list[int]] = field(default_factory=dict)

    def kind(self, index: int) -> Kind:
        return self.shape.kind(index) if self.federated else "classifying"

    def followers(self, index: int) -> list[int]:
        return [f for f, followed in self.follows.items() if index in followed]

    def unfollowed_issuers(self) -> int:
        """(node, issuer) pairs where the node lists a classifying node without following it: it reads that
        issuer's retractions every poll_seconds once a lookup gave it one of its verdicts."""
        if not self.federated:
            return 0
        return sum(self.shape.classifying - len(followed) for i, followed in self.follows.items()
                   if self.shape.kind(i) == "model-none")

    def node_base(self, index: int) -> str:
        """Where the bench itself reaches a node: the port it listens on, not the relay's."""
        return f"http://127.0.0.1:{self.peers[index].config.listen.port}"

    def validate_url(self, index: int) -> str:
        return f"{self.node_base(index)}/pictrs/validate/{self.peers[index].config.pictrs.tokens[0]}"

    def routes(self) -> dict[int, int]:
        """Relay port -> node port, for bench.network.wire."""
        return {_port(p.base): p.config.listen.port for p in self.peers}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def build(directory: Path, shape: Shape, model: str, *, federated: bool) -> Network:
    """Data directories for every node of ``shape`` under ``directory``; peers.yaml and lookup peers when
    ``federated``, else every node classifies on its own."""
    peers = []
    for i in range(shape.nodes):
        classifies = not federated or shape.kind(i) == "classifying"
        name = f"{'c' if classifies else 's'}{i}"
        sections = {"listen": {"port": free_port()}} if federated else {}
        peers.append(Peer.create(directory / name, name, model=model if classifies else "none",
                                 federation=BENCH_FEDERATION, **sections))
    network = Network(shape, federated, peers)
    if not federated:
        return network
    with ThreadPoolExecutor(max_workers=4) as pool:  # `peers show-key`, as each admin runs it
        pins = list(pool.map(lambda p: p.pin, peers))
    for i, peer in enumerate(peers):
        followed = shape.followed(i)
        network.follows[i] = followed
        if shape.kind(i) == "classifying":
            for c in followed:
                add_entry(peer.config.peers_path, new_entry(peers[c].actor, pins[c], "full", share=True, follow=True))
            for s in range(shape.classifying, shape.nodes):
                add_entry(peer.config.peers_path, new_entry(peers[s].actor, pins[s], "observe", share=True,
                                                            follow=False))
        else:
            for c in range(shape.classifying):
                add_entry(peer.config.peers_path, new_entry(peers[c].actor, pins[c], "full", share=False,
                                                            follow=c in followed))
        if followed:
            peer.edit_config(federation={"lookup_peers": [peers[c].actor for c in followed]})
    return network
