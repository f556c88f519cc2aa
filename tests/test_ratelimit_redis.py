# -*- test-case-name: tests.test_ratelimit_redis -*-
"""
Tests for L{sockudo_tw.ratelimit.redis}: the Redis rate limiter.

Unit tests run the real Lua script in fakeredis behind L{FakeRedisServer}
on a L{MemoryReactorClock} (Redis's expiry follows the test clock). The
integration tests use the shared Redis on 127.0.0.1:6379 with a fresh key
prefix (deleted afterwards): two limiters (two nodes) sharing one limit
under a concurrent burst, a private C{redis-server} killed and restarted,
and two real C{twistd sockudo} daemons answering triggers with one
cluster-wide limit (on the local and on the Redis adapter), or with limits
per node while the limiter's Redis is unreachable. Without Redis those
fail under C{CI=true} and skip otherwise.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from typing import Any

import attrs
import fakeredis
import fakeredis._socket._base as fakeredis_base
from twisted.internet import task, threads
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sockudo_tw.adapters._redis_link import RedisLink
from sockudo_tw.config import parse_config
from sockudo_tw.config.schema import RateLimiterConfig
from sockudo_tw.pusher.signing import sign_api_query
from sockudo_tw.ratelimit import (
    DRIVERS,
    IRateLimiter,
    MemoryRateLimiter,
    RateLimitResult,
    build_rate_limiter,
)
from sockudo_tw.ratelimit.redis import (
    FIXED_WINDOW,
    RedisRateLimiter,
    redis_rate_limiter_from_config,
)
from tests.blocking_clients import http_request
from tests.fake_redis import FakeRedisServer
from tests.interop_harness import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    ServerProcess,
    app_config,
    free_port,
)
from tests.test_redis_cluster import PrivateRedis, delete_keys, require_redis


class _ClockTime:
    """
    Stands in for the C{time} module where fakeredis stamps each command,
    so keys expire on the test clock.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def time(self) -> float:
        """
        The test clock's seconds.
        """
        return self._clock.seconds()


def _no_message(payload: bytes) -> None:
    """
    The limiter's link receives nothing.
    """


