"""Several real nodes on loopback, each started the way an admin starts one (`verdict-node serve` on its
own data directory and port), plus what the federation tests need around them: polling the databases
the nodes write, signing requests as a peer would (to forge them, too), synthetic signed verdicts, and for
the in-process nodes (tests.node_helpers.running_node) a data directory, peers.yaml and own verdicts.

    a = Peer.create(tmp_path / "a", "a", model=spec)
    b = Peer.create(tmp_path / "b", "b", peers=[a.peer_entry(trust="full")])
    with started(a, b):
        wait_until(lambda: a.follower_state(b) == "accepted")
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import yaml

from node.config import NodeConfig, load_config
from protocol import httpsig
from protocol.keys import load_private_key
from protocol.verdict import Fingerprint, ModelInfo, Verdict, new_verdict_id, sign_verdict, utc_timestamp
from tests.node_helpers import (ROOT, free_port, make_data_dir, metric_value, pictrs_post, run, stop_process,
                                wait_healthy)

# Fast-moving federation settings for tests: short poll and retry delays, the real batch size and window.
TEST_FEDERATION = {"poll_seconds": 0.2, "retry_base_seconds": 1.0, "retry_max_seconds": 5.0,
                   "backfill_interval_seconds": 30.0, "request_timeout_seconds": 10.0}


@dataclass
class Peer:
    """One node: its data directory, port, and (while running) its `verdict-node serve` process."""

    name: str
    config: NodeConfig
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, name: str, *, model: str = "none", thresholds: dict | None = None,
               federation: dict | None = None, **sections: Any) -> "Peer":
        config = make_data_dir(directory, model=model, thresholds=thresholds, port=free_port(),
                               node={"name": f"node-{name}"},
                               federation={**TEST_FEDERATION, **(federation or {})}, **sections)
        return cls(name, config)

    # -- identity -----------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return self.config.node.url

    @property
    def actor(self) -> str:
        return self.config.actor_id

    @property
    def rsa_key(self) -> Any:
        return load_private_key(self.config.rsa_key_path)

    @property
    def ed25519_key(self) -> Any:
        return load_private_key(self.config.ed25519_key_path)

    def validate_url(self) -> str:
        return f"{self.base}/pictrs/validate/{self.config.pictrs.tokens[0]}"

    # -- configuration files ----------------------------------------------------------------------------

    def write_peers(self, entries: list[dict]) -> None:
        self.config.peers_path.write_text(yaml.safe_dump({"peers": entries}, sort_keys=False))

    def edit_config(self, **sections: Any) -> None:
        path = self.config.data_dir / "node.yaml"
        raw = yaml.safe_load(path.read_text())
        for key, value in sections.items():
            raw.setdefault(key, {}).update(value) if isinstance(value, dict) else raw.__setitem__(key, value)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.config = load_config(path)

    # -- process --------------------------------------------------------------------------------------

    def spawn(self, **popen: Any) -> None:
        """Start `verdict-node serve`; ``popen`` goes to subprocess.Popen (the network bench puts each node in
        its own process group with ``start_new_session=True``, so it alone decides when the node stops)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.log_path = self.config.data_dir / "serve.log"
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config",
                                      str(self.config.data_dir / "node.yaml")],
                                     cwd=self.config.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, **popen)
        log.close()

    def wait_ready(self, timeout: float = 120) -> None:
        assert self.proc is not None
        try:
            wait_healthy(self.base, self.proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}\n{self.log()}") from None

    def stop(self) -> int:
        code = stop_process(self.proc) if self.proc is not None else 0
        self.proc = None
        return code

    def hang_up(self) -> None:
        """`kill -HUP`: the running serve reads peers.yaml again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    @property
    def pin(self) -> str:
        """The key_fingerprint line of `verdict-node peers show-key`, as its admin would send it."""
        shown = self.cli("peers", "show-key").stdout
        return next(line.split()[1] for line in shown.splitlines() if line.startswith("key_fingerprint:"))

    def log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path and self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`verdict-node <args> --config <node.yaml>` as the admin would type it."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "node.cli", *args, "--config",
                               str(self.config.data_dir / "node.yaml")], env=env, capture_output=True, text=True,
                              timeout=60)

    # -- what it stored ---------------------------------------------------------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Read the node's database (WAL: safe while the server writes)."""
        conn = sqlite3.connect(f"file:{self.config.database_path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.query(sql, *params)[0][0]

    def follower_state(self, other: "Peer") -> str | None:
        rows = self.query("SELECT follower_state FROM peers WHERE actor = ?", other.actor)
        return rows[0][0] if rows else None

    def following_state(self, other: "Peer") -> str | None:
        rows = self.query("SELECT following_state FROM peers WHERE actor = ?", other.actor)
        return rows[0][0] if rows else None

    def verdicts_of(self, issuer: "Peer") -> int:
        return self.scalar("SELECT COUNT(*) FROM verdicts WHERE issuer = ?", issuer.actor)

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=10) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def started(*peers: Peer, timeout: float = 120) -> Iterator[None]:
    """Start every node at once (they load in parallel), wait until each answers; stop them all at the end."""
    try:
        for peer in peers:
            peer.spawn()
        for peer in peers:
            peer.wait_ready(timeout)
        yield
    finally:
        for peer in peers:
            peer.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(interval)


