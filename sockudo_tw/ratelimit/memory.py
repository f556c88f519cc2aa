# -*- test-case-name: tests.test_ratelimit -*-
"""
The memory rate limiter driver (C{rate_limiter.driver: memory}, and
C{none}, which keeps it as Sockudo does).
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sockudo_tw.ratelimit import IRateLimiter, RateLimitResult

__all__ = ["MemoryRateLimiter"]


@implementer(IRateLimiter)
class MemoryRateLimiter:
    """
    Fixed windows per key, held in a dict and timed by an injected clock.

    Expired windows are swept at most once per sweep interval, when a hit
    arrives, so memory stays bounded by the keys active in the last window
    without any timer.
    """

    def __init__(self, clock: IReactorTime, sweep_interval: float = 60.0) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        # key -> (count, window end)
        self._windows: dict[str, tuple[int, float]] = {}
        self._next_sweep = 0.0

    def hit(
        self, key: str, max_requests: int, window_seconds: float, cost: int = 1
    ) -> Deferred[RateLimitResult]:
        now = self._clock.seconds()
        if now >= self._next_sweep:
            self._sweep(now)
        count, ends = self._windows.get(key, (0, 0.0))
        if now >= ends:
            count, ends = 0, now + window_seconds
        reset_after = max(0, math.ceil(ends - now))
        if count + cost > max_requests:
            self._windows[key] = (count, ends)
            return succeed(
                RateLimitResult(False, max_requests, max(0, max_requests - count), reset_after)
            )
        count += cost
        self._windows[key] = (count, ends)
        return succeed(RateLimitResult(True, max_requests, max_requests - count, reset_after))

    def _sweep(self, now: float) -> None:
        """
        Forget windows that have ended.
        """
        for key in [k for k, (_, ends) in self._windows.items() if ends <= now]:
            del self._windows[key]
        self._next_sweep = now + self._sweep_interval