class _Fixture:
    """
    Limiters ("nodes") sharing one fake Redis and one memory reactor.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.server = FakeRedisServer(self.reactor)
        case.patch(fakeredis_base, "time", _ClockTime(self.reactor))
        self.limiters: list[RedisRateLimiter] = []
        case.addCleanup(self.stop)

    def limiter(self, scripts: bool = True, connect: bool = True) -> RedisRateLimiter:
        """
        A started limiter on prefix C{rl:}, its script loaded on connect
        unless C{scripts} is false, connected unless C{connect} is false.
        """
        link = RedisLink(
            self.reactor,
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", 6379),
            b"sockudo-tw#ratelimit",
            _no_message,
            scripts=[FIXED_WINDOW] if scripts else [],
            ping_interval=5.0,
            ping_timeout=2.0,
        )
        limiter = RedisRateLimiter(self.reactor, link, "rl:")
        limiter.startService()
        self.limiters.append(limiter)
        if connect:
            self.flush()
        return limiter

    def flush(self) -> None:
        """
        Move bytes between the limiters and the fake Redis until quiet.
        """
        self.server.flush(self.reactor)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """
        Move the clock in steps, letting the connections work in between.
        """
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.flush()

    def hit(
        self,
        limiter: IRateLimiter,
        key: str = "api:1.2.3.4",
        limit: int = 3,
        window: float = 60,
        cost: int = 1,
    ) -> RateLimitResult:
        """
        One hit, answered by the fake Redis.
        """
        d = limiter.hit(key, limit, window, cost)
        self.flush()
        box: list[Any] = []
        d.addBoth(box.append)
        assert box, "no result"
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        result: RateLimitResult = box[0]
        return result

    def data(self) -> fakeredis.FakeStrictRedis:
        """
        A client on the fake Redis's data, to look at or change keys.
        """
        return fakeredis.FakeStrictRedis(server=self.server.data)

    def stop(self) -> None:
        """
        Stop every limiter started here.
        """
        for limiter in self.limiters:
            if limiter.running:
                limiter.stopService()
        self.flush()


def _r(allowed: bool, limit: int, remaining: int, reset_after: int) -> RateLimitResult:
    """
    A L{RateLimitResult}, briefly.
    """
    return RateLimitResult(allowed, limit, remaining, reset_after)


class RedisRateLimiterTests(SynchronousTestCase):
    """
    L{RedisRateLimiter} against the real script in fakeredis.
    """

    def setUp(self) -> None:
        self.fx = _Fixture(self)

    def test_interface(self) -> None:
        """
        It provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.fx.limiter()))

    def test_admits_exactly_max(self) -> None:
        """
        A window admits exactly C{max_requests}, counting C{remaining} down
        to 0, then refuses; the key (prefix plus limiter key) holds the
        count and expires with the window.
        """
        limiter = self.fx.limiter()
        results = [self.fx.hit(limiter) for _ in range(5)]
        self.assertEqual(
            results,
            [_r(True, 3, 2, 60), _r(True, 3, 1, 60), _r(True, 3, 0, 60)]
            + [_r(False, 3, 0, 60)] * 2,
        )
        self.assertEqual(self.fx.data().get("rl:api:1.2.3.4"), b"3")
        self.assertEqual(self.fx.data().pttl("rl:api:1.2.3.4"), 60000)

    def test_refused_hit_not_counted(self) -> None:
        """
        A refused hit leaves the count as it was: a cheaper hit that fits
        is still admitted.
        """
        limiter = self.fx.limiter()
        self.assertEqual(self.fx.hit(limiter, limit=5, cost=3), _r(True, 5, 2, 60))
        self.assertEqual(self.fx.hit(limiter, limit=5, cost=3), _r(False, 5, 2, 60))
        self.assertEqual(self.fx.hit(limiter, limit=5, cost=2), _r(True, 5, 0, 60))
        self.assertEqual(self.fx.hit(limiter, limit=5, cost=1), _r(False, 5, 0, 60))
        self.assertEqual(self.fx.data().get("rl:api:1.2.3.4"), b"5")

    def test_cost_above_max(self) -> None:
        """
        A hit costing more than the whole window is refused with the window
        untouched (as the memory limiter does).
        """
        limiter = self.fx.limiter()
        self.assertEqual(self.fx.hit(limiter, limit=3, cost=4), _r(False, 3, 3, 60))
        self.assertEqual(self.fx.hit(limiter, limit=3, cost=3), _r(True, 3, 0, 60))

    def test_window_reset(self) -> None:
        """
        C{reset_after} counts down the whole seconds left (rounded up), and
        once the window has passed the key is admitted again.
        """
        limiter = self.fx.limiter()
        self.fx.hit(limiter, limit=1, window=10)
        self.fx.advance(2.5)
        self.assertEqual(self.fx.hit(limiter, limit=1, window=10), _r(False, 1, 0, 8))
        self.fx.advance(7.5)
        self.assertEqual(self.fx.hit(limiter, limit=1, window=10), _r(True, 1, 0, 10))

    def test_fractional_window(self) -> None:
        """
        The per-second app limits use C{window_seconds=1.0}; windows are
        kept in milliseconds, so fractions work too.
        """
        limiter = self.fx.limiter()
        self.assertEqual(self.fx.hit(limiter, limit=1, window=0.5), _r(True, 1, 0, 1))
        self.assertEqual(self.fx.data().pttl("rl:api:1.2.3.4"), 500)
        self.fx.advance(0.5)
        self.assertTrue(self.fx.hit(limiter, limit=1, window=0.5).allowed)

    def test_keys_apart(self) -> None:
        """
        Each key has its own window.
        """
        limiter = self.fx.limiter()
        self.assertTrue(self.fx.hit(limiter, key="api:a", limit=1).allowed)
        self.assertTrue(self.fx.hit(limiter, key="api:b", limit=1).allowed)
        self.assertFalse(self.fx.hit(limiter, key="api:a", limit=1).allowed)

    def test_agrees_with_memory_limiter(self) -> None:
        """
        Over a mixed sequence of costs and clock steps, the Redis limiter
        answers exactly as the memory one does.
        """
        limiter = self.fx.limiter()
        memory = MemoryRateLimiter(self.fx.reactor)
        # Binary fractions of a second: the memory limiter's float clock and
        # Redis's milliseconds then agree to the last digit.
        steps = [(0.0, 1), (0.25, 2), (0.0, 3), (1.125, 1), (2.0, 4), (0.75, 1), (0.0, 1)]
        steps += [(0.125, 2)] * 12 + [(3.25, 5), (0.25, 1), (4.0, 6), (0.5, 1), (2.5, 5)]
        for advance, cost in steps:
            self.fx.reactor.advance(advance)
            self.fx.flush()
            expected = self.successResultOf(memory.hit("k", 5, 3, cost))
            self.assertEqual(self.fx.hit(limiter, key="k", limit=5, window=3, cost=cost), expected)

    def test_two_nodes_share_one_limit(self) -> None:
        """
        Two limiters on one Redis count against the same window: together
        they admit exactly C{max_requests}.
        """
        a, b = self.fx.limiter(), self.fx.limiter()
        pending = [(a if i % 2 else b).hit("api:x", 10, 60) for i in range(30)]
        self.fx.flush()
        results = [self.successResultOf(d) for d in pending]
        self.assertEqual(sum(r.allowed for r in results), 10)
        self.assertEqual(sorted(r.remaining for r in results if r.allowed), list(range(10)))

    def test_script_loaded_on_connect(self) -> None:
        """
        The script is loaded when the connection is made, so checks run
        EVALSHA with the key declared.
        """
        limiter = self.fx.limiter()
        self.fx.hit(limiter)
        names = [entry[0] for entry in self.fx.server.log]
        self.assertIn("SCRIPT", names)
        [evalsha] = [entry for entry in self.fx.server.log if entry[0] == "EVALSHA"]
        self.assertEqual(evalsha[1:4], [FIXED_WINDOW.sha.encode(), b"1", b"rl:api:1.2.3.4"])

    def test_noscript_reloads(self) -> None:
        """
        When Redis has lost the script (a restart, C{SCRIPT FLUSH}), the
        check loads it again and is answered from Redis, not locally.
        """
        limiter = self.fx.limiter(scripts=False)
        self.assertEqual(self.fx.hit(limiter), _r(True, 3, 2, 60))
        self.fx.data().script_flush()
        self.assertEqual(self.fx.hit(limiter), _r(True, 3, 1, 60))
        names = [entry[0] for entry in self.fx.server.log]
        self.assertEqual(names.count("SCRIPT"), 2)
        self.assertEqual(limiter.degraded_checks, 0)

    def test_redis_down_counts_locally(self) -> None:
        """
        While Redis is unreachable, checks are answered at once by this
        node's own windows (never failing, never unlimited); the outage is
        logged once, and so is the return, after which Redis counts again.
        """
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        limiter = self.fx.limiter()
        self.fx.hit(limiter, limit=3)
        self.fx.server.accepting = False
        self.fx.server.drop_connections()
        self.fx.flush()
        results = [self.fx.hit(limiter, limit=3) for _ in range(4)]
        self.assertEqual([r.allowed for r in results], [True, True, True, False])
        self.assertEqual((limiter.degraded_checks, limiter.outages), (4, 1))
        warnings = [
            e
            for e in observer
            if e["log_level"] == LogLevel.warn and "Rate limiter Redis" in e["log_format"]
        ]
        self.assertEqual(len(warnings), 1)
        self.fx.server.accepting = True
        self.fx.advance(3)
        self.assertEqual(self.fx.hit(limiter, limit=3), _r(True, 3, 1, 57))
        restored = [e for e in observer if "answers again" in e["log_format"]]
        self.assertEqual([e["count"] for e in restored], [4])

    def test_check_waits_for_first_connection(self) -> None:
        """
        A check arriving while the just-started node is still connecting
        waits for the connection and is counted in Redis, with the cluster.
        """
        limiter = self.fx.limiter(connect=False)
        d = limiter.hit("api:x", 3, 60)
        self.assertNoResult(d)
        self.fx.reactor.advance(0.5)
        self.fx.flush()
        self.assertEqual(self.successResultOf(d), _r(True, 3, 2, 60))
        self.assertEqual(limiter.degraded_checks, 0)
        self.assertEqual(self.fx.data().get("rl:api:x"), b"1")

    def test_unreachable_at_start(self) -> None:
        """
        If Redis cannot be reached at start, checks wait no longer than the
        check timeout after the start, then are counted on the node.
        """
        self.fx.server.accepting = False
        limiter = self.fx.limiter(connect=False)
        self.fx.flush()
        d = limiter.hit("api:x", 3, 60)
        self.fx.reactor.advance(0.6)
        later = limiter.hit("api:x", 3, 60)
        self.assertNoResult(d)
        self.fx.reactor.advance(0.4)
        self.assertEqual(self.successResultOf(d), _r(True, 3, 2, 60))
        self.assertEqual(self.successResultOf(later), _r(True, 3, 1, 60))
        self.assertEqual(self.fx.hit(limiter, key="api:x"), _r(True, 3, 0, 60))
        self.assertEqual(limiter.degraded_checks, 3)

    def test_hung_redis_times_out(self) -> None:
        """
        A Redis that accepts the check but never answers holds it for the
        check timeout (1 s), then the node counts it itself.
        """
        limiter = self.fx.limiter()
        self.fx.server.on_command = lambda protocol, name, args: name != "EVALSHA"
        d = limiter.hit("api:x", 3, 60)
        self.fx.flush()
        self.assertNoResult(d)
        self.fx.reactor.advance(1.0)
        self.assertEqual(self.successResultOf(d), _r(True, 3, 2, 60))
        self.assertEqual(limiter.degraded_checks, 1)

    def test_script_error_counts_locally(self) -> None:
        """
        An error from the script (here a key of another type under the
        prefix) is no reason to fail the request: the node counts it.
        """
        limiter = self.fx.limiter()
        self.fx.data().hset("rl:api:1.2.3.4", "f", "v")
        self.fx.data().pexpire("rl:api:1.2.3.4", 60000)
        self.assertEqual(self.fx.hit(limiter), _r(True, 3, 2, 60))
        self.assertEqual(limiter.degraded_checks, 1)

    def test_stop_closes_link(self) -> None:
        """
        Stopping the limiter closes its Redis connections; later checks
        are counted locally, quietly.
        """
        limiter = self.fx.limiter()
        self.assertTrue(limiter.cluster_links()["rate_limiter"])
        limiter.stopService()
        self.fx.flush()
        self.assertFalse(limiter.cluster_links()["rate_limiter"])
        self.assertEqual(self.fx.server.connections, [])
        self.assertTrue(self.fx.hit(limiter).allowed)


