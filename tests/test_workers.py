"""Remote GPU workers, in one process: the wire format (frames equal local inference bit for bit), the lease
queue's invariants, and the HTTP protocol against a real node on loopback (tokens, revocation, model check,
malformed input, late results, the local classifier as fallback).

The end-to-end tests with `verdict-node worker` subprocesses (SIGKILL mid-lease, revocation by the CLI)
are in tests/test_workers_processes.py.
"""
from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from node.workers.queue import JobDropped, LeaseGone, WorkQueue
from node.workers.wire import (API_PREFIX, ENCODINGS, Geometry, JobResult, decode_frame, encode_frame, model_to_json,
                            pack_lease, parse_results, reduce_frame, unpack_lease)
from node.workers.client import Worker, classify_lease, geometry_of
from node.workers.backends import WorkersUnavailable
from node.workers.hub import WorkerHub
from node.workers.registry import WorkerRegistry
from protocol.errors import ProtocolError
from scanners.batching import QueueFull
from tests.images import photo_bytes, photo_image
from tests.node_helpers import make_data_dir, pictrs_post, run, running_node, tiny_clip_spec, validate_url


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
def spec(workdir) -> str:
    return tiny_clip_spec(workdir)


@pytest.fixture(scope="module")
def classifier(spec):
    from scanners.models import load_classifier

    return load_classifier(spec, device="cpu", batch_size=32)


