"""`verdict-node worker`: classify for a node from a machine that has a GPU (a desktop, a rented card).

The worker connects out (no inbound port, so it runs behind NAT or a home router), long-polls the node for a
lease of frames, classifies them with its own copy of the model and posts the scores back. It never sees the
original files nor any key: the node decodes, samples and shrinks the frames, and signs the verdicts itself.

Two tasks share one HTTP session: the poller keeps up to ``prefetch`` leases ready while the model works on
the current one (so the GPU does not wait for the network), and its requests are the worker's heartbeat;
the processor classifies one lease at a time in a thread and posts the results. A refused token (401) or a
refused model (409) stops the worker with the node's message; network errors are retried with backoff, since
a node restarts and a home connection drops.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp

from node.workers.wire import (API_PREFIX, ENCODINGS, Geometry, JobResult, LeaseMessage, describe_model,
                               model_from_json, model_to_json, unpack_lease)
from scanners.backoff import Backoff
from scanners.classifier import merge_frames

log = logging.getLogger("verdict_node.worker")

EXIT_OK, EXIT_ERROR, EXIT_TOKEN_REFUSED, EXIT_MODEL_REFUSED = 0, 1, 2, 3
TOKEN_ENV = "VERDICT_NODE_WORKER_TOKEN"


class Refused(Exception):
    """The node refused this worker for good (bad token, wrong model): retrying cannot help."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def geometry_of(classifier: Any) -> Geometry | None:
    """The classifier's resize + centre crop, read from its open_clip transforms, so the node can ship frames
    already at that size. None (full frames) when the preprocessing is anything else."""
    transforms = getattr(getattr(classifier, "preprocess", None), "transforms", None)
    if not transforms or len(transforms) < 2:
        return None
    resize, crop = transforms[0], transforms[1]
    if type(resize).__name__ != "Resize" or type(crop).__name__ != "CenterCrop":
        return None
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    interpolation = getattr(getattr(resize, "interpolation", None), "value", None)
    if size is None or getattr(resize, "max_size", None) is not None or tuple(crop.size) != (size, size) \
            or interpolation not in ("bicubic", "bilinear"):
        return None
    return Geometry(int(size), interpolation)


def classify_lease(classifier: Any, lease: LeaseMessage) -> list[JobResult]:
    """All frames of a lease through the model in chunks of ``max_batch``, merged per job (max per category).
    A failure is reported per lease so the node requeues the jobs for another worker."""
    frames = [frame for job in lease.jobs for frame in job.frames]
    try:
        outputs = []
        step = max(1, int(getattr(classifier, "max_batch", 32)))
        for start in range(0, len(frames), step):
            chunk = frames[start:start + step]
            got = classifier.classify(chunk)
            if len(got) != len(chunk):
                raise RuntimeError(f"classifier returned {len(got)} results for {len(chunk)} frames")
            outputs.extend(got)
    except Exception as exc:  # noqa: BLE001 - the node must hear about it, not wait for the lease to expire
        log.exception("classification failed for lease %s", lease.lease_id[:12])
        return [JobResult(job.job_id, error=f"{type(exc).__name__}: {exc}") for job in lease.jobs]
    results, at = [], 0
    for job in lease.jobs:
        merged = merge_frames(outputs[at:at + len(job.frames)])
        at += len(job.frames)
        results.append(JobResult(job.job_id, {k: float(v) for k, v in merged.scores.items()}, tuple(merged.matched)))
    return results


@dataclass
class WorkerStats:
    leases: int = 0
    jobs: int = 0
    frames: int = 0
    refused_results: int = 0
    busy_s: float = 0.0
    started: float = 0.0


