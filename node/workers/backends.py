"""Remote GPU workers, the inference backends: what node.pipeline calls instead of the local classifier.

WorkerBackend (in `serve`) sends each image to the workers through the hub's queue, with the local classifier,
if any, as the fallback and the overflow; with no worker and no local classifier the caller hears so at once
(WorkersUnavailable, a QueueFull the pipeline answers per `on_unavailable`) instead of waiting out pict-rs's
budget. Workers connect to the serving process, so commands that run beside it on the same data directory
(`verdict-node scan`) reach them through `/workers/v1/submit` (SubmitBackend, workers.install_submitter): sweeps and
the pict-rs endpoint share one queue and one set of workers.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

import aiohttp
from PIL import Image

from node.workers.hub import WorkerHub
from node.workers.wire import (API_PREFIX, LEASE_MEDIA_TYPE, Geometry, encode_frame, pack_lease, parse_scores,
                               reduce_frame)
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo
from scanners import rules
from scanners.batching import QueueFull
from scanners.classifier import OPEN_NSFW_SPEC, Classification, ModelUnavailable
from scanners.models import load_classifier
from scanners.clip import LOCAL_DIR_PREFIX, resolve_source

log = logging.getLogger("verdict_node.workers")


class WorkersUnavailable(QueueFull):
    """No worker has been heard from for `stale_after_s` and there is no local classifier: nothing can classify
    this image within the budget. A QueueFull, so the pipeline answers it per `on_unavailable`."""

    summary = "classifier unavailable"
    passes = False


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

    def unavailable(self) -> str | None:
        """Why nothing can classify an image now (no local classifier and no worker heard from), or None."""
        if self.local is not None or self.hub.remote_active():
            return None
        return f"no worker seen for {self.hub.settings.stale_after_s:g} s and no local classifier"

    async def _classify_locally(self, frames: Sequence[Image.Image]) -> Classification:
        result = await self.local.classify_frames(frames)
        self.local_images += 1
        return result

    async def classify_frames(self, frames: Sequence[Image.Image]) -> Classification:
        hub = self.hub
        if not hub.remote_active():
            if self.local is not None:
                return await self._classify_locally(frames)
            raise WorkersUnavailable(self.unavailable())
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
                raise WorkersUnavailable(self.unavailable())

    async def close(self) -> None:
        self.hub.close()
        if self.local is not None:
            await self.local.close()


def expected_model(spec: str) -> ModelInfo:
    """The ModelInfo a worker running ``spec`` reports, found without loading weights (a GPU-less node may
    not have them): the same resolution the worker's load_classifier does, and for a hub tag whose weights
    are not on this machine, (name, tag) as the CLIP backend names it."""
    if spec == OPEN_NSFW_SPEC:
        return load_classifier(spec).model
    try:
        source = resolve_source(spec)
    except ModelUnavailable:
        name, _, tag = spec.partition("/")
        if spec.startswith(LOCAL_DIR_PREFIX) or not name or not tag or tag.startswith("/"):
            raise
        return rules.clip_model_info(name, tag)
    return rules.clip_model_info(source.name, source.version)


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
        self._session: aiohttp.ClientSession | None = None

    def _body(self, frames: Sequence[Image.Image]) -> bytes:
        # Shrunk to the model input when the node knows it (raw RGB then: loopback, tiny); otherwise whole
        # frames as PNG so a large photo stays within the request size limit.
        encoding = "rgb" if self.geometry else "png"
        encoded = [encode_frame(reduce_frame(frame, self.geometry), encoding) for frame in frames]
        return pack_lease("submit", 0.0, [("submit", encoded)])

    def unavailable(self) -> None:
        """Never known in advance: the serving node (or the fallback) answers per image."""
        return None

    async def classify_frames(self, frames: Sequence[Image.Image]) -> Classification:
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