class FromConfigTests(SynchronousTestCase):
    """
    C{rate_limiter.driver: redis} builds the Redis limiter from the config.
    """

    def config(self, **limiter: Any) -> Any:
        """
        A config whose C{database.redis} is 10.0.0.9:6390 and whose
        C{rate_limiter} is the redis driver with C{limiter}'s settings
        (built directly, apart from the config parser's rules).
        """
        base = parse_config({"database": {"redis": {"host": "10.0.0.9", "port": 6390}}}, {})
        return attrs.evolve(base, rate_limiter=RateLimiterConfig(driver="redis", **limiter))

    def test_driver(self) -> None:
        """
        The driver table names it; with the limiter on, it is a
        L{RedisRateLimiter} (a service the composition root starts).
        """
        self.assertIn("redis", DRIVERS)
        limiter = build_rate_limiter(self.config(enabled=True), MemoryReactorClock())
        self.assertIsInstance(limiter, RedisRateLimiter)

    def test_limiter_off_stays_in_memory(self) -> None:
        """
        Sockudo's shipped file names C{redis} with the limiter off: the
        per-app limits then count in memory and nothing dials Redis.
        """
        reactor = MemoryReactorClock()
        limiter = build_rate_limiter(self.config(enabled=False), reactor)
        self.assertIsInstance(limiter, MemoryRateLimiter)
        self.assertEqual(reactor.tcpClients, [])

    def test_database_redis_and_prefix(self) -> None:
        """
        Without C{url_override}, C{database.redis} is dialled; keys carry
        C{rate_limiter.redis.prefix}.
        """
        reactor = MemoryReactorClock()
        limiter = redis_rate_limiter_from_config(
            self.config(enabled=True, redis_prefix="p:"), reactor
        )
        limiter.startService()
        self.addCleanup(limiter.stopService)
        self.assertEqual(limiter.link.endpoint._hostText, "10.0.0.9")
        self.assertEqual(reactor.tcpClients[0][1], 6390)
        self.assertEqual(limiter._prefix, "p:")

    def test_url_override(self) -> None:
        """
        C{rate_limiter.redis.url_override} (C{REDIS_URL}) wins, with its
        credentials and database.
        """
        reactor = MemoryReactorClock()
        limiter = redis_rate_limiter_from_config(
            self.config(enabled=True, redis_url_override="redis://u:pw@10.1.1.1:7000/4"), reactor
        )
        self.assertEqual((limiter.link.username, limiter.link.password), ("u", "pw"))
        self.assertEqual(limiter.link.db, 4)
        limiter.startService()
        self.addCleanup(limiter.stopService)
        self.assertEqual(limiter.link.endpoint._hostText, "10.1.1.1")
        self.assertEqual(reactor.tcpClients[0][1], 7000)


