"""The pict-rs endpoint on a real server (loopback, free port), called the way pict-rs calls it."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import yaml

from node.config import load_config
from node.store import Store
from tests.hostile import hostile_corpus
from tests.images import photo_bytes, synthetic_image_bytes
from tests.node_helpers import (PICTRS_TIMEOUT, ROOT, free_port, make_data_dir, metric_value, pictrs_post, run,
                                running_node, serve_process, stop_process, validate_url, wait_healthy)
from tests.test_pipeline import ALLOWED, BLOCKED, with_exif
from tests.tiny_clip import tiny_clip_spec  # noqa: F401 - session fixture


def test_serve_subprocess_decides_caches_and_keeps_everything_across_restart(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path / "data", model=tiny_clip_spec)
    url = validate_url(config)
    blocked, allowed = photo_bytes(BLOCKED), photo_bytes(ALLOWED)

    async def first_run(base):
        status, body = await pictrs_post(url, blocked)
        assert (status, body["decision"], body["source"]) == (406, "reject", "inference")
        assert body["scores"]["csam"] >= 0.5 and body["verdict"].startswith(config.node.url + "/verdicts/")
        status, body = await pictrs_post(url, allowed)
        assert (status, body["source"]) == (200, "inference")
        status, body = await pictrs_post(url, with_exif(allowed))  # exiftool'd copy: same pixels
        assert (status, body["source"]) == (200, "cache")
        assert await metric_value(base, "verdictnode_inference_images_total") == 2
        assert await metric_value(base, "verdictnode_cache_hits_total", origin="cache", match="pixel_sha256") == 1

    with serve_process(config) as (proc, base):
        run(first_run(base))
        assert stop_process(proc) == 0  # SIGTERM: clean shutdown, pending decision rows written

    with Store(config.database_path) as store:
        assert store.counts() == {"own_verdicts": 2, "peer_verdicts": 0, "decisions": 3}

    # Restart with a laxer csam threshold: stored scores are re-judged by our own (new) thresholds.
    raw = yaml.safe_load((config.data_dir / "node.yaml").read_text())
    raw["policy"]["thresholds"]["csam"] = 1.0
    (config.data_dir / "node.yaml").write_text(yaml.safe_dump(raw))

    async def second_run(base):
        status, body = await pictrs_post(url, blocked)
        assert (status, body["source"]) == (200, "cache")
        assert await metric_value(base, "verdictnode_inference_images_total") == 0
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/healthz") as r:
                health = await r.json()
        assert health["counts"]["own_verdicts"] == 2 and health["counts"]["decisions"] == 4
        assert health["classifier"]["available"] is True
        assert await metric_value(base, "verdictnode_classifier_available") == 1

    with serve_process(config) as (proc, base):
        run(second_run(base))


def test_new_user_serve_on_empty_dir_without_weights(tmp_path):
    """`verdict-node serve` in an empty directory: creates ./data, starts without the default model's weights,
    says so in one line, and answers unknown images per on_unavailable (reject)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        health = wait_healthy(base, proc, timeout=180)
        assert health["classifier"]["available"] is False and health["classifier"]["problem"]
        config = load_config(tmp_path / "data" / "node.yaml")
        assert config.classifier.model == "ViT-L-14/openai"
        status, body = run(pictrs_post(f"{base}/pictrs/validate/{config.pictrs.tokens[0]}", photo_bytes()))
        assert (status, body["source"], body["decision"]) == (406, "unavailable", "reject")
    finally:
        stop_process(proc)
    log = proc.stdout.read()
    problem_lines = [line for line in log.splitlines() if "no classifier:" in line]
    assert len(problem_lines) == 1, log
    assert "Traceback" not in log


def test_auth_tokens_ipaddr_and_forwarded_for(tmp_path):
    config = make_data_dir(tmp_path / "a", pictrs={"on_unavailable": "accept"})
    image = photo_bytes()

    async def body():
        async with running_node(config) as (node, base):
            token = config.pictrs.tokens[0]
            assert (await pictrs_post(f"{base}/pictrs/validate/{token}", image))[0] == 200
            assert (await pictrs_post(f"{base}/api/v1/scan/{token}", image))[0] == 200
            wrong = token[:-1] + ("y" if token.endswith("x") else "x")  # always differs from the real token
            assert (await pictrs_post(f"{base}/pictrs/validate/{wrong}", image))[0] == 401
            assert (await pictrs_post(f"{base}/api/v1/scan/IPADDR", image))[0] == 200  # 127.0.0.1 allowed
    run(body())

    # Only 10/8 allowed: loopback is refused; X-Forwarded-For is ignored unless trusted.
    for trusted, expected in ((False, 403), (True, 200)):
        cfg = make_data_dir(tmp_path / f"b{trusted}", pictrs={"allowed_ips": ["10.0.0.0/8", "fd00::/8"],
                                                               "trust_forwarded_for": trusted,
                                                               "on_unavailable": "accept"})

        async def body2():
            async with running_node(cfg) as (node, base):
                async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT) as s:
                    async with s.post(f"{base}/api/v1/scan/IPADDR", data=image,
                                      headers={"Content-Type": "image/jpeg", "X-Forwarded-For": "10.1.2.3"}) as r:
                        assert r.status == expected
                    async with s.post(f"{base}/api/v1/scan/IPADDR", data=image,
                                      headers={"Content-Type": "image/jpeg", "X-Forwarded-For": "fd00::7"}) as r:
                        assert r.status == expected  # IPv6 networks too
                    async with s.post(f"{base}/api/v1/scan/IPADDR", data=image,
                                      headers={"Content-Type": "image/jpeg"}) as r:
                        assert r.status == 403
        run(body2())


