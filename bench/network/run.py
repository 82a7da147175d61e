"""One shape through the workload, twice in the same run: with federation, then with every node on its own.

A phase builds the data directories, starts the relay (federated only) and every node at once (they load in
parallel), waits until each answers and every follow is accepted, reads the nodes, plays the schedule,
waits until nothing is in flight, and reads them again. Every process it starts is stopped in its
``finally`` (bench.network.children stops them on the other ways out).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.network.children import CHILDREN
from bench.network.driver import Answer, play
from bench.network.measure import (Samples, WireCounts, follows_accepted, memory_mib, read_nodes, settled,
                                   verdict_delays, wire_delta)
from bench.network.topology import Network, Shape, build
from bench.network.workload import Schedule
from tests.images import encode, synthetic_image
from tests.multinode import wait_until
from tests.node_helpers import PICTRS_TIMEOUT, pictrs_post

START_TIMEOUT = 300.0   # ten processes importing torch on two busy cores
SETTLE_TIMEOUT = 300.0
POLL = 0.25             # seconds between two looks at the nodes' databases
WARM_UP_SEED = 900_000_000  # far from the pool's generated images


@dataclass
class Phase:
    """One network through the workload: what the driver saw and what the nodes say."""

    network: Network
    answers: list[Answer]
    metrics: list[Samples]              # per node, workload only (after - before)
    cpu: list[float]                    # per node, CPU seconds during the workload
    memory: list[tuple[float, float]]   # per node, (resident, peak) MiB after the workload
    own_verdicts: list[int]             # per node, own verdicts its database gained during the workload
    decision_rows: list[int]            # per node, pict-rs decision rows its database gained
    wire: dict[str, list[int]] | None   # kind -> [requests, bytes up, bytes down], workload only
    wire_cpu: float                     # the relay's CPU seconds during the workload
    delays: list[float]                 # verdict -> follower, seconds
    missing: int                        # (verdict, follower) pairs that never arrived
    start_outbox_pages: int             # outbox log pages served before the workload (follows, warm-up)
    start_seconds: float
    play_seconds: float
    measured_seconds: float             # between the two readings (what time-based costs are divided by)

    def kind(self, node: int) -> str:
        return self.network.kind(node)


def run_phase(directory: Path, shape: Shape, model: str, sched: Schedule, *, federated: bool,
              clients: int) -> Phase:
    network = build(directory, shape, model, federated=federated)
    wire = WireCounts(network.routes()) if federated else None
    began = time.monotonic()
    try:
        for peer in network.peers:
            peer.spawn(start_new_session=True)
            assert peer.proc is not None
            CHILDREN.add(peer.proc)
        for i, peer in enumerate(network.peers):
            peer.wait_ready(START_TIMEOUT)
            if network.kind(i) == "classifying":
                wait_until(lambda p=peer: p.get_json("/healthz")["classifier"]["available"], START_TIMEOUT,
                           POLL, f"{peer.name}: classifier loaded")
        if federated:
            wait_until(lambda: follows_accepted(network), START_TIMEOUT, POLL, "every follow accepted")
        start_seconds = time.monotonic() - began
        warm_up(network)
        own_before, rows_before = _own_verdicts(network), _decision_rows(network)
        before, wire_before, t_before = read_nodes(network), wire.counts() if wire else None, time.monotonic()
        wire_cpu_before = wire.cpu() if wire else 0.0
        urls = [network.validate_url(i) for i in range(shape.nodes)]
        t_play = time.monotonic()
        answers = asyncio.run(play(sched, urls, clients=clients))
        play_seconds = time.monotonic() - t_play
        answered = Counter(a.node for a in answers if a.status is not None)
        answered = Counter({i: rows_before[i] + answered.get(i, 0) for i in range(shape.nodes)})
        wait_until(lambda: settled(network, answered), SETTLE_TIMEOUT, POLL, "deliveries done and decisions written")
        after, wire_after, t_after = read_nodes(network), wire.counts() if wire else None, time.monotonic()
        delays, missing = verdict_delays(network)
        return Phase(
            network=network, answers=answers,
            metrics=[a.metrics - b.metrics for a, b in zip(after, before)],
            cpu=[a.cpu - b.cpu for a, b in zip(after, before)],
            memory=[memory_mib(p.proc.pid) for p in network.peers if p.proc is not None],
            own_verdicts=[a - b for a, b in zip(_own_verdicts(network), own_before)],
            decision_rows=[a - b for a, b in zip(_decision_rows(network), rows_before)],
            start_outbox_pages=int(sum(r.metrics.get("verdictnode_federation_outbox_pages_served_total", part="log")
                                       for r in before)),
            wire=wire_delta(wire_after, wire_before) if wire_after is not None and wire_before is not None else None,
            wire_cpu=wire.cpu() - wire_cpu_before if wire else 0.0, delays=delays, missing=missing, start_seconds=start_seconds,
            play_seconds=play_seconds, measured_seconds=t_after - t_before)
    finally:
        for peer in network.peers:
            if peer.proc is not None:
                CHILDREN.stop(peer.proc)
                peer.proc = None
        if wire is not None:
            wire.close()


def warm_up(network: Network) -> None:
    """One image of its own at each classifying node, before anything is measured, and wait until its verdict
    reached every follower: the model's first call in a fresh process, and each follower's first push, are
    start-up costs (outbox log pages read until then are counted apart, as start_outbox_pages)."""
    async def post_all() -> None:
        async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT) as session:
            for i in range(network.shape.nodes):
                if network.kind(i) == "classifying":
                    data = encode(synthetic_image(WARM_UP_SEED + i, (512, 384)), "jpeg")
                    status, body = await pictrs_post(network.validate_url(i), data, session=session)
                    if body.get("source") != "inference":
                        raise RuntimeError(f"warm-up at node {i}: {status} {body}")

    asyncio.run(post_all())
    answered = {i: 1 for i in range(network.shape.nodes) if network.kind(i) == "classifying"}
    wait_until(lambda: settled(network, answered) and quiet(network), SETTLE_TIMEOUT, POLL, "warm-up delivered")


def quiet(network: Network, seconds: float = 1.0) -> bool:
    """No outbox page served for ``seconds`` (the followers' backfills are over)."""
    def pages() -> list[float]:
        return [Samples.read(network.node_base(i)).get("verdictnode_federation_outbox_pages_served_total")
                for i in range(network.shape.nodes)]

    first = pages()
    time.sleep(seconds)
    return pages() == first


def _own_verdicts(network: Network) -> list[int]:
    return [p.scalar("SELECT COUNT(*) FROM verdicts WHERE own = 1") for p in network.peers]


def _decision_rows(network: Network) -> list[int]:
    return [p.scalar("SELECT COUNT(*) FROM decisions WHERE source = 'pictrs'") for p in network.peers]


@dataclass
class ShapeRun:
    shape: Shape
    schedule: Schedule
    federated: Phase
    baseline: Phase | None
    load: tuple[float, float]  # load average (1 min) before and after


def run_shape(directory: Path, shape: Shape, model: str, sched: Schedule, *, clients: int = 4,
              baseline: bool = True) -> ShapeRun:
    load_before = os.getloadavg()[0]
    federated = run_phase(directory / f"{shape.name}-federated", shape, model, sched, federated=True,
                          clients=clients)
    off = run_phase(directory / f"{shape.name}-off", shape, model, sched, federated=False,
                    clients=clients) if baseline else None
    return ShapeRun(shape, sched, federated, off, (load_before, os.getloadavg()[0]))
