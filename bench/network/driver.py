"""Playing a schedule against the nodes the way pict-rs calls them.

Each node gets its own small pool of pict-rs clients (``clients`` concurrent connections, raw POSTs to the
validation hook with the file's Content-Type and pict-rs's 30 s timeout: tests.node_helpers.pictrs_post).
A post is queued at its origin at its time; once the origin has answered, each of its arrivals is queued at
its node after its delay. A node that falls behind builds a queue, as pict-rs would see it; the answer's
latency is measured from the POST, and the wait in the queue separately.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence

import aiohttp

from bench.network.workload import Schedule
from tests.node_helpers import PICTRS_TIMEOUT, pictrs_post


@dataclass
class Answer:
    """One hook call: which post at which node, when, and what the node said."""

    post: int
    node: int
    origin: bool
    due: float          # when pict-rs would have sent it (monotonic seconds)
    sent: float
    answered: float
    status: int | None  # None: no answer (timeout or connection error)
    body: dict

    @property
    def latency(self) -> float:
        return self.answered - self.sent

    @property
    def source(self) -> str:
        """cache / peer-push / peer-backfill / peer-lookup / inference / unavailable / media / no answer."""
        if self.status is None:
            return "no answer"
        source = self.body.get("source", "?")
        return f"peer-{self.body.get('origin')}" if source == "peer" else source


async def play(sched: Schedule, urls: Sequence[str], *, clients: int = 4, start_delay: float = 0.5) -> list[Answer]:
    """Run the schedule; every upload's answer (posts and arrivals), in the order they came."""
    loop = asyncio.get_running_loop()
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in urls]
    answers: list[Answer] = []
    expected = sched.uploads
    done = asyncio.Event()
    t0 = loop.time() + start_delay

    def queue_at(node: int, post: int, origin: bool, due: float) -> None:
        queues[node].put_nowait((post, origin, due))

    async def client(node: int, session: aiohttp.ClientSession) -> None:
        while True:
            post, origin, due = await queues[node].get()
            item = sched.posts[post]
            data = item.upload if origin else item.federated
            sent = loop.time()
            try:
                status, body = await pictrs_post(urls[node], data, item.content_type, session=session)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status, body = None, {"error": f"{type(exc).__name__}: {exc}"}
            answered = loop.time()
            answers.append(Answer(post, node, origin, due, sent, answered, status, body))
            if origin:
                for arrival in sched.arrivals[post]:
                    at = answered + arrival.delay
                    loop.call_at(at, queue_at, arrival.node, post, False, at)
            if len(answers) == expected:
                done.set()

    async def poster() -> None:
        for post, (origin, at) in enumerate(zip(sched.origins, sched.post_times)):
            due = t0 + at
            await asyncio.sleep(max(0.0, due - loop.time()))
            queue_at(origin, post, True, due)

    sessions = [aiohttp.ClientSession(timeout=PICTRS_TIMEOUT, connector=aiohttp.TCPConnector(limit=clients))
                for _ in urls]
    tasks = [asyncio.create_task(client(n, s)) for n, s in enumerate(sessions) for _ in range(clients)]
    try:
        await poster()
        await done.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in sessions:
            await session.close()
    return answers

