"""
The cache behind cache channels: the last event published on each one.

L{IChannelCache} is the seam; one module per driver (C{memory.py},
C{redis.py}: shared by every node of a cluster), chosen by name in
L{DRIVERS}. Entries expire after a TTL (C{channel_limits.cache_ttl}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = ["DRIVERS", "IChannelCache", "MemoryChannelCache", "build_cache"]


class IChannelCache(Interface):
    """
    Last-event storage for cache channels.
    """

    def store(app_id: str, channel: str, frame: bytes) -> Deferred[None]:
        """
        Remember C{frame} (a serialised channel event) as the channel's last
        event, replacing any earlier one and restarting its TTL.
        """

    def fetch(app_id: str, channel: str) -> Deferred[tuple[bytes, float] | None]:
        """
        The channel's last event and the seconds it has left, or L{None}.
        """


CacheFactory = Callable[["ServerConfig", IReactorTime], IChannelCache]


def _memory(config: ServerConfig, reactor: IReactorTime) -> IChannelCache:
    from sockudo_tw.caches.memory import MemoryChannelCache

    return MemoryChannelCache(reactor, ttl=config.channel_cache_ttl)


def _redis(config: ServerConfig, reactor: IReactorTime) -> IChannelCache:
    from sockudo_tw.caches.redis import redis_cache_from_config

    # An IService: the composition root starts and stops its connection.
    return redis_cache_from_config(config, reactor)


DRIVERS: dict[str, CacheFactory] = {
    "memory": _memory,
    "redis": _redis,
    # Sockudo keeps the memory cache for "none"; the config warns about it.
    "none": _memory,
}
"""
C{cache.driver} to the factory building it from the config; the config
refuses the drivers sockudo-tw does not implement.
"""


def build_cache(config: ServerConfig, reactor: IReactorTime) -> IChannelCache:
    """
    The cache C{cache.driver} names.
    """
    return DRIVERS[config.cache.driver](config, reactor)


from sockudo_tw.caches.memory import MemoryChannelCache  # noqa: E402 (needs IChannelCache)
