"""`verdict-node` entry point: parses the command line and hands each command to the module that owns it.

Each handler imports its module lazily, so `verdict-node --help` and light commands start fast and a
node without torch installed can still answer `peers list`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from node.config import ConfigError

Handler = Callable[[argparse.Namespace], int]


def _lazy(module: str, function: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
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

    p = sub.add_parser("init", help="create a data directory: node.yaml, keys, database (what exists is kept)")
    p.add_argument("--dir", default="data", help="data directory (default: ./data)")
    p.add_argument("--url", default=None, help="public base URL of this node, e.g. https://node.example")
    p.add_argument("--force", action="store_true",
                   help="make a new identity on purpose: create the missing keys even next to an existing database "
                        "(peers that pinned the old key refuse this node until they pin the new one). Existing "
                        "keys and node.yaml are never replaced")
    p.set_defaults(handler=_lazy("node.datadir", "cmd_init"))

    p = sub.add_parser("serve", help="run the node (HTTP server, federation, queues)")
    _add_config_option(p)
    p.add_argument("--host", default=None, help="listen address (overrides node.yaml)")
    p.add_argument("--port", type=int, default=None, help="listen port (overrides node.yaml)")
    p.add_argument("--console", action="store_true",
                   help="serve the review console on admin.listen (as admin.enabled: true does)")
    p.set_defaults(handler=_lazy("node.serve", "cmd_serve"))

    p = sub.add_parser("check", help="fingerprint and classify image files, one JSON line each")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default=None,
                   help="classifier: open_clip name/pretrained (e.g. ViT-L-14/openai), local-dir:PATH, or open_nsfw")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(handler=_lazy("node.check", "cmd_check"))

    # -- remote GPU workers (node/worker.py, node/worker_hub.py, node/worker_registry.py) --
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
    p.set_defaults(handler=_lazy("node.workers.commands", "cmd_worker"))

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
    p.set_defaults(handler=_lazy("node.workers.commands", "cmd_workers"))

    # -- federation (node/federation/commands.py); they act on the database, a running server
    #    picks the changes up within federation.poll_seconds --
    p = sub.add_parser("peers", help="peers and follow requests: add, list, approve, reject, remove, forget-key, "
                                     "show-key")
    peers_sub = p.add_subparsers(dest="peers_command", required=True, metavar="ACTION")
    q = peers_sub.add_parser("add", help="fetch a peer's actor, show its key fingerprint and model, and once "
                                         "confirmed add it to peers.yaml (a running serve takes it in at once)")
    q.add_argument("actor", metavar="ACTOR", help="the peer's actor URL, e.g. https://peer.example/actor")
    q.add_argument("--trust", required=True, choices=("full", "block-only", "observe"),
                   help="how far its verdicts count: full (blocks and safe), block-only, observe (never acted on)")
    q.add_argument("--share", action="store_true",
                   help="let it follow this node, receive our verdicts and ask lookups (default: no)")
    q.add_argument("--follow", action="store_true", help="follow it: receive its verdicts (default: no)")
    q.add_argument("--key-fingerprint", default=None, metavar="sha256:HEX",
                   help="the Ed25519 fingerprint its admin printed with `peers show-key`: confirms without a "
                        "prompt, and is refused if the actor presents another key")
    _add_config_option(q)
    q = peers_sub.add_parser("list", help="peers (peers.yaml and follow requests) with follow states and queues")
    q.add_argument("--json", action="store_true", help="JSON instead of text")
    _add_config_option(q)
    for action, text in (("approve", "accept a pending follow request: the peer receives our verdicts"),
                         ("reject", "refuse a follow request (or end an approved one)"),
                         ("remove", "end following in both directions (Reject + Undo)"),
                         ("forget-key", "a pinned peer rotated its RSA key on purpose: drop the bound key, so the "
                                        "next document that carries the pinned Ed25519 key binds its new one")):
        q = peers_sub.add_parser(action, help=text)
        q.add_argument("actor", metavar="ACTOR", help="the peer's actor URL, e.g. https://peer.example/actor")
        _add_config_option(q)
    q = peers_sub.add_parser("show-key", help="print this node's key fingerprints, for peers to pin")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.federation.commands", "cmd_peers"))

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
    p.set_defaults(handler=_lazy("node.federation.commands", "cmd_verdicts"))

    # -- hash banks and the exchange feed (node/banks/commands.py) --
    p = sub.add_parser("banks", help="hash banks (known-bad hash lists): import, list, remove")
    banks_sub = p.add_subparsers(dest="banks_command", required=True, metavar="ACTION")
    q = banks_sub.add_parser("import", help="import a hash list as bank NAME (one transaction: all or nothing)")
    q.add_argument("name", metavar="NAME")
    q.add_argument("file", metavar="FILE", help="'<signal_type> <hash>' lines (python-threatexchange's local "
                                                "file) or CSV with a header signal_type,signal[,note]")
    q.add_argument("--format", choices=("te", "csv"), default=None, help="default: csv for *.csv, else te")
    q.add_argument("--replace", action="store_true", help="swap an existing bank's entries for the file's")
    q.add_argument("--skip-bad", action="store_true", help="import the good lines even if some are bad "
                                                           "(default: a bad line refuses the whole file)")
    _add_config_option(q)
    q = banks_sub.add_parser("list", help="banks with their entries by kind")
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_config_option(q)
    q = banks_sub.add_parser("remove", help="delete a bank and its entries")
    q.add_argument("name", metavar="NAME")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.banks.commands", "cmd_banks"))

    p = sub.add_parser("exchange-tokens", help="readers of the exchange feed (HMA, python-threatexchange)")
    tokens_sub = p.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    q = tokens_sub.add_parser("add", help="issue a reader's bearer token (printed once; only its hash is kept)")
    q.add_argument("name", metavar="NAME")
    _add_config_option(q)
    q = tokens_sub.add_parser("list", help="readers with creation and last use")
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_config_option(q)
    q = tokens_sub.add_parser("remove", help="revoke a reader: its next request gets 401")
    q.add_argument("name", metavar="NAME")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.banks.commands", "cmd_exchange_tokens"))

    # -- the review console (node/admin/) --
    p = sub.add_parser("admin", help="review console accounts: add, list, remove")
    admin_sub = p.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    q = admin_sub.add_parser("add", help="create an account and print its one-time password (only its hash is kept)")
    q.add_argument("name", metavar="NAME")
    _add_config_option(q)
    q = admin_sub.add_parser("list", help="accounts with their sessions and last login")
    q.add_argument("--json", action="store_true", help="JSON instead of text")
    _add_config_option(q)
    q = admin_sub.add_parser("remove", help="delete an account and end its sessions")
    q.add_argument("name", metavar="NAME")
    _add_config_option(q)
    q = admin_sub.add_parser("ensure", help="print the console's URL; add account NAME (printing its one-time "
                                            "password) when there is no account yet (what `make run` does)")
    q.add_argument("name", metavar="NAME")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.admin.commands", "cmd_admin"))

    # -- storage sweeps (node/sweeps/) --
    def source_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--option", "-o", action="append", metavar="NAME=VALUE",
                       help="source option, e.g. -o client_keys=/root/.ssh/id_ed25519 -o host_key='ssh-ed25519 AAAA...' "
                            "or -o api_key=... (secrets given here are never written to the database)")
        q.add_argument("--quarantine-dir", default=None,
                       help="local/SSH/pict-rs quarantine directory (default: next to the storage root)")
        _add_config_option(q)

    p = sub.add_parser("scan", help="sweep storage (path, ssh://, s3://, pictrs://): decide every image, act on positives")
    p.add_argument("source", metavar="SOURCE",
                   help="/srv/pictrs/files, ssh://user@host:port/path, s3://bucket/prefix?endpoint=URL, pictrs://host:port")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--all", action="store_true",
                      help="the whole backlog once (the default), checkpointed: a killed run resumes where it stopped")
    when.add_argument("--daemon", action="store_true", help="keep sweeping new and changed items every --interval")
    p.add_argument("--since", default=None, metavar="DURATION",
                   help="only items modified in the last DURATION (20m, 6h, 7d); with --daemon: its first pass")
    p.add_argument("--interval", default="60s", metavar="DURATION", help="--daemon: time between passes (default 60s)")
    p.add_argument("--workers", type=int, default=4, help="items read and decoded in parallel (default 4); "
                                                          "inference is batched across them")
    p.add_argument("--action", choices=("quarantine", "delete", "dry-run"), default="quarantine",
                   help="what to do with a positive (default quarantine: reversible, evidence kept)")
    p.add_argument("--dry-run", action="store_true", help="record only (same as --action dry-run); "
                                                          "act later with `verdict-node apply RUN`")
    p.add_argument("--on-unreadable", choices=("leave", "quarantine", "delete"), default="leave",
                   help="unreadable items are recorded as such, never as CSAM; default: leave them")
    p.add_argument("--on-video", choices=("leave", "quarantine", "delete"), default="leave",
                   help="videos are not classified; default: leave them")
    p.add_argument("--log-interval", type=float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line on stdout")
    p.add_argument("--force", action="store_true", help="with --action delete: delete even files that an evidence "
                                                        "record keeps (evidence.retain_days)")
    source_options(p)
    p.set_defaults(handler=_lazy("node.sweeps.commands", "cmd_scan"))

    p = sub.add_parser("apply", help="act on the positives of a dry run, without classifying again")
    p.add_argument("run", type=int, metavar="RUN", help="the run number printed by `scan`")
    p.add_argument("--action", choices=("quarantine", "delete"), default="quarantine")
    p.add_argument("--source", default=None, help="storage URL (default: the run's)")
    p.add_argument("--force", action="store_true", help="delete even files that an evidence record keeps "
                                                        "(evidence.retain_days)")
    source_options(p)
    p.set_defaults(handler=_lazy("node.sweeps.commands", "cmd_apply"))

    p = sub.add_parser("release", help="restore a quarantined item (a false positive) and retract its verdict")
    p.add_argument("item", metavar="ITEM", help="quarantine location, storage key or sha256 (see `report`)")
    p.add_argument("--reason", default="false positive (released by the admin)", help="recorded with the override "
                                                                                      "and the retraction")
    p.add_argument("--source", default=None, help="storage URL (default: the run's)")
    p.add_argument("--force", action="store_true", help="release even a file that an evidence record keeps (an "
                                                        "admin confirmed it as a positive)")
    source_options(p)
    p.set_defaults(handler=_lazy("node.sweeps.commands", "cmd_release"))

    p = sub.add_parser("report", help="positives found by sweeps, for follow-up (CSV or JSON)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--since", default=None, metavar="WHEN", help="a duration back (7d) or a UTC time (2026-01-31T00:00:00Z)")
    p.add_argument("--source", default=None, help="only this storage URL")
    p.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    _add_config_option(p)
    p.set_defaults(handler=_lazy("node.sweeps.commands", "cmd_report"))

    # -- attribution and evidence (node/attribution/commands.py) --
    p = sub.add_parser("attribute", help="who uploaded an image and where it is used (pict-rs, Lemmy, Mastodon)")
    p.add_argument("sha256", metavar="SHA256", help="the image's sha256, as decisions, sweeps and reports show it")
    p.add_argument("--path", default=None, metavar="KEY",
                   help="where it was met: a pict-rs alias, or a storage key such as a Mastodon "
                        "media_attachments/files/... path")
    p.add_argument("--source", default=None, help="the sweep source it was met in (default: pictrs for a bare "
                                                  "alias)")
    p.add_argument("--refresh", action="store_true", help="look it up again, ignoring the cache")
    p.add_argument("--search-text", action="store_true",
                   help="also search post bodies and comments for the aliases (slow on big instances)")
    p.add_argument("--json", action="store_true", help="JSON instead of a report")
    _add_config_option(p)
    p.set_defaults(handler=_lazy("node.attribution.commands", "cmd_attribute"))

    p = sub.add_parser("attribution", help="explicit admin actions on the instance: purge, and their record")
    attribution_sub = p.add_subparsers(dest="attribution_command", required=True, metavar="ACTION")
    q = attribution_sub.add_parser("purge", help="purge a Lemmy post, comment or person through Lemmy's admin API "
                                                 "(for good: Lemmy deletes it and its images), or delete one image")
    q.add_argument("kind", choices=("post", "comment", "person", "image"))
    q.add_argument("target", metavar="ID", help="Lemmy's id of the post, comment or person (attribute shows them), "
                                                "or an image's pict-rs alias")
    q.add_argument("--reason", required=True, help="recorded here and in Lemmy's modlog")
    q.add_argument("--actor", default=None, help="who asks (default: the OS user)")
    _add_config_option(q)
    q = attribution_sub.add_parser("actions", help="the purges asked for, newest first, with Lemmy's answers")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.attribution.commands", "cmd_attribution"))

    p = sub.add_parser("evidence", help="evidence records of confirmed positives: export, list")
    evidence_sub = p.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    q = evidence_sub.add_parser("export", help="every record with every field (hashes, storage, uploader, posts, "
                                               "decision, review), for a report to the authorities")
    q.add_argument("--format", choices=("json", "csv"), default="json")
    q.add_argument("--output", "-o", default=None, help="write here (mode 0600) instead of stdout")
    q.add_argument("--attribute", action="store_true", help="first look up the attribution of records without one")
    _add_config_option(q)
    q = evidence_sub.add_parser("list", help="newest review first")
    q.add_argument("--limit", type=int, default=50)
    _add_config_option(q)
    p.set_defaults(handler=_lazy("node.attribution.commands", "cmd_evidence"))

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A configuration problem (node.yaml, peers.yaml, keys, the data directory) is one
    line on stderr and exit code 2, whichever command met it."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
