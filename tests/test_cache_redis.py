"""
Tests for L{sockudo_tw.caches.redis}: the Redis cache driver against the
protocol-level fake Redis (L{tests.fake_redis}, on a L{MemoryReactorClock})
including the WebSocket subscribe path when the cache answers later; against
the real Redis on 127.0.0.1:6379 (a unique key prefix per test, its keys
deleted afterwards) and a private C{redis-server} that a test stops; and two
real C{twistd sockudo} nodes sharing one Redis, with the local and with the
Redis adapter. Without Redis these fail under C{CI=true} and skip otherwise.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import fakeredis._socket._base
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sockudo_tw.adapters._redis_link import RedisLink
from sockudo_tw.caches import DRIVERS, IChannelCache, build_cache
from sockudo_tw.caches.redis import FETCH, RedisChannelCache
from sockudo_tw.config import CacheConfig, DatabaseRedisConfig, ServerConfig
from tests.blocking_clients import PusherSocket, trigger
from tests.fake_redis import FakeRedisServer, _Clock
from tests.interop_harness import APP_ID, APP_KEY, ServerProcess, app_config
from tests.test_redis_cluster import PrivateRedis, delete_keys, require_redis
from tests.wsclient import Harness

FRAME = b'{"event":"news","channel":"cache-x","data":"{\\"n\\":1}"}'


def _no_message(payload: bytes) -> None:
    """
    Nothing is published on a cache's link.
    """


def make_link(reactor: Any, host: str = "127.0.0.1", port: int = 6379) -> RedisLink:
    """
    A link as L{sockudo_tw.caches.redis.redis_cache_from_config} builds it.
    """
    return RedisLink(
        reactor,
        TCP4ClientEndpoint(reactor, host, port),
        b"sockudo-tw#cache",
        _no_message,
        scripts=(FETCH,),
        ping_interval=5.0,
        ping_timeout=2.0,
        initial_delay=0.2,
        max_delay=2.0,
    )


class FakeNode:
    """
    A L{RedisChannelCache} on a L{MemoryReactorClock}, connected to a
    L{FakeRedisServer} whose key expiry follows the same clock.
    """

    def __init__(self, case: SynchronousTestCase, ttl: float = 60.0, start: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        self.server = FakeRedisServer(self.reactor)
        self.server.patch_time(case.patch)
        case.patch(fakeredis._socket._base, "time", _Clock(self.reactor))
        self.cache = RedisChannelCache(
            make_link(self.reactor), self.reactor, prefix="t:", ttl=ttl, timeout=2.0
        )
        case.addCleanup(self.stop)
        if start:
            self.cache.startService()
            self.flush()

    def flush(self) -> None:
        """
        Accept connections and move bytes until quiet.
        """
        self.server.flush(self.reactor)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """
        Let C{seconds} pass on the clock, flushing after every step.
        """
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.flush()

    def result(self, d: Deferred[Any]) -> Any:
        """
        Flush, then what C{d} fired with (it must have fired).
        """
        self.flush()
        got: list[Any] = []
        d.addBoth(got.append)
        if not got:
            raise AssertionError("no result yet")
        return got[0]

    def commands(self, name: str) -> list[list[Any]]:
        """
        The commands named C{name} the server received.
        """
        return [c for c in self.server.log if c[0] == name]

    def stop(self) -> None:
        """
        Stop the cache if it runs.
        """
        if self.cache.running:
            self.cache.stopService()
            self.flush()

    def outage(self) -> None:
        """
        Redis goes away and refuses new connections.
        """
        self.server.accepting = False
        self.server.drop_connections()
        self.flush()


def warnings(logged: EventLoggingObserver) -> list[str]:
    """
    The formats of the warnings the cache logged.
    """
    return [
        e["log_format"]
        for e in logged
        if e["log_level"] is LogLevel.warn
        and e.get("log_namespace", "").startswith("sockudo_tw.caches.redis")
    ]


class RedisChannelCacheTests(SynchronousTestCase):
    """
    L{RedisChannelCache} against the protocol-level fake Redis.
    """

    def test_interface(self) -> None:
        """
        The driver provides L{IChannelCache} and is registered as C{redis}.
        """
        node = FakeNode(self)
        self.assertTrue(verifyObject(IChannelCache, node.cache))
        self.assertIn("redis", DRIVERS)

    def test_store_then_fetch(self) -> None:
        """
        A stored frame comes back with its remaining TTL, under Sockudo's key
        layout, written with one C{SET ... PX}.
        """
        node = FakeNode(self, ttl=60)
        self.assertIsNone(node.result(node.cache.store("1", "cache-x", FRAME)))
        key = b"t::app:1:channel:cache-x:cache_miss"
        self.assertEqual(node.commands("SET"), [["SET", key, FRAME, b"PX", b"60000"]])
        frame, left = node.result(node.cache.fetch("1", "cache-x"))
        self.assertEqual((frame, left), (FRAME, 60.0))
        node.advance(10)
        frame, left = node.result(node.cache.fetch("1", "cache-x"))
        self.assertAlmostEqual(left, 50.0, delta=0.2)

    def test_fetch_is_one_command(self) -> None:
        """
        A fetch sends exactly one command (the script), nothing else.
        """
        node = FakeNode(self)
        node.result(node.cache.store("1", "cache-x", FRAME))
        before = len(node.server.log)
        node.result(node.cache.fetch("1", "cache-x"))
        self.assertEqual(
            [c[:4] for c in node.server.log[before:]],
            [["EVALSHA", FETCH.sha.encode(), b"1", b"t::app:1:channel:cache-x:cache_miss"]],
        )

    def test_miss_and_expiry(self) -> None:
        """
        Nothing stored is a miss; an entry is gone once its TTL has passed;
        entries are per app and channel.
        """
        node = FakeNode(self, ttl=30)
        self.assertIsNone(node.result(node.cache.fetch("1", "cache-x")))
        node.result(node.cache.store("1", "cache-x", FRAME))
        self.assertIsNone(node.result(node.cache.fetch("2", "cache-x")))
        self.assertIsNone(node.result(node.cache.fetch("1", "cache-y")))
        node.advance(29.5)
        self.assertIsNotNone(node.result(node.cache.fetch("1", "cache-x")))
        node.advance(1)
        self.assertIsNone(node.result(node.cache.fetch("1", "cache-x")))

    def test_store_replaces_and_restarts_ttl(self) -> None:
        """
        A new store replaces the frame and restarts its TTL.
        """
        node = FakeNode(self, ttl=30)
        node.result(node.cache.store("1", "cache-x", b"old"))
        node.advance(20)
        node.result(node.cache.store("1", "cache-x", b"new"))
        node.advance(20)
        self.assertEqual(node.result(node.cache.fetch("1", "cache-x"))[0], b"new")

    def test_entry_without_expiry(self) -> None:
        """
        An entry someone wrote without a TTL is served with the configured
        TTL as its time left.
        """
        node = FakeNode(self, ttl=30)
        node.result(node.cache.link.command("SET", node.cache.key("1", "cache-x"), b"f"))
        self.assertEqual(node.result(node.cache.fetch("1", "cache-x")), (b"f", 30.0))

    def test_script_flushed(self) -> None:
        """
        After C{SCRIPT FLUSH} the fetch falls back to C{EVAL} and still
        answers.
        """
        node = FakeNode(self)
        node.result(node.cache.store("1", "cache-x", FRAME))
        node.result(node.cache.link.command("SCRIPT", "FLUSH"))
        self.assertEqual(node.result(node.cache.fetch("1", "cache-x"))[0], FRAME)
        self.assertEqual(len(node.commands("EVAL")), 1)

    def test_waits_for_first_connection(self) -> None:
        """
        Right after start, operations wait for the first connection instead
        of answering a miss.
        """
        node = FakeNode(self, start=False)
        node.cache.startService()
        stored = node.cache.store("1", "cache-x", FRAME)
        fetched = node.cache.fetch("1", "cache-x")
        self.assertNoResult(fetched)
        node.flush()
        self.assertIsNone(self.successResultOf(stored))
        self.assertEqual(self.successResultOf(fetched), (FRAME, 60.0))

    def test_never_reachable(self) -> None:
        """
        When Redis cannot be reached at start, operations answer (a miss, a
        dropped store) after at most the timeout, and from then on at once;
        each kind is logged once.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        node = FakeNode(self, start=False)
        node.server.accepting = False
        node.cache.startService()
        node.flush()
        fetched = node.cache.fetch("1", "cache-x")
        stored = node.cache.store("1", "cache-x", FRAME)
        node.advance(2.0)
        self.assertIsNone(self.successResultOf(fetched))
        self.assertIsNone(self.successResultOf(stored))
        for _ in range(5):
            self.assertIsNone(self.successResultOf(node.cache.fetch("1", "cache-x")))
            self.assertIsNone(self.successResultOf(node.cache.store("1", "cache-x", FRAME)))
        self.assertEqual((node.cache.fetches_failed, node.cache.stores_dropped), (6, 6))
        self.assertEqual(len(warnings(logged)), 2, warnings(logged))

    def test_outage_logged_once_and_recovery(self) -> None:
        """
        During an outage fetches are misses and stores are dropped, at once
        and without failing; each kind is logged once per outage, the
        recovery once with the counts; a second outage is logged again.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        node = FakeNode(self)
        node.result(node.cache.store("1", "cache-x", FRAME))
        node.outage()
        for _ in range(3):
            self.assertIsNone(self.successResultOf(node.cache.fetch("1", "cache-x")))
            self.assertIsNone(self.successResultOf(node.cache.store("1", "cache-y", FRAME)))
        self.assertEqual(len(warnings(logged)), 2)
        node.server.accepting = True
        node.advance(3)
        recovered = [e for e in logged if e["log_format"].startswith("Redis cache answers again")]
        self.assertEqual([(e["stores"], e["fetches"]) for e in recovered], [(3, 3)])
        self.assertEqual(node.result(node.cache.fetch("1", "cache-x"))[0], FRAME)
        node.outage()
        self.assertIsNone(self.successResultOf(node.cache.fetch("1", "cache-x")))
        self.assertEqual(len(warnings(logged)), 3)

    def test_hung_server(self) -> None:
        """
        A server that accepts commands and never answers costs at most the
        timeout: the fetch is a miss, the store is dropped.
        """
        node = FakeNode(self)
        node.server.on_command = lambda proto, name, args: name not in ("EVALSHA", "SET")
        fetched = node.cache.fetch("1", "cache-x")
        stored = node.cache.store("1", "cache-x", FRAME)
        node.flush()
        self.assertNoResult(fetched)
        node.advance(2.0)
        self.assertIsNone(self.successResultOf(fetched))
        self.assertIsNone(self.successResultOf(stored))

    def test_stop_closes_connection(self) -> None:
        """
        Stopping the cache closes its connections; later operations answer
        at once.
        """
        node = FakeNode(self)
        self.assertGreater(len(node.server.connections), 0)
        node.stop()
        self.assertEqual(node.server.connections, [])
        self.assertIsNone(self.successResultOf(node.cache.fetch("1", "cache-x")))

    def test_stop_before_connected(self) -> None:
        """
        Operations waiting for the first connection answer when the cache
        stops.
        """
        node = FakeNode(self, start=False)
        node.cache.startService()
        fetched = node.cache.fetch("1", "cache-x")
        node.cache.stopService()
        # The connection attempt was abandoned; the fake must not take it.
        node.reactor.tcpClients.clear()
        self.assertIsNone(self.successResultOf(fetched))


class BuildTests(SynchronousTestCase):
    """
    L{build_cache} with C{cache.driver: redis}.
    """

    def test_from_config(self) -> None:
        """
        The prefix is C{cache.redis.prefix}, the TTL
        C{channel_limits.cache_ttl}, the server C{cache.redis.url_override}.
        """
        config = ServerConfig(
            cache=CacheConfig(
                driver="redis", redis_prefix="p:", redis_url_override="redis://:pw@10.1.2.3:7000/4"
            ),
            channel_cache_ttl=90,
        )
        cache = build_cache(config, MemoryReactorClock())
        assert isinstance(cache, RedisChannelCache)
        self.assertEqual((cache.prefix, cache.ttl), ("p:", 90.0))
        self.assertEqual((cache.link.password, cache.link.db), ("pw", 4))
        self.assertEqual(cache.link.endpoint._hostText, "10.1.2.3")  # type: ignore[attr-defined]
        self.assertEqual(cache.link.endpoint._port, 7000)  # type: ignore[attr-defined]

    def test_database_redis_fallback(self) -> None:
        """
        Without C{cache.redis.url_override}, C{database.redis} is used.
        """
        config = ServerConfig(
            cache=CacheConfig(driver="redis"),
            database_redis=DatabaseRedisConfig(host="10.9.9.9", port=6390, db=2),
        )
        cache = build_cache(config, MemoryReactorClock())
        assert isinstance(cache, RedisChannelCache)
        self.assertEqual(cache.prefix, "sockudo_cache:")
        self.assertEqual(cache.link.db, 2)
        self.assertEqual(cache.link.endpoint._hostText, "10.9.9.9")  # type: ignore[attr-defined]


class SubscribeGlueTests(SynchronousTestCase):
    """
    The WebSocket subscribe path with a cache that answers later.
    """

    def setUp(self) -> None:
        """
        A WebSocket harness whose factory uses a Redis cache on the fake.
        """
        self.node = FakeNode(self)
        self.h = Harness()
        self.h.factory.cache = self.node.cache

    def subscribe(self, channel: str) -> Any:
        """
        A new client that asked to subscribe to C{channel}.
        """
        client = self.h.connect()
        client.send({"event": "pusher:subscribe", "data": {"channel": channel}})
        self.h.flush(client)
        return client

    def test_replay_after_subscription_succeeded(self) -> None:
        """
        C{subscription_succeeded} goes out at once; the replay follows when
        Redis answers.
        """
        self.node.result(self.node.cache.store("1", "cache-x", FRAME))
        client = self.subscribe("cache-x")
        self.assertEqual(
            [f["event"] for f in client.frames],
            ["pusher:connection_established", "pusher_internal:subscription_succeeded"],
        )
        self.node.flush()
        self.h.flush(client)
        self.assertEqual(client.frames[-1], json.loads(FRAME))
        self.assertEqual(len(client.frames), 3)

    def test_cache_miss_later(self) -> None:
        """
        An empty cache channel gets C{pusher:cache_miss} once Redis answers.
        """
        client = self.subscribe("cache-empty")
        self.node.flush()
        self.h.flush(client)
        self.assertEqual(
            client.frames[-1],
            {"event": "pusher:cache_miss", "channel": "cache-empty", "data": "{}"},
        )

    def test_client_gone_before_answer(self) -> None:
        """
        A client that left before Redis answered is sent nothing, and
        nothing fails.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.node.result(self.node.cache.store("1", "cache-x", FRAME))
        client = self.subscribe("cache-x")
        count = len(client.frames)
        client.disconnect()
        self.node.flush()
        self.h.flush(client)
        self.assertEqual(len(client.frames), count)
        self.assertEqual([e for e in logged if e["log_level"] >= LogLevel.error], [])

    def test_redis_down(self) -> None:
        """
        With Redis down the subscriber gets C{pusher:cache_miss} at once.
        """
        self.node.outage()
        client = self.subscribe("cache-x")
        self.assertEqual(client.frames[-1]["event"], "pusher:cache_miss")


