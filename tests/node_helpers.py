"""Helpers to run a real node in tests: a data directory with a chosen classifier and settings, an
in-process server on a free loopback port, a `verdict-node serve` subprocess, and a client that calls
the validation endpoint the way pict-rs does (raw body, Content-Type, 30 s timeout).

    config = make_data_dir(tmp_path, model=tiny_clip_spec(tmp_path), thresholds={"csam": 0.0})
    async with running_node(config) as (node, base_url):
        status, body = await pictrs_post(base_url, config, jpeg_bytes)
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import yaml
from aiohttp import web

from node.config import NodeConfig, load_config
from node.datadir import init_data_dir

ROOT = Path(__file__).resolve().parents[1]
PICTRS_TIMEOUT = aiohttp.ClientTimeout(total=30)  # pict-rs's default external_validation_timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_clip_spec(directory: Path) -> str:
    """A random tiny open_clip model on disk (made once per directory), as a classifier.model spec."""
    from tests.tiny_clip import make_tiny_clip_dir

    target = Path(directory) / "tiny-clip"
    marker = Path(directory) / "tiny-clip.spec"
    if marker.exists():
        return marker.read_text()
    spec = make_tiny_clip_dir(target)
    marker.write_text(spec)
    return spec


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_data_dir(directory: Path, *, model: str = "none", thresholds: dict | None = None,
                  port: int | None = None, peers: list[dict] | None = None, **sections: Any) -> NodeConfig:
    """`verdict-node init` in `directory`, then node.yaml edited: classifier.model, policy.thresholds, a free
    port, and any other section overrides (e.g. pictrs={"on_unavailable": "accept"})."""
    directory = Path(directory)
    init_data_dir(directory, "http://127.0.0.1")
    path = directory / "node.yaml"
    raw = yaml.safe_load(path.read_text())
    port = port or free_port()
    overrides: dict[str, Any] = {"node": {"url": f"http://127.0.0.1:{port}"}, "listen": {"port": port},
                                 "classifier": {"model": model, "max_wait_ms": 5}}
    if thresholds is not None:
        overrides["policy"] = {"thresholds": thresholds}
    _merge(overrides, sections)
    _merge(raw, overrides)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if peers is not None:
        (directory / "peers.yaml").write_text(yaml.safe_dump({"peers": peers}, sort_keys=False))
    return load_config(path)


def validate_url(config: NodeConfig, base_url: str | None = None) -> str:
    base = base_url or f"http://127.0.0.1:{config.listen.port}"
    return f"{base}/pictrs/validate/{config.pictrs.tokens[0]}"


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig, **open_kwargs: Any) -> AsyncIterator[tuple[Any, str]]:
    """The node as `serve` opens it (features installed) on 127.0.0.1:<config.listen.port>, with serve's
    runner (request deadlines); yields (node, base_url); cleans up (which closes the node: pending rows
    written)."""
    from node.serve import open_serving_node
    from node.server import app_runner

    node = open_serving_node(config, **open_kwargs)
    runner = app_runner(node, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", config.listen.port)
    await site.start()
    try:
        yield node, f"http://127.0.0.1:{config.listen.port}"
    finally:
        await runner.cleanup()


async def pictrs_post(url: str, data: bytes, content_type: str = "image/jpeg",
                      session: aiohttp.ClientSession | None = None) -> tuple[int, dict]:
    """POST like pict-rs: the raw file as body, its media type as Content-Type, 30 s timeout."""
    async def go(s: aiohttp.ClientSession) -> tuple[int, dict]:
        async with s.post(url, data=data, headers={"Content-Type": content_type}) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, {"raw": text}

    if session is not None:
        return await go(session)
    async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT) as s:
        return await go(s)


async def metric_value(base_url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base_url}/metrics") as r:
            text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@contextlib.contextmanager
def serve_process(config: NodeConfig, *, cwd: Path | None = None, extra_args: tuple[str, ...] = (),
                  timeout: float = 120) -> Iterator[tuple[subprocess.Popen, str]]:
    """`verdict-node serve --config <node.yaml>` as a user would run it; waits for /healthz; SIGTERM at the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config.data_dir / "node.yaml"),
                             *extra_args], cwd=cwd or config.data_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{config.listen.port}"
    try:
        wait_healthy(base, proc, timeout)
        yield proc, base
    finally:
        stop_process(proc)


def wait_healthy(base: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> dict:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{base} did not become healthy in {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run(coro: Any) -> Any:
    """Run a coroutine in a fresh event loop (tests are plain functions; no pytest-asyncio here)."""
    return asyncio.run(coro)
