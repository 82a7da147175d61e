"""Waiting between retries: a first delay that doubles on every failure up to a cap. One helper for every
retry loop of the project (storage sources, the remote worker, sweeps waiting out a full queue, federation
deliveries), so they all back off the same way and a change to the schedule is made once."""
from __future__ import annotations


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempts`` (1-based): base, 2*base, 4*base, ... capped at ``cap``."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


class Backoff:
    """The delays of one retry loop: ``next()`` gives base, 2*base, ... up to ``cap``; ``reset()`` after a
    success starts over."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        return backoff_seconds(self.attempts, self.base, self.cap)

    def reset(self) -> None:
        self.attempts = 0
