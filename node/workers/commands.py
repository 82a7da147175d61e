"""`verdict-node worker` (the GPU-side process) and `verdict-node workers add|list|remove` (the node's admin)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

import aiohttp

from node.datadir import resolve_config
from node.store import Store
from node.workers.client import EXIT_ERROR, TOKEN_ENV, Refused, Worker
from node.workers.registry import WorkerRegistry
from node.workers.wire import describe_model, model_to_json
from scanners.classifier import ModelUnavailable
from scanners.models import load_classifier

log = logging.getLogger("verdict_node.worker")


def _read_token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        with open(args.token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return args.token or os.environ.get(TOKEN_ENV)


async def _main(args: argparse.Namespace, token: str) -> int:
    spec = args.model
    if spec is None:
        # No --model: run what the node asks for (works for hub tags; a local-dir path is the node's own).
        probe = Worker(args.node, token, _NoModel())
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                info = await probe.hello(session)
        except Refused as refusal:
            log.error("%s", refusal)
            return refusal.exit_code
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.error("cannot reach %s: %s (give --model to start without asking the node)", args.node, exc)
            return EXIT_ERROR
        spec = info.get("spec")
        if not spec:
            log.error("the node names no model spec; give --model")
            return EXIT_ERROR
    try:
        classifier = await asyncio.to_thread(load_classifier, spec, args.device, args.batch_size)
    except ModelUnavailable as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    worker = Worker(args.node, token, classifier, encoding=args.encoding, batch_size=args.batch_size,
                    prefetch=args.prefetch, stats_interval=args.stats_interval)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, worker.stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    return await worker.run()


class _NoModel:
    """Stands in for a classifier while the worker only asks the node which model to load."""

    model = None
    max_batch = 1


def cmd_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = _read_token(args)
    if not token:
        print(f"error: give --token, --token-file or {TOKEN_ENV} (from `verdict-node workers add NAME` on the node)",
              file=sys.stderr)
        return 2
    if not args.node.startswith(("http://", "https://")):
        print("error: --node must be an http(s) URL, e.g. https://node.example", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args, token))
    except KeyboardInterrupt:
        return 130


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, time.time() - seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def cmd_workers(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    with Store(config.database_path) as store:
        registry = WorkerRegistry(store)
        if args.workers_command == "add":
            try:
                token = registry.add(args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(token)
            print(f"worker {args.name} added. The token is shown only this once; run the worker with\n"
                  f"  verdict-node worker --node {config.node.url} --token-file FILE   (or --token, or "
                  f"VERDICT_NODE_WORKER_TOKEN)", file=sys.stderr)
            if not config.workers.enabled:
                print("note: workers.enabled is false in node.yaml; set it to true and restart the node",
                      file=sys.stderr)
            return 0
        if args.workers_command == "remove":
            if not registry.remove(args.name):
                print(f"error: no worker named {args.name!r}", file=sys.stderr)
                return 1
            print(f"worker {args.name} removed: its token is refused from its next request on")
            return 0
        records = registry.records()
        if getattr(args, "json", False):
            print(json.dumps([{**{k: v for k, v in r.__dict__.items() if k != "model"},
                               "model": model_to_json(r.model) if r.model else None} for r in records], indent=2))
            return 0
        if not records:
            print("no workers (add one with: verdict-node workers add NAME)")
            return 0
        print(f"{'NAME':<20} {'LAST CONTACT':<14} {'LEASED':>6} {'DONE':>8} {'FRAMES/S':>9}  MODEL")
        for r in records:
            model = describe_model(r.model) if r.model else "-"
            fps = f"{r.frames_per_s:.2f}" if r.frames_per_s is not None else "-"
            print(f"{r.name:<20} {_ago(r.last_seen_at):<14} {r.leased_jobs:>6} {r.jobs_done:>8} {fps:>9}  {model}")
            if r.last_refusal:
                print(f"{'':<20} refused: {r.last_refusal}")
        return 0