def test_forwarded_for_takes_the_proxys_value_across_header_lines(tmp_path):
    """A client behind the trusted proxy sends its own X-Forwarded-For line; the proxy adds another line with
    the address it saw. Only the proxy's (the last value of the last line) may decide."""
    from multidict import CIMultiDict

    config = make_data_dir(tmp_path, pictrs={"allowed_ips": ["10.0.0.0/8"], "trust_forwarded_for": True,
                                             "on_unavailable": "accept"})
    image = photo_bytes()

    async def status_with(base: str, lines: list[str]) -> int:
        headers = CIMultiDict([("Content-Type", "image/jpeg"), *(("X-Forwarded-For", v) for v in lines)])
        async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT) as s:
            async with s.post(f"{base}/api/v1/scan/IPADDR", data=image, headers=headers) as r:
                return r.status

    async def body():
        async with running_node(config) as (node, base):
            assert await status_with(base, ["10.1.2.3", "192.0.2.7"]) == 403  # forged line first, proxy saw 192.0.2.7
            assert await status_with(base, ["192.0.2.7", "10.1.2.3"]) == 200
            assert await status_with(base, ["10.1.2.3", "198.51.100.1, 192.0.2.7"]) == 403
    run(body())


def test_ipv6_loopback_caller_is_allowed(tmp_path):
    config = make_data_dir(tmp_path, pictrs={"on_unavailable": "accept"})

    async def body():
        from aiohttp import web

        from node.serve import open_serving_node
        from node.server import build_app

        node = open_serving_node(config)
        runner = web.AppRunner(build_app(node))
        await runner.setup()
        await web.TCPSite(runner, "::1", config.listen.port).start()
        try:
            status, _ = await pictrs_post(f"http://[::1]:{config.listen.port}/api/v1/scan/IPADDR", photo_bytes())
            assert status == 200
        finally:
            await runner.cleanup()
    run(body())


def test_body_limit_multipart_and_metrics(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec, media={"max_bytes": 200_000})
    small = photo_bytes(ALLOWED, size=128)

    async def body():
        async with running_node(config) as (node, base):
            url = validate_url(config, base)
            status, answer = await pictrs_post(url, b"\xff\xd8" + b"\x00" * 300_000)
            assert status == 413

            async def chunked():  # no Content-Length: the limit still holds
                for _ in range(30):
                    yield b"\x00" * 10_000
            async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT) as s:
                async with s.post(url, data=chunked(), headers={"Content-Type": "image/jpeg"}) as r:
                    assert r.status == 413
            form = aiohttp.FormData()
            form.add_field("file", small, filename="a.jpg", content_type="image/jpeg")
            async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT) as s:
                async with s.post(f"{base}/api/v1/scan/{config.pictrs.tokens[0]}", data=form) as r:
                    answer = await r.json()
                    assert r.status == 200 and answer["source"] == "inference"
                async with s.get(f"{base}/metrics") as r:
                    text = await r.text()
            for name in ("verdictnode_images_total", "verdictnode_inference_images_total",
                         "verdictnode_cache_hits_total", "verdictnode_validate_seconds_bucket"):
                assert name in text
            assert await metric_value(base, "verdictnode_images_total", outcome="allow", source="inference") == 1
    run(body())


def test_200_concurrent_requests_and_hostile_bodies_get_no_5xx(tmp_path, tiny_clip_spec):
    config = make_data_dir(tmp_path, model=tiny_clip_spec)
    known = [photo_bytes(ALLOWED), photo_bytes(BLOCKED)]
    unknown = [synthetic_image_bytes(i, size=96) for i in range(20)]

    async def body():
        async with running_node(config) as (node, base):
            url = validate_url(config, base)
            for data in known:
                await pictrs_post(url, data)
            async with aiohttp.ClientSession(timeout=PICTRS_TIMEOUT,
                                             connector=aiohttp.TCPConnector(limit=200)) as s:
                bodies = [known[i % 2] if i % 4 else unknown[i % 20] for i in range(200)]
                results = await asyncio.gather(*(pictrs_post(url, b, session=s) for b in bodies))
            assert all(status in (200, 406) for status, _ in results)
            for (status, answer), b in zip(results, bodies):
                if b == known[0]:
                    assert (status, answer["source"]) == (200, "cache")
                if b == known[1]:
                    assert (status, answer["source"]) == (406, "cache")

            for name, (data, expected) in hostile_corpus().items():
                status, answer = await pictrs_post(url, data, content_type="image/jpeg")
                assert status in (200, 406, 413), (name, status, answer)
                if expected in ("unreadable", "video"):
                    assert answer["outcome"] == expected, (name, answer)
                    assert answer["outcome"] != "block"
    run(body())
