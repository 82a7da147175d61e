"""Remote workers as users run them: `verdict-node worker` subprocesses (tiny CLIP on CPU) against a real node
on loopback, managed with the real `verdict-node workers ...` CLI.

- two workers share a burst of pict-rs uploads; one is frozen holding a lease and SIGKILLed; its images
  finish on the other worker, and every image ends with exactly one verdict;
- the pict-rs endpoint answers within its budget throughout, and at once per on_unavailable when no worker
  is left;
- `workers remove` makes a running worker's next request fail with 401 (the worker exits 2); a worker
  with another model is refused with a message naming both models (exits 3); a worker started without
  --model runs the node's spec and reconnects by itself after the node restarts.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from node.workers.wire import describe_model
from node.workers.backends import expected_model
from node.workers.hub import WorkerHub
from node.workers.registry import WorkerRegistry
from tests.images import synthetic_image_bytes
from tests.node_helpers import ROOT, make_data_dir, metric_value, pictrs_post, run, running_node, tiny_clip_spec, validate_url
from tests.test_workers import make_other_model

BUDGET = 20.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker-processes")


@pytest.fixture(scope="module")
def spec(workdir) -> str:
    return tiny_clip_spec(workdir)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], env=_env(), capture_output=True, text=True,
                          timeout=120)


def start_worker(base: str, token: str, model: str | None, log: Path, *extra: str) -> subprocess.Popen:
    """`verdict-node worker`; without a model it loads the spec the node names."""
    handle = open(log, "w")
    model_args = ["--model", model] if model else []
    return subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--node", base, *model_args,
                             "--device", "cpu", "--stats-interval", "5", *extra],
                            env={**_env(), "VERDICT_NODE_WORKER_TOKEN": token}, stdout=handle,
                            stderr=subprocess.STDOUT)


async def wait_for(condition, timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def own_verdicts_by_sha(node) -> dict[str, int]:
    rows = node.store.conn.execute("SELECT sha256, COUNT(*) FROM verdicts WHERE own = 1 GROUP BY sha256").fetchall()
    return dict(rows)


def test_two_workers_share_a_burst_and_a_killed_workers_lease_finishes_on_the_other(workdir, spec):
    config = make_data_dir(workdir / "burst", model="none", thresholds={"csam": 0.5},
                           pictrs={"budget_seconds": BUDGET, "on_unavailable": "reject"},
                           workers={"enabled": True, "model": spec, "lease_timeout_s": 2, "stale_after_s": 2})
    tokens = {name: WorkerRegistry_add(config, name) for name in ("w1", "w2")}
    images = [synthetic_image_bytes(seed, "png", (96 + seed % 5 * 16, 80)) for seed in range(40)]
    logs = {name: workdir / f"{name}.log" for name in tokens}

    async def go():
        async with running_node(config) as (node, base):
            hub = node.features.get(WorkerHub)
            url = validate_url(config, base)
            answers: list[dict] = []
            loop = asyncio.get_running_loop()

            async def upload(data: bytes, session) -> dict:
                started = loop.time()
                status, answer = await pictrs_post(url, data, "image/png", session=session)
                answer["_status"], answer["_seconds"] = status, loop.time() - started
                answers.append(answer)
                return answer

            async with aiohttp.ClientSession() as session:
                # No worker yet: refused at once (on_unavailable: reject), not after the 20 s budget.
                first = await upload(images[0], session)
                assert first["_status"] == 406 and first["source"] == "unavailable" and first["_seconds"] < 1.0

                procs = {name: start_worker(base, token, spec, logs[name], "--batch-size", "2")
                         for name, token in tokens.items()}
                try:
                    await wait_for(lambda: {"w1", "w2"} <= set(hub.presence) and hub.remote_active(), 90,
                                   "both workers to connect", 0.1)
                    # Phase 1: uploads one at a time until both workers have classified some.
                    sent = 1
                    while min(WorkerRegistry(node.store).records(), key=lambda r: r.jobs_done).jobs_done == 0:
                        assert sent < 20, "one worker never got work"
                        answer = await upload(images[sent], session)
                        assert answer["source"] == "inference"
                        sent += 1

                    # Phase 2: freeze w1 (it keeps its long poll open), burst, and kill it once it holds a lease.
                    os.kill(procs["w1"].pid, signal.SIGSTOP)
                    burst = [asyncio.create_task(upload(data, session)) for data in images[sent:]]
                    await wait_for(lambda: any(lease.worker == "w1" for lease in hub.queue.leases.values()), 15,
                                   "the frozen worker to be granted a lease")
                    killed_jobs = [job for lease in hub.queue.leases.values() if lease.worker == "w1"
                                   for job in lease.jobs.values()]
                    os.kill(procs["w1"].pid, signal.SIGKILL)
                    procs["w1"].wait(10)
                    results = await asyncio.gather(*burst)
                    assert all(r["source"] == "inference" and r["_seconds"] < BUDGET for r in results)
                    assert all(job.future.done() and not job.future.exception() for job in killed_jobs)
                    assert hub.queue.requeued >= len(killed_jobs) >= 1
                    assert await metric_value(base, "verdictnode_worker_requeued_images") == hub.queue.requeued

                    # Every image the workers saw has exactly one verdict: nothing lost, nothing doubled.
                    by_sha = own_verdicts_by_sha(node)
                    inferred = [a for a in answers if a["source"] == "inference"]
                    assert len(inferred) == len(images) - 1
                    assert len(by_sha) == len(images) - 1 and set(by_sha.values()) == {1}
                    assert {a["verdict"] for a in inferred} == {
                        row[0] for row in node.store.conn.execute("SELECT verdict_id FROM verdicts WHERE own = 1")}
                    records = {r.name: r for r in WorkerRegistry(node.store).records()}
                    assert records["w1"].jobs_done + records["w2"].jobs_done == len(images) - 1
                    assert records["w1"].jobs_done >= 1 and records["w2"].jobs_done > len(killed_jobs)

                    # The last worker is killed during its long poll: the node sees the closed connection and
                    # does not hand it the next upload (no lease to wait out); once it counts as stale, the
                    # upload gets on_unavailable, within stale_after_s rather than the budget.
                    requeued = hub.queue.requeued
                    os.kill(procs["w2"].pid, signal.SIGKILL)
                    procs["w2"].wait(10)
                    await asyncio.sleep(0.3)
                    orphan = await upload(synthetic_image_bytes(998, "png"), session)
                    assert orphan["source"] == "unavailable" and orphan["_seconds"] < 2 + 1.0
                    assert hub.queue.requeued == requeued and not hub.queue.leases
                    await wait_for(lambda: not hub.remote_active(), 10, "the node to notice")
                    last = await upload(synthetic_image_bytes(999, "png"), session)
                    assert last["_status"] == 406 and last["source"] == "unavailable" and last["_seconds"] < 1.0
                finally:
                    for proc in procs.values():
                        if proc.poll() is None:
                            os.kill(proc.pid, signal.SIGCONT)
                            proc.kill()
                            proc.wait()

    run(go())


def WorkerRegistry_add(config, name: str) -> str:
    """`verdict-node workers add NAME` as the admin runs it; the token is the first line of stdout."""
    result = cli("workers", "add", name, "--config", str(config.data_dir / "node.yaml"))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[0]
    assert token.startswith("vnw_")
    return token


def test_cli_revocation_stops_a_running_worker_and_another_model_is_refused(workdir, spec):
    """Also: the worker outlives a node restart (it reconnects by itself) and keeps its token until revoked."""
    config = make_data_dir(workdir / "refusals", model="none", thresholds={"csam": 0.5},
                           workers={"enabled": True, "model": spec, "lease_timeout_s": 2, "stale_after_s": 2})
    node_yaml = str(config.data_dir / "node.yaml")
    good = WorkerRegistry_add(config, "desktop")
    wrong = WorkerRegistry_add(config, "wrong")
    other_spec = make_other_model(workdir, spec)
    log_good, log_wrong = workdir / "desktop.log", workdir / "wrong.log"
    procs: list[subprocess.Popen] = []

    def connected(hub) -> bool:
        return "desktop" in hub.presence and hub.presence["desktop"].model is not None

    async def before_restart():
        async with running_node(config) as (node, base):
            hub = node.features.get(WorkerHub)
            procs.append(start_worker(base, good, None, log_good))   # no --model: the node's spec
            wrong_proc = start_worker(base, wrong, other_spec, log_wrong)
            procs.append(wrong_proc)
            await wait_for(lambda: connected(hub), 90, "the worker to connect", 0.1)
            listing = cli("workers", "list", "--config", node_yaml)
            assert listing.returncode == 0 and "desktop" in listing.stdout and "wrong" in listing.stdout
            assert hub.model.name in listing.stdout

            # The wrong model: refused with both models named, the worker stops (exit 3).
            assert await asyncio.to_thread(wrong_proc.wait, 90) == 3
            text = log_wrong.read_text()
            assert "model mismatch" in text
            assert describe_model(hub.model) in text and describe_model(expected_model(other_spec)) in text
            assert expected_model(other_spec).version != hub.model.version
            listing = cli("workers", "list", "--config", node_yaml)
            assert "refused: model mismatch" in listing.stdout

    async def after_restart():
        async with running_node(config) as (node, base):
            hub = node.features.get(WorkerHub)
            await wait_for(lambda: connected(hub), 30, "the worker to reconnect to the restarted node", 0.1)
            assert procs[0].poll() is None
            # Revocation from the CLI, while the worker is in its long poll: its next request gets 401.
            removed = cli("workers", "remove", "desktop", "--config", node_yaml)
            assert removed.returncode == 0
            started = time.monotonic()
            assert await asyncio.to_thread(procs[0].wait, 30) == 2
            assert time.monotonic() - started < 10
            assert "refused this worker's token" in log_good.read_text()
            assert "desktop" not in cli("workers", "list", "--config", node_yaml).stdout

    try:
        run(before_restart())
        run(after_restart())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_workers_share_a_sweep_run_by_the_scan_command(workdir, spec):
    """`verdict-node scan` is a separate process: it queues its images on the serving node (submit), whose
    two workers classify them; every file is decided once, by inference, with one verdict per image."""
    config = make_data_dir(workdir / "sweep", model="none", thresholds={"csam": 0.5},
                           workers={"enabled": True, "model": spec, "lease_timeout_s": 5, "stale_after_s": 5})
    node_yaml = str(config.data_dir / "node.yaml")
    tokens = {name: WorkerRegistry_add(config, name) for name in ("s1", "s2")}
    storage = workdir / "storage"
    storage.mkdir()
    count = 30
    for seed in range(count):
        (storage / f"img{seed:03d}.png").write_bytes(synthetic_image_bytes(1000 + seed, "png", (120, 90)))

    async def go():
        async with running_node(config) as (node, base):
            hub = node.features.get(WorkerHub)
            procs = [start_worker(base, token, spec, workdir / f"{name}.log", "--batch-size", "4")
                     for name, token in tokens.items()]
            try:
                await wait_for(lambda: {"s1", "s2"} <= {n for n, p in hub.presence.items() if p.model}, 90,
                               "both workers to connect", 0.1)
                scan = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "node.cli", "scan", str(storage), "--all", "--dry-run",
                                     "--json", "--workers", "8", "--config", node_yaml],
                    env=_env(), capture_output=True, text=True, timeout=240)
                assert scan.returncode == 0, scan.stderr
                summary = json.loads(scan.stdout.strip().splitlines()[-1])
                assert summary["decided"] == count and summary["inferred"] == count and summary["unknown"] == 0
                by_sha = own_verdicts_by_sha(node)
                assert len(by_sha) == count and set(by_sha.values()) == {1}
                records = {r.name: r for r in WorkerRegistry(node.store).records()}
                assert records["s1"].jobs_done + records["s2"].jobs_done == count
                assert records["s1"].jobs_done > 0 and records["s2"].jobs_done > 0
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()

    run(go())