# -- real Redis ---------------------------------------------------------------


def _real_limiter(case: TestCase, prefix: str, port: int = 6379) -> RedisRateLimiter:
    """
    A started limiter on the real reactor and Redis at C{port}, stopped in
    cleanup.
    """
    from twisted.internet import reactor

    link = RedisLink(
        reactor,
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        b"sockudo-tw#ratelimit",
        _no_message,
        scripts=[FIXED_WINDOW],
        initial_delay=0.05,
        max_delay=0.2,
    )
    limiter = RedisRateLimiter(reactor, link, prefix)
    limiter.startService()
    case.addCleanup(limiter.stopService)
    return limiter


async def _until(case: TestCase, check: Any, what: str, within: float = 10.0) -> None:
    """
    Poll C{check()} (a plain or an async function; every 50 ms, at most
    C{within} seconds) until it is true.
    """
    from twisted.internet import reactor

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        await task.deferLater(reactor, 0.05)
    case.fail(f"timed out waiting for {what}")


class RealRedisTests(TestCase):
    """
    The limiter on a real Redis.
    """

    def setUp(self) -> None:
        require_redis(self)
        self.prefix = f"sockudo_test_rl_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, self.prefix)

    async def test_two_nodes_concurrent_burst(self) -> None:
        """
        300 hits at once, split across two limiters with their own
        connections: exactly 100 admitted, each C{remaining} value once.
        """
        a, b = _real_limiter(self, self.prefix), _real_limiter(self, self.prefix)
        await _until(self, lambda: a.link.commands.up and b.link.commands.up, "both links up")
        pending = [(a if i % 2 else b).hit("api:127.0.0.1", 100, 60) for i in range(300)]
        results: list[RateLimitResult] = await gatherResults(pending)
        admitted = [r for r in results if r.allowed]
        self.assertEqual(len(admitted), 100)
        self.assertEqual(sorted(r.remaining for r in admitted), list(range(100)))
        self.assertTrue(all(r.remaining == 0 for r in results if not r.allowed))
        self.assertEqual((a.degraded_checks, b.degraded_checks), (0, 0))
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        self.addCleanup(client.close)
        self.assertEqual(client.get(self.prefix + "api:127.0.0.1"), b"100")

    async def test_cost_and_window_reset(self) -> None:
        """
        Costs count in full across both nodes, a refused one not at all,
        and the window opens again once Redis expires it.
        """
        a, b = _real_limiter(self, self.prefix), _real_limiter(self, self.prefix)
        await _until(self, lambda: a.link.commands.up and b.link.commands.up, "both links up")
        # Long enough that the five hits share one window on a busy machine.
        key, window = "app:1:backend_events", 3.0
        started = time.monotonic()
        self.assertEqual(await a.hit(key, 10, window, 4), _r(True, 10, 6, 3))
        self.assertEqual((await b.hit(key, 10, window, 4)).remaining, 2)
        refused = await a.hit(key, 10, window, 4)
        self.assertEqual((refused.allowed, refused.remaining), (False, 2))
        self.assertIn(refused.reset_after, (1, 2, 3))
        self.assertEqual((await b.hit(key, 10, window, 2)).remaining, 0)
        self.assertFalse((await a.hit(key, 10, window, 1)).allowed)
        admitted: list[RateLimitResult] = []

        async def full_window_again() -> bool:
            result = await b.hit(key, 10, window, 10)
            admitted.append(result)
            return result.allowed

        await _until(self, full_window_again, "the window to end", within=10.0)
        self.assertEqual(admitted[-1], _r(True, 10, 0, 3))
        self.assertGreaterEqual(time.monotonic() - started, window - 0.1)

    async def test_outage_and_return(self) -> None:
        """
        A private Redis killed: checks are answered locally at once; it
        returns (empty, without the script): checks count in Redis again.
        """
        server = PrivateRedis(self)
        await server.start()
        limiter = _real_limiter(self, self.prefix, server.port)
        await _until(self, lambda: limiter.link.commands.up, "the link up")
        self.assertEqual(await limiter.hit("api:x", 2, 60), _r(True, 2, 1, 60))
        await server.kill_and_wait()
        await _until(self, lambda: not limiter.link.commands.up, "the link down")
        local = [await limiter.hit("api:x", 2, 60) for _ in range(3)]
        self.assertEqual([r.allowed for r in local], [True, True, False])
        self.assertEqual(limiter.outages, 1)
        await server.start()
        await _until(self, lambda: limiter.link.commands.up, "the link up again")
        self.assertEqual(await limiter.hit("api:x", 2, 60), _r(True, 2, 1, 60))
        self.assertEqual(limiter.degraded_checks, 3)


