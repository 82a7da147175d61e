"""Verdicts from node A to node B, end to end, in one run: A decides (a verdict is made), signs it, stores
it, its outbox collector batches it (up to 100 per Create), its delivery worker signs and POSTs the batch;
B verifies the HTTP signature and every verdict's proof, and stores and indexes it.

A runs in this process (so the moment of each decision is known exactly, and the verdicts come in
through the same hook the pipeline uses); B is a `verdict-node serve` subprocess, as an admin runs it.
The verdicts are synthetic (distinct fingerprints, real Ed25519 proofs): the classifier is not what is
measured here.

Phases:
  baseline  in this process, no network: sign + verify + store the same number of verdicts, one core.
            The floor of what federation can cost; the machine is shared, so the end-to-end rate is
            also printed as a ratio to it.
  paced     A decides at --rate verdicts/s for --seconds; B's delay (decision -> stored at B) is the
            latency a peer sees at that load: p50 / p95 / max.
  burst     --burst verdicts decided as fast as A can sign them: the most A -> B sustains.

    .venv/bin/python bench/federation.py [--rate 2000] [--seconds 5] [--burst 10000]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from node.store import Store  # noqa: E402
from protocol.keys import generate_ed25519  # noqa: E402
from protocol.verdict import verify_verdict  # noqa: E402
from tests.multinode import TEST_MODEL, Peer, synthetic_verdict, wait_until  # noqa: E402
from tests.node_helpers import free_port, make_data_dir, running_node  # noqa: E402


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU time of a process so far (from /proc): what the work cost, however busy the
    shared machine is (wall-clock rates shrink when other processes take the cores)."""
    fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def baseline(count: int, directory: Path) -> float:
    """Verdicts per second for sign + verify + store in one process, without network or batching."""
    key = generate_ed25519()
    public = key.public_key()
    actor = "http://127.0.0.1:1/actor"
    started = time.perf_counter()
    with Store(directory / "baseline.db") as store:
        signed = [synthetic_verdict(actor, key, i) for i in range(count)]
        store.conn.execute("BEGIN")
        for _, doc in signed:
            store.insert_verdict(verify_verdict(doc, lambda method: public), doc, own=False)
        store.conn.execute("COMMIT")
    return count / (time.perf_counter() - started)


async def decide(node, count: int, start: int, rate: float | None, decided: dict[str, float]) -> float:
    """Make `count` own verdicts on A the way the pipeline does (sign, store, hook), at `rate` per second
    (None: as fast as possible). Returns the wall time it took."""
    began = time.time()
    chunk = 20
    for first in range(start, start + count, chunk):
        for i in range(first, min(first + chunk, start + count)):
            t = time.time()
            verdict, doc = synthetic_verdict(node.actor_id, node.ed25519_key, i)
            node.add_verdict(verdict, doc, own=True)
            await node.emit_own_verdict(verdict, doc)
            decided[verdict.id] = t
        if rate is not None:
            due = began + (first + chunk - start) / rate
            await asyncio.sleep(max(0.0, due - time.time()))
        else:
            await asyncio.sleep(0)  # let A's collector and delivery run between chunks
    return time.time() - began


def stored_at(b: Peer, issuer: str) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{b.config.database_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT verdict_id, received_at FROM verdicts WHERE issuer = ?", (issuer,)))
    finally:
        conn.close()


async def wait_stored(b: Peer, issuer: str, ids: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        got = stored_at(b, issuer)
        if ids <= got.keys():
            return {i: got[i] for i in ids}
        if time.monotonic() > deadline:
            raise TimeoutError(f"B stored {len(ids & got.keys())} of {len(ids)} in {timeout} s")
        await asyncio.sleep(0.1)


def report(name: str, decided: dict[str, float], stored: dict[str, float], floor: float,
           cpu_a: float, cpu_b: float) -> float:
    delays = [stored[i] - decided[i] for i in decided]
    span = max(stored.values()) - min(decided.values())
    rate = len(decided) / span
    n = len(decided)
    print(f"{name:<8} {n:>6} verdicts  {rate:8.0f} verdicts/s end to end ({rate / floor:4.2f} x baseline)"
          f"  delay p50 {percentile(delays, 0.5):6.3f} s  p95 {percentile(delays, 0.95):6.3f} s"
          f"  max {max(delays):6.3f} s\n{'':<8} CPU per verdict: A {cpu_a / n * 1e6:5.0f} us (decide+sign+store+"
          f"batch+send), B {cpu_b / n * 1e6:5.0f} us (receive+verify+store); one free core each would carry "
          f"{n / max(cpu_a, cpu_b):.0f} verdicts/s")
    return rate


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        floor = baseline(2000, directory)
        print(f"baseline {2000:>6} verdicts  {floor:8.0f} verdicts/s sign+verify+store, one process, no network")

        b = Peer.create(directory / "b", "b", federation={"poll_seconds": 1.0})
        port_a = free_port()
        a_config = make_data_dir(directory / "a", port=port_a, peers=[{"actor": b.actor, "trust": "full"}],
                                 node={"name": "node-a"})
        b.write_peers([{"actor": a_config.actor_id, "trust": "full",
                        "known_models": [f"{TEST_MODEL.name}@{TEST_MODEL.rules}"]}])
        b.spawn()
        try:
            b.wait_ready()
            async with running_node(a_config) as (node, _):
                await asyncio.to_thread(wait_until, lambda: b.following_state(Peer("a", a_config)) == "accepted",
                                        30, 0.1, "B follows A")
                assert b.proc is not None
                decided: dict[str, float] = {}
                count = int(args.rate * args.seconds)
                cpu = (cpu_seconds(), cpu_seconds(b.proc.pid))
                await decide(node, count, 0, args.rate, decided)
                stored = await wait_stored(b, node.actor_id, set(decided), timeout=120)
                paced = report("paced", decided, stored, floor, cpu_seconds() - cpu[0],
                               cpu_seconds(b.proc.pid) - cpu[1])

                burst: dict[str, float] = {}
                cpu = (cpu_seconds(), cpu_seconds(b.proc.pid))
                await decide(node, args.burst, count, None, burst)
                stored = await wait_stored(b, node.actor_id, set(burst), timeout=300)
                fastest = report("burst", burst, stored, floor, cpu_seconds() - cpu[0],
                                 cpu_seconds(b.proc.pid) - cpu[1])
        finally:
            b.stop()
        print(f"target: >= 2000 verdicts/s and p50 delay < 2 s at {args.rate:g}/s offered; "
              f"sustained {max(paced, fastest):.0f}/s on this machine ({os.cpu_count()} CPUs, shared)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="offered verdicts/s in the paced phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the paced phase")
    parser.add_argument("--burst", type=int, default=10000, help="verdicts decided at once in the burst phase")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
