"""Remote GPU workers, the node's side: what this process knows of each connected worker, the queue of
images waiting for them, and lease and job expiry. The HTTP routes workers talk to are in workers.api.

Every worker request is authenticated against the worker registry, so a removed worker's next request gets
401 and its leases go back to the queue; "no worker" means no authenticated request from any worker for
``stale_after_s``, not one shared timestamp; and everything is asyncio, not a thread blocked per pending
upload.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Gauge

from node.config import WorkersSection
from node.runtime import InferenceBackend
from node.store import Store
from node.workers.queue import WorkQueue
from node.workers.registry import WorkerRegistry
from node.workers.wire import Geometry, model_to_json
from protocol.verdict import ModelInfo

log = logging.getLogger("verdict_node.workers")

THROUGHPUT_WINDOW_S = 60.0


@dataclass
class _Presence:
    """A worker as this node process has seen it (in memory; the registry row is the persisted view)."""

    last_seen: float
    model: ModelInfo | None = None
    done: deque = field(default_factory=deque)  # (time, frames) of results in the last THROUGHPUT_WINDOW_S
    first_seen: float = 0.0
    persisted_seen: float = float("-inf")
    persisted_leased: int = -1

    def frames_per_s(self, now: float) -> float:
        while self.done and now - self.done[0][0] > THROUGHPUT_WINDOW_S:
            self.done.popleft()
        span = min(THROUGHPUT_WINDOW_S, max(1.0, now - self.first_seen))
        return sum(frames for _, frames in self.done) / span


class WorkerHub:
    """Everything the node does for its remote workers. ``settings`` is node.yaml's ``workers`` section (any
    object with its attributes); ``model`` is the ModelInfo workers must report."""

    def __init__(self, store: Store, settings: WorkersSection, model: ModelInfo, *, spec: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.model = model
        self.spec = spec
        self.clock = clock
        self.registry = WorkerRegistry(store)
        self.queue = WorkQueue(max_jobs=settings.max_queue, lease_timeout=settings.lease_timeout_s,
                               job_ttl=settings.job_ttl_s, max_grants=settings.max_attempts, clock=clock)
        self.presence: dict[str, _Presence] = {}
        # The model input geometry the workers report (one model, so one geometry): frames are reduced to it
        # when queued. None until a worker has said, or when the model's preprocessing is not resize+crop.
        self.geometry: Geometry | None = None
        # Set by install(): the backend the pict-rs endpoint uses, and the secret that lets other processes
        # on this host with the same data directory (`verdict-node scan`) queue work here (see submit).
        self.backend: InferenceBackend | None = None
        self.submit_token: str | None = None
        # A poll must come back well before the worker would be called silent or lose its leases.
        self.poll_wait = max(0.2, min(20.0, settings.lease_timeout_s / 3, settings.stale_after_s / 2))
        self.registry.reset_leases()

    # -- state -----------------------------------------------------------------------------------

    def remote_active(self) -> bool:
        """Has any worker made an authenticated request within `stale_after_s`?"""
        cutoff = self.clock() - self.settings.stale_after_s
        return any(p.last_seen >= cutoff for p in self.presence.values())

    def touch(self, name: str, model: ModelInfo | None = None) -> _Presence:
        now = self.clock()
        presence = self.presence.get(name)
        if presence is None:
            presence = self.presence[name] = _Presence(last_seen=now, first_seen=now)
            log.info("worker %s connected", name)
        presence.last_seen = now
        self.queue.heartbeat(name)
        columns: dict[str, Any] = {}
        if model is not None and model != presence.model:
            presence.model = model
            columns["model"] = json.dumps(model_to_json(model))
            columns["last_refusal"] = None
        if columns or now - presence.persisted_seen >= 1.0:  # a write a second is plenty for `workers list`
            presence.persisted_seen = now
            self.registry.update(name, last_seen_at=time.time(), **columns)
        return presence

    def persist_leases(self) -> None:
        for name, presence in self.presence.items():
            leased = self.queue.leased_by(name)
            if leased != presence.persisted_leased:
                presence.persisted_leased = leased
                self.registry.update(name, leased_jobs=leased)

    def maintain_once(self) -> None:
        """Expire leases and jobs; requeue the leases of workers that were removed meanwhile."""
        self.queue.expire()
        holders = {lease.worker for lease in self.queue.leases.values()}
        if holders:
            known = self.registry.names()
            for name in holders - known:
                count = self.queue.release(name)
                log.warning("worker %s was removed: its %d leased images went back to the queue", name, count)
        for name in list(self.presence):
            if name not in holders and self.clock() - self.presence[name].last_seen > THROUGHPUT_WINDOW_S * 10:
                del self.presence[name]  # long gone; the registry row keeps its history
        self.persist_leases()

    async def maintain(self, node: Any = None, interval: float = 0.25) -> None:  # node: a background task's argument
        """Background task of the node: lease expiry does not wait for the next request to notice."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.maintain_once()
            except Exception:  # noqa: BLE001 - keep expiring leases whatever one round hit
                log.exception("worker queue maintenance failed")

    def close(self) -> None:
        self.queue.close()
        try:
            self.persist_leases()
        except Exception:  # noqa: BLE001 - the store may already be closed at shutdown
            pass

    def add_metrics(self, registry: CollectorRegistry) -> None:
        """Gauges for /metrics, read live from the queue and the presence table."""
        Gauge("verdictnode_worker_queue_images", "Images waiting for or leased to remote workers.",
              registry=registry).set_function(lambda: self.queue.outstanding)
        Gauge("verdictnode_workers_connected", "Remote workers heard from within workers.stale_after_s.",
              registry=registry).set_function(
            lambda: sum(p.last_seen >= self.clock() - self.settings.stale_after_s for p in self.presence.values()))
        Gauge("verdictnode_worker_requeued_images", "Images put back in the queue (lease expired, worker removed "
              "or failed), since start.", registry=registry).set_function(lambda: self.queue.requeued)
        Gauge("verdictnode_worker_dropped_images", "Images dropped (job_ttl_s or max_attempts), since start.",
              registry=registry).set_function(lambda: self.queue.dropped)
