"""Remote GPU workers, the node's HTTP side: the routes under /workers/v1 that workers long-poll for leases
and post results to (WorkerHub), what this process knows of each connected worker, and `install`, the serve
extension that turns it all on with ``workers.enabled``.

Why it looks like this (fedi-safety/pictrs-safety's flaws, reference/seeds.md §1.6 and §2): every request is
authenticated against the worker registry, so a removed worker's next request gets 401 and its leases go back
to the queue; "no worker" means no authenticated request from any worker for `stale_after_s`, not one shared
timestamp; a result for a lease that is gone gets 409; and everything is asyncio, not a thread blocked per
pending upload. The worker never sees originals: the node sends the frames it has already decoded, after the
classifier's own resize and centre crop (node/work_wire.py), and signs the verdicts itself: private keys never
leave the node. `/workers/v1/submit` lets commands beside `serve` on the same data directory queue work here.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from node.store import Store
from node.work_queue import JobDropped, Lease, LeaseGone, WorkQueue
from node.work_wire import (API_PREFIX, ENCODINGS, LEASE_MEDIA_TYPE, Geometry, describe_model, encode_frame,
                            model_from_json, model_to_json, pack_lease, parse_results, reduce_frame, same_model,
                            unpack_lease)
from node.worker_backends import WorkerBackend, ensure_submit_token, expected_model, submit_token_path
from node.worker_registry import WorkerRegistry
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo
from scanners.batching import QueueFull

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


def _connected(request: Any) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _json_response(obj: Any, status: int = 200) -> Any:
    from aiohttp import web

    return web.json_response(obj, status=status)


class WorkerHub:
    """Everything the node does for its remote workers. ``settings`` is node.yaml's ``workers`` section (any
    object with its attributes); ``model`` is the ModelInfo workers must report."""

    def __init__(self, store: Store, settings: Any, model: ModelInfo, *, spec: str | None = None,
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
        self.backend: "WorkerBackend | None" = None
        self.submit_token: str | None = None
        # A poll must come back well before the worker would be called silent or lose its leases.
        self.poll_wait = max(0.2, min(20.0, settings.lease_timeout_s / 3, settings.stale_after_s / 2))
        self.registry.reset_leases()

    # -- state -----------------------------------------------------------------------------------

    def remote_active(self) -> bool:
        """Has any worker made an authenticated request within `stale_after_s`?"""
        cutoff = self.clock() - self.settings.stale_after_s
        return any(p.last_seen >= cutoff for p in self.presence.values())

    def _touch(self, name: str, model: ModelInfo | None = None) -> _Presence:
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

    def _persist_leases(self) -> None:
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
        self._persist_leases()

    async def maintain(self, node: Any = None, interval: float = 0.25) -> None:
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
            self._persist_leases()
        except Exception:  # noqa: BLE001 - the store may already be closed at shutdown
            pass

    # -- HTTP ------------------------------------------------------------------------------------

    def setup(self, app: Any, node: Any = None) -> None:
        """Add the worker routes to the node's aiohttp application (a `node.app_setups` hook)."""
        app.router.add_get(f"{API_PREFIX}/hello", self.handle_hello)
        app.router.add_post(f"{API_PREFIX}/lease", self.handle_lease)
        app.router.add_post(f"{API_PREFIX}/leases/{{lease_id}}", self.handle_results)
        app.router.add_get(f"{API_PREFIX}/submit", self.handle_submit_info)
        app.router.add_post(f"{API_PREFIX}/submit", self.handle_submit)

        async def on_shutdown(app: Any) -> None:
            # Before the node drains its inferences: fail what waits for workers (their HTTP requests can no
            # longer arrive) and end the long polls, instead of waiting out leases at every restart.
            self.close()

        app.on_shutdown.append(on_shutdown)

    def add_metrics(self, registry: Any) -> None:
        """Gauges for /metrics, read live from the queue and the presence table."""
        from prometheus_client import Gauge

        Gauge("verdictnode_worker_queue_images", "Images waiting for or leased to remote workers.",
              registry=registry).set_function(lambda: self.queue.outstanding)
        Gauge("verdictnode_workers_connected", "Remote workers heard from within workers.stale_after_s.",
              registry=registry).set_function(
            lambda: sum(p.last_seen >= self.clock() - self.settings.stale_after_s for p in self.presence.values()))
        Gauge("verdictnode_worker_requeued_images", "Images put back in the queue (lease expired, worker removed "
              "or failed), since start.", registry=registry).set_function(lambda: self.queue.requeued)
        Gauge("verdictnode_worker_dropped_images", "Images dropped (job_ttl_s or max_attempts), since start.",
              registry=registry).set_function(lambda: self.queue.dropped)

    def _authenticate(self, request: Any) -> tuple[str, str]:
        from aiohttp import web

        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        name = self.registry.authenticate(token)
        if name is None:
            raise web.HTTPUnauthorized(text=json.dumps({"error": "unknown or revoked worker token"}),
                                       content_type="application/json", headers={"WWW-Authenticate": "Bearer"})
        return name, token or ""

    async def _json_body(self, request: Any, limit: int) -> Any:
        from aiohttp import web

        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
            raise web.HTTPBadRequest(text=json.dumps({"error": f"body is not JSON: {exc}"}),
                                     content_type="application/json") from None

    def _refuse_model(self, name: str, model: ModelInfo) -> Any:
        message = (f"model mismatch: this node requires {describe_model(self.model)}, but worker {name} runs "
                   f"{describe_model(model)}; start the worker with --model {self.spec or self.model.name}")
        try:
            self.registry.update(name, last_refusal=message, model=json.dumps(model_to_json(model)))
        except Exception:  # noqa: BLE001 - the answer matters more than the note
            pass
        log.warning("%s", message)
        return _json_response({"error": message, "node_model": model_to_json(self.model),
                               "worker_model": model_to_json(model)}, 409)

    async def handle_hello(self, request: Any) -> Any:
        name, _ = self._authenticate(request)
        # Recorded for `workers list`, but not yet "connected": only a lease request, which carries the
        # worker's model and passes the model check, makes the node wait for this worker.
        self.registry.update(name, last_seen_at=time.time())
        return _json_response({"worker": name, "model": model_to_json(self.model), "spec": self.spec,
                               "lease_timeout_s": self.settings.lease_timeout_s, "poll_wait_s": self.poll_wait,
                               "encodings": list(ENCODINGS)})

    async def handle_lease(self, request: Any) -> Any:
        """Long poll: {"model", "geometry", "encoding", "max_frames", "wait_s"} -> 200 lease body or 204.
        ``max_frames: 0`` is a pure heartbeat (the worker is busy but alive)."""
        from aiohttp import web

        name, token = self._authenticate(request)
        body = await self._json_body(request, 64 * 1024)
        try:
            if not isinstance(body, dict):
                raise ProtocolError("must be an object", "lease request")
            model = model_from_json(body.get("model"))
            geometry = Geometry.from_json(body.get("geometry"))
            encoding = body.get("encoding", "png")
            if encoding not in ENCODINGS:
                raise ProtocolError(f"must be one of {', '.join(ENCODINGS)}", "encoding")
            max_frames = body.get("max_frames", 32)
            if type(max_frames) is not int or not 0 <= max_frames <= 4096:
                raise ProtocolError("must be an integer in [0, 4096]", "max_frames")
            wait_s = body.get("wait_s", self.poll_wait)
            if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or wait_s < 0:
                raise ProtocolError("must be a number >= 0", "wait_s")
        except ProtocolError as exc:
            return _json_response({"error": str(exc)}, 400)
        if not same_model(model, self.model):
            return self._refuse_model(name, model)
        if self.geometry is not None and geometry != self.geometry:
            # Queued frames are already shrunk to the first geometry; another one would not give the scores
            # local inference gives. Workers of one model agree, so this is a broken or foreign client.
            message = (f"frame geometry mismatch: this node ships {self.geometry.to_json()}, worker {name} asks for "
                       f"{geometry.to_json() if geometry else 'full frames'} with the same model")
            self.registry.update(name, last_refusal=message)
            return _json_response({"error": message}, 409)
        self._touch(name, model)
        self.geometry = geometry
        if max_frames == 0:
            return web.Response(status=204)
        # Granting is re-checked at the last moment: a worker revoked during its long poll gets nothing, nor
        # does one whose connection is gone (a killed process: the kernel closed its socket), so its jobs do
        # not sit in a lease nobody will return until the lease times out.
        lease = await self.queue.take(name, max_frames, min(float(wait_s), self.poll_wait),
                                      still_allowed=lambda: _connected(request)
                                      and self.registry.authenticate(token) == name)
        self._touch(name)
        if lease is None:
            return web.Response(status=204)
        try:
            payload = await asyncio.to_thread(self._encode_lease, lease, geometry, encoding)
        except Exception:
            log.exception("encoding lease %s failed; its jobs go back to the queue", lease.id[:12])
            self.queue.release_lease(lease.id)
            raise
        self._persist_leases()
        return web.Response(body=payload, content_type=LEASE_MEDIA_TYPE)

    def _encode_lease(self, lease: Lease, geometry: Geometry | None, encoding: str) -> bytes:
        """Runs in a thread: reduce + encode each job's frames (cached per job, so a requeued job is not
        encoded twice for workers of the same kind)."""
        jobs = []
        for job in lease.jobs.values():
            key = (geometry, encoding)
            frames = job.encoded.get(key)
            if frames is None:
                frames = [encode_frame(reduce_frame(frame, geometry), encoding) for frame in job.frames]
                job.encoded[key] = frames
            jobs.append((job.id, frames))
        expires_in = max(0.0, lease.deadline - self.clock())
        return pack_lease(lease.id, round(expires_in, 3), jobs)

    async def handle_results(self, request: Any) -> Any:
        """{"results": [{"job", "scores", "matched"} | {"job", "error"}]} -> 200, 401 revoked, 409 lease gone."""
        name, _ = self._authenticate(request)
        presence = self._touch(name)
        body = await self._json_body(request, 4 * 1024 * 1024)
        lease_id = request.match_info["lease_id"]
        try:
            results = parse_results(body)
            done, requeued = self.queue.complete(name, lease_id, results)
        except ProtocolError as exc:
            return _json_response({"error": str(exc)}, 400)
        except LeaseGone as exc:
            return _json_response({"error": str(exc)}, 409)
        frames = sum(len(job.frames) for job in done)
        now = self.clock()
        presence.done.append((now, frames))
        self.registry.add_done(name, len(done), frames)
        self.registry.update(name, frames_per_s=round(presence.frames_per_s(now), 3))
        self._persist_leases()
        return _json_response({"accepted": len(done), "requeued": requeued})

    # -- submit: other processes of this node (sweeps) queue work here ---------------------------

    def _authenticate_submitter(self, request: Any) -> None:
        from aiohttp import web

        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not self.submit_token or not hmac.compare_digest(token.encode(), self.submit_token.encode()):
            raise web.HTTPUnauthorized(text=json.dumps({"error": "submit token refused"}),
                                       content_type="application/json", headers={"WWW-Authenticate": "Bearer"})

    async def handle_submit_info(self, request: Any) -> Any:
        self._authenticate_submitter(request)
        return _json_response({"model": model_to_json(self.model),
                               "geometry": self.geometry.to_json() if self.geometry else None})

    async def handle_submit(self, request: Any) -> Any:
        """One image's frames (a lease-format body with one job) -> its merged scores, through the same
        backend as the pict-rs endpoint (workers first, the local model if any). 503 when it refuses."""
        self._authenticate_submitter(request)
        body = await request.read()
        try:
            message = await asyncio.to_thread(unpack_lease, body)
            if len(message.jobs) != 1:
                raise ProtocolError("submit one job", "jobs")
        except ProtocolError as exc:
            return _json_response({"error": str(exc)}, 400)
        assert self.backend is not None
        try:
            result = await self.backend.classify_frames(message.jobs[0].frames)
        except (QueueFull, JobDropped) as exc:
            return _json_response({"error": str(exc), "unavailable": True}, 503)
        return _json_response({"scores": result.scores, "matched": list(result.matched),
                               "geometry": self.geometry.to_json() if self.geometry else None})


