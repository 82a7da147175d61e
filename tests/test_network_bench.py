"""The network bench (bench/network) in small: three real `verdict-node serve` processes (one classifying, two
with ``classifier.model: none`` following it and asking it on a miss), a handful of images, federated and
then each node on its own, and the counters must add up: every posted image answered at every node it
reached, inference counted by the nodes equal to the verdicts they issued, peer decisions by origin equal
to the answers, every verdict at every follower; and no process the bench started is left running.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.network.children import CHILDREN
from bench.network.figures import SOURCES, shape_figures
from bench.network.report import json_line, render
from bench.network.run import run_shape
from bench.network.topology import Shape
from bench.network.wire import RequestStream
from bench.network.workload import make_pool, schedule
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture

SETTINGS = {"seed": 5, "window_s": 3.0, "zipf": 2.0, "delay_min_s": 0.05, "delay_max_s": 2.0, "clients": 2,
            "federation_settings": "bench"}


def _alive(pid: int) -> bool:
    """Running, or exited and not reaped (a zombie would also mean nobody waited for it)."""
    return Path(f"/proc/{pid}").exists()


def test_three_nodes_counters_add_up_and_nothing_is_left(tmp_path, tiny_clip_spec):
    first_child = len(CHILDREN.started_pids)
    shape = Shape("hub", 1, 2)
    sched = schedule(make_pool(12, seed=5), shape.nodes, [0], seed=5, window=SETTINGS["window_s"],
                     delay_min=SETTINGS["delay_min_s"], delay_max=SETTINGS["delay_max_s"])
    run = run_shape(tmp_path, shape, tiny_clip_spec, sched, clients=2)
    figures = shape_figures(run, SETTINGS)

    for phase in ("federated", "federation_off"):
        failed = [c for c in figures[phase]["checks"] if not c["ok"]]
        assert not failed, failed
    fed, off = figures["federated"], figures["federation_off"]
    assert fed["inference"] == sum(run.federated.own_verdicts) == figures["federation"]["verdicts"]
    assert off["inference"] == sum(run.baseline.own_verdicts) >= fed["inference"]
    # The model-none nodes classify nothing: their answers come from peers (or, undecided, unavailable).
    small = fed["by_kind"]["model-none"]
    assert small["share"]["inference"] == 0 and small["uploads"] == sched.uploads - len(sched.posts)
    for kind in (*fed["by_kind"].values(), *off["by_kind"].values()):
        assert abs(sum(kind["share"][s] for s in SOURCES) - 1) < 1e-3, kind
    assert figures["federation"]["by_kind"]["inbox"]["requests"] > 0  # the verdicts went over the relay
    assert json.loads(json_line(figures))["shape"] == "hub" and "COMPUTED" in render(figures)

    started = CHILDREN.started_pids[first_child:]
    assert len(started) == 2 * shape.nodes + 1  # both phases' nodes and the relay
    assert [pid for pid in started if _alive(pid)] == []


def test_the_relay_counts_each_request_and_its_bytes_whatever_the_chunks():
    counted: dict[str, list[int]] = {}

    def count(kind: str, requests: int, up: int, down: int) -> None:
        row = counted.setdefault(kind, [0, 0, 0])
        row[0] += requests
        row[1] += up
        row[2] += down

    push = b"POST /inbox HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    poll = b"GET /outbox?since=3&type=Delete HTTP/1.1\r\nHost: a\r\n\r\n"
    lookup = b"GET /lookup?sha256=ab HTTP/1.1\r\nHost: a\r\n\r\n"
    stream = RequestStream(count)
    data = push + poll + lookup
    for i in range(0, len(data), 7):  # any split, also inside headers and bodies
        stream.up(data[i:i + 7])
        if i == 63:
            stream.down(b"x" * 10)  # an answer belongs to the request before it
    assert counted["inbox"][:2] == [1, len(push)] and counted["deletes"][:2] == [1, len(poll)]
    assert counted["lookup"][:2] == [1, len(lookup)]
    assert sum(row[2] for row in counted.values()) == 10
