"""Remote GPU workers, the job queue: jobs waiting for scores, leased to workers (pure asyncio; no I/O).

Why leases: in the tools this replaces (fedi-safety's worker and pictrs-safety), a job popped by a worker that
then died stayed PROCESSING forever. Here jobs are *leased* for `lease_timeout_s`; every request of the worker
(its long poll is the heartbeat) extends its leases, and a lease that runs out puts its jobs back at the head
of the queue for another worker. A result for a lease that has expired or that belongs to someone else is
refused (LeaseGone) and not applied, so an image never gets two verdicts. The queue has a bound (`max_queue`
jobs), and what it refuses raises QueueFull, which the pipeline answers per `on_unavailable`, instead of a
queue that floods open.

A job whose requester gave up (the pict-rs budget ran out) stays queued: its future is shielded from the
caller's cancellation, so when a worker returns it the pipeline's task still signs and stores the verdict
(until `job_ttl_s`, after which it is dropped and counted).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from PIL import Image

from node.workers.wire import Geometry, JobResult
from protocol.errors import ProtocolError
from scanners.batching import QueueFull
from scanners.classifier import Classification

log = logging.getLogger("verdict_node.workers")


class JobDropped(Exception):
    """A job could not be classified: it outlived `job_ttl_s`, was leased `max_attempts` times without a
    result, or the node is shutting down."""


class LeaseGone(Exception):
    """A result for a lease that has expired, was never granted, or belongs to another worker (HTTP 409)."""


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