class Worker:
    def __init__(self, node_url: str, token: str, classifier: Any, *, encoding: str = "png",
                 batch_size: int = 32, prefetch: int = 1, stats_interval: float = 30.0) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}")
        self.base = node_url.rstrip("/") + API_PREFIX
        self.headers = {"Authorization": f"Bearer {token}"}
        self.classifier = classifier
        self.model = classifier.model
        self.geometry = geometry_of(classifier)
        self.encoding = encoding
        self.batch_size = batch_size
        self.prefetch = max(0, prefetch)
        self.stats_interval = stats_interval
        self.stats = WorkerStats()
        self.poll_wait = 10.0
        self.heartbeat_every = 5.0
        self.stop = asyncio.Event()
        self._failure: Refused | None = None

    # -- HTTP ------------------------------------------------------------------------------------

    async def _refusal(self, response: aiohttp.ClientResponse) -> Refused | None:
        if response.status == 401:
            return Refused("the node refused this worker's token (unknown or revoked): "
                           "ask its admin for a new one (verdict-node workers add NAME)", EXIT_TOKEN_REFUSED)
        if response.status == 409 and response.url.path.endswith("/lease"):
            try:
                message = (await response.json()).get("error")
            except (ValueError, aiohttp.ContentTypeError):
                message = await response.text()
            return Refused(f"the node refused this worker's model: {message}", EXIT_MODEL_REFUSED)
        return None

    async def hello(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.base}/hello", headers=self.headers) as response:
            refusal = await self._refusal(response)
            if refusal:
                raise refusal
            response.raise_for_status()
            info = await response.json()
        self.poll_wait = float(info.get("poll_wait_s", self.poll_wait))
        self.heartbeat_every = max(0.2, float(info.get("lease_timeout_s", 30)) / 3)
        return info

    async def _lease(self, session: aiohttp.ClientSession, max_frames: int) -> LeaseMessage | None:
        request = {"model": model_to_json(self.model), "geometry": self.geometry.to_json() if self.geometry else None,
                   "encoding": self.encoding, "max_frames": max_frames, "wait_s": self.poll_wait}
        # A long poll that outlives its wait by far means the node or the path to it is gone silently.
        timeout = aiohttp.ClientTimeout(total=self.poll_wait + 30)
        async with session.post(f"{self.base}/lease", json=request, headers=self.headers,
                                timeout=timeout) as response:
            refusal = await self._refusal(response)
            if refusal:
                raise refusal
            if response.status == 204:
                return None
            response.raise_for_status()
            body = await response.read()
        return await asyncio.to_thread(unpack_lease, body)

    async def _post_results(self, session: aiohttp.ClientSession, lease: LeaseMessage,
                            results: Sequence[JobResult]) -> None:
        body = {"results": [r.to_json() for r in results]}
        deadline = time.monotonic() + max(5.0, lease.expires_in + 30)
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                async with session.post(f"{self.base}/leases/{lease.lease_id}", json=body, headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=60)) as response:
                    refusal = await self._refusal(response)
                    if refusal:
                        raise refusal
                    if response.status == 409:
                        self.stats.refused_results += 1
                        log.warning("node refused results of lease %s: %s", lease.lease_id[:12],
                                    (await response.text())[:300])
                        return
                    response.raise_for_status()
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if time.monotonic() > deadline or self.stop.is_set():
                    log.warning("giving up posting lease %s: %s (the node requeues it)", lease.lease_id[:12], exc)
                    return
                delay = backoff.next()
                log.warning("posting results failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # -- tasks -----------------------------------------------------------------------------------

    async def _poller(self, session: aiohttp.ClientSession, ready: asyncio.Queue, slots: asyncio.Semaphore) -> None:
        backoff = Backoff(0.5, 30.0)
        while not self.stop.is_set():
            try:
                try:
                    await asyncio.wait_for(slots.acquire(), self.heartbeat_every)
                except asyncio.TimeoutError:
                    await self._lease(session, 0)  # busy: just say we are alive, so our leases stay ours
                    continue
                try:
                    lease = await self._lease(session, self.batch_size)
                except BaseException:
                    slots.release()
                    raise
                if lease is None or not lease.jobs:
                    slots.release()
                    continue
                await ready.put(lease)
                backoff.reset()
            except Refused as refusal:
                self._failure = refusal
                self.stop.set()
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                delay = backoff.next()
                log.warning("node unreachable (%s); retrying in %.1f s", exc, delay)
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass

    async def _processor(self, session: aiohttp.ClientSession, ready: asyncio.Queue, slots: asyncio.Semaphore) -> None:
        while True:
            lease = await ready.get()
            try:
                started = time.perf_counter()
                results = await asyncio.to_thread(classify_lease, self.classifier, lease)
                self.stats.busy_s += time.perf_counter() - started
                await self._post_results(session, lease, results)
                self.stats.leases += 1
                self.stats.jobs += len(lease.jobs)
                self.stats.frames += sum(len(job.frames) for job in lease.jobs)
            except Refused as refusal:
                self._failure = refusal
                self.stop.set()
                return
            except Exception:  # noqa: BLE001 - one bad lease must not stop the worker; the node requeues it
                log.exception("lease %s failed", lease.lease_id[:12])
            finally:
                slots.release()
                ready.task_done()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            s = self.stats
            elapsed = max(1e-9, time.monotonic() - s.started)
            log.info("%d images (%d frames) in %.0f s: %.2f frames/s, model busy %.0f%%", s.jobs, s.frames,
                     elapsed, s.frames / elapsed, 100 * s.busy_s / elapsed)

    def _task_ended(self, task: asyncio.Task) -> None:
        """A task that dies of a bug must stop the worker (exit 1), not leave it polling with nobody working."""
        if task.cancelled() or self.stop.is_set():
            return
        exc = task.exception()
        if exc is not None and self._failure is None:
            log.error("worker task %s failed: %r", task.get_name(), exc)
            self._failure = Refused(f"internal error in {task.get_name()}: {exc!r}", EXIT_ERROR)
        self.stop.set()

    async def run(self) -> int:
        """Work until ``stop`` is set or the node refuses us; returns the exit code."""
        self.stats.started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            backoff = Backoff(0.5, 30.0)
            while True:
                try:
                    info = await self.hello(session)
                    break
                except Refused as refusal:
                    log.error("%s", refusal)
                    return refusal.exit_code
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    delay = backoff.next()
                    log.warning("node unreachable (%s); retrying in %.1f s", exc, delay)
                    try:
                        await asyncio.wait_for(self.stop.wait(), delay)
                        return EXIT_OK
                    except asyncio.TimeoutError:
                        pass
            node_model = model_from_json(info["model"])
            log.info("connected to %s as %s; node model %s; this worker runs %s on %s frames (%s)",
                     self.base, info.get("worker"), describe_model(node_model), describe_model(self.model),
                     f"{self.geometry.size}px" if self.geometry else "full-size", self.encoding)
            ready: asyncio.Queue = asyncio.Queue()
            slots = asyncio.Semaphore(1 + self.prefetch)
            tasks = [asyncio.create_task(self._poller(session, ready, slots), name="poller"),
                     asyncio.create_task(self._processor(session, ready, slots), name="processor"),
                     asyncio.create_task(self._report(), name="report")]
            for task in tasks:
                task.add_done_callback(self._task_ended)
            await self.stop.wait()
            tasks[0].cancel()
            # Finish what we already hold (its results are still welcome), unless the node refused us.
            if self._failure is None:
                try:
                    await asyncio.wait_for(ready.join(), self.poll_wait + 60)
                except asyncio.TimeoutError:
                    pass
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._failure is not None:
            log.error("%s", self._failure)
            return self._failure.exit_code
        return EXIT_OK
