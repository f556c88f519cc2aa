"""
Tests for L{sockudo_tw.appstores.caching.CachedAppStore}: a TTL cache with
refresh-ahead, single flight, bounded negative caching and outage handling
in front of a database of apps, on a L{task.Clock} with a scripted source.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockudo_tw.appstores import IAppSource, IAppStore
from sockudo_tw.appstores.caching import AppStoreUnavailableError, CachedAppStore
from sockudo_tw.pusher.app import App

APP = App(id="1", key="key-1", secret="s")


@implementer(IAppSource)
class ScriptedSource:
    """
    An L{IAppSource} whose every query waits until the test answers it.
    """

    description = "scripted apps"

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any, Deferred[Any]]] = []
        self.closed = False

    def _query(self, what: str, arg: Any = None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.asked.append((what, arg, d))
        return d

    def prepare(self) -> Deferred[None]:
        return self._query("prepare")

    def fetch_by_id(self, app_id: str) -> Deferred[App | None]:
        return self._query("id", app_id)

    def fetch_by_key(self, key: str) -> Deferred[App | None]:
        return self._query("key", key)

    def fetch_all(self) -> Deferred[list[App]]:
        return self._query("all")

    def close(self) -> Deferred[None]:
        self.closed = True
        return Deferred.fromCoroutine(_nothing())

    def answer(self, value: Any) -> None:
        """
        Answer the oldest open query with C{value} (an exception fails it).
        """
        for _, _, d in self.asked:
            if not d.called:
                if isinstance(value, Exception):
                    d.errback(value)
                else:
                    d.callback(value)
                return
        raise AssertionError("no open query")

    def open_queries(self) -> list[tuple[str, Any]]:
        return [(what, arg) for what, arg, d in self.asked if not d.called]


async def _nothing() -> None:
    return None


def result_of(d: Deferred[Any]) -> Any:
    """
    The result C{d} already has (it must have fired).
    """
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "the Deferred has not fired"
    return got[0]


class CachedAppStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ScriptedSource()
        self.store = CachedAppStore(self.source, self.clock, ttl=60, retry_seconds=5)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def errors(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_level").name == "error"]

    def test_interface(self) -> None:
        verifyObject(IAppStore, self.store)
        verifyObject(IAppSource, self.source)

    def test_known_app_served_from_memory(self) -> None:
        """
        Once read, an app is served at once (a fired Deferred) by key and
        by id without asking the database again before half the TTL.
        """
        d = self.store.find_by_key("key-1")
        self.assertFalse(d.called)
        self.source.answer(APP)
        self.assertEqual(result_of(d), APP)
        self.clock.advance(29)
        self.assertEqual(result_of(self.store.find_by_key("key-1")), APP)
        self.assertEqual(result_of(self.store.find_by_id("1")), APP)
        self.assertEqual(len(self.source.asked), 1)

    def test_refresh_ahead(self) -> None:
        """
        Past half the TTL a lookup is still answered from memory and starts
        one refresh; the change it reads is what later lookups get.
        """
        self.store.find_by_key("key-1")
        self.source.answer(APP)
        self.clock.advance(31)
        self.assertEqual(result_of(self.store.find_by_key("key-1")), APP)
        self.assertEqual(result_of(self.store.find_by_key("key-1")), APP)
        self.assertEqual(self.source.open_queries(), [("key", "key-1")])
        disabled = App(id="1", key="key-1", secret="s", enabled=False)
        self.source.answer(disabled)
        self.assertEqual(result_of(self.store.find_by_key("key-1")), disabled)
        self.assertEqual(result_of(self.store.find_by_id("1")), disabled)

    def test_expired_entry_waits_for_the_database(self) -> None:
        """
        An entry older than the TTL is not served: the lookup waits for the
        database, so a change is seen within the TTL even for an app
        nobody used meanwhile.
        """
        self.store.find_by_id("1")
        self.source.answer(APP)
        self.clock.advance(61)
        d = self.store.find_by_id("1")
        self.assertFalse(d.called)
        self.source.answer(None)
        self.assertIsNone(result_of(d))

    def test_single_flight(self) -> None:
        """
        Many lookups of one name while a query runs share that query.
        """
        waiting = [self.store.find_by_key("nope") for _ in range(100)]
        self.assertEqual(self.source.open_queries(), [("key", "nope")])
        self.source.answer(None)
        self.assertEqual({result_of(d) for d in waiting}, {None})

    def test_unknown_key_asked_once_per_ttl(self) -> None:
        """
        A flood of connection attempts with a bad key costs one query per
        TTL.
        """
        self.store.find_by_key("bad")
        self.source.answer(None)
        for _ in range(1000):
            self.assertIsNone(result_of(self.store.find_by_key("bad")))
            self.clock.advance(0.05)
        self.assertEqual(len(self.source.asked), 1)
        self.clock.advance(11)
        self.store.find_by_key("bad")
        self.assertEqual(self.source.open_queries(), [("key", "bad")])

    def test_unknown_names_bounded(self) -> None:
        """
        Only C{max_unknown} unknown names are remembered: the oldest go.
        """
        store = CachedAppStore(self.source, self.clock, ttl=60, max_unknown=3)
        for i in range(5):
            store.find_by_key(f"bad-{i}")
            self.source.answer(None)
        self.assertEqual(len(store._tables["key"]), 3)
        store.find_by_key("bad-4")
        store.find_by_key("bad-0")
        self.assertEqual(self.source.open_queries(), [("key", "bad-0")])

    def test_outage_serves_known_apps(self) -> None:
        """
        When the database fails, a known app is still served (past its
        TTL), an unknown one fails with L{AppStoreUnavailableError}; the
        outage is logged once, reported, and names are not asked again for
        C{retry_seconds}; the first success ends it.
        """
        changes: list[bool] = []
        self.store.on_reachability = changes.append
        self.store.find_by_key("key-1")
        self.source.answer(APP)
        self.clock.advance(61)
        known = self.store.find_by_key("key-1")
        self.source.answer(ConnectionRefusedError())
        self.assertEqual(result_of(known), APP)
        unknown = self.store.find_by_key("other")
        self.source.answer(ConnectionRefusedError())
        self.assertIsInstance(result_of(unknown).value, AppStoreUnavailableError)
        self.assertFalse(self.store.reachable)
        self.assertEqual(changes, [False])
        self.assertEqual(len(self.errors()), 1)
        # Not asked again before retry_seconds.
        self.clock.advance(4)
        self.assertEqual(result_of(self.store.find_by_key("key-1")), APP)
        self.assertIsInstance(
            result_of(self.store.find_by_key("other")).value, AppStoreUnavailableError
        )
        self.assertEqual(self.source.open_queries(), [])
        self.clock.advance(2)
        d = self.store.find_by_key("other")
        self.source.answer(App(id="2", key="other", secret="t"))
        self.assertEqual(result_of(d).id, "2")
        self.assertTrue(self.store.reachable)
        self.assertEqual(changes, [False, True])
        self.assertEqual(len(self.errors()), 1)

    def test_start_retries_prepare(self) -> None:
        """
        A failed prepare at start is an outage, retried every
        C{retry_seconds} until it succeeds.
        """
        started = self.store.start()
        self.source.answer(ConnectionRefusedError())
        self.assertIsNone(result_of(started))
        self.assertFalse(self.store.reachable)
        self.clock.advance(5)
        self.assertEqual(self.source.open_queries(), [("prepare", None)])
        self.source.answer(None)
        self.assertTrue(self.store.reachable)
        self.clock.advance(60)
        self.assertEqual(self.source.open_queries(), [])

    def test_stop(self) -> None:
        """
        Stopping cancels a pending prepare retry and closes the source.
        """
        self.store.start()
        self.source.answer(ConnectionRefusedError())
        self.store.stop()
        self.assertTrue(self.source.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_all_apps(self) -> None:
        """
        The list of apps is read once per TTL and, during an outage, the
        last list read is served.
        """
        d = self.store.all_apps()
        self.source.answer([APP])
        self.assertEqual(result_of(d), [APP])
        self.assertEqual(result_of(self.store.all_apps()), [APP])
        self.clock.advance(61)
        d = self.store.all_apps()
        self.source.answer(ConnectionRefusedError())
        self.assertEqual(result_of(d), [APP])

    def test_source_raising(self) -> None:
        """
        A source method that raises instead of failing its Deferred is an
        outage like any other.
        """

        def broken(key: str) -> Deferred[App | None]:
            raise RuntimeError("boom")

        self.source.fetch_by_key = broken  # type: ignore[method-assign]
        d = self.store.find_by_key("x")
        self.assertIsInstance(result_of(d).value, AppStoreUnavailableError)
        self.assertFalse(self.store.reachable)

    def test_lookups_wait_for_prepare(self) -> None:
        """
        A lookup made while the table is being prepared is asked only once
        preparing is done, so a table that does not exist yet is no outage.
        """
        self.store.start()
        d = self.store.find_by_key("key-1")
        self.assertEqual(self.source.open_queries(), [("prepare", None)])
        self.source.answer(None)
        self.assertEqual(self.source.open_queries(), [("key", "key-1")])
        self.source.answer(APP)
        self.assertEqual(result_of(d), APP)
        self.assertTrue(self.store.reachable)
        self.assertEqual(self.errors(), [])

    def test_no_apps_asked_again_soon(self) -> None:
        """
        An empty list of apps is kept only C{retry_seconds}, so the first
        app inserted counts for C{/up} without waiting a TTL; a failed read
        is not repeated before C{retry_seconds} either.
        """
        d = self.store.all_apps()
        self.source.answer([])
        self.assertEqual(result_of(d), [])
        self.clock.advance(4)
        self.assertEqual(result_of(self.store.all_apps()), [])
        self.clock.advance(2)
        d = self.store.all_apps()
        self.source.answer(ConnectionRefusedError())
        self.assertEqual(result_of(d), [])
        self.clock.advance(4)
        self.assertEqual(result_of(self.store.all_apps()), [])
        self.assertEqual(self.source.open_queries(), [])
        self.clock.advance(2)
        d = self.store.all_apps()
        self.source.answer([APP])
        self.assertEqual(result_of(d), [APP])
