"""The network bench: ten real nodes on loopback, and what the mission promises measured on them.

A federated image should be classified once in the network, not once per instance. This bench runs a
small fediverse of `verdict-node serve` processes in one of two shapes (bench.network.topology: ``hub``,
small instances leaning on one classifying node; ``mesh``, four classifying nodes and six small ones),
plays a seeded workload at their pict-rs hooks (bench.network.workload, bench.network.driver), then plays
the same workload against ten nodes that each classify everything, in the same run, as the baseline. It
prints, per shape, a table and one JSON line (bench.network.figures, bench.network.report): inference runs
per distinct image (the headline), where answers came from, hook latency, how long a verdict takes to reach
followers, what federation costs on the wire (bench.network.wire counts it), the inference and CPU saved,
and the cost at scale computed from those figures (bench.network.scale).

    .venv/bin/python -m bench.network [--shape hub|mesh|both] [--posts 300] [--window 45] [--seed 1]

Modules: topology (shapes, data directories, peers.yaml), workload (pool and schedule), driver (pict-rs
clients), children (every process stopped on every way out), wire (the counting relay), measure (metrics,
databases, CPU, memory), run (one shape, federated and off), figures, scale, report.
"""
