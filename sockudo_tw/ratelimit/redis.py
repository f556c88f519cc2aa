# -*- test-case-name: tests.test_ratelimit_redis -*-
"""
The Redis rate limiter driver (C{rate_limiter.driver: redis}): the fixed
windows of L{sockudo_tw.ratelimit.memory} held in Redis, so every node of a
cluster counts against the same limit.

Each check is one Lua script (C{redis_scripts/fixed_window.lua}) run with
EVALSHA, so reading the count, deciding and counting happen atomically even
when many nodes check the same key at once: exactly C{max_requests} are
admitted per window, cluster-wide. The window is the key's expiry, timed by
Redis's clock, so nodes whose clocks differ still share one window. Keys are
C{rate_limiter.redis.prefix} (default C{sockudo_rl:}) plus the limiter key
(C{api:203.0.113.7}, C{app:42:backend_events}).

When Redis cannot answer (down, restarting, saturated, slow past the check
timeout, or refusing the script), a check is counted on this node instead
(a L{MemoryRateLimiter}): limits keep holding per node, so the cluster
admits at most the node count times the limit, and an app server's triggers
never fail only because Redis blinked. The first such check of an outage is
logged, and the return with how many checks were counted locally;
L{RedisRateLimiter.degraded_checks} counts them all.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from sockudo_tw.adapters._redis_link import LuaScript, RedisLink
from sockudo_tw.ratelimit import IRateLimiter, RateLimitResult
from sockudo_tw.ratelimit.memory import MemoryRateLimiter
from sockudo_tw.redisurl import parse_redis_url

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = ["FIXED_WINDOW", "RedisRateLimiter", "redis_rate_limiter_from_config"]

FIXED_WINDOW = LuaScript(
    (resources.files(__package__) / "redis_scripts" / "fixed_window.lua").read_text("utf-8")
)
"""
The check: C{KEYS[1]} the window key; C{ARGV} max requests, window in ms,
cost; returns C{[admitted, count, ms left]}.
"""

#: The pub/sub channel the link's subscriber connection holds; nothing is
#: published on it (the limiter only runs commands).
_CHANNEL = b"sockudo-tw#ratelimit"


def _no_message(payload: bytes) -> None:
    """
    Nothing is published on the limiter's channel.
    """


@implementer(IRateLimiter)
class RedisRateLimiter(Service):
    """
    Fixed windows per key in Redis, shared by every node on the same Redis
    and prefix; a service owning its L{RedisLink} (started and stopped with
    it).

    @ivar degraded_checks: checks counted on this node because Redis could
        not answer them.
    @ivar outages: how many times checks started to be counted locally.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, link: RedisLink, prefix: str, timeout: float = 1.0
    ) -> None:
        """
        @param link: the Redis connection; give it C{scripts=[FIXED_WINDOW]}
            so the script is loaded on every (re)connect.
        @param prefix: prepended to every limiter key.
        @param timeout: how long a check waits for Redis before it is
            counted locally; checks sit on the request path.
        """
        self._clock = clock
        self.link = link
        self._prefix = prefix
        self._timeout = timeout
        self._local = MemoryRateLimiter(clock)
        self.degraded_checks = 0
        self.outages = 0
        self._degraded_since: float | None = None
        self._degraded_in_outage = 0
        self._started_at = 0.0
        self._connecting: list[Deferred[None]] = []
        link.observe_command_ready(self._command_ready)

    def startService(self) -> None:
        """
        Connect to Redis.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._started_at = self._clock.seconds()
        self.link.startService()

    def stopService(self) -> Deferred[None]:
        """
        Close the Redis connections; checks from now on are counted locally.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        return self.link.stopService()

    def cluster_links(self) -> dict[str, bool]:
        """
        Whether the limiter's Redis command connection is up, in the shape
        of the C{cluster_link_up} gauge's source.
        """
        return {"rate_limiter": self.link.commands.up}

    def hit(
        self, key: str, max_requests: int, window_seconds: float, cost: int = 1
    ) -> Deferred[RateLimitResult]:
        """
        Count C{cost} against C{key} in Redis; never fails (see the module
        docstring for what happens when Redis does not answer).
        """
        return Deferred.fromCoroutine(self._hit(key, max_requests, window_seconds, cost))

    async def _hit(
        self, key: str, max_requests: int, window_seconds: float, cost: int
    ) -> RateLimitResult:
        """
        Run the check in Redis, or on this node's own windows if Redis
        does not answer it.
        """
        window_ms = max(1, round(window_seconds * 1000))
        if not self.link.commands.ever_up and self.running:
            await self._first_connection()
        try:
            reply = await self._check(self._prefix + key, max_requests, window_ms, cost)
            admitted, count, left_ms = (int(x) for x in reply)
        except Exception as e:
            self._note_degraded(e)
            return await self._local.hit(key, max_requests, window_seconds, cost)
        if self._degraded_since is not None:
            self._note_restored()
        return RateLimitResult(
            admitted == 1, max_requests, max(0, max_requests - count), math.ceil(left_ms / 1000)
        )

    async def _first_connection(self) -> None:
        """
        Wait (at most the check timeout after the start) for the first
        connection: a request that arrives while the daemon is still
        dialling Redis is counted with the cluster, not on this node.
        """
        remaining = self._started_at + self._timeout - self._clock.seconds()
        if remaining <= 0:
            return
        waiter: Deferred[None] = Deferred()
        self._connecting.append(waiter)
        waiter.addTimeout(remaining, self._clock)
        try:
            await waiter
        except defer.TimeoutError:
            pass
        finally:
            if waiter in self._connecting:
                self._connecting.remove(waiter)

    def _command_ready(self) -> None:
        """
        The command connection is ready: release the checks waiting for it.
        """
        waiting, self._connecting = self._connecting, []
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(None)

    async def _check(self, key: str, max_requests: int, window_ms: int, cost: int) -> Any:
        """
        EVALSHA the check; if Redis lost the script (restart, SCRIPT FLUSH),
        load it again and retry once.
        """
        evalsha = ("EVALSHA", FIXED_WINDOW.sha, 1, key, max_requests, window_ms, cost)
        try:
            return await self.link.command(*evalsha, timeout=self._timeout)
        except txredisapi.ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        await self.link.command("SCRIPT", "LOAD", FIXED_WINDOW.source, timeout=self._timeout)
        return await self.link.command(*evalsha, timeout=self._timeout)

    def _note_degraded(self, error: Exception) -> None:
        """
        Count a check Redis did not answer; log the first of an outage.
        """
        self.degraded_checks += 1
        self._degraded_in_outage += 1
        if self._degraded_since is not None:
            return
        self._degraded_since = self._clock.seconds()
        self.outages += 1
        if self.running:
            self.log.warn(
                "Rate limiter Redis did not answer ({why}); counting rate limits on "
                "this node only until it does",
                why=str(error) or type(error).__name__,
            )

    def _note_restored(self) -> None:
        """
        Redis answers again: log how long checks were counted locally.
        """
        assert self._degraded_since is not None
        self.log.info(
            "Rate limiter Redis answers again after {seconds:.1f}s; {count} checks "
            "were counted on this node only",
            seconds=self._clock.seconds() - self._degraded_since,
            count=self._degraded_in_outage,
        )
        self._degraded_since = None
        self._degraded_in_outage = 0


def redis_rate_limiter_from_config(config: ServerConfig, reactor: Any) -> RedisRateLimiter:
    """
    The limiter for C{rate_limiter.driver: redis}: Redis at
    C{rate_limiter.redis.url_override} (C{REDIS_URL}), else C{database.redis};
    keys under C{rate_limiter.redis.prefix}. Not started.
    """
    limiter_config = config.rate_limiter
    server = parse_redis_url(limiter_config.redis_url_override or config.database_redis.url)
    link = RedisLink(
        reactor,
        server.endpoint(reactor, timeout=5),
        _CHANNEL,
        _no_message,
        scripts=[FIXED_WINDOW],
        password=server.password,
        username=server.username,
        db=server.db,
        # A stalled Redis is aborted and redialled quickly; meanwhile
        # checks time out after one second and are counted locally.
        ping_interval=5.0,
        ping_timeout=2.0,
    )
    return RedisRateLimiter(reactor, link, limiter_config.redis_prefix)
