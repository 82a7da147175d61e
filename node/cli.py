"""`verdict-node` entry point: parses the command line and hands each command to the module that owns it.

Each handler imports its module lazily, so `verdict-node --help` and light commands start fast and a
node without torch installed can still answer `peers list`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _lazy(module: str, function: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return handler


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None,
                   help="node.yaml (default: ./data/node.yaml, created with init's defaults if missing)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verdict-node",
        description="Scan, fingerprint and sign image verdicts, share them with trusted peers, guard pict-rs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a data directory: node.yaml, keys, database")
    p.add_argument("--dir", default="data", help="data directory (default: ./data)")
    p.add_argument("--url", default=None, help="public base URL of this node, e.g. https://node.example")
    p.add_argument("--force", action="store_true", help="overwrite an existing node.yaml (keys are kept)")
    p.set_defaults(handler=_lazy("node.config", "cmd_init"))

    p = sub.add_parser("serve", help="run the node (HTTP server, federation, queues)")
    _add_config_option(p)
    p.add_argument("--host", default=None, help="listen address (overrides node.yaml)")
    p.add_argument("--port", type=int, default=None, help="listen port (overrides node.yaml)")
    p.set_defaults(handler=_lazy("node.server", "cmd_serve"))

    p = sub.add_parser("check", help="fingerprint and classify image files, one JSON line each")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default=None,
                   help="classifier: open_clip name/pretrained (e.g. ViT-L-14/openai), local-dir:PATH, or open_nsfw")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(handler=_lazy("node.check", "cmd_check"))

    # -- remote GPU workers (node/worker.py, node/work_queue.py) --
    p = sub.add_parser("worker", help="classify for a node from a GPU machine: lease frames, return scores")
    p.add_argument("--node", required=True, help="the node's base URL, e.g. https://node.example")
    p.add_argument("--token", default=None,
                   help="this worker's token from `workers add` (visible in ps: prefer --token-file or "
                        "VERDICT_NODE_WORKER_TOKEN)")
    p.add_argument("--token-file", default=None, help="read the token from this file")
    p.add_argument("--model", default=None,
                   help="classifier spec (default: the one the node names; must equal the node's model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=32, help="most frames per lease and per forward pass")
    p.add_argument("--encoding", choices=("png", "rgb", "rgbz"), default="png",
                   help="how frames travel: png (smallest; internet), rgb (raw; LAN), rgbz (raw + zlib)")
    p.add_argument("--prefetch", type=int, default=1, help="leases fetched ahead while the model runs")
    p.add_argument("--stats-interval", type=float, default=30.0, help="seconds between throughput log lines")
    p.set_defaults(handler=_lazy("node.worker", "cmd_worker"))

    p = sub.add_parser("workers", help="manage this node's remote workers: add, list, remove")
    workers_sub = p.add_subparsers(dest="workers_command", required=True, metavar="ACTION")
    q = workers_sub.add_parser("add", help="register a worker and print its token (only its hash is kept)")
    q.add_argument("name")
    _add_config_option(q)
    q = workers_sub.add_parser("list", help="workers with last contact, leased images, throughput, model")
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_config_option(q)
    q = workers_sub.add_parser("remove", help="revoke a worker: its next request gets 401")
    q.add_argument("name")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.work_queue", "cmd_workers"))

    # -- federation (node/peers.py, node/federation.py); they act on the database, a running server
    #    picks the changes up within federation.poll_seconds --
    p = sub.add_parser("peers", help="follow requests and peers: list, approve, reject, remove, show-key")
    peers_sub = p.add_subparsers(dest="peers_command", required=True, metavar="ACTION")
    q = peers_sub.add_parser("list", help="peers (peers.yaml and follow requests) with follow states and queues")
    q.add_argument("--json", action="store_true", help="JSON instead of text")
    _add_config_option(q)
    for action, text in (("approve", "accept a pending follow request: the peer receives our verdicts"),
                         ("reject", "refuse a follow request (or end an approved one)"),
                         ("remove", "end following in both directions (Reject + Undo)")):
        q = peers_sub.add_parser(action, help=text)
        q.add_argument("actor", metavar="ACTOR", help="the peer's actor URL, e.g. https://peer.example/actor")
        _add_config_option(q)
    q = peers_sub.add_parser("show-key", help="print this node's key fingerprints, for peers to pin")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.peers", "cmd_peers"))

    p = sub.add_parser("verdicts", help="verdicts held here: list, retract")
    verdicts_sub = p.add_subparsers(dest="verdicts_command", required=True, metavar="ACTION")
    q = verdicts_sub.add_parser("list", help="newest verdicts first")
    q.add_argument("which", nargs="?", choices=("all", "own", "peers"), default="all")
    q.add_argument("--issuer", default=None, help="only this issuer's (actor URL)")
    q.add_argument("--retracted", action="store_true", help="list retracted verdicts instead")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true", help="JSON instead of text")
    _add_config_option(q)
    q = verdicts_sub.add_parser("retract", help="stop using a verdict; an own verdict is retracted at every peer")
    q.add_argument("verdict_id", metavar="ID", help="the verdict's id (URL)")
    q.add_argument("--reason", required=True, help="why (recorded here and at every peer)")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.federation", "cmd_verdicts"))

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
