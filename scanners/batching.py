"""Let concurrent requests share one forward pass, with a bounded queue.

A CLIP forward pass costs about the same for 1 frame as for 8 on a GPU, and much less per frame in a
batch on a CPU, so frames that arrive within ``max_wait_ms`` of each other are classified together.
The queue is bounded (``max_queue`` frames waiting): when it is full the caller hears ``QueueFull``
at once and applies its own fail mode (``on_unavailable``), instead of the unbounded backlog that lets
pictrs-safety's queue flood open. Only one batch runs at a time, in one worker thread, so the event
loop stays free and the model is never entered from two threads.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from scanners.classifier import Classification, Classifier, merge_frames


class QueueFull(Exception):
    """Too many frames are already waiting for the classifier; retry later or apply on_unavailable.
    ``summary`` heads the reason the caller records (a subclass that means something else says so);
    ``passes`` says whether asking again in a moment may succeed (a full queue drains; no classifier does not)."""

    summary = "classifier queue full"
    passes = True


class BatcherClosed(Exception):
    """The batcher was closed before this request was classified."""


@dataclass(eq=False)
class _Item:
    frame: Image.Image
    future: asyncio.Future
    enqueued: float


class BatchingClassifier:
    """Async front of a synchronous Classifier. ``classify_frames`` takes the frames of one image and
    returns their merged Classification; calls that overlap in time share forward passes."""

    def __init__(self, classifier: Classifier, max_batch: int = 32, max_wait_ms: float = 20,
                 max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.classifier = classifier
        self.max_batch = max(1, min(max_batch, getattr(classifier, "max_batch", max_batch)))
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.forward_passes = 0
        self.frames_classified = 0
        self._pending: list[_Item] = []
        self._changed: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifier")
        self._closed = False

    @property
    def model(self):
        return self.classifier.model

    @property
    def queued(self) -> int:
        """Frames waiting for a forward pass (not counting the batch that is running)."""
        return len(self._pending)

    def unavailable(self) -> str | None:
        """Why every image would be refused now, or None (a full queue is momentary, so it is not a reason)."""
        return "classifier batcher is closed" if self._closed else None

    async def classify_frames(self, frames: Sequence[Image.Image]) -> Classification:
        """Classify the frames of one image together; raises QueueFull without waiting when the queue
        cannot take them, BatcherClosed after close(), or whatever the model raised for this batch."""
        if self._closed:
            raise BatcherClosed("classifier batcher is closed")
        if not frames:
            raise ValueError("classify_frames needs at least one frame")
        if any(frame.width < 1 or frame.height < 1 for frame in frames):
            # Refused here, so one empty frame cannot fail the batch of other callers.
            raise ValueError("classify_frames got a frame without pixels")
        # An empty queue always accepts one image, so an animation with more frames than max_queue
        # is slow rather than impossible.
        if self._pending and len(self._pending) + len(frames) > self.max_queue:
            raise QueueFull(f"{len(self._pending)} frames already waiting (max_queue={self.max_queue})")
        loop = asyncio.get_running_loop()
        self._ensure_worker()
        now = time.monotonic()
        items = [_Item(frame, loop.create_future(), now) for frame in frames]
        self._pending.extend(items)
        assert self._changed is not None
        self._changed.set()
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            # Cancelled or failed: frames still waiting are dropped so they cost no forward pass.
            for item in items:
                item.future.cancel()
            raise
        return merge_frames(results)

    async def close(self) -> None:
        """Stop taking work, fail waiting requests with BatcherClosed, let a running batch finish."""
        self._closed = True
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(BatcherClosed("classifier batcher closed"))
        self._pending.clear()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None
        self._executor.shutdown(wait=False)

    def _ensure_worker(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="classifier-batcher")

    def _drop_abandoned(self) -> None:
        self._pending = [item for item in self._pending if not item.future.done()]

    async def _run(self) -> None:
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._changed.clear()
                await self._changed.wait()
                continue
            # Wait for company until the oldest frame has waited max_wait or a batch is full.
            deadline = self._pending[0].enqueued + self.max_wait
            while len(self._pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                self._drop_abandoned()
            self._drop_abandoned()
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            if not batch:
                continue
            frames = [item.frame for item in batch]
            self.forward_passes += 1
            try:
                results = await loop.run_in_executor(self._executor, self.classifier.classify, frames)
                if len(results) != len(frames):
                    raise RuntimeError(
                        f"classifier returned {len(results)} results for {len(frames)} frames")
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(BatcherClosed("classifier batcher closed"))
                raise
            except Exception as exc:  # the model's error belongs to this batch's callers only
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.frames_classified += len(frames)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
