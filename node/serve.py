"""`verdict-node serve`: the composition root of a serving node. It opens the data directory, installs the
features a serving node has (federation, hash banks and the exchange feed, remote workers) and runs the HTTP
application until SIGTERM; SIGHUP, or any change to peers.yaml, puts the new peers.yaml in force without a
restart (Node.reload_peers, node.peers_file).

This is one of the few places that may name feature packages: the core never does, and features never
name each other (tests/test_import_rules.py holds that).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from node import admin, attribution, banks, federation, peers_file, workers
from node.admin import Console, console_app
from node.config import NodeConfig
from node.datadir import pictrs_urls, resolve_config
from node.http_limits import DeadlineAppRunner, Deadlines
from node.runtime import Node, on_reload_signal, on_stop_signals
from node.server import app_runner
from node.store import SchemaTooNew

log = logging.getLogger("verdict_node.server")


def open_serving_node(config: NodeConfig, *, load_model: bool = True) -> Node:
    """Node.open plus what `serve` adds: federation (routes, delivery, backfill, lookups), hash banks and
    the exchange feed, with ``workers.enabled`` the remote worker queue, with an ``attribution:`` section
    the attribution of positives (node.attribution), and with ``admin.enabled`` the review console (served
    on its own listener by ``serve``)."""
    node = Node.open(config, load_model=load_model)
    federation.install(node)
    banks.install(node)
    workers.install(node)
    attribution.install(node)
    if config.admin.enabled:
        admin.install(node)
    node.background.append(watch_peers_file)
    return node


async def watch_peers_file(node: Node) -> None:
    """Background task: a changed peers.yaml is put in force once it has settled."""
    await peers_file.watch(node.reload_peers, node.config.peers_path, lambda: node.peers_signature)


async def start_console(node: Node) -> web.AppRunner | None:
    """The review console on its own listener (``admin.listen``), when installed: never on the federation
    listener, which peers and pict-rs reach. The node's lifecycle stays with the main application."""
    console = node.features.get(Console)
    if console is None:
        return None
    runner = DeadlineAppRunner(console_app(console), deadlines=Deadlines.of(node.config), access_log=None,
                               handle_signals=False)
    await runner.setup()
    settings = node.config.admin
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"{exc.strerror or exc} (the review console's admin.listen, {settings.listen})") from exc
    log.info("review console on http://%s/ (accounts: verdict-node admin add NAME)", settings.listen)
    return runner


async def serve(node: Node, host: str, port: int, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly (node.close flushes pending writes)."""
    runner = app_runner(node, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    try:
        console_runner = await start_console(node)
    except OSError:
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    on_reload_signal(node.reload_peers)
    log.info("listening on http://%s:%d (actor %s)", host, port, node.actor_id)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if console_runner is not None:
            await console_runner.cleanup()
        await runner.cleanup()


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = resolve_config(args.config)
    try:
        default_url = f"http://{config.listen.host}:{config.listen.port}"
        if getattr(args, "host", None):
            config.listen.host = args.host
        if getattr(args, "port", None):
            config.listen.port = args.port
        if getattr(args, "console", False):
            config.admin.enabled = True
        if config.node.url == default_url:  # never set by the admin: follow the overrides
            config.node.url = f"http://{config.listen.host}:{config.listen.port}"
        node = open_serving_node(config)
    except SchemaTooNew as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    urls = pictrs_urls(config)
    log.info("pict-rs: PICTRS__MEDIA__EXTERNAL_VALIDATION=%s", urls[0])
    try:
        asyncio.run(serve(node, config.listen.host, config.listen.port))
    except OSError as e:
        print(f"error: cannot listen on {config.listen.host}:{config.listen.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