class RealRedisTests(TestCase):
    """
    L{RedisChannelCache} against the shared Redis on 127.0.0.1:6379.
    """

    def setUp(self) -> None:
        """
        A key prefix of this test's own, deleted afterwards.
        """
        require_redis(self)
        self.prefix = f"sockudo_tw_cache_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, self.prefix)

    def node(self, port: int = 6379, ttl: float = 60.0) -> RedisChannelCache:
        """
        A started cache on the real reactor, stopped after the test.
        """
        from twisted.internet import reactor

        cache = RedisChannelCache(
            make_link(reactor, port=port), reactor, prefix=self.prefix, ttl=ttl
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        return cache

    async def test_shared_between_nodes(self) -> None:
        """
        What one node stores, another fetches, under Sockudo's key with the
        configured TTL.
        """
        import redis

        a, b = self.node(), self.node()
        await a.store("1", "cache-x", FRAME)
        frame, left = await b.fetch("1", "cache-x")  # type: ignore[misc]
        self.assertEqual(frame, FRAME)
        self.assertTrue(55 < left <= 60, left)
        client = redis.Redis(host="127.0.0.1", port=6379)
        self.addCleanup(client.close)
        key = f"{self.prefix}:app:1:channel:cache-x:cache_miss"
        self.assertEqual(client.get(key), FRAME)
        self.assertTrue(55_000 < client.pttl(key) <= 60_000)
        self.assertIsNone(await b.fetch("1", "cache-empty"))

    async def test_expiry(self) -> None:
        """
        An entry expires in Redis after the TTL.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        cache = self.node(ttl=1.0)
        await cache.store("1", "cache-x", FRAME)
        stored_at = reactor.seconds()  # type: ignore[attr-defined]
        self.assertIsNotNone(await cache.fetch("1", "cache-x"))
        # Poll (bounded) until Redis has expired the entry.
        for _ in range(50):
            if await cache.fetch("1", "cache-x") is None:
                break
            await deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        gone_after = reactor.seconds() - stored_at  # type: ignore[attr-defined]
        self.assertIsNone(await cache.fetch("1", "cache-x"))
        self.assertGreaterEqual(gone_after, 0.9)

    async def test_stopped_redis(self) -> None:
        """
        A private C{redis-server} stopped under the cache: fetches are
        misses and stores are dropped promptly, each logged once; after a
        restart on the same port the cache works again.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = PrivateRedis(self)
        await server.start()
        cache = self.node(port=server.port)
        await cache.store("1", "cache-x", FRAME)
        self.assertEqual((await cache.fetch("1", "cache-x"))[0], FRAME)  # type: ignore[index]
        await server.kill_and_wait()
        started = reactor.seconds()  # type: ignore[attr-defined]
        for _ in range(3):
            self.assertIsNone(await cache.fetch("1", "cache-x"))
            self.assertIsNone(await cache.store("1", "cache-x", FRAME))
        self.assertLess(reactor.seconds() - started, 2 * cache.timeout + 0.5)  # type: ignore[attr-defined]
        self.assertEqual(len(warnings(logged)), 2, warnings(logged))
        await server.start()
        # Reap the restarted server before the reactor is checked for leftovers.
        self.addCleanup(lambda: Deferred.fromCoroutine(server.kill_and_wait()))
        for _ in range(100):
            await cache.store("1", "cache-y", FRAME)
            if await cache.fetch("1", "cache-y") is not None:
                break
            await deferLater(reactor, 0.1, lambda: None)  # type: ignore[arg-type]
        self.assertEqual((await cache.fetch("1", "cache-y"))[0], FRAME)  # type: ignore[index]


def _receive_after_subscribe(sock: PusherSocket, channel: str) -> dict[str, Any]:
    """
    Subscribe C{sock} to C{channel}; the first message after
    C{subscription_succeeded}.
    """
    sock.send({"event": "pusher:subscribe", "data": {"channel": channel}})
    first = sock.receive()
    if first.get("event") != "pusher_internal:subscription_succeeded":
        raise AssertionError(f"expected subscription_succeeded, got {first}")
    return sock.receive()


class TwoDaemonTests(TestCase):
    """
    Two C{twistd sockudo} nodes with C{cache.driver: redis} on one Redis:
    an event published through node A replays to a subscriber on node B.
    """

    timeout = 90

    def setUp(self) -> None:
        """
        These tests need the shared Redis.
        """
        require_redis(self)

    async def check(self, adapter: dict[str, Any]) -> None:
        """
        Start nodes A and B with C{adapter}; a subscriber on B gets
        C{pusher:cache_miss} on an empty cache channel, and the event
        published through A's HTTP API on another, kept for the TTL.
        """
        import redis

        prefix = f"sockudo_tw_cache_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, prefix)
        config = {
            "cache": {
                "driver": "redis",
                "redis": {"prefix": prefix, "url_override": "redis://127.0.0.1:6379/0"},
            },
            "channel_limits": {"cache_ttl": 120},
            "adapter": adapter,
        }
        app = app_config(enable_subscription_count=False)
        a = await ServerProcess.start(self, [app], config)
        b = await ServerProcess.start(self, [app], config)

        def scenario() -> tuple[dict[str, Any], int, dict[str, Any]]:
            sock = PusherSocket(("127.0.0.1", b.port), APP_KEY)
            try:
                miss = _receive_after_subscribe(sock, "cache-empty")
                status, body = trigger(("127.0.0.1", a.port), app, "cache-news", "news", {"n": 1})
                if status != 200:
                    raise AssertionError(f"trigger answered {status}: {body!r}")
                late = PusherSocket(("127.0.0.1", b.port), APP_KEY)
                try:
                    replay = _receive_after_subscribe(late, "cache-news")
                finally:
                    late.close()
            finally:
                sock.close()
            return miss, status, replay

        try:
            miss, _, replay = await threads.deferToThread(scenario)
        except Exception as e:
            self.fail(f"{e}\nnode A:\n{a.log_tail(30)}\nnode B:\n{b.log_tail(30)}")
        self.assertEqual(
            miss, {"event": "pusher:cache_miss", "channel": "cache-empty", "data": "{}"}
        )
        self.assertEqual(
            replay, {"event": "news", "channel": "cache-news", "data": json.dumps({"n": 1})}
        )
        client = redis.Redis(host="127.0.0.1", port=6379)
        self.addCleanup(client.close)
        ttl = client.pttl(f"{prefix}:app:{APP_ID}:channel:cache-news:cache_miss")
        self.assertTrue(100_000 < ttl <= 120_000, ttl)

    async def test_local_adapter(self) -> None:
        """
        With C{adapter.driver: local} the nodes share only the cache.
        """
        await self.check({"driver": "local"})

    async def test_redis_adapter(self) -> None:
        """
        With C{adapter.driver: redis} too.
        """
        prefix = f"sockudo_tw_cache_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, 6379, prefix)
        await self.check(
            {
                "driver": "redis",
                "redis": {
                    "prefix": prefix,
                    "redis_pub_options": {"url": "redis://127.0.0.1:6379/0"},
                },
            }
        )
