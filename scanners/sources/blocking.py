"""Blocking filesystem calls with a deadline, on threads that can never keep the process alive.

A read of a file on a hung NFS or FUSE mount blocks in the kernel, and no Python code can interrupt it.
``asyncio.to_thread`` would park such a call on the default executor, and both ``asyncio.run`` (it joins
that executor when it ends) and the interpreter (it joins every ``concurrent.futures`` worker at exit)
then wait for it forever: a sweep told to stop by SIGTERM would never exit. Here each call gets its own
daemon thread instead: the caller stops waiting after ``timeout`` seconds and goes on, and a thread still
stuck at exit is simply abandoned with the process.

Abandoned threads are counted: once ``max_stuck`` of them are still blocked, the storage as a whole is
not answering and further calls fail at once (:class:`StorageNotAnswering`) instead of piling up threads.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


class StorageNotAnswering(Exception):
    """Too many earlier calls are still blocked: the storage is hung, do not start another."""


class CallTimedOut(TimeoutError):
    """One call did not return within its deadline (its thread is left to finish or die with the process)."""


class DeadlineThreads:
    """Runs blocking callables on daemon threads with a per-call deadline (one instance per source)."""

    def __init__(self, timeout: float, max_stuck: int = 32) -> None:
        self.timeout = float(timeout)
        self.max_stuck = int(max_stuck)
        self._stuck = 0
        self._lock = threading.Lock()

    @property
    def stuck(self) -> int:
        """Calls that outlived their deadline and have not returned yet."""
        return self._stuck

    async def run(self, fn: Callable[..., T], *args: Any, what: str = "call") -> T:
        """``fn(*args)`` on a fresh daemon thread; raises CallTimedOut after ``timeout`` seconds,
        StorageNotAnswering when too many earlier calls are still stuck, else whatever ``fn`` raised."""
        if self._stuck >= self.max_stuck:
            raise StorageNotAnswering(f"{self._stuck} storage calls are still blocked after "
                                      f"{self.timeout:g} s: the storage is not answering")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_retrieved)  # an answer that arrives after we stopped waiting is not an error
        state = {"finished": False, "abandoned": False}  # guarded by self._lock

        def deliver(outcome: Callable[[], None]) -> None:
            if not future.done():
                outcome()

        def body() -> None:
            try:
                outcome = functools.partial(future.set_result, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                outcome = functools.partial(future.set_exception, exc)
            with self._lock:
                state["finished"] = True
                if state["abandoned"]:
                    self._stuck -= 1
                    return  # nobody waits for this answer any more
            try:
                loop.call_soon_threadsafe(deliver, outcome)
            except RuntimeError:  # the loop is closed
                pass

        threading.Thread(target=body, name=f"storage-{what}", daemon=True).start()
        try:
            done, _ = await asyncio.wait({future}, timeout=self.timeout)  # not wait_for: see within()
        except asyncio.CancelledError:
            with self._lock:
                if not state["finished"]:
                    state["abandoned"] = True
                    self._stuck += 1
            raise
        if done:
            return future.result()
        with self._lock:
            finished = state["finished"]
            if not finished:
                state["abandoned"] = True
                self._stuck += 1
        if finished:  # it returned just as the deadline passed: its answer is on its way
            return await future
        raise CallTimedOut(f"{what}: no answer within {self.timeout:g} s")


async def within(awaitable: Awaitable[T], timeout: float, what: str = "call") -> T:
    """``await awaitable`` for at most ``timeout`` seconds (CallTimedOut after, the awaitable cancelled).

    Not ``asyncio.wait_for``: before Python 3.12 it loses a cancellation of the caller that arrives just
    as the awaited thing finishes, and a sweep worker that loses its cancellation on SIGTERM keeps the
    whole process from stopping. ``asyncio.wait`` never swallows one."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    raise CallTimedOut(f"{what}: no answer within {timeout:g} s")


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
