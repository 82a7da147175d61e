"""`python -m bench.network`: both shapes by default (what `make bench` runs), or one with --shape."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.network.children import install_handlers  # noqa: E402
from bench.network.figures import shape_figures  # noqa: E402
from bench.network.report import json_line, render  # noqa: E402
from bench.network.run import run_shape  # noqa: E402
from bench.network.topology import BENCH_FEDERATION, SHAPES  # noqa: E402
from bench.network.workload import make_pool, schedule  # noqa: E402
from tests.node_helpers import tiny_clip_spec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.network", description=__doc__)
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    parser.add_argument("--posts", type=int, default=300, help="posts in the pool (default 300)")
    parser.add_argument("--window", type=float, default=45.0, help="seconds the posts are spread over")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4, help="concurrent pict-rs clients per node")
    parser.add_argument("--zipf", type=float, default=2.0, help="popularity exponent: P(k other nodes) ~ k^-a")
    parser.add_argument("--delay-min", type=float, default=0.1, help="shortest arrival delay, s")
    parser.add_argument("--delay-max", type=float, default=8.0, help="longest arrival delay, s")
    parser.add_argument("--no-baseline", action="store_true", help="skip the federation-off run")
    args = parser.parse_args()
    install_handlers()
    began = time.monotonic()
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-network-") as tmp:
        directory = Path(tmp)
        model = tiny_clip_spec(directory)
        pool = make_pool(args.posts, args.seed)
        for name in (SHAPES if args.shape == "both" else [args.shape]):
            shape = SHAPES[name]
            sched = schedule(pool, shape.nodes, list(range(shape.classifying)), seed=args.seed, window=args.window,
                             zipf=args.zipf, delay_min=args.delay_min, delay_max=args.delay_max)
            run = run_shape(directory, shape, model, sched, clients=args.clients, baseline=not args.no_baseline)
            settings = {"seed": args.seed, "window_s": args.window, "zipf": args.zipf, "delay_min_s": args.delay_min,
                        "delay_max_s": args.delay_max, "clients": args.clients,
                        "federation_settings": ", ".join(f"{k} {v:g}" for k, v in BENCH_FEDERATION.items())}
            figures = shape_figures(run, settings)
            print(render(figures), flush=True)
            print(json_line(figures), flush=True)
            failed |= not all(c["ok"] for phase in ("federated", "federation_off")
                              for c in figures.get(phase, {}).get("checks", []))
    print(f"network bench: {time.monotonic() - began:.0f} s on {os.cpu_count()} CPUs "
          f"(load average now {os.getloadavg()[0]:.1f})")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("network bench: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
