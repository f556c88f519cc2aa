# -*- test-case-name: tests.test_cache_redis -*-
"""
The Redis cache driver (C{cache.driver: redis}): cache-channel last events
kept in Redis, so a subscriber on any node of a cluster gets the event
published through any other node.

Key layout, as Sockudo's (sockudo-reference.md section 5.5)::

    <cache.redis.prefix>:app:<app_id>:channel:<channel>:cache_miss

(with the default prefix C{sockudo_cache:} that gives
C{sockudo_cache::app:...}, the same keys Sockudo writes; the value is the
serialised channel event, as Sockudo stores it). A store is one C{SET ... PX
<ttl>}; a fetch is one C{EVALSHA} of C{redis_scripts/fetch.lua}, which reads
the value and its remaining TTL atomically in one round trip. A script
rather than C{MULTI}: the connection is shared by every cache operation of
the node, and txredisapi's transaction state belongs to the connection, so
commands of other callers would land inside the transaction.

Redis faults never reach the protocol: while Redis is down, slow or
refusing, L{RedisChannelCache.fetch} answers "no cached event" (the client
gets C{pusher:cache_miss}) and L{RedisChannelCache.store} drops the entry;
each is logged once per outage, with a count of what was lost when Redis
answers again. Every operation is bounded by C{timeout}.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.adapters._redis_link import LuaScript, RedisLink, RedisUnavailableError
from sockudo_tw.caches import IChannelCache
from sockudo_tw.redisurl import parse_redis_url

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = ["FETCH", "RedisChannelCache", "redis_cache_from_config"]

FETCH = LuaScript((resources.files(__package__) / "redis_scripts" / "fetch.lua").read_text("utf-8"))
"""
Value and remaining TTL (ms) of one key, read atomically.
"""


@implementer(IChannelCache)
class RedisChannelCache(Service):
    """
    Cache-channel entries in Redis, over one L{RedisLink} that this service
    starts and stops.

    Until the link's command connection is first up (for at most
    C{timeout} seconds after start), operations wait for it rather than
    fail, so clients served in the first instants after start-up do not get
    a spurious C{pusher:cache_miss}.

    @ivar ttl: seconds an entry lives (C{channel_limits.cache_ttl}).
    @ivar stores_dropped: entries not stored because Redis failed.
    @ivar fetches_failed: lookups answered as misses because Redis failed.
    """

    _log = Logger()

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        *,
        prefix: str = "sockudo_cache:",
        ttl: float = 1800.0,
        timeout: float = 2.0,
    ) -> None:
        """
        @param link: the connection (built with L{FETCH} among its scripts,
            so the script is loaded on every connection).
        @param prefix: Sockudo's C{cache.redis.prefix}.
        @param timeout: seconds an operation may take before it counts as
            failed (a miss, or a dropped store).
        """
        self.link = link
        self._clock = clock
        self.prefix = prefix
        self.ttl = ttl
        self.timeout = timeout
        self.stores_dropped = 0
        self.fetches_failed = 0
        self._startup_over = False
        self._started_at = 0.0
        self._waiting: list[Deferred[None]] = []
        # Once-per-outage logging: what failed since Redis last answered.
        self._fetch_outage = 0
        self._store_outage = 0
        link.observe_command_ready(self._command_ready)

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        """
        Start connecting to Redis.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._started_at = self._clock.seconds()
        self.link.startService()

    def stopService(self) -> Deferred[None]:
        """
        Close the Redis connections; operations still waiting for the first
        connection answer at once (a miss, a dropped store).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()
        return self.link.stopService()

    # -- IChannelCache -----------------------------------------------------

    def key(self, app_id: str, channel: str) -> str:
        """
        The Redis key of C{channel}'s entry (Sockudo's layout).
        """
        return f"{self.prefix}:app:{app_id}:channel:{channel}:cache_miss"

    def store(self, app_id: str, channel: str, frame: bytes) -> Deferred[None]:
        """
        C{SET} the entry with its TTL; fires L{None} once Redis has it, or
        once the entry is dropped (Redis down, slow or refusing). Never fails.
        """
        ttl_ms = max(1, round(self.ttl * 1000))
        d = self._command("SET", self.key(app_id, channel), frame, "PX", ttl_ms)
        d.addCallback(self._stored)
        d.addErrback(self._store_failed, app_id, channel)
        return d

    def fetch(self, app_id: str, channel: str) -> Deferred[tuple[bytes, float] | None]:
        """
        The entry and its seconds left, in one round trip; L{None} when
        there is none, or when Redis is down, slow or refusing. Never fails.
        """
        key = self.key(app_id, channel)
        d = self._command("EVALSHA", FETCH.sha, 1, key)
        d.addErrback(self._unknown_script, key)
        d.addCallback(self._fetched)
        d.addErrback(self._fetch_failed, app_id, channel)
        return d

    # -- commands ----------------------------------------------------------

    def _command(self, *args: bytes | str | int) -> Deferred[Any]:
        """
        Run one command on the link, waiting for the first connection when
        the service has just started.
        """
        if self._startup_over or not self.running:
            return self.link.command(*args, timeout=self.timeout)
        left = self._started_at + self.timeout - self._clock.seconds()
        if left <= 0:
            # Redis was never reached: from now on fail at once.
            self._startup_over = True
            self._waiting = []
            return self.link.command(*args, timeout=self.timeout)
        ready: Deferred[None] = Deferred()
        self._waiting.append(ready)
        ready.addTimeout(left, self._clock)

        def run(_: None) -> Deferred[Any]:
            return self.link.command(*args, timeout=self.timeout)

        def not_reached(failure: Failure) -> Failure:
            if isinstance(failure.value, (CancelledError, TimeoutError)):
                raise RedisUnavailableError("Redis not reached since start-up")
            return failure

        return ready.addCallbacks(run, not_reached)

    def _unknown_script(self, failure: Failure, key: str) -> Deferred[Any] | Failure:
        """
        The server lost its script cache (C{SCRIPT FLUSH}; a restart is
        covered by the link loading the script again): run it with C{EVAL}.
        """
        if "NOSCRIPT" in failure.getErrorMessage():
            return self.link.command("EVAL", FETCH.source, 1, key, timeout=self.timeout)
        return failure

    def _command_ready(self) -> None:
        """
        The command connection is up (first time, or after an outage):
        release operations waiting for it, and close the outage log.
        """
        self._startup_over = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)
        self._answered()

    # -- outcomes ----------------------------------------------------------

    def _stored(self, reply: object) -> None:
        self._answered()

    def _fetched(self, reply: Any) -> tuple[bytes, float] | None:
        """
        Decode the script's reply: L{None}, or C{[value, pttl]}.
        """
        self._answered()
        if reply is None:
            return None
        value, pttl = reply
        left_ms = int(pttl)
        if left_ms == 0 or left_ms == -2:
            return None
        if left_ms < 0:
            # No expiry (written by something else): report ours.
            return bytes(value), self.ttl
        return bytes(value), left_ms / 1000

    def _answered(self) -> None:
        """
        Redis answered: log the end of an outage once, with what it cost.
        """
        if self._fetch_outage or self._store_outage:
            self._log.info(
                "Redis cache answers again: {stores} cache channel events were not "
                "stored and {fetches} lookups were answered as misses meanwhile",
                stores=self._store_outage,
                fetches=self._fetch_outage,
            )
            self._fetch_outage = self._store_outage = 0

    def _store_failed(self, failure: Failure, app_id: str, channel: str) -> None:
        self.stores_dropped += 1
        self._store_outage += 1
        if self._store_outage == 1 and self.running:
            self._log.warn(
                "Redis cache unavailable ({why}): cache channel events are not stored "
                "until it answers again (first: app {app_id} channel {channel})",
                why=_reason(failure),
                app_id=app_id,
                channel=channel,
            )

    def _fetch_failed(self, failure: Failure, app_id: str, channel: str) -> None:
        self.fetches_failed += 1
        self._fetch_outage += 1
        if self._fetch_outage == 1 and self.running:
            self._log.warn(
                "Redis cache unavailable ({why}): cache channel subscribers get "
                "pusher:cache_miss until it answers again (first: app {app_id} "
                "channel {channel})",
                why=_reason(failure),
                app_id=app_id,
                channel=channel,
            )


def _reason(failure: Failure) -> str:
    """
    A short description of why a Redis operation failed, for the log.
    """
    if isinstance(failure.value, (TimeoutError, CancelledError)):
        return "no answer in time"
    message = failure.getErrorMessage()
    name = failure.type.__name__ if failure.type is not None else "error"
    return f"{name}: {message}" if message else name


def _no_message(payload: bytes) -> None:
    """
    Nothing is published on the cache's link.
    """


def redis_cache_from_config(config: ServerConfig, reactor: Any) -> RedisChannelCache:
    """
    Build the cache for C{cache.driver: redis}: the server from
    C{cache.redis.url_override} (also set by C{REDIS_URL}), else
    C{database.redis}; keys under C{cache.redis.prefix}; entries kept for
    C{channel_limits.cache_ttl} seconds.
    """
    server = parse_redis_url(config.cache.redis_url_override or config.database_redis.url)
    link = RedisLink(
        reactor,
        server.endpoint(reactor, timeout=5),
        # Subscribed to, never published on: this link carries commands.
        b"sockudo-tw#cache",
        _no_message,
        scripts=(FETCH,),
        password=server.password,
        username=server.username,
        db=server.db,
    )
    return RedisChannelCache(
        link, reactor, prefix=config.cache.redis_prefix, ttl=float(config.channel_cache_ttl)
    )
