"""The HTTP routes under /workers/v1 that remote workers long-poll for leases and post results to, and the
submit route through which commands beside `serve` on the same data directory (`verdict-node scan`) queue
work here.

The worker never sees originals: the node sends the frames it has already decoded, after the classifier's
own resize and centre crop (workers.wire), and signs the verdicts itself: private keys never leave the
node. A result for a lease that is gone gets 409, so each image gets exactly one verdict.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

from aiohttp import web

from node.web import Refusal, json_response
from node.workers.hub import WorkerHub
from node.workers.queue import JobDropped, Lease, LeaseGone
from node.workers.wire import (API_PREFIX, ENCODINGS, LEASE_MEDIA_TYPE, Geometry, describe_model, encode_frame,
                               model_from_json, model_to_json, pack_lease, parse_results, reduce_frame, same_model,
                               unpack_lease)
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo
from scanners.batching import QueueFull

log = logging.getLogger("verdict_node.workers")

_BEARER_REFUSED = {"WWW-Authenticate": "Bearer"}


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


class WorkerApi:
    def __init__(self, hub: WorkerHub) -> None:
        self.hub = hub

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{API_PREFIX}/hello", self.handle_hello)
        app.router.add_post(f"{API_PREFIX}/lease", self.handle_lease)
        app.router.add_post(f"{API_PREFIX}/leases/{{lease_id}}", self.handle_results)
        app.router.add_get(f"{API_PREFIX}/submit", self.handle_submit_info)
        app.router.add_post(f"{API_PREFIX}/submit", self.handle_submit)

        async def on_shutdown(app: web.Application) -> None:
            # Before the node drains its inferences: fail what waits for workers (their HTTP requests can no
            # longer arrive) and end the long polls, instead of waiting out leases at every restart.
            self.hub.close()

        app.on_shutdown.append(on_shutdown)

    def _authenticate(self, request: web.Request) -> tuple[str, str]:
        token = _bearer(request)
        name = self.hub.registry.authenticate(token or None)
        if name is None:
            raise Refusal(401, "unknown or revoked worker token", headers=_BEARER_REFUSED)
        return name, token

    @staticmethod
    async def _json_body(request: web.Request, limit: int) -> Any:
        if request.content_length is not None and request.content_length > limit:
            raise Refusal(413, f"body larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
            raise Refusal(400, f"body is not JSON: {exc}") from None

    def _refuse_model(self, name: str, model: ModelInfo) -> Refusal:
        hub = self.hub
        message = (f"model mismatch: this node requires {describe_model(hub.model)}, but worker {name} runs "
                   f"{describe_model(model)}; start the worker with --model {hub.spec or hub.model.name}")
        try:
            hub.registry.update(name, last_refusal=message, model=json.dumps(model_to_json(model)))
        except Exception:  # noqa: BLE001 - the answer matters more than the note
            pass
        log.warning("%s", message)
        return Refusal(409, message, fields={"node_model": model_to_json(hub.model),
                                             "worker_model": model_to_json(model)})

    async def handle_hello(self, request: web.Request) -> web.Response:
        name, _ = self._authenticate(request)
        hub = self.hub
        # Recorded for `workers list`, but not yet "connected": only a lease request, which carries the
        # worker's model and passes the model check, makes the node wait for this worker.
        hub.registry.update(name, last_seen_at=time.time())
        return json_response({"worker": name, "model": model_to_json(hub.model), "spec": hub.spec,
                              "lease_timeout_s": hub.settings.lease_timeout_s, "poll_wait_s": hub.poll_wait,
                              "encodings": list(ENCODINGS)})

    @staticmethod
    def _lease_request(body: Any, poll_wait: float) -> tuple[ModelInfo, Geometry | None, str, int, float]:
        """(model, geometry, encoding, max_frames, wait_s) of a lease request; ProtocolError when malformed."""
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
        wait_s = body.get("wait_s", poll_wait)
        if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or wait_s < 0:
            raise ProtocolError("must be a number >= 0", "wait_s")
        return model, geometry, encoding, max_frames, float(wait_s)

    async def handle_lease(self, request: web.Request) -> web.Response:
        """Long poll: {"model", "geometry", "encoding", "max_frames", "wait_s"} -> 200 lease body or 204.
        ``max_frames: 0`` is a pure heartbeat (the worker is busy but alive)."""
        hub = self.hub
        name, token = self._authenticate(request)
        body = await self._json_body(request, 64 * 1024)
        try:
            model, geometry, encoding, max_frames, wait_s = self._lease_request(body, hub.poll_wait)
        except ProtocolError as exc:
            raise Refusal(400, str(exc)) from None
        if not same_model(model, hub.model):
            raise self._refuse_model(name, model)
        if hub.geometry is not None and geometry != hub.geometry:
            # Queued frames are already shrunk to the first geometry; another one would not give the scores
            # local inference gives. Workers of one model agree, so this is a broken or foreign client.
            message = (f"frame geometry mismatch: this node ships {hub.geometry.to_json()}, worker {name} asks for "
                       f"{geometry.to_json() if geometry else 'full frames'} with the same model")
            hub.registry.update(name, last_refusal=message)
            raise Refusal(409, message)
        hub.touch(name, model)
        hub.geometry = geometry
        if max_frames == 0:
            return web.Response(status=204)
        # Granting is re-checked at the last moment: a worker revoked during its long poll gets nothing, nor
        # does one whose connection is gone (a killed process: the kernel closed its socket), so its jobs do
        # not sit in a lease nobody will return until the lease times out.
        lease = await hub.queue.take(name, max_frames, min(wait_s, hub.poll_wait),
                                     still_allowed=lambda: _connected(request)
                                     and hub.registry.authenticate(token) == name)
        hub.touch(name)
        if lease is None:
            return web.Response(status=204)
        try:
            payload = await asyncio.to_thread(self._encode_lease, lease, geometry, encoding)
        except Exception:
            log.exception("encoding lease %s failed; its jobs go back to the queue", lease.id[:12])
            hub.queue.release_lease(lease.id)
            raise
        hub.persist_leases()
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
        expires_in = max(0.0, lease.deadline - self.hub.clock())
        return pack_lease(lease.id, round(expires_in, 3), jobs)

    async def handle_results(self, request: web.Request) -> web.Response:
        """{"results": [{"job", "scores", "matched"} | {"job", "error"}]} -> 200, 401 revoked, 409 lease gone."""
        hub = self.hub
        name, _ = self._authenticate(request)
        presence = hub.touch(name)
        body = await self._json_body(request, 4 * 1024 * 1024)
        lease_id = request.match_info["lease_id"]
        try:
            results = parse_results(body)
            done, requeued = hub.queue.complete(name, lease_id, results)
        except ProtocolError as exc:
            raise Refusal(400, str(exc)) from None
        except LeaseGone as exc:
            raise Refusal(409, str(exc)) from None
        frames = sum(len(job.frames) for job in done)
        now = hub.clock()
        presence.done.append((now, frames))
        hub.registry.add_done(name, len(done), frames)
        hub.registry.update(name, frames_per_s=round(presence.frames_per_s(now), 3))
        hub.persist_leases()
        return json_response({"accepted": len(done), "requeued": requeued})

    # -- submit: other processes of this node (sweeps) queue work here ---------------------------

    def _authenticate_submitter(self, request: web.Request) -> None:
        secret = self.hub.submit_token
        if not secret or not hmac.compare_digest(_bearer(request).encode(), secret.encode()):
            raise Refusal(401, "submit token refused", headers=_BEARER_REFUSED)

    async def handle_submit_info(self, request: web.Request) -> web.Response:
        self._authenticate_submitter(request)
        hub = self.hub
        return json_response({"model": model_to_json(hub.model),
                              "geometry": hub.geometry.to_json() if hub.geometry else None})

    async def handle_submit(self, request: web.Request) -> web.Response:
        """One image's frames (a lease-format body with one job) -> its merged scores, through the same
        backend as the pict-rs endpoint (workers first, the local model if any). 503 when it refuses."""
        self._authenticate_submitter(request)
        hub = self.hub
        body = await request.read()
        try:
            message = await asyncio.to_thread(unpack_lease, body)
            if len(message.jobs) != 1:
                raise ProtocolError("submit one job", "jobs")
        except ProtocolError as exc:
            raise Refusal(400, str(exc)) from None
        assert hub.backend is not None
        try:
            result = await hub.backend.classify_frames(message.jobs[0].frames)
        except (QueueFull, JobDropped) as exc:
            raise Refusal(503, str(exc), fields={"unavailable": True}) from None
        return json_response({"scores": result.scores, "matched": list(result.matched),
                              "geometry": hub.geometry.to_json() if hub.geometry else None})