def install(node: Any) -> None:
    """Node extension (runtime.EXTENSIONS): with ``workers.enabled``, the node's inference backend becomes a
    WorkerBackend (over the local classifier, if one loaded) and the worker routes are served."""
    from node.config import ConfigError

    settings = getattr(node.config, "workers", None)
    if settings is None or not settings.enabled:
        return
    local = node.backend
    classifier_spec = node.config.classifier.model
    spec = settings.model or (None if classifier_spec.strip().lower() == "none" else classifier_spec)
    if spec is None:
        raise ConfigError("node.yaml: workers.model: required when classifier.model is none "
                          "(the classifier spec the workers run, e.g. ViT-L-14/openai)")
    if local is not None and settings.model is None:
        model = local.model
    else:
        from scanners.classifier import ModelUnavailable

        try:
            model = expected_model(spec)
        except ModelUnavailable as exc:
            raise ConfigError(f"node.yaml: workers.model: cannot tell which model {spec!r} is: {exc}") from None
        if local is not None and not same_model(local.model, model):
            raise ConfigError(f"node.yaml: workers.model: {describe_model(model)} differs from the local classifier "
                              f"{describe_model(local.model)}; verdicts of one node come from one model")
    hub = WorkerHub(node.store, settings, model, spec=spec)
    hub.add_metrics(node.metrics.registry)
    hub.submit_token = ensure_submit_token(submit_token_path(node.config))
    backend = WorkerBackend(hub, local, local_after_s=settings.local_after_ms / 1000.0)
    hub.backend = backend
    node.workers = hub
    node.set_backend(backend)
    node.app_setups.append(hub.setup)
    node.background.append(hub.maintain)
