"""Remote GPU workers, node side: the job queue, leases, the worker registry, the HTTP routes workers talk to,
and the inference backend that sends work to them (and/or to the local classifier).

Why it looks like this (fedi-safety/pictrs-safety's flaws, reference/seeds.md §1.6 and §2, each fixed here):
- one shared key -> one token per worker, only its sha256 stored; `workers remove` deletes it and the
  worker's very next request gets 401, its leases go back to the queue;
- one "last seen" timestamp for all workers -> a registry row per worker (last contact, leased jobs,
  throughput, model), and "no worker" means no authenticated request from any worker for `stale_after_s`;
- a job popped by a worker that then died stays PROCESSING forever -> jobs are *leased* for `lease_timeout_s`;
  every request of the worker (its long poll is the heartbeat) extends its leases, and a lease that runs out
  puts its jobs back at the head of the queue for another worker. A result for a lease that has expired or
  that belongs to someone else is refused (409) and not applied, so an image never gets two verdicts;
- a thread blocked per pending upload and a queue that floods open -> everything is asyncio, the queue has a
  bound (`max_queue` jobs), and what it refuses raises QueueFull, which the pipeline answers per
  `on_unavailable`; with no worker and no local classifier the caller hears so at once instead of waiting out
  pict-rs's budget.

A job whose requester gave up (the pict-rs budget ran out) stays queued: its future is shielded from the
caller's cancellation, so when a worker returns it the pipeline's task still signs and stores the verdict
(until `job_ttl_s`, after which it is dropped and counted).

The worker never sees originals: the node sends the frames it has already decoded, after the classifier's own
resize and centre crop (node/work_wire.py), and signs the verdicts itself: private keys never leave the node.

Workers connect to the serving process. Commands that run beside it on the same data directory
(`verdict-node scan`) reach them through `/workers/v1/submit` (SubmitBackend, install_submitter), so sweeps
and the pict-rs endpoint share one queue and one set of workers.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from node.store import Store
from node.work_wire import (API_PREFIX, ENCODINGS, LEASE_MEDIA_TYPE, Geometry, JobResult, describe_model,
                            encode_frame, model_from_json, model_to_json, pack_lease, parse_results,
                            parse_scores, reduce_frame, same_model, unpack_lease)
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo
from scanners.batching import QueueFull
from scanners.classifier import Classification

log = logging.getLogger("verdict_node.workers")

TOKEN_PREFIX = "vnw_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
THROUGHPUT_WINDOW_S = 60.0


class WorkersUnavailable(QueueFull):
    """No worker has been heard from for `stale_after_s` and there is no local classifier: nothing can classify
    this image within the budget. A QueueFull, so the pipeline answers it per `on_unavailable`."""


class JobDropped(Exception):
    """A job could not be classified: it outlived `job_ttl_s`, was leased `max_attempts` times without a
    result, or the node is shutting down."""


class LeaseGone(Exception):
    """A result for a lease that has expired, was never granted, or belongs to another worker (HTTP 409)."""


# --------------------------------------------------------------------------------------------------
# Registry: who may connect (store-backed, so `verdict-node workers ...` works on a running node's data)
# --------------------------------------------------------------------------------------------------


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class WorkerRecord:
    name: str
    created_at: float
    last_seen_at: float | None
    model: ModelInfo | None
    leased_jobs: int
    jobs_done: int
    frames_done: int
    frames_per_s: float | None
    last_refusal: str | None


class WorkerRegistry:
    """The workers table. Every request is authenticated against it (one indexed lookup), so a revocation
    made by another process (`verdict-node workers remove`) takes effect on the next request."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str) -> str:
        """Register a worker and return its token (shown once; only the hash is kept)."""
        if not _NAME.match(name):
            raise ValueError(f"worker name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        conn = self.store.conn
        if conn.execute("SELECT 1 FROM workers WHERE name = ?", (name,)).fetchone():
            raise ValueError(f"worker {name!r} already exists (remove it first to issue a new token)")
        conn.execute("INSERT INTO workers (name, token_sha256, created_at) VALUES (?, ?, ?)",
                     (name, token_sha256(token), time.time()))
        return token

    def remove(self, name: str) -> bool:
        return self.store.conn.execute("DELETE FROM workers WHERE name = ?", (name,)).rowcount == 1

    def authenticate(self, token: str | None) -> str | None:
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        row = self.store.conn.execute("SELECT name FROM workers WHERE token_sha256 = ?",
                                      (token_sha256(token),)).fetchone()
        return row[0] if row else None

    def names(self) -> set[str]:
        return {row[0] for row in self.store.conn.execute("SELECT name FROM workers")}

    def records(self) -> list[WorkerRecord]:
        rows = self.store.conn.execute(
            "SELECT name, created_at, last_seen_at, model, leased_jobs, jobs_done, frames_done, frames_per_s, "
            "last_refusal FROM workers ORDER BY name").fetchall()
        out = []
        for name, created, seen, model, leased, jobs, frames, fps, refusal in rows:
            info = None
            if model:
                try:
                    info = model_from_json(json.loads(model))
                except (ValueError, ProtocolError):
                    info = None
            out.append(WorkerRecord(name, created, seen, info, leased, jobs, frames, fps, refusal))
        return out

    def update(self, name: str, **columns: Any) -> None:
        if not columns:
            return
        sets = ", ".join(f"{column} = ?" for column in columns)
        self.store.conn.execute(f"UPDATE workers SET {sets} WHERE name = ?", (*columns.values(), name))

    def add_done(self, name: str, jobs: int, frames: int) -> None:
        self.store.conn.execute("UPDATE workers SET jobs_done = jobs_done + ?, frames_done = frames_done + ? "
                                "WHERE name = ?", (jobs, frames, name))

    def reset_leases(self) -> None:
        """At start nobody holds a lease: the previous process's leases died with it."""
        self.store.conn.execute("UPDATE workers SET leased_jobs = 0 WHERE leased_jobs != 0")


# --------------------------------------------------------------------------------------------------
# The queue: jobs, leases, expiry (pure asyncio; no I/O)
# --------------------------------------------------------------------------------------------------

def _consume_exception(future: asyncio.Future) -> None:
    # A job whose requester gave up may fail with nobody awaiting it: that is expected, not an error to log.
    if not future.cancelled():
        future.exception()


@dataclass(eq=False)
class Job:
    """One image's frames waiting for scores."""

    id: str
    frames: list[Image.Image]
    future: asyncio.Future
    created: float
    grants: int = 0
    lease: "Lease | None" = None
    encoded: dict[tuple[Geometry | None, str], list[tuple[dict, bytes]]] = field(default_factory=dict)


@dataclass(eq=False)
class Lease:
    id: str
    worker: str
    jobs: dict[str, Job]
    granted: float
    deadline: float

    @property
    def frame_count(self) -> int:
        return sum(len(job.frames) for job in self.jobs.values())


class WorkQueue:
    """FIFO of jobs with leases. Invariant: a live job is either in ``pending`` or in exactly one lease, and
    its future is resolved at most once, so each image gets exactly one result."""

    def __init__(self, *, max_jobs: int = 256, lease_timeout: float = 30.0, job_ttl: float = 600.0,
                 max_grants: int = 3, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_jobs = max_jobs
        self.lease_timeout = lease_timeout
        self.job_ttl = job_ttl
        self.max_grants = max_grants
        self.clock = clock
        self.pending: deque[Job] = deque()
        self.leases: dict[str, Lease] = {}
        self.dropped = 0
        self.requeued = 0
        self._next_id = 0
        self._arrived = asyncio.Event()
        self._closed = False

    @property
    def outstanding(self) -> int:
        """Jobs the queue holds (pending or leased): what `max_jobs` bounds."""
        return len(self.pending) + sum(len(lease.jobs) for lease in self.leases.values())

    def leased_by(self, worker: str) -> int:
        return sum(len(lease.jobs) for lease in self.leases.values() if lease.worker == worker)

    def submit(self, frames: Sequence[Image.Image]) -> Job:
        if self._closed:
            raise JobDropped("the node is shutting down")
        if not frames:
            raise ValueError("a job needs at least one frame")
        if self.outstanding >= self.max_jobs:
            raise QueueFull(f"{self.outstanding} images already wait for workers (workers.max_queue={self.max_jobs})")
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        job = Job(f"j{self._next_id}-{secrets.token_hex(4)}", list(frames), future, self.clock())
        self.pending.append(job)
        self._wake()
        return job

    def withdraw(self, job: Job) -> bool:
        """Take a job back that no worker has leased yet (to run it locally instead)."""
        try:
            self.pending.remove(job)
        except ValueError:
            return False
        return True

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def take(self, worker: str, max_frames: int, wait_s: float,
                   still_allowed: Callable[[], bool] = lambda: True) -> Lease | None:
        """Lease up to ``max_frames`` frames of jobs (at least one job), waiting up to ``wait_s`` for work.
        ``still_allowed`` is asked right before granting, so a worker revoked during its long poll gets nothing."""
        deadline = self.clock() + wait_s
        while not self._closed:
            self.expire()
            if self.pending:
                if not still_allowed():
                    return None
                return self._grant(worker, max_frames)
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return None

    def _grant(self, worker: str, max_frames: int) -> Lease:
        now = self.clock()
        jobs: dict[str, Job] = {}
        frames = 0
        while self.pending:
            job = self.pending[0]
            if jobs and frames + len(job.frames) > max_frames:
                break
            self.pending.popleft()
            job.grants += 1
            jobs[job.id] = job
            frames += len(job.frames)
        lease = Lease(secrets.token_urlsafe(16), worker, jobs, now, now + self.lease_timeout)
        for job in jobs.values():
            job.lease = lease
        self.leases[lease.id] = lease
        return lease

    def heartbeat(self, worker: str) -> None:
        """The worker is alive: its leases run for another `lease_timeout`."""
        deadline = self.clock() + self.lease_timeout
        for lease in self.leases.values():
            if lease.worker == worker:
                lease.deadline = max(lease.deadline, deadline)

    def complete(self, worker: str, lease_id: str, results: Sequence[JobResult]) -> tuple[list[Job], int]:
        """Apply a worker's results. Refuses the whole post (LeaseGone, nothing applied) if the lease is
        unknown, expired or not this worker's; a ProtocolError if it names a job outside the lease. Jobs the
        post leaves out or reports as failed go back to the queue. Returns (jobs completed, jobs requeued)."""
        self.expire()
        lease = self.leases.get(lease_id)
        if lease is None or lease.worker != worker:
            raise LeaseGone(f"lease {lease_id[:12]} is not held by {worker} (expired, revoked or never granted); "
                            f"its jobs went back to the queue")
        for result in results:
            if result.job_id not in lease.jobs:
                raise ProtocolError(f"job {result.job_id!r} is not part of this lease", "results")
        del self.leases[lease.id]
        done: list[Job] = []
        by_id = {result.job_id: result for result in results}
        back: list[Job] = []
        for job_id, job in lease.jobs.items():
            job.lease = None
            result = by_id.get(job_id)
            if result is not None and result.error is None:
                if not job.future.done():
                    job.future.set_result(Classification(scores=dict(result.scores or {}),
                                                         matched=list(result.matched)))
                done.append(job)
            else:
                if result is not None:
                    log.warning("worker %s failed job %s: %s", worker, job_id, result.error)
                back.append(job)
        requeued = self._requeue(back)
        return done, requeued

    def release(self, worker: str) -> int:
        """Requeue every lease of a worker (revoked): returns the number of jobs put back."""
        mine = [lease for lease in self.leases.values() if lease.worker == worker]
        back: list[Job] = []
        for lease in mine:
            del self.leases[lease.id]
            back.extend(lease.jobs.values())
        return self._requeue(back)

    def release_lease(self, lease_id: str) -> int:
        """Take back a lease the node could not deliver (not the worker's fault: its grants do not count)."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return 0
        for job in lease.jobs.values():
            job.grants -= 1
        return self._requeue(lease.jobs.values())

    def _requeue(self, jobs: Iterable[Job]) -> int:
        """Put jobs back at the head (they are the oldest), or drop those out of time or attempts."""
        now = self.clock()
        back = []
        for job in jobs:
            job.lease = None
            if job.future.done():
                continue
            if now - job.created > self.job_ttl:
                self._drop(job, f"no result within workers.job_ttl_s={self.job_ttl:g}")
            elif job.grants >= self.max_grants:
                self._drop(job, f"leased {job.grants} times without a result (workers.max_attempts)")
            else:
                back.append(job)
        for job in reversed(back):
            self.pending.appendleft(job)
        if back:
            self.requeued += len(back)
            self._wake()
        return len(back)

    def _drop(self, job: Job, why: str) -> None:
        self.dropped += 1
        log.warning("dropping job %s (%d frames): %s", job.id, len(job.frames), why)
        if not job.future.done():
            job.future.set_exception(JobDropped(why))

    def expire(self) -> int:
        """Requeue the jobs of leases past their deadline and drop pending jobs past their TTL."""
        now = self.clock()
        stale = [lease for lease in self.leases.values() if lease.deadline <= now]
        back: list[Job] = []
        for lease in stale:
            del self.leases[lease.id]
            log.warning("lease %s of worker %s expired: %d jobs go back to the queue",
                        lease.id[:12], lease.worker, len(lease.jobs))
            back.extend(lease.jobs.values())
        old = [job for job in self.pending if now - job.created > self.job_ttl or job.future.done()]
        for job in old:
            self.pending.remove(job)
            if not job.future.done():
                self._drop(job, f"not leased within workers.job_ttl_s={self.job_ttl:g}")
        return self._requeue(back)

    def close(self) -> None:
        """Fail everything still waiting; wake long polls so they answer at once."""
        self._closed = True
        jobs = list(self.pending) + [job for lease in self.leases.values() for job in lease.jobs.values()]
        self.pending.clear()
        self.leases.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(JobDropped("the node is shutting down"))
        self._wake()


# --------------------------------------------------------------------------------------------------
# The hub: registry + queue + what the node knows of each connected worker, and the HTTP routes
# --------------------------------------------------------------------------------------------------

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
        except ValueError as exc:
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


# --------------------------------------------------------------------------------------------------
# The inference backend: workers and/or the local classifier, behind the pipeline's interface
# --------------------------------------------------------------------------------------------------

class WorkerBackend:
    """``model`` + ``async classify_frames(frames)`` + ``close()``: what node.pipeline needs, served by remote
    workers, with the local classifier (if any) as the fallback when no worker is connected and as the
    overflow when workers leave an image waiting longer than ``local_after_s``. Exactly one of them
    classifies each image: the local path only takes a job it could withdraw from the queue unleased."""

    def __init__(self, hub: WorkerHub, local: Any = None, *, local_after_s: float = 0.25,
                 check_interval: float = 0.1) -> None:
        self.hub = hub
        self.local = local
        self.local_after_s = local_after_s
        self.check_interval = check_interval
        self.remote_images = 0
        self.local_images = 0

    @property
    def model(self) -> ModelInfo:
        return self.hub.model

    async def _classify_locally(self, frames: Sequence[Image.Image]) -> Classification:
        result = await self.local.classify_frames(frames)
        self.local_images += 1
        return result

    async def classify_frames(self, frames: Sequence[Image.Image]) -> Classification:
        hub = self.hub
        if not hub.remote_active():
            if self.local is not None:
                return await self._classify_locally(frames)
            raise WorkersUnavailable(f"no worker seen for {hub.settings.stale_after_s:g} s and no local classifier")
        loop = asyncio.get_running_loop()
        if hub.geometry is not None and hub.queue.outstanding < hub.queue.max_jobs:
            # Shrink the frames to the model input now, off the event loop: a queued image then holds
            # ~150 KB per frame instead of its decoded size, and leases only encode. Exact: reduce_frame
            # leaves a frame already at the model's input size unchanged, and so do the model's transforms.
            geometry = hub.geometry
            frames = await loop.run_in_executor(None, lambda: [reduce_frame(f, geometry) for f in frames])
        try:
            job = hub.queue.submit(frames)
        except QueueFull:
            if self.local is None:
                raise
            return await self._classify_locally(frames)
        submitted = loop.time()
        while True:
            # asyncio.wait never cancels the job's future: a caller that gives up leaves the job queued,
            # and the pipeline's inference task (which outlives the caller) still gets its result.
            await asyncio.wait({job.future}, timeout=self.check_interval)
            if job.future.done():
                result = job.future.result()
                self.remote_images += 1
                return result
            if job.lease is not None:
                continue  # a worker has it; its lease decides
            if self.local is not None:
                if (loop.time() - submitted >= self.local_after_s or not hub.remote_active()) \
                        and hub.queue.withdraw(job):
                    return await self._classify_locally(frames)
            elif not hub.remote_active() and hub.queue.withdraw(job):
                raise WorkersUnavailable(
                    f"no worker seen for {hub.settings.stale_after_s:g} s and no local classifier")

    async def close(self) -> None:
        self.hub.close()
        if self.local is not None:
            await self.local.close()


def expected_model(spec: str) -> ModelInfo:
    """The ModelInfo a worker running ``spec`` reports, found without loading weights (a GPU-less node may
    not have them): the same resolution the worker's load_classifier does, and for a hub tag whose weights
    are not on this machine, (name, tag) as the CLIP backend names it."""
    from scanners.classifier import OPEN_NSFW_SPEC, ModelUnavailable, load_classifier

    if spec == OPEN_NSFW_SPEC:
        return load_classifier(spec).model
    from scanners import rules
    from scanners.clip import LOCAL_DIR_PREFIX, resolve_source

    try:
        source = resolve_source(spec)
    except ModelUnavailable:
        name, _, tag = spec.partition("/")
        if spec.startswith(LOCAL_DIR_PREFIX) or not name or not tag or tag.startswith("/"):
            raise
        return rules.clip_model_info(name, tag)
    return rules.clip_model_info(source.name, source.version)


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


def submit_token_path(config: Any) -> Any:
    return config.path(config.keys_dir) / "workers-submit.token"


def ensure_submit_token(path: Any) -> str:
    """The secret of POST /workers/v1/submit, in the data directory's keys folder (0600): whoever can read
    the node's keys may queue work on it."""
    import os

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        os.replace(tmp, path)
    return path.read_text().strip()


class SubmitBackend:
    """The inference backend of a command that runs beside `serve` (e.g. `verdict-node scan`): it cannot
    reach the workers itself (they connect to the serving process), so it queues each image on the serving
    node, which hands it to its workers (or its local model) and returns the scores. The command still
    signs and stores the verdict itself, with the same keys and database. ``fallback`` (this process's own
    classifier, same model) is used when the node is unreachable or refuses."""

    def __init__(self, base_url: str, token: str, model: ModelInfo, geometry: Geometry | None,
                 fallback: Any = None, timeout_s: float = 600.0) -> None:
        self.url = f"{base_url.rstrip('/')}{API_PREFIX}/submit"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": LEASE_MEDIA_TYPE}
        self.model = model
        self.geometry = geometry
        self.fallback = fallback
        self.timeout_s = timeout_s
        self._session: Any = None

    def _body(self, frames: Sequence[Image.Image]) -> bytes:
        # Shrunk to the model input when the node knows it (raw RGB then: loopback, tiny); otherwise whole
        # frames as PNG so a large photo stays within the request size limit.
        encoding = "rgb" if self.geometry else "png"
        encoded = [encode_frame(reduce_frame(frame, self.geometry), encoding) for frame in frames]
        return pack_lease("submit", 0.0, [("submit", encoded)])

    async def classify_frames(self, frames: Sequence[Image.Image]) -> Classification:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        body = await asyncio.get_running_loop().run_in_executor(None, self._body, frames)
        try:
            async with self._session.post(self.url, data=body, headers=self.headers) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            if self.fallback is not None:
                return await self.fallback.classify_frames(frames)
            raise QueueFull(f"the serving node at {self.url} is unreachable: {exc}") from None
        if status == 200:
            if self.geometry is None and isinstance(answer.get("geometry"), dict):
                try:
                    self.geometry = Geometry.from_json(answer["geometry"])  # a worker has connected since
                except ProtocolError:
                    pass
            return Classification(scores=parse_scores(answer.get("scores")), matched=list(answer.get("matched", [])))
        if self.fallback is not None:
            return await self.fallback.classify_frames(frames)
        message = answer.get("error") if isinstance(answer, dict) else None
        raise QueueFull(f"the serving node refused: {message or status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.fallback is not None:
            await self.fallback.close()


def install_submitter(node: Any) -> None:
    """Extension for commands that run beside `serve` on the same data directory (`verdict-node scan`):
    with ``workers.enabled`` and the serving node up, inference goes through its queue, so sweeps share the
    workers with the pict-rs endpoint. If the node is not running, the command keeps its own classifier."""
    import urllib.error
    import urllib.request

    settings = getattr(node.config, "workers", None)
    if settings is None or not settings.enabled:
        return
    path = submit_token_path(node.config)
    if not path.exists():
        log.warning("workers.enabled, but %s does not exist yet (start `verdict-node serve` once); "
                    "classifying in this process", path)
        return
    token = path.read_text().strip()
    host = node.config.listen.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base = f"http://{'[' + host + ']' if ':' in host else host}:{node.config.listen.port}"
    request = urllib.request.Request(f"{base}{API_PREFIX}/submit", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            info = json.loads(response.read())
        model = model_from_json(info.get("model"))
        geometry = Geometry.from_json(info.get("geometry"))
    except (OSError, ValueError, ProtocolError) as exc:
        log.warning("workers.enabled, but the serving node at %s does not answer (%s); classifying in this "
                    "process", base, exc)
        return
    local = node.backend
    if local is not None and not same_model(local.model, model):
        local = None
    node.set_backend(SubmitBackend(base, token, model, geometry, fallback=local, timeout_s=settings.job_ttl_s))
    log.info("inference goes through the serving node's worker queue at %s", base)


# --------------------------------------------------------------------------------------------------
# `verdict-node workers add|list|remove`
# --------------------------------------------------------------------------------------------------

def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, time.time() - seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def cmd_workers(args: Any) -> int:
    import sys

    from node.config import ConfigError, resolve_config

    try:
        config = resolve_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