# -- requests signed as a peer signs them (and forged ones) ----------------------------------------------

def signed_request(method: str, url: str, signer: Peer | None, body: bytes | None = None, *,
                   key_id: str | None = None, rsa_key: Any = None, date: float | None = None,
                   tamper: Callable[[dict], None] | None = None,
                   send_body: bytes | None = None) -> tuple[int, Any]:
    """Send a request signed with a node's RSA key the way Mastodon signs. ``tamper`` may edit the headers
    after signing; ``send_body`` sends other bytes than the signed ones; ``date`` signs another time."""
    headers = {"Accept": "application/activity+json"}
    if body is not None:
        headers["Content-Type"] = "application/activity+json"
    key = rsa_key if rsa_key is not None else signer.rsa_key
    key_id = key_id or f"{signer.actor}#main-key"
    if date is not None:
        headers["Date"] = email.utils.formatdate(date, usegmt=True)
    headers.update(httpsig.sign_request(method, url, headers, body, key_id, key))
    if tamper is not None:
        tamper(headers)
    data = send_body if send_body is not None else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


# -- synthetic verdicts ------------------------------------------------------------------------------------

TEST_MODEL = ModelInfo(name="synthetic-model", version="1", rules="synthetic-rules")


def synthetic_verdict(actor_id: str, ed25519_key: Any, index: int, *, csam: float = 0.1,
                      model: ModelInfo = TEST_MODEL) -> tuple[Verdict, dict]:
    """A signed verdict about a made-up image (distinct keys per index), as the pipeline would sign it."""
    digest = f"{index:064x}"
    fp = Fingerprint(sha256=digest, pixel_sha256=digest[::-1], phash64=f"{(index * 0x9E3779B97F4A7C15) % 2**64:016x}",
                     preprocessing="synthetic-1", md5=digest[:32])
    verdict = Verdict(id=new_verdict_id(actor_id), issuer=actor_id, fingerprint=fp,
                      scores={"csam": csam, "nsfw": 0.2, "underage": 0.1},
                      label="csam" if csam >= 0.5 else "safe", model=model, published=utc_timestamp())
    return verdict, sign_verdict(verdict, ed25519_key, f"{actor_id}#ed25519-key")


# -- in-process nodes (tests.node_helpers.running_node) ----------------------------------------------------

def node_config(tmp_path: Path, name: str, peers: list[dict] | None = None, federation: dict | None = None,
                **sections: Any) -> NodeConfig:
    """A data directory ``tmp_path/name`` on a free port, with the tests' fast federation settings."""
    return make_data_dir(tmp_path / name, port=free_port(), peers=peers, node={"name": f"node-{name}"},
                         federation={**TEST_FEDERATION, **(federation or {})}, **sections)


def write_peers(config: NodeConfig, entries: list[dict]) -> None:
    config.peers_path.write_text(yaml.safe_dump({"peers": entries}))


async def issue_verdicts(node: Any, count: int, start: int = 0) -> list[str]:
    """Own verdicts as the pipeline makes them: signed, stored, announced to the on_own_verdict hooks."""
    ids = []
    for i in range(start, start + count):
        verdict, doc = synthetic_verdict(node.actor_id, node.ed25519_key, i)
        node.add_verdict(verdict, doc, own=True)
        await node.emit_own_verdict(verdict, doc)
        ids.append(verdict.id)
    return ids


async def signed_get(url: str, config: NodeConfig) -> tuple[int, dict, Any]:
    """A GET signed with the node's RSA key, as a peer reads an outbox or asks a lookup: (status, headers, JSON)."""
    headers = {"Accept": "application/activity+json"}
    headers.update(httpsig.sign_request("GET", url, headers, None, f"{config.actor_id}#main-key",
                                        load_private_key(config.rsa_key_path)))
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> None:
    """Wait for ``predicate`` inside an event loop. Generous: the wait ends as soon as the condition holds;
    the bound only matters on a starved machine."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.05)


# -- pict-rs calls and metrics, as an admin would watch them ----------------------------------------------

async def _scan(peer: Peer, images: list[bytes], content_type: str = "image/jpeg", parallel: int = 16) -> list[dict]:
    semaphore = asyncio.Semaphore(parallel)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(data: bytes) -> dict:
            async with semaphore:
                status, body = await pictrs_post(peer.validate_url(), data, content_type, session=session)
                body["status"] = status
                return body
        return list(await asyncio.gather(*(one(d) for d in images)))


def scan(peer: Peer, images: list[bytes], content_type: str = "image/jpeg") -> list[dict]:
    """POST each image to the peer's pict-rs endpoint, as pict-rs does; the answers, with their status."""
    return run(_scan(peer, images, content_type))


def metric(peer: Peer, name: str, **labels: str) -> float:
    return run(metric_value(peer.base, name, **labels))
