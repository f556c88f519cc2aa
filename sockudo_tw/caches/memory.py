"""
The memory cache driver (C{cache.driver: memory}, and C{none}, which keeps
it as Sockudo does): cache-channel entries in this process.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sockudo_tw.caches import IChannelCache

__all__ = ["MemoryChannelCache"]


@implementer(IChannelCache)
class MemoryChannelCache:
    """
    Cache-channel entries in a dict, expired lazily on read and swept when
    the dict is written.

    @ivar ttl: seconds an entry lives (Pusher: up to 30 minutes).
    """

    def __init__(self, clock: IReactorTime, ttl: float = 1800.0) -> None:
        self._clock = clock
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._next_sweep = 0.0

    def store(self, app_id: str, channel: str, frame: bytes) -> Deferred[None]:
        now = self._clock.seconds()
        if now >= self._next_sweep:
            self._sweep(now)
        self._entries[(app_id, channel)] = (frame, now + self.ttl)
        return succeed(None)

    def fetch(self, app_id: str, channel: str) -> Deferred[tuple[bytes, float] | None]:
        entry = self._entries.get((app_id, channel))
        if entry is None:
            return succeed(None)
        frame, expires = entry
        left = expires - self._clock.seconds()
        if left <= 0:
            del self._entries[(app_id, channel)]
            return succeed(None)
        return succeed((frame, left))

    def _sweep(self, now: float) -> None:
        """
        Drop expired entries so memory stays bounded by live channels.
        """
        expired = [k for k, (_, exp) in self._entries.items() if exp <= now]
        for k in expired:
            del self._entries[k]
        self._next_sweep = now + self.ttl