# -- two daemons ----------------------------------------------------------------


def _trigger(port: int, index: int) -> tuple[int, dict[str, str]]:
    """
    One signed trigger to the daemon on C{port} (blocking; run in a thread).
    """
    body = json.dumps({"name": "e", "channels": ["c"], "data": str(index)}).encode()
    path = f"/apps/{APP_ID}/events"
    query = sign_api_query(APP_KEY, APP_SECRET, "POST", path, [], body, int(time.time()))
    target = path + "?" + "&".join(f"{k}={v}" for k, v in query)
    headers = {"Content-Type": "application/json"}
    status, answer_headers, _ = http_request(("127.0.0.1", port), "POST", target, body, headers)
    return status, answer_headers


class TwoDaemonTests(TestCase):
    """
    Two C{twistd sockudo} nodes on one Redis limiter: the API limit of one
    client holds across both.
    """

    timeout = 120

    def setUp(self) -> None:
        require_redis(self)
        self.prefix = f"sockudo_test_rl_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, self.prefix)

    async def _triggers_across(
        self, adapter: dict[str, Any], limit: int, count: int, redis_url: str
    ) -> list[tuple[int, dict[str, str]]]:
        """
        Start two nodes limiting the API to C{limit} a minute on the Redis
        at C{redis_url}, and send C{count} triggers alternating between
        them; their statuses and headers.
        """
        config = {
            "adapter": adapter,
            "rate_limiter": {
                "enabled": True,
                "driver": "redis",
                "api_rate_limit": {"max_requests": limit, "window_seconds": 60},
                "redis": {"prefix": self.prefix, "url_override": redis_url},
            },
        }
        nodes = [await ServerProcess.start(self, [app_config()], config) for _ in range(2)]
        answers: list[tuple[int, dict[str, str]]] = []
        for i in range(count):
            answers.append(await threads.deferToThread(_trigger, nodes[i % 2].port, i))
        self.describe = "\n".join(n.log_tail(200) for n in nodes)
        return answers

    async def _exactly_n_across(self, adapter: dict[str, Any]) -> None:
        """
        Triggers alternating between the two nodes: exactly N answered 2xx
        (with the cluster-wide C{X-RateLimit-Remaining}), then 429s.
        """
        limit = 7
        answers = await self._triggers_across(adapter, limit, limit + 8, "redis://127.0.0.1:6379/0")
        statuses = [status for status, _ in answers]
        self.assertEqual(statuses, [200] * limit + [429] * 8, self.describe)
        self.assertNotIn("on this node only", self.describe)
        self.assertEqual(
            [int(h["x-ratelimit-remaining"]) for _, h in answers[:limit]],
            list(range(limit - 1, -1, -1)),
        )
        self.assertTrue(all(h["x-ratelimit-limit"] == str(limit) for _, h in answers))
        self.assertTrue(all(0 < int(h["retry-after"]) <= 60 for _, h in answers[limit:]))

    async def test_redis_down_limits_per_node(self) -> None:
        """
        With the limiter's Redis unreachable the nodes start and serve
        triggers (no 500): each node limits on its own, so two nodes admit
        twice the limit, then answer 429; each logs the outage once.
        """
        dead = free_port()
        answers = await self._triggers_across(
            {"driver": "local"}, 3, 10, f"redis://127.0.0.1:{dead}/0"
        )
        statuses = [status for status, _ in answers]
        self.assertEqual(statuses, [200] * 6 + [429] * 4, self.describe)
        self.assertEqual(self.describe.count("counting rate limits on this node only"), 2)

    async def test_local_adapter(self) -> None:
        """
        With C{adapter.driver: local} (nodes that share nothing else).
        """
        await self._exactly_n_across({"driver": "local"})

    async def test_redis_adapter(self) -> None:
        """
        With C{adapter.driver: redis} on the same Redis.
        """
        adapter_prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, adapter_prefix)
        await self._exactly_n_across(
            {
                "driver": "redis",
                "redis": {
                    "prefix": adapter_prefix,
                    "redis_pub_options": {"url": "redis://127.0.0.1:6379/0"},
                },
            }
        )