def make_other_model(workdir: Path, spec: str) -> str:
    """The tiny CLIP with one weight changed: another model (other weights hash) of the same architecture."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    source = Path(spec.removeprefix("local-dir:"))
    target = workdir / "other-clip"
    if not target.exists():
        shutil.copytree(source, target)
        state = load_file(str(target / "open_clip_model.safetensors"))
        key = next(k for k in sorted(state) if k.endswith("proj"))
        state[key] = state[key] + 1e-3 * torch.ones_like(state[key])
        save_file(state, str(target / "open_clip_model.safetensors"))
    return f"local-dir:{target}"


def frames_for_exactness() -> list[Image.Image]:
    """Shapes that exercise the rounding of resize and crop: portrait, landscape, odd sizes, smaller than the
    model input, exactly the input, a thin strip; and modes that must be converted (L, RGBA, P)."""
    photo = photo_image("astronaut")
    shapes = [(300, 200), (199, 401), (333, 333), (65, 64), (64, 64), (40, 31), (1000, 70)]
    frames = [photo.resize(shape) for shape in shapes]
    frames += [photo.convert("L").resize((123, 77)), photo.convert("RGBA").resize((90, 150)),
               photo.convert("P").resize((256, 100))]
    return frames


# --------------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------------

def test_geometry_is_read_from_the_models_own_transforms(classifier):
    geometry = geometry_of(classifier)
    assert geometry == Geometry(64, "bicubic")  # tiny CLIP: image_size 64, open_clip's bicubic shortest-side


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_shipped_frames_give_the_same_tensors_and_scores_as_local_inference(classifier, encoding):
    import torch

    geometry = geometry_of(classifier)
    frames = frames_for_exactness()
    shipped = []
    for frame in frames:
        meta, data = encode_frame(reduce_frame(frame, geometry), encoding)
        received = decode_frame(meta, data)
        assert received.size == (geometry.size, geometry.size)
        shipped.append(received)
        original = frame if frame.mode == "RGB" else frame.convert("RGB")
        assert torch.equal(classifier.preprocess(original), classifier.preprocess(received))
    local = classifier.classify([f if f.mode == "RGB" else f.convert("RGB") for f in frames])
    remote = classifier.classify(shipped)
    assert [c.scores for c in remote] == [c.scores for c in local]
    assert [c.matched for c in remote] == [c.matched for c in local]


def test_png_is_smaller_than_raw_on_a_photo():
    frame = reduce_frame(photo_image("chelsea"), Geometry(224))
    sizes = {enc: len(encode_frame(frame, enc)[1]) for enc in ENCODINGS}
    assert sizes["rgb"] == 224 * 224 * 3
    assert sizes["png"] < sizes["rgb"]


def test_lease_body_round_trip_keeps_jobs_frames_and_pixels():
    a = photo_image("coffee").resize((50, 40))
    b = photo_image("rocket").resize((30, 60))
    body = pack_lease("L1", 12.5, [("j1", [encode_frame(a, "png"), encode_frame(b, "rgb")]),
                                   ("j2", [encode_frame(b, "rgbz")])])
    message = unpack_lease(body)
    assert message.lease_id == "L1" and message.expires_in == 12.5
    assert [job.job_id for job in message.jobs] == ["j1", "j2"]
    assert [f.tobytes() for f in message.jobs[0].frames] == [a.tobytes(), b.tobytes()]
    assert message.jobs[1].frames[0].tobytes() == b.tobytes()


def _header(obj: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(obj).encode()
    return struct.pack(">I", len(raw)) + raw + payload


@pytest.mark.parametrize("body", [
    b"", b"\x00\x00", struct.pack(">I", 10_000) + b"{}",
    _header({"lease": "x"}),                                              # no jobs
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": []}]}),
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": 2, "h": 2, "enc": "rgb", "off": 0, "len": 12}]}]}, b"\x00" * 11),   # payload short
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": 2, "h": 2, "enc": "rgb", "off": 0, "len": 11}]}]}, b"\x00" * 11),   # wrong pixel count
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": 2, "h": 2, "enc": "png", "off": 0, "len": 5}]}]}, b"\x89PNG\r"),    # broken PNG
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": 2, "h": 2, "enc": "rgbz", "off": 0, "len": 8}]}]}, b"notzlib!"),
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": 2, "h": 2, "enc": "gif", "off": 0, "len": 0}]}]}),
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": -1, "h": 2, "enc": "rgb", "off": 0, "len": 0}]}]}),
    _header({"lease": "x", "expires_in": 1, "jobs": [{"job": "j", "frames": [
        {"w": 2, "h": 2, "off": 0, "len": 12}]}]}, b"\x00" * 12),             # no enc
    struct.pack(">I", 100_000) + b"[" * 100_000,                          # nested past the parser's stack
])
def test_malformed_lease_bodies_raise_protocol_error(body):
    with pytest.raises(ProtocolError):
        unpack_lease(body)


def test_png_with_a_lying_size_is_refused():
    meta, data = encode_frame(photo_image("coffee").resize((20, 10)), "png")
    with pytest.raises(ProtocolError):
        decode_frame({**meta, "w": 21}, data)


@pytest.mark.parametrize("body", [
    None, [], {"results": "x"}, {"results": [1]}, {"results": [{"job": 1, "scores": {}}]},
    {"results": [{"job": "a", "scores": {"csam": 1.5}}]},
    {"results": [{"job": "a", "scores": {"csam": float("nan")}}]},
    {"results": [{"job": "a", "scores": {"csam": True}}]},
    {"results": [{"job": "a", "scores": {"violence": 0.1}}]},
    {"results": [{"job": "a", "scores": {"csam": 0.1}, "matched": "x"}]},
    {"results": [{"job": "a", "scores": {"csam": 0.1}}, {"job": "a", "scores": {"csam": 0.2}}]},
])
def test_malformed_results_raise_protocol_error(body):
    with pytest.raises(ProtocolError):
        parse_results(body)


# --------------------------------------------------------------------------------------------------
# The queue (pure asyncio, a hand-driven clock)
# --------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


FRAME = Image.new("RGB", (8, 8), (10, 20, 30))
OK = {"csam": 0.1, "nsfw": 0.2, "underage": 0.1}


def test_expired_lease_goes_back_to_the_head_and_its_late_result_is_refused():
    async def go():
        clock = Clock()
        q = WorkQueue(max_jobs=10, lease_timeout=5, job_ttl=100, clock=clock)
        first, second = q.submit([FRAME]), q.submit([FRAME, FRAME])
        lease_a = await q.take("a", max_frames=1, wait_s=0)
        assert list(lease_a.jobs) == [first.id]          # frame budget respected, FIFO
        clock.now += 4
        q.heartbeat("a")                                   # alive: lease extended
        clock.now += 4
        assert q.expire() == 0 and lease_a.id in q.leases
        clock.now += 6                                     # silent past the timeout
        assert q.expire() == 1
        assert [j.id for j in q.pending] == [first.id, second.id]   # requeued at the head
        lease_b = await q.take("b", max_frames=32, wait_s=0)
        assert set(lease_b.jobs) == {first.id, second.id}
        with pytest.raises(LeaseGone):
            q.complete("a", lease_a.id, [JobResult(first.id, OK)])
        assert not first.future.done()                     # nothing applied
        with pytest.raises(LeaseGone):
            q.complete("a", lease_b.id, [JobResult(first.id, OK)])   # someone else's lease
        with pytest.raises(ProtocolError):
            q.complete("b", lease_b.id, [JobResult("j-not-leased", OK)])
        assert lease_b.id in q.leases and not first.future.done()  # a malformed post changes nothing
        done, requeued = q.complete("b", lease_b.id, [JobResult(first.id, OK),
                                                      JobResult(second.id, error="CUDA out of memory")])
        assert [j.id for j in done] == [first.id] and requeued == 1
        assert first.future.result().scores == OK
        assert [j.id for j in q.pending] == [second.id]
        with pytest.raises(LeaseGone):                     # a second post of the same lease
            q.complete("b", lease_b.id, [JobResult(first.id, OK)])

    run(go())


def test_queue_bound_ttl_and_attempts_drop_jobs_loudly_never_silently():
    async def go():
        clock = Clock()
        q = WorkQueue(max_jobs=2, lease_timeout=1, job_ttl=50, max_grants=2, clock=clock)
        a, b = q.submit([FRAME]), q.submit([FRAME])
        with pytest.raises(QueueFull):
            q.submit([FRAME])
        for _ in range(2):                                 # leased twice, silent twice
            await q.take("w", 1, 0)
            clock.now += 2
            q.expire()
        assert a.future.done() and isinstance(a.future.exception(), JobDropped)
        assert q.dropped == 1 and q.pending[0] is b
        clock.now += 60
        q.expire()                                         # b outlived its TTL while pending
        assert isinstance(b.future.exception(), JobDropped) and q.dropped == 2
        assert q.outstanding == 0
        q.submit([FRAME])                                  # room again

    run(go())


def test_long_poll_wakes_on_submit_and_withdraw_only_takes_unleased_jobs():
    async def go():
        q = WorkQueue(max_jobs=10, lease_timeout=30)
        waiter = asyncio.create_task(q.take("w", 8, wait_s=5))
        await asyncio.sleep(0.05)
        job = q.submit([FRAME])
        lease = await asyncio.wait_for(waiter, 1)
        assert list(lease.jobs) == [job.id]
        assert not q.withdraw(job)                         # leased: the worker owns it now
        other = q.submit([FRAME])
        assert q.withdraw(other) and not q.pending
        assert await q.take("w", 8, wait_s=0.05) is None
        assert q.release("w") == 1 and q.pending[0] is job  # revoked worker: its jobs go back

    run(go())


# --------------------------------------------------------------------------------------------------
# HTTP against a real node on loopback
# --------------------------------------------------------------------------------------------------

def worker_config(workdir: Path, name: str, spec: str, *, model: str = "none", **workers):
    settings = {"enabled": True, "model": spec, "lease_timeout_s": 2, "stale_after_s": 1.5, **workers}
    if model != "none":
        settings.pop("model")
    return make_data_dir(workdir / name, model=model, thresholds={"csam": 0.5}, workers=settings,
                         pictrs={"budget_seconds": 5})


async def _post_json(session, url, token, body):
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.read()


async def _lease_until_granted(session, url, token, request, tries: int = 20):
    """Long-poll until the node grants a lease (the upload that feeds it runs concurrently)."""
    for _ in range(tries):
        status, body = await _post_json(session, f"{url}/lease", token, request)
        if status == 200:
            return unpack_lease(body)
        assert status == 204
    raise AssertionError("no lease granted")


def test_protocol_tokens_model_check_malformed_results_and_late_results(workdir, spec, classifier):
    """A hand-driven worker: it leases the job of a pict-rs request, answers after the requester's budget
    (the verdict is still stored), is refused with the wrong model, and loses everything once revoked."""
    config = worker_config(workdir, "protocol", spec)
    config.pictrs.budget_seconds = 1.0

    async def go():
        async with running_node(config) as (node, base):
            hub = node.features.get(WorkerHub)
            registry = WorkerRegistry(node.store)
            token = registry.add("hand")
            other_token = registry.add("other")
            url = f"{base}{API_PREFIX}"
            lease_request = {"model": model_to_json(classifier.model), "geometry": geometry_of(classifier).to_json(),
                             "encoding": "png", "max_frames": 32, "wait_s": 2}
            async with aiohttp.ClientSession() as s:
                # Bad tokens: 401, nothing leased.
                for bad in ("", "vnw_nope", token + "x"):
                    status, _ = await _post_json(s, f"{url}/lease", bad, lease_request)
                    assert status == 401
                # A worker's token cannot queue work (submit is for the node's own commands, e.g. scan).
                for bad in ("", token):
                    async with s.get(f"{url}/submit", headers={"Authorization": f"Bearer {bad}"}) as r:
                        assert r.status == 401
                    status, _ = await _post_json(s, f"{url}/submit", bad, {})
                    assert status == 401
                # A wrong model: 409 naming both models, and noted for `workers list`.
                wrong = {**lease_request, "model": {"name": "ViT-B-32", "version": "random-seed0",
                                                    "rules": classifier.model.rules}}
                status, body = await _post_json(s, f"{url}/lease", token, wrong)
                message = json.loads(body)["error"]
                assert status == 409 and "ViT-B-32" in message and classifier.model.name in message
                assert "model mismatch" in registry.records()[0].last_refusal

                # The first worker fixes the frame geometry; a client asking for another one is refused too.
                await _post_json(s, f"{url}/lease", token, {**lease_request, "max_frames": 0})
                status, body = await _post_json(s, f"{url}/lease", other_token,
                                                {**lease_request, "max_frames": 0, "geometry": {"size": 32}})
                assert status == 409 and "geometry" in json.loads(body)["error"]

                # The worker is now "seen": a pict-rs upload is queued for it; the requester gives up at 1 s.
                await _post_json(s, f"{url}/lease", token, {**lease_request, "max_frames": 0})
                upload = asyncio.create_task(pictrs_post(validate_url(config, base), photo_bytes("coffee")))
                lease = await _lease_until_granted(s, url, token, lease_request)
                assert len(lease.jobs) == 1 and lease.jobs[0].frames[0].size == (64, 64)
                # Queued frames were already shrunk to the model input (memory), not only when shipped.
                held_jobs = hub.queue.leases[lease.lease_id].jobs.values()
                assert [f.size for job in held_jobs for f in job.frames] == [(64, 64)]
                upload_status, answer = await upload
                assert answer["source"] == "unavailable" and upload_status == 406   # budget over: on_unavailable
                results = classify_lease(classifier, lease)
                # Malformed or foreign posts are refused and change nothing.
                status, _ = await _post_json(s, f"{url}/leases/{lease.lease_id}", token,
                                             {"results": [{"job": results[0].job_id, "scores": {"csam": 7}}]})
                assert status == 400
                async with s.post(f"{url}/leases/{lease.lease_id}", data=b"[" * 100_000,
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 400                          # nested too deep: bad input, not a 500
                status, _ = await _post_json(s, f"{url}/leases/{lease.lease_id}", other_token,
                                             {"results": [r.to_json() for r in results]})
                assert status == 409
                status, body = await _post_json(s, f"{url}/leases/{lease.lease_id}", token,
                                                {"results": [r.to_json() for r in results]})
                assert status == 200 and json.loads(body) == {"accepted": 1, "requeued": 0}
                await asyncio.sleep(0.1)
                # The late result stored its verdict: the same upload is now a cache hit.
                status, again = await pictrs_post(validate_url(config, base), photo_bytes("coffee"))
                assert again["source"] == "cache"
                assert again["scores"] == results[0].scores

                # Revocation: a lease in hand is taken back, its result refused, the next request 401.
                upload = asyncio.create_task(pictrs_post(validate_url(config, base), photo_bytes("rocket")))
                held = await _lease_until_granted(s, url, token, lease_request)
                registry.remove("hand")
                hub.maintain_once()
                assert not hub.queue.leases and len(hub.queue.pending) == 1
                status, _ = await _post_json(s, f"{url}/leases/{held.lease_id}", token,
                                             {"results": [r.to_json() for r in classify_lease(classifier, held)]})
                assert status == 401
                status, _ = await _post_json(s, f"{url}/lease", token, lease_request)
                assert status == 401
                # The other worker takes the requeued job.
                taken = await _lease_until_granted(s, url, other_token, lease_request)
                assert [j.job_id for j in taken.jobs] == [j.job_id for j in held.jobs]
                status, _ = await _post_json(s, f"{url}/leases/{taken.lease_id}", other_token,
                                             {"results": [r.to_json() for r in classify_lease(classifier, taken)]})
                assert status == 200
                await upload
            own = node.store.conn.execute("SELECT COUNT(*) FROM verdicts WHERE own = 1").fetchone()[0]
            assert own == 2

    run(go())


def test_no_worker_and_no_local_classifier_answers_at_once_per_on_unavailable(workdir, spec):
    config = worker_config(workdir, "unavailable", spec, stale_after_s=1)
    config.pictrs.on_unavailable = "accept"

    async def go():
        async with running_node(config) as (node, base):
            loop = asyncio.get_running_loop()
            started = loop.time()
            status, answer = await pictrs_post(validate_url(config, base), photo_bytes("chelsea"))
            assert status == 200 and answer["source"] == "unavailable"
            assert answer["reason"].startswith("classifier unavailable (no worker seen")  # not "queue full"
            assert loop.time() - started < 1.0                  # not the 5 s budget
            health = node.health()["classifier"]
            assert health["available"] is False and "no worker seen" in health["problem"]
            assert b"verdictnode_classifier_available 0.0" in node.metrics.render()
            with pytest.raises(WorkersUnavailable):
                await node.backend.classify_frames([FRAME])

    run(go())


def test_local_classifier_serves_without_workers_and_workers_take_over_when_connected(workdir, spec, classifier):
    """classifier.model set and workers on: the local model answers while no worker is connected; with a
    worker connected the images go to it; each image is classified exactly once either way."""
    config = worker_config(workdir, "hybrid", spec, model=spec, local_after_ms=30_000)

    async def go():
        async with running_node(config) as (node, base):
            backend = node.backend
            status, first = await pictrs_post(validate_url(config, base), photo_bytes("astronaut"))
            assert first["source"] == "inference" and backend.local_images == 1 and backend.remote_images == 0
            token = WorkerRegistry(node.store).add("w")
            worker = Worker(base, token, classifier, encoding="rgb", batch_size=8)
            task = asyncio.create_task(worker.run())
            for _ in range(100):
                if node.features.get(WorkerHub).remote_active():
                    break
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(*(pictrs_post(validate_url(config, base), photo_bytes(n))
                                             for n in ("coffee", "rocket", "retina")))
            assert all(a["source"] == "inference" for _, a in answers)
            assert backend.remote_images == 3 and backend.local_images == 1
            assert worker.stats.jobs == 3
            # The worker's scores equal what the local model says about the same upload.
            from scanners.media import decode

            local = await node.backend.local.classify_frames(decode(photo_bytes("coffee")).frames)
            assert answers[0][1]["scores"] == pytest.approx(local.scores, abs=1e-12)
            records = WorkerRegistry(node.store).records()
            assert records[0].jobs_done == 3 and records[0].model == classifier.model
            worker.stop.set()
            assert await asyncio.wait_for(task, 10) == 0

    run(go())
