"""
The backends' driver registries: each package (C{adapters}, C{appstores},
C{caches}, C{queues}, C{ratelimit}) chooses its driver by name in one
C{DRIVERS} table, and every name the config accepts has an entry there
while the names sockudo-tw does not implement are refused at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw import adapters, appstores, caches, queues, ratelimit
from sockudo_tw.config import (
    ADAPTER_DRIVERS,
    APP_MANAGER_DRIVERS,
    CACHE_DRIVERS,
    QUEUE_DRIVERS,
    ConfigError,
    parse_config,
)
from sockudo_tw.webhooks import RedisPendingLeaves


def accepted(section: str, driver: str, **extra: Any) -> bool:
    """
    Whether the config loads with C{<section>.driver: <driver>}.
    """
    try:
        parse_config({section: {"driver": driver, **extra}}, {})
    except ConfigError:
        return False
    return True


class RegistryTests(SynchronousTestCase):
    """
    Every driver name the config lets through is built by a registry entry.
    """

    def check(self, section: str, names: Any, drivers: Mapping[str, object], **extra: Any) -> None:
        for name in names:
            if accepted(section, name, **extra):
                self.assertIn(name, drivers, f"{section}.driver {name!r} has no driver")
            else:
                self.assertNotIn(name, drivers, f"{section}.driver {name!r} refused")

    def test_adapters(self) -> None:
        """
        Every adapter Sockudo has is built: C{local}, C{redis},
        C{redis-cluster} and C{nats}.
        """
        self.check("adapter", ADAPTER_DRIVERS, adapters.DRIVERS, cluster={"nodes": ["a:1"]})
        self.assertEqual(
            sorted(adapters.SUPPORTED_ADAPTER_DRIVERS), ["local", "nats", "redis", "redis-cluster"]
        )

    def test_app_stores(self) -> None:
        """
        Every accepted name (its canonical spelling: C{postgres} is C{pgsql})
        is built; C{scylladb} is refused by the config.
        """
        self.check("app_manager", sorted(set(APP_MANAGER_DRIVERS.values())), appstores.DRIVERS)
        self.assertEqual(sorted(appstores.DRIVERS), ["dynamodb", "memory", "mysql", "pgsql"])

    def test_caches(self) -> None:
        self.check("cache", CACHE_DRIVERS, caches.DRIVERS)

    def test_queues(self) -> None:
        """
        C{none} builds no queue; every other accepted name has a driver.
        """
        self.check("queue", [d for d in QUEUE_DRIVERS if d != "none"], queues.DRIVERS)
        self.assertTrue(accepted("queue", "none"))

    def test_rate_limiters(self) -> None:
        self.check("rate_limiter", CACHE_DRIVERS, ratelimit.DRIVERS, enabled=True)

    def test_memory_drivers(self) -> None:
        """
        The default config builds the memory drivers.
        """
        config = parse_config(None, {})
        clock = Clock()
        self.assertIsInstance(appstores.build_app_store(config, clock), appstores.MemoryAppStore)
        self.assertIsInstance(caches.build_cache(config, clock), caches.MemoryChannelCache)
        self.assertIsInstance(
            ratelimit.build_rate_limiter(config, clock), ratelimit.MemoryRateLimiter
        )
        queue = queues.build_queue(config, clock, lambda url: self.fail(url))
        self.assertIsInstance(queue, queues.MemoryJobQueue)
        parts = adapters.build_adapter(config, clock)
        from sockudo_tw.adapters.local import LocalAdapter
        from sockudo_tw.hooks import NoPusherEvents

        assert isinstance(parts.adapter, LocalAdapter)
        self.assertIs(self.successResultOf(parts.health()), True)
        self.assertIsNone(parts.redis)
        observer = NoPusherEvents()
        parts.observe(observer)
        self.assertIs(parts.adapter.observer, observer)

    def test_redis_adapter(self) -> None:
        """
        The Redis adapter shares its own connection (for held webhook
        leaves) and takes its observer after it is built.
        """
        from sockudo_tw.adapters.redis import RedisAdapter
        from sockudo_tw.hooks import NoPusherEvents

        config = parse_config({"adapter": {"driver": "redis"}}, {})
        parts = adapters.build_adapter(config, Clock())
        assert isinstance(parts.adapter, RedisAdapter)
        self.assertIs(parts.redis, parts.adapter.link)
        observer = NoPusherEvents()
        parts.observe(observer)
        self.assertIs(parts.adapter.observer, observer)

    def test_redis_queue(self) -> None:
        """
        The Redis queue gets its connection from the composition root, for
        C{queue.redis.url_override} or C{database.redis}.
        """
        config = parse_config({"queue": {"driver": "redis"}}, {})
        asked: list[str] = []

        class Commands:
            def execute_command(self, *args: Any) -> Deferred[Any]:
                return fail(ConnectionError())

        def connect(url: str) -> Commands:
            asked.append(url)
            return Commands()

        queue = queues.build_queue(config, Clock(), connect)
        self.assertIsInstance(queue, queues.RedisJobQueue)
        self.assertEqual(asked, [config.database_redis.url])


class LuaScriptTests(SynchronousTestCase):
    """
    The Redis adapter's Lua scripts ship as package data files.
    """

    def test_package_data(self) -> None:
        from sockudo_tw.adapters.redis import APPLY, HEARTBEAT, JOIN

        folder = resources.files("sockudo_tw.adapters") / "redis_scripts"
        names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))
        self.assertEqual(names, ["apply.lua", "common.lua", "heartbeat.lua", "join.lua"])
        common = (folder / "common.lua").read_text("utf-8")
        self.assertTrue(APPLY.source.startswith(common))
        self.assertTrue(JOIN.source.startswith(common))
        self.assertEqual(HEARTBEAT.source, (folder / "heartbeat.lua").read_text("utf-8"))


class PendingLeavesOutageTests(SynchronousTestCase):
    """
    Held leaves in Redis, while Redis cannot answer: nothing is lost.
    """

    def test_unreachable(self) -> None:
        """
        C{cancel} says "not held" (the flip-back event is sent) and C{claim}
        says "held" (the held event is sent); nothing fails.
        """

        class Down:
            def execute_command(self, *args: Any) -> Deferred[Any]:
                return fail(ConnectionError("down"))

        leaves = RedisPendingLeaves(Down(), "p:")
        self.assertIsNone(self.successResultOf(leaves.hold("k")))
        self.assertIs(self.successResultOf(leaves.cancel("k")), False)
        self.assertIs(self.successResultOf(leaves.claim("k")), True)
        self.flushLoggedErrors()
